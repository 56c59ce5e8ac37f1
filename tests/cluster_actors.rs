//! Actors across the nodes of a real cluster (a head and a worker node on 127.0.0.1): actors
//! placed by the policy on the other node, called from the driver in submission order, with
//! small and large arguments; SPREAD actors on both nodes; async actors; kill.

mod common;

use common::cluster::{cluster, connect};
use mobula::{ActorOptions, Error, SchedulingStrategy};

#[mobula::actor]
pub struct Ledger {
    seen: Vec<u64>,
}

#[mobula::actor]
impl Ledger {
    pub fn new() -> Self {
        Ledger { seen: Vec::new() }
    }

    pub fn record(&mut self, v: u64) -> usize {
        self.seen.push(v);
        self.seen.len()
    }

    pub fn history(&self) -> Vec<u64> {
        self.seen.clone()
    }

    pub fn node(&self) -> mobula::Result<String> {
        Ok(mobula::runtime()?.node_id().hex())
    }

    pub fn checksum(&self, data: serde_bytes::ByteBuf) -> (usize, u64) {
        let sum = data
            .iter()
            .enumerate()
            .fold(0u64, |a, (i, b)| a.wrapping_add((i as u64 + 1) * *b as u64));
        (data.len(), sum)
    }
}

#[mobula::actor]
pub struct Echo;

#[mobula::actor]
impl Echo {
    pub fn new() -> Self {
        Echo
    }

    pub async fn echo(&self, v: u64) -> u64 {
        v
    }
}

#[test]
fn actors_on_the_other_node_answer_calls_in_order() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id();
    // SPREAD places actors round the nodes: some land on the other one.
    let spread = ActorOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let actors: Vec<_> = (0..4)
        .map(|_| Ledger::options(spread.clone()).remote(&rt).expect("create"))
        .collect();
    let nodes: Vec<String> = rt
        .get_all(&actors.iter().map(|a| a.node()).collect::<Vec<_>>())
        .expect("nodes");
    let distinct: std::collections::BTreeSet<&String> = nodes.iter().collect();
    assert_eq!(distinct.len(), 2, "actors on both nodes: {nodes:?}");
    let (far, far_node) = actors
        .iter()
        .zip(&nodes)
        .find(|(_, n)| **n != here.hex())
        .expect("an actor on the other node");

    // Calls from one caller run in submission order, none lost.
    let refs: Vec<_> = (0..300u64).map(|v| far.record(v)).collect();
    let counts = rt.get_all(&refs).expect("records");
    assert_eq!(counts, (1..=300usize).collect::<Vec<_>>());
    assert_eq!(
        rt.get(&far.history()).expect("history"),
        (0..300u64).collect::<Vec<_>>()
    );
    assert_eq!(&rt.get(&far.node()).expect("node"), far_node);

    // A large argument (pulled in parts by the actor's node) arrives intact.
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
    let expect = data
        .iter()
        .enumerate()
        .fold(0u64, |a, (i, b)| a.wrapping_add((i as u64 + 1) * *b as u64));
    let big = rt
        .put(&serde_bytes::ByteBuf::from(data))
        .expect("put big argument");
    assert_eq!(
        rt.get(&far.checksum(&big)).expect("checksum"),
        (6usize << 20, expect)
    );

    // Killed: later calls fail with a clear actor-died error.
    rt.kill(far).expect("kill");
    common::eventually("calls to the killed actor fail", || {
        matches!(rt.get(&far.history()), Err(Error::ActorDied { .. }))
    });
}

#[test]
fn async_actor_on_the_other_node_by_node_affinity() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id();
    // Find the other node's id through a SPREAD actor, then pin an async actor there.
    let spread = ActorOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let probes: Vec<_> = (0..2)
        .map(|_| Ledger::options(spread.clone()).remote(&rt).expect("create"))
        .collect();
    let other = rt
        .get_all(&probes.iter().map(|a| a.node()).collect::<Vec<_>>())
        .expect("nodes")
        .into_iter()
        .find(|n| *n != here.hex())
        .expect("the other node");
    let pin = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&other).expect("node id"),
        soft: false,
    });
    let echo = Echo::options(pin).remote(&rt).expect("create");
    let refs: Vec<_> = (0..200u64).map(|v| echo.echo(v)).collect();
    assert_eq!(
        rt.get_all(&refs).expect("echoes"),
        (0..200u64).collect::<Vec<_>>()
    );
}

#[test]
fn an_actor_of_a_killed_node_restarts_on_another() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id().hex();
    let spread = ActorOptions::new()
        .scheduling_strategy(SchedulingStrategy::Spread)
        .max_restarts(1);
    let actors: Vec<_> = (0..2)
        .map(|_| Ledger::options(spread.clone()).remote(&rt).expect("create"))
        .collect();
    let nodes = rt
        .get_all(&actors.iter().map(|a| a.node()).collect::<Vec<_>>())
        .expect("nodes");
    let far = actors
        .iter()
        .zip(&nodes)
        .find(|(_, n)| **n != here)
        .map(|(a, _)| a.clone())
        .expect("an actor on the worker node");
    rt.get(&far.record(1)).expect("a call before the kill");

    common::sigkill(c.worker_daemon_pid());
    // Declared dead, the node's actor is re-created (constructor re-run) on the head.
    common::eventually("the actor answers from the head again", || {
        rt.get(&far.node()).is_ok_and(|n| n == here)
    });
    assert_eq!(
        rt.get(&far.history()).expect("history"),
        Vec::<u64>::new(),
        "a restart re-runs the constructor"
    );
}

#[mobula::remote]
fn node_of() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

/// Runs on the worker node: uses an actor by name and through a handle, and names one of its
/// own.
#[mobula::remote]
fn use_actors_from_the_other_node(
    handle: mobula::ActorHandle<Ledger>,
    taken: String,
    mine: String,
) -> mobula::Result<(String, usize, usize, bool)> {
    let rt = mobula::runtime()?;
    let node = rt.node_id().hex();
    let by_name = rt.get_actor::<Ledger>(&taken, None)?;
    let a = rt.get(&by_name.record(10))?;
    let b = rt.get(&handle.record(20))?;
    let refused = matches!(
        Ledger::options(ActorOptions::new().name(taken)).remote(&rt),
        Err(Error::NameTaken { .. })
    );
    let own = Ledger::options(ActorOptions::new().name(mine)).remote(&rt)?;
    rt.get(&own.record(7))?;
    Ok((node, a, b, refused))
}

/// Runs on the worker node: kills an actor that the driver's node owns.
#[mobula::remote]
fn kill_from_the_other_node(handle: mobula::ActorHandle<Ledger>) -> mobula::Result<()> {
    mobula::runtime()?.kill(&handle)
}

#[test]
fn named_actors_and_handles_resolve_across_nodes() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id().hex();
    // Both actors live on the driver's node (the head); the task runs on the worker node.
    let pin_here = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: rt.node_id(),
        soft: false,
    });
    let named = Ledger::options(pin_here.clone().name("ledger"))
        .remote(&rt)
        .expect("named");
    let other = Ledger::options(pin_here).remote(&rt).expect("unnamed");
    let spread = mobula::TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let worker = loop {
        let n = rt
            .get(&node_of::options(spread.clone()).remote(&rt))
            .expect("probe");
        if n != here {
            break n;
        }
    };
    let pin = mobula::TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&worker).expect("node id"),
        soft: false,
    });
    let (node, a, b, refused) = rt
        .get(
            &use_actors_from_the_other_node::options(pin.clone()).remote(
                &rt,
                other.clone(),
                "ledger".to_string(),
                "from-worker".to_string(),
            ),
        )
        .expect("the task");
    assert_ne!(node, here);
    assert_eq!((a, b), (1, 1), "calls from the worker node landed");
    assert!(refused, "a name taken on the head is taken on every node");
    assert_eq!(rt.get(&named.history()).expect("history")[0], 10);
    // The worker node's named actor resolves from the driver.
    let theirs = rt
        .get_actor::<Ledger>("from-worker", None)
        .expect("named on the worker node");
    assert_eq!(rt.get(&theirs.history()).expect("history")[0], 7);

    // Kill works from a node that does not own the actor, both ways.
    rt.get(&kill_from_the_other_node::options(pin).remote(&rt, other.clone()))
        .expect("killed from the worker node");
    assert!(
        matches!(rt.get(&other.record(1)), Err(Error::ActorDied { .. })),
        "an actor killed by another node is dead for its owner's callers"
    );
    rt.kill(&theirs)
        .expect("the driver kills the worker node's actor");
    assert!(
        matches!(rt.get(&theirs.history()), Err(Error::ActorDied { .. })),
        "an actor killed by a non-owner is dead"
    );
}
