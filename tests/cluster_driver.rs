//! A program using a running cluster: `init` with the head's address connects this process as
//! a driver to the node daemon of this machine; its tasks and actors run in worker processes of
//! this very executable, started by the daemon.

mod common;

use mobula::{Config, Error};

#[mobula::remote]
fn whoami() -> u32 {
    std::process::id()
}

#[mobula::remote]
fn sq(x: u64) -> u64 {
    x * x
}

#[mobula::remote]
fn sum_of_squares(n: u64) -> mobula::Result<u64> {
    let rt = mobula::runtime()?;
    let refs: Vec<_> = (1..=n).map(|i| sq::remote(&rt, i)).collect();
    Ok(rt.get_all(&refs)?.iter().sum())
}

#[mobula::actor]
pub struct Tally {
    n: u64,
}

#[mobula::actor]
impl Tally {
    pub fn new() -> Self {
        Tally { n: 0 }
    }
    pub fn add(&mut self, v: u64) -> u64 {
        self.n += v;
        self.n
    }
}

#[test]
fn a_driver_runs_tasks_and_actors_on_the_cluster() {
    // A worker process of this test enters worker mode here, before starting anything.
    mobula::worker_entry();
    let h = common::cluster::head_only();
    let rt = common::start(
        Config::default()
            .address(format!("127.0.0.1:{}", h.port))
            .cluster_root(h.temp.path()),
    );
    let total = rt.cluster_resources().expect("resources");
    assert_eq!(
        total.get("CPU"),
        Some(&2.0),
        "the daemon's resources, not this process's"
    );
    let pids = rt
        .get_all(&(0..6).map(|_| whoami::remote(&rt)).collect::<Vec<_>>())
        .expect("tasks");
    assert!(pids.iter().all(|p| *p != std::process::id()));
    let nested = sum_of_squares::remote(&rt, 10);
    assert_eq!(
        rt.get_timeout(&nested, Some(common::HANG)).expect("nested"),
        385
    );
    let t = Tally::remote(&rt).expect("actor");
    let refs: Vec<_> = (1..=10).map(|i| t.add(i)).collect();
    assert_eq!(rt.get_all(&refs).expect("calls").last(), Some(&55));
    let stored = rt.put(&vec![1u32, 2, 3]).expect("put");
    assert_eq!(rt.get(&stored).expect("get"), vec![1, 2, 3]);
}

#[test]
fn no_local_node_is_a_clear_error() {
    let temp = tempfile::tempdir().expect("tempdir");
    let _turn = common::exclusive();
    let e = mobula::init_with(
        Config::default()
            .address("127.0.0.1:1")
            .cluster_root(temp.path()),
    )
    .expect_err("nothing to connect to");
    assert!(
        matches!(&e, Error::Runtime(m) if m.contains("mobula start --address")),
        "{e}"
    );
}
