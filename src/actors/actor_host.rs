//! The actor host: the actix actor that owns one user actor's life on this node. The instance
//! itself lives on a dedicated OS thread (user code never runs on an actor system thread): a
//! sync actor's thread runs calls one at a time, an async actor's thread runs a single-threaded
//! event loop that starts calls in order and lets up to `max_concurrency` of them interleave at
//! `.await`s. Calls come straight from callers over a bounded channel (see the directory).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use bytes::Bytes;

use crate::actors::directory::{ActorRoute, Endpoint, HostMsg, QueuedCall, seal_error};
use crate::actors::history::TaskLog;
use crate::error::Error;
use crate::registry::{ActorInstance, UserError};
use crate::spec::ActorSpec;
use crate::store::ObjectTable;
use crate::worker::thread::{resolve_args, resolve_args_off_thread};
use crate::worker::{CallStart, construct_actor, event_loop, start_call, user_error};

/// Capacity of a host's call channel: callers block (back-pressure) past it.
pub(crate) const HOST_CHANNEL: usize = 65_536;

/// Where a host reports its start and its end.
pub(crate) trait HostEvents: Send + 'static {
    fn started(&self, spec: &ActorSpec, result: Result<u32, Error>);
    fn exited(&self, spec: &ActorSpec, reason: String, unfinished: Vec<QueuedCall>);
}

impl HostEvents for Addr<crate::actors::raylet::Raylet> {
    fn started(&self, spec: &ActorSpec, result: Result<u32, Error>) {
        self.do_send(crate::actors::raylet::ActorStarted {
            actor_id: spec.actor_id,
            result,
        });
    }
    fn exited(&self, spec: &ActorSpec, reason: String, unfinished: Vec<QueuedCall>) {
        self.do_send(crate::actors::raylet::ActorExited {
            actor_id: spec.actor_id,
            reason,
            unfinished,
            host_worker: None,
        });
    }
}

/// Control messages.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum HostControl {
    /// Stop after the current call; hand back the calls not yet run.
    Stop,
}

/// What the instance thread reports.
#[derive(Message)]
#[rtype(result = "()")]
enum ThreadEvent {
    Started(Result<u32, Error>),
    Exited(Vec<QueuedCall>),
}

/// Hosts one actor instance.
pub(crate) struct ActorHost {
    spec: ActorSpec,
    events: Box<dyn HostEvents>,
    stop: Arc<AtomicBool>,
    wake: Option<flume::Sender<HostMsg>>,
    launch: Option<Launch>,
}

struct Launch {
    args: Vec<Bytes>,
    table: Arc<ObjectTable>,
    route: Arc<ActorRoute>,
    history: Arc<TaskLog>,
}

fn seal_result(
    table: &ObjectTable,
    history: &TaskLog,
    q: &QueuedCall,
    r: Result<crate::codec::Encoded, UserError>,
) {
    match r {
        Ok(enc) => {
            history.ended(q.call.task_id, q.call.attempt, Ok(()));
            table.seal(q.call.return_id, enc.data, enc.nested, false);
        }
        Err(e) => {
            let e = user_error(&q.call.name, e).0;
            history.ended(q.call.task_id, q.call.attempt, Err(&e));
            seal_error(table, q.call.return_id, &e);
        }
    }
}

/// Waits for a call's dependencies (blocking this thread) and resolves its arguments.
fn args_blocking(table: &ObjectTable, q: &QueuedCall) -> Option<Vec<Bytes>> {
    let pending: Vec<_> = q.call.deps().filter(|d| !table.is_ready(d)).collect();
    if !pending.is_empty() {
        crate::store::block_until(table, &pending, pending.len(), None);
    }
    match resolve_args(table, &q.call.args) {
        Ok(a) => Some(a),
        Err(e) => {
            seal_error(table, q.call.return_id, &e);
            None
        }
    }
}

enum Step {
    Run(QueuedCall),
    Skip,
    Finish(Vec<QueuedCall>),
}

struct Instance {
    spec: ActorSpec,
    table: Arc<ObjectTable>,
    history: Arc<TaskLog>,
    stop: Arc<AtomicBool>,
    rx: flume::Receiver<HostMsg>,
}

impl Instance {
    /// The calls still waiting in the channel.
    fn drain(&self) -> Vec<QueuedCall> {
        self.rx
            .try_iter()
            .filter_map(|m| match m {
                HostMsg::Call(q) => Some(q),
                HostMsg::Wake => None,
            })
            .collect()
    }

    /// The next call to run: from the calls queued before the host started, else the message
    /// just received. Once the stop flag is set, everything not run yet is handed back.
    fn step(
        &self,
        queue: &mut std::vec::IntoIter<QueuedCall>,
        received: Option<Result<HostMsg, flume::RecvError>>,
    ) -> Step {
        let q = match received {
            None => queue.next(),
            Some(Ok(HostMsg::Call(q))) => Some(q),
            Some(Ok(HostMsg::Wake) | Err(_)) => None,
        };
        let stopping = self.stop.load(Ordering::Acquire);
        match q {
            Some(q) if !stopping => Step::Run(q),
            None if !stopping && !self.rx.is_disconnected() => Step::Skip,
            q => {
                let mut rest: Vec<QueuedCall> = q.into_iter().collect();
                rest.extend(queue.by_ref());
                rest.extend(self.drain());
                Step::Finish(rest)
            }
        }
    }

    fn run_sync(
        &self,
        mut inst: Box<dyn ActorInstance>,
        pending: Vec<QueuedCall>,
    ) -> Vec<QueuedCall> {
        let mut queue = pending.into_iter();
        loop {
            let next = match queue.as_slice().is_empty() {
                true => Some(self.rx.recv()),
                false => None,
            };
            let q = match self.step(&mut queue, next) {
                Step::Run(q) => q,
                Step::Skip => continue,
                Step::Finish(rest) => return rest,
            };
            let Some(args) = args_blocking(&self.table, &q) else {
                continue;
            };
            let pid = std::process::id();
            self.history
                .call_started(&q.call, Some(self.spec.job_id), pid);
            let r = crate::worker::call_blocking(inst.as_mut(), &q.call.method, args);
            seal_result(&self.table, &self.history, &q, r);
        }
    }

    fn run_async(&self, inst: Box<dyn ActorInstance>, pending: Vec<QueuedCall>) -> Vec<QueuedCall> {
        let (rt, local) = match event_loop() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot start an async actor's event loop");
                return self.drain();
            }
        };
        let inst = Rc::new(RefCell::new(inst));
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.spec.max_concurrency.max(1),
        ));
        // Calls started and not finished: when the actor stops, they fail instead of being
        // dropped with the event loop.
        let running: Rc<
            RefCell<std::collections::HashMap<crate::ids::TaskId, (crate::ids::ObjectId, String)>>,
        > = Rc::default();
        let running2 = running.clone();
        let rest = local.block_on(&rt, async move {
            let mut queue = pending.into_iter();
            loop {
                let next = match queue.as_slice().is_empty() {
                    true => Some(self.rx.recv_async().await),
                    false => None,
                };
                let q = match self.step(&mut queue, next) {
                    Step::Run(q) => q,
                    Step::Skip => continue,
                    Step::Finish(rest) => break rest,
                };
                for dep in q.call.deps() {
                    if !self.table.is_ready(&dep) {
                        crate::store::sealed(&self.table, dep).await;
                    }
                }
                // Spilled arguments are read off the event loop: its other calls go on.
                let args = match resolve_args_off_thread(&self.table, &q.call.args).await {
                    Ok(a) => a,
                    Err(e) => {
                        seal_error(&self.table, q.call.return_id, &e);
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break Vec::new();
                };
                self.history
                    .call_started(&q.call, Some(self.spec.job_id), std::process::id());
                let started = start_call(&mut **inst.borrow_mut(), &q.call.method, args);
                let table = self.table.clone();
                let history = self.history.clone();
                running2
                    .borrow_mut()
                    .insert(q.call.task_id, (q.call.return_id, q.call.name.clone()));
                let running3 = running2.clone();
                tokio::task::spawn_local(async move {
                    let r = match started {
                        CallStart::Done(r) => r,
                        CallStart::Running(f) => f.await,
                    };
                    seal_result(&table, &history, &q, r);
                    running3.borrow_mut().remove(&q.call.task_id);
                    drop(permit);
                });
            }
        });
        drop(local);
        for (_, (return_id, name)) in running.borrow_mut().drain() {
            seal_error(
                &self.table,
                return_id,
                &Error::ActorDied {
                    actor: self.spec.display(),
                    reason: format!("it stopped while {name} was running"),
                },
            );
        }
        rest
    }
}

impl ActorHost {
    pub(crate) fn new(
        spec: ActorSpec,
        args: Vec<Bytes>,
        table: Arc<ObjectTable>,
        route: Arc<ActorRoute>,
        history: Arc<TaskLog>,
        events: Box<dyn HostEvents>,
    ) -> Self {
        Self {
            spec,
            events,
            stop: Arc::new(AtomicBool::new(false)),
            wake: None,
            launch: Some(Launch {
                args,
                table,
                route,
                history,
            }),
        }
    }
}

impl Actor for ActorHost {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(Launch {
            args,
            table,
            route,
            history,
        }) = self.launch.take()
        else {
            return;
        };
        let (tx, rx) = flume::bounded(HOST_CHANNEL);
        self.wake = Some(tx.clone());
        let me = ctx.address();
        let spec = self.spec.clone();
        let stop = self.stop.clone();
        let name = format!("mobula-actor-{}", self.spec.class_name);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let inst = match construct_actor(&spec, args) {
                Ok(i) => i,
                Err(e) => {
                    me.do_send(ThreadEvent::Started(Err(e)));
                    return;
                }
            };
            let pending = route.activate(Endpoint::Channel(tx));
            me.do_send(ThreadEvent::Started(Ok(std::process::id())));
            let runner = Instance {
                spec: spec.clone(),
                table,
                history,
                stop,
                rx,
            };
            let unfinished = if spec.is_async {
                runner.run_async(inst, pending)
            } else {
                runner.run_sync(inst, pending)
            };
            me.do_send(ThreadEvent::Exited(unfinished));
        });
        if let Err(e) = spawned {
            self.events.started(
                &self.spec,
                Err(Error::runtime(format!(
                    "cannot start the actor's thread: {e}"
                ))),
            );
            ctx.stop();
        }
    }
}

impl Handler<ThreadEvent> for ActorHost {
    type Result = ();
    fn handle(&mut self, msg: ThreadEvent, ctx: &mut Self::Context) {
        match msg {
            ThreadEvent::Started(r) => {
                let failed = r.is_err();
                self.events.started(&self.spec, r);
                if failed {
                    ctx.stop();
                }
            }
            ThreadEvent::Exited(unfinished) => {
                self.events
                    .exited(&self.spec, "it was killed".to_string(), unfinished);
                ctx.stop();
            }
        }
    }
}

impl Handler<HostControl> for ActorHost {
    type Result = ();
    fn handle(&mut self, msg: HostControl, _ctx: &mut Self::Context) {
        match msg {
            HostControl::Stop => {
                self.stop.store(true, Ordering::Release);
                if let Some(w) = &self.wake {
                    // A full channel means the thread is busy: it sees the flag at its next call.
                    let _ = w.try_send(HostMsg::Wake);
                }
            }
        }
    }
}

/// Starts a host on `arbiter`; its instance gets a thread of its own.
pub(crate) fn spawn_thread_host(
    arbiter: &actix::ArbiterHandle,
    spec: ActorSpec,
    args: Vec<Bytes>,
    table: Arc<ObjectTable>,
    route: Arc<ActorRoute>,
    history: Arc<TaskLog>,
    raylet: Addr<crate::actors::raylet::Raylet>,
) -> Addr<ActorHost> {
    let host = ActorHost::new(spec, args, table, route, history, Box::new(raylet));
    ActorHost::start_in_arbiter(arbiter, move |_| host)
}
