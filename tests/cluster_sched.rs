//! Scheduling on a live cluster of real node daemons on 127.0.0.1: requests no node can hold
//! wait as pending demands (shown by `mobula status`) until a node that can joins, or fail
//! after the infeasible timeout; placement groups reserve bundles across nodes.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster, connect, head_with};
use mobula::{ActorOptions, Config, Error, PlacementStrategy, ResourceSet, TaskOptions};

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::actor]
pub struct Resident;

#[mobula::actor]
impl Resident {
    pub fn new() -> Self {
        Resident
    }

    pub fn node(&self) -> mobula::Result<String> {
        Ok(mobula::runtime()?.node_id().hex())
    }
}

fn cpu(n: f64) -> ResourceSet {
    ResourceSet::new().with("CPU", n)
}

#[test]
fn placement_groups_reserve_bundles_across_nodes() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);

    // STRICT_SPREAD: each bundle on a distinct node, so one of them on the other node.
    let pg = rt
        .placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::StrictSpread)
        .expect("create");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));
    let in_bundle = |i: usize| {
        where_am_i::options(TaskOptions::new().placement_group(&pg, Some(i))).remote(&rt)
    };
    let (b0, b1) = (in_bundle(0), in_bundle(1));
    let n0 = rt.get_timeout(&b0, Some(common::HANG)).expect("bundle 0");
    let n1 = rt.get_timeout(&b1, Some(common::HANG)).expect("bundle 1");
    assert_ne!(n0, n1, "the bundles are on distinct nodes");
    // An actor in the bundle on the other node runs there and answers.
    let other = if n0 == rt.node_id().hex() { 1 } else { 0 };
    let a = Resident::options(ActorOptions::new().placement_group(&pg, Some(other)))
        .remote(&rt)
        .expect("create the actor");
    let at = rt
        .get_timeout(&a.node(), Some(common::HANG))
        .expect("actor in a bundle");
    assert_eq!(at, if other == 0 { n0.clone() } else { n1.clone() });
    rt.kill(&a).expect("kill");

    // Both nodes gave one CPU to the group; removing it gives them back.
    rt.remove_placement_group(&pg).expect("remove");
    common::eventually("the bundles' CPUs are free again", || {
        rt.available_resources().expect("available").get("CPU") == Some(&4.0)
    });

    // Three bundles cannot be strictly spread over two nodes.
    let three = rt
        .placement_group(
            vec![cpu(1.0), cpu(1.0), cpu(1.0)],
            PlacementStrategy::StrictSpread,
        )
        .expect("create");
    match three.wait(Some(common::HANG)) {
        Err(Error::PlacementGroup { reason, .. }) => {
            assert!(reason.contains("strict spread"), "{reason}")
        }
        other => panic!("expected an infeasible group, got {other:?}"),
    }

    // PACK over two nodes when no node can hold both bundles.
    let big = rt
        .placement_group(vec![cpu(2.0), cpu(2.0)], PlacementStrategy::Pack)
        .expect("create");
    assert!(
        big.wait(Some(common::HANG))
            .expect("placed over both nodes")
    );
    let nodes: std::collections::BTreeSet<String> = (0..2)
        .map(|i| {
            let r = where_am_i::options(
                TaskOptions::new()
                    .placement_group(&big, Some(i))
                    .num_cpus(2.0),
            )
            .remote(&rt);
            rt.get_timeout(&r, Some(common::HANG)).expect("task")
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    rt.remove_placement_group(&big).expect("remove");
}

#[test]
fn an_infeasible_request_waits_for_a_node_that_can_hold_it_or_fails_after_the_timeout() {
    mobula::worker_entry();
    let c = head_with(&["--infeasible-timeout", "20"]);
    let rt = common::start(
        Config::default()
            .address(format!("127.0.0.1:{}", c.port))
            .cluster_root(c.temp.path()),
    );
    let head = rt.node_id().hex();

    let gizmo = where_am_i::options(TaskOptions::new().resource("gizmo", 1.0)).remote(&rt);
    c.await_status("the gizmo demand shows", |s| {
        s.contains(" {'CPU': 1.0, 'gizmo': 1.0}: 1+ pending tasks/actors (infeasible")
    });
    // A node that has the resource joins: the waiting task runs there.
    c.join(&["--resources", r#"{"gizmo": 1}"#]);
    let ran_on = rt
        .get_timeout(&gizmo, Some(common::HANG))
        .expect("the task runs on the new node");
    assert_ne!(ran_on, head, "only the new node has a gizmo");
    c.await_status("the demand is gone", |s| {
        s.contains(" (no resource demands)")
    });

    // Nothing ever has unobtainium: the caller's error names it once the timeout is up.
    let started = Instant::now();
    let never = where_am_i::options(TaskOptions::new().resource("unobtainium", 2.0)).remote(&rt);
    match rt.get_timeout(&never, Some(common::HANG)) {
        Err(Error::Infeasible { resource, .. }) => assert_eq!(resource, "unobtainium"),
        other => panic!("expected an infeasible error, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(19),
        "it waited for the timeout ({:?})",
        started.elapsed()
    );
}

/// Holds its CPU (without blocking in `get`, which would lend it) until `path` exists.
#[mobula::remote]
fn hold_until(path: String) {
    while !std::path::Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where it ran, and the length of its argument.
#[mobula::remote]
fn where_with(data: serde_bytes::ByteBuf) -> mobula::Result<(String, usize)> {
    Ok((mobula::runtime()?.node_id().hex(), data.len()))
}

#[test]
fn a_task_with_large_arguments_stays_with_them_while_their_node_has_room() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let here = rt.node_id();
    // One of the driver's node's two CPUs is taken: it counts as busy for the hybrid policy.
    let release = c.temp.path().join("release");
    let pin_here =
        TaskOptions::new().scheduling_strategy(mobula::SchedulingStrategy::NodeAffinity {
            node: here,
            soft: false,
        });
    let held = hold_until::options(pin_here).remote(&rt, release.display().to_string());
    common::eventually("the held task runs", || {
        rt.available_resources().expect("available").get("CPU") == Some(&3.0)
    });
    // 8 MiB of arguments, on this node: the task runs here, where they are.
    let big = rt
        .put(&serde_bytes::ByteBuf::from(vec![7u8; 8 << 20]))
        .expect("put");
    for _ in 0..4 {
        let (node, len) = rt
            .get_timeout(&where_with::remote(&rt, &big), Some(common::HANG))
            .expect("task");
        assert_eq!(
            (node, len),
            (here.hex(), 8 << 20),
            "it stayed with its data"
        );
    }
    // A small argument goes to the idle node instead.
    let small = rt
        .put(&serde_bytes::ByteBuf::from(vec![1u8; 16]))
        .expect("put");
    let (node, _) = rt
        .get_timeout(&where_with::remote(&rt, &small), Some(common::HANG))
        .expect("task");
    assert_ne!(
        node,
        here.hex(),
        "without data to stay with, the hybrid policy spreads"
    );
    std::fs::write(&release, b"go").expect("release");
    rt.get_timeout(&held, Some(common::HANG))
        .expect("held task");
}

/// Makes `mb` MiB on the node it runs on; says where.
#[mobula::remote]
fn make_here(mb: usize) -> mobula::Result<serde_bytes::ByteBuf> {
    Ok(serde_bytes::ByteBuf::from(vec![3u8; mb << 20]))
}

#[test]
fn when_its_node_is_full_a_task_goes_to_the_node_that_kept_a_copy_of_its_arguments() {
    mobula::worker_entry();
    let c = cluster();
    c.join(&[]);
    let rt = common::start(
        Config::default()
            .address(format!("127.0.0.1:{}", c.port))
            .cluster_root(c.temp.path()),
    );
    common::eventually("three nodes", || {
        rt.cluster_resources().expect("resources").get("CPU") == Some(&6.0)
    });
    let here = rt.node_id();
    let spread = TaskOptions::new().scheduling_strategy(mobula::SchedulingStrategy::Spread);
    let mut others = std::collections::BTreeSet::new();
    while others.len() < 2 {
        let n = rt
            .get(&where_am_i::options(spread.clone()).remote(&rt))
            .expect("probe");
        if n != here.hex() {
            others.insert(n);
        }
    }
    // The node with the larger id makes the object: ties between idle nodes go to the
    // smaller id, so only the copy it kept can draw the task there.
    let maker = others.iter().next_back().cloned().expect("a node");
    let pin = |node: &str| {
        TaskOptions::new().scheduling_strategy(mobula::SchedulingStrategy::NodeAffinity {
            node: mobula::NodeId::parse(node).expect("node id"),
            soft: false,
        })
    };
    let big = make_here::options(pin(&maker)).remote(&rt, 8);
    assert_eq!(
        rt.get_timeout(&big, Some(common::HANG))
            .expect("made")
            .len(),
        8 << 20
    );
    // The driver's node is full.
    let release = c.temp.path().join("release");
    let holds: Vec<_> = (0..2)
        .map(|_| hold_until::options(pin(&here.hex())).remote(&rt, release.display().to_string()))
        .collect();
    common::eventually("the driver's node is full", || {
        rt.available_resources().expect("available").get("CPU") == Some(&4.0)
    });
    for _ in 0..4 {
        let (node, len) = rt
            .get_timeout(&where_with::remote(&rt, &big), Some(common::HANG))
            .expect("task");
        assert_eq!((node.as_str(), len), (maker.as_str(), 8 << 20));
    }
    std::fs::write(&release, b"go").expect("release");
    rt.get_all(&holds).expect("held tasks");
}

/// The child driver of the group-lifetime test (a no-op when run on its own): reserves a
/// bundle only the worker node can hold and, once told to (`CHILD_GO` exists), exits without
/// removing it.
#[test]
fn child_driver_of_the_group_lifetime_test() {
    mobula::worker_entry();
    let Some((rt, vars)) = common::child_driver(&["CHILD_GO"]) else {
        return;
    };
    let go = &vars[0];
    common::eventually("the head's scheduler knows the gizmo node", || {
        rt.cluster_resources().expect("resources").get("gizmo") == Some(&1.0)
    });
    let pg = rt
        .placement_group(
            vec![ResourceSet::new().with("gizmo", 1.0)],
            PlacementStrategy::Pack,
        )
        .expect("create");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));
    println!("\nPLACED ");
    common::wait_for_file(std::path::Path::new(go));
}

#[test]
fn a_groups_bundles_are_given_back_when_its_driver_exits() {
    let c = common::cluster::cluster_with(&["--resources", r#"{"gizmo": 1}"#]);
    c.await_status("the gizmo node", |s| s.contains(" 0.0/1.0 gizmo"));
    let go = c.temp.path().join("go");
    let child = common::child_test("child_driver_of_the_group_lifetime_test")
        .env("CHILD_ADDRESS", format!("127.0.0.1:{}", c.port))
        .env("CHILD_ROOT", c.temp.path())
        .env("CHILD_GO", &go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("child driver");
    c.await_status("the bundle reserved", |s| s.contains(" 1.0/1.0 gizmo"));
    std::fs::write(&go, b"go").expect("go");
    let out = child.wait_with_output().expect("child driver");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PLACED"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ray's default lifetime: the group ends with its job, its bundle is free again.
    c.await_status("the bundle given back", |s| s.contains(" 0.0/1.0 gizmo"));
}
