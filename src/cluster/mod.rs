//! Cluster daemons and their command line: `mobula start --head`, `mobula start --address`,
//! `mobula status` and `mobula stop`.
//!
//! A node daemon runs an embedded node and the node swarm (`crate::net`). The head also keeps
//! the membership table: worker nodes register over request/response and then heartbeat their
//! resources over gossipsub; a node whose heartbeats stop for `death_timeout` is dead. Every
//! file of a cluster lives in `<temp-dir>/cluster-<port>/` (the secret with mode 0600, the
//! head's address, one pid file per node of this machine), so two clusters on one machine never
//! collide and `mobula stop` stops exactly one of them. With `--mdns` and no `--address` a
//! node finds its head on the LAN (`HeadSearch`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::actors::raylet::{Outbound, RemoteDone, RemoteNode, SetSpill};
use crate::net::{self, NetConfig, NetEvent};
use crate::web::now_ms;
use crate::worker::process::alive;

mod actors;
#[cfg(test)]
mod fuzz_tests;
pub mod jobs;
mod lane;
pub mod state;

/// Errors of the cluster commands.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file of the cluster could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    /// The command cannot go on (the message says why and what to do).
    #[error("{0}")]
    Usage(String),
    /// A message from a peer did not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
}

type Res<T> = Result<T, ClusterError>;

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one cluster on this machine.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    /// `<temp-dir>/cluster-<port>`.
    pub dir: PathBuf,
}

impl ClusterDir {
    /// The directory of the cluster whose head listens on `port`.
    pub fn new(temp_dir: &Path, port: u16) -> Self {
        Self {
            dir: temp_dir.join(format!("cluster-{port}")),
        }
    }
    fn secret(&self) -> PathBuf {
        self.dir.join("secret")
    }
    fn head(&self) -> PathBuf {
        self.dir.join("head.json")
    }
    fn pid_file(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.pid"))
    }
    fn socket_file(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.socket"))
    }
    /// Log file of a node daemon.
    pub fn log(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.log"))
    }

    /// Writes the cluster secret, readable by the owner only.
    fn write_secret(&self, secret: &[u8; 32]) -> Res<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.secret();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err(&path))?;
        f.write_all(hex(secret).as_bytes()).map_err(file_err(&path))
    }

    /// Reads the cluster secret, if this machine has it.
    pub fn read_secret(&self) -> Res<[u8; 32]> {
        let path = self.secret();
        let text = std::fs::read_to_string(&path).map_err(file_err(&path))?;
        parse_secret(&text)
    }

    /// The head's record, once the head is up.
    pub fn read_head(&self) -> Res<HeadRecord> {
        let path = self.head();
        let text = std::fs::read_to_string(&path).map_err(file_err(&path))?;
        serde_json::from_str(&text).map_err(|e| ClusterError::Malformed(e.to_string()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses a 64-hex-digit cluster secret.
pub fn parse_secret(text: &str) -> Res<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ClusterError::Usage(
            "a cluster secret is 64 hex digits (see the head's join instructions)".to_string(),
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
            .map_err(|e| ClusterError::Usage(format!("bad secret: {e}")))?;
    }
    Ok(out)
}

/// What the head writes for others to find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadRecord {
    /// `host:port` to join with.
    pub address: String,
    /// The head's libp2p address, with its peer id.
    pub multiaddr: String,
    /// The head's node id.
    pub node_id: String,
    /// The head daemon's pid.
    pub pid: u32,
    /// `http://host:port` of the dashboard and jobs API, when the head serves them.
    #[serde(default)]
    pub dashboard: Option<String>,
}

/// Messages between nodes and the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ClusterMsg {
    /// A node joins (request; answered with `Welcome`).
    Register {
        /// Its node id.
        node_id: String,
        /// Its resources.
        total: HashMap<String, f64>,
    },
    /// The head accepts a node.
    Welcome {
        /// The head's node id.
        head: String,
    },
    /// A node's periodic report (gossip).
    Heartbeat {
        /// Its node id.
        node_id: String,
        /// Where it listens (libp2p address with peer id).
        addr: String,
        /// Its resources.
        total: HashMap<String, f64>,
        /// What is free.
        available: HashMap<String, f64>,
        /// What its queued work waits for.
        #[serde(default)]
        pending: Vec<crate::sched::Demand>,
        /// Where its data plane listens (`ip:port`).
        #[serde(default)]
        data: Option<String>,
        /// Its counters and gauges (`/metrics`).
        #[serde(default)]
        metrics: Box<crate::actors::metrics::NodeMetrics>,
    },
    /// Asks the head for the cluster's status (request).
    Status,
    /// Runs a task here for another node (request; answered with `TaskResult`). Arguments are
    /// inline values.
    ExecuteRemote {
        /// The task.
        spec: Box<crate::spec::TaskSpec>,
        /// How to start the task's job's workers.
        launch: crate::worker::process::JobLaunch,
    },
    /// A node took a task (`ExecuteRemote`); its value follows in `TaskFinished`.
    Accepted,
    /// Tasks and calls run here for another node ended (request to that node, batched;
    /// answered `Released`).
    TaskFinished(Vec<Finished>),
    /// The value of a remotely run task, or its error.
    TaskResult(Result<crate::worker::protocol::WireValue, crate::Error>),
    /// The value of a remotely run task is large: pull it (`FetchChunk`), then `Release` it.
    TaskResultAt {
        /// Its size in bytes.
        size: u64,
        /// Objects its value refers to, held here until the `Release`: pull them too.
        #[serde(default)]
        nested: Vec<crate::ObjectId>,
    },
    /// Asks for part of an object this node holds (request; answered with `Chunk`).
    FetchChunk {
        /// The object.
        id: crate::ObjectId,
        /// Where the part starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Asks for part of a job's executable, by content hash (answered with `Chunk`).
    FetchExe {
        /// Its xxh3-64 hash (hex).
        hash: String,
        /// Where the part starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Part of an object (or `None`: not here).
    Chunk(Option<(u64, serde_bytes::ByteBuf)>),
    /// The asker has pulled an object it was told to pull; this node may free it.
    Release(crate::ObjectId),
    /// Acknowledges a `Release`.
    Released,
    /// The answer to `Status`.
    StatusReport(StatusReport),
    /// Creates an actor here for another node, which owns it (request; answered `Accepted`,
    /// then reported with `ActorPlaced`).
    CreateActor {
        /// The actor (small constructor arguments inline, large ones pulled).
        spec: Box<crate::spec::ActorSpec>,
        /// How to start its job's workers.
        launch: crate::worker::process::JobLaunch,
    },
    /// An actor that a `CreateActor` asked for is registered here (its calls can come), or
    /// could not be (request to the owner; answered `Released`).
    ActorPlaced {
        /// The actor.
        actor_id: crate::ActorId,
        /// Whether it was.
        result: Result<(), crate::Error>,
    },
    /// Whether the node still runs an actor it hosts for the asker (answered `Hosting`).
    HostsActor(crate::ActorId),
    /// The answer to `HostsActor`: `None` if it does, else why not and whether it died there
    /// for good.
    Hosting(Option<(String, bool)>),
    /// Kills an actor created here for another node (answered `Released`).
    KillActor {
        /// The actor.
        actor_id: crate::ActorId,
        /// Dead for good (else its restart policy applies).
        no_restart: bool,
    },
    /// Claims a name cluster-wide for an actor `owner` owns (request to the head; answered
    /// `Claimed`).
    ClaimName {
        /// The name's namespace.
        namespace: String,
        /// The name.
        name: String,
        /// The actor.
        actor_id: crate::ActorId,
        /// Its class's registry id.
        class: String,
        /// The node that owns it.
        owner: crate::NodeId,
    },
    /// The answer to `ClaimName`.
    Claimed(Result<(), crate::Error>),
    /// A claimed name is free again (request to the head; answered `Released`).
    ReleaseName {
        /// The name's namespace.
        namespace: String,
        /// The name.
        name: String,
        /// The actor that held it.
        actor_id: crate::ActorId,
    },
    /// `owner` owns a new actor (request to the head; answered `Released`).
    ActorOwned {
        /// The actor.
        actor_id: crate::ActorId,
        /// Its owner.
        owner: crate::NodeId,
    },
    /// Where a named actor is (request to the head; answered `Found`).
    LookupName {
        /// The name's namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// Where any actor is (request to the head; answered `Found`).
    LookupActor(crate::ActorId),
    /// A KV operation of another node's GCS (request to the head; answered `KvDone`).
    Kv(crate::actors::gcs::KvOp),
    /// The answer to `Kv`.
    KvDone(Result<crate::actors::gcs::KvAnswer, crate::Error>),
    /// The answer to a lookup: the actor and its owner node.
    Found(Option<crate::actors::gcs::ActorAt>),
    /// A job's driver left (request to every node; answered `Released`): the job's work
    /// and its actors that are not detached end there too.
    JobEnded(crate::ids::JobId),
    /// Reserves bundles of a placement group that the asker's GCS places here (request;
    /// answered `Committed`).
    CommitBundles {
        /// The group.
        pg: crate::PlacementGroupId,
        /// Bundle indices and their resources, all or none.
        bundles: Vec<(usize, crate::ResourceSet)>,
    },
    /// The answer to `CommitBundles`.
    Committed(Result<(), String>),
    /// Gives back the bundles of a placement group committed here (answered `Released`).
    ReturnBundles {
        /// The group.
        pg: crate::PlacementGroupId,
    },
    /// Calls to actors hosted here, in submission order (answered `Accepted` once they are
    /// queued at their actors; each result follows in a `TaskFinished`).
    ActorCalls {
        /// The calls (small arguments inline, large ones pulled).
        calls: Vec<crate::spec::ActorCall>,
    },
    /// The answer of a node that is not the head to a `Register` (a node looking for its head
    /// over mDNS asks every peer it hears of that listens on the head's port).
    NotHead,
    /// Asks a node for its part of a state-API query (request; answered `StateRows`).
    State(state::StateQuery),
    /// A node's answer to `State`: JSON text, or why it could not answer.
    StateRows(Result<String, String>),
    /// Runs a submitted job's entrypoint here for the head (request; answered `JobAccepted`).
    RunJob(jobs::RemoteJob),
    /// Whether a node took a `RunJob`.
    JobAccepted(Result<(), String>),
    /// What became of a job a node runs for the head, in order (request to the head;
    /// answered `Released` once it is passed on).
    JobEvent {
        /// The submission id.
        sid: String,
        /// What happened.
        event: jobs::JobEvent,
    },
    /// Stops a job this node runs for the head (answered `Released`).
    StopJob {
        /// The submission id.
        sid: String,
    },
}

/// A task or call run for another node that ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Finished {
    /// The task or call.
    pub task_id: crate::TaskId,
    /// Its return object.
    pub return_id: crate::ObjectId,
    /// Which attempt of it this was (its owner's task history records the end).
    #[serde(default)]
    pub attempt: u32,
    /// `TaskResult` or `TaskResultAt`.
    pub answer: ClusterMsg,
}

impl Finished {
    /// Roughly how many bytes it adds to a message.
    fn weight(&self) -> usize {
        match &self.answer {
            ClusterMsg::TaskResult(Ok(v)) => v.data.len() + 64,
            _ => 128,
        }
    }
}

/// Reports of finished tasks and calls to the nodes that sent them: batched per node, one
/// batch in flight per node, retried a few times; a large value whose report cannot be
/// delivered is released.
struct Reporter {
    net: net::NetHandle,
    held: std::sync::Arc<Held>,
    queues: parking_lot::Mutex<HashMap<libp2p::PeerId, std::sync::Arc<ReportQueue>>>,
}

/// The results waiting to go to one node, and whether a task is sending them.
#[derive(Default)]
struct ReportQueue {
    state: parking_lot::Mutex<(std::collections::VecDeque<Finished>, bool)>,
}

/// Large results of tasks and calls run here for other nodes, each holding one reference
/// until the node that asked pulled it (`Release`) or cannot be told about it.
struct Held {
    table: std::sync::Arc<crate::store::ObjectTable>,
    ids: parking_lot::Mutex<std::collections::HashSet<crate::ObjectId>>,
}

impl Held {
    /// Keeps `id`'s reference until it is released.
    fn keep(&self, id: crate::ObjectId) {
        self.ids.lock().insert(id);
    }

    /// Drops the reference kept for `id`, if one is.
    fn release(&self, id: crate::ObjectId) {
        if self.ids.lock().remove(&id) {
            self.table.decref(id);
        }
    }
}

/// Reports in one batch, at most, and their inline bytes, at most.
const REPORT_BATCH: usize = 512;
const REPORT_BYTES: usize = 8 << 20;

impl Reporter {
    /// Sends `done` to `origin`. The first reporter to find nobody sending sends, on its own
    /// task, everything queued for `origin` until the queue is empty; reports arriving
    /// meanwhile join the next batch. (No hand-off to a sending task: one thread wake-up less
    /// per result.)
    async fn report(&self, origin: libp2p::PeerId, done: Finished) {
        let q = self.queues.lock().entry(origin).or_default().clone();
        {
            let mut st = q.state.lock();
            st.0.push_back(done);
            if st.1 {
                return;
            }
            st.1 = true;
        }
        loop {
            let batch = {
                let mut st = q.state.lock();
                let mut bytes = 0;
                let mut batch = Vec::new();
                while batch.len() < REPORT_BATCH
                    && bytes < REPORT_BYTES
                    && let Some(f) = st.0.pop_front()
                {
                    bytes += f.weight();
                    batch.push(f);
                }
                if batch.is_empty() {
                    st.1 = false;
                    return;
                }
                batch
            };
            self.send_batch(origin, batch).await;
        }
    }

    async fn send_batch(&self, origin: libp2p::PeerId, batch: Vec<Finished>) {
        let ids: Vec<crate::ObjectId> = batch.iter().map(|f| f.return_id).collect();
        let msg = encode(&ClusterMsg::TaskFinished(batch));
        // On the lane when there is one (it retries a broken connection itself).
        let Err(msg) = self.net.tell(origin, msg).await else {
            return;
        };
        for attempt in 0..3u64 {
            match self.net.request(origin, msg.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(peer = %origin, attempt, error = %e, "could not report finished tasks to their node");
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        for id in ids {
            self.held.release(id);
        }
    }
}

/// One node as the head sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Node id (hex).
    pub node_id: String,
    /// The head node.
    pub is_head: bool,
    /// Heartbeating.
    pub alive: bool,
    /// The address it advertises ("" until its first heartbeat).
    #[serde(default)]
    pub ip: String,
    /// Its resources.
    pub total: HashMap<String, f64>,
    /// What is free.
    pub available: HashMap<String, f64>,
    /// What its queued work waits for.
    #[serde(default)]
    pub pending: Vec<crate::sched::Demand>,
    /// Its counters and gauges, from its last heartbeat (`/metrics`).
    #[serde(default)]
    pub metrics: crate::actors::metrics::NodeMetrics,
}

/// The cluster's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// Every node ever seen.
    pub nodes: Vec<NodeStatus>,
    /// Resource shapes that queued tasks and actors wait for, over all alive nodes.
    pub pending: Vec<crate::sched::Demand>,
}

fn encode(m: &ClusterMsg) -> Vec<u8> {
    rmp_serde::to_vec(m).unwrap_or_default()
}

fn decode(b: &[u8]) -> Res<ClusterMsg> {
    rmp_serde::from_slice(b).map_err(|e| ClusterError::Malformed(e.to_string()))
}

/// Options of `mobula start`.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Start a head (else join `address`).
    pub head: bool,
    /// `host:port` of the head to join.
    pub address: Option<String>,
    /// The head's port.
    pub port: u16,
    /// Interface to listen on.
    pub bind: String,
    /// The address others reach this node at (default: see `advertised_ip`).
    pub node_ip: Option<String>,
    /// CPUs (default: the machine's).
    pub num_cpus: Option<f64>,
    /// GPUs.
    pub num_gpus: f64,
    /// Memory in bytes.
    pub memory: Option<f64>,
    /// The object store's limit in bytes (objects past it spill to disk).
    pub object_store_memory: Option<u64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Root of the cluster directories.
    pub temp_dir: PathBuf,
    /// The cluster secret (joining from another machine).
    pub secret: Option<String>,
    /// A node that stops heartbeating for this long is dead.
    pub death_timeout: Duration,
    /// How long a request no node can hold waits for one that can.
    pub infeasible_timeout: Duration,
    /// Always fetch a job's executable from the node that sent the task, even when the same
    /// path exists here (nodes whose file systems differ).
    pub fetch_executables: bool,
    /// Announce this node on the LAN by mDNS, and (a node without `address`) find the head
    /// there: the peer listening on `port` that answers `Register` with `Welcome`.
    pub mdns: bool,
    /// The head's dashboard and jobs API (`None`: not served).
    pub dashboard: Option<DashboardOptions>,
    /// Where the head's GCS keeps its tables (default `<cluster dir>/gcs`); other nodes keep
    /// theirs in memory.
    pub storage: Option<PathBuf>,
    /// The node memory monitor (`--memory-usage-threshold`, `--memory-monitor-refresh-ms`,
    /// `--memory-monitor-worker-bytes`).
    pub memory_monitor: crate::MemoryMonitorConfig,
}

/// Where the head serves its web face.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Interface (`--dashboard-host`, default 127.0.0.1).
    pub host: String,
    /// Port (`--dashboard-port`, default 8265).
    pub port: u16,
    /// The token clients must send (`--auth-token`); generated for a non-loopback host.
    pub token: Option<String>,
}

/// The head's port, which names the cluster directory: `--port` for a head and for a node
/// that finds its head over mDNS, the port of `--address` for one that dials it.
fn cluster_port(opts: &StartOptions) -> Res<u16> {
    match (&opts.address, opts.head) {
        (_, true) => Ok(opts.port),
        (Some(a), false) => port_of(a),
        (None, false) if opts.mdns => Ok(opts.port),
        (None, false) => Err(ClusterError::Usage(
            "pass --head to start a head, --address HOST:PORT to join one, or --mdns to find one on the LAN"
                .to_string(),
        )),
    }
}

/// First wait before asking a candidate head again after a failed `Register`; it doubles
/// after each failure, up to `SEARCH_RETRY_MAX`.
const SEARCH_RETRY: Duration = Duration::from_secs(2);
const SEARCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// A joining node's search for its head over mDNS (no `--address`). Every peer heard of at an
/// address on the head's port is a candidate, asked with `Register` (one request at a time
/// per peer); the first `Welcome` ends the search. A peer answering `NotHead` is never asked
/// again; one that cannot be reached (not up yet, or another cluster's secret failing the
/// handshake) is asked again later, less and less often.
#[derive(Debug)]
struct HeadSearch {
    port: u16,
    candidates: HashMap<libp2p::PeerId, Candidate>,
    refused: std::collections::HashSet<libp2p::PeerId>,
}

#[derive(Debug)]
struct Candidate {
    addr: libp2p::Multiaddr,
    asking: bool,
    next_try: Instant,
    wait: Duration,
}

impl HeadSearch {
    fn new(port: u16) -> Self {
        HeadSearch {
            port,
            candidates: HashMap::new(),
            refused: Default::default(),
        }
    }

    /// Notes a peer mDNS found; true when it became a candidate (its address is on the head's
    /// TCP port and it has not refused).
    fn discovered(&mut self, peer: libp2p::PeerId, addr: libp2p::Multiaddr, now: Instant) -> bool {
        let on_port = addr
            .iter()
            .any(|p| p == libp2p::multiaddr::Protocol::Tcp(self.port));
        if !on_port || self.refused.contains(&peer) || self.candidates.contains_key(&peer) {
            return false;
        }
        self.candidates.insert(
            peer,
            Candidate {
                addr,
                asking: false,
                next_try: now,
                wait: SEARCH_RETRY,
            },
        );
        true
    }

    /// The candidates to ask now (each is then being asked until `failed` or `refused`).
    fn due(&mut self, now: Instant) -> Vec<(libp2p::PeerId, libp2p::Multiaddr)> {
        let mut out = Vec::new();
        for (peer, c) in &mut self.candidates {
            if !c.asking && c.next_try <= now {
                c.asking = true;
                out.push((*peer, c.addr.clone()));
            }
        }
        out
    }

    /// Asking `peer` failed (unreachable, or an answer that is neither `Welcome` nor
    /// `NotHead`): ask again later.
    fn failed(&mut self, peer: &libp2p::PeerId, now: Instant) {
        if let Some(c) = self.candidates.get_mut(peer) {
            c.asking = false;
            c.next_try = now + c.wait;
            c.wait = (c.wait * 2).min(SEARCH_RETRY_MAX);
        }
    }

    /// `peer` answered `NotHead`.
    fn refused(&mut self, peer: libp2p::PeerId) {
        self.candidates.remove(&peer);
        self.refused.insert(peer);
    }
}

/// Asks a peer mDNS found whether it is the head (it dials the address mDNS reported).
async fn ask_head(
    net: &net::NetHandle,
    peer: libp2p::PeerId,
    addr: libp2p::Multiaddr,
    reg: Vec<u8>,
) -> Res<ClusterMsg> {
    // Again each time: a failed dial makes the swarm forget the address.
    net.add_address(peer, addr).await?;
    let reply = net.request(peer, reg).await?;
    decode(&reply)
}

struct Member {
    status: NodeStatus,
    last_seen: Instant,
    /// Heartbeat periods this daemon itself lived through since the node was last heard:
    /// a daemon that was starved of CPU does not blame others for its own silence.
    ticks_unheard: u32,
}

impl Member {
    /// An alive node just heard of, with its resources (empty until its first heartbeat).
    fn new(node_id: String, total: HashMap<String, f64>, available: HashMap<String, f64>) -> Self {
        Member {
            status: NodeStatus {
                node_id,
                is_head: false,
                alive: true,
                ip: String::new(),
                available,
                total,
                pending: Vec::new(),
                metrics: Default::default(),
            },
            last_seen: Instant::now(),
            ticks_unheard: 0,
        }
    }
}

/// Set for a daemon started in the background: the name of its log file in the cluster
/// directory's `logs/` (the state API lists it).
const ENV_NODE_LOG: &str = "MOBULA_NODE_LOG";

/// How often a node dials its head while it has no connection to it.
const HEAD_REDIAL: Duration = Duration::from_secs(1);

/// How often heartbeats go out.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Runs a node daemon in the foreground until SIGTERM or SIGINT.
pub fn run_node(opts: StartOptions) -> Res<()> {
    let port = cluster_port(&opts)?;
    let dir = ClusterDir::new(&opts.temp_dir, port);
    for sub in ["nodes", "logs"] {
        let p = dir.dir.join(sub);
        std::fs::create_dir_all(&p).map_err(file_err(&p))?;
    }
    let secret = if opts.head {
        // A head restarted on its cluster directory (after a crash) keeps the secret its
        // nodes hold, so they can reconnect; otherwise it makes a new one.
        match dir.read_secret() {
            Ok(s) => {
                tracing::info!(path = %dir.secret().display(), "keeping the cluster secret found in the cluster directory");
                s
            }
            Err(_) => {
                let s = net::new_secret();
                dir.write_secret(&s)?;
                s
            }
        }
    } else {
        match &opts.secret {
            Some(s) => parse_secret(s)?,
            None => dir.read_secret().map_err(|_| {
                ClusterError::Usage(format!(
                    "no cluster secret: pass --secret (printed by the head), or join from the head's machine where {} exists",
                    dir.secret().display()
                ))
            })?,
        }
    };
    // The listener comes up before the node's actors: a restarted head recovers its actors
    // at init and forks their worker processes, and a child between fork and exec holds
    // every open descriptor, the port probe's listener among them, for a moment.
    let listen = if opts.head {
        format!("/ip4/{}/tcp/{}", opts.bind, port)
    } else {
        format!("/ip4/{}/tcp/0", opts.bind)
    };
    let dial = match (&opts.address, opts.head) {
        (Some(a), false) => vec![multiaddr_of(a)?],
        _ => Vec::new(),
    };
    // Dialled again while the head is unreachable (a head restarted on its port comes back
    // with a new identity).
    let head_dial = dial.first().cloned();
    let started = net::start(NetConfig {
        keypair: None,
        listen: Some(
            listen
                .parse()
                .map_err(|e| ClusterError::Usage(format!("bad address {listen}: {e}")))?,
        ),
        secret,
        dial,
        request_timeout: Duration::from_secs(30),
        mdns: opts.mdns,
    });
    let (net, mut events, bound) = match started {
        Ok(x) => x,
        Err(e) => {
            let hint = if opts.head {
                " (choose another with --port)"
            } else {
                ""
            };
            return Err(ClusterError::Usage(format!("{e}{hint}")));
        }
    };
    let config = crate::Config {
        num_cpus: opts.num_cpus,
        num_gpus: opts.num_gpus,
        memory: opts.memory,
        object_store_memory: opts.object_store_memory,
        // Spilled objects go where the user pointed `--temp-dir` (a disk with room).
        spill_root: Some(dir.dir.clone()),
        resources: opts.resources.clone(),
        namespace: "_mobula_node".to_string(),
        // Drivers connect over the node's socket and get worker processes of their own
        // executable; the daemon itself runs no user code.
        worker_mode: crate::WorkerMode::Process,
        prestart_workers: Some(0),
        infeasible_timeout: opts.infeasible_timeout,
        memory_monitor: opts.memory_monitor.clone(),
        gcs_storage: opts
            .head
            .then(|| opts.storage.clone().unwrap_or_else(|| dir.dir.join("gcs"))),
        ..Default::default()
    };
    let rt = crate::init_with(config)?;
    let node_id = rt.node_id().hex();
    let table = rt.core().node().map(|n| n.table.clone()).ok_or_else(|| {
        ClusterError::Usage("the node started without an object store".to_string())
    })?;

    let pid_file = dir.pid_file(&node_id);
    let socket_file = dir.socket_file(&node_id);
    if let Some(sock) = rt.raylet_socket() {
        std::fs::write(&socket_file, sock.to_string_lossy().as_bytes())
            .map_err(file_err(&socket_file))?;
    }
    std::fs::write(&pid_file, std::process::id().to_string()).map_err(file_err(&pid_file))?;
    let ip = advertised_ip(&opts)?;
    let here = state::Here {
        rt: rt.clone(),
        ip: ip.to_string(),
        logs: Some((dir.dir.join("logs"), std::env::var(ENV_NODE_LOG).ok())),
        is_head: opts.head,
    };
    // Object values travel over a data plane of their own (see `net::data`).
    let provider_table = table.clone();
    // A spilled value is read from its file for the peer, not restored here.
    let provider: net::data::Provider =
        std::sync::Arc::new(move |id: &crate::ObjectId| match provider_table.peek(id) {
            crate::store::Peek::Sealed {
                is_error: false, ..
            } => provider_table.read_part(id, 0, u64::MAX).map(|(_, b)| b),
            _ => None,
        });
    let data_bind: std::net::SocketAddr = format!("{}:0", opts.bind)
        .parse()
        .map_err(|e| ClusterError::Usage(format!("bad --bind {}: {e}", opts.bind)))?;
    let (plane, data_addr) = match net::data::DataPlane::start(
        data_bind,
        secret,
        provider,
        net.peer_id(),
    ) {
        Ok((p, bound)) => {
            net.set_data(p.clone());
            (Some(p), Some(format!("{ip}:{}", bound.port())))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no data plane: objects move over the control connection");
            (None, None)
        }
    };
    let my_addr = bound
        .as_ref()
        .map(|a| format!("{}/p2p/{}", with_ip(a, ip), net.peer_id()))
        .unwrap_or_default();
    let (asks_tx, asks_rx) = flume::bounded::<crate::node::ClusterAsk>(4096);
    // The head's web face: bound before head.json is written, so a taken port fails the start.
    let web = match (&opts.dashboard, opts.head) {
        (Some(d), true) => {
            let token = crate::web::auth::resolve_token(&d.host, d.token.clone(), &dir.dir)
                .map_err(|e| ClusterError::Usage(e.to_string()))?;
            let state = crate::web::WebState {
                rt: rt.clone(),
                dir: dir.clone(),
                head_address: format!("{ip}:{port}"),
                temp_root: opts.temp_dir.clone(),
                asks: asks_tx.clone(),
                token,
                started: std::time::SystemTime::now(),
                session_name: format!("session_{}_{}", now_ms(), std::process::id()),
                addr: Default::default(),
                jobs: Default::default(),
            };
            let opts = crate::web::WebOptions {
                host: d.host.clone(),
                port: d.port,
            };
            match crate::web::start(state, &opts) {
                Ok(w) => Some(w),
                Err(e) => {
                    crate::shutdown();
                    return Err(ClusterError::Usage(e.to_string()));
                }
            }
        }
        _ => None,
    };
    if opts.head {
        let host = ip.to_string();
        let multiaddr = my_addr.clone();
        let rec = HeadRecord {
            address: format!("{host}:{port}"),
            multiaddr,
            node_id: node_id.clone(),
            pid: std::process::id(),
            dashboard: web.as_ref().map(|w| format!("http://{}", w.addr)),
        };
        let path = dir.head();
        std::fs::write(&path, serde_json::to_string(&rec).unwrap_or_default())
            .map_err(file_err(&path))?;
        let current = opts.temp_dir.join(CURRENT);
        std::fs::write(&current, &rec.address).map_err(file_err(&current))?;
    }
    tracing::info!(node = %node_id, head = opts.head, "node daemon up");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Usage(format!("cannot start the daemon's event loop: {e}")))?;
    let raylet = rt.raylet();
    let (spill_tx, spill_rx) = flume::bounded::<Outbound>(65_536);
    let outgoing: std::sync::Arc<actors::Outgoing> = Default::default();
    let calls_tx: std::sync::Arc<dyn crate::actors::directory::Forwarder> =
        std::sync::Arc::new(actors::Forwarding {
            outgoing: outgoing.clone(),
            net: net.clone(),
            table: table.clone(),
            home: runtime.handle().clone(),
        });
    // Executables of jobs whose tasks this node sent elsewhere, by hash (served to others).
    let exes: std::sync::Arc<parking_lot::Mutex<HashMap<String, PathBuf>>> = Default::default();
    if let Some(r) = &raylet {
        let tasks = send_task(
            exes.clone(),
            outgoing.clone(),
            net.clone(),
            r.clone(),
            runtime.handle().clone(),
        );
        r.do_send(SetSpill {
            work: spill_tx,
            tasks,
            calls: calls_tx.clone(),
        });
    }
    let names = rt.core().node().map(|n| {
        n.link_cluster(crate::node::ClusterLink {
            asks: asks_tx,
            is_head: opts.head,
        });
        actors::Names {
            gcs: n.gcs.clone(),
            directory: n.directory.clone(),
            calls: calls_tx.clone(),
            me: rt.node_id(),
            is_head: opts.head,
        }
    });
    let shipping = std::sync::Arc::new(Shipping {
        cache: dir.dir.join("exe"),
        fetch_always: opts.fetch_executables,
        locks: Default::default(),
    });
    // Jobs other nodes run for this head (their events go to its job manager), and jobs this
    // node runs for the head (their stop switches).
    type JobEvents = (String, flume::Sender<jobs::JobEvent>);
    let remote_jobs: std::sync::Arc<parking_lot::Mutex<HashMap<String, JobEvents>>> =
        Default::default();
    let local_jobs: std::sync::Arc<
        parking_lot::Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    > = Default::default();
    let held = std::sync::Arc::new(Held {
        table: table.clone(),
        ids: Default::default(),
    });
    let reporter = std::sync::Arc::new(Reporter {
        net: net.clone(),
        held: held.clone(),
        queues: Default::default(),
    });
    let hot = std::sync::Arc::new(lane::Hot {
        rt: rt.clone(),
        raylet: raylet.clone(),
        net: net.clone(),
        held: held.clone(),
        shipping: shipping.clone(),
        reporter: reporter.clone(),
        outgoing: outgoing.clone(),
        known_jobs: Default::default(),
    });
    if let Some(p) = &plane {
        p.set_sink(hot.clone().sink());
    }
    let result = runtime.block_on(async {
        let mut members: HashMap<String, Member> = HashMap::new();
        if let (true, Some(n)) = (opts.head, rt.core().node()) {
            // A restarted head took back actors other nodes host: it watches those nodes as
            // if they had registered, so one that never comes back is declared dead.
            for host in n.gcs.send(crate::actors::gcs::AdoptedHosts).await.unwrap_or_default() {
                members.insert(host.hex(), Member::new(host.hex(), HashMap::new(), HashMap::new()));
            }
        }
        let mut peers: HashMap<String, libp2p::PeerId> = HashMap::new();
        // Bundles to give back on nodes not reachable when asked, by node.
        let mut unreturned: HashMap<String, Vec<crate::PlacementGroupId>> = HashMap::new();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| ClusterError::Usage(format!("cannot watch signals: {e}")))?;
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks_needed = (opts.death_timeout.as_millis() / HEARTBEAT.as_millis()).max(1) as u32;
        let mut head_peer: Option<libp2p::PeerId> = None;
        // The node ids of every head this node joined (a restarted head has a new one).
        let mut head_nodes: std::collections::HashSet<String> = Default::default();
        // `head_peer` for tasks that outlive one turn of this loop.
        let (head_tx, head_rx) = tokio::sync::watch::channel(None);
        let mut joined_once = false;
        let mut last_dial = Instant::now();
        // Without --address, a node with --mdns finds its head on the LAN.
        let mut search = (opts.mdns && !opts.head && opts.address.is_none()).then(|| HeadSearch::new(port));
        let searching_since = Instant::now();
        let mut search_warned = false;
        let (answers_tx, mut answers_rx) = tokio::sync::mpsc::channel::<(libp2p::PeerId, Res<ClusterMsg>)>(64);
        let ask_due = |search: &mut HeadSearch, total: &HashMap<String, f64>| {
            let reg = encode(&ClusterMsg::Register { node_id: node_id.clone(), total: total.clone() });
            for (peer, addr) in search.due(Instant::now()) {
                tracing::debug!(peer = %peer, addr = %addr, "asking a peer found by mdns whether it is the head");
                let (net, reg, answers) = (net.clone(), reg.clone(), answers_tx.clone());
                tokio::spawn(async move {
                    let answer = ask_head(&net, peer, addr, reg).await;
                    let _ = answers.send((peer, answer)).await;
                });
            }
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    let (total, available) = own_resources(&raylet).await;
                    if let Some(s) = &mut search {
                        ask_due(s, &total);
                        if !search_warned && searching_since.elapsed() > Duration::from_secs(15) {
                            search_warned = true;
                            tracing::warn!(port, candidates = s.candidates.len(), "no head found over mdns yet: is the head started with --mdns and --port {port}, on this LAN, with multicast allowed, and is the secret right?");
                        }
                    }
                    if !opts.head && head_peer.is_none() && search.is_none()
                        && let Some(a) = &head_dial
                        && last_dial.elapsed() >= HEAD_REDIAL
                    {
                        last_dial = Instant::now();
                        tracing::debug!(addr = %a, "dialling the head");
                        let _ = net.dial(a.clone()).await;
                    }
                    let hb = ClusterMsg::Heartbeat {
                        node_id: node_id.clone(),
                        addr: my_addr.clone(),
                        total,
                        available,
                        pending: own_demand(&raylet).await,
                        data: data_addr.clone(),
                        metrics: Box::new(crate::actors::metrics::snapshot(&rt).await),
                    };
                    // Fails until some peer's subscription is known; the next tick retries.
                    let _ = net.publish(encode(&hb)).await;
                    for m in members.values_mut() {
                        m.ticks_unheard = m.ticks_unheard.saturating_add(1);
                        // Anything from the node counts (its gossip may queue behind bulk data).
                        if let Some(t) = peers.get(&m.status.node_id).and_then(|p| net.last_heard(p))
                            && t > m.last_seen
                        {
                            m.last_seen = t;
                            m.ticks_unheard = 0;
                        }
                        let alive = m.last_seen.elapsed() < opts.death_timeout || m.ticks_unheard < ticks_needed;
                        if m.status.alive && !alive {
                            tracing::warn!(node = %m.status.node_id, silent_ms = m.last_seen.elapsed().as_millis() as u64, ticks = m.ticks_unheard, "node stopped heartbeating: declared dead");
                            // Its jobs' entrypoints died with it: their supervisors see the end.
                            remote_jobs.lock().retain(|_, (n, _)| *n != m.status.node_id);
                            if let Some(id) = crate::NodeId::parse(&m.status.node_id) {
                                outgoing.node_died(id, &table);
                                if let Some(names) = &names {
                                    // The actors it owned and this node hosts end with it
                                    // (unless detached).
                                    let was_head = head_nodes.contains(&m.status.node_id);
                                    names.gcs.do_send(crate::actors::gcs::OwnerDied { node: id, was_head });
                                }
                                if let Some(names) = names.clone() {
                                    tokio::spawn(names.reroute(id, net.clone(), head_rx.clone()));
                                }
                                if let Some(r) = &raylet {
                                    r.do_send(RemoteNode { node_id: id, resources: None });
                                }
                            }
                        }
                        m.status.alive = alive;
                    }
                }
                ask = asks_rx.recv_async() => {
                    let Ok(ask) = ask else { break };
                    match ask {
                        crate::node::ClusterAsk::Status { done } => {
                            let _ = done.send(status_report(&rt, (&node_id, &ip.to_string()), &members, own_demand(&raylet).await, crate::actors::metrics::snapshot(&rt).await));
                        }
                        crate::node::ClusterAsk::RunJob { node, job, events, done } => {
                            let Some(peer) = peers.get(&node).copied() else {
                                let _ = done.send(Err(format!("node {node} is not reachable")));
                                continue;
                            };
                            let sid = job.sid.clone();
                            remote_jobs.lock().insert(sid.clone(), (node.clone(), events));
                            let (net, remote_jobs) = (net.clone(), remote_jobs.clone());
                            tokio::spawn(async move {
                                let r = match net.request(peer, encode(&ClusterMsg::RunJob(job))).await.map(|b| decode(&b)) {
                                    Ok(Ok(ClusterMsg::JobAccepted(r))) => r,
                                    Ok(Ok(other)) => Err(format!("unexpected reply {other:?}")),
                                    Ok(Err(e)) => Err(e.to_string()),
                                    Err(e) => Err(e.to_string()),
                                };
                                if r.is_err() {
                                    remote_jobs.lock().remove(&sid);
                                }
                                let _ = done.send(r);
                            });
                        }
                        crate::node::ClusterAsk::FollowJob { node, sid, events } => {
                            remote_jobs.lock().insert(sid, (node.clone(), events));
                            // Watched as if it had registered: if it never comes back, it is
                            // declared dead and the job fails.
                            members.entry(node.clone()).or_insert_with(|| Member::new(node, HashMap::new(), HashMap::new()));
                        }
                        crate::node::ClusterAsk::StopJob { node, sid } => {
                            if let Some(peer) = peers.get(&node).copied() {
                                let net = net.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = net.request(peer, encode(&ClusterMsg::StopJob { sid: sid.clone() })).await {
                                        tracing::warn!(job = %sid, node = %node, error = %e, "could not ask a node to stop a job");
                                    }
                                });
                            }
                        }
                        crate::node::ClusterAsk::State { query, node, done } => {
                            // Alive nodes only (a dead one would only time out), or the one asked for.
                            let asked: Vec<(String, libp2p::PeerId)> = members
                                .values()
                                .filter(|m| m.status.alive && node.as_ref().is_none_or(|n| *n == m.status.node_id))
                                .filter_map(|m| peers.get(&m.status.node_id).map(|p| (m.status.node_id.clone(), *p)))
                                .collect();
                            let (here, net, own) = (here.clone(), net.clone(), node_id.clone());
                            let include_own = node.as_ref().is_none_or(|n| *n == own);
                            tokio::spawn(async move {
                                let own = include_own.then_some(own.as_str());
                                let _ = done.send(state::gather(&here, own, asked, &net, &query).await);
                            });
                        }
                        crate::node::ClusterAsk::CommitBundles { node, pg, bundles, done } => {
                            let peer = peers.get(&node.hex()).copied();
                            let net = net.clone();
                            tokio::spawn(async move {
                                let msg = ClusterMsg::CommitBundles { pg, bundles };
                                let r = match peer {
                                    None => Err(crate::Error::runtime(format!("node {node} is not reachable"))),
                                    Some(p) => match net.request(p, encode(&msg)).await.map(|b| decode(&b)) {
                                        Ok(Ok(ClusterMsg::Committed(r))) => r.map_err(crate::Error::runtime),
                                        Ok(Ok(other)) => Err(crate::Error::runtime(format!("unexpected reply {other:?}"))),
                                        Ok(Err(e)) => Err(crate::Error::runtime(e)),
                                        Err(e) => Err(crate::Error::runtime(e)),
                                    },
                                };
                                let _ = done.send(r);
                            });
                        }
                        crate::node::ClusterAsk::ReturnBundles { node, pg } => {
                            match peers.get(&node.hex()).copied() {
                                Some(p) => return_bundles(&net, p, node, pg),
                                // Not reachable yet (a restarted head's groups, before their
                                // nodes registered again): given back when it registers.
                                None => unreturned.entry(node.hex()).or_default().push(pg),
                            }
                        }
                        crate::node::ClusterAsk::Kill { actor_id, no_restart, done } => {
                            if let Some(names) = names.clone() {
                                let head = if opts.head { None } else { head_peer };
                                let (net, peers) = (net.clone(), peers.clone());
                                tokio::spawn(async move {
                                    let _ = done.send(names.kill_elsewhere(actor_id, no_restart, &net, head, &peers).await);
                                });
                            }
                        }
                        ask => {
                            if let Some(names) = names.clone() {
                                let head = if opts.head { None } else { head_peer };
                                tokio::spawn(names.answer(ask, net.clone(), head));
                            }
                        }
                    }
                }
                work = spill_rx.recv_async() => {
                    let Ok(work) = work else { break };
                    match work {
                        Outbound::Actor { node, spec, launch } => {
                            offer_exe(&exes, &launch);
                            let peer = peers.get(&node.hex()).copied();
                            let (net, raylet) = (net.clone(), raylet.clone());
                            tokio::spawn(async move {
                                let actor_id = spec.actor_id;
                                // The node answers at once; `ActorPlaced` follows.
                                let msg = ClusterMsg::CreateActor { spec, launch };
                                if let (Err((e, _)), Some(r)) = (hand_over(&net, node, peer, msg).await, raylet) {
                                    r.do_send(crate::actors::raylet::RemoteActorPlaced { actor_id, node, result: Err(e), durable: None });
                                }
                            });
                        }
                        Outbound::Release { node, id } => {
                            if let Some(peer) = peers.get(&node.hex()).copied() {
                                let net = net.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = net.request(peer, encode(&ClusterMsg::Release(id))).await {
                                        tracing::debug!(object = %id, node = %node, error = %e, "could not release a copy");
                                    }
                                });
                            }
                        }
                        Outbound::JobEnded(job) => {
                            for peer in peers.values().copied() {
                                let net = net.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = net.request(peer, encode(&ClusterMsg::JobEnded(job))).await {
                                        tracing::debug!(job = %job, peer = %peer, error = %e, "could not tell a node that a job ended");
                                    }
                                });
                            }
                        }
                        Outbound::CheckAdopted { node, actor_id } => {
                            let peer = peers.get(&node.hex()).copied();
                            let (net, raylet) = (net.clone(), raylet.clone());
                            tokio::spawn(async move {
                                let Some(peer) = peer else { return };
                                let asked = net.request(peer, encode(&ClusterMsg::HostsActor(actor_id))).await;
                                match asked.map(|b| decode(&b)) {
                                    Ok(Ok(ClusterMsg::Hosting(None))) => {}
                                    Ok(Ok(ClusterMsg::Hosting(Some((reason, dead_for_good))))) => {
                                        if let Some(r) = raylet {
                                            r.do_send(crate::actors::raylet::AdoptedGone { actor_id, node, reason, dead_for_good });
                                        }
                                    }
                                    // Unreachable: its death, if it comes, is handled as any node's.
                                    other => tracing::debug!(actor = %actor_id, node = %node, answer = ?other.err(), "could not check an actor taken back from storage"),
                                }
                            });
                        }
                        Outbound::KillActor { node, actor_id, no_restart } => {
                            if let Some(peer) = peers.get(&node.hex()).copied() {
                                let net = net.clone();
                                tokio::spawn(async move {
                                    let msg = ClusterMsg::KillActor { actor_id, no_restart };
                                    if let Err(e) = net.request(peer, encode(&msg)).await {
                                        tracing::warn!(actor = %actor_id, node = %node, error = %e, "could not kill an actor on its node");
                                    }
                                });
                            }
                        }
                    }
                }
                answer = answers_rx.recv(), if search.is_some() => {
                    let Some((peer, answer)) = answer else { continue };
                    let Some(s) = &mut search else { continue };
                    match answer {
                        Ok(ClusterMsg::Welcome { head }) => {
                            head_nodes.insert(head.clone());
                            // Reachable by its node id from now on, not only after its first heartbeat.
                            peers.insert(head.clone(), peer);
                            outgoing.set_peer(&head, peer);
                            head_peer = Some(peer);
                            head_tx.send_replace(head_peer);
                            search = None;
                            if joined_once {
                                tracing::info!(head = %head, peer = %peer, "joined the restarted head (found by mdns)");
                                if let Some(names) = names.clone() {
                                    tokio::spawn(names.reclaim(net.clone(), peer));
                                }
                            } else {
                                tracing::info!(head = %head, peer = %peer, "joined the cluster (head found by mdns)");
                            }
                            joined_once = true;
                        }
                        Ok(ClusterMsg::NotHead) => {
                            tracing::debug!(peer = %peer, "a peer found by mdns is not the head");
                            s.refused(peer);
                        }
                        Ok(other) => {
                            tracing::debug!(peer = %peer, reply = ?other, "unexpected answer to Register from a peer found by mdns");
                            s.failed(&peer, Instant::now());
                        }
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %e, "could not ask a peer found by mdns (not up yet, or another cluster)");
                            s.failed(&peer, Instant::now());
                        }
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    match ev {
                        NetEvent::Discovered(peer, addr) => {
                            if let Some(s) = &mut search
                                && s.discovered(peer, addr, Instant::now())
                            {
                                ask_due(s, &own_resources(&raylet).await.0);
                            }
                        }
                        NetEvent::Connected(peer) if !opts.head && head_peer.is_none() && search.is_none() => {
                            // The head, or another node that connected first: only the head
                            // welcomes a `Register`.
                            let reg = ClusterMsg::Register {
                                node_id: node_id.clone(),
                                total: own_resources(&raylet).await.0,
                            };
                            match net.request(peer, encode(&reg)).await.map(|b| decode(&b)) {
                                Ok(Ok(ClusterMsg::Welcome { head })) => {
                                    head_nodes.insert(head.clone());
                                    // Reachable by its node id from now on, not only after its first heartbeat.
                                    peers.insert(head.clone(), peer);
                                    outgoing.set_peer(&head, peer);
                                    head_peer = Some(peer);
                                    head_tx.send_replace(head_peer);
                                    if joined_once {
                                        tracing::info!(head = %head, "joined the restarted head");
                                        // Its names and owners of other nodes' actors were in
                                        // memory: this node's are told again.
                                        if let Some(names) = names.clone() {
                                            tokio::spawn(names.reclaim(net.clone(), peer));
                                        }
                                    } else {
                                        tracing::info!(head = %head, "joined the cluster");
                                    }
                                    joined_once = true;
                                }
                                Ok(Ok(ClusterMsg::NotHead)) => {
                                    tracing::debug!(peer = %peer, "a peer that is not the head connected");
                                }
                                other => tracing::error!(reply = ?other, "the head did not accept this node"),
                            }
                        }
                        NetEvent::Disconnected(peer) if head_peer == Some(peer) => {
                            head_peer = None;
                            head_tx.send_replace(head_peer);
                            if head_dial.is_none() && opts.mdns {
                                // Found over mDNS: a restarted head comes back with a new
                                // identity, which the search finds as it found the first.
                                tracing::warn!(peer = %peer, "lost the connection to the head: searching for it over mdns again");
                                search = Some(HeadSearch::new(port));
                            } else {
                                tracing::warn!(peer = %peer, "lost the connection to the head: dialling it again until it answers");
                            }
                        }
                        NetEvent::Request { from, data, reply } => {
                            match decode(&data) {
                            Ok(ClusterMsg::Register { node_id: n, total }) if opts.head => {
                                tracing::info!(node = %n, peer = %from, "node registered");
                                if let (Some(groups), Some(id)) = (unreturned.remove(&n), crate::NodeId::parse(&n)) {
                                    for pg in groups {
                                        return_bundles(&net, from, id, pg);
                                    }
                                }
                                // Reachable from now on, not only after its first heartbeat.
                                peers.insert(n.clone(), from);
                                outgoing.set_peer(&n, from);
                                members.insert(n.clone(), Member::new(n, total.clone(), total));
                                let _ = reply.send(encode(&ClusterMsg::Welcome { head: node_id.clone() }));
                            }
                            Ok(ClusterMsg::Register { .. }) => {
                                tracing::debug!(peer = %from, "a node asked this node, not the head, to register it");
                                let _ = reply.send(encode(&ClusterMsg::NotHead));
                            }
                            Ok(ClusterMsg::RunJob(job)) => {
                                let (stop_tx, stop) = tokio::sync::watch::channel(false);
                                let sid = job.sid.clone();
                                if local_jobs.lock().insert(sid.clone(), stop_tx).is_some() {
                                    tracing::warn!(job = %sid, "the head sent a job this node runs already");
                                }
                                let _ = reply.send(encode(&ClusterMsg::JobAccepted(Ok(()))));
                                let (tx, rx) = flume::bounded(64);
                                let env = vec![("MOBULA_TEMP_DIR".to_string(), opts.temp_dir.to_string_lossy().into_owned())];
                                tokio::spawn(jobs::run_here(job, dir.dir.clone(), node_id.clone(), env, stop, tx));
                                let (net, local_jobs, mut head) = (net.clone(), local_jobs.clone(), head_rx.clone());
                                tokio::spawn(async move {
                                    // One event at a time, each acknowledged: the head sees them in
                                    // order. While the head is down they wait for it to come back.
                                    while let Ok(event) = rx.recv_async().await {
                                        let msg = encode(&ClusterMsg::JobEvent { sid: sid.clone(), event });
                                        if !jobs::deliver(&net, &mut head, from, &msg).await {
                                            tracing::warn!(job = %sid, "could not report a job event to the head: its later events are dropped");
                                            break;
                                        }
                                    }
                                    local_jobs.lock().remove(&sid);
                                });
                            }
                            Ok(ClusterMsg::StopJob { sid }) => {
                                if let Some(stop) = local_jobs.lock().get(&sid) {
                                    let _ = stop.send(true);
                                }
                                let _ = reply.send(encode(&ClusterMsg::Released));
                            }
                            Ok(ClusterMsg::JobEvent { sid, event }) if opts.head => {
                                let ended = matches!(event, jobs::JobEvent::Ended { .. } | jobs::JobEvent::Failed { .. });
                                let tx = remote_jobs.lock().get(&sid).map(|(_, tx)| tx.clone());
                                if ended {
                                    remote_jobs.lock().remove(&sid);
                                }
                                tokio::spawn(async move {
                                    let answer = match tx {
                                        Some(tx) => {
                                            let _ = tx.send_async(event).await;
                                            ClusterMsg::Released
                                        }
                                        // A restarted head that has not taken the job back
                                        // yet: the node sends it again.
                                        None => ClusterMsg::JobAccepted(Err(format!("this head does not follow job {sid}"))),
                                    };
                                    let _ = reply.send(encode(&answer));
                                });
                            }
                            Ok(ClusterMsg::State(q)) => {
                                let here = here.clone();
                                tokio::spawn(async move {
                                    let r = here.answer(&q).await.map(|v| v.to_string());
                                    let _ = reply.send(encode(&ClusterMsg::StateRows(r)));
                                });
                            }
                            Ok(ClusterMsg::Status) if opts.head => {
                                let report = status_report(&rt, (&node_id, &ip.to_string()), &members, own_demand(&raylet).await, crate::actors::metrics::snapshot(&rt).await);
                                let _ = reply.send(encode(&ClusterMsg::StatusReport(report)));
                            }
                            Ok(ClusterMsg::ExecuteRemote { spec, launch }) => {
                                let _ = reply.send(encode(&ClusterMsg::Accepted));
                                hot.execute_remote(from, spec, launch);
                            }
                            Ok(ClusterMsg::CreateActor { spec, launch }) => {
                                let _ = reply.send(encode(&ClusterMsg::Accepted));
                                let (rt, raylet, net, shipping, table) = (rt.clone(), raylet.clone(), net.clone(), shipping.clone(), table.clone());
                                tokio::spawn(async move {
                                    let actor_id = spec.actor_id;
                                    let result = match shipping.resolve(&net, from, launch).await {
                                        Ok(launch) => actors::create_here(&rt, raylet, &net, from, *spec, launch, &table).await,
                                        Err(e) => Err(e),
                                    };
                                    if let Err(e) = &result {
                                        tracing::warn!(actor = %actor_id, error = %e, "could not create an actor for another node");
                                    }
                                    let created = result.is_ok();
                                    let msg = ClusterMsg::ActorPlaced { actor_id, result };
                                    if let Err(e) = net.request(from, encode(&msg)).await {
                                        tracing::warn!(actor = %actor_id, error = %e, "could not report a placed actor to its owner");
                                        if created {
                                            // The owner never learnt it runs here (it died, a
                                            // restarted head creates it again): it must not run twice.
                                            let core = rt.core().clone();
                                            let _ = tokio::task::spawn_blocking(move || core.kill_actor(actor_id, true)).await;
                                        }
                                    }
                                });
                            }
                            Ok(ClusterMsg::ActorPlaced { actor_id, result }) => {
                                let node = peers.iter().find(|(_, p)| **p == from).and_then(|(n, _)| crate::NodeId::parse(n));
                                tracing::debug!(actor = %actor_id, node = ?node, ok = result.is_ok(), "actor placed on another node");
                                // Acknowledged once this node's record of it is durable: a host
                                // that hears nothing kills its copy, so a head that dies first
                                // and creates the actor again never runs it twice.
                                let (durable, stored) = tokio::sync::oneshot::channel();
                                if let (Some(r), Some(node)) = (&raylet, node) {
                                    r.do_send(crate::actors::raylet::RemoteActorPlaced { actor_id, node, result, durable: Some(durable) });
                                }
                                tokio::spawn(async move {
                                    let _ = tokio::time::timeout(Duration::from_secs(10), stored).await;
                                    let _ = reply.send(encode(&ClusterMsg::Released));
                                });
                            }
                            Ok(ClusterMsg::HostsActor(actor_id)) => {
                                if let Some(names) = names.clone() {
                                    tokio::spawn(async move {
                                        // No answer if the GCS cannot tell: the asker does nothing.
                                        if let Ok(answer) = names.gcs.send(crate::actors::gcs::HostsActor(actor_id)).await {
                                            let _ = reply.send(encode(&ClusterMsg::Hosting(answer)));
                                        }
                                    });
                                }
                            }
                            Ok(ClusterMsg::KillActor { actor_id, no_restart }) => {
                                let _ = reply.send(encode(&ClusterMsg::Released));
                                let core = rt.core().clone();
                                tokio::task::spawn_blocking(move || {
                                    if let Err(e) = core.kill_actor(actor_id, no_restart) {
                                        tracing::warn!(actor = %actor_id, error = %e, "kill from the actor's owner failed");
                                    }
                                });
                            }
                            Ok(m @ (ClusterMsg::ClaimName { .. } | ClusterMsg::ReleaseName { .. } | ClusterMsg::ActorOwned { .. } | ClusterMsg::LookupName { .. } | ClusterMsg::LookupActor(_) | ClusterMsg::Kv(_))) if opts.head => {
                                if let Some(names) = names.clone() {
                                    tokio::spawn(async move {
                                        let _ = reply.send(encode(&names.head_answer(m).await));
                                    });
                                }
                            }
                            Ok(ClusterMsg::ActorCalls { calls }) => {
                                let hot = hot.clone();
                                tokio::spawn(async move {
                                    // Answered once queued at the actors: the next batch cannot overtake.
                                    let _ = reply.send(encode(&hot.actor_calls(from, calls).await));
                                });
                            }
                            Ok(ClusterMsg::TaskFinished(done)) => {
                                let _ = reply.send(encode(&ClusterMsg::Released));
                                hot.task_finished(from, done);
                            }
                            Ok(ClusterMsg::FetchChunk { id, offset, len }) => {
                                let part = move |table: &crate::store::ObjectTable| {
                                    table.read_part(&id, offset, len).map(|(size, b)| (size, serde_bytes::ByteBuf::from(b.to_vec())))
                                };
                                if matches!(table.peek(&id), crate::store::Peek::Sealed { spilled: true, .. }) {
                                    // A part of a spilled value is read from its file off this thread.
                                    let table = table.clone();
                                    tokio::task::spawn_blocking(move || {
                                        let _ = reply.send(encode(&ClusterMsg::Chunk(part(&table))));
                                    });
                                } else {
                                    let _ = reply.send(encode(&ClusterMsg::Chunk(part(&table))));
                                }
                            }
                            Ok(ClusterMsg::FetchExe { hash, offset, len }) => {
                                let path = exes.lock().get(&hash).cloned();
                                tokio::task::spawn_blocking(move || {
                                    let part = path.and_then(|p| read_part(&p, offset, len).ok());
                                    let _ = reply.send(encode(&ClusterMsg::Chunk(part)));
                                });
                            }
                            Ok(ClusterMsg::JobEnded(job_id)) => {
                                if let Some(r) = &raylet {
                                    r.do_send(crate::actors::raylet::JobEnded { job_id, broadcast: false });
                                }
                                let _ = reply.send(encode(&ClusterMsg::Released));
                            }
                            Ok(ClusterMsg::CommitBundles { pg, bundles }) => {
                                let raylet = raylet.clone();
                                tokio::spawn(async move {
                                    let r = match raylet {
                                        Some(r) => match r.send(crate::actors::raylet::CommitBundles { pg, bundles }).await {
                                            Ok(r) => r.map_err(|e| e.to_string()),
                                            Err(e) => Err(e.to_string()),
                                        },
                                        None => Err("this node has no raylet".to_string()),
                                    };
                                    tracing::debug!(pg = %pg, ok = r.is_ok(), "bundles reserved for another node");
                                    let _ = reply.send(encode(&ClusterMsg::Committed(r)));
                                });
                            }
                            Ok(ClusterMsg::ReturnBundles { pg }) => {
                                if let Some(r) = &raylet {
                                    r.do_send(crate::actors::raylet::ReturnBundles { pg });
                                }
                                let _ = reply.send(encode(&ClusterMsg::Released));
                            }
                            Ok(ClusterMsg::Release(id)) => {
                                held.release(id);
                                let _ = reply.send(encode(&ClusterMsg::Released));
                            }
                            Ok(other) => tracing::warn!(peer = %from, msg = ?other, "unexpected request"),
                            Err(e) => tracing::warn!(peer = %from, error = %e, "malformed request dropped"),
                        }
                        }
                        NetEvent::Gossip { from, data } => match decode(&data) {
                            Ok(ClusterMsg::Heartbeat { node_id: n, addr, total, available, pending, data, metrics }) => {
                                if n == node_id {
                                    continue;
                                }
                                if let (Some(plane), Some(a)) = (&plane, data.and_then(|d| d.parse().ok())) {
                                    plane.set_addr(from, a);
                                }
                                // Its listen address is learnt from its first heartbeat (a
                                // node that registered is in `peers` already, without one).
                                let first = members.get(&n).is_none_or(|m| m.status.ip.is_empty());
                                if first && let Ok(a) = addr.parse::<libp2p::Multiaddr>() {
                                    let _ = net.add_address(from, a).await;
                                }
                                let peer = *peers.entry(n.clone()).or_insert(from);
                                outgoing.set_peer(&n, peer);
                                let e = members.entry(n.clone()).or_insert_with(|| Member::new(n.clone(), total.clone(), available.clone()));
                                e.status.ip = ip_of(&addr);
                                e.status.total = total.clone();
                                e.status.available = available.clone();
                                e.status.pending = pending;
                                e.status.metrics = *metrics;
                                e.status.alive = true;
                                e.last_seen = Instant::now();
                                e.ticks_unheard = 0;
                                if let Some(id) = crate::NodeId::parse(&n) {
                                    outgoing.node_alive(id);
                                }
                                if let (Some(r), Some(id)) = (&raylet, crate::NodeId::parse(&n)) {
                                    r.do_send(RemoteNode {
                                        node_id: id,
                                        resources: Some((
                                            crate::ResourceSet::from_map(&total),
                                            crate::ResourceSet::from_map(&available),
                                        )),
                                    });
                                }
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(peer = %from, error = %e, "malformed gossip dropped"),
                        },
                        _ => {}
                    }
                }
            }
        }
        Ok::<(), ClusterError>(())
    });
    if let Some(w) = &web {
        w.stop();
    }
    runtime.block_on(net.shutdown());
    crate::shutdown();
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&socket_file);
    if opts.head {
        let _ = std::fs::remove_file(dir.head());
        // A head stopped on purpose takes its secret along: the next start makes a new one
        // (only a crashed head's restart keeps it).
        let _ = std::fs::remove_file(dir.secret());
        forget_current(&opts.temp_dir, port);
    }
    tracing::info!(node = %node_id, "node daemon stopped");
    result
}

/// Asks `node` (at `peer`) to give back its bundles of group `pg`, in the background.
fn return_bundles(
    net: &crate::net::NetHandle,
    peer: libp2p::PeerId,
    node: crate::NodeId,
    pg: crate::PlacementGroupId,
) {
    let net = net.clone();
    tokio::spawn(async move {
        if let Err(e) = net
            .request(peer, encode(&ClusterMsg::ReturnBundles { pg }))
            .await
        {
            tracing::warn!(pg = %pg, node = %node, error = %e, "could not give back bundles on a node");
        }
    });
}

/// Lets other nodes fetch the executable of a job whose work this node sends them.
fn offer_exe(
    exes: &parking_lot::Mutex<HashMap<String, PathBuf>>,
    launch: &crate::worker::process::JobLaunch,
) {
    if let Some((hash, _)) = &launch.command.hash {
        exes.lock().insert(hash.clone(), launch.command.exe.clone());
    }
}

/// How the raylet sends a task it placed on another node: from its own thread (the lane
/// written there), on the daemon's event loop `home` from a thread outside any runtime. A task
/// that cannot be handed over goes back to the raylet as failed (`RemoteDone`).
fn send_task(
    exes: std::sync::Arc<parking_lot::Mutex<HashMap<String, PathBuf>>>,
    outgoing: std::sync::Arc<actors::Outgoing>,
    net: net::NetHandle,
    raylet: actix::Addr<crate::actors::raylet::Raylet>,
    home: tokio::runtime::Handle,
) -> crate::actors::raylet::TaskSend {
    std::sync::Arc::new(move |req: crate::actors::raylet::SpillRequest| {
        offer_exe(&exes, &req.launch);
        let peer = outgoing.peer_of(req.node);
        let (net, raylet) = (net.clone(), raylet.clone());
        let run = async move {
            let task_id = req.spec.task_id;
            // The node answers at once; the value comes later (`TaskFinished`).
            let msg = ClusterMsg::ExecuteRemote {
                spec: Box::new(req.spec),
                launch: req.launch,
            };
            if let Err((e, node_lost)) = hand_over(&net, req.node, peer, msg).await {
                raylet.do_send(RemoteDone {
                    task_id,
                    result: Err(e),
                    node_lost,
                    kept: false,
                });
            }
        };
        crate::spawn_here(&home, run);
    })
}

/// Hands work to `node`, which answers `Accepted` at once (its outcome follows later). The
/// error says whether the node was lost (unreachable, or the connection failed).
async fn hand_over(
    net: &net::NetHandle,
    node: crate::NodeId,
    peer: Option<libp2p::PeerId>,
    msg: ClusterMsg,
) -> Result<(), (crate::Error, bool)> {
    let Some(peer) = peer else {
        return Err((
            crate::Error::runtime(format!("node {node} is not reachable")),
            true,
        ));
    };
    match lane::send(net, peer, &msg).await {
        Ok(None | Some(ClusterMsg::Accepted)) => Ok(()),
        Ok(Some(ClusterMsg::TaskResult(Err(e)))) => Err((e, false)),
        Ok(Some(other)) => Err((
            crate::Error::runtime(format!("unexpected reply {other:?}")),
            false,
        )),
        Err(e) => Err((e, true)),
    }
}

/// What this node's queued work waits for, as heartbeats report it.
async fn own_demand(
    raylet: &Option<actix::Addr<crate::actors::raylet::Raylet>>,
) -> Vec<crate::sched::Demand> {
    match raylet {
        Some(r) => r
            .send(crate::actors::raylet::GetDemand)
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// This node's own resources (total, available), as heartbeats report them.
async fn own_resources(
    raylet: &Option<actix::Addr<crate::actors::raylet::Raylet>>,
) -> (HashMap<String, f64>, HashMap<String, f64>) {
    let Some(r) = raylet else {
        return Default::default();
    };
    match r.send(crate::actors::raylet::GetResources).await {
        Ok(n) => (
            n.total.positive_part().to_f64_map(),
            n.available.positive_part().to_f64_map(),
        ),
        Err(_) => Default::default(),
    }
}

fn read_part(path: &Path, offset: u64, len: u64) -> std::io::Result<(u64, serde_bytes::ByteBuf)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let total = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(total)))?;
    let mut buf = vec![0u8; len.min(total.saturating_sub(offset)) as usize];
    f.read_exact(&mut buf)?;
    Ok((total, serde_bytes::ByteBuf::from(buf)))
}

/// Gets jobs' executables onto this node: the path the job gave when it exists here with the
/// same content, else a copy fetched by content hash from the node that sent the task, kept in
/// `<cluster dir>/exe/<hash>`.
struct Shipping {
    cache: PathBuf,
    fetch_always: bool,
    locks: parking_lot::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Shipping {
    async fn resolve(
        &self,
        net: &net::NetHandle,
        origin: libp2p::PeerId,
        mut launch: crate::worker::process::JobLaunch,
    ) -> Result<crate::worker::process::JobLaunch, crate::Error> {
        let Some((hash, size)) = launch.command.hash.clone() else {
            return Ok(launch); // not shippable: the path must exist here
        };
        if !self.fetch_always && same_file(&launch.command.exe, &hash) {
            return Ok(launch);
        }
        let target = self.cache.join(&hash);
        let lock = self.locks.lock().entry(hash.clone()).or_default().clone();
        let _one_fetch = lock.lock().await;
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == size) {
            launch.command.exe = target;
            return Ok(launch);
        }
        std::fs::create_dir_all(&self.cache).map_err(crate::Error::runtime)?;
        let part_path = self.cache.join(format!("{hash}.part"));
        let mut file = std::fs::File::create(&part_path).map_err(crate::Error::runtime)?;
        let mut offset = 0u64;
        while offset < size {
            let ask = ClusterMsg::FetchExe {
                hash: hash.clone(),
                offset,
                len: CHUNK,
            };
            let reply = net
                .request(origin, encode(&ask))
                .await
                .map_err(crate::Error::runtime)?;
            match decode(&reply).map_err(crate::Error::runtime)? {
                ClusterMsg::Chunk(Some((total, data))) if total == size && !data.is_empty() => {
                    use std::io::Write;
                    file.write_all(&data).map_err(crate::Error::runtime)?;
                    offset += data.len() as u64;
                }
                _ => {
                    let _ = std::fs::remove_file(&part_path);
                    return Err(crate::Error::runtime(format!(
                        "the submitting node cannot ship executable {hash}"
                    )));
                }
            }
        }
        drop(file);
        let (got, _) =
            crate::worker::process::file_hash(&part_path).map_err(crate::Error::runtime)?;
        if got != hash {
            let _ = std::fs::remove_file(&part_path);
            return Err(crate::Error::runtime(format!(
                "executable {hash} arrived corrupted (hash {got})"
            )));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&part_path, std::fs::Permissions::from_mode(0o755))
                .map_err(crate::Error::runtime)?;
        }
        std::fs::rename(&part_path, &target).map_err(crate::Error::runtime)?;
        tracing::info!(hash = %hash, bytes = size, "fetched a job's executable");
        launch.command.exe = target;
        Ok(launch)
    }
}

/// True when `path` exists here with content hash `hash` (hashes are cached by path, size and
/// modification time).
fn same_file(path: &Path, hash: &str) -> bool {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static SEEN: parking_lot::Mutex<Option<HashMap<Key, String>>> = parking_lot::Mutex::new(None);
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(h) = SEEN.lock().get_or_insert_with(HashMap::new).get(&key) {
        return h == hash;
    }
    match crate::worker::process::file_hash(path) {
        Ok((h, _)) => {
            let same = h == hash;
            SEEN.lock().get_or_insert_with(HashMap::new).insert(key, h);
            same
        }
        Err(_) => false,
    }
}

/// Size of the parts in which objects cross nodes.
const CHUNK: u64 = 2 << 20;

/// Parts of one object in flight at once while pulling it.
const PARTS_IN_FLIGHT: usize = 2;

/// Pulls object `id` of `size` bytes from `peer`, part by part (never one message), with a
/// few parts in flight at once.
async fn pull(
    net: &net::NetHandle,
    peer: libp2p::PeerId,
    id: crate::ObjectId,
    size: u64,
) -> Result<bytes::Bytes, crate::Error> {
    match fetch_direct(net, peer, id).await {
        Some(Ok(b)) if b.len() as u64 == size => Ok(b),
        Some(Ok(b)) => Err(crate::Error::ObjectLost {
            id: id.hex(),
            reason: format!("got {} of {size} bytes", b.len()),
        }),
        Some(Err(e)) => Err(e),
        None => pull_rest(net, peer, id, size, Vec::new()).await,
    }
}

/// Fetches object `id` from `peer` over the data plane; `None` when there is no data plane
/// to it or the transfer failed for a reason the control connection may not share (then
/// the caller pulls in parts over it).
async fn fetch_direct(
    net: &net::NetHandle,
    peer: libp2p::PeerId,
    id: crate::ObjectId,
) -> Option<Result<bytes::Bytes, crate::Error>> {
    let (plane, addr) = net.data_to(&peer)?;
    match plane.fetch(addr, id).await {
        Ok(Some(b)) => Some(Ok(b)),
        Ok(None) => Some(Err(crate::Error::ObjectLost {
            id: id.hex(),
            reason: format!("node {peer} no longer has it"),
        })),
        Err(e) => {
            tracing::warn!(object = %id, peer = %peer, error = %e, "data plane transfer failed; pulling over the control connection");
            None
        }
    }
}

/// Asks `peer` for the part of object `id` that starts at `offset`: the object's size and the
/// part. With `size`, the object must have that size.
async fn fetch_part(
    net: &net::NetHandle,
    peer: libp2p::PeerId,
    id: crate::ObjectId,
    offset: u64,
    size: Option<u64>,
) -> Result<(u64, Vec<u8>), crate::Error> {
    let ask = ClusterMsg::FetchChunk {
        id,
        offset,
        len: CHUNK,
    };
    let reply = net
        .request(peer, encode(&ask))
        .await
        .map_err(crate::Error::runtime)?;
    match decode(&reply).map_err(crate::Error::runtime)? {
        ClusterMsg::Chunk(Some((total, data)))
            if size.is_none_or(|s| s == total) && (!data.is_empty() || total == 0) =>
        {
            Ok((total, data.into_vec()))
        }
        ClusterMsg::Chunk(_) => Err(crate::Error::ObjectLost {
            id: id.hex(),
            reason: format!("node {peer} no longer has it"),
        }),
        other => Err(crate::Error::runtime(format!("unexpected reply {other:?}"))),
    }
}

/// Pulls the rest of object `id` of `size` bytes from `peer`, after the `first` bytes.
async fn pull_rest(
    net: &net::NetHandle,
    peer: libp2p::PeerId,
    id: crate::ObjectId,
    size: u64,
    first: Vec<u8>,
) -> Result<bytes::Bytes, crate::Error> {
    use futures::StreamExt;
    let start = first.len() as u64;
    let mut out = first;
    out.reserve(size.saturating_sub(start) as usize);
    let mut parts = futures::stream::iter((start..size).step_by(CHUNK as usize).map(|offset| {
        let net = net.clone();
        async move { fetch_part(&net, peer, id, offset, Some(size)).await }
    }))
    .buffered(PARTS_IN_FLIGHT);
    while let Some(part) = parts.next().await {
        out.extend_from_slice(&part?.1);
    }
    if out.len() as u64 != size {
        return Err(crate::Error::ObjectLost {
            id: id.hex(),
            reason: format!("got {} of {size} bytes", out.len()),
        });
    }
    Ok(bytes::Bytes::from(out))
}

/// Starts a task that another node sent on this node: pulls its large arguments from that
/// node and submits it (pinned here). Returns the arguments it holds here, which
/// `finish_here` lets go of.
async fn start_here(
    rt: &crate::Runtime,
    raylet: Option<actix::Addr<crate::actors::raylet::Raylet>>,
    net: &net::NetHandle,
    origin: libp2p::PeerId,
    mut spec: crate::spec::TaskSpec,
    table: &crate::store::ObjectTable,
) -> Result<Vec<crate::ObjectId>, crate::Error> {
    if raylet.is_none() {
        return Err(crate::Error::runtime("this node has no raylet"));
    }
    let local = pull_args(net, origin, table, spec.deps()).await?;
    // It was placed here: run it here (no second spill), unless it belongs in a bundle.
    pin_here(&mut spec.strategy, rt.node_id());
    if let Err(e) = rt.core().submit_task(spec) {
        release_all(table, &local);
        return Err(e);
    }
    Ok(local)
}

/// The answer to a task `start_here` started, once its value is sealed: the value inline, or
/// kept here to be pulled when large.
async fn finish_here(
    rt: &crate::Runtime,
    return_id: crate::ObjectId,
    local: Vec<crate::ObjectId>,
    held: &Held,
) -> ClusterMsg {
    let core = rt.core();
    let obj = core.get_object_async(return_id).await;
    if obj.is_err() {
        core.decref(return_id);
    }
    release_all(&held.table, &local);
    answer_of(return_id, obj, held)
}

/// Work another node placed here runs here (no second hop), unless it belongs in a bundle.
fn pin_here(strategy: &mut crate::SchedulingStrategy, node: crate::NodeId) {
    if !matches!(strategy, crate::SchedulingStrategy::PlacementGroup { .. }) {
        *strategy = crate::SchedulingStrategy::NodeAffinity { node, soft: false };
    }
}

/// Makes sure every object of `ids` (a task's references, top-level and nested) is in this node's store (pulling what is missing
/// from `origin`), holding one reference to each; returns them for `release_all`.
async fn pull_args(
    net: &net::NetHandle,
    origin: libp2p::PeerId,
    table: &crate::store::ObjectTable,
    ids: impl Iterator<Item = crate::ObjectId>,
) -> Result<Vec<crate::ObjectId>, crate::Error> {
    let mut held = Vec::new();
    for id in ids {
        let pulled = if table.is_ready(&id) {
            table.incref(id);
            Ok(())
        } else {
            pull_object(net, origin, table, id).await
        };
        if let Err(e) = pulled {
            release_all(table, &held);
            return Err(e);
        }
        held.push(id);
    }
    Ok(held)
}

/// Takes in the value of a task or call that `from` ran: pulls a large value, and the objects
/// the value refers to that this node lacks, then lets `from` free its copies, except (with
/// `keep`) its copy of a large value, which it keeps until this node releases it. Returns the
/// value, whether the node was lost, the pulled references to release once the value is
/// sealed, and whether `from` kept its copy.
async fn receive_result(
    net: &net::NetHandle,
    from: libp2p::PeerId,
    table: &crate::store::ObjectTable,
    return_id: crate::ObjectId,
    answer: ClusterMsg,
    keep: bool,
) -> (
    Result<crate::worker::protocol::WireValue, crate::Error>,
    bool,
    Vec<crate::ObjectId>,
    bool,
) {
    let (value, nested, large) = match answer {
        ClusterMsg::TaskResult(Ok(v)) if v.nested.is_empty() => {
            return (Ok(v), false, Vec::new(), false);
        }
        ClusterMsg::TaskResult(Ok(v)) => {
            let nested = v.nested.clone();
            (Ok(v.data), nested, false)
        }
        ClusterMsg::TaskResult(Err(e)) => return (Err(e), false, Vec::new(), false),
        ClusterMsg::TaskResultAt { size, nested } => {
            (pull(net, from, return_id, size).await, nested, true)
        }
        other => {
            let e = crate::Error::runtime(format!("unexpected answer {other:?}"));
            return (Err(e), false, Vec::new(), false);
        }
    };
    let refs = match &value {
        Ok(_) => pull_args(net, from, table, nested.iter().copied()).await,
        Err(_) => Ok(Vec::new()),
    };
    let kept = keep && large && value.is_ok() && refs.is_ok();
    if !kept {
        let _ = net
            .request(from, encode(&ClusterMsg::Release(return_id)))
            .await;
    }
    match (value, refs) {
        (Ok(data), Ok(refs)) => (
            Ok(crate::worker::protocol::WireValue { data, nested }),
            false,
            refs,
            kept,
        ),
        (Err(e), _) | (_, Err(e)) => (Err(e), true, Vec::new(), false),
    }
}

/// Pulls object `id` from `origin` into this node's store (sealing it when it is pending
/// here, else storing it with one reference, which the caller releases).
async fn pull_object(
    net: &net::NetHandle,
    origin: libp2p::PeerId,
    table: &crate::store::ObjectTable,
    id: crate::ObjectId,
) -> Result<(), crate::Error> {
    let data = match fetch_direct(net, origin, id).await {
        Some(got) => got?,
        None => {
            // The first part also tells the size.
            let (size, first) = fetch_part(net, origin, id, 0, None).await.map_err(|_| {
                crate::Error::ObjectLost {
                    id: id.hex(),
                    reason: "the submitting node no longer has it".to_string(),
                }
            })?;
            pull_rest(net, origin, id, size, first).await?
        }
    };
    if matches!(table.peek(&id), crate::store::Peek::Pending) {
        table.seal(id, data, Vec::new(), false);
        return Ok(());
    }
    table.put(id, data, Vec::new(), false).map_err(Into::into)
}

fn release_all(table: &crate::store::ObjectTable, ids: &[crate::ObjectId]) {
    for id in ids {
        table.decref(*id);
    }
}

/// The answer to the node that sent a task or call whose value (`return_id`, holding the
/// submission's reference) is `obj`.
fn answer_of(
    return_id: crate::ObjectId,
    obj: Result<crate::store::Object, crate::Error>,
    held: &Held,
) -> ClusterMsg {
    let table = &held.table;
    match obj {
        Err(e) => ClusterMsg::TaskResult(Err(e)),
        Ok(o) if o.is_error => {
            table.decref(return_id);
            ClusterMsg::TaskResult(crate::codec::decode::<crate::Error>(&o.data).and_then(Err))
        }
        Ok(o) if o.data.len() as u64 > CHUNK => {
            // Keep it (the submission's count) until the asker pulled it and says so.
            held.keep(return_id);
            ClusterMsg::TaskResultAt {
                size: o.data.len() as u64,
                nested: table.nested_of(&return_id),
            }
        }
        Ok(o) => {
            let nested = table.nested_of(&return_id);
            if nested.is_empty() {
                table.decref(return_id);
            } else {
                // It keeps the objects it refers to until the asker pulled them.
                held.keep(return_id);
            }
            ClusterMsg::TaskResult(Ok(crate::worker::protocol::WireValue {
                data: o.data,
                nested,
            }))
        }
    }
}

/// The IPv4 address of a libp2p address (`/ip4/A/tcp/P/...`), or "".
fn ip_of(addr: &str) -> String {
    addr.strip_prefix("/ip4/")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string()
}

fn status_report(
    rt: &crate::Runtime,
    (head_id, head_ip): (&str, &str),
    members: &HashMap<String, Member>,
    own_pending: Vec<crate::sched::Demand>,
    own_metrics: crate::actors::metrics::NodeMetrics,
) -> StatusReport {
    let own = rt.node_resources().ok();
    let mut nodes = vec![NodeStatus {
        node_id: head_id.to_string(),
        is_head: true,
        alive: true,
        ip: head_ip.to_string(),
        total: own.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
        available: own.map(|n| n.1).unwrap_or_default(),
        pending: own_pending,
        metrics: own_metrics,
    }];
    // Liveness is decided by the heartbeat ticks (`status.alive`).
    nodes.extend(members.values().map(|m| m.status.clone()));
    let mut pending: Vec<crate::sched::Demand> = Vec::new();
    for d in nodes.iter().filter(|n| n.alive).flat_map(|n| &n.pending) {
        crate::sched::Demand::add_to(&mut pending, &d.shape, d.count, d.infeasible);
    }
    StatusReport { nodes, pending }
}

fn port_of(address: &str) -> Res<u16> {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| ClusterError::Usage(format!("expected HOST:PORT, got {address}")))
}

/// The IPv4 address this node tells others to reach it at: `--node-ip-address`, else the
/// `--bind` address, else (binding 0.0.0.0) the local address of the route to the head (a
/// worker node) or to the outside (the head), else loopback. Finding a route sends nothing.
fn advertised_ip(opts: &StartOptions) -> Res<std::net::Ipv4Addr> {
    let parse = |s: &str, flag: &str| {
        s.parse::<std::net::Ipv4Addr>()
            .map_err(|e| ClusterError::Usage(format!("{flag} {s}: {e} (an IPv4 address)")))
    };
    if let Some(ip) = &opts.node_ip {
        return parse(ip, "--node-ip-address");
    }
    let bind = parse(&opts.bind, "--bind")?;
    if !bind.is_unspecified() {
        return Ok(bind);
    }
    let target = match (&opts.address, opts.head) {
        (Some(a), false) => a.clone(),
        _ => "10.255.255.255:9".to_string(),
    };
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(target.as_str())?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        });
    Ok(routed.unwrap_or(std::net::Ipv4Addr::LOCALHOST))
}

/// `addr` with its IPv4 address replaced by `ip` (a listener bound to 0.0.0.0 reports that).
fn with_ip(addr: &libp2p::Multiaddr, ip: std::net::Ipv4Addr) -> libp2p::Multiaddr {
    addr.iter()
        .map(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(_) => libp2p::multiaddr::Protocol::Ip4(ip),
            other => other,
        })
        .collect()
}

fn multiaddr_of(address: &str) -> Res<libp2p::Multiaddr> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| ClusterError::Usage(format!("expected HOST:PORT, got {address}")))?;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let proto = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        "ip4"
    } else {
        "dns"
    };
    format!("/{proto}/{host}/tcp/{port}")
        .parse()
        .map_err(|e| ClusterError::Usage(format!("bad address {address}: {e}")))
}

/// Starts a node daemon in the background (the same executable with `--block`) and waits
/// until it is up. Returns the head record.
pub fn spawn_daemon(opts: &StartOptions, args: Vec<std::ffi::OsString>) -> Res<HeadRecord> {
    use std::os::unix::process::CommandExt;
    let port = cluster_port(opts)?;
    let dir = ClusterDir::new(&opts.temp_dir, port);
    let logs = dir.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(file_err(&logs))?;
    if opts.head && dir.read_head().is_ok_and(|h| alive(h.pid)) {
        return Err(ClusterError::Usage(format!(
            "a head is already running on port {port} (stop it with `mobula stop --port {port}` or pick another --port)"
        )));
    }
    let (log_path, log) = if opts.head {
        let p = dir.log("head");
        let f = std::fs::File::create(&p).map_err(file_err(&p))?;
        (p, f)
    } else {
        // Several nodes of one cluster can run on one machine: each gets a log of its own.
        let mut i = 1;
        loop {
            let p = dir.log(&if i == 1 {
                "node".to_string()
            } else {
                format!("node-{i}")
            });
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 10_000 => i += 1,
                Err(e) => return Err(file_err(&p)(e)),
            }
        }
    };
    let log2 = log.try_clone().map_err(file_err(&log_path))?;
    let exe = std::env::current_exe().map_err(file_err(Path::new("current executable")))?;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .arg("--block")
        .stdin(std::process::Stdio::null())
        .env(ENV_NODE_LOG, log_path.file_name().unwrap_or_default())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(file_err(Path::new("node daemon")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(ClusterError::Usage(format!(
                "the node daemon exited ({st}):\n{}",
                tail.lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            )));
        }
        let up = if opts.head {
            dir.read_head().is_ok_and(|h| h.pid == child.id())
        } else {
            pid_files(&dir).iter().any(|(_, pid)| *pid == child.id())
        };
        if up {
            return dir.read_head().or_else(|_| {
                Ok(HeadRecord {
                    address: opts.address.clone().unwrap_or_default(),
                    multiaddr: String::new(),
                    node_id: String::new(),
                    pid: child.id(),
                    dashboard: None,
                })
            });
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the child we just started.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            return Err(ClusterError::Usage(format!(
                "the node daemon did not come up in 60 s; see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_files(dir: &ClusterDir) -> Vec<(PathBuf, u32)> {
    let Ok(rd) = std::fs::read_dir(dir.dir.join("nodes")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| {
            let p = e.path();
            let pid = std::fs::read_to_string(&p).ok()?.trim().parse().ok()?;
            Some((p, pid))
        })
        .collect()
}

/// The file naming the cluster `mobula start --head` last started under a root.
const CURRENT: &str = "mobula_current_cluster";

fn forget_current(root: &Path, port: u16) {
    let path = root.join(CURRENT);
    if current_cluster(root).and_then(|a| port_of(&a).ok()) == Some(port) {
        let _ = std::fs::remove_file(path);
    }
}

/// The address of the cluster last started under `root`, if its file is there.
pub fn current_cluster(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join(CURRENT))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The sockets of this machine's live nodes of the cluster at `address`, head first; with
/// `MOBULA_DRIVER_NODE` set, only the node whose id starts with it (several nodes of one
/// cluster on one machine: a driver picks which it joins).
fn local_sockets(root: &Path, address: &str) -> Vec<PathBuf> {
    let only = std::env::var("MOBULA_DRIVER_NODE")
        .ok()
        .filter(|v| !v.is_empty());
    let Ok(port) = port_of(address) else {
        return Vec::new();
    };
    let dir = ClusterDir::new(root, port);
    let head = dir.read_head().ok().map(|h| h.node_id);
    let mut found: Vec<(bool, PathBuf)> = pid_files(&dir)
        .into_iter()
        .filter(|(_, pid)| alive(*pid))
        .filter_map(|(p, _)| {
            let node = p.file_stem()?.to_string_lossy().to_string();
            if only.as_ref().is_some_and(|o| !node.starts_with(o.as_str())) {
                return None;
            }
            let sock = std::fs::read_to_string(dir.socket_file(&node)).ok()?;
            Some((
                head.as_deref() != Some(node.as_str()),
                PathBuf::from(sock.trim()),
            ))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, s)| s).collect()
}

/// True when a node of the cluster at `address` runs on this machine.
pub fn has_local_node(root: &Path, address: &str) -> bool {
    !local_sockets(root, address).is_empty()
}

/// The socket a driver on this machine connects to for the cluster at `address`.
pub fn driver_socket(root: &Path, address: &str) -> Res<PathBuf> {
    local_sockets(root, address).into_iter().next().ok_or_else(|| {
        ClusterError::Usage(format!(
            "no node of the cluster at {address} runs on this machine (under {}): start one with `mobula start --address {address}`",
            root.display()
        ))
    })
}

/// The cluster directories under `temp_dir`.
pub fn clusters(temp_dir: &Path) -> Vec<(u16, ClusterDir)> {
    let Ok(rd) = std::fs::read_dir(temp_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, ClusterDir)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let port = name.strip_prefix("cluster-")?.parse().ok()?;
            Some((port, ClusterDir { dir: e.path() }))
        })
        .collect();
    out.sort_by_key(|(p, _)| *p);
    out
}

/// Picks the cluster a command is about: the given port, or the only one there is.
pub fn pick_cluster(temp_dir: &Path, port: Option<u16>) -> Res<ClusterDir> {
    if let Some(p) = port {
        return Ok(ClusterDir::new(temp_dir, p));
    }
    let all = clusters(temp_dir);
    match all.len() {
        0 => Err(ClusterError::Usage(format!(
            "no cluster under {} (start one with `mobula start --head`)",
            temp_dir.display()
        ))),
        1 => Ok(all.into_iter().next().map(|(_, d)| d).expect("one cluster")),
        _ => Err(ClusterError::Usage(format!(
            "several clusters under {}: pick one with --port ({})",
            temp_dir.display(),
            all.iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Stops the node daemons of one cluster on this machine: SIGTERM, then SIGKILL after
/// `grace`. Returns how many were stopped.
pub fn stop(dir: &ClusterDir, grace: Duration) -> usize {
    let pids = pid_files(dir);
    let mut n = 0;
    for (_, pid) in &pids {
        if alive(*pid) {
            // SAFETY: kill(2) on a pid recorded by one of this cluster's daemons.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGTERM);
            }
            n += 1;
        }
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|(_, p)| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (path, pid) in &pids {
        if alive(*pid) {
            // SAFETY: as above; the daemon ignored SIGTERM.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path.with_extension("socket"));
    }
    let _ = std::fs::remove_file(dir.head());
    if let (Some(root), Some(port)) = (
        dir.dir.parent(),
        dir.dir
            .file_name()
            .and_then(|n| n.to_str()?.strip_prefix("cluster-")?.parse().ok()),
    ) {
        forget_current(root, port);
    }
    n
}

/// Asks the head for the cluster's status.
pub fn status(dir: &ClusterDir, secret: Option<&str>) -> Res<StatusReport> {
    let head = dir.read_head().map_err(|_| {
        ClusterError::Usage(format!(
            "no head is running here ({} is missing)",
            dir.head().display()
        ))
    })?;
    let secret = match secret {
        Some(s) => parse_secret(s)?,
        None => dir.read_secret()?,
    };
    let addr: libp2p::Multiaddr = head
        .multiaddr
        .parse()
        .map_err(|e| ClusterError::Malformed(format!("head address: {e}")))?;
    let peer = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| ClusterError::Malformed("head address has no peer id".to_string()))?;
    let (net, _events, _) = net::start(NetConfig {
        keypair: None,
        listen: None,
        secret,
        dial: vec![addr],
        request_timeout: Duration::from_secs(10),
        mdns: false,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Usage(e.to_string()))?;
    let reply = rt.block_on(async {
        let r = net.request(peer, encode(&ClusterMsg::Status)).await;
        net.shutdown().await;
        r
    })?;
    match decode(&reply)? {
        ClusterMsg::StatusReport(r) => Ok(r),
        other => Err(ClusterError::Malformed(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.2}{}", UNITS[i])
    }
}

/// The time now in UTC, `YYYY-MM-DD HH:MM:SS` (headers of the CLI's reports).
pub fn utc_now() -> String {
    let secs = now_ms() / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats a status report like `ray status`.
pub fn format_status(r: &StatusReport) -> String {
    let rule = "-".repeat(63);
    let mut out = format!(
        "======== Cluster status: {} ========\nNode status\n{rule}\n",
        utc_now()
    );
    out.push_str("Active:\n");
    let alive: Vec<&NodeStatus> = r.nodes.iter().filter(|n| n.alive).collect();
    let dead: Vec<&NodeStatus> = r.nodes.iter().filter(|n| !n.alive).collect();
    for n in &alive {
        out.push_str(&format!(
            " 1 node_{}{}\n",
            n.node_id,
            if n.is_head { " (head)" } else { "" }
        ));
    }
    out.push_str("Dead:\n");
    if dead.is_empty() {
        out.push_str(" (no dead nodes)\n");
    }
    for n in &dead {
        out.push_str(&format!(" 1 node_{}\n", n.node_id));
    }
    out.push_str(&format!("\nResources\n{rule}\nTotal Usage:\n"));
    let mut total: HashMap<String, f64> = HashMap::new();
    let mut used: HashMap<String, f64> = HashMap::new();
    for n in &alive {
        for (k, v) in &n.total {
            *total.entry(k.clone()).or_default() += v;
            let free = n.available.get(k).copied().unwrap_or(0.0);
            *used.entry(k.clone()).or_default() += v - free;
        }
    }
    let mut names: Vec<&String> = total
        .keys()
        .filter(|k| !k.contains("_group_") && !k.starts_with("node:"))
        .collect();
    names.sort();
    for k in names {
        let (u, t) = (used.get(k).copied().unwrap_or(0.0), total[k]);
        if k == "memory" || k == "object_store_memory" {
            out.push_str(&format!(" {}/{} {k}\n", human_bytes(u), human_bytes(t)));
        } else {
            out.push_str(&format!(" {u:.1}/{t:.1} {k}\n"));
        }
    }
    out.push_str("\nPending Demands:\n");
    if r.pending.is_empty() {
        out.push_str(" (no resource demands)\n");
    }
    for d in &r.pending {
        let mut parts: Vec<String> = d
            .shape
            .iter()
            .map(|(k, v)| format!("'{k}': {v:?}"))
            .collect();
        parts.sort();
        out.push_str(&format!(
            " {{{}}}: {}+ pending tasks/actors{}\n",
            parts.join(", "),
            d.count,
            if d.infeasible {
                " (infeasible: no node can hold it)"
            } else {
                ""
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bind: &str, node_ip: Option<&str>, address: Option<&str>) -> StartOptions {
        StartOptions {
            head: address.is_none(),
            address: address.map(str::to_string),
            port: 6379,
            bind: bind.to_string(),
            node_ip: node_ip.map(str::to_string),
            num_cpus: None,
            num_gpus: 0.0,
            memory: None,
            object_store_memory: None,
            resources: HashMap::new(),
            temp_dir: std::env::temp_dir(),
            secret: None,
            death_timeout: Duration::from_secs(3),
            infeasible_timeout: Duration::from_secs(60),
            fetch_executables: false,
            mdns: false,
            dashboard: None,
            storage: None,
            memory_monitor: Default::default(),
        }
    }

    #[test]
    fn the_advertised_address_is_never_the_wildcard() {
        let given = opts("0.0.0.0", Some("192.0.2.7"), None);
        assert_eq!(
            advertised_ip(&given).ok(),
            Some("192.0.2.7".parse().expect("ip"))
        );
        let bound = opts("127.0.0.1", None, None);
        assert_eq!(
            advertised_ip(&bound).ok(),
            Some(std::net::Ipv4Addr::LOCALHOST)
        );
        // Routed towards the head: here the head is on loopback.
        let joining = opts("0.0.0.0", None, Some("127.0.0.1:6379"));
        assert_eq!(
            advertised_ip(&joining).ok(),
            Some(std::net::Ipv4Addr::LOCALHOST)
        );
        let head = advertised_ip(&opts("0.0.0.0", None, None)).expect("head");
        assert!(!head.is_unspecified());
        assert!(advertised_ip(&opts("0.0.0.0", Some("not-an-ip"), None)).is_err());
        let a: libp2p::Multiaddr = "/ip4/0.0.0.0/tcp/4000".parse().expect("addr");
        assert_eq!(
            with_ip(&a, "10.1.2.3".parse().expect("ip")).to_string(),
            "/ip4/10.1.2.3/tcp/4000"
        );
    }

    #[test]
    fn the_cluster_port_comes_from_the_address_or_from_port_with_mdns() {
        let mut o = opts("0.0.0.0", None, None);
        o.port = 7000;
        assert_eq!(cluster_port(&o).ok(), Some(7000));
        let mut o = opts("0.0.0.0", None, Some("10.0.0.1:7001"));
        o.port = 7000;
        assert_eq!(cluster_port(&o).ok(), Some(7001));
        o.mdns = true;
        assert_eq!(cluster_port(&o).ok(), Some(7001));
        o.address = None;
        assert_eq!(cluster_port(&o).ok(), Some(7000));
        o.mdns = false;
        let e = cluster_port(&o).expect_err("neither --head, --address nor --mdns");
        assert!(e.to_string().contains("--mdns"), "{e}");
    }

    #[test]
    fn the_head_search_asks_peers_on_the_head_port_until_one_refuses() {
        let t0 = Instant::now();
        let mut s = HeadSearch::new(6379);
        let (head, node, other) = (
            libp2p::PeerId::random(),
            libp2p::PeerId::random(),
            libp2p::PeerId::random(),
        );
        let at = |a: &str| a.parse::<libp2p::Multiaddr>().expect("addr");
        // A worker node's random port is not a candidate.
        assert!(!s.discovered(other, at("/ip4/192.0.2.9/tcp/40123"), t0));
        assert!(s.discovered(head, at("/ip4/192.0.2.7/tcp/6379"), t0));
        assert!(s.discovered(node, at("/ip4/192.0.2.8/tcp/6379"), t0));
        // The same peer at a second address stays one candidate.
        assert!(!s.discovered(head, at("/ip4/10.0.0.7/tcp/6379"), t0));
        let mut due = s.due(t0);
        due.sort();
        let mut want = vec![
            (head, at("/ip4/192.0.2.7/tcp/6379")),
            (node, at("/ip4/192.0.2.8/tcp/6379")),
        ];
        want.sort();
        assert_eq!(due, want);
        // One request at a time per peer.
        assert!(s.due(t0 + Duration::from_secs(100)).is_empty());
        // Unreachable: asked again after SEARCH_RETRY, then twice as long.
        s.failed(&head, t0);
        assert!(s.due(t0 + SEARCH_RETRY / 2).is_empty());
        assert_eq!(s.due(t0 + SEARCH_RETRY).len(), 1);
        s.failed(&head, t0);
        assert!(s.due(t0 + SEARCH_RETRY).is_empty());
        assert_eq!(s.due(t0 + SEARCH_RETRY * 2).len(), 1);
        for _ in 0..20 {
            s.failed(&head, t0);
            s.due(t0 + SEARCH_RETRY_MAX * 2);
        }
        s.failed(&head, t0);
        assert_eq!(s.due(t0 + SEARCH_RETRY_MAX).len(), 1, "the wait is capped");
        // NotHead: never asked again, even when heard of again.
        s.refused(node);
        assert!(!s.discovered(node, at("/ip4/192.0.2.8/tcp/6379"), t0));
        assert!(s.due(t0 + SEARCH_RETRY_MAX * 10).is_empty());
        assert_eq!(s.candidates.len(), 1);
    }

    #[test]
    fn secrets_and_head_records_round_trip() {
        let s = net::new_secret();
        assert_eq!(parse_secret(&hex(&s)).expect("parse"), s);
        assert!(parse_secret("nothex").is_err());
        let h = HeadRecord {
            address: "127.0.0.1:6379".into(),
            multiaddr: "/ip4/127.0.0.1/tcp/6379/p2p/12D3Koo".into(),
            node_id: "abc".into(),
            pid: 42,
            dashboard: Some("http://127.0.0.1:8265".into()),
        };
        let text = serde_json::to_string(&h).expect("encode");
        assert_eq!(serde_json::from_str::<HeadRecord>(&text).expect("parse"), h);
        // Records written before the dashboard existed still parse.
        let old = r#"{"address":"a:1","multiaddr":"m","node_id":"n","pid":7}"#;
        assert_eq!(
            serde_json::from_str::<HeadRecord>(old)
                .expect("parse")
                .dashboard,
            None
        );
    }

    #[test]
    fn status_is_laid_out_like_ray_status() {
        let mut total = HashMap::new();
        total.insert("CPU".to_string(), 2.0);
        total.insert("memory".to_string(), 2.0 * 1024.0 * 1024.0 * 1024.0);
        let mut available = total.clone();
        available.insert("CPU".to_string(), 1.5);
        let r = StatusReport {
            nodes: vec![
                NodeStatus {
                    node_id: "aa".into(),
                    is_head: true,
                    alive: true,
                    ip: String::new(),
                    total: total.clone(),
                    available,
                    pending: Vec::new(),
                    metrics: Default::default(),
                },
                NodeStatus {
                    node_id: "bb".into(),
                    is_head: false,
                    alive: false,
                    ip: String::new(),
                    total,
                    available: HashMap::new(),
                    pending: Vec::new(),
                    metrics: Default::default(),
                },
            ],
            pending: Vec::new(),
        };
        let s = format_status(&r);
        assert!(s.contains("Active:\n 1 node_aa (head)\n"), "{s}");
        assert!(s.contains("Dead:\n 1 node_bb\n"), "{s}");
        assert!(s.contains(" 0.5/2.0 CPU\n"), "{s}");
        assert!(s.contains(" 0B/2.00GiB memory\n"), "{s}");
        assert!(s.contains(" (no resource demands)"), "{s}");
        assert!(utc_now().starts_with("20"));

        let mut gpu = HashMap::new();
        gpu.insert("GPU".to_string(), 4.0);
        gpu.insert("CPU".to_string(), 1.0);
        let r = StatusReport {
            nodes: Vec::new(),
            pending: vec![crate::sched::Demand {
                shape: gpu,
                count: 3,
                infeasible: true,
            }],
        };
        let s = format_status(&r);
        assert!(
            s.contains(" {'CPU': 1.0, 'GPU': 4.0}: 3+ pending tasks/actors (infeasible"),
            "{s}"
        );
    }
}
