//! SIGKILL of real worker processes on a real cluster (a head and a worker node), the tasks
//! and actors on the worker node and the driver on the head: a task killed mid-run is retried
//! and the program gets the right answer; without retries it fails with a worker-crashed
//! error; a killed actor process is restarted (constructor re-run) while `max_restarts`
//! allows, and then its calls fail with an actor-died error.

mod common;

use std::path::Path;

use common::cluster::{Cluster, cluster, connect};
use common::{HANG, sigkill, wait_for_file};
use mobula::{ActorOptions, Error, SchedulingStrategy, TaskOptions};

/// First attempt: records its pid and hangs; later attempts answer at once.
#[mobula::remote]
fn victim(dir: String, v: u64) -> u64 {
    let dir = Path::new(&dir);
    let marker = dir.join("started");
    if marker.exists() {
        return v * 10;
    }
    std::fs::write(&marker, b"1").expect("marker");
    std::fs::write(dir.join("pid"), std::process::id().to_string()).expect("pid file");
    loop {
        std::thread::park();
    }
}

#[mobula::actor]
pub struct Stateful {
    calls: u64,
}

#[mobula::actor]
impl Stateful {
    pub fn new() -> Self {
        Stateful { calls: 0 }
    }

    pub fn call(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Hard affinity to the cluster's worker node.
fn on_worker(c: &Cluster) -> SchedulingStrategy {
    SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&c.worker_node_id()).expect("node id"),
        soft: false,
    }
}

fn pid_in(dir: &Path) -> u32 {
    wait_for_file(&dir.join("pid")).trim().parse().expect("pid")
}

#[test]
fn a_killed_task_is_retried_and_gives_the_right_answer() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let there = TaskOptions::new().scheduling_strategy(on_worker(&c));
    let r = victim::options(there).remote(&rt, dir.path().to_string_lossy().to_string(), 7);
    sigkill(pid_in(dir.path()));
    assert_eq!(rt.get_timeout(&r, Some(HANG)).expect("retried"), 70);
}

#[test]
fn without_retries_a_killed_task_fails_with_worker_crashed() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let there = TaskOptions::new()
        .max_retries(0)
        .scheduling_strategy(on_worker(&c));
    let r = victim::options(there).remote(&rt, dir.path().to_string_lossy().to_string(), 7);
    sigkill(pid_in(dir.path()));
    match rt.get_timeout(&r, Some(HANG)) {
        Err(Error::WorkerCrashed { task, detail }) => {
            assert_eq!(task, "victim");
            assert!(detail.contains("signal 9"), "{detail}");
        }
        other => panic!("expected worker crashed, got {other:?}"),
    }
}

#[test]
fn a_killed_actor_restarts_then_dies_for_good() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let a = Stateful::options(
        ActorOptions::new()
            .max_restarts(1)
            .max_task_retries(2)
            .scheduling_strategy(on_worker(&c)),
    )
    .remote(&rt)
    .expect("create");
    assert_eq!(rt.get_timeout(&a.call(), Some(HANG)).expect("call"), 1);
    assert_eq!(rt.get_timeout(&a.call(), Some(HANG)).expect("call"), 2);
    let first = rt.get_timeout(&a.pid(), Some(HANG)).expect("pid");
    sigkill(first);
    // The constructor ran again in a new process: the count starts over.
    let second = rt.get_timeout(&a.pid(), Some(HANG)).expect("restarted");
    assert_ne!(first, second);
    assert_eq!(
        rt.get_timeout(&a.call(), Some(HANG)).expect("fresh state"),
        1
    );
    sigkill(second);
    match rt.get_timeout(&a.call(), Some(HANG)) {
        // "its worker process died", or "the actor's host is gone" when the call raced the
        // death report: both are the actor-died error.
        Err(Error::ActorDied { reason, .. }) => assert!(!reason.is_empty()),
        other => panic!("expected actor died, got {other:?}"),
    }
}

#[test]
fn an_actor_without_restarts_dies_on_kill() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let a = Stateful::options(ActorOptions::new().scheduling_strategy(on_worker(&c)))
        .remote(&rt)
        .expect("create");
    let pid = rt.get_timeout(&a.pid(), Some(HANG)).expect("pid");
    sigkill(pid);
    assert!(matches!(
        rt.get_timeout(&a.call(), Some(HANG)),
        Err(Error::ActorDied { .. })
    ));
}
