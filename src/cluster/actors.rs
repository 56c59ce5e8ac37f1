//! Actors across nodes, on the daemon's side.
//!
//! The node whose raylet places an actor on another node owns the actor's record (its GCS)
//! and forwards the actor's calls there; the other node creates the actor in its own runtime,
//! hosts and restarts it (under its own `max_restarts`), and runs the calls it is sent.
//!
//! - Placement: the owner sends `CreateActor`; the host answers `Accepted` at once and, once
//!   the actor is registered with its GCS (its calls queue there until the constructor ran),
//!   sends `ActorPlaced` back, which activates the owner's route as `Endpoint::Forward`.
//! - Calls: one forwarder task per (host node, actor) takes the route's calls in submission
//!   order, waits for their dependencies, and sends them in batches (`ActorCalls`), one batch
//!   in flight at a time, so they arrive in order without sequence numbers. The host submits
//!   each batch to the actor's local route before it answers. Each result comes back as a
//!   `TaskFinished` (large ones are pulled in parts), which the owner seals into its store.
//! - Failures: a batch that cannot be delivered fails its calls with an actor-died error; when
//!   the host node dies, its calls in flight fail the same way and the owner's GCS restarts
//!   the actor (on any node) if `max_restarts` allows.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{ClusterMsg, decode, encode, pull_object};
use crate::actors::directory::{QueuedCall, fail_call, seal_error};
use crate::error::Error;
use crate::ids::{ActorId, NodeId, ObjectId};
use crate::net::NetHandle;
use crate::spec::{ActorCall, TaskArg};
use crate::store::ObjectTable;

/// Calls in one `ActorCalls` batch, at most.
const BATCH: usize = 512;

/// Calls this node forwarded to actors on other nodes, until their results arrive.
#[derive(Default)]
pub(super) struct Outgoing {
    calls: Mutex<HashMap<ObjectId, (NodeId, QueuedCall)>>,
    forwarders: Mutex<HashMap<(NodeId, ActorId), flume::Sender<QueuedCall>>>,
}

impl Outgoing {
    /// Hands a call to the forwarder of its actor on `node`, starting one if needed.
    pub fn forward(
        self: &Arc<Self>,
        node: NodeId,
        peer: Option<libp2p::PeerId>,
        q: QueuedCall,
        net: &NetHandle,
        table: &Arc<ObjectTable>,
    ) {
        let key = (node, q.call.actor_id);
        let tx = {
            let mut f = self.forwarders.lock();
            match f.get(&key) {
                Some(tx) if !tx.is_disconnected() => tx.clone(),
                _ => {
                    let Some(peer) = peer else {
                        drop(f);
                        let e = died(&q.call, format!("node {node} is not reachable"));
                        fail_call(table, q, &e);
                        return;
                    };
                    let (tx, rx) = flume::unbounded();
                    f.insert(key, tx.clone());
                    tokio::spawn(self.clone().forward_loop(
                        node,
                        peer,
                        rx,
                        net.clone(),
                        table.clone(),
                    ));
                    tx
                }
            }
        };
        if let Err(e) = tx.send(q) {
            let q = e.into_inner();
            let err = died(&q.call, "its forwarder stopped".to_string());
            fail_call(table, q, &err);
        }
    }

    async fn forward_loop(
        self: Arc<Self>,
        node: NodeId,
        peer: libp2p::PeerId,
        rx: flume::Receiver<QueuedCall>,
        net: NetHandle,
        table: Arc<ObjectTable>,
    ) {
        while let Ok(first) = rx.recv_async().await {
            let mut batch = vec![first];
            while batch.len() < BATCH
                && let Ok(q) = rx.try_recv()
            {
                batch.push(q);
            }
            let mut calls = Vec::with_capacity(batch.len());
            let mut sent = Vec::with_capacity(batch.len());
            for q in batch {
                for dep in q.call.deps() {
                    if !table.is_ready(&dep) {
                        crate::store::sealed(&table, dep).await;
                    }
                }
                match crate::actors::raylet::inline_args(&table, &q.call.args) {
                    Ok(args) => {
                        let mut call = q.call.clone();
                        call.args = args;
                        calls.push(call);
                        sent.push(q.call.return_id);
                        self.calls.lock().insert(q.call.return_id, (node, q));
                    }
                    Err(e) => fail_call(&table, q, &e),
                }
            }
            if calls.is_empty() {
                continue;
            }
            let reply = net
                .request(peer, encode(&ClusterMsg::ActorCalls { calls }))
                .await
                .map_err(Error::runtime)
                .and_then(|b| decode(&b).map_err(Error::runtime));
            let failure = match reply {
                Ok(ClusterMsg::Accepted) => None,
                Ok(other) => Some(format!("node {node} answered {other:?}")),
                Err(e) => Some(format!("node {node} could not be reached: {e}")),
            };
            if let Some(reason) = failure {
                tracing::warn!(node = %node, reason = %reason, "forwarding actor calls failed");
                for id in sent {
                    if let Some((_, q)) = self.calls.lock().remove(&id) {
                        let e = died(&q.call, reason.clone());
                        fail_call(&table, q, &e);
                    }
                }
            }
        }
    }

    /// The call whose result is `return_id`, if this node forwarded it.
    pub fn take(&self, return_id: &ObjectId) -> Option<QueuedCall> {
        self.calls.lock().remove(return_id).map(|(_, q)| q)
    }

    /// `node` died: its calls in flight fail, its forwarders stop.
    pub fn node_died(&self, node: NodeId, table: &ObjectTable) {
        self.forwarders.lock().retain(|(n, _), _| *n != node);
        let lost: Vec<QueuedCall> = {
            let mut calls = self.calls.lock();
            let ids: Vec<ObjectId> = calls
                .iter()
                .filter(|(_, (n, _))| *n == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| calls.remove(&id).map(|(_, q)| q))
                .collect()
        };
        for q in lost {
            let e = died(&q.call, format!("its node {node} died"));
            fail_call(table, q, &e);
        }
    }
}

fn died(call: &ActorCall, reason: String) -> Error {
    Error::ActorDied {
        actor: call
            .name
            .split('.')
            .next()
            .unwrap_or(&call.name)
            .to_string(),
        reason,
    }
}

/// Seals a forwarded call's result into this node's store.
pub(super) fn seal_forwarded(
    table: &ObjectTable,
    q: QueuedCall,
    result: Result<crate::worker::protocol::WireValue, Error>,
) {
    match result {
        Ok(v) => {
            table.seal(q.call.return_id, v.data, v.nested, false);
        }
        Err(e) => seal_error(table, q.call.return_id, &e),
    }
}

/// Prepares calls sent here by `origin`: arguments this node lacks become pending objects
/// pulled from `origin` in the background (the actor's host waits for them). Returns the
/// objects this node must release once each call is done.
pub(super) fn prepare_calls(
    calls: &[ActorCall],
    table: &Arc<ObjectTable>,
    net: &NetHandle,
    origin: libp2p::PeerId,
) -> Vec<Vec<ObjectId>> {
    calls
        .iter()
        .map(|c| {
            let mut held = Vec::new();
            for a in &c.args {
                let TaskArg::Ref(id) = a else { continue };
                match table.lookup(id) {
                    crate::store::Lookup::Missing => {
                        table.create_pending(*id);
                        let (table, net, id) = (table.clone(), net.clone(), *id);
                        tokio::spawn(async move {
                            if let Err(e) = pull_object(&net, origin, &table, id).await {
                                seal_error(&table, id, &e);
                            }
                        });
                    }
                    _ => table.incref(*id),
                }
                held.push(*id);
            }
            held
        })
        .collect()
}

/// Creates here an actor that `origin` placed on this node.
pub(super) async fn create_here(
    rt: &crate::Runtime,
    raylet: Option<actix::Addr<crate::actors::raylet::Raylet>>,
    net: &NetHandle,
    origin: libp2p::PeerId,
    mut spec: crate::spec::ActorSpec,
    launch: crate::worker::process::JobLaunch,
) -> Result<(), Error> {
    let raylet = raylet.ok_or_else(|| Error::runtime("this node has no raylet"))?;
    let table = rt
        .core()
        .object_table()
        .ok_or_else(|| Error::runtime("this node has no object store"))?;
    raylet
        .send(crate::actors::raylet::RegisterJob {
            job_id: spec.job_id,
            launch,
        })
        .await
        .map_err(Error::runtime)?;
    let pulled = super::pull_args(net, origin, &table, &spec.args).await?;
    // It was placed here: it lives here (restarts too), unless it belongs in a bundle. Its
    // name is the owner's business.
    if !matches!(
        spec.strategy,
        crate::SchedulingStrategy::PlacementGroup { .. }
    ) {
        spec.strategy = crate::SchedulingStrategy::NodeAffinity {
            node: rt.node_id(),
            soft: false,
        };
    }
    spec.name = None;
    let core = rt.core().clone();
    let created = tokio::task::spawn_blocking(move || core.create_actor(spec))
        .await
        .map_err(Error::runtime)
        .and_then(|r| r);
    // The raylet pins the constructor's arguments when it takes the creation, which the GCS
    // sent it before answering: one round trip through its mailbox later, ours can go.
    let _ = raylet.send(crate::actors::raylet::GetResources).await;
    super::release_all(&table, &pulled);
    created
}
