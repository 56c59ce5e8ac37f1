//! The node memory monitor with real worker processes, driven by a cap on their resident
//! memory (`memory_monitor.worker_bytes`, `--memory-monitor-worker-bytes`) so the tests never
//! fill the machine: a retriable task that allocates past the cap is killed, retried after a
//! backoff and finally succeeds; one without retries fails with `Error::OutOfMemory`; a small
//! task running beside them finishes; the node keeps serving; a daemon started with the flag
//! counts its kills in `mobula_tasks_oom_killed_total`.
//!
//! One hog runs at a time and allocates gradually (16 MiB every 50 ms, at most 600 MiB), so
//! the test's memory stays well under 1 GiB. The small tasks have no retries and start
//! first, so the policy (latest retriable, else latest) always picks the hog.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{HANG, processes, start, wait_for_file};
use mobula::{Config, Error, MemoryMonitorConfig, TaskOptions};

/// The cap on the worker processes' resident memory.
const CAP: u64 = 300 << 20;
/// What a hog allocates and touches.
const HOG_MIB: u64 = 600;

/// Counts its runs in `dir/runs`; the first `hog_runs` runs allocate and touch `HOG_MIB` MiB
/// gradually and hold it (until killed); later runs return how many runs came before.
#[mobula::remote]
fn hog(dir: String, hog_runs: u64) -> u64 {
    let runs = Path::new(&dir).join("runs");
    let before: u64 = std::fs::read_to_string(&runs)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::fs::write(&runs, (before + 1).to_string()).expect("runs file");
    if before >= hog_runs {
        return before;
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..HOG_MIB / 16 {
        let mut chunk = vec![0u8; 16 << 20];
        for b in chunk.iter_mut().step_by(4096) {
            *b = 1;
        }
        held.push(std::hint::black_box(chunk));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Held until the monitor kills this process; a survivor answers what no test expects.
    std::thread::sleep(HANG);
    std::hint::black_box(&held);
    u64::MAX
}

/// Marks `dir/small-started`, waits for `dir/release`, then answers `v + 1`.
#[mobula::remote]
fn small(dir: String, v: u64) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join("small-started"), b"1").expect("marker");
    let deadline = std::time::Instant::now() + HANG;
    while !dir.join("release").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    v + 1
}

#[mobula::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn capped(cpus: f64) -> Config {
    processes(cpus).memory_monitor(MemoryMonitorConfig {
        worker_bytes: Some(CAP),
        ..MemoryMonitorConfig::default()
    })
}

fn no_retries() -> TaskOptions {
    TaskOptions::new().max_retries(0)
}

/// What a test holds: its capped node, its temp dir, the small task and the hog.
struct Run {
    rt: common::Rt,
    dir: tempfile::TempDir,
    small: mobula::ObjectRef<u64>,
    hog: mobula::ObjectRef<u64>,
}

/// On a node with `cpus` CPUs and the cap: starts `small`, waits until it runs, then starts
/// a hog with `opts` that allocates on its first `hog_runs` runs.
fn hog_beside_small(cpus: f64, opts: TaskOptions, hog_runs: u64) -> Run {
    let rt = start(capped(cpus));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_string_lossy().to_string();
    let small = small::options(no_retries()).remote(&rt, path.clone(), 41);
    wait_for_file(&dir.path().join("small-started"));
    let hog = hog::options(opts).remote(&rt, path, hog_runs);
    Run {
        rt,
        dir,
        small,
        hog,
    }
}

impl Run {
    /// Lets `small` finish, checks its answer, then that the node still runs a new task.
    fn release_and_go_on(self) {
        std::fs::write(self.dir.path().join("release"), b"1").expect("release");
        let rt = &self.rt;
        assert_eq!(rt.get_timeout(&self.small, Some(HANG)).expect("small"), 42);
        let later = add::remote(rt, 2, 3);
        assert_eq!(rt.get_timeout(&later, Some(HANG)).expect("add"), 5);
    }
}

#[test]
fn a_retriable_hog_is_killed_retried_and_succeeds_beside_a_small_task() {
    mobula::worker_entry();
    // Killed on its first two runs, answers on the third.
    let run = hog_beside_small(3.0, TaskOptions::new().max_retries(2), 2);
    assert_eq!(
        run.rt
            .get_timeout(&run.hog, Some(HANG))
            .expect("retried to success"),
        2
    );
    let runs = std::fs::read_to_string(run.dir.path().join("runs")).expect("runs");
    assert_eq!(
        runs.trim(),
        "3",
        "two killed runs, then the one that answered"
    );
    run.release_and_go_on();
}

#[test]
fn a_hog_without_retries_fails_with_out_of_memory() {
    mobula::worker_entry();
    let run = hog_beside_small(2.0, no_retries(), 99);
    match run.rt.get_timeout(&run.hog, Some(HANG)) {
        Err(e @ Error::OutOfMemory { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("task hog was killed"), "{text}");
            assert!(text.contains("over the cap of 300.0 MiB"), "{text}");
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
    run.release_and_go_on();
}

#[test]
fn a_daemon_with_the_flag_kills_and_counts_it_in_metrics() {
    mobula::worker_entry();
    let cap = CAP.to_string();
    let c = common::cluster::head_with(&["--memory-monitor-worker-bytes", &cap]);
    let rt = start(
        Config::default()
            .address(format!("127.0.0.1:{}", c.port))
            .cluster_root(c.temp.path()),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let r = hog::options(no_retries()).remote(&rt, dir.path().to_string_lossy().to_string(), 99);
    assert!(
        matches!(
            rt.get_timeout(&r, Some(HANG)),
            Err(Error::OutOfMemory { .. })
        ),
        "the daemon's monitor kills the hog"
    );
    assert_eq!(
        rt.get_timeout(&add::remote(&rt, 2, 3), Some(HANG))
            .expect("add"),
        5
    );

    // The attempt's row in the state API says why it failed, as Ray does.
    let tasks = format!("{}/api/v0/tasks?detail=true", c.dashboard());
    let (status, body) = common::http::get(&tasks, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"error_type\":\"OUT_OF_MEMORY\""), "{body}");

    // Heartbeats bring the count to the head's /metrics.
    let url = format!("{}/metrics", c.dashboard());
    let line = format!(
        "mobula_tasks_oom_killed_total{{node_id=\"{}\"}} 1",
        rt.node_id().hex()
    );
    common::eventually("the kill is counted in /metrics", || {
        let (status, body) = common::http::get(&url, &[]);
        std::thread::sleep(Duration::from_millis(50));
        status == 200 && body.lines().any(|l| l == line)
    });
}
