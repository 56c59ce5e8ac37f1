//! Placement groups: atomic reservation, tasks and actors in bundles, waiting for resources,
//! infeasible groups and removal (which ends the group's actors).

mod common;

use std::time::Duration;

use common::{HANG, start, threads};
use mobula::{ActorOptions, Error, PlacementStrategy, ResourceSet, TaskOptions};

#[mobula::remote]
fn one() -> u32 {
    1
}

#[mobula::actor]
pub struct Holder;

#[mobula::actor]
impl Holder {
    pub fn new() -> Self {
        Holder
    }

    pub fn ping(&self) -> u32 {
        1
    }
}

fn cpu(n: f64) -> ResourceSet {
    ResourceSet::new().with("CPU", n)
}

#[test]
fn bundles_are_reserved_and_returned() {
    let rt = start(threads(4.0));
    let pg = rt
        .placement_group(vec![cpu(1.0), cpu(2.0)], PlacementStrategy::Pack)
        .expect("create");
    assert!(pg.wait(Some(HANG)).expect("placed"));
    assert_eq!(
        rt.available_resources().expect("available").get("CPU"),
        Some(&1.0)
    );
    // Tasks and actors run inside the bundles.
    let t = one::options(
        TaskOptions::new()
            .placement_group(&pg, Some(1))
            .num_cpus(2.0),
    )
    .remote(&rt);
    assert_eq!(rt.get_timeout(&t, Some(HANG)).expect("task in bundle 1"), 1);
    let any = one::options(TaskOptions::new().placement_group(&pg, None)).remote(&rt);
    assert_eq!(
        rt.get_timeout(&any, Some(HANG))
            .expect("task in any bundle"),
        1
    );
    let h = Holder::options(
        ActorOptions::new()
            .placement_group(&pg, Some(0))
            .num_cpus(1.0),
    )
    .remote(&rt)
    .expect("actor");
    assert_eq!(
        rt.get_timeout(&h.ping(), Some(HANG))
            .expect("actor in bundle 0"),
        1
    );
    // A task asking more than its bundle holds can never run.
    let too_big = one::options(
        TaskOptions::new()
            .placement_group(&pg, Some(0))
            .num_cpus(2.0),
    )
    .remote(&rt);
    assert!(matches!(
        rt.get_timeout(&too_big, Some(HANG)),
        Err(Error::Infeasible { .. })
    ));
    rt.kill(&h).expect("kill");
    rt.remove_placement_group(&pg).expect("remove");
    assert!(pg.wait(Some(HANG)).is_err(), "a removed group reports it");
    assert_eq!(
        rt.available_resources().expect("available").get("CPU"),
        Some(&4.0)
    );
}

#[test]
fn reservation_is_all_or_nothing_and_waits_for_resources() {
    let rt = start(threads(2.0));
    let hog = Holder::options(ActorOptions::new().num_cpus(2.0))
        .remote(&rt)
        .expect("hog");
    rt.get(&hog.ping()).expect("hog alive");
    let pg = rt
        .placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::Pack)
        .expect("create");
    assert!(
        !pg.wait(Some(Duration::from_millis(200))).expect("pending"),
        "no CPU is free"
    );
    assert_eq!(
        rt.available_resources().expect("available").get("CPU"),
        None,
        "nothing reserved in part"
    );
    rt.kill(&hog).expect("kill");
    assert!(pg.wait(Some(HANG)).expect("placed once the CPUs are free"));
    rt.remove_placement_group(&pg).expect("remove");
}

#[test]
fn infeasible_groups_fail_with_a_clear_error() {
    let rt = start(threads(2.0));
    let big = rt
        .placement_group(vec![cpu(8.0)], PlacementStrategy::Pack)
        .expect("create");
    let e = big.wait(Some(HANG)).expect_err("infeasible");
    assert!(e.to_string().contains("infeasible"), "{e}");
    // One node cannot hold two bundles on distinct nodes.
    let spread = rt
        .placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::StrictSpread)
        .expect("create");
    assert!(spread.wait(Some(HANG)).is_err());
    // Both on one node is fine.
    let pack = rt
        .placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::StrictPack)
        .expect("create");
    assert!(pack.wait(Some(HANG)).expect("strict pack"));
    assert!(
        rt.placement_group(vec![ResourceSet::new()], PlacementStrategy::Pack)
            .is_err(),
        "empty bundle"
    );
}

#[test]
fn removing_a_group_ends_its_actors() {
    let rt = start(threads(2.0));
    let pg = rt
        .placement_group(vec![cpu(1.0)], PlacementStrategy::Pack)
        .expect("create");
    assert!(pg.wait(Some(HANG)).expect("placed"));
    let h = Holder::options(ActorOptions::new().placement_group(&pg, Some(0)))
        .remote(&rt)
        .expect("actor");
    assert_eq!(rt.get_timeout(&h.ping(), Some(HANG)).expect("ping"), 1);
    rt.remove_placement_group(&pg).expect("remove");
    // As in Ray, the group's actors end with it.
    match rt.get_timeout(&h.ping(), Some(HANG)) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("placement group"), "{reason}")
        }
        other => panic!("the actor outlived its group: {other:?}"),
    }
    common::eventually("the bundle's CPU is free", || {
        rt.available_resources().expect("available").get("CPU") == Some(&2.0)
    });
}
