//! Cutting a node off and healing it, on a real two-node cluster: the worker node's daemon and
//! its worker processes (one process group) are frozen with SIGSTOP mid-job, so the node goes
//! silent as behind a dropped link; the head declares it dead, its tasks finish on the head
//! with the right answers; SIGCONT heals it, and it is alive and given work again. Detection,
//! recovery and heal times are printed (`fault figures:`) for BENCHMARKS.md.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, cluster, connect};
use mobula::{SchedulingStrategy, TaskOptions};

/// Marks `dir` with the node it runs on, then works for `ms`.
#[mobula::remote]
fn marked_where(dir: String, ms: u64) -> mobula::Result<String> {
    let node = mobula::runtime()?.node_id().hex();
    let mark = Path::new(&dir).join(format!("{node}-{}", std::process::id()));
    std::fs::write(&mark, b"").map_err(|e| mobula::Error::Serialization(e.to_string()))?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(node)
}

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

/// Sends `sig` to the process group the worker node's daemon leads (its workers too).
fn signal_node(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group of the node daemon this test started.
    assert_eq!(unsafe { libc::kill(-(pid as libc::pid_t), sig) }, 0);
}

/// Resumes the frozen node however the test ends, so the fixture can stop it.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        // SAFETY: as in `signal_node`.
        unsafe {
            libc::kill(-(self.0 as libc::pid_t), libc::SIGCONT);
        }
    }
}

fn dead_section(s: &str) -> &str {
    s.split("Dead:").nth(1).unwrap_or_default()
}

fn worker_node(c: &Cluster, head: &str) -> String {
    let s = c.status();
    let ids: Vec<&str> = s
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("node_"))
        .collect();
    ids.into_iter()
        .find(|id| !head.starts_with(id) && !id.is_empty())
        .unwrap_or_else(|| panic!("no worker node in status:\n{s}"))
        .to_string()
}

#[test]
fn a_node_cut_off_mid_job_is_declared_dead_its_tasks_finish_and_it_heals() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let head = rt.node_id().hex();
    let worker = worker_node(&c, &head);
    let marks = tempfile::tempdir().expect("tempdir");
    let dir = marks.path().to_string_lossy().to_string();
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..4)
        .map(|_| marked_where::options(spread.clone()).remote(&rt, dir.clone(), 4000))
        .collect();
    // Cut the node off once a task runs there.
    common::eventually("a task running on the worker node", || {
        std::fs::read_dir(marks.path()).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&worker))
        })
    });
    let pid = c.worker_daemon_pid();
    let _thaw = Thaw(pid);
    signal_node(pid, libc::SIGSTOP);
    let cut = Instant::now();
    c.await_status("the cut-off node declared dead", |s| {
        dead_section(s).contains(&worker)
    });
    let detected = cut.elapsed();

    let nodes = rt.get_all(&refs).expect("every task finishes");
    let recovered = cut.elapsed();
    assert!(
        nodes.iter().all(|n| *n == head),
        "the cut-off node's tasks were run again on the head: {nodes:?}"
    );

    // Heal: the node speaks again, is alive, and gets work.
    signal_node(pid, libc::SIGCONT);
    let healing = Instant::now();
    c.await_status("the healed node alive again", |s| {
        !dead_section(s).contains(&worker)
    });
    let healed = healing.elapsed();
    let deadline = Instant::now() + common::HANG;
    loop {
        let refs: Vec<_> = (0..4)
            .map(|_| where_am_i::options(spread.clone()).remote(&rt))
            .collect();
        let ran: std::collections::BTreeSet<String> =
            rt.get_all(&refs).expect("tasks").into_iter().collect();
        if ran.iter().any(|n| n.starts_with(&worker)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the healed node never took work again: {ran:?}"
        );
    }
    eprintln!(
        "fault figures: partition detected_ms={} recovered_ms={} healed_ms={}",
        detected.as_millis(),
        recovered.as_millis(),
        healed.as_millis()
    );
}
