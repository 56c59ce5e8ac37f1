//! `mobula microbenchmark`: the workloads of Ray's `ray microbenchmark` (its core set), timed
//! the way Ray times them (a warm-up second, then rounds of at least two seconds; the mean and
//! standard deviation of the per-round rates), printed in Ray's line format
//! `<name> per second <mean> +- <std>`.
//!
//! `mobula cluster-benchmark` ([`run_cluster`]) times the same kinds of calls, and object
//! transfer, between the two nodes of a running cluster: the driver sits on the head and every
//! task and actor is forced onto the other node by a custom resource only that node offers.

use std::time::{Duration, Instant};

use crate::api::{ActorHandle, ActorOptions, Config, Runtime, WorkerMode};
use crate::error::Result;
use crate::sched::{PlacementStrategy, ResourceSet};

/// Timing settings (Ray's: 1 s warm-up, 4 rounds of 2 s).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Warm-up time.
    pub warmup: Duration,
    /// Minimum length of a round.
    pub round: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Run only benchmarks whose name contains one of these (all when empty).
    pub filters: Vec<String>,
    /// Worker modes to run, in order.
    pub modes: Vec<WorkerMode>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            round: Duration::from_secs(2),
            rounds: 4,
            filters: Vec::new(),
            modes: vec![WorkerMode::Thread, WorkerMode::Process],
        }
    }
}

/// One result line.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Benchmark name (with the mode suffix).
    pub name: String,
    /// Mean rate.
    pub mean: f64,
    /// Standard deviation of the rates.
    pub std: f64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} per second {:.2} +- {:.2}",
            self.name, self.mean, self.std
        )
    }
}

#[crate::remote]
fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

#[crate::remote]
fn do_put_small() -> Result<()> {
    let rt = crate::runtime()?;
    for _ in 0..100 {
        rt.put(&0i64)?;
    }
    Ok(())
}

#[crate::remote]
fn work(actors: Vec<ActorHandle<BenchActor>>, n: usize) -> Result<()> {
    let rt = crate::runtime()?;
    let refs: Vec<_> = (0..n)
        .map(|i| actors[i % actors.len()].small_value())
        .collect();
    rt.get_all(&refs)?;
    Ok(())
}

/// The actor of Ray's benchmarks (`num_cpus=0`).
#[crate::actor]
#[derive(Default)]
pub struct BenchActor;

#[crate::actor]
impl BenchActor {
    /// Constructor.
    pub fn new() -> Self {
        BenchActor
    }

    /// Returns a small value.
    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// Takes an argument, returns a small value.
    pub fn small_value_arg(&self, _x: i64) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// Submits `n` tasks and waits for them.
    pub fn small_value_batch(&self, n: usize) -> Result<()> {
        let rt = crate::runtime()?;
        let refs: Vec<_> = (0..n).map(|_| small_value::remote(&rt)).collect();
        rt.get_all(&refs)?;
        Ok(())
    }
}

/// The client actor of Ray's 1:n benchmark.
#[crate::actor]
pub struct BenchClient {
    servers: Vec<ActorHandle<BenchActor>>,
}

#[crate::actor]
impl BenchClient {
    /// Constructor.
    pub fn new(servers: Vec<ActorHandle<BenchActor>>) -> Self {
        BenchClient { servers }
    }

    /// Calls every server `n` times and waits.
    pub fn small_value_batch(&self, n: usize) -> Result<()> {
        let rt = crate::runtime()?;
        let mut refs = Vec::with_capacity(n * self.servers.len());
        for s in &self.servers {
            refs.extend((0..n).map(|_| s.small_value()));
        }
        rt.get_all(&refs)?;
        Ok(())
    }
}

/// A node's id, asked from a task or actor running there.
fn here() -> Result<String> {
    Ok(crate::runtime()?.node_id().hex())
}

#[crate::remote]
fn node_of_task() -> Result<String> {
    here()
}

/// `len` bytes made on the node the task runs on (touched, as `np.ones` is). A `Buffer`, as
/// Ray's side uses a numpy array: both are read without a copy from the object they arrive in.
#[crate::remote]
fn make_bytes(len: usize) -> crate::Buffer {
    crate::Buffer::from(vec![1u8; len])
}

/// The length of a buffer argument.
#[crate::remote]
fn byte_len(data: crate::Buffer) -> usize {
    data.len()
}

/// The actor of the cross-node benchmarks (`num_cpus=0`, placed by a custom resource).
#[crate::actor]
#[derive(Default)]
pub struct RemoteBenchActor;

#[crate::actor]
impl RemoteBenchActor {
    /// Constructor.
    pub fn new() -> Self {
        RemoteBenchActor
    }

    /// Returns a small value.
    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// The id of the node the actor runs on.
    pub fn node(&self) -> Result<String> {
        here()
    }
}

/// The async actor of the cross-node benchmarks (Ray's `async def` actor).
#[crate::actor]
#[derive(Default)]
pub struct RemoteAsyncBenchActor;

#[crate::actor]
impl RemoteAsyncBenchActor {
    /// Constructor.
    pub fn new() -> Self {
        RemoteAsyncBenchActor
    }

    /// Returns a small value.
    pub async fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// The id of the node the actor runs on.
    pub async fn node(&self) -> Result<String> {
        here()
    }
}

struct Timer<'a> {
    cfg: &'a BenchConfig,
    suffix: &'static str,
    out: &'a mut dyn FnMut(BenchResult),
}

impl Timer<'_> {
    fn wanted(&self, name: &str) -> bool {
        self.cfg.filters.is_empty() || self.cfg.filters.iter().any(|f| name.contains(f.as_str()))
    }

    fn timeit(
        &mut self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        if !self.wanted(name) {
            return Ok(());
        }
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < self.cfg.warmup {
            f()?;
            count += 1;
        }
        let step = count / 10 + 1;
        let mut rates = Vec::with_capacity(self.cfg.rounds);
        for _ in 0..self.cfg.rounds {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < self.cfg.round {
                for _ in 0..step {
                    f()?;
                }
                n += step;
            }
            rates.push(multiplier * n as f64 / start.elapsed().as_secs_f64());
        }
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len().max(1) as f64;
        (self.out)(BenchResult {
            name: format!("{name}{}", self.suffix),
            mean,
            std: var.sqrt(),
        });
        Ok(())
    }
}

/// Runs the benchmarks, calling `out` with each result as it is measured.
pub fn run(cfg: &BenchConfig, out: &mut dyn FnMut(BenchResult)) -> Result<()> {
    for mode in &cfg.modes {
        let suffix = match mode {
            WorkerMode::Thread => "",
            WorkerMode::Process => " [process workers]",
        };
        let mut config = Config::from_env()
            .worker_mode(*mode)
            .resource("custom", 100.0);
        // The benchmark measures an embedded node, never a cluster that happens to run here.
        config.address = None;
        let rt = crate::init_with(config)?;
        let mut t = Timer { cfg, suffix, out };
        let res = run_mode(&rt, &mut t);
        crate::shutdown();
        res?;
    }
    Ok(())
}

fn zero_cpu() -> ActorOptions {
    ActorOptions::new().num_cpus(0.0)
}

fn run_mode(rt: &Runtime, t: &mut Timer<'_>) -> Result<()> {
    let value = rt.put(&0i64)?;
    t.timeit("single client get calls (Plasma Store)", 1.0, || {
        rt.get(&value).map(|_| ())
    })?;
    t.timeit("single client put calls (Plasma Store)", 1.0, || {
        rt.put(&0i64).map(|_| ())
    })?;
    t.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote(rt)).collect();
        rt.get_all(&refs).map(|_| ())
    })?;
    if t.wanted("single client put gigabytes") || t.wanted("memcpy gigabytes") {
        let arr = serde_bytes::ByteBuf::from(vec![0u8; 800 * 1024 * 1024]);
        t.timeit(
            "single client put gigabytes",
            0.8 * 1024.0 * 1024.0 * 1024.0 / 1e9,
            || rt.put(&arr).map(|_| ()),
        )?;
        // The yardsticks of the put figure: copying the same buffer into a fresh allocation
        // (page faults included) and into a reused, already-touched one.
        t.timeit(
            "memcpy gigabytes (baseline, fresh buffer)",
            0.8 * 1024.0 * 1024.0 * 1024.0 / 1e9,
            || {
                let copy = arr.to_vec();
                std::hint::black_box(&copy);
                Ok(())
            },
        )?;
        let mut dst = vec![1u8; arr.len()];
        t.timeit(
            "memcpy gigabytes (baseline, warm buffer)",
            0.8 * 1024.0 * 1024.0 * 1024.0 / 1e9,
            || {
                dst.copy_from_slice(&arr);
                std::hint::black_box(&dst);
                Ok(())
            },
        )?;
    }
    t.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote(rt)).collect();
        rt.get_all(&refs).map(|_| ())
    })?;
    t.timeit("single client wait 1k refs", 1.0, || {
        let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote(rt)).collect();
        for _ in 0..1000 {
            let (_ready, rest) = rt.wait(&not_ready, 1, None)?;
            not_ready = rest;
        }
        Ok(())
    })?;
    t.timeit("single client tasks sync", 1.0, || {
        rt.get(&small_value::remote(rt)).map(|_| ())
    })?;
    t.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote(rt)).collect();
        rt.get_all(&refs).map(|_| ())
    })?;
    {
        let (n, m) = (10_000usize, 4usize);
        let wanted = t.wanted("multi client tasks async");
        if wanted {
            let actors: Vec<_> = (0..m)
                .map(|_| BenchActor::options(zero_cpu()).remote(rt))
                .collect::<Result<_>>()?;
            t.timeit("multi client tasks async", (n * m) as f64, || {
                let refs: Vec<_> = actors.iter().map(|a| a.small_value_batch(n)).collect();
                rt.get_all(&refs).map(|_| ())
            })?;
            for a in &actors {
                rt.kill(a)?;
            }
        }
    }
    if t.wanted("1:1 actor calls sync") {
        let a = BenchActor::options(zero_cpu()).remote(rt)?;
        t.timeit("1:1 actor calls sync", 1.0, || {
            rt.get(&a.small_value()).map(|_| ())
        })?;
        rt.kill(&a)?;
    }
    if t.wanted("1:1 actor calls async") {
        let a = BenchActor::options(zero_cpu()).remote(rt)?;
        t.timeit("1:1 actor calls async", 1000.0, || {
            let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
            rt.get_all(&refs).map(|_| ())
        })?;
        rt.kill(&a)?;
    }
    if t.wanted("1:1 actor calls concurrent") {
        let a = BenchActor::options(zero_cpu().max_concurrency(16)).remote(rt)?;
        t.timeit("1:1 actor calls concurrent", 1000.0, || {
            let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
            rt.get_all(&refs).map(|_| ())
        })?;
        rt.kill(&a)?;
    }
    let n_cpu = (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1);
    if t.wanted("1:n actor calls async") {
        let n = 5000usize;
        let actors: Vec<_> = (0..n_cpu)
            .map(|_| BenchActor::options(zero_cpu()).remote(rt))
            .collect::<Result<_>>()?;
        let client = BenchClient::options(zero_cpu()).remote(rt, actors.clone())?;
        t.timeit("1:n actor calls async", (n * actors.len()) as f64, || {
            rt.get(&client.small_value_batch(n)).map(|_| ())
        })?;
        rt.kill(&client)?;
        for a in &actors {
            rt.kill(a)?;
        }
    }
    if t.wanted("n:n actor calls async") {
        let (n, m) = (5000usize, 4usize);
        let actors: Vec<_> = (0..n_cpu)
            .map(|_| BenchActor::options(zero_cpu()).remote(rt))
            .collect::<Result<_>>()?;
        t.timeit("n:n actor calls async", (m * n) as f64, || {
            let refs: Vec<_> = (0..m)
                .map(|_| work::remote(rt, actors.clone(), n))
                .collect();
            rt.get_all(&refs).map(|_| ())
        })?;
        for a in &actors {
            rt.kill(a)?;
        }
    }
    t.timeit("placement group create/removal", 100.0, || {
        let pgs: Vec<_> = (0..100)
            .map(|_| {
                rt.placement_group(
                    vec![ResourceSet::new().with("custom", 0.001)],
                    PlacementStrategy::Pack,
                )
            })
            .collect::<Result<_>>()?;
        for pg in &pgs {
            pg.wait(Some(Duration::from_secs(30)))?;
        }
        for pg in &pgs {
            rt.remove_placement_group(pg)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Settings of `mobula cluster-benchmark`.
#[derive(Debug, Clone)]
pub struct ClusterBenchConfig {
    /// Timing and filters (`modes` is ignored: a connected driver always has worker
    /// processes).
    pub timing: BenchConfig,
    /// `HOST:PORT` of the cluster's head.
    pub address: String,
    /// The cluster's `--temp-dir`.
    pub cluster_root: std::path::PathBuf,
    /// The custom resource that only the other node offers (every task and actor asks for
    /// 0.001 of it).
    pub resource: String,
    /// Size of the objects of the transfer benchmarks, in bytes.
    pub object_bytes: usize,
}

/// Runs the cross-node benchmarks against a running cluster, calling `out` with each result.
/// Fails unless the tasks and actors really run on a node other than the driver's.
pub fn run_cluster(cfg: &ClusterBenchConfig, out: &mut dyn FnMut(BenchResult)) -> Result<()> {
    let config = Config::from_env()
        .address(cfg.address.clone())
        .cluster_root(cfg.cluster_root.clone());
    let rt = crate::init_with(config)?;
    let mut t = Timer {
        cfg: &cfg.timing,
        suffix: "",
        out,
    };
    let res = run_cross_node(&rt, cfg, &mut t);
    crate::shutdown();
    res
}

fn not_remote(what: &str, node: &str) -> crate::error::Error {
    crate::error::Error::runtime(format!(
        "the {what} ran on node {node}, the driver's own: the benchmark needs another node offering the custom resource"
    ))
}

fn run_cross_node(rt: &Runtime, cfg: &ClusterBenchConfig, t: &mut Timer<'_>) -> Result<()> {
    use crate::api::TaskOptions;
    let driver_node = rt.node_id().hex();
    // A node that just joined is known to the head after its first heartbeat.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt
        .cluster_resources()?
        .get(&cfg.resource)
        .is_none_or(|a| *a <= 0.0)
    {
        if Instant::now() > deadline {
            return Err(crate::error::Error::runtime(format!(
                "no node of the cluster offers the resource {}: start the other node with --resources '{{\"{}\": 1000}}'",
                cfg.resource, cfg.resource
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let task = TaskOptions::new().resource(cfg.resource.as_str(), 0.001);
    let actor = || zero_cpu().resource(cfg.resource.as_str(), 0.001);
    let node = rt.get(&node_of_task::options(task.clone()).remote(rt))?;
    if node == driver_node {
        return Err(not_remote("task", &node));
    }
    tracing::info!(driver = %driver_node, remote = %node, "cross-node benchmarks");

    t.timeit("cross-node tasks sync", 1.0, || {
        rt.get(&small_value::options(task.clone()).remote(rt))
            .map(|_| ())
    })?;
    t.timeit("cross-node tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| small_value::options(task.clone()).remote(rt))
            .collect();
        rt.get_all(&refs).map(|_| ())
    })?;
    if t.wanted("cross-node 1:1 actor calls") {
        let a = RemoteBenchActor::options(actor()).remote(rt)?;
        let at = rt.get(&a.node())?;
        if at == driver_node {
            return Err(not_remote("actor", &at));
        }
        t.timeit("cross-node 1:1 actor calls sync", 1.0, || {
            rt.get(&a.small_value()).map(|_| ())
        })?;
        t.timeit("cross-node 1:1 actor calls async", 1000.0, || {
            let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
            rt.get_all(&refs).map(|_| ())
        })?;
        rt.kill(&a)?;
    }
    if t.wanted("cross-node 1:1 async-actor calls") {
        let a = RemoteAsyncBenchActor::options(actor()).remote(rt)?;
        let at = rt.get(&a.node())?;
        if at == driver_node {
            return Err(not_remote("async actor", &at));
        }
        t.timeit("cross-node 1:1 async-actor calls sync", 1.0, || {
            rt.get(&a.small_value()).map(|_| ())
        })?;
        t.timeit("cross-node 1:1 async-actor calls async", 1000.0, || {
            let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
            rt.get_all(&refs).map(|_| ())
        })?;
        rt.kill(&a)?;
    }
    let gb = cfg.object_bytes as f64 / 1e9;
    // Every round trip makes a fresh object, so each one crosses the nodes (a node keeps the
    // copies it pulled while they are referenced).
    t.timeit("cross-node get gigabytes", gb, || {
        let r = make_bytes::options(task.clone()).remote(rt, cfg.object_bytes);
        let got = rt.get(&r)?;
        std::hint::black_box(&got);
        Ok(())
    })?;
    if t.wanted("cross-node task arg gigabytes") {
        let data = crate::Buffer::from(vec![1u8; cfg.object_bytes]);
        t.timeit("cross-node task arg gigabytes", gb, || {
            let arg = rt.put(&data)?;
            let n = rt.get(&byte_len::options(task.clone()).remote(rt, &arg))?;
            if n != cfg.object_bytes {
                return Err(crate::error::Error::runtime(format!(
                    "the task saw {n} bytes of {}",
                    cfg.object_bytes
                )));
            }
            Ok(())
        })?;
    }
    Ok(())
}
