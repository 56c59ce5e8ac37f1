//! Cutting a node off and healing it, on a real two-node cluster, two ways: the worker node in
//! a network namespace of its own, joined to the head by a veth pair whose link is taken down
//! mid-job and brought up again (skipped with a note where network namespaces cannot be made),
//! and the worker node's daemon and worker processes (one process group) frozen with SIGSTOP
//! mid-job. Either way the head declares the node dead, its tasks finish on the head with the
//! right answers, and once healed it is alive and given work again. Detection, recovery and
//! heal times are printed (`fault figures:`) for BENCHMARKS.md.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{BIN, Cluster, cluster, connect};
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

/// The scenario: tasks on both nodes, `cut` once one runs on the worker node, the node
/// declared dead and its tasks run again on the head, `heal`, the node alive and taking work
/// again. Prints the figures under `label`.
fn cut_and_heal(c: &Cluster, label: &str, cut: impl FnOnce(), heal: impl FnOnce()) {
    let rt = connect(c);
    let head = rt.node_id().hex();
    let worker = c.worker_node_id();
    let marks = tempfile::tempdir().expect("tempdir");
    let dir = marks.path().to_string_lossy().to_string();
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..4)
        .map(|_| marked_where::options(spread.clone()).remote(&rt, dir.clone(), 4000))
        .collect();
    common::eventually("a task running on the worker node", || {
        std::fs::read_dir(marks.path()).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&worker))
        })
    });
    cut();
    let cut_at = Instant::now();
    c.await_status("the cut-off node declared dead", |s| {
        dead_section(s).contains(&worker)
    });
    let detected = cut_at.elapsed();
    let nodes = rt.get_all(&refs).expect("every task finishes");
    let recovered = cut_at.elapsed();
    assert!(
        nodes.iter().all(|n| *n == head),
        "the cut-off node's tasks were run again on the head: {nodes:?}"
    );

    heal();
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
        "fault figures: {label} detected_ms={} recovered_ms={} healed_ms={}",
        detected.as_millis(),
        recovered.as_millis(),
        healed.as_millis()
    );
}

#[test]
fn a_node_cut_off_mid_job_is_declared_dead_its_tasks_finish_and_it_heals() {
    mobula::worker_entry();
    let c = cluster();
    let pid = c.worker_daemon_pid();
    let _thaw = Thaw(pid);
    cut_and_heal(
        &c,
        "partition",
        || signal_node(pid, libc::SIGSTOP),
        || signal_node(pid, libc::SIGCONT),
    );
}

/// `ip ...`, true when it succeeded.
fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A network namespace joined to this one by a veth pair on its own /24; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    fn create() -> Option<Self> {
        let pid = std::process::id();
        let net = format!("10.213.{}", pid % 250);
        let n = Netns {
            name: format!("mobula-t{pid}"),
            host_if: format!("mbh{}", pid % 1_000_000),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        let peer = format!("mbn{}", pid % 1_000_000);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), n.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                n.host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer.clone(),
                "netns".into(),
                n.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", n.host_ip),
                "dev".into(),
                n.host_if.clone(),
            ],
            vec!["link".into(), "set".into(), n.host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                n.name.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/24", n.ns_ip),
                "dev".into(),
                peer.clone(),
            ],
            vec![
                "-n".into(),
                n.name.clone(),
                "link".into(),
                "set".into(),
                peer,
                "up".into(),
            ],
            vec![
                "-n".into(),
                n.name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if !ip(&args) {
                eprintln!(
                    "note: cannot set up a network namespace (ip {}): the link-cut test is skipped",
                    step.join(" ")
                );
                return None;
            }
        }
        Some(n)
    }

    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(
            ip(&["link", "set", &self.host_if, state]),
            "ip link set {state}"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

/// Runs `mobula start ARGS` (in namespace `ns` when given), asserting it started.
fn start(ns: Option<&str>, args: &[&str]) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => std::process::Command::new(BIN),
    };
    let out = cmd.arg("start").args(args).output().expect("mobula start");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_behind_a_cut_link_is_declared_dead_its_tasks_finish_and_it_heals() {
    mobula::worker_entry();
    let Some(ns) = Netns::create() else {
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let port = common::cluster::free_port();
    let c = Cluster { temp, port };
    let dir = c.temp.path().to_str().expect("path").to_string();
    let p = port.to_string();
    let common_args = ["--num-cpus", "2", "--temp-dir", dir.as_str()];
    let mut head = vec![
        "--head",
        "--dashboard-port",
        "0",
        "--port",
        &p,
        "--bind",
        &ns.host_ip,
    ];
    head.extend_from_slice(&common_args);
    start(None, &head);
    let join = format!("{}:{port}", ns.host_ip);
    let mut node = vec!["--address", join.as_str(), "--bind", &ns.ns_ip];
    node.extend_from_slice(&common_args);
    start(Some(&ns.name), &node);
    cut_and_heal(&c, "link cut", || ns.link(false), || ns.link(true));
    drop(c);
}
