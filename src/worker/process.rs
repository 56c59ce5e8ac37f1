//! Worker processes, both ends.
//!
//! Raylet side: [`ProcessPool`] listens on the node's Unix socket, starts worker processes (the
//! user's own executable, re-executed with `MOBULA_WORKER_*` variables), matches each
//! connection to the worker it started, and reaps exits. [`ProcessWorker`] is the raylet's
//! handle to one of them.
//!
//! Worker side: [`enter_if_worker`] runs first thing in `mobula::init()` (or
//! `#[mobula::main]`). In a worker process it never returns: it connects to the raylet, installs
//! a [`WorkerCore`] as the process's runtime (so user code can submit tasks, create actors and
//! `get` results), and executes what the raylet sends until the socket closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::BufWriter;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::actors::directory::ActorRoute;
use crate::actors::raylet::{Raylet, RayletMsg};
use crate::actors::worker_conn::WorkerConn;
use crate::codec::Encoded;
use crate::core::{ActorLookup, Core};
use crate::error::{Error, Result};
use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, WorkerId};
use crate::registry::{ActorInstance, UserError};
use crate::sched::{PlacementStrategy, ResourceSet};
use crate::spec::{ActorCall, ActorSpec, TaskSpec};
use crate::store::{Object, ObjectTable};
use crate::worker::protocol::{
    self, FromWorker, Reply, Request, ToWorker, WireValue, WorkerEnv, read_frame, write_frame,
};
use crate::worker::{
    CallStart, call_blocking, construct_actor, event_loop, invoke_function, start_call, user_error,
};

const ENV_SOCKET: &str = "MOBULA_WORKER_SOCKET";
const ENV_WORKER_ID: &str = "MOBULA_WORKER_ID";
const ENV_JOB_ID: &str = "MOBULA_JOB_ID";
const ENV_NODE_ID: &str = "MOBULA_NODE_ID";
const ENV_NAMESPACE: &str = "MOBULA_WORKER_NAMESPACE";

// ---- raylet side ------------------------------------------------------------------------------

/// How to start a worker process: the executable and its arguments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    /// Discard the worker's stdout (a re-executed test harness prints its own headers there).
    pub quiet: bool,
    /// Content hash of the executable (xxh3-64, hex) and its size, when it may have to be
    /// shipped to other machines.
    pub hash: Option<(String, u64)>,
}

/// Whether process `pid` exists (of any user: only its existence is checked).
pub(crate) fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// The content hash (xxh3-64, hex) and size of a file.
pub(crate) fn file_hash(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:016x}", h.digest()), size))
}

impl WorkerCommand {
    /// The current executable, with arguments that bring it to `init()` again. Under the
    /// libtest harness (an executable in `target/*/deps`, called from a test thread) that is
    /// the current test alone; otherwise the process's own arguments.
    pub fn current() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let in_deps = exe
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "deps");
        let thread = std::thread::current();
        let test_name = thread.name().filter(|n| *n != "main");
        let quiet = in_deps && test_name.is_some();
        let args = match (in_deps, test_name) {
            (true, Some(name)) => vec![
                name.into(),
                "--exact".into(),
                "--test-threads=1".into(),
                "--nocapture".into(),
                "-q".into(),
            ],
            _ => std::env::args_os().skip(1).collect(),
        };
        Ok(Self {
            exe,
            args,
            quiet,
            hash: None,
        })
    }
}

/// What a worker process needs to become an actor's host: the spec, the constructor's
/// arguments and the actor's route.
pub(crate) type ActorLaunch = (ActorSpec, Vec<Bytes>, Arc<ActorRoute>);

/// Shared state of one worker process, between the raylet, its connection and its reaper.
#[derive(Default)]
pub(crate) struct ProcShared {
    pid: AtomicU32,
    /// The process has exited (its pid may belong to someone else now).
    exited: std::sync::atomic::AtomicBool,
    /// The process connected at least once.
    connected: std::sync::atomic::AtomicBool,
    conn: Mutex<Option<Arc<crate::worker::outbox::Outbox>>>,
    actor: Mutex<Option<ActorLaunch>>,
}

impl ProcShared {
    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// The process id, while the process runs (0 once it exited).
    pub fn pid(&self) -> u32 {
        if self.exited.load(Ordering::Acquire) {
            0
        } else {
            self.pid.load(Ordering::Acquire)
        }
    }

    /// The connection closed.
    pub fn detach(&self) {
        *self.conn.lock() = None;
    }

    pub fn take_actor(&self) -> Option<ActorLaunch> {
        self.actor.lock().take()
    }
}

/// The raylet's handle to a worker process.
pub(crate) struct ProcessWorker {
    id: WorkerId,
    shared: Arc<ProcShared>,
}

impl ProcessWorker {
    /// The process id, while the process runs (0 before it started and once it exited).
    pub fn pid(&self) -> u32 {
        self.shared.pid()
    }

    /// Sends a task with its resolved arguments.
    pub fn execute(
        &self,
        spec: &TaskSpec,
        args: Vec<Bytes>,
        gpu_ids: Vec<usize>,
    ) -> std::result::Result<(), ()> {
        let pid = self.shared.pid();
        let frame = crate::worker::shm::to_reader(pid, || {
            protocol::encode_frame(&ToWorker::Execute {
                spec: spec.clone(),
                args,
                gpu_ids,
            })
        })
        .map_err(|e| tracing::error!(worker = %self.id, error = %e, "cannot encode a task"))?;
        let conn = self.shared.conn.lock().clone();
        match conn {
            // Written from here when the socket takes it. Never block the raylet: a worker
            // 4096 frames behind is treated as gone.
            Some(out) => out.try_send(Bytes::from(frame)).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&self) {
        let pid = self.shared.pid();
        if pid > 0 {
            // SAFETY: kill(2) with a pid we started; no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// How to start the workers of one job, and its namespace.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobLaunch {
    pub command: WorkerCommand,
    pub namespace: String,
}

/// The jobs a pool can start workers for.
pub(crate) type Jobs = Arc<Mutex<HashMap<JobId, JobLaunch>>>;

/// Context a pool needs to wire up connections.
#[derive(Clone)]
pub(crate) struct PoolCtx {
    pub jobs: Jobs,
    pub socket: PathBuf,
    pub node_id: NodeId,
    pub raylet_tx: flume::Sender<RayletMsg>,
    pub table: Arc<ObjectTable>,
    pub raylet: Addr<Raylet>,
    pub client: Arc<crate::node::NodeClient>,
}

/// The raylet's worker processes.
pub(crate) struct ProcessPool {
    socket: PathBuf,
    jobs: Jobs,
    env: Vec<(&'static str, String)>,
    procs: Arc<Mutex<HashMap<WorkerId, Arc<ProcShared>>>>,
    raylet_tx: flume::Sender<RayletMsg>,
    start_timeout: Duration,
    arbiter: Arbiter,
}

impl ProcessPool {
    /// Binds the socket in `dir` and starts accepting workers (on the current arbiter).
    pub fn new(ctx: PoolCtx, start_timeout: Duration) -> std::io::Result<Self> {
        let raylet_tx = ctx.raylet_tx.clone();
        let socket = ctx.socket.clone();
        let jobs = ctx.jobs.clone();
        let node_id = ctx.node_id;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&socket);
        let std_listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std_listener.set_nonblocking(true)?;
        let procs: Arc<Mutex<HashMap<WorkerId, Arc<ProcShared>>>> = Arc::default();
        let p2 = procs.clone();
        // Worker connections get their own arbiter: their handlers may block briefly on the
        // raylet's channel, which must never happen on the raylet's own thread.
        let arb = Arbiter::new();
        arb.spawn(async move {
            let listener = match tokio::net::UnixListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen on the worker socket");
                    return;
                }
            };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => WorkerConn::accept(stream, p2.clone(), ctx.clone()),
                    Err(e) => {
                        tracing::error!(error = %e, "worker socket accept failed");
                        break;
                    }
                }
            }
        });
        let env = vec![
            (ENV_SOCKET, socket.to_string_lossy().to_string()),
            (ENV_NODE_ID, node_id.hex()),
        ];
        Ok(Self {
            socket,
            jobs,
            env,
            procs,
            raylet_tx,
            start_timeout,
            arbiter: arb,
        })
    }

    /// The pool's worker processes (the memory monitor sums their resident memory).
    pub fn procs(&self) -> &crate::actors::memory_monitor::Procs {
        &self.procs
    }

    /// How workers of `job` start, if this pool knows.
    pub fn launch_of(&self, job: JobId) -> Option<JobLaunch> {
        self.jobs.lock().get(&job).cloned()
    }

    /// Learns how workers of `job` start.
    pub fn register(&self, job: JobId, launch: JobLaunch) {
        self.jobs.lock().entry(job).or_insert(launch);
    }

    /// Starts a worker process; with `actor`, the process becomes that actor's host.
    pub fn spawn(
        &self,
        wid: WorkerId,
        job: JobId,
        actor: Option<ActorLaunch>,
    ) -> std::io::Result<ProcessWorker> {
        let Some(launch) = self.jobs.lock().get(&job).cloned() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("job {job} has registered no executable with this node"),
            ));
        };
        let mut cmd = std::process::Command::new(&launch.command.exe);
        cmd.args(&launch.command.args)
            .env(ENV_WORKER_ID, wid.hex())
            .env(ENV_JOB_ID, job.hex())
            .env(ENV_NAMESPACE, &launch.namespace)
            .stdin(std::process::Stdio::null());
        if launch.command.quiet {
            cmd.stdout(std::process::Stdio::null());
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let shared = Arc::new(ProcShared::default());
        *shared.actor.lock() = actor;
        // Registered before the process starts: its hello may arrive before spawn returns.
        self.procs.lock().insert(wid, shared.clone());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.procs.lock().remove(&wid);
                return Err(e);
            }
        };
        shared.pid.store(child.id(), Ordering::Release);
        // The kernel's OOM killer takes workers before the node (Ray's
        // `worker_oom_score_adjustment`).
        crate::actors::memory_monitor::raise_oom_score(child.id());
        let tx = self.raylet_tx.clone();
        let procs = self.procs.clone();
        let shared_r = shared.clone();
        std::thread::Builder::new()
            .name("mobula-reaper".to_string())
            .spawn(move || {
                let detail = match child.wait() {
                    Ok(st) => describe_exit(st),
                    Err(e) => format!("wait failed: {e}"),
                };
                shared_r.exited.store(true, Ordering::Release);
                procs.lock().remove(&wid);
                tracing::debug!(worker = %wid, detail = %detail, "worker process exited");
                let _ = tx.send(RayletMsg::WorkerExited {
                    worker: wid,
                    detail,
                });
            })?;
        // A worker that never connects is killed (its reaper then reports it).
        let s2 = shared.clone();
        let timeout = self.start_timeout;
        self.arbiter.spawn(async move {
            tokio::time::sleep(timeout).await;
            if s2.conn.lock().is_none() && s2.pid() > 0 && !s2.connected.load(Ordering::Acquire) {
                tracing::error!(worker = %wid, "worker process did not connect in time");
                let pid = s2.pid();
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        });
        Ok(ProcessWorker { id: wid, shared })
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.arbiter.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Attaches a connection to the worker it belongs to.
pub(crate) fn attach(shared: &ProcShared, out: Arc<crate::worker::outbox::Outbox>) {
    shared.connected.store(true, Ordering::Release);
    *shared.conn.lock() = Some(out);
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "exited".to_string(),
    }
}

// ---- worker side ------------------------------------------------------------------------------

/// In a worker process, serves the raylet and exits; elsewhere returns at once.
pub fn enter_if_worker() {
    let Some(env) = worker_env() else {
        return;
    };
    crate::log_to_stderr(
        tracing_subscriber::EnvFilter::try_from_env("MOBULA_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    );
    let code = match run_worker(env) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "worker process failed");
            1
        }
    };
    std::process::exit(code);
}

fn worker_env() -> Option<WorkerEnv> {
    let socket = std::env::var_os(ENV_SOCKET)?;
    let id = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| uuid::Uuid::parse_str(&v).ok())
    };
    let env = WorkerEnv {
        socket: PathBuf::from(socket),
        worker_id: WorkerId(id(ENV_WORKER_ID)?),
        job_id: JobId(id(ENV_JOB_ID)?),
        node_id: NodeId(id(ENV_NODE_ID)?),
        namespace: std::env::var(ENV_NAMESPACE).unwrap_or_else(|_| "default".to_string()),
    };
    // Subprocesses that user code starts must not see these and try to be this worker.
    for k in [
        ENV_SOCKET,
        ENV_WORKER_ID,
        ENV_JOB_ID,
        ENV_NODE_ID,
        ENV_NAMESPACE,
    ] {
        // SAFETY: this runs as the worker process enters worker mode, before the worker
        // starts any thread of its own; no other code of this process reads the environment
        // concurrently (a test harness's main thread only waits for its test thread).
        unsafe { std::env::remove_var(k) };
    }
    Some(env)
}

type ReplySink = Box<dyn FnOnce(Reply) + Send>;

/// The runtime client inside a worker process: every operation is a request to the raylet.
pub(crate) struct WorkerCore {
    env: WorkerEnv,
    writer: Mutex<BufWriter<StdUnixStream>>,
    /// Sinks of the requests not answered yet; `true` for those awaited by a future (nobody
    /// blocks on them).
    pending: Mutex<HashMap<u64, (ReplySink, bool)>>,
    next: AtomicU64,
    refs: Mutex<HashMap<ObjectId, u32>>,
    /// Set by `shutdown`: the connection closing is expected.
    closing: std::sync::atomic::AtomicBool,
    inbox: Inbox,
}

/// Who reads this process's connection (leader/followers). The reader is a token: a thread
/// that waits for a reply or for work and finds it free reads the frames itself, dispatching
/// what is for others, until its own arrives, then puts it back; a sync `get` or the worker's
/// next task then costs no wake-up of a reader thread. The `mobula-raylet-reader` helper
/// takes the token only while someone needs frames read and nobody reads: a thread blocked
/// while another holds the token, a future awaiting a reply, an async actor's event loop.
/// Every change of who needs what is made under the state's lock, and a thread that puts the
/// token back wakes the helper if anyone is still waiting, so nobody waits with nobody
/// reading.
struct Inbox {
    st: Mutex<InboxState>,
    helper: parking_lot::Condvar,
    /// Where work read by any thread goes (`None` in a driver).
    work: Option<flume::Sender<Work>>,
}

#[derive(Default)]
struct InboxState {
    /// The token (`None` while a thread reads).
    reader: Option<std::io::BufReader<StdUnixStream>>,
    /// Sync requests whose thread waits without reading.
    blocked: std::collections::HashSet<u64>,
    /// Requests awaited by futures.
    awaited: usize,
    /// The worker's main thread waits for work without reading.
    wants_work: bool,
    /// An async actor: its event loop takes work from the channel, read for it for good.
    always: bool,
    /// The connection ended.
    closed: bool,
}

impl InboxState {
    fn needs_reader(&self) -> bool {
        !self.blocked.is_empty() || self.awaited > 0 || self.wants_work || self.always
    }
}

impl Inbox {
    fn new(reader: std::io::BufReader<StdUnixStream>, work: Option<flume::Sender<Work>>) -> Self {
        Self {
            st: Mutex::new(InboxState {
                reader: Some(reader),
                ..Default::default()
            }),
            helper: parking_lot::Condvar::new(),
            work,
        }
    }
}

impl WorkerCore {
    fn send(&self, msg: &FromWorker) -> Result<()> {
        let mut w = self.writer.lock();
        write_frame(&mut *w, msg).map_err(|e| Error::runtime(format!("raylet connection: {e}")))
    }

    /// Sends a request whose reply goes to `sink`, called by whichever thread reads it;
    /// `awaited`: a future waits for it (so a reader must be found), not a blocked thread.
    fn request_with(&self, body: Request, sink: ReplySink, awaited: bool) -> Result<u64> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(req, (sink, awaited));
        if awaited {
            let mut st = self.inbox.st.lock();
            st.awaited += 1;
            self.inbox.helper.notify_one();
        }
        if let Err(e) = self.send(&FromWorker::Request { req, body }) {
            if self.pending.lock().remove(&req).is_some() && awaited {
                self.inbox.st.lock().awaited -= 1;
            }
            return Err(e);
        }
        Ok(req)
    }

    fn request(&self, body: Request) -> Result<Reply> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let req = self.request_with(
            body,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            false,
        )?;
        self.wait_for(
            || rx.try_recv().ok(),
            |st| {
                st.blocked.insert(req);
            },
            || rx.recv().ok(),
        )
        .ok_or_else(|| Error::runtime("the raylet connection closed"))
    }

    /// Waits until `got` gives something that reading the connection puts where it looks:
    /// reads the frames itself when no other thread does, else marks itself waiting (`mark`;
    /// the reader that delivers unmarks it) and `block`s until then.
    fn wait_for<T>(
        &self,
        mut got: impl FnMut() -> Option<T>,
        mark: impl FnOnce(&mut InboxState),
        block: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        if let Some(v) = got() {
            return Some(v);
        }
        let mut st = self.inbox.st.lock();
        // Under the lock: what a reader delivers before it takes the lock to unmark us.
        if let Some(v) = got() {
            return Some(v);
        }
        let Some(mut reader) = st.reader.take() else {
            if st.closed {
                return got();
            }
            mark(&mut st);
            self.inbox.helper.notify_one();
            drop(st);
            return block();
        };
        drop(st);
        let out = loop {
            if let Some(v) = got() {
                break Some(v);
            }
            if !self.read_one(&mut reader) {
                return got();
            }
        };
        let mut st = self.inbox.st.lock();
        st.reader = Some(reader);
        if st.needs_reader() {
            self.inbox.helper.notify_one();
        }
        out
    }

    /// Reads and dispatches one frame; `false` once the connection ended (handled).
    fn read_one(&self, reader: &mut std::io::BufReader<StdUnixStream>) -> bool {
        let body = match read_frame(reader) {
            Ok(Some(b)) => b,
            Ok(None) => return self.connection_ended(None),
            Err(e) => return self.connection_ended(Some(e.to_string())),
        };
        let msg = match protocol::decode_body::<ToWorker>(&body) {
            Ok(m) => m,
            Err(e) => return self.connection_ended(Some(e.to_string())),
        };
        let item = match msg {
            ToWorker::Reply { req, body } => {
                self.dispatch_reply(req, body);
                return true;
            }
            ToWorker::Welcome { .. } => return true,
            ToWorker::Execute {
                spec,
                args,
                gpu_ids,
            } => Work::Execute(spec, args, gpu_ids),
            ToWorker::CreateActor { spec, args } => Work::CreateActor(spec, args),
            ToWorker::Call { call, args } => Work::Call(call, args),
        };
        match &self.inbox.work {
            Some(tx) => {
                let _ = tx.send(item);
                self.inbox.st.lock().wants_work = false;
            }
            None => tracing::warn!("the raylet sent work to a driver; ignored"),
        }
        true
    }

    /// The connection ended (`error`: with a bad frame): every waiter fails; a worker, which
    /// can finish nothing without its raylet, exits. Returns `false`.
    fn connection_ended(&self, error: Option<String>) -> bool {
        if let Some(e) = &error {
            tracing::error!(error = %e, "bad frame from the raylet");
        }
        self.inbox.st.lock().closed = true;
        self.inbox.helper.notify_all();
        self.fail_all();
        if self.inbox.work.is_some() {
            std::process::exit(0);
        }
        if error.is_none() && !self.closing.load(Ordering::Acquire) {
            tracing::error!("the connection to the node daemon closed");
        }
        false
    }

    /// The worker's next task, call or actor to construct (`None` once the connection ended).
    fn next_work(&self, rx: &flume::Receiver<Work>) -> Option<Work> {
        self.wait_for(
            || rx.try_recv().ok(),
            |st| st.wants_work = true,
            || rx.recv().ok(),
        )
    }

    /// The helper: reads while someone needs frames read and no other thread reads.
    fn help(&self) {
        loop {
            let mut reader = {
                let mut st = self.inbox.st.lock();
                loop {
                    if st.closed {
                        return;
                    }
                    if st.needs_reader()
                        && let Some(r) = st.reader.take()
                    {
                        break r;
                    }
                    self.inbox.helper.wait(&mut st);
                }
            };
            loop {
                if !self.read_one(&mut reader) {
                    return;
                }
                let mut st = self.inbox.st.lock();
                if !st.needs_reader() {
                    st.reader = Some(reader);
                    break;
                }
            }
        }
    }

    /// Counts a reference this process now holds without telling the raylet (the raylet
    /// already counted it: a put, a submission).
    fn own(&self, id: ObjectId) {
        *self.refs.lock().entry(id).or_insert(0) += 1;
    }

    fn dispatch_reply(&self, req: u64, body: Reply) {
        let Some((sink, awaited)) = self.pending.lock().remove(&req) else {
            return;
        };
        sink(body);
        let mut st = self.inbox.st.lock();
        if awaited {
            st.awaited -= 1;
        } else {
            st.blocked.remove(&req);
        }
    }

    fn fail_all(&self) {
        let sinks: Vec<(ReplySink, bool)> = self.pending.lock().drain().map(|(_, s)| s).collect();
        for (s, _) in sinks {
            s(Reply::Unit(Err(Error::runtime(
                "the raylet connection closed",
            ))));
        }
        let mut st = self.inbox.st.lock();
        st.awaited = 0;
        st.blocked.clear();
    }
}

fn unexpected(r: Reply) -> Error {
    Error::runtime(format!("unexpected reply from the raylet: {r:?}"))
}

fn ms(t: Option<Duration>) -> Option<u64> {
    t.map(|d| d.as_millis() as u64)
}

fn objects(r: Reply) -> Result<Vec<Object>> {
    match r {
        Reply::Objects(res) => res.map(|v| {
            v.into_iter()
                .map(|(data, is_error)| Object { data, is_error })
                .collect()
        }),
        Reply::Unit(Err(e)) => Err(e),
        other => Err(unexpected(other)),
    }
}

fn unit(r: Reply) -> Result<()> {
    match r {
        Reply::Unit(res) => res,
        other => Err(unexpected(other)),
    }
}

impl Core for WorkerCore {
    fn job_id(&self) -> JobId {
        self.env.job_id
    }
    fn node_id(&self) -> NodeId {
        self.env.node_id
    }

    fn incref(&self, id: ObjectId) {
        let first = {
            let mut refs = self.refs.lock();
            let n = refs.entry(id).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let _ = self.send(&FromWorker::IncRef(vec![id]));
        }
    }

    fn decref(&self, id: ObjectId) {
        let last = {
            let mut refs = self.refs.lock();
            match refs.get_mut(&id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    refs.remove(&id);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.send(&FromWorker::DecRef(vec![id]));
        }
    }

    fn put(&self, value: Encoded) -> Result<ObjectId> {
        let id = ObjectId::new();
        let r = self.request(Request::Put {
            id,
            value: WireValue {
                data: value.data,
                nested: value.nested,
            },
        })?;
        drop(value.pins);
        unit(r)?;
        self.own(id);
        Ok(id)
    }

    fn put_error(&self, err: &Error) -> ObjectId {
        let id = ObjectId::new();
        if let Err(e) = self.request(Request::PutError {
            id,
            error: err.clone(),
        }) {
            tracing::error!(error = %e, "cannot store an error object");
        }
        self.own(id);
        id
    }

    fn get_objects(&self, ids: &[ObjectId], timeout: Option<Duration>) -> Result<Vec<Object>> {
        let r = self.request(Request::Get {
            ids: ids.to_vec(),
            timeout_ms: ms(timeout),
        })?;
        objects(r)
    }

    fn get_object_async(&self, id: ObjectId) -> BoxFuture<'static, Result<Object>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.request_with(
            Request::Get {
                ids: vec![id],
                timeout_ms: None,
            },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            true,
        );
        async move {
            sent?;
            let r = rx
                .await
                .map_err(|_| Error::runtime("the raylet connection closed"))?;
            objects(r)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::runtime("empty get reply"))
        }
        .boxed()
    }

    fn wait(&self, ids: &[ObjectId], num: usize, timeout: Option<Duration>) -> Result<Vec<bool>> {
        match self.request(Request::Wait {
            ids: ids.to_vec(),
            num,
            timeout_ms: ms(timeout),
        })? {
            Reply::Ready(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn submit_task(&self, spec: TaskSpec) -> Result<()> {
        let id = spec.return_id;
        self.send(&FromWorker::SubmitTask(spec))?;
        self.own(id);
        Ok(())
    }

    fn cancel(&self, id: ObjectId, force: bool) -> Result<()> {
        unit(self.request(Request::Cancel { id, force })?)
    }

    fn create_actor(&self, spec: ActorSpec) -> Result<()> {
        unit(self.request(Request::CreateActor(Box::new(spec)))?)
    }

    fn submit_actor_call(&self, call: ActorCall) -> Result<()> {
        let id = call.return_id;
        self.send(&FromWorker::SubmitCall(call))?;
        self.own(id);
        Ok(())
    }

    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<()> {
        unit(self.request(Request::KillActor { id, no_restart })?)
    }

    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<ActorLookup> {
        match self.request(Request::GetNamedActor {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })? {
            Reply::Actor(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn create_placement_group(
        &self,
        id: PlacementGroupId,
        name: Option<String>,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
    ) -> Result<()> {
        unit(self.request(Request::CreatePg {
            id,
            name,
            bundles,
            strategy,
            job_id: self.env.job_id,
        })?)
    }

    fn wait_placement_group(
        &self,
        id: PlacementGroupId,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        match self.request(Request::WaitPg {
            id,
            timeout_ms: ms(timeout),
        })? {
            Reply::Bool(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<()> {
        unit(self.request(Request::RemovePg(id))?)
    }

    fn kv_put(&self, ns: &str, key: &str, value: Vec<u8>, overwrite: bool) -> Result<bool> {
        match self.request(Request::KvPut {
            ns: ns.to_string(),
            key: key.to_string(),
            value,
            overwrite,
        })? {
            Reply::Bool(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        match self.request(Request::KvGet {
            ns: ns.to_string(),
            key: key.to_string(),
        })? {
            Reply::Value(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn kv_del(&self, ns: &str, key: &str) -> Result<bool> {
        match self.request(Request::KvDel {
            ns: ns.to_string(),
            key: key.to_string(),
        })? {
            Reply::Bool(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn cluster_resources(&self) -> Result<HashMap<String, f64>> {
        match self.request(Request::Resources { available: false })? {
            Reply::Resources(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn available_resources(&self) -> Result<HashMap<String, f64>> {
        match self.request(Request::Resources { available: true })? {
            Reply::Resources(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn store_stats(&self) -> Result<crate::store::StoreStats> {
        Err(Error::runtime(
            "object store counters are read on the driver, not in a worker process",
        ))
    }

    fn shutdown(&self) {
        // A driver leaves: closing the socket tells the node to release what it held for us.
        self.closing.store(true, Ordering::Release);
        // The helper, if parked, ends (one blocked in a read ends with the socket).
        self.inbox.st.lock().closed = true;
        self.inbox.helper.notify_all();
        let _ = self
            .writer
            .lock()
            .get_ref()
            .shutdown(std::net::Shutdown::Both);
    }
}

enum Work {
    Execute(TaskSpec, Vec<Bytes>, Vec<usize>),
    CreateActor(ActorSpec, Vec<Bytes>),
    Call(ActorCall, Vec<Bytes>),
}

/// Starts the `mobula-raylet-reader` helper, which reads the connection whenever someone
/// needs it read and no other thread does (`Inbox`).
fn spawn_helper(core: Arc<WorkerCore>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mobula-raylet-reader".to_string())
        .spawn(move || core.help())?;
    Ok(())
}

/// Connects this process, as a driver, to the node daemon listening on `socket`.
pub(crate) fn connect_driver(socket: &std::path::Path, namespace: &str) -> Result<Arc<dyn Core>> {
    let fail = |e: &dyn std::fmt::Display| {
        Error::runtime(format!(
            "cannot connect to the node at {}: {e}",
            socket.display()
        ))
    };
    let stream = StdUnixStream::connect(socket).map_err(|e| fail(&e))?;
    crate::worker::shm::encode_here();
    let mut reader = std::io::BufReader::new(stream.try_clone().map_err(|e| fail(&e))?);
    let mut command = WorkerCommand::current().map_err(|e| fail(&e))?;
    // Nodes on other machines fetch the executable by this hash.
    command.hash = Some(file_hash(&command.exe).map_err(|e| fail(&e))?);
    let job_id = JobId::new();
    let mut writer = BufWriter::new(stream);
    write_frame(
        &mut writer,
        &FromWorker::DriverHello {
            job_id,
            exe: command.exe.clone(),
            args: command
                .args
                .iter()
                .map(|a| a.to_string_lossy().to_string())
                .collect(),
            namespace: namespace.to_string(),
            quiet: command.quiet,
            exe_hash: command.hash.clone(),
            pid: std::process::id(),
            submission_id: std::env::var("MOBULA_SUBMISSION_ID").ok(),
        },
    )
    .map_err(|e| fail(&e))?;
    let node_id = match read_frame(&mut reader).map_err(|e| fail(&e))? {
        Some(body) => match protocol::decode_body::<ToWorker>(&body).map_err(|e| fail(&e))? {
            ToWorker::Welcome { node_id } => node_id,
            other => return Err(fail(&format!("unexpected first frame {other:?}"))),
        },
        None => return Err(fail(&"the node closed the connection")),
    };
    let core = Arc::new(WorkerCore {
        env: WorkerEnv {
            socket: socket.to_path_buf(),
            worker_id: WorkerId::nil(),
            job_id,
            node_id,
            namespace: namespace.to_string(),
        },
        writer: Mutex::new(writer),
        pending: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        refs: Mutex::new(HashMap::new()),
        closing: std::sync::atomic::AtomicBool::new(false),
        inbox: Inbox::new(reader, None),
    });
    spawn_helper(core.clone()).map_err(|e| fail(&e))?;
    tracing::info!(node = %node_id, job = %job_id, "connected to the node daemon");
    Ok(core)
}

fn run_worker(env: WorkerEnv) -> std::result::Result<(), protocol::ProtoError> {
    let stream = StdUnixStream::connect(&env.socket)?;
    crate::worker::shm::encode_here();
    let reader = std::io::BufReader::new(stream.try_clone()?);
    let (work_tx, work_rx) = flume::unbounded::<Work>();
    let core = Arc::new(WorkerCore {
        env: env.clone(),
        writer: Mutex::new(BufWriter::new(stream)),
        pending: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        refs: Mutex::new(HashMap::new()),
        closing: std::sync::atomic::AtomicBool::new(false),
        inbox: Inbox::new(reader, Some(work_tx)),
    });
    core.send(&FromWorker::Hello {
        worker_id: env.worker_id,
        pid: std::process::id(),
    })
    .map_err(|e| protocol::ProtoError::Encode(e.to_string()))?;
    let core_dyn: Arc<dyn Core> = core.clone();
    crate::api::install(core_dyn, &env.namespace);

    spawn_helper(core.clone())?;

    let mut actor: Option<Box<dyn ActorInstance>> = None;
    while let Some(work) = core.next_work(&work_rx) {
        match work {
            Work::Execute(spec, args, gpus) => {
                crate::worker::set_gpu_ids(gpus);
                let outcome = invoke_function(&spec, args);
                crate::worker::set_gpu_ids(Vec::new());
                let (result, pins) = match outcome {
                    Ok(e) => (
                        Ok(WireValue {
                            data: e.data,
                            nested: e.nested,
                        }),
                        e.pins,
                    ),
                    Err(e) => (Err(e), Vec::new()),
                };
                let _ = core.send(&FromWorker::TaskDone {
                    task_id: spec.task_id,
                    return_id: spec.return_id,
                    result,
                });
                // Nested refs of the value stay alive until the raylet has stored it.
                drop(pins);
            }
            Work::CreateActor(spec, args) => match construct_actor(&spec, args) {
                Ok(inst) => {
                    let _ = core.send(&FromWorker::ActorReady { result: Ok(()) });
                    if spec.is_async {
                        // Its event loop awaits work: the helper reads for it from now on.
                        core.inbox.st.lock().always = true;
                        core.inbox.helper.notify_one();
                        run_async_actor(core.clone(), spec, inst, work_rx);
                        break;
                    }
                    actor = Some(inst);
                }
                Err(e) => {
                    let _ = core.send(&FromWorker::ActorReady { result: Err(e) });
                }
            },
            Work::Call(call, args) => {
                let (result, pins) = match actor.as_mut() {
                    Some(inst) => {
                        finish(&call.name, call_blocking(inst.as_mut(), &call.method, args))
                    }
                    None => (
                        Err(Error::runtime("this worker hosts no actor")),
                        Vec::new(),
                    ),
                };
                let _ = core.send(&FromWorker::CallDone {
                    task_id: call.task_id,
                    return_id: call.return_id,
                    result,
                });
                drop(pins);
            }
        }
    }
    Ok(())
}

/// The wire form of a call's result, and the handles that keep its nested refs alive until
/// the result has been sent.
fn finish(
    name: &str,
    r: std::result::Result<Encoded, UserError>,
) -> (Result<WireValue>, Vec<crate::api::RawRef>) {
    match r {
        Ok(e) => (
            Ok(WireValue {
                data: e.data,
                nested: e.nested,
            }),
            e.pins,
        ),
        Err(e) => (Err(user_error(name, e).0), Vec::new()),
    }
}

fn run_async_actor(
    core: Arc<WorkerCore>,
    spec: ActorSpec,
    inst: Box<dyn ActorInstance>,
    rx: flume::Receiver<Work>,
) {
    let (rt, local) = match event_loop() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the actor's event loop");
            return;
        }
    };
    let inst = std::rc::Rc::new(std::cell::RefCell::new(inst));
    let permits = Arc::new(tokio::sync::Semaphore::new(spec.max_concurrency.max(1)));
    local.block_on(&rt, async move {
        while let Ok(work) = rx.recv_async().await {
            let Work::Call(call, args) = work else {
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let started = start_call(&mut **inst.borrow_mut(), &call.method, args);
            let core = core.clone();
            tokio::task::spawn_local(async move {
                let r = match started {
                    CallStart::Done(r) => r,
                    CallStart::Running(f) => f.await,
                };
                let (result, pins) = finish(&call.name, r);
                let _ = core.send(&FromWorker::CallDone {
                    task_id: call.task_id,
                    return_id: call.return_id,
                    result,
                });
                drop(pins);
                drop(permit);
            });
        }
    });
}
