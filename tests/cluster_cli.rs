//! The cluster command line against real node daemons on 127.0.0.1, each test with its own
//! port and temp dir, always stopped at the end: start a head, join a node, `status`, a killed
//! node declared dead, a node with a wrong secret refused, a taken port, `stop`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mobula");
const HANG: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn mobula(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run mobula")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster under its own temp dir, stopped when dropped.
struct Cluster {
    temp: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start(cpus: &str) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let c = Cluster { temp, port };
        let o = mobula(&[
            "start",
            "--head",
            "--dashboard-port",
            "0",
            "--port",
            &c.port(),
            "--temp-dir",
            c.dir(),
            "--num-cpus",
            cpus,
            "--bind",
            "127.0.0.1",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("mobula start --address 127.0.0.1:"),
            "{}",
            text(&o)
        );
        c
    }
    fn dir(&self) -> &str {
        self.temp.path().to_str().expect("utf-8 path")
    }
    fn port(&self) -> String {
        self.port.to_string()
    }
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn cluster_dir(&self) -> PathBuf {
        self.temp.path().join(format!("cluster-{}", self.port))
    }
    fn join(&self, extra: &[&str]) -> Output {
        let addr = self.address();
        let mut args = vec![
            "start",
            "--address",
            &addr,
            "--temp-dir",
            self.dir(),
            "--bind",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        mobula(&args)
    }
    fn status(&self) -> String {
        let o = mobula(&["status", "--temp-dir", self.dir(), "--port", &self.port()]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    }
    /// Polls `status` until `pred` holds.
    fn await_status(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; last status:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn node_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.cluster_dir().join("nodes"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = mobula(&[
            "stop",
            "--temp-dir",
            self.dir(),
            "--port",
            &self.port(),
            "--grace-period",
            "5",
        ]);
    }
}

fn section<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let a = s.find(start).map_or(0, |i| i + start.len());
    let b = s[a..].find(end).map_or(s.len(), |i| a + i);
    &s[a..b]
}

fn active(s: &str) -> usize {
    section(s, "Active:\n", "Dead:")
        .lines()
        .filter(|l| l.contains("node_"))
        .count()
}

fn dead(s: &str) -> usize {
    section(s, "Dead:\n", "Resources")
        .lines()
        .filter(|l| l.contains("node_"))
        .count()
}

fn wait_for_log(path: &Path, needle: &str) {
    let deadline = Instant::now() + HANG;
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}:\n{s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_join_show_in_status_and_a_killed_node_is_declared_dead() {
    let c = Cluster::start("2");
    let s = c.await_status("the head", |s| active(s) == 1);
    assert!(s.contains("(head)") && s.contains(" 0.0/2.0 CPU"), "{s}");
    let o = c.join(&["--num-cpus", "1", "--resources", "{\"tpu\": 2}"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = c.await_status("two nodes", |s| active(s) == 2);
    assert!(
        s.contains(" 0.0/3.0 CPU") && s.contains(" 0.0/2.0 tpu"),
        "{s}"
    );
    assert!(s.contains("Pending Demands:"), "{s}");

    let pids = c.node_pids();
    assert_eq!(pids.len(), 2, "a pid file per node");
    let head: mobula::cluster::HeadRecord = serde_json::from_str(
        &std::fs::read_to_string(c.cluster_dir().join("head.json")).expect("head record"),
    )
    .expect("head record json");
    let head_pid = head.pid;
    let worker = *pids
        .iter()
        .find(|p| **p != head_pid)
        .expect("the worker's pid");
    // SAFETY: kill(2) on the node daemon this test started.
    assert_eq!(
        unsafe { libc::kill(worker as libc::pid_t, libc::SIGKILL) },
        0
    );
    let s = c.await_status("the killed node dead", |s| dead(s) == 1 && active(s) == 1);
    assert!(s.contains(" 0.0/2.0 CPU"), "only alive nodes count: {s}");
}

#[test]
fn a_node_with_a_wrong_secret_is_refused() {
    let c = Cluster::start("1");
    let wrong = "00".repeat(32);
    let o = c.join(&["--secret", &wrong]);
    assert!(o.status.success(), "the daemon starts: {}", text(&o));
    wait_for_log(
        &c.cluster_dir().join("logs").join("node.log"),
        "outgoing connection failed",
    );
    let s = c.status();
    assert_eq!(active(&s), 1, "the refused node never registers: {s}");
    let bad = c.join(&["--secret", "nothex"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("64 hex digits"), "{}", text(&bad));
}

#[test]
fn a_taken_port_is_a_loud_error_and_stop_is_scoped() {
    let a = Cluster::start("1");
    let other = tempfile::tempdir().expect("tempdir");
    let o = mobula(&[
        "start",
        "--head",
        "--dashboard-port",
        "0",
        "--port",
        &a.port(),
        "--temp-dir",
        other.path().to_str().expect("path"),
        "--bind",
        "127.0.0.1",
    ]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains(&format!("port {} is taken", a.port)) && msg.contains("--port"),
        "{msg}"
    );

    // A second cluster on the same machine, under the same temp dir.
    let port_b = free_port().to_string();
    let o = mobula(&[
        "start",
        "--head",
        "--dashboard-port",
        "0",
        "--port",
        &port_b,
        "--temp-dir",
        a.dir(),
        "--num-cpus",
        "1",
        "--bind",
        "127.0.0.1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mobula(&["status", "--temp-dir", a.dir()]);
    assert!(
        !o.status.success() && text(&o).contains("several clusters"),
        "{}",
        text(&o)
    );
    let o = mobula(&["stop", "--temp-dir", a.dir(), "--port", &port_b]);
    assert!(
        o.status.success() && text(&o).contains("stopped 1"),
        "{}",
        text(&o)
    );
    // The first cluster is untouched.
    assert_eq!(active(&a.status()), 1);
}
