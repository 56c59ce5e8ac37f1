//! Work spreads over the nodes of a real cluster (a head and a worker node, two daemons on
//! 127.0.0.1): each task returns the id of the node it ran on, as Ray's tutorials check the
//! set of IP addresses; a node saturated by tasks is not declared dead (a killed node's
//! tasks finishing elsewhere: `fault_node_kill`).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster, cluster_with, connect};
use mobula::{SchedulingStrategy, TaskOptions};

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::remote]
fn slow_where(ms: u64) -> mobula::Result<String> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn tasks_land_on_every_node() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..20)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt))
        .collect();
    let nodes: std::collections::BTreeSet<String> =
        rt.get_all(&refs).expect("tasks").into_iter().collect();
    assert_eq!(nodes.len(), 2, "SPREAD uses both nodes: {nodes:?}");

    // DEFAULT spills once the driver's node is busy.
    let busy: Vec<_> = (0..8).map(|_| slow_where::remote(&rt, 300)).collect();
    let nodes: std::collections::BTreeSet<String> =
        rt.get_all(&busy).expect("tasks").into_iter().collect();
    assert_eq!(nodes.len(), 2, "four CPUs over two nodes: {nodes:?}");

    // Arguments travel: a chain crossing nodes.
    let mut acc = add::options(spread.clone()).remote(&rt, 0, 1);
    for i in 2..=20 {
        acc = add::options(spread.clone()).remote(&rt, &acc, i);
    }
    assert_eq!(
        rt.get_timeout(&acc, Some(common::HANG)).expect("chain"),
        210
    );
}

#[mobula::remote]
fn spin(ms: u64) -> u64 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    x
}

#[test]
fn a_saturated_node_is_not_declared_dead() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    // Both nodes busy well past the 3 s death timeout.
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..8)
        .map(|_| spin::options(spread.clone()).remote(&rt, 4000))
        .collect();
    rt.get_all(&refs).expect("spins");
    assert_eq!(
        rt.cluster_resources().expect("resources").get("CPU"),
        Some(&4.0),
        "no node was declared dead while its CPUs were saturated"
    );
    let s = c.status();
    assert!(s.contains("Dead:\n (no dead nodes)"), "{s}");
    let log = std::fs::read_to_string(
        c.temp
            .path()
            .join(format!("cluster-{}", c.port))
            .join("logs")
            .join("head.log"),
    )
    .expect("head log");
    assert!(
        !log.contains("declared dead"),
        "not even for a moment: {log}"
    );
}

/// A hang guard for moving 256 MiB through a debug build on a loaded machine.
const BIG_HANG: Duration = Duration::from_secs(900);

/// A cheap fingerprint of a large buffer (sum of a sample of its bytes and its length).
fn fingerprint(b: &[u8]) -> (usize, u64) {
    (b.len(), b.iter().step_by(4093).map(|x| *x as u64).sum())
}

#[mobula::remote]
fn where_and_fingerprint(data: serde_bytes::ByteBuf) -> mobula::Result<(String, usize, u64)> {
    let (n, f) = fingerprint(&data);
    Ok((mobula::runtime()?.node_id().hex(), n, f))
}

/// `len` bytes of a repeating, non-trivial pattern (built by block copies: fast in debug too).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let block: Vec<u8> = (0..251u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = block.len().min(len - v.len());
        v.extend_from_slice(&block[..n]);
    }
    v
}

#[mobula::remote]
fn make_big(mb: usize, seed: u8) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(pattern(mb << 20, seed))
}

#[test]
fn a_256_mib_object_crosses_nodes_intact() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id();
    let there = rt
        .cluster_resources()
        .map(|_| ())
        .and_then(|()| {
            // The other node's id: a SPREAD task that reports where it ran, until it is not here.
            let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
            loop {
                let n = rt.get(&where_am_i::options(spread.clone()).remote(&rt))?;
                if n != here.hex() {
                    return Ok(n);
                }
            }
        })
        .expect("the other node");
    let other = mobula::NodeId::parse(&there).expect("node id");
    let pin = TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: other,
        soft: false,
    });

    // Driver -> other node: a 256 MiB argument.
    let data = pattern(256 << 20, 3);
    let expect = fingerprint(&data);
    let big = rt.put(&serde_bytes::ByteBuf::from(data)).expect("put");
    let r = rt.get_timeout(
        &where_and_fingerprint::options(pin.clone()).remote(&rt, &big),
        Some(BIG_HANG),
    );
    if r.is_err() {
        c.dump_logs();
    }
    let (node, n, f) = r.expect("remote read");
    assert_eq!(node, there);
    assert_eq!((n, f), expect, "the argument arrived intact");

    // Other node -> driver: a 256 MiB result.
    let made = make_big::options(pin).remote(&rt, 256, 7);
    let back = rt.get_timeout(&made, Some(BIG_HANG));
    if back.is_err() {
        c.dump_logs();
    }
    let back: serde_bytes::ByteBuf = back.expect("remote result");
    let want = pattern(256 << 20, 7);
    assert!(
        back.as_slice() == want.as_slice(),
        "the result arrived intact"
    );
}

#[test]
fn a_node_without_the_binary_fetches_it_by_content_hash() {
    mobula::worker_entry();
    // The worker node never runs a job's executable from its path: it must fetch a copy.
    let c = cluster_with(&["--fetch-executables"]);
    let rt = connect(&c);
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..10)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt))
        .collect();
    let nodes: std::collections::BTreeSet<String> =
        rt.get_all(&refs).expect("tasks").into_iter().collect();
    assert_eq!(nodes.len(), 2, "both nodes ran tasks: {nodes:?}");
    let cache = c
        .temp
        .path()
        .join(format!("cluster-{}", c.port))
        .join("exe");
    let copies: Vec<_> = std::fs::read_dir(&cache)
        .expect("exe cache")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(copies.len(), 1, "one fetched copy of this test binary");
    let me = std::fs::metadata(std::env::current_exe().expect("exe"))
        .expect("meta")
        .len();
    assert_eq!(copies[0].metadata().expect("meta").len(), me);
}

/// Sums objects the caller refers to inside its argument (and says where it ran).
#[mobula::remote]
fn sum_nested(refs: Vec<mobula::ObjectRef<u64>>) -> mobula::Result<(String, u64)> {
    let rt = mobula::runtime()?;
    Ok((rt.node_id().hex(), rt.get_all(&refs)?.iter().sum()))
}

/// Fingerprints a large object it gets through a reference nested in its argument.
#[mobula::remote]
fn fingerprint_nested(
    refs: Vec<mobula::ObjectRef<serde_bytes::ByteBuf>>,
) -> mobula::Result<(usize, u64)> {
    let rt = mobula::runtime()?;
    Ok(fingerprint(&rt.get(&refs[0])?))
}

/// Returns references to objects it puts on its own node.
#[mobula::remote]
fn make_nested(n: u64) -> mobula::Result<Vec<mobula::ObjectRef<u64>>> {
    let rt = mobula::runtime()?;
    (1..=n).map(|i| rt.put(&(i * 10))).collect()
}

#[test]
fn references_nested_in_arguments_and_results_cross_nodes() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id().hex();
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let other = loop {
        let n = rt
            .get(&where_am_i::options(spread.clone()).remote(&rt))
            .expect("probe");
        if n != here {
            break mobula::NodeId::parse(&n).expect("node id");
        }
    };
    let there = TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: other,
        soft: false,
    });

    // The driver's objects, referred to from inside an argument, reach the other node.
    let refs: Vec<_> = (1..=5u64).map(|i| rt.put(&i).expect("put")).collect();
    let (node, sum) = rt
        .get_timeout(
            &sum_nested::options(there.clone()).remote(&rt, refs.clone()),
            Some(common::HANG),
        )
        .expect("sum of nested refs");
    assert_eq!((node, sum), (other.hex(), 15));

    // A nested reference to an object larger than an inline argument is pulled in parts.
    let big = pattern(5 << 20, 7);
    let want = fingerprint(&big);
    let big_ref = rt.put(&serde_bytes::ByteBuf::from(big)).expect("put big");
    let got = rt
        .get_timeout(
            &fingerprint_nested::options(there.clone()).remote(&rt, vec![big_ref]),
            Some(common::HANG),
        )
        .expect("fingerprint");
    assert_eq!(got, want);

    // References the other node returns resolve here, and can go back there.
    let made = rt
        .get_timeout(
            &make_nested::options(there.clone()).remote(&rt, 4),
            Some(common::HANG),
        )
        .expect("refs made on the other node");
    assert_eq!(rt.get_all(&made).expect("values"), vec![10, 20, 30, 40]);
    let (_, sum) = rt
        .get_timeout(
            &sum_nested::options(there).remote(&rt, made),
            Some(common::HANG),
        )
        .expect("round trip");
    assert_eq!(sum, 100);
}
