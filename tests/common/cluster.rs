//! A real two-node cluster for tests: a head and a worker node (two daemons of the `mobula`
//! binary on 127.0.0.1, with their own port and temp dir), always stopped on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use mobula::Config;

/// The `mobula` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_mobula");

/// A running cluster; dropping it stops its daemons.
pub struct Cluster {
    pub temp: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = Command::new(BIN)
            .args([
                "stop",
                "--temp-dir",
                self.temp.path().to_str().unwrap_or("."),
                "--port",
                &self.port.to_string(),
                "--grace-period",
                "5",
            ])
            .output();
    }
}

/// Runs `mobula ARGS`: whether it succeeded, and its stdout and stderr.
pub fn output(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).output().expect("mobula");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

pub fn run(args: &[&str]) {
    let o = Command::new(BIN).args(args).output().expect("mobula");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Cluster {
    /// Starts one daemon of this cluster (2 CPUs on 127.0.0.1) with the flags of its `role`.
    fn start_node(&self, role: &[&str]) {
        let dir = self.temp.path().to_str().expect("path");
        let mut args = vec!["start"];
        args.extend_from_slice(role);
        args.extend_from_slice(&["--num-cpus", "2", "--bind", "127.0.0.1", "--temp-dir", dir]);
        run(&args);
    }

    /// The pid of the worker node's daemon.
    pub fn worker_daemon_pid(&self) -> u32 {
        let dir = self.dir();
        let head_pid = self.head_record().pid;
        std::fs::read_dir(dir.join("nodes"))
            .expect("nodes")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .find(|p| *p != head_pid)
            .expect("the worker node's pid")
    }

    /// `<temp>/cluster-<port>`.
    pub fn dir(&self) -> std::path::PathBuf {
        self.temp.path().join(format!("cluster-{}", self.port))
    }

    /// The head's `head.json`.
    pub fn head_record(&self) -> mobula::cluster::HeadRecord {
        let text = std::fs::read_to_string(self.dir().join("head.json")).expect("head record");
        serde_json::from_str(&text).expect("head record json")
    }

    /// `http://host:port` of the head's dashboard and jobs API.
    pub fn dashboard(&self) -> String {
        self.head_record()
            .dashboard
            .expect("the head serves a dashboard")
    }

    /// The dashboard's token, when the head uses one.
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir().join("auth_token"))
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// Prints the daemons' logs (without debug lines) to help diagnose a failure.
    pub fn dump_logs(&self) {
        let dir = self
            .temp
            .path()
            .join(format!("cluster-{}", self.port))
            .join("logs");
        let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for f in logs {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let kept: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
            eprintln!("==== {}\n{}", f.display(), kept.join("\n"));
        }
    }
}

/// A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral range (32768 and
/// up here), so no test's outgoing connection takes a head's port while the head is down for
/// a restart; never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static HANDED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    let seed = RandomState::new();
    for attempt in 0u32..10_000 {
        let port = 20_000 + (seed.hash_one(attempt) % 12_000) as u16;
        if !handed.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000 on 127.0.0.1");
}

pub fn cluster() -> Cluster {
    cluster_with(&[])
}

/// A head alone, on its own port and temp dir.
pub fn head_only() -> Cluster {
    head_with(&[])
}

/// A head alone started with `flags`.
pub fn head_with(flags: &[&str]) -> Cluster {
    let temp = tempfile::tempdir().expect("tempdir");
    let c = Cluster {
        temp,
        port: free_port(),
    };
    let p = c.port.to_string();
    let mut role = vec!["--head", "--dashboard-port", "0", "--port", &p];
    role.extend_from_slice(flags);
    c.start_node(&role);
    c
}

/// A head and a worker node started with `worker_flags`.
pub fn cluster_with(worker_flags: &[&str]) -> Cluster {
    let c = head_only();
    c.join(worker_flags);
    c
}

impl Cluster {
    /// Starts one more node joining this cluster, with `flags`.
    pub fn join(&self, flags: &[&str]) {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut role = vec!["--address", addr.as_str()];
        role.extend_from_slice(flags);
        self.start_node(&role);
    }

    /// Starts the head again (after it was killed) on the same port, temp dir and storage.
    pub fn restart_head(&self) {
        let port = self.port.to_string();
        self.start_node(&["--head", "--dashboard-port", "0", "--port", &port]);
    }

    /// The id of a node other than the head, as `mobula status` prints it.
    pub fn worker_node_id(&self) -> String {
        let head = self.head_record().node_id;
        let worker = |s: &str| {
            s.split_whitespace()
                .filter_map(|w| w.strip_prefix("node_"))
                .find(|id| !id.is_empty() && !head.starts_with(id))
                .map(str::to_string)
        };
        // The head may not have heard from it yet.
        let s = self.await_status("a worker node in status", |s| worker(s).is_some());
        worker(&s).unwrap_or_default()
    }

    /// What `mobula status` prints for this cluster.
    pub fn status(&self) -> String {
        let o = Command::new(BIN)
            .args([
                "status",
                "--temp-dir",
                self.temp.path().to_str().unwrap_or("."),
                "--port",
                &self.port.to_string(),
            ])
            .output()
            .expect("mobula status");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Polls `mobula status` until its output satisfies `cond`; returns that output.
    pub fn await_status(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + super::HANG;
        loop {
            let s = self.status();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "never: {what}; last status:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn connect(c: &Cluster) -> super::Rt {
    let rt = super::start(
        Config::default()
            .address(format!("127.0.0.1:{}", c.port))
            .cluster_root(c.temp.path()),
    );
    // The head learns of the other nodes from their heartbeats.
    let deadline = Instant::now() + super::HANG;
    while rt
        .cluster_resources()
        .expect("resources")
        .get("CPU")
        .is_none_or(|cpus| *cpus < 4.0)
    {
        assert!(Instant::now() < deadline, "the second node never showed up");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt
}
