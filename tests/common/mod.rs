//! Shared fixtures of the integration tests: one runtime at a time per test binary, a gate
//! actor that lets a test hold tasks back and release them on an event, and waits on files.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mobula::{Config, Runtime, WorkerMode};

pub mod cluster;
pub mod http;

static LOCK: Mutex<()> = Mutex::new(());

/// A running runtime; dropping it shuts the runtime down.
pub struct Rt {
    pub rt: Runtime,
    _guard: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Rt {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        mobula::shutdown();
    }
}

/// Takes this binary's runtime turn without starting a runtime.
pub fn exclusive() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a runtime with `config` (tests of one binary take turns).
pub fn start(config: Config) -> Rt {
    let guard = exclusive();
    let rt = mobula::init_with(config).expect("runtime starts");
    Rt { rt, _guard: guard }
}

/// Thread workers with `cpus` CPUs.
pub fn threads(cpus: f64) -> Config {
    Config::default().num_cpus(cpus)
}

/// Worker processes with `cpus` CPUs.
pub fn processes(cpus: f64) -> Config {
    Config::default()
        .num_cpus(cpus)
        .worker_mode(WorkerMode::Process)
        .prestart_workers(cpus as usize)
}

/// A long guard against hangs (not a speed expectation).
pub const HANG: Duration = Duration::from_secs(120);

/// This test binary running only its test `name` (a child driver process of another test).
pub fn child_test(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("exe"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// Runs a child process (`cmd` builds it afresh each time) again and again until `pick`
/// finds what it wants in its output; fails with `what` and the last run's output after
/// `HANG`.
pub fn until_child_says<T>(
    what: &str,
    mut cmd: impl FnMut() -> std::process::Command,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        let out = cmd().output().expect("child process");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(v) = pick(&text) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// In a child driver that a test started with `child_test`: a runtime joined to the cluster
/// at `CHILD_ADDRESS` (cluster root `CHILD_ROOT`) and the values of the `extra` variables;
/// `None` when the test runs on its own (not as a child).
pub fn child_driver(extra: &[&str]) -> Option<(Runtime, Vec<String>)> {
    let addr = std::env::var("CHILD_ADDRESS").ok()?;
    let root = std::env::var("CHILD_ROOT").ok()?;
    let values = extra
        .iter()
        .map(|k| std::env::var(k).ok())
        .collect::<Option<Vec<String>>>()?;
    let rt =
        mobula::init_with(Config::default().address(addr).cluster_root(root)).expect("connect");
    Some((rt, values))
}

/// Waits until `path` exists and returns its contents.
pub fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + HANG;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `cond` holds (polling; a long deadline guards against hangs).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends SIGKILL to a process.
pub fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a pid the test read from its own worker.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}");
}

/// An actor that holds tasks back until the test opens it.
#[mobula::actor]
pub struct Gate {
    open: tokio::sync::watch::Sender<bool>,
}

#[mobula::actor]
impl Gate {
    pub fn new() -> Self {
        let (open, _) = tokio::sync::watch::channel(false);
        Gate { open }
    }

    /// Lets every waiter through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Returns once the gate is open.
    pub async fn wait_open(&self) {
        let mut rx = self.open.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A task that returns `v` once `gate` opens.
#[mobula::remote]
pub fn gated(gate: mobula::ActorHandle<Gate>, v: u64) -> mobula::Result<u64> {
    mobula::runtime()?.get(&gate.wait_open())?;
    Ok(v)
}

/// A counter actor for tests that need some actor's calls.
#[mobula::actor]
pub struct Tally {
    n: u64,
}

#[mobula::actor]
impl Tally {
    pub fn new() -> Self {
        Tally { n: 0 }
    }

    /// Adds `v`; the new total.
    pub fn add(&mut self, v: u64) -> u64 {
        self.n += v;
        self.n
    }
}

/// The id of the node a task runs on.
#[mobula::remote]
pub fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}
