//! Runtime configuration: sizes, worker mode and limits, from code or `MOBULA_*` variables.

use std::collections::HashMap;
use std::time::Duration;

/// Where user code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// Threads of the driver's process: the fast path.
    Thread,
    /// Worker processes: the user's binary re-executed in worker mode.
    Process,
}

/// Configuration of an embedded local cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// CPUs to offer (default: the machine's).
    pub num_cpus: Option<f64>,
    /// GPUs to offer.
    pub num_gpus: f64,
    /// Memory (bytes) to offer for admission control (default: the machine's).
    pub memory: Option<f64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Object store limit in bytes (default: 30% of the machine's memory).
    pub object_store_memory: Option<u64>,
    /// Threads or processes.
    pub worker_mode: WorkerMode,
    /// Namespace for named actors.
    pub namespace: String,
    /// Worker processes started at `init` (process mode; default: one per CPU).
    pub prestart_workers: Option<usize>,
    /// How long to wait for a worker process to connect before failing its start.
    pub worker_start_timeout: Duration,
    /// Directory for sockets and logs (default: a fresh one under the system temp dir).
    pub temp_dir: Option<std::path::PathBuf>,
    /// Where objects past the store's limit spill: a `spill-<pid>-<node id>` directory inside it,
    /// removed at shutdown (default: the temp dir; `mobula start` uses its cluster directory
    /// under `--temp-dir`).
    pub spill_root: Option<std::path::PathBuf>,
    /// A running cluster to connect to (`HOST:PORT` of its head) instead of starting an
    /// embedded one; this machine must run a node of it (`mobula start`).
    pub address: Option<String>,
    /// Where `mobula start` keeps its cluster directories (`--temp-dir`).
    pub cluster_root: std::path::PathBuf,
    /// How long a task or actor that no node can hold waits for a node that can before it
    /// fails with `Error::Infeasible`. Zero (the default of an embedded cluster, which
    /// cannot grow) fails it at once; node daemons take `mobula start --infeasible-timeout`.
    pub infeasible_timeout: Duration,
    /// Where the GCS keeps its tables on disk (sled; see `store::gcs_storage` for when it
    /// flushes). `None` (the default of an embedded cluster) keeps them in memory only;
    /// `mobula start --head` uses `--storage`, by default `<cluster dir>/gcs`.
    pub gcs_storage: Option<std::path::PathBuf>,
    /// The node memory monitor (process workers only): its refresh, threshold and optional
    /// cap on the worker processes' memory. `from_env` reads `MOBULA_MEMORY_*`.
    pub memory_monitor: crate::MemoryMonitorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            num_cpus: None,
            num_gpus: 0.0,
            memory: None,
            resources: HashMap::new(),
            object_store_memory: None,
            worker_mode: WorkerMode::Thread,
            namespace: "default".to_string(),
            prestart_workers: None,
            worker_start_timeout: Duration::from_secs(30),
            temp_dir: None,
            spill_root: None,
            address: None,
            cluster_root: std::path::PathBuf::from("/tmp/mobula"),
            infeasible_timeout: Duration::ZERO,
            gcs_storage: None,
            memory_monitor: crate::MemoryMonitorConfig::default(),
        }
    }
}

fn env_f64(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Config {
    /// Defaults overridden by `MOBULA_ADDRESS` (`HOST:PORT`, or `auto` for the cluster that
    /// `mobula start --head` last started on this machine; with no `MOBULA_ADDRESS` that
    /// cluster is used when it is running, as Ray does), `MOBULA_TEMP_DIR`, `MOBULA_NUM_CPUS`, `MOBULA_NUM_GPUS`, `MOBULA_MEMORY`,
    /// `MOBULA_OBJECT_STORE_MEMORY`, `MOBULA_WORKER_MODE` (`thread` | `process`) and
    /// `MOBULA_NAMESPACE`, and the memory monitor's `MOBULA_MEMORY_MONITOR_REFRESH_MS`,
    /// `MOBULA_MEMORY_USAGE_THRESHOLD` and `MOBULA_MEMORY_MONITOR_WORKER_BYTES`.
    pub fn from_env() -> Self {
        let mut c = Self {
            memory_monitor: crate::MemoryMonitorConfig::from_env(),
            num_cpus: env_f64("MOBULA_NUM_CPUS"),
            num_gpus: env_f64("MOBULA_NUM_GPUS").unwrap_or(0.0),
            memory: env_f64("MOBULA_MEMORY"),
            object_store_memory: env_f64("MOBULA_OBJECT_STORE_MEMORY").map(|v| v as u64),
            ..Self::default()
        };
        if let Ok(m) = std::env::var("MOBULA_WORKER_MODE")
            && m.eq_ignore_ascii_case("process")
        {
            c.worker_mode = WorkerMode::Process;
        }
        if let Ok(ns) = std::env::var("MOBULA_NAMESPACE") {
            c.namespace = ns;
        }
        if let Ok(root) = std::env::var("MOBULA_TEMP_DIR") {
            c.cluster_root = root.into();
        }
        c.address = match std::env::var("MOBULA_ADDRESS") {
            Ok(a) if a == "auto" || a.is_empty() => {
                crate::cluster::current_cluster(&c.cluster_root)
            }
            Ok(a) => Some(a),
            Err(_) => crate::cluster::current_cluster(&c.cluster_root)
                .filter(|a| crate::cluster::has_local_node(&c.cluster_root, a)),
        };
        c
    }

    /// Connects to a running cluster (`HOST:PORT` of its head).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
    /// Where `mobula start` keeps its cluster directories.
    pub fn cluster_root(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.cluster_root = dir.into();
        self
    }

    /// Sets the CPU count.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// Sets the GPU count.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    /// Adds a custom resource.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.insert(name.into(), amount);
        self
    }
    /// Sets the object store limit.
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
    /// Chooses threads or processes.
    pub fn worker_mode(mut self, m: WorkerMode) -> Self {
        self.worker_mode = m;
        self
    }
    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }
    /// Sets the node memory monitor.
    pub fn memory_monitor(mut self, m: crate::MemoryMonitorConfig) -> Self {
        self.memory_monitor = m;
        self
    }
    /// Sets how many worker processes start at `init`.
    pub fn prestart_workers(mut self, n: usize) -> Self {
        self.prestart_workers = Some(n);
        self
    }
}

/// Total memory of this machine in bytes, from /proc/meminfo (0 when unknown).
pub(crate) fn system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
