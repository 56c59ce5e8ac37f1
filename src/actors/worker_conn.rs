//! The raylet's side of one worker-process connection, as an actix actor.
//!
//! It decodes the worker's frames (a malformed or oversized frame drops the connection and
//! kills that worker; the node keeps serving everyone else), seals the results the worker
//! produces, answers the worker's requests through the node client, counts the object
//! references the process holds (released if it dies), and, when the worker hosts an actor,
//! forwards the actor's calls in order and remembers which ones have not finished.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio_util::codec::FramedRead;

use crate::actors::actor_host::HOST_CHANNEL;
use crate::actors::directory::{ActorRoute, Endpoint, QueuedCall, seal_error};
use crate::actors::raylet::{ActorExited, ActorStarted, RayletMsg};
use crate::codec::Encoded;
use crate::core::Core;
use crate::error::Error;
use crate::ids::{ObjectId, TaskId, WorkerId};
use crate::node::NodeClient;
use crate::spec::ActorSpec;
use crate::store::Peek;
use crate::worker::TaskOutcome;
use crate::worker::outbox::Outbox;
use crate::worker::process::{PoolCtx, ProcShared, attach};
use crate::worker::protocol::{self, FromWorker, Reply, Request, ToWorker};
use crate::worker::thread::resolve_args_off_thread;

#[derive(Default)]
struct Inflight {
    order: BTreeMap<u64, QueuedCall>,
    seq_of: HashMap<TaskId, u64>,
    next: u64,
}

struct Hosted {
    spec: ActorSpec,
    route: Arc<ActorRoute>,
    calls: Option<Arc<ConnCalls>>,
}

/// Calls up to this many bytes of arguments go into their frame on the submitting thread.
const INLINE_CALL_MAX: usize = 64 << 10;

/// The calls of the actor a worker process hosts, on their way into its connection. The
/// thread that submits a call sends it itself (arguments copied into the `Call` frame, the
/// frame written to the socket) when nothing is queued before it and it is ready: its
/// dependencies sealed, its arguments in memory and small. Otherwise the call is queued and a
/// task (`drain`) sends the queue in order, awaiting dependencies and reading spilled
/// arguments off its thread. Either way calls leave in submission order: the direct send
/// happens under the queue's lock, only when the queue is empty and no drain runs.
/// Decision: this replaced a channel to a forwarding task on the connection's arbiter, which
/// cost every call from another thread (a lane's, for a call from another node) a wake-up.
struct ConnCalls {
    state: parking_lot::Mutex<CallQueue>,
    inflight: Arc<parking_lot::Mutex<Inflight>>,
    out: Arc<Outbox>,
    table: Arc<crate::store::ObjectTable>,
    history: Arc<crate::actors::history::TaskLog>,
    job: crate::ids::JobId,
    pid: u32,
    /// The connection's arbiter: drains started outside any runtime run there.
    home: tokio::runtime::Handle,
}

#[derive(Default)]
struct CallQueue {
    queue: std::collections::VecDeque<QueuedCall>,
    /// A drain runs (or the calls queued before activation are not in yet).
    busy: bool,
    closed: bool,
}

impl std::fmt::Debug for ConnCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCalls")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl crate::actors::directory::CallSink for Arc<ConnCalls> {
    fn submit(&self, q: QueuedCall) -> Option<QueuedCall> {
        let mut st = self.state.lock();
        if st.closed {
            return Some(q);
        }
        if !st.busy && st.queue.is_empty() {
            match self.ready_frame(&q) {
                Some(Ok(f)) => {
                    self.record(q);
                    match self.out.try_send(f) {
                        Ok(()) | Err(crate::worker::outbox::OutboxError::Closed(_)) => {}
                        Err(crate::worker::outbox::OutboxError::Full(f)) => {
                            st.busy = true;
                            self.spawn_drain(Some(f));
                        }
                    }
                    return None;
                }
                Some(Err(e)) => {
                    drop(st);
                    seal_error(&self.table, q.call.return_id, &e);
                    return None;
                }
                None => {}
            }
        }
        st.queue.push_back(q);
        if !st.busy {
            st.busy = true;
            self.spawn_drain(None);
        }
        None
    }

    fn room(&self) -> usize {
        HOST_CHANNEL.saturating_sub(self.state.lock().queue.len())
    }
}

impl ConnCalls {
    /// The call's frame if it can go now (`Err`: it never can, its error is to be sealed).
    fn ready_frame(&self, q: &QueuedCall) -> Option<crate::Result<Bytes>> {
        let table = &self.table;
        if q.call.deps().any(|d| !table.is_ready(&d))
            || crate::worker::thread::any_spilled(table, &q.call.args)
        {
            return None;
        }
        let args = match crate::worker::thread::resolve_args(table, &q.call.args) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        if args.iter().map(|a| a.len()).sum::<usize>() > INLINE_CALL_MAX {
            return None;
        }
        Some(Self::encode(self.pid, q, args))
    }

    fn encode(pid: u32, q: &QueuedCall, args: Vec<Bytes>) -> crate::Result<Bytes> {
        let call = q.call.clone();
        frame(pid, &ToWorker::Call { call, args })
            .ok_or_else(|| Error::Serialization("the call does not encode".to_string()))
    }

    /// Counts a call as sent (in flight until its `CallDone`).
    fn record(&self, q: QueuedCall) {
        let mut inf = self.inflight.lock();
        let seq = inf.next;
        inf.next += 1;
        inf.seq_of.insert(q.call.task_id, seq);
        self.history.call_started(&q.call, Some(self.job), self.pid);
        inf.order.insert(seq, q);
    }

    fn spawn_drain(self: &Arc<Self>, first: Option<Bytes>) {
        crate::spawn_here(&self.home, self.clone().drain(first));
    }

    /// Sends the queued calls in order until the queue is empty.
    async fn drain(self: Arc<Self>, first: Option<Bytes>) {
        if let Some(f) = first {
            let _ = self.out.send_async(f).await;
        }
        loop {
            let q = {
                let mut st = self.state.lock();
                match st.queue.pop_front() {
                    Some(q) => q,
                    None => {
                        st.busy = false;
                        return;
                    }
                }
            };
            for dep in q.call.deps() {
                if !self.table.is_ready(&dep) {
                    crate::store::sealed(&self.table, dep).await;
                }
            }
            let sent = match resolve_args_off_thread(&self.table, &q.call.args).await {
                Ok(args) => Self::encode(self.pid, &q, args),
                Err(e) => Err(e),
            };
            match sent {
                Ok(f) => {
                    self.record(q);
                    let _ = self.out.send_async(f).await;
                }
                Err(e) => seal_error(&self.table, q.call.return_id, &e),
            }
        }
    }

    /// The connection ended: later calls are given back; returns the queued ones.
    fn close(&self) -> Vec<QueuedCall> {
        let mut st = self.state.lock();
        st.closed = true;
        st.queue.drain(..).collect()
    }
}

/// Who is at the other end of a connection.
enum Peer {
    /// A worker process this pool started.
    Worker(Arc<ProcShared>),
    /// A driver of this job.
    Driver(crate::ids::JobId),
}

/// One worker process's connection.
pub(crate) struct WorkerConn {
    wid: WorkerId,
    pid: u32,
    /// `None` for a driver connection.
    shared: Option<Arc<ProcShared>>,
    ctx: PoolCtx,
    out: Arc<Outbox>,
    held: HashMap<ObjectId, u32>,
    actor: Option<Hosted>,
    actor_args: Option<Vec<Bytes>>,
    inflight: Arc<parking_lot::Mutex<Inflight>>,
    /// A driver's job (its work ends when the connection does).
    driver_job: Option<crate::ids::JobId>,
}

/// Encodes a frame for the process `pid` (its large values go through shared memory named
/// for it).
fn frame<T: serde::Serialize>(pid: u32, msg: &T) -> Option<Bytes> {
    match crate::worker::shm::to_reader(pid, || protocol::encode_frame(msg)) {
        Ok(f) => Some(Bytes::from(f)),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a frame for a worker");
            None
        }
    }
}

impl WorkerConn {
    /// Takes a fresh connection: reads its hello and starts the connection actor.
    pub(crate) fn accept(
        stream: tokio::net::UnixStream,
        procs: Arc<parking_lot::Mutex<HashMap<WorkerId, Arc<ProcShared>>>>,
        ctx: PoolCtx,
    ) {
        actix_rt::spawn(async move {
            let (r, w) = stream.into_split();
            // Until the peer has said who it is, frames are small: a hello announcing a
            // huge frame must not make the node reserve room for it.
            let mut frames = FramedRead::new(r, protocol::codec());
            frames
                .decoder_mut()
                .set_max_frame_length(protocol::MAX_HELLO);
            let first = match tokio::time::timeout(Duration::from_secs(30), frames.next()).await {
                Ok(Some(Ok(b))) => b,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "bad first frame on a worker connection: dropped");
                    return;
                }
                other => {
                    tracing::warn!(outcome = ?other.map(|o| o.map(|r| r.map(|b| b.len()))), "worker connection closed before its hello");
                    return;
                }
            };
            let (worker_id, pid) = match protocol::decode_body::<FromWorker>(&first) {
                Ok(FromWorker::Hello { worker_id, pid }) => (worker_id, pid),
                Ok(FromWorker::DriverHello {
                    job_id,
                    exe,
                    args,
                    namespace,
                    quiet,
                    exe_hash,
                    pid,
                    submission_id,
                }) => {
                    let launch = crate::worker::process::JobLaunch {
                        command: crate::worker::process::WorkerCommand {
                            exe,
                            args: args.into_iter().map(Into::into).collect(),
                            quiet,
                            hash: exe_hash,
                        },
                        namespace: namespace.clone(),
                    };
                    ctx.client.gcs.do_send(crate::actors::gcs::RegisterJob {
                        job_id,
                        namespace,
                        driver_pid: pid,
                        submission_id,
                        launch: Some(launch.clone()),
                    });
                    ctx.jobs.lock().insert(job_id, launch);
                    tracing::info!(job = %job_id, pid, "driver connected");
                    Self::serve(
                        frames,
                        w,
                        WorkerId::nil(),
                        pid,
                        Peer::Driver(job_id),
                        None,
                        ctx,
                    );
                    return;
                }
                Ok(_) => {
                    tracing::warn!("worker connection did not start with a hello; dropped");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed hello from a worker; dropped");
                    return;
                }
            };
            let Some(shared) = procs.lock().get(&worker_id).cloned() else {
                tracing::warn!(worker = %worker_id, "connection from a worker this raylet did not start; dropped");
                return;
            };
            // The hello can beat `spawn` storing the pid: give it a moment.
            for _ in 0..200 {
                if shared.pid() != 0 || shared.has_exited() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if shared.pid() != pid {
                // Another process that inherited the worker's environment (a subprocess of
                // user code, say) is not the worker.
                tracing::warn!(worker = %worker_id, pid, expected = shared.pid(), "hello from a process that is not the worker; dropped");
                return;
            }
            let actor = shared.take_actor();
            Self::serve(frames, w, worker_id, pid, Peer::Worker(shared), actor, ctx);
        });
    }

    /// Starts the connection actor on an identified connection.
    fn serve(
        mut frames: FramedRead<
            tokio::net::unix::OwnedReadHalf,
            tokio_util::codec::LengthDelimitedCodec,
        >,
        w: tokio::net::unix::OwnedWriteHalf,
        worker_id: WorkerId,
        pid: u32,
        peer: Peer,
        actor: Option<crate::worker::process::ActorLaunch>,
        ctx: PoolCtx,
    ) {
        // Identified: frames up to the protocol's limit from now on.
        frames
            .decoder_mut()
            .set_max_frame_length(protocol::MAX_FRAME);
        let (shared, driver_job) = match peer {
            Peer::Worker(s) => (Some(s), None),
            Peer::Driver(job) => (None, Some(job)),
        };
        let out_tx = Arc::new(Outbox::new(w, 4096));
        if let Some(s) = &shared {
            attach(s, out_tx.clone());
        }
        actix_rt::spawn(out_tx.clone().run());
        {
            WorkerConn::create(move |c| {
                c.add_stream(frames);
                let (hosted, args) = match actor {
                    Some((spec, args, route)) => (
                        Some(Hosted {
                            spec,
                            route,
                            calls: None,
                        }),
                        Some(args),
                    ),
                    None => (None, None),
                };
                WorkerConn {
                    wid: worker_id,
                    pid,
                    shared,
                    ctx,
                    out: out_tx,
                    held: HashMap::new(),
                    actor: hosted,
                    actor_args: args,
                    inflight: Arc::default(),
                    driver_job,
                }
            });
        }
    }

    fn client(&self) -> Arc<NodeClient> {
        self.ctx.client.clone()
    }

    fn kill_process(&self) {
        let Some(shared) = &self.shared else {
            return; // a driver: dropping its connection is enough
        };
        let pid = shared.pid();
        if pid > 0 {
            // SAFETY: kill(2) on the worker process this raylet started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }

    fn hold(&mut self, id: ObjectId) {
        *self.held.entry(id).or_insert(0) += 1;
    }

    fn reply(&self, ctx: &mut Context<Self>, req: u64, body: Reply) {
        if let Some(f) = frame(self.pid, &ToWorker::Reply { req, body })
            && let Err(crate::worker::outbox::OutboxError::Full(f)) = self.out.try_send(f)
        {
            let out = self.out.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                let _ = out.send_async(f).await;
            }));
        }
    }

    /// Runs a request that may wait on the GCS off this arbiter, then replies.
    fn reply_blocking<F>(&self, ctx: &mut Context<Self>, req: u64, f: F)
    where
        F: FnOnce(Arc<NodeClient>) -> Reply + Send + 'static,
    {
        let client = self.client();
        let out = self.out.clone();
        let pid = self.pid;
        ctx.spawn(actix::fut::wrap_future(async move {
            let body = match tokio::task::spawn_blocking(move || f(client)).await {
                Ok(b) => b,
                Err(e) => Reply::Unit(Err(Error::runtime(format!("request failed: {e}")))),
            };
            if let Some(fr) = frame(pid, &ToWorker::Reply { req, body }) {
                let _ = out.send_async(fr).await;
            }
        }));
    }

    fn start_actor_forwarding(&mut self) {
        let Some(h) = self.actor.as_mut() else {
            return;
        };
        let Ok(home) = tokio::runtime::Handle::try_current() else {
            tracing::error!(worker = %self.wid, "a worker connection outside a runtime");
            return;
        };
        let calls = Arc::new(ConnCalls {
            // Busy until the calls queued before activation are in, so none overtakes them.
            state: parking_lot::Mutex::new(CallQueue {
                busy: true,
                ..Default::default()
            }),
            inflight: self.inflight.clone(),
            out: self.out.clone(),
            table: self.ctx.table.clone(),
            history: self.ctx.client.history.clone(),
            job: h.spec.job_id,
            pid: self.pid,
            home,
        });
        let pending = h.route.activate(Endpoint::Sink(Arc::new(calls.clone())));
        {
            let mut st = calls.state.lock();
            for q in pending.into_iter().rev() {
                st.queue.push_front(q);
            }
        }
        calls.spawn_drain(None);
        h.calls = Some(calls);
    }

    fn on_frame(&mut self, msg: FromWorker, ctx: &mut Context<Self>) {
        let table = self.ctx.table.clone();
        match msg {
            FromWorker::Hello { .. } | FromWorker::DriverHello { .. } => {
                tracing::warn!(worker = %self.wid, "second hello from a worker; dropping it");
                self.kill_process();
                ctx.stop();
            }
            FromWorker::TaskDone {
                task_id,
                return_id,
                result,
            } => {
                let outcome = match result {
                    Ok(v) => {
                        table.seal(return_id, v.data, v.nested, false);
                        TaskOutcome::Sealed
                    }
                    Err((error, user)) => TaskOutcome::Failed { error, user },
                };
                let _ = self.ctx.raylet_tx.send(RayletMsg::TaskDone {
                    worker: self.wid,
                    task_id,
                    outcome,
                });
            }
            FromWorker::ActorReady { result } => {
                let Some(spec) = self.actor.as_ref().map(|h| h.spec.clone()) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        self.start_actor_forwarding();
                        self.ctx.raylet.do_send(ActorStarted {
                            actor_id: spec.actor_id,
                            result: Ok(self.pid),
                        });
                    }
                    Err(e) => {
                        self.ctx.raylet.do_send(ActorStarted {
                            actor_id: spec.actor_id,
                            result: Err(e),
                        });
                        self.actor = None;
                    }
                }
            }
            FromWorker::CallDone {
                task_id,
                return_id,
                result,
            } => {
                let mut inf = self.inflight.lock();
                let call = inf
                    .seq_of
                    .remove(&task_id)
                    .and_then(|seq| inf.order.remove(&seq));
                let attempt = call.map_or(0, |q| q.call.attempt);
                let history = &self.ctx.client.history;
                match result {
                    Ok(v) => {
                        history.ended(task_id, attempt, Ok(()));
                        table.seal(return_id, v.data, v.nested, false);
                    }
                    Err(e) => {
                        history.ended(task_id, attempt, Err(&e));
                        seal_error(&table, return_id, &e);
                    }
                }
            }
            FromWorker::SubmitTask(spec) => {
                let id = spec.return_id;
                self.hold(id);
                if let Err(e) = self.client().submit_task(spec) {
                    seal_error(&table, id, &e);
                }
            }
            FromWorker::SubmitCall(call) => {
                let id = call.return_id;
                self.hold(id);
                if let Err(e) = self.client().submit_actor_call(call) {
                    seal_error(&table, id, &e);
                }
            }
            FromWorker::IncRef(ids) => {
                for id in ids {
                    table.incref(id);
                    self.hold(id);
                }
            }
            FromWorker::DecRef(ids) => {
                for id in ids {
                    if let Some(n) = self.held.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            self.held.remove(&id);
                        }
                        table.decref(id);
                    }
                }
            }
            FromWorker::Request { req, body } => self.on_request(req, body, ctx),
        }
    }

    fn on_request(&mut self, req: u64, body: Request, ctx: &mut Context<Self>) {
        let client = self.client();
        match body {
            Request::Put { id, value } => {
                let spills = self.ctx.table.would_spill(value.data.len() as u64);
                let enc = Encoded {
                    data: value.data,
                    nested: value.nested,
                    pins: Vec::new(),
                };
                if spills {
                    // This put spills: the files are written off this arbiter. The hold comes
                    // first, so a `DecRef` right after the reply finds it (a failed put holds
                    // an id the table does not know, which releasing ignores).
                    self.hold(id);
                    self.reply_blocking(ctx, req, move |c| {
                        Reply::Unit(c.put_with_id(id, enc, false))
                    });
                    return;
                }
                let r = client.put_with_id(id, enc, false);
                if r.is_ok() {
                    self.hold(id);
                }
                self.reply(ctx, req, Reply::Unit(r));
            }
            Request::PutError { id, error } => {
                let data = crate::codec::encode(&error)
                    .map(|e| e.data)
                    .unwrap_or_default();
                if self
                    .ctx
                    .table
                    .put(id, data.clone(), Vec::new(), true)
                    .is_err()
                {
                    self.ctx.table.create_pending(id);
                    self.ctx.table.seal(id, data, Vec::new(), true);
                }
                self.hold(id);
                self.reply(ctx, req, Reply::Unit(Ok(())));
            }
            Request::Get { ids, timeout_ms } => {
                let table = self.ctx.table.clone();
                let all_ready = ids
                    .iter()
                    .all(|id| !matches!(table.peek(id), Peek::Pending));
                // Spilled values are read back off this arbiter (by `get_async_many`).
                let spilled = ids
                    .iter()
                    .any(|id| matches!(table.peek(id), Peek::Sealed { spilled: true, .. }));
                let timeout = timeout_ms.map(Duration::from_millis);
                if all_ready && !spilled {
                    let r = futures::executor::block_on(NodeClient::get_async_many(
                        table, ids, timeout,
                    ));
                    self.reply(ctx, req, objects_reply(r));
                    return;
                }
                // A worker waiting lends its task's CPUs; a driver holds none (nothing to say).
                let lends = !all_ready && self.shared.is_some();
                if !lends && timeout.is_none() && !spilled {
                    let conn = ctx.address().downgrade();
                    EarlyReply::subscribe(req, ids, self.pid, &self.out, &table, conn);
                    return;
                }
                let raylet_tx = self.ctx.raylet_tx.clone();
                let wid = self.wid;
                let out = self.out.clone();
                let pid = self.pid;
                if lends {
                    let _ = raylet_tx.try_send(RayletMsg::Blocked(wid));
                }
                ctx.spawn(actix::fut::wrap_future(async move {
                    let r = NodeClient::get_async_many(table, ids, timeout).await;
                    if lends {
                        let _ = raylet_tx.send_async(RayletMsg::Unblocked(wid)).await;
                    }
                    if let Some(f) = frame(
                        pid,
                        &ToWorker::Reply {
                            req,
                            body: objects_reply(r),
                        },
                    ) {
                        let _ = out.send_async(f).await;
                    }
                }));
            }
            Request::Wait {
                ids,
                num,
                timeout_ms,
            } => {
                let raylet_tx = self.ctx.raylet_tx.clone();
                let wid = self.wid;
                let lends = self.shared.is_some();
                self.reply_blocking(ctx, req, move |c| {
                    if lends {
                        let _ = raylet_tx.send(RayletMsg::Blocked(wid));
                    }
                    let r = c.wait(&ids, num, timeout_ms.map(Duration::from_millis));
                    if lends {
                        let _ = raylet_tx.send(RayletMsg::Unblocked(wid));
                    }
                    Reply::Ready(r)
                });
            }
            Request::Cancel { id, force } => {
                let r = client.cancel(id, force);
                self.reply(ctx, req, Reply::Unit(r));
            }
            Request::CreateActor(spec) => {
                self.reply_blocking(ctx, req, move |c| Reply::Unit(c.create_actor(*spec)))
            }
            Request::KillActor { id, no_restart } => {
                self.reply_blocking(ctx, req, move |c| Reply::Unit(c.kill_actor(id, no_restart)))
            }
            Request::GetNamedActor { name, namespace } => self.reply_blocking(ctx, req, move |c| {
                Reply::Actor(c.get_named_actor(&name, &namespace))
            }),
            Request::CreatePg {
                id,
                name,
                bundles,
                strategy,
                job_id,
            } => self.reply_blocking(ctx, req, move |c| {
                Reply::Unit(c.create_placement_group_for(job_id, id, name, bundles, strategy))
            }),
            Request::WaitPg { id, timeout_ms } => self.reply_blocking(ctx, req, move |c| {
                Reply::Bool(c.wait_placement_group(id, timeout_ms.map(Duration::from_millis)))
            }),
            Request::RemovePg(id) => {
                self.reply_blocking(ctx, req, move |c| Reply::Unit(c.remove_placement_group(id)))
            }
            Request::KvPut {
                ns,
                key,
                value,
                overwrite,
            } => self.reply_blocking(ctx, req, move |c| {
                Reply::Bool(c.kv_put(&ns, &key, value, overwrite))
            }),
            Request::KvGet { ns, key } => {
                self.reply_blocking(ctx, req, move |c| Reply::Value(c.kv_get(&ns, &key)))
            }
            Request::KvDel { ns, key } => {
                self.reply_blocking(ctx, req, move |c| Reply::Bool(c.kv_del(&ns, &key)))
            }
            Request::Resources { available } => self.reply_blocking(ctx, req, move |c| {
                Reply::Resources(if available {
                    c.available_resources()
                } else {
                    c.cluster_resources()
                })
            }),
        }
    }
}

/// The reply to a `get`.
fn objects_reply(r: crate::Result<Vec<crate::store::Object>>) -> Reply {
    Reply::Objects(r.map(|v| v.into_iter().map(|o| (o.data, o.is_error)).collect()))
}

/// Values up to this size answer a `get` from the thread that sealed them (larger ones are
/// copied into shared memory on the connection's arbiter).
const EARLY_MAX: u64 = 64 << 10;

/// A `get` that waits without lending CPUs (a driver's) for values not sealed yet, answered
/// by the thread that seals the last of them, straight into the connection's outbox (no hop
/// through this arbiter). Each pending value holds one share; a share is given up when its
/// value is sealed, or when its waiter is dropped unrun (the value was freed: then the answer
/// says it is lost). Spilled or large values, or a full outbox, go back to the arbiter.
struct EarlyReply {
    req: u64,
    ids: Vec<ObjectId>,
    pid: u32,
    left: std::sync::atomic::AtomicUsize,
    out: Arc<Outbox>,
    table: Arc<crate::store::ObjectTable>,
    /// Weak: dropping the last strong address of an actor wakes its arbiter (actix checks
    /// whether it lost its last sender), which would cost every early reply a wake-up there.
    conn: actix::WeakAddr<WorkerConn>,
}

/// One pending value's share of an `EarlyReply`.
struct Share(Arc<EarlyReply>);

impl Drop for Share {
    fn drop(&mut self) {
        if self
            .0
            .left
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.answer();
        }
    }
}

impl EarlyReply {
    fn subscribe(
        req: u64,
        ids: Vec<ObjectId>,
        pid: u32,
        out: &Arc<Outbox>,
        table: &Arc<crate::store::ObjectTable>,
        conn: actix::WeakAddr<WorkerConn>,
    ) {
        let me = Arc::new(EarlyReply {
            req,
            ids,
            pid,
            // One share more, given up below once every value is subscribed to.
            left: std::sync::atomic::AtomicUsize::new(1),
            out: out.clone(),
            table: table.clone(),
            conn,
        });
        for id in &me.ids {
            me.left.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let share = Share(me.clone());
            // Sealed meanwhile (or unknown): the waiter comes back and its share goes now.
            let _ = table.subscribe(*id, Box::new(move || drop(share)));
        }
        drop(Share(me));
    }

    fn answer(&self) {
        let here = self.ids.iter().all(|id| match self.table.peek(id) {
            Peek::Sealed { size, spilled, .. } => !spilled && size <= EARLY_MAX,
            Peek::Missing => true,
            Peek::Pending => false,
        });
        let retry = || {
            let Some(conn) = self.conn.upgrade() else {
                return; // the connection is gone: nobody to answer
            };
            conn.do_send(RetryRequest {
                req: self.req,
                body: Request::Get {
                    ids: self.ids.clone(),
                    timeout_ms: None,
                },
            })
        };
        if !here {
            return retry();
        }
        let r = futures::executor::block_on(NodeClient::get_async_many(
            self.table.clone(),
            self.ids.clone(),
            None,
        ));
        let body = objects_reply(r);
        if let Some(f) = frame(
            self.pid,
            &ToWorker::Reply {
                req: self.req,
                body,
            },
        ) && let Err(crate::worker::outbox::OutboxError::Full(_)) = self.out.try_send(f)
        {
            retry();
        }
    }
}

/// A request to handle again on the connection's arbiter.
#[derive(Message)]
#[rtype(result = "()")]
struct RetryRequest {
    req: u64,
    body: Request,
}

impl Handler<RetryRequest> for WorkerConn {
    type Result = ();
    fn handle(&mut self, msg: RetryRequest, ctx: &mut Self::Context) {
        self.on_request(msg.req, msg.body, ctx);
    }
}

impl Actor for WorkerConn {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(worker = %self.wid, pid = self.pid, "worker connected");
        if let (Some(h), Some(args)) = (self.actor.as_ref(), self.actor_args.take())
            && let Some(f) = frame(
                self.pid,
                &ToWorker::CreateActor {
                    spec: h.spec.clone(),
                    args,
                },
            )
            && self.out.try_send(f).is_err()
        {
            tracing::error!(worker = %self.wid, "cannot send the actor to its worker");
        }
        if self.shared.is_none() {
            if let Some(f) = frame(
                self.pid,
                &ToWorker::Welcome {
                    node_id: self.ctx.node_id,
                },
            ) && self.out.try_send(f).is_err()
            {
                tracing::error!("cannot greet a driver");
            }
            return;
        }
        let _ = self.ctx.raylet_tx.send(RayletMsg::WorkerReady(self.wid));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.out.close();
        let removed = crate::worker::shm::remove_of(self.pid);
        if removed > 0 {
            tracing::debug!(
                pid = self.pid,
                removed,
                "removed unread shared-memory values"
            );
        }
        if let Some(s) = &self.shared {
            s.detach();
        } else {
            tracing::info!(pid = self.pid, "driver disconnected");
        }
        if let Some(job_id) = self.driver_job {
            self.ctx.raylet.do_send(crate::actors::raylet::JobEnded {
                job_id,
                broadcast: true,
            });
        }
        for (id, n) in self.held.drain() {
            for _ in 0..n {
                self.ctx.table.decref(id);
            }
        }
        if let Some(h) = self.actor.take() {
            // Calls submitted from now on queue in the route (the GCS restarts or kills it);
            // sent to this channel they would wait there for a process that is gone.
            h.route.restarting();
            let mut unfinished: Vec<QueuedCall> = std::mem::take(&mut self.inflight.lock().order)
                .into_values()
                .collect();
            if let Some(calls) = &h.calls {
                unfinished.extend(calls.close());
            }
            self.ctx.raylet.do_send(ActorExited {
                actor_id: h.spec.actor_id,
                reason: "its worker process died".to_string(),
                unfinished,
                host_worker: Some(self.wid),
            });
        }
        tracing::debug!(worker = %self.wid, "worker connection closed");
    }
}

impl StreamHandler<Result<BytesMut, std::io::Error>> for WorkerConn {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Self::Context) {
        let body = match item {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(worker = %self.wid, error = %e, "bad frame from a worker; dropping its connection");
                self.kill_process();
                ctx.stop();
                return;
            }
        };
        match protocol::decode_body::<FromWorker>(&body) {
            Ok(msg) => self.on_frame(msg, ctx),
            Err(e) => {
                tracing::warn!(worker = %self.wid, error = %e, "malformed frame from a worker; dropping its connection");
                self.kill_process();
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
