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

/// Starts `small` in `dir` and returns once it runs.
fn small_running(rt: &mobula::Runtime, dir: &Path) -> mobula::ObjectRef<u64> {
    let r = small::options(no_retries()).remote(rt, dir.to_string_lossy().to_string(), 41);
    wait_for_file(&dir.join("small-started"));
    r
}

fn release(dir: &Path) {
    std::fs::write(dir.join("release"), b"1").expect("release");
}

#[test]
fn a_retriable_hog_is_killed_retried_and_succeeds_beside_a_small_task() {
    mobula::worker_entry();
    let rt = start(capped(3.0));
    let dir = tempfile::tempdir().expect("tempdir");
    let beside = small_running(&rt, dir.path());

    // Killed on its first two runs, answers on the third.
    let r = hog::options(TaskOptions::new().max_retries(2)).remote(
        &rt,
        dir.path().to_string_lossy().to_string(),
        2,
    );
    assert_eq!(
        rt.get_timeout(&r, Some(HANG)).expect("retried to success"),
        2
    );
    let runs = std::fs::read_to_string(dir.path().join("runs")).expect("runs");
    assert_eq!(
        runs.trim(),
        "3",
        "two killed runs, then the one that answered"
    );
    release(dir.path());
    assert_eq!(rt.get_timeout(&beside, Some(HANG)).expect("small"), 42);
    // The node keeps serving.
    assert_eq!(
        rt.get_timeout(&add::remote(&rt, 2, 3), Some(HANG))
            .expect("add"),
        5
    );
}

#[test]
fn a_hog_without_retries_fails_with_out_of_memory() {
    mobula::worker_entry();
    let rt = start(capped(2.0));
    let dir = tempfile::tempdir().expect("tempdir");
    let beside = small_running(&rt, dir.path());

    let r = hog::options(no_retries()).remote(&rt, dir.path().to_string_lossy().to_string(), 99);
    match rt.get_timeout(&r, Some(HANG)) {
        Err(e @ Error::OutOfMemory { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("task hog was killed"), "{text}");
            assert!(text.contains("over the cap of 300.0 MiB"), "{text}");
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
    release(dir.path());
    assert_eq!(rt.get_timeout(&beside, Some(HANG)).expect("small"), 42);
    assert_eq!(
        rt.get_timeout(&add::remote(&rt, 2, 3), Some(HANG))
            .expect("add"),
        5
    );
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
