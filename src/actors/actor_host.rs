//! The actor host: the actix actor that owns one user actor instance and runs its method
//! calls. In thread mode each host has its own arbiter (its own OS thread), so user code never
//! runs on a system actor's thread; in process mode the same host runs inside a worker process.
//!
//! Calls run in the order they arrive. A sync actor runs one call at a time; an async actor
//! starts calls in order and lets up to `max_concurrency` of them interleave at `.await`s.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;

use crate::actors::directory::{ActorRoute, Endpoint, HostMsg, QueuedCall, seal_error};
use crate::error::Error;
use crate::registry::{self, ActorInstance, MethodOutcome, UserError};
use crate::spec::ActorSpec;
use crate::store::ObjectTable;
use crate::worker::thread::resolve_args;
use crate::worker::user_error;

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

struct Shared {
    spec: ActorSpec,
    table: Arc<ObjectTable>,
    instance: RefCell<Box<dyn ActorInstance>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Hosts one actor instance.
pub(crate) struct ActorHost {
    spec: ActorSpec,
    table: Arc<ObjectTable>,
    route: Arc<ActorRoute>,
    events: Box<dyn HostEvents>,
    ctor_args: Option<Vec<Bytes>>,
    rx: Option<flume::Receiver<HostMsg>>,
}

impl ActorHost {
    pub(crate) fn new(
        spec: ActorSpec,
        ctor_args: Vec<Bytes>,
        table: Arc<ObjectTable>,
        route: Arc<ActorRoute>,
        events: Box<dyn HostEvents>,
    ) -> Self {
        Self {
            spec,
            table,
            route,
            events,
            ctor_args: Some(ctor_args),
            rx: None,
        }
    }

    fn construct(&mut self) -> Result<Box<dyn ActorInstance>, Error> {
        let class = registry::actor_class(&self.spec.class)
            .ok_or_else(|| Error::NotRegistered(self.spec.class.clone()))?;
        let args = self.ctor_args.take().unwrap_or_default();
        let name = format!("{}::{}", self.spec.class_name, self.spec.ctor);
        match catch_unwind(AssertUnwindSafe(|| {
            (class.construct)(&self.spec.ctor, args)
        })) {
            Ok(Ok(i)) => Ok(i),
            Ok(Err(e)) => Err(user_error(&name, e).0),
            Err(p) => Err(user_error(&name, UserError::Panicked(registry::panic_message(&*p))).0),
        }
    }
}

fn seal_result(table: &ObjectTable, q: &QueuedCall, r: Result<crate::codec::Encoded, UserError>) {
    match r {
        Ok(enc) => {
            table.seal(q.call.return_id, enc.data, enc.nested, false);
        }
        Err(e) => seal_error(table, q.call.return_id, &user_error(&q.call.name, e).0),
    }
}

fn panic_result(p: Box<dyn std::any::Any + Send>) -> Result<crate::codec::Encoded, UserError> {
    Err(UserError::Panicked(registry::panic_message(&*p)))
}

async fn run_call(sh: Rc<Shared>, q: QueuedCall) {
    for dep in q.call.deps() {
        if !sh.table.is_ready(&dep) {
            crate::store::sealed(&sh.table, dep).await;
        }
    }
    let args = match resolve_args(&sh.table, &q.call.args) {
        Ok(a) => a,
        Err(e) => {
            seal_error(&sh.table, q.call.return_id, &e);
            return;
        }
    };
    let permit = if sh.spec.is_async {
        sh.permits.clone().acquire_owned().await.ok()
    } else {
        None
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        sh.instance.borrow_mut().call(&q.call.method, args)
    }));
    match outcome {
        Err(p) => seal_result(&sh.table, &q, panic_result(p)),
        Ok(MethodOutcome::Done(r)) => seal_result(&sh.table, &q, r),
        Ok(MethodOutcome::Pending(fut)) => {
            let table = sh.table.clone();
            let finish = async move {
                let r = AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(panic_result);
                seal_result(&table, &q, r);
                drop(permit);
            };
            if sh.spec.is_async {
                actix_rt::spawn(finish);
            } else {
                finish.await;
            }
        }
    }
}

impl Actor for ActorHost {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let instance = match self.construct() {
            Ok(i) => i,
            Err(e) => {
                self.events.started(&self.spec, Err(e));
                ctx.stop();
                return;
            }
        };
        let (tx, rx) = flume::bounded(HOST_CHANNEL);
        let pending = self.route.activate(Endpoint::Channel(tx));
        self.rx = Some(rx.clone());
        self.events.started(&self.spec, Ok(std::process::id()));
        let sh = Rc::new(Shared {
            spec: self.spec.clone(),
            table: self.table.clone(),
            instance: RefCell::new(instance),
            permits: Arc::new(tokio::sync::Semaphore::new(
                self.spec.max_concurrency.max(1),
            )),
        });
        let lp = async move {
            for q in pending {
                run_call(sh.clone(), q).await;
            }
            while let Ok(HostMsg::Call(q)) = rx.recv_async().await {
                run_call(sh.clone(), q).await;
            }
        };
        ctx.spawn(actix::fut::wrap_future(lp));
    }
}

impl Handler<HostControl> for ActorHost {
    type Result = ();
    fn handle(&mut self, msg: HostControl, ctx: &mut Self::Context) {
        match msg {
            HostControl::Stop => {
                let unfinished: Vec<QueuedCall> = self
                    .rx
                    .as_ref()
                    .map(|rx| {
                        rx.try_iter()
                            .map(|m| match m {
                                HostMsg::Call(q) => q,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.events
                    .exited(&self.spec, "it was killed".to_string(), unfinished);
                ctx.stop();
            }
        }
    }
}

/// Starts a host on a new arbiter (its own thread).
pub(crate) fn spawn_thread_host(
    spec: ActorSpec,
    args: Vec<Bytes>,
    table: Arc<ObjectTable>,
    route: Arc<ActorRoute>,
    raylet: Addr<crate::actors::raylet::Raylet>,
) -> (Addr<ActorHost>, actix::ArbiterHandle) {
    let arb = Arbiter::new();
    let handle = arb.handle();
    let host = ActorHost::new(spec, args, table, route, Box::new(raylet));
    let addr = ActorHost::start_in_arbiter(&handle, move |_| host);
    (addr, handle)
}
