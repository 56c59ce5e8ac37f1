//! Objects outlive the node that made them: results of tasks that ran on the worker node (a
//! large one, and one holding a reference to an object that node `put`), and a chain of
//! results each made from the one before, are all read intact from the driver after that
//! node was SIGKILLed. Mobula brings a task's result, and the objects it refers to, to the
//! node that owns them when the task ends (ARCHITECTURE 5), so no object's only copy is on
//! a node other than its owner's, and none has to be rebuilt from its lineage.

mod common;

use common::cluster::{cluster, connect};
use mobula::{ObjectRef, SchedulingStrategy, TaskOptions};

#[mobula::remote]
fn make_block(seed: u8, len: usize) -> mobula::Result<(String, serde_bytes::ByteBuf)> {
    let node = mobula::runtime()?.node_id().hex();
    Ok((node, serde_bytes::ByteBuf::from(vec![seed; len])))
}

#[mobula::remote]
fn put_inside(v: u64) -> mobula::Result<(String, ObjectRef<u64>)> {
    let rt = mobula::runtime()?;
    Ok((rt.node_id().hex(), rt.put(&v)?))
}

#[mobula::remote]
fn step(prev: u64) -> u64 {
    prev * 3 + 1
}

#[test]
fn results_made_on_a_node_survive_its_death() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let worker = c.worker_node_id();
    let there = TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&worker).expect("node id"),
        soft: false,
    });
    let block = make_block::options(there.clone()).remote(&rt, 7, 8 << 20);
    let nested = put_inside::options(there.clone()).remote(&rt, 41);
    let mut chain = step::options(there.clone()).remote(&rt, 1u64);
    for _ in 0..5 {
        chain = step::options(there.clone()).remote(&rt, &chain);
    }
    // Every task has ended on the worker node.
    let (made_on, _) = rt.get_timeout(&block, Some(common::HANG)).expect("block");
    assert!(made_on.starts_with(&worker), "ran on the worker node");
    let (put_on, _) = rt.get(&nested).expect("nested");
    assert!(put_on.starts_with(&worker));
    rt.get(&chain).expect("chain");

    let pid = c.worker_daemon_pid();
    // SAFETY: kill(2) on the node daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    c.await_status("the worker node declared dead", |s| {
        s.split("Dead:").nth(1).is_some_and(|d| d.contains(&worker))
    });

    let (_, bytes) = rt.get(&block).expect("the block after its node died");
    assert_eq!(bytes.into_vec(), vec![7u8; 8 << 20]);
    let (_, inner) = rt.get(&nested).expect("the container after its node died");
    assert_eq!(rt.get(&inner).expect("the object put on the dead node"), 41);
    // 1 -> 4 -> 13 -> 40 -> 121 -> 364 -> 1093
    assert_eq!(rt.get(&chain).expect("the chain after its node died"), 1093);
}
