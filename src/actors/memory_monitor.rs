//! The node memory monitor (Ray's raylet memory monitor): a plain thread that samples the
//! node's memory every `refresh` and, when it is over its limit, tells the raylet
//! (`RayletMsg::MemoryPressure`), which picks the task to kill because it owns the running
//! tasks (`pick_victim`: the most recently started retriable task, else the most recently
//! started one). Nothing here runs on an actor thread or blocks one.
//!
//! Two limits, either of which triggers it:
//! - node memory: `used > usage_threshold * total`, where in a memory cgroup with a limit
//!   below the machine's memory total is that limit and used is the cgroup's usage minus its
//!   reclaimable inactive file cache (v2: `memory.max`, `memory.current`, `inactive_file`
//!   of `memory.stat`; v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
//!   `total_inactive_file`), else total is `MemTotal` and used is
//!   `MemTotal - MemAvailable` of `/proc/meminfo`;
//! - optionally, `worker_bytes`: the summed resident memory (`VmRSS`) of the node's worker
//!   processes, a cap that lets tests exercise the monitor without filling the machine.
//!
//! The monitor runs only on nodes with a worker-process pool (process mode, and every node
//! daemon): thread workers live in the node's own process and cannot be killed alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::actors::raylet::RayletMsg;
use crate::ids::{TaskId, WorkerId};
use crate::worker::process::ProcShared;

/// Settings of a node's memory monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryMonitorConfig {
    /// How often memory is sampled (`memory_monitor_refresh_ms`, default 250 ms); zero
    /// turns the monitor off.
    pub refresh: Duration,
    /// The fraction of the node's memory past which a task is killed
    /// (`memory_usage_threshold`, default 0.95).
    pub usage_threshold: f64,
    /// A cap on the summed resident memory of the node's worker processes, in bytes
    /// (`None`, the default: no cap).
    pub worker_bytes: Option<u64>,
}

impl Default for MemoryMonitorConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_millis(250),
            usage_threshold: 0.95,
            worker_bytes: None,
        }
    }
}

impl MemoryMonitorConfig {
    /// Defaults overridden by `MOBULA_MEMORY_MONITOR_REFRESH_MS`,
    /// `MOBULA_MEMORY_USAGE_THRESHOLD` and `MOBULA_MEMORY_MONITOR_WORKER_BYTES`
    /// (unparsable values are ignored with a warning).
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Some(ms) = env_parse::<u64>("MOBULA_MEMORY_MONITOR_REFRESH_MS") {
            c.refresh = Duration::from_millis(ms);
        }
        if let Some(t) = env_parse::<f64>("MOBULA_MEMORY_USAGE_THRESHOLD") {
            c.usage_threshold = t;
        }
        if let Some(b) = env_parse::<u64>("MOBULA_MEMORY_MONITOR_WORKER_BYTES") {
            c.worker_bytes = Some(b);
        }
        c
    }

    /// Checks the threshold is a fraction in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if self.usage_threshold > 0.0 && self.usage_threshold <= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "the memory usage threshold must be in (0, 1], not {}",
                self.usage_threshold
            ))
        }
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => {
            tracing::warn!(variable = name, value = %v, "ignoring an unparsable setting");
            None
        }
    }
}

/// Which limit was passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The node's (or its cgroup's) memory.
    Node,
    /// The cap on the worker processes' resident memory.
    Workers,
}

/// Memory over its limit, as sampled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pressure {
    pub scope: Scope,
    /// Bytes in use.
    pub used: u64,
    /// The limit they passed (threshold × total, or the worker cap).
    pub limit: u64,
    /// The node's (or cgroup's) memory, for the node scope.
    pub total: u64,
    /// When the sample began: the raylet ignores samples that began before its last
    /// victim's death was reported (they may still count the victim).
    pub at: std::time::Instant,
}

impl Pressure {
    /// What an out-of-memory error says about it.
    pub fn describe(&self) -> String {
        match self.scope {
            Scope::Node => format!(
                "node memory used {} of {}, over the threshold of {} (memory_usage_threshold)",
                mib(self.used),
                mib(self.total),
                mib(self.limit)
            ),
            Scope::Workers => format!(
                "the node's worker processes used {}, over the cap of {} (memory_monitor_worker_bytes)",
                mib(self.used),
                mib(self.limit)
            ),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Node memory: (used, total) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeMemory {
    pub used: u64,
    pub total: u64,
}

/// `MemTotal - MemAvailable` and `MemTotal` of a `/proc/meminfo` text.
pub(crate) fn parse_meminfo(text: &str) -> Option<NodeMemory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Some(NodeMemory {
        used: total.saturating_sub(available),
        total,
    })
}

/// The cgroup directory of this process for one hierarchy, from a `/proc/self/cgroup`
/// text: `"0:"` for v2 (`0::/path`), `"memory"` for v1's memory controller
/// (`4:memory:/path`).
pub(crate) fn parse_cgroup_path(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            "0:" => id == "0" && ctrls.is_empty(),
            c => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

/// A cgroup's memory from its limit, usage and `memory.stat` texts, less the reclaimable
/// `inactive` file cache (the stat key); `None` when it has no limit (v2's `max`).
pub(crate) fn parse_cgroup(
    limit: &str,
    usage: &str,
    stat: Option<&str>,
    inactive: &str,
) -> Option<NodeMemory> {
    let total = limit.trim().parse::<u64>().ok()?;
    let usage = usage.trim().parse::<u64>().ok()?;
    let cache = stat
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(inactive)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(NodeMemory {
        used: usage.saturating_sub(cache),
        total,
    })
}

/// The memory cgroup hierarchies read, first found first: (`/proc/self/cgroup` controller,
/// mount, limit file, usage file, the `memory.stat` key of reclaimable file cache).
const HIERARCHIES: [(&str, &str, &str, &str, &str); 2] = [
    (
        "0:",
        "/sys/fs/cgroup",
        "memory.max",
        "memory.current",
        "inactive_file",
    ),
    (
        "memory",
        "/sys/fs/cgroup/memory",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "total_inactive_file",
    ),
];

/// The memory of this process's cgroup (v2, else v1), when it can be read.
fn cgroup_memory() -> Option<NodeMemory> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    HIERARCHIES
        .iter()
        .find_map(|(controller, mount, limit, usage, inactive)| {
            let p = parse_cgroup_path(&text, controller)?;
            let dir = Path::new(mount).join(p.trim_start_matches('/'));
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            let stat = read("memory.stat");
            parse_cgroup(&read(limit)?, &read(usage)?, stat.as_deref(), inactive)
        })
}

/// The node's memory now: this process's cgroup when its limit is below the machine's
/// memory, else the machine's (`None` when neither can be read).
pub(crate) fn node_memory() -> Option<NodeMemory> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t));
    let limited = cgroup_memory().filter(|c| machine.is_none_or(|m| c.total < m.total));
    limited.or(machine)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident memory of a process (0 once it is gone).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_vm_rss(&s))
        .unwrap_or(0)
}

/// One sample (begun `at`) against the limits: the first one passed, if any.
pub(crate) fn check(
    cfg: &MemoryMonitorConfig,
    at: std::time::Instant,
    node: Option<NodeMemory>,
    worker_rss: impl FnOnce() -> u64,
) -> Option<Pressure> {
    if let Some(m) = node {
        let limit = (m.total as f64 * cfg.usage_threshold) as u64;
        if m.used > limit {
            return Some(Pressure {
                scope: Scope::Node,
                used: m.used,
                limit,
                total: m.total,
                at,
            });
        }
    }
    let cap = cfg.worker_bytes?;
    let used = worker_rss();
    (used > cap).then_some(Pressure {
        scope: Scope::Workers,
        used,
        limit: cap,
        total: 0,
        at,
    })
}

/// The node's worker processes, as the pool keeps them.
pub(crate) type Procs = Arc<Mutex<HashMap<WorkerId, Arc<ProcShared>>>>;

/// Starts the monitor thread (unless `refresh` is zero). It ends when the pool or the raylet
/// is gone.
pub(crate) fn spawn(cfg: MemoryMonitorConfig, procs: &Procs, raylet: flume::Sender<RayletMsg>) {
    if cfg.refresh.is_zero() {
        tracing::info!("memory monitor disabled (refresh 0)");
        return;
    }
    let procs: Weak<Mutex<HashMap<WorkerId, Arc<ProcShared>>>> = Arc::downgrade(procs);
    let started = std::thread::Builder::new()
        .name("mobula-memory-monitor".to_string())
        .spawn(move || {
            tracing::debug!(
                refresh_ms = cfg.refresh.as_millis() as u64,
                threshold = cfg.usage_threshold,
                worker_bytes = cfg.worker_bytes,
                "memory monitor started"
            );
            loop {
                std::thread::sleep(cfg.refresh);
                let Some(procs) = procs.upgrade() else { return };
                if raylet.is_disconnected() {
                    return;
                }
                let rss = || {
                    let pids: Vec<u32> = procs.lock().values().map(|p| p.pid()).collect();
                    pids.into_iter().filter(|p| *p > 0).map(rss_of).sum()
                };
                let at = std::time::Instant::now();
                if let Some(p) = check(&cfg, at, node_memory(), rss) {
                    // Never block: a full channel means the raylet is busy; the next
                    // sample tries again.
                    let _ = raylet.try_send(RayletMsg::MemoryPressure(p));
                }
            }
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the memory monitor");
    }
}

/// A running task the monitor could kill.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub task: TaskId,
    pub started: std::time::Instant,
    /// Retries left (a kill retries it).
    pub retriable: bool,
}

/// Ray's policy: the most recently started retriable task, else the most recently started
/// task.
pub(crate) fn pick_victim(candidates: &[Candidate]) -> Option<TaskId> {
    let latest = |retriable: bool| {
        candidates
            .iter()
            .filter(|c| c.retriable == retriable)
            .max_by_key(|c| c.started)
            .map(|c| c.task)
    };
    latest(true).or_else(|| latest(false))
}

/// The pause before the `attempt`+1-th run of a task killed for memory: 1 s, doubling with
/// each attempt, at most 10 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 1000u64.saturating_mul(1 << attempt.min(4));
    Duration::from_millis(ms.min(10_000))
}

/// Tells the kernel's OOM killer to pick this process before others (score 1000, Ray's
/// `worker_oom_score_adjustment`). Best effort: a failure is logged.
pub(crate) fn raise_oom_score(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), b"1000") {
        tracing::debug!(pid, error = %e, "cannot set a worker's oom_score_adj");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn meminfo_gives_total_minus_available() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20480000 kB\nBuffers: 1 kB\n";
        let m = parse_meminfo(text).expect("parsed");
        assert_eq!(m.total, 24_576_000 * 1024);
        assert_eq!(m.used, (24_576_000 - 20_480_000) * 1024);
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        // A field whose name only starts alike is not taken.
        assert_eq!(
            parse_meminfo("MemTotalX: 9 kB\nMemTotal: 8 kB\nMemAvailable: 2 kB\n"),
            Some(NodeMemory {
                used: 6 * 1024,
                total: 8 * 1024
            })
        );
    }

    #[test]
    fn cgroup_limit_usage_and_unlimited() {
        assert_eq!(
            parse_cgroup_path("0::/system.slice/x.service\n", "0:"),
            Some("/system.slice/x.service".to_string())
        );
        let v1 = "5:cpu,cpuacct:/\n4:memory:/process_api/ab\n0::/\n";
        assert_eq!(
            parse_cgroup_path(v1, "memory"),
            Some("/process_api/ab".to_string())
        );
        assert_eq!(parse_cgroup_path(v1, "0:"), Some("/".to_string()));
        assert_eq!(parse_cgroup_path("1:name=systemd:/\n", "memory"), None);
        let stat = "anon 100\ninactive_file 300\nactive_file 5\ntotal_inactive_file 200\n";
        let m = |used, total| Some(NodeMemory { used, total });
        assert_eq!(
            parse_cgroup("1000\n", "800\n", Some(stat), "inactive_file"),
            m(500, 1000)
        );
        assert_eq!(
            parse_cgroup("1000\n", "800\n", Some(stat), "total_inactive_file"),
            m(600, 1000)
        );
        assert_eq!(parse_cgroup("max\n", "800\n", None, "inactive_file"), None);
        // Whatever this machine has, it reads as something sane.
        if let Some(n) = node_memory() {
            assert!(n.total > 0 && n.used <= n.total, "{n:?}");
        }
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tw\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: zombie\n"), None);
        // This process has a resident set.
        assert!(rss_of(std::process::id()) > 0);
    }

    #[test]
    fn either_limit_triggers() {
        let t = Instant::now();
        let cfg = MemoryMonitorConfig {
            worker_bytes: Some(300),
            ..Default::default()
        };
        let calm = Some(NodeMemory {
            used: 50,
            total: 100,
        });
        assert_eq!(check(&cfg, t, calm, || 200), None);
        let p = check(&cfg, t, calm, || 301).expect("workers over the cap");
        assert_eq!((p.scope, p.used, p.limit), (Scope::Workers, 301, 300));
        assert!(p.describe().contains("over the cap"), "{}", p.describe());
        let full = Some(NodeMemory {
            used: 96,
            total: 100,
        });
        let p = check(&cfg, t, full, || 0).expect("node over the threshold");
        assert_eq!((p.scope, p.limit), (Scope::Node, 95));
        // Without a cap, worker memory is not even read.
        let no_cap = MemoryMonitorConfig::default();
        assert_eq!(check(&no_cap, t, calm, || panic!("not read")), None);
    }

    #[test]
    fn victim_is_the_latest_retriable_then_the_latest() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        let cands = [
            Candidate {
                task: a,
                started: at(1),
                retriable: true,
            },
            Candidate {
                task: b,
                started: at(3),
                retriable: false,
            },
            Candidate {
                task: c,
                started: at(2),
                retriable: true,
            },
        ];
        assert_eq!(pick_victim(&cands), Some(c));
        assert_eq!(pick_victim(&cands[..2]), Some(a));
        assert_eq!(pick_victim(&cands[1..2]), Some(b));
        assert_eq!(pick_victim(&[]), None);
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let s: Vec<u64> = (0..7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 10, 10, 10]);
    }

    #[test]
    fn threshold_must_be_a_fraction() {
        assert!(MemoryMonitorConfig::default().validate().is_ok());
        for t in [0.0, 1.5, -0.1, f64::NAN] {
            let c = MemoryMonitorConfig {
                usage_threshold: t,
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{t}");
        }
    }
}
