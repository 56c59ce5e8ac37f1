//! SIGKILL of a whole node mid-job: the tasks it was running are retried on the node left
//! and the job's results come back complete and correct; the dead node leaves the view.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster, connect};
use mobula::{SchedulingStrategy, TaskOptions};

/// Marks its start in `dir` (a file named by its node), works `ms`, returns `v * 2` and the
/// node it ran on.
#[mobula::remote]
fn doubled_slowly(dir: String, v: u64, ms: u64) -> mobula::Result<(u64, String)> {
    let node = mobula::runtime()?.node_id().hex();
    let mark = std::path::Path::new(&dir).join(format!("{node}-{v}"));
    std::fs::write(mark, b"").map_err(|e| mobula::Error::Runtime(e.to_string()))?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok((v * 2, node))
}

#[test]
fn a_killed_nodes_tasks_finish_elsewhere() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let head_node = rt.node_id().hex();
    let worker = c.worker_node_id();
    let marks = tempfile::tempdir().expect("tempdir");
    let dir = marks.path().to_string_lossy().to_string();
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..4)
        .map(|v| doubled_slowly::options(spread.clone()).remote(&rt, dir.clone(), v, 1500))
        .collect();
    // Kill the worker node once its share of the tasks runs.
    common::eventually("a task runs on the worker node", || {
        std::fs::read_dir(marks.path())
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&worker))
            })
            .unwrap_or(false)
    });
    common::sigkill(c.worker_daemon_pid());
    let killed = Instant::now();
    let results = rt.get_all(&refs).expect("every task finishes");
    eprintln!(
        "fault figures: node SIGKILL recovered_ms={}",
        killed.elapsed().as_millis()
    );
    let values: Vec<u64> = results.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, vec![0, 2, 4, 6], "complete and correct");
    assert!(
        results.iter().all(|(_, n)| *n == head_node),
        "the worker node's tasks were retried on the head: {results:?}"
    );
    common::eventually("the dead node left the view", || {
        rt.cluster_resources().expect("resources").get("CPU") == Some(&2.0)
    });
}
