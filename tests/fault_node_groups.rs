//! A placement group outlives a node that held some of its bundles: when that node is
//! SIGKILLed, the group goes to RESCHEDULING, its bundles there wait for a node that can hold
//! them (STRICT_SPREAD: not a node of its other bundles) and are placed again there when one
//! joins; an actor of a lost bundle restarts in its new place within `max_restarts`, while
//! the actor of the surviving bundle keeps running with its state.

mod common;

use std::time::Instant;

use common::cluster::{cluster_with, connect};
use mobula::{ActorOptions, PlacementStrategy, ResourceSet};

#[mobula::actor]
pub struct NodeTally {
    n: u64,
}

#[mobula::actor]
impl NodeTally {
    pub fn new() -> Self {
        NodeTally { n: 0 }
    }

    /// Adds `k`; returns the total and the node this runs on.
    pub fn add(&mut self, k: u64) -> mobula::Result<(u64, String)> {
        self.n += k;
        Ok((self.n, mobula::runtime()?.node_id().hex()))
    }
}

const SLOT: &str = r#"{"slot": 1}"#;

#[test]
fn a_groups_bundles_on_a_dead_node_are_placed_again_and_their_actors_restart_there() {
    mobula::worker_entry();
    let c = cluster_with(&["--resources", SLOT]);
    c.join(&["--resources", SLOT]);
    let rt = connect(&c);
    common::eventually("both slot nodes are known", || {
        rt.cluster_resources().expect("resources").get("slot") == Some(&2.0)
    });
    let slot = || ResourceSet::new().with("slot", 1.0).with("CPU", 1.0);
    let pg = rt
        .placement_group(vec![slot(), slot()], PlacementStrategy::StrictSpread)
        .expect("create");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));
    let in_bundle = |i: usize| {
        NodeTally::options(
            ActorOptions::new()
                .placement_group(&pg, Some(i))
                .max_restarts(1),
        )
        .remote(&rt)
        .expect("actor")
    };
    let (lost, kept) = (in_bundle(0), in_bundle(1));
    let (_, dead_node) = rt
        .get_timeout(&lost.add(5), Some(common::HANG))
        .expect("bundle 0's actor");
    let (n, kept_node) = rt
        .get_timeout(&kept.add(7), Some(common::HANG))
        .expect("bundle 1's actor");
    assert_eq!(n, 7);
    assert_ne!(dead_node, kept_node, "strictly spread");

    let pid_file = c.dir().join("nodes").join(format!("{dead_node}.pid"));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the node's pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill(2) on a node daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let url = format!("{}/api/v0/placement_groups", c.dashboard());
    let state = || common::http::get(&url, &[]).1;
    common::eventually("the group is rescheduling", || {
        state().contains("RESCHEDULING")
    });
    let detected = killed.elapsed();
    // The surviving bundle's actor never stopped.
    assert_eq!(
        rt.get_timeout(&kept.add(1), Some(common::HANG))
            .expect("the kept actor")
            .0,
        8
    );

    // No node left can hold bundle 0 apart from bundle 1's: it waits for a new one.
    c.join(&["--resources", SLOT]);
    let joined = Instant::now();
    let deadline = Instant::now() + common::HANG;
    let (n, at) = loop {
        match rt.get_timeout(&lost.add(1), Some(common::HANG)) {
            Ok(v) => break v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the lost bundle's actor never came back: {e}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(n, 1, "restarted: a fresh instance");
    assert_ne!(at, dead_node);
    assert_ne!(at, kept_node, "still strictly spread");
    assert!(state().contains("CREATED"), "{}", state());
    eprintln!(
        "fault figures: group rescheduling_ms={} (kill to RESCHEDULING listed) answered_ms={} (a new node's `mobula start` returned to the restarted actor's answer)",
        detected.as_millis(),
        joined.elapsed().as_millis()
    );
    assert_eq!(
        rt.get_timeout(&kept.add(1), Some(common::HANG))
            .expect("the kept actor")
            .0,
        9,
        "the surviving bundle's actor kept its state"
    );
}
