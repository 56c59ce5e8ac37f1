//! The node's actor directory: for every actor known here, where its calls go right now.
//!
//! A route is `Pending` while the actor is being created or restarted (calls queue in
//! submission order), `Alive` with an endpoint (calls go straight to the actor's host: a thread
//! of this process or a worker process), or `Dead` (calls fail at once with the reason).
//! Calls never pass through the raylet or the GCS, as in Ray's direct actor calls.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::Error;
use crate::ids::ActorId;
use crate::spec::ActorCall;
use crate::store::{ObjectTable, Pins};

/// A call on its way to an actor, holding its dependencies.
#[derive(Debug)]
pub(crate) struct QueuedCall {
    pub call: ActorCall,
    /// Held until the call is done: keeps its dependencies alive.
    pub _pins: Pins,
}

/// Messages to an actor host.
#[derive(Debug)]
pub(crate) enum HostMsg {
    Call(QueuedCall),
    /// Wakes a host to look at its stop flag.
    Wake,
}

/// Where an alive actor's calls go.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// The host's call channel: a thread host, or the connection to a worker process.
    Channel(flume::Sender<HostMsg>),
    /// The connection to the worker process that hosts the actor, which takes each call on
    /// the submitting thread when it can (`worker_conn`).
    Sink(Arc<dyn CallSink>),
    /// The actor lives on another node: calls go to this node's daemon's forwarders, which
    /// send them (in order) to `node`.
    Forward {
        node: crate::ids::NodeId,
        tx: Arc<dyn Forwarder>,
    },
}

/// Takes the calls of one actor hosted on this node, in the order submitted.
pub(crate) trait CallSink: Send + Sync + std::fmt::Debug {
    /// Takes `call` without waiting; gives it back when the host is gone.
    fn submit(&self, call: QueuedCall) -> Option<QueuedCall>;
    /// How many more calls it takes before a submitter should wait.
    fn room(&self) -> usize;
}

/// Takes calls to actors on other nodes (the daemon's side, `cluster::actors`).
pub(crate) trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Sends `call` on to `node`, after the calls to the same actor sent before it, without
    /// waiting (a call that cannot go fails with an actor-died error).
    fn forward(&self, node: crate::ids::NodeId, call: QueuedCall);
}

impl Endpoint {
    /// How many calls can be sent before `send` waits.
    fn room(&self) -> usize {
        let room =
            |cap: Option<usize>, len: usize| cap.map_or(usize::MAX, |c| c.saturating_sub(len));
        match self {
            Endpoint::Channel(tx) => room(tx.capacity(), tx.len()),
            Endpoint::Sink(sink) => sink.room(),
            // Forwarders queue without bound (as Ray's actor task submitter does).
            Endpoint::Forward { .. } => usize::MAX,
        }
    }

    /// Sends a call; gives it back when the host is gone.
    fn send(&self, q: QueuedCall) -> Option<QueuedCall> {
        match self {
            Endpoint::Channel(tx) => match tx.send(HostMsg::Call(q)) {
                Ok(()) => None,
                Err(e) => match e.0 {
                    HostMsg::Call(q) => Some(q),
                    HostMsg::Wake => None,
                },
            },
            Endpoint::Sink(sink) => sink.submit(q),
            Endpoint::Forward { node, tx } => {
                tx.forward(*node, q);
                None
            }
        }
    }
}

enum RouteState {
    Pending(Vec<QueuedCall>),
    Alive(Endpoint),
    Dead(Error),
}

/// The route of one actor.
pub(crate) struct ActorRoute {
    pub display: String,
    state: Mutex<RouteState>,
    table: Arc<ObjectTable>,
}

impl ActorRoute {
    /// How many calls `submit` takes before it waits (a pending or dead route never does).
    pub fn room(&self) -> usize {
        match &*self.state.lock() {
            RouteState::Alive(ep) => ep.room(),
            RouteState::Pending(_) | RouteState::Dead(_) => usize::MAX,
        }
    }

    /// Sends (or queues) a call.
    pub fn submit(&self, q: QueuedCall) {
        let ep = {
            let mut st = self.state.lock();
            match &mut *st {
                RouteState::Pending(queue) => {
                    queue.push(q);
                    return;
                }
                RouteState::Dead(e) => {
                    let e = e.clone();
                    drop(st);
                    fail_call(&self.table, q, &e);
                    return;
                }
                RouteState::Alive(ep) => ep.clone(),
            }
        };
        if let Some(q) = ep.send(q) {
            let e = Error::ActorDied {
                actor: self.display.clone(),
                reason: "the actor's host is gone".to_string(),
            };
            fail_call(&self.table, q, &e);
        }
    }

    /// The actor is up: later calls go to `ep`; returns the calls queued so far, which the
    /// host runs first.
    pub fn activate(&self, ep: Endpoint) -> Vec<QueuedCall> {
        let mut st = self.state.lock();
        match std::mem::replace(&mut *st, RouteState::Alive(ep)) {
            RouteState::Pending(q) => q,
            RouteState::Alive(_) => Vec::new(),
            RouteState::Dead(e) => {
                *st = RouteState::Dead(e);
                Vec::new()
            }
        }
    }

    /// The actor is up on another node: queued calls are forwarded first, under the route's
    /// lock, so that no later call overtakes them.
    pub fn activate_forward(&self, ep: Endpoint) {
        let mut st = self.state.lock();
        let queued = match std::mem::replace(&mut *st, RouteState::Alive(ep.clone())) {
            RouteState::Pending(q) => q,
            RouteState::Alive(_) => Vec::new(),
            RouteState::Dead(e) => {
                *st = RouteState::Dead(e);
                return;
            }
        };
        let mut lost = Vec::new();
        for q in queued {
            if let Some(q) = ep.send(q) {
                lost.push(q);
            }
        }
        drop(st);
        let e = Error::ActorDied {
            actor: self.display.clone(),
            reason: "this node's daemon is gone".to_string(),
        };
        for q in lost {
            fail_call(&self.table, q, &e);
        }
    }

    /// Puts calls back at the front of a pending route's queue (in their order); on a live or
    /// dead route they are submitted as usual.
    pub fn requeue_front(&self, calls: Vec<QueuedCall>) {
        let leftover = {
            let mut st = self.state.lock();
            match &mut *st {
                RouteState::Pending(queue) => {
                    let later = std::mem::take(queue);
                    queue.extend(calls);
                    queue.extend(later);
                    Vec::new()
                }
                _ => calls,
            }
        };
        for q in leftover {
            self.submit(q);
        }
    }

    /// Whether its calls are forwarded to `node`.
    pub fn forwards_to(&self, node: crate::ids::NodeId) -> bool {
        matches!(&*self.state.lock(), RouteState::Alive(Endpoint::Forward { node: n, .. }) if *n == node)
    }

    /// The actor is restarting: calls queue until it is up again.
    pub fn restarting(&self) {
        let mut st = self.state.lock();
        if matches!(*st, RouteState::Alive(_)) {
            *st = RouteState::Pending(Vec::new());
        }
    }

    /// The actor is dead for good: queued and later calls fail with `err`.
    pub fn kill(&self, err: Error) {
        let queued = {
            let mut st = self.state.lock();
            match std::mem::replace(&mut *st, RouteState::Dead(err.clone())) {
                RouteState::Pending(q) => q,
                _ => Vec::new(),
            }
        };
        for q in queued {
            fail_call(&self.table, q, &err);
        }
    }
}

/// Seals a call's return object with an error.
pub(crate) fn fail_call(table: &ObjectTable, q: QueuedCall, e: &Error) {
    seal_error(table, q.call.return_id, e);
}

/// Seals an object with an error value.
pub(crate) fn seal_error(table: &ObjectTable, id: crate::ids::ObjectId, e: &Error) {
    let data = crate::codec::encode(e).map(|e| e.data).unwrap_or_default();
    table.seal(id, data, Vec::new(), true);
}

/// All routes of this node.
pub(crate) struct ActorDirectory {
    routes: RwLock<HashMap<ActorId, Arc<ActorRoute>>>,
    table: Arc<ObjectTable>,
}

impl ActorDirectory {
    pub fn new(table: Arc<ObjectTable>) -> Self {
        Self {
            routes: RwLock::new(HashMap::new()),
            table,
        }
    }

    /// The route of `id`, creating a pending one if unknown.
    pub fn register(&self, id: ActorId, display: String) -> Arc<ActorRoute> {
        self.routes
            .write()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(ActorRoute {
                    display,
                    state: Mutex::new(RouteState::Pending(Vec::new())),
                    table: self.table.clone(),
                })
            })
            .clone()
    }

    /// The node's object table.
    pub fn table(&self) -> Arc<ObjectTable> {
        self.table.clone()
    }

    pub fn get(&self, id: &ActorId) -> Option<Arc<ActorRoute>> {
        self.routes.read().get(id).cloned()
    }

    /// The routes whose calls are forwarded to `node`.
    pub fn forwarding_to(&self, node: crate::ids::NodeId) -> Vec<(ActorId, Arc<ActorRoute>)> {
        self.routes
            .read()
            .iter()
            .filter(|(_, r)| r.forwards_to(node))
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }

    /// Every route (for shutdown).
    pub fn all(&self) -> Vec<Arc<ActorRoute>> {
        self.routes.read().values().cloned().collect()
    }
}
