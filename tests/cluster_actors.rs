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

/// The child driver of the orphan test (a no-op when run on its own), attached to one worker
/// node: creates a detached named actor on the other worker node (neither this one nor
/// `CHILD_HEAD`), which this node owns, records 7 in it, and exits.
#[test]
fn child_driver_of_the_orphan_test() {
    mobula::worker_entry();
    let Some((rt, vars)) = common::child_driver(&["CHILD_HEAD"]) else {
        return;
    };
    let me = rt.node_id().hex();
    // This node learns of the third from its heartbeats: probe until one lands there.
    let spread = mobula::TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let deadline = std::time::Instant::now() + common::HANG;
    let host = loop {
        let n = rt
            .get(&node_of::options(spread.clone()).remote(&rt))
            .expect("probe");
        if n != me && n != vars[0] {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "the third node");
    };
    let there = SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&host).expect("node id"),
        soft: false,
    };
    let a = Ledger::options(
        ActorOptions::new()
            .name("orphan")
            .detached(true)
            .scheduling_strategy(there),
    )
    .remote(&rt)
    .expect("create");
    rt.get(&a.record(7)).expect("record");
    assert_eq!(rt.get(&a.node()).expect("node"), host);
    println!("\nMADE owner={me} host={host} ");
}

#[test]
fn a_detached_actor_outlives_the_node_that_owned_it() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    c.join(&[]);
    common::eventually("the third node joins", || {
        rt.cluster_resources().expect("resources").get("CPU") == Some(&6.0)
    });
    let head = rt.node_id().hex();
    let out = common::child_test("child_driver_of_the_orphan_test")
        .env("CHILD_ADDRESS", format!("127.0.0.1:{}", c.port))
        .env("CHILD_ROOT", c.temp.path())
        .env("CHILD_HEAD", &head)
        .env("MOBULA_DRIVER_NODE", c.worker_node_id())
        .output()
        .expect("child driver");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let (Some(owner), Some(host)) = (field("owner="), field("host=")) else {
        panic!("{text}{}", String::from_utf8_lossy(&out.stderr));
    };
    let owner_pid: u32 =
        std::fs::read_to_string(c.dir().join("nodes").join(format!("{owner}.pid")))
            .expect("the owner's pid file")
            .trim()
            .parse()
            .expect("pid");

    common::sigkill(owner_pid);
    let killed = std::time::Instant::now();
    c.await_status("the owner node dead", |s| {
        s.split("Dead:")
            .nth(1)
            .is_some_and(|dead| dead.contains(&owner[..8]))
    });
    // Its host took it over: the name resolves, from the head, to the same actor there.
    let deadline = std::time::Instant::now() + common::HANG;
    let history = loop {
        let found = rt.get_actor::<Ledger>("orphan", None).and_then(|a| {
            rt.get_timeout(&a.history(), Some(common::HANG))
                .map(|h| (h, a))
        });
        match found {
            Ok((h, a)) => {
                assert_eq!(rt.get(&a.node()).expect("node"), host);
                break h;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the actor never answered again: {e}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(history, vec![7], "the same actor, its state kept");
    eprintln!(
        "fault figures: owner node killed, detached actor answered_ms={}",
        killed.elapsed().as_millis()
    );
}

/// Keeps references it is given and reads them later.
#[mobula::actor]
pub struct Keeper {
    kept: Vec<mobula::ObjectRef<serde_bytes::ByteBuf>>,
}

#[mobula::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper { kept: Vec::new() }
    }

    pub fn keep(&mut self, refs: Vec<mobula::ObjectRef<serde_bytes::ByteBuf>>) {
        self.kept.extend(refs);
    }

    /// The length of each kept value, or the error reading it.
    pub fn read(&self) -> mobula::Result<Vec<Result<usize, String>>> {
        let rt = mobula::runtime()?;
        Ok(self
            .kept
            .iter()
            .map(|r| {
                rt.get_timeout(r, Some(common::HANG))
                    .map(|v| v.len())
                    .map_err(|e| e.to_string())
            })
            .collect())
    }
}

/// The child driver of the kept-object test (a no-op when run on its own), attached to the
/// worker node: puts a 2 MiB value, hands its reference to a detached actor on the head
/// (`CHILD_HEAD`), checks the actor reads it, and waits to be killed with its node.
#[test]
fn child_driver_of_the_kept_object_test() {
    mobula::worker_entry();
    let Some((rt, vars)) = common::child_driver(&["CHILD_HEAD"]) else {
        return;
    };
    let on_head = SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&vars[0]).expect("head id"),
        soft: false,
    };
    let k = Keeper::options(
        ActorOptions::new()
            .name("keeper")
            .detached(true)
            .scheduling_strategy(on_head),
    )
    .remote(&rt)
    .expect("keeper");
    let x = rt
        .put(&serde_bytes::ByteBuf::from(vec![5u8; 2 << 20]))
        .expect("put");
    rt.get(&k.keep(vec![x.clone()])).expect("keep");
    let read = rt.get(&k.read()).expect("read");
    assert_eq!(read, vec![Ok(2 << 20)]);
    println!("\nKEPT ");
    std::thread::sleep(common::HANG);
}

/// A reference held on another node came with a copy of its value (every dependency of a call
/// is pulled before it runs), which that node keeps while the reference lives: the value
/// outlives the node that put it. (Ray fails such a `get` with `OwnerDiedError`.)
#[test]
fn a_put_object_outlives_its_node_where_a_reference_to_it_is_held() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let head = rt.node_id().hex();
    let worker = c.worker_node_id();
    let mut child = common::child_test("child_driver_of_the_kept_object_test")
        .env("CHILD_ADDRESS", format!("127.0.0.1:{}", c.port))
        .env("CHILD_ROOT", c.temp.path())
        .env("CHILD_HEAD", &head)
        .env("MOBULA_DRIVER_NODE", &worker)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child driver");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("child output");
        assert!(n > 0, "the child ended before keeping its object");
        if line.starts_with("KEPT") {
            break;
        }
    }
    // The node that put the object, and its driver, die.
    common::sigkill(c.worker_daemon_pid());
    let _ = child.kill();
    let _ = child.wait();
    c.await_status("the worker node dead", |s| {
        s.split("Dead:")
            .nth(1)
            .is_some_and(|dead| dead.contains(&worker))
    });
    let keeper = rt.get_actor::<Keeper>("keeper", None).expect("keeper");
    let read = rt
        .get_timeout(&keeper.read(), Some(common::HANG))
        .expect("read");
    assert_eq!(read, vec![Ok(2 << 20)], "the copy the actor's node kept");
}
