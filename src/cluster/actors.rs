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
//! - Names and owners: the head's GCS keeps the cluster-wide table of names (claimed by
//!   other nodes before they register a named actor) and of actor owners. A node that misses
//!   a name or an actor id locally asks the head, then routes the actor's calls to its owner
//!   (`Endpoint::Forward`), which runs or forwards them in turn.
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
use crate::spec::ActorCall;
use crate::store::ObjectTable;

/// How long routes to a dead owner's actors wait for the head to name a new owner.
const REROUTE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the head may go on naming a dead node as an actor's owner before its routes fail
/// (the actor's host takes a detached actor over once it too sees the owner dead).
const TAKE_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Calls in one `ActorCalls` batch, at most.
const BATCH: usize = 512;

/// Calls this node forwarded to actors on other nodes, until their results arrive.
#[derive(Default)]
pub(super) struct Outgoing {
    calls: Mutex<HashMap<ObjectId, (NodeId, QueuedCall)>>,
    forwarders: Mutex<HashMap<(NodeId, ActorId), flume::Sender<QueuedCall>>>,
    /// Nodes declared dead and not heard from since: calls to them fail at once (a lane to a
    /// killed peer can still take a write, whose result would never come).
    dead: Mutex<std::collections::HashSet<NodeId>>,
    /// The libp2p peer of each node this daemon can reach (the event loop's view, mirrored).
    peers: Mutex<HashMap<NodeId, libp2p::PeerId>>,
}

/// The daemon's `Forwarder`: a call is handed to its actor's forwarder on the thread that
/// submits it. A forwarder task starts on the runtime of the thread that sends its first call
/// (the arbiter of the node's worker and driver connections, mostly), or on the daemon's
/// event loop from a thread outside any runtime; sent from the same thread, a call wakes no
/// other thread before it is on the lane.
#[derive(Debug)]
pub(super) struct Forwarding {
    pub outgoing: Arc<Outgoing>,
    pub net: NetHandle,
    pub table: Arc<ObjectTable>,
    pub home: tokio::runtime::Handle,
}

impl crate::actors::directory::Forwarder for Forwarding {
    fn forward(&self, node: NodeId, call: QueuedCall) {
        let peer = self.outgoing.peer_of(node);
        self.outgoing
            .forward(node, peer, call, &self.net, &self.table, &self.home);
    }
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("calls", &self.calls.lock().len())
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// The libp2p peer of `node`, if this daemon can reach it.
    pub fn peer_of(&self, node: NodeId) -> Option<libp2p::PeerId> {
        self.peers.lock().get(&node).copied()
    }

    /// `node` (hex id) is reached through `peer`.
    pub fn set_peer(&self, node: &str, peer: libp2p::PeerId) {
        if let Some(id) = NodeId::parse(node) {
            self.peers.lock().insert(id, peer);
        }
    }

    /// Hands a call to the forwarder of its actor on `node`, starting one if needed.
    pub fn forward(
        self: &Arc<Self>,
        node: NodeId,
        peer: Option<libp2p::PeerId>,
        q: QueuedCall,
        net: &NetHandle,
        table: &Arc<ObjectTable>,
        home: &tokio::runtime::Handle,
    ) {
        if self.dead.lock().contains(&node) {
            let e = died(&q.call, format!("its node {node} died"));
            fail_call(table, q, &e);
            return;
        }
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
                    let run = self
                        .clone()
                        .forward_loop(node, peer, rx, net.clone(), table.clone());
                    crate::spawn_here(home, run);
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
                let mut call = q.call.clone();
                match crate::actors::raylet::inline_args(&table, &mut call.args, &mut call.nested) {
                    Ok(()) => {
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
            tracing::debug!(node = %node, calls = calls.len(), "forwarding actor calls");
            // On a lane, in order with the batches before it; else a request, answered once
            // the host queued the calls.
            let reply = super::lane::send(&net, peer, &ClusterMsg::ActorCalls { calls }).await;
            let failure = match reply {
                Ok(None | Some(ClusterMsg::Accepted)) => None,
                Ok(Some(other)) => Some(format!("node {node} answered {other:?}")),
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

    /// `node` was heard from again (after a partition healed): calls go to it again.
    pub fn node_alive(&self, node: NodeId) {
        let mut dead = self.dead.lock();
        if !dead.is_empty() {
            dead.remove(&node);
        }
    }

    /// The call whose result is `return_id`, if this node forwarded it.
    pub fn take(&self, return_id: &ObjectId) -> Option<QueuedCall> {
        self.calls.lock().remove(return_id).map(|(_, q)| q)
    }

    /// `node` died: its calls in flight fail, its forwarders stop.
    pub fn node_died(&self, node: NodeId, table: &ObjectTable) {
        self.dead.lock().insert(node);
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
            for id in c.deps() {
                match table.peek(&id) {
                    crate::store::Peek::Missing => {
                        table.create_pending(id);
                        let (table, net) = (table.clone(), net.clone());
                        tokio::spawn(async move {
                            if let Err(e) = pull_object(&net, origin, &table, id).await {
                                seal_error(&table, id, &e);
                            }
                        });
                    }
                    _ => table.incref(id),
                }
                held.push(id);
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
    table: &ObjectTable,
) -> Result<(), Error> {
    let raylet = raylet.ok_or_else(|| Error::runtime("this node has no raylet"))?;
    raylet
        .send(crate::actors::raylet::RegisterJob {
            job_id: spec.job_id,
            launch,
        })
        .await
        .map_err(Error::runtime)?;
    let pulled = super::pull_args(net, origin, table, spec.deps()).await?;
    // It was placed here: it lives here (restarts too), unless it belongs in a bundle. Its
    // name is the owner's business.
    super::pin_here(&mut spec.strategy, rt.node_id());
    spec.hosted_name = spec.name.take();
    spec.owned_elsewhere = true;
    let core = rt.core().clone();
    let created = tokio::task::spawn_blocking(move || core.create_actor(spec))
        .await
        .map_err(Error::runtime)
        .and_then(|r| r);
    // The raylet pins the constructor's arguments when it takes the creation, which the GCS
    // sent it before answering: one round trip through its mailbox later, ours can go.
    let _ = raylet.send(crate::actors::raylet::GetResources).await;
    super::release_all(table, &pulled);
    created
}

/// Answers a node's questions about names and owners, on any node (asking the head) and on
/// the head (from its GCS).
#[derive(Clone)]
pub(super) struct Names {
    pub gcs: actix::Addr<crate::actors::gcs::Gcs>,
    pub directory: Arc<crate::actors::directory::ActorDirectory>,
    pub calls: Arc<dyn crate::actors::directory::Forwarder>,
    pub me: NodeId,
    pub is_head: bool,
}

impl Names {
    /// On the head: the answer to a name or owner request.
    pub async fn head_answer(&self, msg: ClusterMsg) -> ClusterMsg {
        use crate::actors::gcs;
        let mailbox =
            |e: actix::MailboxError| Error::runtime(format!("the gcs is unreachable: {e}"));
        let here = |at: Option<gcs::ActorAt>| {
            ClusterMsg::Found(at.map(|mut a| {
                a.owner = Some(a.owner.unwrap_or(self.me));
                a
            }))
        };
        match msg {
            ClusterMsg::ClaimName {
                namespace,
                name,
                actor_id,
                class,
                owner,
            } => ClusterMsg::Claimed(
                self.gcs
                    .send(gcs::ClaimName {
                        namespace,
                        name,
                        actor_id,
                        class,
                        owner,
                    })
                    .await
                    .map_err(mailbox)
                    .and_then(|r| r),
            ),
            ClusterMsg::ReleaseName {
                namespace,
                name,
                actor_id,
            } => {
                self.gcs.do_send(gcs::ReleaseName {
                    namespace,
                    name,
                    actor_id,
                });
                ClusterMsg::Released
            }
            ClusterMsg::ActorOwned { actor_id, owner } => {
                self.gcs.do_send(gcs::RecordOwner { actor_id, owner });
                ClusterMsg::Released
            }
            ClusterMsg::LookupName { namespace, name } => here(
                self.gcs
                    .send(gcs::FindNamed { namespace, name })
                    .await
                    .ok()
                    .flatten(),
            ),
            ClusterMsg::LookupActor(id) => {
                here(self.gcs.send(gcs::FindOwner(id)).await.ok().flatten())
            }
            ClusterMsg::Kv(op) => ClusterMsg::KvDone(
                self.gcs
                    .send(gcs::Kv(op))
                    .await
                    .map_err(mailbox)
                    .and_then(|r| r),
            ),
            other => ClusterMsg::TaskResult(Err(Error::runtime(format!(
                "not a name request: {other:?}"
            )))),
        }
    }

    /// Tells a restarted head again which actors this node owns and which names they hold
    /// (the head keeps those in memory). A name another actor claimed meanwhile stays
    /// theirs; that is logged.
    pub async fn reclaim(self, net: NetHandle, head: libp2p::PeerId) {
        use crate::actors::gcs::{ActorState, ListActors};
        let Ok(actors) = self.gcs.send(ListActors).await else {
            return;
        };
        let mut told = 0usize;
        for a in actors
            .iter()
            .filter(|a| !a.spec.owned_elsewhere && !matches!(a.state, ActorState::Dead))
        {
            let actor_id = a.spec.actor_id;
            let owned = ClusterMsg::ActorOwned {
                actor_id,
                owner: self.me,
            };
            if let Err(e) = net.request(head, encode(&owned)).await {
                tracing::warn!(actor = %actor_id, error = %e, "could not tell the restarted head of an actor");
                continue;
            }
            told += 1;
            let Some(name) = a.spec.name.clone() else {
                continue;
            };
            let claim = ClusterMsg::ClaimName {
                namespace: a.spec.namespace.clone(),
                name: name.clone(),
                actor_id,
                class: a.spec.class.clone(),
                owner: self.me,
            };
            match net.request(head, encode(&claim)).await.map(|b| decode(&b)) {
                Ok(Ok(ClusterMsg::Claimed(Ok(())))) => {}
                other => {
                    tracing::warn!(actor = %actor_id, name = %name, reply = ?other, "the restarted head did not take back an actor's name")
                }
            }
        }
        tracing::info!(
            actors = told,
            "told the restarted head of this node's actors"
        );
    }

    /// A node died: routes of this node to actors it owned that this node's GCS has no record
    /// of (handles passed here, names looked up) queue their calls and ask the head again who
    /// owns the actor. A restarted head that took the actor back from its storage answers
    /// itself, and a host that took a detached actor over (its owner died) names itself; the
    /// calls go on there. An owner still named as the dead node after `TAKE_OVER_WAIT`, or no
    /// answer within `REROUTE_WINDOW`, fails them with an error that says so.
    pub async fn reroute(
        self,
        dead: NodeId,
        net: NetHandle,
        head: tokio::sync::watch::Receiver<Option<libp2p::PeerId>>,
    ) {
        let mut orphans = Vec::new();
        for (id, route) in self.directory.forwarding_to(dead) {
            if !self.known_here(id).await {
                route.restarting();
                orphans.push((id, route));
            }
        }
        if orphans.is_empty() {
            return;
        }
        tracing::info!(node = %dead, actors = orphans.len(), "routes to actors of a dead node wait for the head to name their owner");
        let asked = tokio::time::Instant::now();
        let deadline = asked + REROUTE_WINDOW;
        let gone = |route: &crate::actors::directory::ActorRoute, why: &str| {
            route.kill(Error::ActorDied {
                actor: route.display.clone(),
                reason: format!("its owner's node {dead} died{why}"),
            });
        };
        while !orphans.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                for (_, route) in &orphans {
                    gone(route, " and no node took the actor over");
                }
                return;
            }
            let h = *head.borrow();
            let mut left = Vec::new();
            for (id, route) in orphans {
                match self.ask_head(&net, h, ClusterMsg::LookupActor(id)).await {
                    // Its host takes a detached actor over when it sees the owner dead: a
                    // moment later, the head names the host.
                    Ok(ClusterMsg::Found(Some(at)))
                        if at.owner == Some(dead) && asked.elapsed() >= TAKE_OVER_WAIT =>
                    {
                        gone(&route, "")
                    }
                    Ok(ClusterMsg::Found(Some(at))) if at.owner == Some(dead) => {
                        left.push((id, route))
                    }
                    Ok(ClusterMsg::Found(Some(at)))
                        if self.route_to(&at, route.display.clone()).await =>
                    {
                        tracing::info!(actor = %id, owner = ?at.owner, "calls to an actor of a dead node go to its new owner");
                    }
                    // The head is not back yet, or has not heard of the actor yet.
                    _ => left.push((id, route)),
                }
            }
            orphans = left;
            if !orphans.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }

    /// Kills an actor that another node owns: the head says which, the owner kills it.
    pub async fn kill_elsewhere(
        &self,
        actor_id: crate::ActorId,
        no_restart: bool,
        net: &NetHandle,
        head: Option<libp2p::PeerId>,
        peers: &HashMap<String, libp2p::PeerId>,
    ) -> Result<(), Error> {
        let unknown = || Error::runtime(format!("no actor with id {actor_id}"));
        let owner = match self
            .ask_head(net, head, ClusterMsg::LookupActor(actor_id))
            .await?
        {
            ClusterMsg::Found(Some(at)) => at.owner.ok_or_else(unknown)?,
            _ => return Err(unknown()),
        };
        if owner == self.me {
            return Err(unknown());
        }
        let peer = peers.get(&owner.hex()).copied().ok_or_else(|| {
            Error::runtime(format!(
                "the owner {owner} of actor {actor_id} is not reachable"
            ))
        })?;
        let msg = ClusterMsg::KillActor {
            actor_id,
            no_restart,
        };
        match net.request(peer, encode(&msg)).await.map(|b| decode(&b)) {
            Ok(Ok(ClusterMsg::Released)) => Ok(()),
            Ok(Ok(other)) => Err(Error::runtime(format!("unexpected reply {other:?}"))),
            Ok(Err(e)) => Err(Error::runtime(e)),
            Err(e) => Err(Error::runtime(e)),
        }
    }

    /// Asks the head (itself, on the head).
    async fn ask_head(
        &self,
        net: &NetHandle,
        head: Option<libp2p::PeerId>,
        msg: ClusterMsg,
    ) -> Result<ClusterMsg, Error> {
        if self.is_head {
            return Ok(self.head_answer(msg).await);
        }
        let head = head.ok_or_else(|| Error::runtime("this node has not reached the head yet"))?;
        let reply = net
            .request(head, encode(&msg))
            .await
            .map_err(Error::runtime)?;
        decode(&reply).map_err(Error::runtime)
    }

    /// Whether this node's GCS has a record of the actor (it hosts or owns it).
    async fn known_here(&self, id: ActorId) -> bool {
        self.gcs
            .send(crate::actors::gcs::FindOwner(id))
            .await
            .ok()
            .flatten()
            .is_some_and(|a| a.owner.is_none())
    }

    /// Routes an actor's calls to its owner. An actor this node's GCS knows (it hosts or owns
    /// it) keeps its route: replacing it would send its calls round in a loop.
    async fn route_to(&self, at: &crate::actors::gcs::ActorAt, display: String) -> bool {
        if self.known_here(at.actor_id).await {
            return true;
        }
        match at.owner {
            Some(owner) if owner != self.me => {
                self.directory
                    .register(at.actor_id, display)
                    .activate_forward(crate::actors::directory::Endpoint::Forward {
                        node: owner,
                        tx: self.calls.clone(),
                    });
                true
            }
            _ => false,
        }
    }

    /// Answers one question of this node's client.
    pub async fn answer(
        self,
        ask: crate::node::ClusterAsk,
        net: NetHandle,
        head: Option<libp2p::PeerId>,
    ) {
        use crate::node::ClusterAsk as A;
        match ask {
            A::CommitBundles { done, .. } => {
                let _ = done.send(Err(Error::runtime("bundles are the daemon's to place")));
            }
            A::ReturnBundles { .. }
            | A::Status { .. }
            | A::State { .. }
            | A::StopJob { .. }
            | A::FollowJob { .. } => {}
            A::RunJob { done, .. } => {
                let _ = done.send(Err("jobs are the daemon's to place".to_string()));
            }
            A::Kill { done, .. } => {
                let _ = done.send(Err(Error::runtime("kills are the daemon's to route")));
            }
            A::ClaimName {
                namespace,
                name,
                actor_id,
                class,
                done,
            } => {
                let msg = ClusterMsg::ClaimName {
                    namespace,
                    name,
                    actor_id,
                    class,
                    owner: self.me,
                };
                let r = match self.ask_head(&net, head, msg).await {
                    Ok(ClusterMsg::Claimed(r)) => r,
                    Ok(other) => Err(Error::runtime(format!("the head answered {other:?}"))),
                    Err(e) => Err(e),
                };
                let _ = done.send(r);
            }
            A::ReleaseName {
                namespace,
                name,
                actor_id,
            } => {
                let msg = ClusterMsg::ReleaseName {
                    namespace,
                    name,
                    actor_id,
                };
                if let Err(e) = self.ask_head(&net, head, msg).await {
                    tracing::warn!(actor = %actor_id, error = %e, "could not release a name at the head");
                }
            }
            A::Owned { actor_id } => {
                let msg = ClusterMsg::ActorOwned {
                    actor_id,
                    owner: self.me,
                };
                if let Err(e) = self.ask_head(&net, head, msg).await {
                    tracing::warn!(actor = %actor_id, error = %e, "could not record an actor at the head");
                }
            }
            A::LookupName {
                namespace,
                name,
                done,
            } => {
                let not_found = Error::ActorNotFound {
                    name: name.clone(),
                    namespace: namespace.clone(),
                };
                let msg = ClusterMsg::LookupName {
                    namespace,
                    name: name.clone(),
                };
                let r = match self.ask_head(&net, head, msg).await {
                    Ok(ClusterMsg::Found(Some(at))) if self.route_to(&at, name).await => {
                        Ok(crate::core::ActorLookup {
                            actor_id: at.actor_id,
                            class: at.class,
                        })
                    }
                    Ok(_) => Err(not_found),
                    Err(e) => Err(e),
                };
                let _ = done.send(r);
            }
            A::Kv { op, done } => {
                let r = match self.ask_head(&net, head, ClusterMsg::Kv(op)).await {
                    Ok(ClusterMsg::KvDone(r)) => r,
                    Ok(other) => Err(Error::runtime(format!("the head answered {other:?}"))),
                    Err(e) => Err(Error::runtime(format!("kv: the head is unreachable: {e}"))),
                };
                let _ = done.send(r);
            }
            A::LookupActor { actor_id } => {
                // The owner reports its actors as it creates them: a handle can arrive first.
                for attempt in 0..5u64 {
                    match self
                        .ask_head(&net, head, ClusterMsg::LookupActor(actor_id))
                        .await
                    {
                        Ok(ClusterMsg::Found(Some(at)))
                            if self.route_to(&at, actor_id.hex()).await =>
                        {
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(actor = %actor_id, error = %e, "actor lookup at the head failed")
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
                if let Some(route) = self.directory.get(&actor_id) {
                    route.kill(Error::ActorDied {
                        actor: actor_id.hex(),
                        reason: "no node of the cluster knows it".to_string(),
                    });
                }
            }
        }
    }
}
