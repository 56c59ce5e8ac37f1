//! Scheduling on a live cluster of real node daemons on 127.0.0.1: requests no node can hold
//! wait as pending demands (shown by `mobula status`) until a node that can joins, or fail
//! after the infeasible timeout; placement groups reserve bundles across nodes.

mod common;

use std::time::{Duration, Instant};

use common::cluster::head_with;
use mobula::{Config, Error, TaskOptions};

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
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
