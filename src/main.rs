//! The `mobula` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

mod cli_target;
mod job_cli;
mod state_cli;

use cli_target::fail;

#[derive(Parser)]
#[command(
    name = "mobula",
    version,
    about = "A Ray-style distributed computing framework for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Thread,
    Process,
    Both,
}

/// Which benchmarks run and how they are timed (Ray's timing by default).
#[derive(clap::Args)]
struct Timing {
    /// Only benchmarks whose name contains this (repeatable).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Seconds of each timed round (Ray: 2).
    #[arg(long, default_value_t = 2.0)]
    round_secs: f64,
    /// Timed rounds (Ray: 4).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Warm-up seconds (Ray: 1).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
}

impl Timing {
    fn config(self, modes: Vec<mobula::WorkerMode>) -> mobula::bench::BenchConfig {
        mobula::bench::BenchConfig {
            warmup: Duration::from_secs_f64(self.warmup_secs),
            round: Duration::from_secs_f64(self.round_secs),
            rounds: self.rounds,
            filters: self.filters,
            modes,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Starts a node daemon: a head (`--head`) or a node joining one (`--address`, or
    /// `--mdns` to find the head on the LAN).
    Start {
        /// Start the head of a new cluster.
        #[arg(long, conflicts_with = "address")]
        head: bool,
        /// `HOST:PORT` of the head to join.
        #[arg(long)]
        address: Option<String>,
        /// The head's port (a node joining with --mdns and no --address looks for the head
        /// on this port).
        #[arg(long, default_value_t = 6379)]
        port: u16,
        /// Interface to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// The address other nodes and drivers reach this node at (default: the --bind
        /// address; when binding 0.0.0.0, the address of the interface that routes to the head,
        /// or for the head, to the outside).
        #[arg(long)]
        node_ip_address: Option<String>,
        /// CPUs to offer (default: the machine's).
        #[arg(long)]
        num_cpus: Option<f64>,
        /// GPUs to offer.
        #[arg(long, default_value_t = 0.0)]
        num_gpus: f64,
        /// Memory to offer, in bytes.
        #[arg(long)]
        memory: Option<f64>,
        /// The object store's memory limit in bytes (default: 30% of the machine's memory);
        /// past it, objects spill to disk under the temp dir.
        #[arg(long)]
        object_store_memory: Option<u64>,
        /// Custom resources as JSON, e.g. '{"tpu": 4}'.
        #[arg(long)]
        resources: Option<String>,
        /// Root of the cluster directories.
        #[arg(long, default_value = "/tmp/mobula")]
        temp_dir: std::path::PathBuf,
        /// The cluster secret (joining from another machine).
        #[arg(long)]
        secret: Option<String>,
        /// Seconds without heartbeats before a node is declared dead.
        #[arg(long, default_value_t = 3.0)]
        death_timeout: f64,
        /// The fraction of the node's memory (its cgroup's limit when it has one) past which
        /// the memory monitor kills the most recently started retriable task (default 0.95,
        /// or MOBULA_MEMORY_USAGE_THRESHOLD).
        #[arg(long)]
        memory_usage_threshold: Option<f64>,
        /// How often the memory monitor samples, in ms; 0 turns it off (default 250, or
        /// MOBULA_MEMORY_MONITOR_REFRESH_MS).
        #[arg(long)]
        memory_monitor_refresh_ms: Option<u64>,
        /// Also kill when the node's worker processes together hold more than this many
        /// bytes resident (default: no cap, or MOBULA_MEMORY_MONITOR_WORKER_BYTES).
        #[arg(long)]
        memory_monitor_worker_bytes: Option<u64>,
        /// Seconds a task or actor that no node can hold waits for a node that can (shown
        /// as an infeasible demand by `mobula status`) before it fails.
        #[arg(long, default_value_t = 60.0)]
        infeasible_timeout: f64,
        /// Always fetch jobs' executables from the submitting node, even when the same path
        /// exists here (for nodes whose file systems differ).
        #[arg(long)]
        fetch_executables: bool,
        /// Use mDNS on the LAN (off by default; needs multicast between the machines): a head
        /// announces itself; a node without --address joins the head listening on --port that
        /// accepts it. The cluster secret is still needed (--secret, or the head's machine).
        #[arg(long)]
        mdns: bool,
        /// Interface the head serves its dashboard and jobs API on (a non-loopback address
        /// requires a token: one is generated when --auth-token is not given).
        #[arg(long, default_value = "127.0.0.1")]
        dashboard_host: String,
        /// Port of the head's dashboard and jobs API.
        #[arg(long, default_value_t = 8265)]
        dashboard_port: u16,
        /// Where the head's GCS keeps its tables on disk (default: `gcs` in the cluster
        /// directory); a head restarted with the same storage and port gets them back.
        #[arg(long)]
        storage: Option<std::path::PathBuf>,
        /// Do not serve the dashboard and jobs API.
        #[arg(long)]
        no_dashboard: bool,
        /// The token clients of the dashboard and jobs API must send (`Authorization: Bearer`);
        /// also read from MOBULA_AUTH_TOKEN or RAY_AUTH_TOKEN.
        #[arg(long)]
        auth_token: Option<String>,
        /// Run in the foreground.
        #[arg(long)]
        block: bool,
    },
    /// Shows the nodes and resources of the cluster, like `ray status`.
    Status {
        /// The head's port (default: the only cluster under --temp-dir).
        #[arg(long)]
        port: Option<u16>,
        /// Root of the cluster directories.
        #[arg(long, default_value = "/tmp/mobula")]
        temp_dir: std::path::PathBuf,
        /// The cluster secret, when this machine does not have it.
        #[arg(long)]
        secret: Option<String>,
    },
    /// Stops this machine's node daemons of one cluster (never every cluster).
    Stop {
        /// The head's port (default: the only cluster under --temp-dir).
        #[arg(long)]
        port: Option<u16>,
        /// Root of the cluster directories.
        #[arg(long, default_value = "/tmp/mobula")]
        temp_dir: std::path::PathBuf,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = 10.0)]
        grace_period: f64,
    },
    /// Submits and manages jobs through the head's Jobs API (like `ray job`).
    Job {
        #[command(subcommand)]
        command: job_cli::JobCommand,
    },
    #[command(flatten)]
    State(state_cli::StateCommand),
    /// Runs the workloads of `ray microbenchmark`, printed in Ray's format.
    Microbenchmark {
        /// Worker mode(s) to measure.
        #[arg(long, value_enum, default_value = "both")]
        mode: Mode,
        #[command(flatten)]
        timing: Timing,
    },
    /// Times cross-node tasks, actor calls and object transfer on a running cluster: this
    /// process is a driver on the head, every task and actor runs on the node that offers
    /// `--resource` (start it with `--resources '{"bench_remote": 1000}'`).
    ClusterBenchmark {
        /// `HOST:PORT` of the cluster's head.
        #[arg(long)]
        address: String,
        /// Root of the cluster directories (the cluster's `--temp-dir`).
        #[arg(long, default_value = "/tmp/mobula")]
        temp_dir: std::path::PathBuf,
        /// The custom resource only the other node offers.
        #[arg(long, default_value = "bench_remote")]
        resource: String,
        /// Size of the transferred objects, in MiB.
        #[arg(long, default_value_t = 256)]
        object_mib: usize,
        #[command(flatten)]
        timing: Timing,
    },
}

fn init_logs() {
    let filter = std::env::var("MOBULA_LOG").unwrap_or_else(|_| "info".to_string());
    mobula::log_to_stderr(tracing_subscriber::EnvFilter::new(filter));
}

/// Parses `{"name": amount, ...}`.
fn parse_resources(text: &str) -> Result<std::collections::HashMap<String, f64>, String> {
    let bad =
        || format!("--resources wants a JSON object of numbers like '{{\"tpu\": 4}}', got {text}");
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(bad)?;
    let mut out = std::collections::HashMap::new();
    for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once(':').ok_or_else(bad)?;
        let k = k.trim().trim_matches('"').to_string();
        let v: f64 = v.trim().parse().map_err(|_| bad())?;
        if k.is_empty() || v < 0.0 {
            return Err(bad());
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn main() -> ExitCode {
    mobula::worker_entry();
    let cli = Cli::parse();
    match cli.command {
        Command::Start {
            head,
            address,
            port,
            bind,
            node_ip_address,
            num_cpus,
            num_gpus,
            memory,
            object_store_memory,
            resources,
            temp_dir,
            secret,
            death_timeout,
            infeasible_timeout,
            memory_usage_threshold,
            memory_monitor_refresh_ms,
            memory_monitor_worker_bytes,
            fetch_executables,
            mdns,
            dashboard_host,
            dashboard_port,
            no_dashboard,
            auth_token,
            storage,
            block,
        } => {
            let resources = match resources.as_deref().map(parse_resources).transpose() {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => return fail(e),
            };
            let mut memory_monitor = mobula::MemoryMonitorConfig::from_env();
            if let Some(t) = memory_usage_threshold {
                memory_monitor.usage_threshold = t;
            }
            if let Some(ms) = memory_monitor_refresh_ms {
                memory_monitor.refresh = Duration::from_millis(ms);
            }
            if let Some(b) = memory_monitor_worker_bytes {
                memory_monitor.worker_bytes = Some(b);
            }
            if let Err(e) = memory_monitor.validate() {
                return fail(&e);
            }
            let opts = mobula::cluster::StartOptions {
                head,
                address,
                port,
                bind,
                node_ip: node_ip_address,
                num_cpus,
                num_gpus,
                memory,
                object_store_memory,
                resources,
                temp_dir,
                secret,
                death_timeout: Duration::from_secs_f64(death_timeout),
                infeasible_timeout: Duration::from_secs_f64(infeasible_timeout.max(0.0)),
                fetch_executables,
                mdns,
                dashboard: (!no_dashboard).then_some(mobula::cluster::DashboardOptions {
                    host: dashboard_host,
                    port: dashboard_port,
                    token: auth_token,
                }),
                storage,
                memory_monitor,
            };
            if block {
                init_logs();
                return match mobula::cluster::run_node(opts) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                };
            }
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            match mobula::cluster::spawn_daemon(&opts, args) {
                Ok(h) if opts.head => {
                    let dir = mobula::cluster::ClusterDir::new(&opts.temp_dir, opts.port);
                    println!("mobula head started: node {}", h.node_id);
                    println!(
                        "To join from this machine:\n  mobula start --address {}",
                        h.address
                    );
                    if let Ok(s) = std::fs::read_to_string(dir.dir.join("secret")) {
                        println!(
                            "To join from another machine (the address is the one this head advertises; set it with --node-ip-address):\n  mobula start --address {} --secret {}",
                            h.address,
                            s.trim()
                        );
                        if opts.mdns {
                            println!(
                                "To join from another machine of this LAN (mDNS, needs multicast):\n  mobula start --mdns --port {} --secret {}",
                                opts.port,
                                s.trim()
                            );
                        }
                    }
                    if let Some(url) = &h.dashboard {
                        println!(
                            "Dashboard and jobs API (also for `ray job submit --address {url}`):\n  {url}"
                        );
                        if dir.dir.join("auth_token").exists() {
                            println!(
                                "  clients send the token in {} (Authorization: Bearer <token>)",
                                dir.dir.join("auth_token").display()
                            );
                        }
                    }
                    println!("Cluster status:\n  mobula status --port {}", opts.port);
                    println!("Stop it:\n  mobula stop --port {}", opts.port);
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    match &opts.address {
                        Some(a) => println!("mobula node started and joined {a}"),
                        None => println!(
                            "mobula node started; it joins the head on port {} that it finds over mDNS (logs in {})",
                            opts.port,
                            mobula::cluster::ClusterDir::new(&opts.temp_dir, opts.port)
                                .log("node")
                                .parent()
                                .unwrap_or(std::path::Path::new("."))
                                .display()
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Status {
            port,
            temp_dir,
            secret,
        } => {
            let report = mobula::cluster::pick_cluster(&temp_dir, port)
                .and_then(|d| mobula::cluster::status(&d, secret.as_deref()));
            match report {
                Ok(r) => {
                    print!("{}", mobula::cluster::format_status(&r));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Stop {
            port,
            temp_dir,
            grace_period,
        } => match mobula::cluster::pick_cluster(&temp_dir, port) {
            Ok(d) => {
                let n = mobula::cluster::stop(&d, Duration::from_secs_f64(grace_period));
                println!("stopped {n} mobula node process(es) of {}", d.dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Job { command } => job_cli::run(command),
        Command::State(command) => state_cli::run(command),
        Command::Microbenchmark { mode, timing } => {
            let cfg = timing.config(match mode {
                Mode::Thread => vec![mobula::WorkerMode::Thread],
                Mode::Process => vec![mobula::WorkerMode::Process],
                Mode::Both => vec![mobula::WorkerMode::Thread, mobula::WorkerMode::Process],
            });
            let res = mobula::bench::run(&cfg, &mut |r| println!("{r}"));
            match res {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mobula microbenchmark: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ClusterBenchmark {
            address,
            temp_dir,
            resource,
            object_mib,
            timing,
        } => {
            let cfg = mobula::bench::ClusterBenchConfig {
                timing: timing.config(Vec::new()),
                address,
                cluster_root: temp_dir,
                resource,
                object_bytes: object_mib << 20,
            };
            match mobula::bench::run_cluster(&cfg, &mut |r| println!("{r}")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mobula cluster-benchmark: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
