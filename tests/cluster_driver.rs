//! A program using a running cluster: `init` with the head's address connects this process as
//! a driver to the node daemon of this machine; its tasks and actors run in worker processes of
//! this very executable, started by the daemon.

mod common;

use common::Tally;
use std::time::Duration;

use mobula::{ActorOptions, Config, Error};

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

/// Writes its pid to `path`, then sleeps for a long time.
#[mobula::remote]
fn long_sleeper(path: String) -> mobula::Result<()> {
    std::fs::write(&path, std::process::id().to_string())
        .map_err(|e| mobula::Error::Runtime(e.to_string()))?;
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// The child driver of `a_drivers_exit_ends_its_jobs_work` (a no-op when run on its own):
/// creates a named and a detached named actor, starts a long task, and exits.
#[test]
fn child_driver_of_the_exit_test() {
    mobula::worker_entry();
    let (Ok(addr), Ok(root), Ok(marker)) = (
        std::env::var("CHILD_ADDRESS"),
        std::env::var("CHILD_ROOT"),
        std::env::var("CHILD_MARKER"),
    ) else {
        return;
    };
    let rt =
        mobula::init_with(Config::default().address(addr).cluster_root(root)).expect("connect");
    let doomed = Tally::options(ActorOptions::new().name("doomed"))
        .remote(&rt)
        .expect("doomed");
    let keeper = Tally::options(ActorOptions::new().name("keeper").detached(true))
        .remote(&rt)
        .expect("keeper");
    rt.get(&doomed.add(1)).expect("doomed answers");
    rt.get(&keeper.add(5)).expect("keeper answers");
    let _long = long_sleeper::remote(&rt, marker.clone());
    common::wait_for_file(std::path::Path::new(&marker));
    // The process ends here, with its task still running.
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn a_drivers_exit_ends_its_jobs_work() {
    mobula::worker_entry();
    let h = common::cluster::head_only();
    let addr = format!("127.0.0.1:{}", h.port);
    let marker = h.temp.path().join("sleeper.pid");
    let out = common::child_test("child_driver_of_the_exit_test")
        .env("CHILD_ADDRESS", &addr)
        .env("CHILD_ROOT", h.temp.path())
        .env("CHILD_MARKER", &marker)
        .output()
        .expect("child driver");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sleeper: i32 = std::fs::read_to_string(&marker)
        .expect("marker")
        .trim()
        .parse()
        .expect("pid");

    let rt = common::start(Config::default().address(addr).cluster_root(h.temp.path()));
    common::eventually("the job's running task is killed", || !alive(sleeper));
    common::eventually("the job's actor is gone", || {
        rt.get_actor::<Tally>("doomed", None).is_err()
    });
    let keeper = rt
        .get_actor::<Tally>("keeper", None)
        .expect("a detached actor outlives its job");
    assert_eq!(rt.get(&keeper.add(1)).expect("keeper answers"), 6);
    common::eventually("the CPUs are free again", || {
        rt.available_resources().expect("available").get("CPU") == Some(&2.0)
    });
}
