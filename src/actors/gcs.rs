//! The GCS actor: the cluster's control store. It owns the tables of nodes, jobs, actors (spec,
//! state, restarts, node), named actors, placement groups and the key-value store, writes each
//! change through to a [`GcsStorage`], and drives the actor lifecycle: placing an actor on a
//! raylet, restarting it after a death while `max_restarts` allows, and failing its calls once
//! it is dead for good.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::actors::directory::{ActorDirectory, QueuedCall, fail_call};
use crate::actors::raylet::{self, Raylet};
use crate::core::ActorLookup;
use crate::error::Error;
use crate::ids::{ActorId, JobId, NodeId, PlacementGroupId};
use crate::sched::{ClusterView, PlaceError, PlacementStrategy, ResourceSet};
use crate::spec::ActorSpec;
use crate::store::GcsStorage;
use crate::web::now_ms;

/// Lifecycle states of an actor (Ray's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorState {
    /// Waiting for its constructor arguments or resources.
    PendingCreation,
    /// Running.
    Alive,
    /// Died and being re-created.
    Restarting,
    /// Dead for good.
    Dead,
}

/// What the GCS records about an actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorRecord {
    /// How it was created.
    pub spec: ActorSpec,
    /// Where it is in its life.
    pub state: ActorState,
    /// Restarts so far.
    pub num_restarts: u32,
    /// The node hosting it.
    pub node_id: Option<NodeId>,
    /// The host's process id.
    pub pid: Option<u32>,
    /// Why it died.
    pub death_cause: Option<String>,
    /// `kill()` was called: never restart.
    pub killed: bool,
}

/// Placement group states (Ray's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PgState {
    /// Waiting for resources.
    Pending,
    /// Every bundle reserved.
    Created,
    /// Some bundles' node died: those (`lost`, by index) are being placed again; the others
    /// and what runs in them are untouched (Ray's RESCHEDULING).
    Rescheduling {
        /// The bundles being placed again, by index.
        lost: Vec<usize>,
    },
    /// Removed by the user.
    Removed,
    /// Can never be placed.
    Failed(String),
}

/// What the GCS records about a placement group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgRecord {
    /// The group's id.
    pub id: PlacementGroupId,
    /// Its name, if any.
    pub name: Option<String>,
    /// Bundles asked for.
    pub bundles: Vec<ResourceSet>,
    /// Strategy asked for.
    pub strategy: PlacementStrategy,
    /// Where it is.
    pub state: PgState,
    /// Node of each bundle, once created.
    pub placement: Vec<NodeId>,
    /// The job that created it: the group is removed when the job ends (Ray's default
    /// lifetime).
    #[serde(default)]
    pub job_id: Option<JobId>,
}

impl PgRecord {
    /// The nodes holding a bundle of the group now (none while pending or once ended).
    pub fn held(&self) -> Vec<NodeId> {
        match &self.state {
            PgState::Created => self.placement.clone(),
            PgState::Rescheduling { lost } => self
                .placement
                .iter()
                .enumerate()
                .filter(|(i, _)| !lost.contains(i))
                .map(|(_, n)| *n)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What the GCS records about a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub job_id: JobId,
    /// Its namespace.
    pub namespace: String,
    /// The driver's process id.
    pub driver_pid: u32,
    /// Start time (Unix ms).
    pub start_time_ms: u64,
    /// End time (Unix ms), once it ended.
    pub end_time_ms: Option<u64>,
    /// The Jobs API submission whose entrypoint started this driver, if any.
    #[serde(default)]
    pub submission_id: Option<String>,
    /// How its workers start (a driver's executable), kept so that a restarted head can
    /// restart the job's detached actors.
    #[serde(default)]
    pub(crate) launch: Option<crate::worker::process::JobLaunch>,
}

/// The GCS actor.
pub(crate) struct Gcs {
    storage: Arc<dyn GcsStorage>,
    directory: Arc<ActorDirectory>,
    raylets: HashMap<NodeId, Addr<Raylet>>,
    jobs: HashMap<JobId, JobRecord>,
    functions: std::collections::BTreeSet<String>,
    actors: HashMap<ActorId, ActorRecord>,
    named: HashMap<(String, String), ActorId>,
    /// On the head: names of actors owned by other nodes (id, class, owner), claimed through
    /// the cluster so that a name is unique cluster-wide.
    remote_named: HashMap<(String, String), (ActorId, String, NodeId)>,
    /// On the head: the owner node of every actor other nodes created.
    owners: HashMap<ActorId, NodeId>,
    /// On a cluster node: where released names are reported (to the head).
    cluster: Option<flume::Sender<crate::node::ClusterAsk>>,
    /// This GCS is the head's (it keeps the cluster-wide names and owners itself).
    is_head: bool,
    pgs: HashMap<PlacementGroupId, PgRecord>,
    pg_waiters: HashMap<PlacementGroupId, Vec<oneshot::Sender<Result<(), Error>>>>,
    pg_in_flight: bool,
    /// A group arrived while a round was running: run another round right after it.
    pg_again: bool,
    /// Detached actors of an earlier life of this GCS (a restarted head), taken back by
    /// `Recover`: hosted on another node (which still runs them), or on the head (they died
    /// with it and restart within `max_restarts`).
    recovering: Vec<(ActorId, Option<NodeId>)>,
    /// The nodes hosting actors `recover` took back (the daemon watches for them).
    adopted_hosts: Vec<NodeId>,
    /// Placement groups of an earlier life of this GCS, removed at the restart, whose bundles
    /// on other nodes are given back once the node is linked to the cluster.
    pg_returns: Vec<(PlacementGroupId, Vec<NodeId>)>,
    /// Actors of those groups that other nodes still run, killed there with them.
    pg_kills: Vec<(ActorId, NodeId)>,
}

impl Gcs {
    pub fn new(storage: Arc<dyn GcsStorage>, directory: Arc<ActorDirectory>) -> Self {
        let mut gcs = Self::empty(storage, directory);
        gcs.restore_jobs();
        let old_heads = gcs.old_heads();
        let ended = gcs.restore_pgs(&old_heads);
        gcs.restore_actors(&old_heads, &ended);
        gcs
    }

    /// Every record of a stored table that decodes; an unreadable table is logged and read as
    /// empty, a record that does not decode is logged and skipped.
    fn stored<T: serde::de::DeserializeOwned>(&self, table: &str) -> Vec<T> {
        let rows = match self.storage.scan(table) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(table, error = %e, "cannot read a stored gcs table");
                return Vec::new();
            }
        };
        rows.into_iter()
            .filter_map(|(_, v)| match rmp_serde::from_slice::<T>(&v) {
                Ok(rec) => Some(rec),
                Err(e) => {
                    tracing::warn!(table, error = %e, "a stored gcs record does not decode: skipped");
                    None
                }
            })
            .collect()
    }

    /// The node ids this GCS's own node had in earlier lives (only its raylet registers).
    fn old_heads(&self) -> std::collections::HashSet<NodeId> {
        self.stored::<NodeId>("nodes").into_iter().collect()
    }

    /// Placement groups of an earlier life of this GCS. Their jobs' drivers were attached to
    /// the node that died, so every job ended, and a group lives as long as its job: those
    /// still pending or created are removed, and their bundles on other nodes are given back
    /// (once the cluster link is up, `SetClusterLink`). Returns the groups removed.
    fn restore_pgs(
        &mut self,
        old_heads: &std::collections::HashSet<NodeId>,
    ) -> std::collections::HashSet<PlacementGroupId> {
        let mut ended = std::collections::HashSet::new();
        for mut rec in self.stored::<PgRecord>("placement_groups") {
            if matches!(
                rec.state,
                PgState::Pending | PgState::Created | PgState::Rescheduling { .. }
            ) {
                if rec.state != PgState::Pending {
                    let elsewhere: Vec<NodeId> = rec
                        .held()
                        .into_iter()
                        .filter(|n| !old_heads.contains(n))
                        .collect();
                    self.pg_returns.push((rec.id, elsewhere));
                }
                rec.state = PgState::Removed;
                self.persist("placement_groups", rec.id.0.as_bytes(), &rec);
                ended.insert(rec.id);
            }
            self.pgs.insert(rec.id, rec);
        }
        if !self.pgs.is_empty() {
            tracing::info!(
                groups = self.pgs.len(),
                removed = ended.len(),
                "placement group records restored from storage"
            );
        }
        ended
    }

    /// Actor records of an earlier life of this GCS (a head restarted on its storage). The
    /// head's node died with that process, and the drivers and workers attached to it too, so:
    /// - actors that were dead stay dead (their records stay listed);
    /// - an actor the head hosted for another node is dead (its owner restarts it);
    /// - an actor that is not detached is dead: its owner (a driver or worker of the head)
    ///   died; a node hosting it kills it when it declares the old head dead;
    /// - a detached actor keeps its name and is taken back by `Recover`: the node hosting it
    ///   still runs it, or, if the head hosted it, it restarts within `max_restarts`.
    fn restore_actors(
        &mut self,
        old_heads: &std::collections::HashSet<NodeId>,
        ended_pgs: &std::collections::HashSet<PlacementGroupId>,
    ) {
        let mut dead = 0usize;
        for mut rec in self.stored::<ActorRecord>("actors") {
            let id = rec.spec.actor_id;
            let ended = match rec.state {
                ActorState::Dead => None,
                _ if rec.spec.owned_elsewhere => Some("its host, the head, stopped"),
                _ if !rec.spec.detached => Some("its owner died with the head"),
                _ if matches!(&rec.spec.strategy, crate::sched::SchedulingStrategy::PlacementGroup { pg, .. } if ended_pgs.contains(pg)) =>
                {
                    // Ray's rule: a group's actors end with it. One another node still runs
                    // is killed there once the cluster link is up.
                    if let Some(node) = rec.node_id.filter(|n| !old_heads.contains(n))
                        && rec.state == ActorState::Alive
                    {
                        self.pg_kills.push((id, node));
                    }
                    Some("its placement group ended with its job")
                }
                _ => {
                    let elsewhere = rec
                        .node_id
                        .filter(|n| rec.state == ActorState::Alive && !old_heads.contains(n));
                    self.recovering.push((id, elsewhere));
                    if let Some(name) = &rec.spec.name {
                        self.named
                            .insert((rec.spec.namespace.clone(), name.clone()), id);
                    }
                    self.directory.register(id, rec.spec.display());
                    None
                }
            };
            if let Some(reason) = ended {
                rec.state = ActorState::Dead;
                rec.death_cause = Some(reason.to_string());
                self.persist("actors", id.0.as_bytes(), &rec);
                dead += 1;
            }
            self.actors.insert(id, rec);
        }
        if !self.actors.is_empty() {
            tracing::info!(
                actors = self.actors.len(),
                ended = dead,
                detached = self.recovering.len(),
                "actor records restored from storage"
            );
        }
    }

    /// Takes back the detached actors restored from storage (`restore_actors`) once this
    /// node is up (`Recover`): those another node hosts get their routes back (forwarding
    /// there once the node is heard from); those the head hosted restart within
    /// `max_restarts`. The nodes hosting actors taken back go to `adopted_hosts`.
    fn recover(&mut self) {
        let Some(raylet) = self.pick_raylet() else {
            return;
        };
        for (id, host) in std::mem::take(&mut self.recovering) {
            let Some((spec, state)) = self.actors.get(&id).map(|r| (r.spec.clone(), r.state))
            else {
                continue;
            };
            // Its job's workers start from the driver's executable (thread workers need none).
            let job = spec.job_id;
            if let Some(launch) = self.jobs.get(&job).and_then(|j| j.launch.clone()) {
                raylet.do_send(raylet::RegisterJob {
                    job_id: job,
                    launch,
                });
            }
            if let Some(node) = host {
                tracing::info!(actor = %id, node = %node, "taking back a detached actor another node hosts");
                raylet.do_send(raylet::AdoptActor { actor_id: id, node });
                if !self.adopted_hosts.contains(&node) {
                    self.adopted_hosts.push(node);
                }
                continue;
            }
            let table = self.directory.table();
            if spec.deps().any(|d| !table.is_ready(&d)) {
                self.mark_dead(
                    id,
                    "it died with the head and its constructor arguments were lost".into(),
                );
                continue;
            }
            if state == ActorState::PendingCreation {
                // It never ran: it is created now, which is no restart.
                raylet.do_send(raylet::CreateActor(spec));
            } else {
                self.actor_died(id, "its node, the head, stopped".into(), Vec::new());
            }
        }
    }

    /// Job records of an earlier life of this GCS (a head restarted on its storage). Their
    /// drivers were connected to the process that died, so every job still open then has
    /// ended: it gets the restart as its end time.
    fn restore_jobs(&mut self) {
        let now = now_ms();
        for mut rec in self.stored::<JobRecord>("jobs") {
            if rec.end_time_ms.is_none() {
                rec.end_time_ms = Some(now);
                self.persist("jobs", rec.job_id.0.as_bytes(), &rec);
            }
            self.jobs.insert(rec.job_id, rec);
        }
        if !self.jobs.is_empty() {
            tracing::info!(jobs = self.jobs.len(), "job records restored from storage");
        }
    }

    fn empty(storage: Arc<dyn GcsStorage>, directory: Arc<ActorDirectory>) -> Self {
        Self {
            storage,
            directory,
            raylets: HashMap::new(),
            jobs: HashMap::new(),
            functions: Default::default(),
            actors: HashMap::new(),
            named: HashMap::new(),
            remote_named: HashMap::new(),
            owners: HashMap::new(),
            cluster: None,
            is_head: false,
            pgs: HashMap::new(),
            pg_waiters: HashMap::new(),
            pg_in_flight: false,
            pg_again: false,
            recovering: Vec::new(),
            adopted_hosts: Vec::new(),
            pg_returns: Vec::new(),
            pg_kills: Vec::new(),
        }
    }

    /// The answer to a client's write, given once the storage holds it durably (the GCS
    /// itself goes on serving meanwhile).
    /// Where this GCS asks the head's: its daemon's link, on a cluster node that is not the
    /// head (`None` on the head itself and in an embedded cluster).
    fn to_head(&self) -> Option<flume::Sender<crate::node::ClusterAsk>> {
        self.cluster.clone().filter(|_| !self.is_head)
    }

    fn acknowledged<T: Send + 'static>(
        &self,
        result: Result<T, crate::store::StorageError>,
    ) -> ResponseFuture<Result<T, Error>> {
        let synced = self.storage.synced();
        Box::pin(async move {
            let value = result.map_err(Error::runtime)?;
            synced
                .await
                .map_err(|_| Error::runtime("gcs storage: the write is not known to be durable"))?;
            Ok(value)
        })
    }

    fn persist<T: Serialize>(&self, table: &str, key: &[u8], value: &T) {
        match rmp_serde::to_vec(value) {
            Ok(v) => {
                if let Err(e) = self.storage.put(table, key, &v) {
                    tracing::error!(table, error = %e, "gcs write failed");
                }
            }
            Err(e) => tracing::error!(table, error = %e, "gcs record does not encode"),
        }
    }

    fn save_actor(&self, id: ActorId) {
        if let Some(r) = self.actors.get(&id) {
            self.persist("actors", id.0.as_bytes(), r);
        }
    }

    fn save_pg(&self, id: PlacementGroupId) {
        if let Some(r) = self.pgs.get(&id) {
            self.persist("placement_groups", id.0.as_bytes(), r);
        }
    }

    /// The raylet to place an actor on. One node for now: the cluster issue replaces this
    /// with the policy over the cluster view.
    fn pick_raylet(&self) -> Option<Addr<Raylet>> {
        self.raylets.values().next().cloned()
    }

    /// The live actor that holds a name on this node.
    fn named_alive(&self, key: &(String, String)) -> Option<(ActorId, &ActorRecord)> {
        let id = self.named.get(key)?;
        let r = self.actors.get(id)?;
        (r.state != ActorState::Dead).then_some((*id, r))
    }

    /// Whether another node claimed the name for an actor other than `id` (on the head).
    fn claimed_elsewhere(&self, key: &(String, String), id: ActorId) -> bool {
        self.remote_named
            .get(key)
            .is_some_and(|(other, ..)| *other != id)
    }

    fn release_name(&mut self, id: ActorId) {
        if let Some(r) = self.actors.get(&id)
            && let Some(name) = &r.spec.name
        {
            let key = (r.spec.namespace.clone(), name.clone());
            if self.named.get(&key) == Some(&id) {
                self.named.remove(&key);
                if let Some(c) = &self.cluster {
                    let _ = c.try_send(crate::node::ClusterAsk::ReleaseName {
                        namespace: key.0,
                        name: key.1,
                        actor_id: id,
                    });
                }
            }
        }
    }

    fn mark_dead(&mut self, id: ActorId, reason: String) -> Error {
        self.release_name(id);
        let display = self
            .actors
            .get(&id)
            .map_or_else(|| id.hex(), |r| r.spec.display());
        if let Some(r) = self.actors.get_mut(&id) {
            r.state = ActorState::Dead;
            r.death_cause = Some(reason.clone());
        }
        self.save_actor(id);
        let err = Error::ActorDied {
            actor: display,
            reason,
        };
        if let Some(route) = self.directory.get(&id) {
            route.kill(err.clone());
        }
        err
    }

    fn actor_died(&mut self, id: ActorId, reason: String, unfinished: Vec<QueuedCall>) {
        let Some(r) = self.actors.get(&id) else {
            return;
        };
        let table = self.directory.table();
        if r.state == ActorState::Dead {
            let err = Error::ActorDied {
                actor: r.spec.display(),
                reason: r.death_cause.clone().unwrap_or(reason),
            };
            for q in unfinished {
                fail_call(&table, q, &err);
            }
            return;
        }
        let max = r.spec.max_restarts;
        let can_restart = !r.killed && (max < 0 || (r.num_restarts as i64) < max as i64);
        let retries = r.spec.max_task_retries;
        if can_restart {
            let spec = r.spec.clone();
            if let Some(rec) = self.actors.get_mut(&id) {
                rec.num_restarts += 1;
                rec.state = ActorState::Restarting;
                rec.death_cause = Some(reason.clone());
            }
            self.save_actor(id);
            tracing::info!(actor = %spec.display(), reason = %reason, "restarting actor");
            let route = self.directory.register(id, spec.display());
            route.restarting();
            let err = Error::ActorDied {
                actor: spec.display(),
                reason: reason.clone(),
            };
            let mut again = Vec::new();
            for mut q in unfinished {
                if retries < 0 || (q.call.attempt as i64) < retries as i64 {
                    q.call.attempt += 1;
                    again.push(q);
                } else {
                    fail_call(&table, q, &err);
                }
            }
            // Interrupted calls go ahead of any call made during the restart.
            route.requeue_front(again);
            match self.pick_raylet() {
                Some(raylet) => raylet.do_send(raylet::CreateActor(spec)),
                None => {
                    self.mark_dead(id, "no node to restart it on".to_string());
                }
            }
        } else {
            let err = self.mark_dead(id, reason);
            for q in unfinished {
                fail_call(&table, q, &err);
            }
        }
    }

    fn notify_pg(&mut self, id: PlacementGroupId, result: Result<(), Error>) {
        for w in self.pg_waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    /// Tries to place every pending placement group (one round at a time).
    /// Gives back the bundles of `pg` on every node of `placement`.
    fn return_all(&self, pg: PlacementGroupId, placement: &[NodeId]) {
        let raylets: Vec<(NodeId, Addr<Raylet>)> =
            self.raylets.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut nodes: Vec<NodeId> = placement.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        return_bundles(&raylets, self.cluster.as_ref(), pg, &nodes);
    }

    fn place_pending(&mut self, ctx: &mut Context<Self>) {
        if self.pg_in_flight {
            self.pg_again = true;
            return;
        }
        let pending: Vec<PlacementGroupId> = self
            .pgs
            .values()
            .filter(|p| matches!(p.state, PgState::Pending | PgState::Rescheduling { .. }))
            .map(|p| p.id)
            .collect();
        if pending.is_empty() {
            return;
        }
        self.pg_in_flight = true;
        let raylets: Vec<(NodeId, Addr<Raylet>)> =
            self.raylets.iter().map(|(k, v)| (*k, v.clone())).collect();
        let cluster = self.cluster.clone();
        let requests: Vec<PgRequest> = pending
            .iter()
            .filter_map(|id| self.pgs.get(id).map(PgRequest::of))
            .collect();
        let fut = async move {
            let mut results = Vec::new();
            for PgRequest {
                pg,
                bundles,
                strategy,
                indices,
                exclude,
                rescheduling,
            } in requests
            {
                // A fresh view each round: earlier groups of this round consumed resources.
                let view = pg_view(&raylets).await;
                let placed = match crate::sched::placement::place_bundles_excluding(
                    &view, &bundles, strategy, &exclude,
                ) {
                    Ok(p) => p,
                    Err(PlaceError::Unavailable) => {
                        results.push((pg, None));
                        continue;
                    }
                    Err(PlaceError::Infeasible(_)) if rescheduling => {
                        results.push((pg, None));
                        continue;
                    }
                    Err(PlaceError::Infeasible(e)) => {
                        results.push((pg, Some(Err(e.to_string()))));
                        continue;
                    }
                };
                // Commit per node; undo everything on any failure.
                let mut by_node: HashMap<NodeId, Vec<(usize, ResourceSet)>> = HashMap::new();
                for ((i, node), bundle) in indices.iter().zip(&placed).zip(&bundles) {
                    by_node.entry(*node).or_default().push((*i, bundle.clone()));
                }
                let mut committed = Vec::new();
                let mut ok = true;
                for (node, bs) in by_node {
                    let local = raylets.iter().find(|(n, _)| *n == node).map(|(_, a)| a);
                    let done = match local {
                        Some(addr) => matches!(
                            addr.send(raylet::CommitBundles {
                                pg,
                                bundles: bs.clone()
                            })
                            .await,
                            Ok(Ok(()))
                        ),
                        None => commit_remote(cluster.as_ref(), node, pg, bs.clone()).await,
                    };
                    if !done {
                        ok = false;
                        break;
                    }
                    committed.push(node);
                    if let Some((_, addr)) = raylets.first()
                        && local.is_none()
                    {
                        // The node's next heartbeat would tell; tasks of the group can go
                        // there at once.
                        addr.do_send(raylet::RemoteBundles {
                            node,
                            pg,
                            bundles: bs,
                        });
                    }
                }
                if ok {
                    results.push((
                        pg,
                        Some(Ok(indices
                            .into_iter()
                            .zip(placed)
                            .collect::<Vec<(usize, NodeId)>>())),
                    ));
                } else {
                    return_bundles(&raylets, cluster.as_ref(), pg, &committed);
                    results.push((pg, None));
                }
            }
            results
        };
        ctx.spawn(fut.into_actor(self).map(|results, act, ctx| {
            act.pg_in_flight = false;
            for (pg, outcome) in results {
                match outcome {
                    None => {}
                    Some(Ok(placed)) => {
                        let removed = act.pgs.get(&pg).is_none_or(|p| p.state == PgState::Removed);
                        if removed {
                            let nodes: Vec<NodeId> = placed.iter().map(|(_, n)| *n).collect();
                            act.return_all(pg, &nodes);
                            continue;
                        }
                        if let Some(p) = act.pgs.get_mut(&pg) {
                            if matches!(p.state, PgState::Rescheduling { .. }) {
                                for (i, node) in placed {
                                    if let Some(slot) = p.placement.get_mut(i) {
                                        *slot = node;
                                    }
                                }
                                tracing::info!(pg = %pg, "placement group's lost bundles placed again");
                            } else {
                                // Every bundle, in index order.
                                p.placement = placed.into_iter().map(|(_, n)| n).collect();
                            }
                            p.state = PgState::Created;
                        }
                        act.save_pg(pg);
                        act.notify_pg(pg, Ok(()));
                    }
                    Some(Err(reason)) => {
                        if let Some(p) = act.pgs.get_mut(&pg) {
                            p.state = PgState::Failed(reason.clone());
                        }
                        act.save_pg(pg);
                        act.notify_pg(
                            pg,
                            Err(Error::PlacementGroup {
                                id: pg.hex(),
                                reason,
                            }),
                        );
                    }
                }
            }
            if std::mem::take(&mut act.pg_again) {
                act.place_pending(ctx);
            }
        }));
    }
}

/// One group for a placement round: the bundles to place now (all, or those a dead node lost),
/// their indices in the group, and the nodes they may not use.
struct PgRequest {
    pg: PlacementGroupId,
    bundles: Vec<ResourceSet>,
    strategy: PlacementStrategy,
    indices: Vec<usize>,
    exclude: std::collections::BTreeSet<NodeId>,
    /// Lost bundles of a created group: one that cannot be placed now waits for a node
    /// that can hold it, as its surviving bundles keep running.
    rescheduling: bool,
}

impl PgRequest {
    fn of(p: &PgRecord) -> Self {
        let PgState::Rescheduling { lost } = &p.state else {
            return PgRequest {
                pg: p.id,
                bundles: p.bundles.clone(),
                strategy: p.strategy,
                indices: (0..p.bundles.len()).collect(),
                exclude: Default::default(),
                rescheduling: false,
            };
        };
        // Never the dead nodes (the raylet's view may not know yet); for STRICT_SPREAD, not
        // the nodes of the surviving bundles either; STRICT_PACK lost them all (one node).
        let mut exclude: std::collections::BTreeSet<NodeId> = lost
            .iter()
            .filter_map(|i| p.placement.get(*i).copied())
            .collect();
        if p.strategy == PlacementStrategy::StrictSpread {
            exclude.extend(p.held());
        }
        PgRequest {
            pg: p.id,
            bundles: lost
                .iter()
                .filter_map(|i| p.bundles.get(*i).cloned())
                .collect(),
            strategy: p.strategy,
            indices: lost.clone(),
            exclude,
            rescheduling: true,
        }
    }
}

/// The nodes placement groups can use: every alive node the local raylet knows (other nodes'
/// resources come from their heartbeats), or, without a raylet, none.
async fn pg_view(raylets: &[(NodeId, Addr<Raylet>)]) -> ClusterView {
    let mut view = ClusterView::default();
    for (_, addr) in raylets {
        if let Ok(cluster) = addr.send(raylet::GetClusterView).await {
            for (id, nv) in cluster.nodes {
                if nv.alive && !view.nodes.contains_key(&id) {
                    view.nodes.insert(id, nv);
                }
            }
        }
    }
    view
}

/// Reserves bundles on another node through this node's daemon; whether it did.
async fn commit_remote(
    cluster: Option<&flume::Sender<crate::node::ClusterAsk>>,
    node: NodeId,
    pg: PlacementGroupId,
    bundles: Vec<(usize, ResourceSet)>,
) -> bool {
    let Some(cluster) = cluster else {
        return false;
    };
    let (done, rx) = flume::bounded(1);
    let ask = crate::node::ClusterAsk::CommitBundles {
        node,
        pg,
        bundles,
        done,
    };
    if cluster.send_async(ask).await.is_err() {
        return false;
    }
    match rx.recv_async().await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(pg = %pg, node = %node, error = %e, "a node refused bundles");
            false
        }
        Err(_) => false,
    }
}

/// Gives back the bundles of `pg` on `nodes` (local raylets directly, others through the
/// daemon).
fn return_bundles(
    raylets: &[(NodeId, Addr<Raylet>)],
    cluster: Option<&flume::Sender<crate::node::ClusterAsk>>,
    pg: PlacementGroupId,
    nodes: &[NodeId],
) {
    for node in nodes {
        match raylets.iter().find(|(n, _)| n == node) {
            Some((_, addr)) => addr.do_send(raylet::ReturnBundles { pg }),
            None => {
                if let Some(c) = cluster {
                    let _ = c.try_send(crate::node::ClusterAsk::ReturnBundles { node: *node, pg });
                }
                if let Some((_, addr)) = raylets.first() {
                    addr.do_send(raylet::RemoteBundles {
                        node: *node,
                        pg,
                        bundles: Vec::new(),
                    });
                }
            }
        }
    }
}

impl Actor for Gcs {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(Duration::from_millis(100), |act, ctx| {
            act.place_pending(ctx)
        });
    }
}

/// A raylet joined.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegisterNode {
    pub node_id: NodeId,
    pub raylet: Addr<Raylet>,
}

impl Handler<RegisterNode> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: RegisterNode, _ctx: &mut Self::Context) {
        self.persist("nodes", msg.node_id.0.as_bytes(), &msg.node_id);
        self.raylets.insert(msg.node_id, msg.raylet);
    }
}

/// The node is up (its raylet registered, its worker pool started): detached actors restored
/// from storage are taken back.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Recover;

impl Handler<Recover> for Gcs {
    type Result = ();
    fn handle(&mut self, _msg: Recover, _ctx: &mut Self::Context) {
        self.recover();
    }
}

/// On a restarted head: the nodes hosting actors taken back from storage, which its
/// membership watches as if they had registered (a node that never comes back is declared
/// dead, and its actors restart elsewhere within `max_restarts`).
#[derive(Message)]
#[rtype(result = "Vec<NodeId>")]
pub(crate) struct AdoptedHosts;

impl Handler<AdoptedHosts> for Gcs {
    type Result = MessageResult<AdoptedHosts>;
    fn handle(&mut self, _msg: AdoptedHosts, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.adopted_hosts.clone())
    }
}

/// A node died (the daemon declared it dead): the actors it owned that this node hosts die
/// too (their owner, a driver or worker there, is gone), except detached ones. Those this
/// node takes over: it owns their records and names from now on and tells the head so
/// (`ActorOwned`, `ClaimName`), so that names and handles resolve to them again; but not
/// those the head owned (`was_head`), which a restarted head takes back from its storage.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct OwnerDied {
    pub node: NodeId,
    pub was_head: bool,
}

impl Handler<OwnerDied> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: OwnerDied, ctx: &mut Self::Context) {
        let node = msg.node;
        let orphans: Vec<(ActorId, bool)> = self
            .actors
            .iter()
            .filter(|(_, r)| r.spec.owner == Some(node) && r.state != ActorState::Dead)
            .map(|(id, r)| (*id, r.spec.detached))
            .collect();
        for (id, detached) in orphans {
            if detached && !msg.was_head {
                self.take_over(id, ctx);
            } else if !detached {
                tracing::info!(actor = %id, owner = %node, "the owner of an actor hosted here died: actor killed");
                self.kill(id, format!("its owner's node {node} died"));
            }
        }
        self.reschedule_bundles_of(node, ctx);
    }
}

impl Gcs {
    /// The bundles of this GCS's groups on `node`, which died, are placed again on other
    /// nodes (Ray reschedules them too); the group waits in `Rescheduling` meanwhile, and
    /// its actors that died with the node restart in the new bundles within `max_restarts`.
    fn reschedule_bundles_of(&mut self, node: NodeId, ctx: &mut Context<Self>) {
        let mut touched = Vec::new();
        for p in self.pgs.values_mut() {
            let already: Vec<usize> = match &p.state {
                PgState::Created => Vec::new(),
                PgState::Rescheduling { lost } => lost.clone(),
                _ => continue,
            };
            // In index order, as `enumerate` yields them.
            let lost: Vec<usize> = p
                .placement
                .iter()
                .enumerate()
                .filter(|(i, n)| **n == node || already.contains(i))
                .map(|(i, _)| i)
                .collect();
            if lost.len() == already.len() {
                continue;
            }
            tracing::warn!(pg = %p.id, node = %node, bundles = ?lost, "a placement group's node died: its bundles there are placed again");
            p.state = PgState::Rescheduling { lost };
            touched.push(p.id);
        }
        for pg in touched {
            self.save_pg(pg);
        }
        self.place_pending(ctx);
    }
}

impl Gcs {
    /// This node, the host of detached actor `id`, becomes its owner (the owner died).
    fn take_over(&mut self, id: ActorId, ctx: &mut Context<Self>) {
        let Some(r) = self.actors.get_mut(&id) else {
            return;
        };
        r.spec.owned_elsewhere = false;
        r.spec.owner = None;
        r.spec.name = r.spec.hosted_name.take();
        let spec = r.spec.clone();
        self.save_actor(id);
        tracing::info!(actor = %spec.display(), name = ?spec.name, "the owner of a detached actor hosted here died: this node owns it now");
        self.owners.remove(&id);
        let key = spec.name.clone().map(|n| (spec.namespace.clone(), n));
        if let Some(key) = &key {
            if self.named.contains_key(key) {
                tracing::warn!(actor = %id, name = %key.1, "a detached actor taken over keeps no name: another actor here holds it");
                return;
            }
            self.named.insert(key.clone(), id);
            if self.remote_named.get(key).is_some_and(|(a, ..)| *a == id) {
                self.remote_named.remove(key);
            }
        }
        // The head keeps names and owners itself; another node tells it.
        let Some(c) = self.to_head() else {
            return;
        };
        let _ = c.try_send(crate::node::ClusterAsk::Owned { actor_id: id });
        let Some((_, name)) = key else {
            return;
        };
        let (done, answer) = flume::bounded(1);
        let _ = c.try_send(crate::node::ClusterAsk::ClaimName {
            namespace: spec.namespace,
            name: name.clone(),
            actor_id: id,
            class: spec.class,
            done,
        });
        ctx.spawn(actix::fut::wrap_future(async move {
            if let Ok(Err(e)) = answer.recv_async().await {
                tracing::warn!(actor = %id, name = %name, error = %e, "the head did not give a detached actor taken over its name back");
            }
        }));
    }
}

/// A driver started.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegisterJob {
    pub job_id: JobId,
    pub namespace: String,
    /// The driver's process id.
    pub driver_pid: u32,
    /// The Jobs API submission that started the driver (`MOBULA_SUBMISSION_ID`).
    pub submission_id: Option<String>,
    /// How the job's workers start.
    pub launch: Option<crate::worker::process::JobLaunch>,
}

impl Handler<RegisterJob> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: RegisterJob, _ctx: &mut Self::Context) {
        let rec = JobRecord {
            job_id: msg.job_id,
            namespace: msg.namespace,
            driver_pid: msg.driver_pid,
            start_time_ms: now_ms(),
            end_time_ms: None,
            submission_id: msg.submission_id,
            launch: msg.launch,
        };
        self.persist("jobs", msg.job_id.0.as_bytes(), &rec);
        self.jobs.insert(msg.job_id, rec);
    }
}

/// Every job this GCS knows.
#[derive(Message)]
#[rtype(result = "Vec<JobRecord>")]
pub(crate) struct ListJobs;

impl Handler<ListJobs> for Gcs {
    type Result = MessageResult<ListJobs>;
    fn handle(&mut self, _msg: ListJobs, _ctx: &mut Self::Context) -> Self::Result {
        let mut jobs: Vec<JobRecord> = self.jobs.values().cloned().collect();
        jobs.sort_by_key(|j| j.start_time_ms);
        MessageResult(jobs)
    }
}

/// A driver's binary registers the remote functions and actor classes linked into it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegisterFunctions {
    pub job_id: JobId,
    pub ids: Vec<String>,
}

impl Handler<RegisterFunctions> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: RegisterFunctions, _ctx: &mut Self::Context) {
        for id in &msg.ids {
            self.persist("functions", id.as_bytes(), &msg.job_id);
        }
        self.functions.extend(msg.ids);
    }
}

/// Registry ids known to the GCS.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub(crate) struct ListFunctions;

impl Handler<ListFunctions> for Gcs {
    type Result = MessageResult<ListFunctions>;
    fn handle(&mut self, _msg: ListFunctions, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.functions.iter().cloned().collect())
    }
}

/// Create an actor.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct RegisterActor(pub ActorSpec);

impl Handler<RegisterActor> for Gcs {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: RegisterActor, _ctx: &mut Self::Context) -> Self::Result {
        let spec = msg.0;
        let id = spec.actor_id;
        let Some(raylet) = self.pick_raylet() else {
            return Err(Error::runtime("no node is registered with the gcs"));
        };
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if self.named.contains_key(&key) || self.claimed_elsewhere(&key, id) {
                return Err(Error::NameTaken {
                    name: name.clone(),
                    namespace: spec.namespace.clone(),
                });
            }
            self.named.insert(key, id);
        }
        self.directory.register(id, spec.display());
        self.actors.insert(
            id,
            ActorRecord {
                spec: spec.clone(),
                state: ActorState::PendingCreation,
                num_restarts: 0,
                node_id: None,
                pid: None,
                death_cause: None,
                killed: false,
            },
        );
        self.save_actor(id);
        raylet.do_send(raylet::CreateActor(spec));
        Ok(())
    }
}

/// The constructor of an actor ran (Ok: the host's pid).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorCreated {
    pub actor_id: ActorId,
    pub node_id: NodeId,
    pub result: Result<u32, Error>,
    /// Told once the record is durable (another node's report of it waits for that).
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Handler<ActorCreated> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: ActorCreated, _ctx: &mut Self::Context) {
        if let Some(done) = msg.durable {
            let synced = self.storage.synced();
            actix::spawn(async move {
                if synced.await.is_ok() {
                    let _ = done.send(());
                }
            });
        }
        let id = msg.actor_id;
        match msg.result {
            Ok(pid) => {
                let killed = self.actors.get(&id).is_some_and(|r| r.killed);
                if let Some(r) = self.actors.get_mut(&id)
                    && !killed
                {
                    r.state = ActorState::Alive;
                    r.node_id = Some(msg.node_id);
                    r.pid = Some(pid);
                }
                self.save_actor(id);
            }
            Err(e) => {
                tracing::warn!(actor = %id, error = %e, "actor creation failed");
                self.mark_dead(id, format!("its constructor failed: {e}"));
            }
        }
    }
}

/// An actor's host ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorDied {
    pub actor_id: ActorId,
    pub reason: String,
    pub unfinished: Vec<QueuedCall>,
}

impl Handler<ActorDied> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: ActorDied, _ctx: &mut Self::Context) {
        self.actor_died(msg.actor_id, msg.reason, msg.unfinished);
    }
}

/// Kill an actor; with `no_restart` it is dead for good.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct KillActor {
    pub actor_id: ActorId,
    pub no_restart: bool,
}

impl Handler<KillActor> for Gcs {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: KillActor, _ctx: &mut Self::Context) -> Self::Result {
        self.kill_actor(msg)
    }
}

/// A job's driver left: the job's record ends and its actors that are not detached die.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JobFinished(pub JobId);

impl Handler<JobFinished> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: JobFinished, _ctx: &mut Self::Context) {
        let job = msg.0;
        if let Some(rec) = self.jobs.get_mut(&job)
            && rec.end_time_ms.is_none()
        {
            rec.end_time_ms = Some(now_ms());
            let rec = rec.clone();
            self.persist("jobs", job.0.as_bytes(), &rec);
        }
        let doomed: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, r)| {
                r.spec.job_id == job && !r.spec.detached && r.state != ActorState::Dead
            })
            .map(|(id, _)| *id)
            .collect();
        for actor_id in doomed {
            tracing::info!(actor = %actor_id, job = %job, "its job ended: actor killed");
            let _ = self.kill_actor(KillActor {
                actor_id,
                no_restart: true,
            });
        }
        let groups: Vec<PlacementGroupId> = self
            .pgs
            .values()
            .filter(|p| {
                p.job_id == Some(job)
                    && matches!(
                        p.state,
                        PgState::Pending | PgState::Created | PgState::Rescheduling { .. }
                    )
            })
            .map(|p| p.id)
            .collect();
        for pg in groups {
            tracing::info!(pg = %pg, job = %job, "its job ended: placement group removed");
            let _ = self.remove_pg(pg, "its job ended");
        }
    }
}

impl Gcs {
    fn kill_actor(&mut self, msg: KillActor) -> Result<(), Error> {
        let id = msg.actor_id;
        let Some(r) = self.actors.get_mut(&id) else {
            return Err(Error::runtime(format!("no actor with id {id}")));
        };
        if r.state == ActorState::Dead {
            return Ok(());
        }
        if msg.no_restart {
            self.kill(id, "killed by kill()".to_string());
            return Ok(());
        }
        if let Some(route) = self.directory.get(&id) {
            route.restarting();
        }
        self.stop_everywhere(id, false);
        Ok(())
    }

    /// Kills an actor for good, for `reason`.
    fn kill(&mut self, id: ActorId, reason: String) {
        if let Some(r) = self.actors.get_mut(&id) {
            r.killed = true;
        }
        self.mark_dead(id, reason);
        self.stop_everywhere(id, true);
    }

    fn stop_everywhere(&self, id: ActorId, no_restart: bool) {
        for raylet in self.raylets.values() {
            raylet.do_send(raylet::StopActor {
                actor_id: id,
                no_restart,
            });
        }
    }
}

/// Look up a named actor.
#[derive(Message)]
#[rtype(result = "Result<ActorLookup, Error>")]
pub(crate) struct GetNamedActor {
    pub name: String,
    pub namespace: String,
}

impl Handler<GetNamedActor> for Gcs {
    type Result = Result<ActorLookup, Error>;
    fn handle(&mut self, msg: GetNamedActor, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.namespace.clone(), msg.name.clone());
        let not_found = || Error::ActorNotFound {
            name: msg.name.clone(),
            namespace: msg.namespace.clone(),
        };
        let (actor_id, r) = self.named_alive(&key).ok_or_else(not_found)?;
        Ok(ActorLookup {
            actor_id,
            class: r.spec.class.clone(),
        })
    }
}

/// Every actor record (state API, tests).
#[derive(Message)]
#[rtype(result = "Vec<ActorRecord>")]
pub(crate) struct ListActors;

impl Handler<ListActors> for Gcs {
    type Result = MessageResult<ListActors>;
    fn handle(&mut self, _msg: ListActors, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.actors.values().cloned().collect())
    }
}

/// Reserve a placement group.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct CreatePg {
    pub id: PlacementGroupId,
    pub name: Option<String>,
    pub bundles: Vec<ResourceSet>,
    pub strategy: PlacementStrategy,
    pub job_id: JobId,
}

impl Handler<CreatePg> for Gcs {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: CreatePg, ctx: &mut Self::Context) -> Self::Result {
        if msg.bundles.is_empty() || msg.bundles.iter().any(|b| b.is_empty()) {
            return Err(Error::PlacementGroup {
                id: msg.id.hex(),
                reason: "every bundle must ask for some resource".to_string(),
            });
        }
        self.pgs.insert(
            msg.id,
            PgRecord {
                id: msg.id,
                name: msg.name,
                bundles: msg.bundles,
                strategy: msg.strategy,
                state: PgState::Pending,
                placement: Vec::new(),
                job_id: Some(msg.job_id),
            },
        );
        self.save_pg(msg.id);
        self.place_pending(ctx);
        Ok(())
    }
}

/// How waiting on a placement group goes.
pub(crate) enum PgWait {
    Done(Result<(), Error>),
    Later(oneshot::Receiver<Result<(), Error>>),
}

/// Wait for a placement group.
#[derive(Message)]
#[rtype(result = "PgWait")]
pub(crate) struct WaitPg(pub PlacementGroupId);

impl Handler<WaitPg> for Gcs {
    type Result = MessageResult<WaitPg>;
    fn handle(&mut self, msg: WaitPg, _ctx: &mut Self::Context) -> Self::Result {
        let id = msg.0;
        let out = match self.pgs.get(&id).map(|p| p.state.clone()) {
            None => PgWait::Done(Err(Error::PlacementGroup {
                id: id.hex(),
                reason: "unknown placement group".to_string(),
            })),
            Some(PgState::Created) => PgWait::Done(Ok(())),
            Some(PgState::Removed) => PgWait::Done(Err(Error::PlacementGroup {
                id: id.hex(),
                reason: "it was removed".to_string(),
            })),
            Some(PgState::Failed(reason)) => PgWait::Done(Err(Error::PlacementGroup {
                id: id.hex(),
                reason,
            })),
            Some(PgState::Pending | PgState::Rescheduling { .. }) => {
                let (tx, rx) = oneshot::channel();
                self.pg_waiters.entry(id).or_default().push(tx);
                PgWait::Later(rx)
            }
        };
        MessageResult(out)
    }
}

/// Remove a placement group.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct RemovePg(pub PlacementGroupId);

impl Handler<RemovePg> for Gcs {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: RemovePg, _ctx: &mut Self::Context) -> Self::Result {
        self.remove_pg(msg.0, "it was removed")
    }
}

impl Gcs {
    /// Removes a placement group and gives its bundles back; its waiters get `reason`.
    fn remove_pg(&mut self, id: PlacementGroupId, reason: &str) -> Result<(), Error> {
        let Some(p) = self.pgs.get_mut(&id) else {
            return Err(Error::PlacementGroup {
                id: id.hex(),
                reason: "unknown placement group".to_string(),
            });
        };
        let placement = p.held();
        p.state = PgState::Removed;
        self.save_pg(id);
        // Ray's rule: the group's actors end with it (hosts of those placed on other nodes
        // are told through their routes).
        let members: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, r)| {
                !r.spec.owned_elsewhere
                    && r.state != ActorState::Dead
                    && matches!(r.spec.strategy, crate::sched::SchedulingStrategy::PlacementGroup { pg, .. } if pg == id)
            })
            .map(|(a, _)| *a)
            .collect();
        for a in members {
            self.kill(
                a,
                format!("its placement group {} ended: {reason}", id.hex()),
            );
        }
        if !placement.is_empty() {
            self.return_all(id, &placement);
        }
        self.notify_pg(
            id,
            Err(Error::PlacementGroup {
                id: id.hex(),
                reason: reason.to_string(),
            }),
        );
        Ok(())
    }
}

/// Every placement group record.
#[derive(Message)]
#[rtype(result = "Vec<PgRecord>")]
pub(crate) struct ListPgs;

impl Handler<ListPgs> for Gcs {
    type Result = MessageResult<ListPgs>;
    fn handle(&mut self, _msg: ListPgs, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.pgs.values().cloned().collect())
    }
}

fn kv_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = ns.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// One operation on the KV table. The KV is cluster-wide: the GCS of a node that is not the
/// head hands it to the head's GCS through its daemon (`ClusterAsk::Kv`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KvOp {
    /// Writes an entry (unless it exists and `overwrite` is false).
    Put {
        ns: String,
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        overwrite: bool,
    },
    /// Reads an entry.
    Get { ns: String, key: String },
    /// Deletes an entry.
    Del { ns: String, key: String },
    /// Every entry of a namespace whose key starts with a prefix.
    List { ns: String, prefix: String },
}

/// The answer to a `KvOp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KvAnswer {
    /// Whether a put wrote or a delete found the entry.
    Done(bool),
    /// The value read.
    Value(Option<serde_bytes::ByteBuf>),
    /// The entries listed.
    Entries(Vec<(String, serde_bytes::ByteBuf)>),
}

/// Runs a KV operation here, or at the head when this GCS is a cluster node's.
#[derive(Message)]
#[rtype(result = "Result<KvAnswer, Error>")]
pub(crate) struct Kv(pub KvOp);

impl Handler<Kv> for Gcs {
    type Result = ResponseFuture<Result<KvAnswer, Error>>;
    fn handle(&mut self, msg: Kv, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(link) = self.to_head() {
            return Box::pin(async move {
                let (done, answer) = flume::bounded(1);
                link.send_async(crate::node::ClusterAsk::Kv { op: msg.0, done })
                    .await
                    .map_err(|_| Error::runtime("the node's daemon is gone"))?;
                answer
                    .recv_async()
                    .await
                    .map_err(|_| Error::runtime("the node's daemon dropped a kv request"))?
            });
        }
        self.kv_here(msg.0)
    }
}

impl Gcs {
    fn kv_here(&mut self, op: KvOp) -> ResponseFuture<Result<KvAnswer, Error>> {
        match op {
            KvOp::Put {
                ns,
                key,
                value,
                overwrite,
            } => {
                let k = kv_key(&ns, &key);
                let written = match self.storage.get("kv", &k) {
                    Ok(Some(_)) if !overwrite => Ok(false),
                    Ok(_) => self.storage.put("kv", &k, &value).map(|()| true),
                    Err(e) => Err(e),
                };
                self.acknowledged(written.map(KvAnswer::Done))
            }
            KvOp::Del { ns, key } => {
                let deleted = self.storage.delete("kv", &kv_key(&ns, &key));
                self.acknowledged(deleted.map(KvAnswer::Done))
            }
            KvOp::Get { ns, key } => {
                let got = self.storage.get("kv", &kv_key(&ns, &key));
                Box::pin(async move {
                    got.map(|v| KvAnswer::Value(v.map(serde_bytes::ByteBuf::from)))
                        .map_err(Error::runtime)
                })
            }
            KvOp::List { ns, prefix } => {
                let start = kv_key(&ns, &prefix);
                let ns_len = kv_key(&ns, "").len();
                let rows = self.storage.scan("kv").map(|rows| {
                    rows.into_iter()
                        .filter(|(k, _)| k.starts_with(&start))
                        .filter_map(|(k, v)| {
                            let key = String::from_utf8(k[ns_len..].to_vec()).ok()?;
                            Some((key, serde_bytes::ByteBuf::from(v)))
                        })
                        .collect()
                });
                Box::pin(async move { rows.map(KvAnswer::Entries).map_err(Error::runtime) })
            }
        }
    }
}

impl KvAnswer {
    /// A put's or delete's answer.
    pub(crate) fn done(self) -> Result<bool, Error> {
        match self {
            KvAnswer::Done(b) => Ok(b),
            other => Err(Error::runtime(format!("kv: unexpected answer {other:?}"))),
        }
    }

    /// A get's answer.
    pub(crate) fn value(self) -> Result<Option<Vec<u8>>, Error> {
        match self {
            KvAnswer::Value(v) => Ok(v.map(serde_bytes::ByteBuf::into_vec)),
            other => Err(Error::runtime(format!("kv: unexpected answer {other:?}"))),
        }
    }

    /// A list's answer.
    pub(crate) fn entries(self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        match self {
            KvAnswer::Entries(v) => Ok(v.into_iter().map(|(k, v)| (k, v.into_vec())).collect()),
            other => Err(Error::runtime(format!("kv: unexpected answer {other:?}"))),
        }
    }
}

// ---- cluster-wide names and owners (kept by the head's GCS) ------------------------------------

/// Links this GCS to its node's daemon (released names are reported to the head).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetClusterLink(pub flume::Sender<crate::node::ClusterAsk>, pub bool);

impl Handler<SetClusterLink> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: SetClusterLink, _ctx: &mut Self::Context) {
        self.cluster = Some(msg.0);
        self.is_head = msg.1;
        // Groups of an earlier life of this GCS: their bundles on other nodes go back now.
        for (pg, placement) in std::mem::take(&mut self.pg_returns) {
            self.return_all(pg, &placement);
        }
        if let Some(raylet) = self.pick_raylet() {
            for (actor_id, node) in std::mem::take(&mut self.pg_kills) {
                raylet.do_send(raylet::KillRemoteActor { actor_id, node });
            }
        }
    }
}

/// On the head: another node claims a name for an actor it owns.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct ClaimName {
    pub namespace: String,
    pub name: String,
    pub actor_id: ActorId,
    pub class: String,
    pub owner: NodeId,
}

impl Handler<ClaimName> for Gcs {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: ClaimName, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.namespace.clone(), msg.name.clone());
        if self.named_alive(&key).is_some() || self.claimed_elsewhere(&key, msg.actor_id) {
            return Err(Error::NameTaken {
                name: msg.name,
                namespace: msg.namespace,
            });
        }
        self.owners.insert(msg.actor_id, msg.owner);
        self.remote_named
            .insert(key, (msg.actor_id, msg.class, msg.owner));
        Ok(())
    }
}

/// On the head: a name another node claimed is free again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ReleaseName {
    pub namespace: String,
    pub name: String,
    pub actor_id: ActorId,
}

impl Handler<ReleaseName> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: ReleaseName, _ctx: &mut Self::Context) {
        let key = (msg.namespace, msg.name);
        if self
            .remote_named
            .get(&key)
            .is_some_and(|(id, ..)| *id == msg.actor_id)
        {
            self.remote_named.remove(&key);
        }
    }
}

/// On the head: another node owns this actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RecordOwner {
    pub actor_id: ActorId,
    pub owner: NodeId,
}

impl Handler<RecordOwner> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: RecordOwner, _ctx: &mut Self::Context) {
        self.owners.insert(msg.actor_id, msg.owner);
    }
}

/// Where an actor's calls go, as the head knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActorAt {
    pub actor_id: ActorId,
    pub class: String,
    /// The owner node (`None`: the node that answered).
    pub owner: Option<NodeId>,
}

/// On the head: a named actor anywhere in the cluster.
#[derive(Message)]
#[rtype(result = "Option<ActorAt>")]
pub(crate) struct FindNamed {
    pub namespace: String,
    pub name: String,
}

impl Handler<FindNamed> for Gcs {
    type Result = Option<ActorAt>;
    fn handle(&mut self, msg: FindNamed, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.namespace, msg.name);
        if let Some((actor_id, r)) = self.named_alive(&key) {
            return Some(ActorAt {
                actor_id,
                class: r.spec.class.clone(),
                owner: None,
            });
        }
        self.remote_named
            .get(&key)
            .map(|(id, class, owner)| ActorAt {
                actor_id: *id,
                class: class.clone(),
                owner: Some(*owner),
            })
    }
}

/// Whether this node runs an actor for another node: `None` if it does (alive, or being
/// created or restarted), else why not and whether that is final: it died here past its
/// restarts (final), or this node dropped it or never had it (its owner may restart it).
#[derive(Message)]
#[rtype(result = "Option<(String, bool)>")]
pub(crate) struct HostsActor(pub ActorId);

impl Handler<HostsActor> for Gcs {
    type Result = Option<(String, bool)>;
    fn handle(&mut self, msg: HostsActor, _ctx: &mut Self::Context) -> Self::Result {
        match self.actors.get(&msg.0) {
            None => Some(("this node has no record of it".to_string(), false)),
            Some(r) if r.state == ActorState::Dead => Some((
                r.death_cause
                    .clone()
                    .unwrap_or_else(|| "it died here".to_string()),
                !r.killed,
            )),
            Some(_) => None,
        }
    }
}

/// An actor is dead for good (its host says it died past its restarts).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorGone {
    pub actor_id: ActorId,
    pub reason: String,
}

impl Handler<ActorGone> for Gcs {
    type Result = ();
    fn handle(&mut self, msg: ActorGone, _ctx: &mut Self::Context) {
        if self
            .actors
            .get(&msg.actor_id)
            .is_some_and(|r| r.state != ActorState::Dead)
        {
            self.kill(msg.actor_id, msg.reason);
        }
    }
}

/// On the head: the owner of any actor of the cluster.
#[derive(Message)]
#[rtype(result = "Option<ActorAt>")]
pub(crate) struct FindOwner(pub ActorId);

impl Handler<FindOwner> for Gcs {
    type Result = Option<ActorAt>;
    fn handle(&mut self, msg: FindOwner, _ctx: &mut Self::Context) -> Self::Result {
        let id = msg.0;
        if let Some(r) = self.actors.get(&id) {
            return Some(ActorAt {
                actor_id: id,
                class: r.spec.class.clone(),
                owner: None,
            });
        }
        self.owners.get(&id).map(|owner| ActorAt {
            actor_id: id,
            class: String::new(),
            owner: Some(*owner),
        })
    }
}

/// Actors by state and jobs by status (Ray's names), for `/metrics`.
#[derive(Message)]
#[rtype(result = "(crate::actors::metrics::Counts, crate::actors::metrics::Counts)")]
pub(crate) struct CountStates;

impl Handler<CountStates> for Gcs {
    type Result = MessageResult<CountStates>;
    fn handle(&mut self, _msg: CountStates, _ctx: &mut Self::Context) -> Self::Result {
        let mut actors = crate::actors::metrics::Counts::new();
        // An actor hosted here for another node is counted by its owner.
        for r in self.actors.values().filter(|r| !r.spec.owned_elsewhere) {
            let state = match r.state {
                ActorState::PendingCreation => "PENDING_CREATION",
                ActorState::Alive => "ALIVE",
                ActorState::Restarting => "RESTARTING",
                ActorState::Dead => "DEAD",
            };
            *actors.entry(state.to_string()).or_default() += 1;
        }
        let mut jobs = crate::actors::metrics::Counts::new();
        // The daemon's own job and internal namespaces are not users' jobs.
        let users = self.jobs.values().filter(|j| {
            !j.namespace.starts_with("_mobula") && !j.namespace.starts_with("_ray_internal")
        });
        for j in users {
            // Ray's rule for driver jobs: SUCCEEDED once the driver is gone.
            let status = if j.end_time_ms.is_some() {
                "SUCCEEDED"
            } else {
                "RUNNING"
            };
            *jobs.entry(status.to_string()).or_default() += 1;
        }
        MessageResult((actors, jobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStorage, ObjectTable};

    #[test]
    fn only_the_lost_bundles_of_a_group_are_placed_again() {
        let (a, b, c) = (NodeId::new(), NodeId::new(), NodeId::new());
        let mut pg = PgRecord {
            id: PlacementGroupId::new(),
            name: None,
            bundles: (1..=3)
                .map(|n| ResourceSet::new().with("CPU", n as f64))
                .collect(),
            strategy: PlacementStrategy::StrictSpread,
            state: PgState::Rescheduling { lost: vec![1] },
            placement: vec![a, b, c],
            job_id: None,
        };
        assert_eq!(pg.held(), vec![a, c]);
        let r = PgRequest::of(&pg);
        assert!(r.rescheduling);
        assert_eq!(r.indices, vec![1]);
        assert_eq!(r.bundles, vec![ResourceSet::new().with("CPU", 2.0)]);
        // Not the dead node, nor (strictly spread) the nodes of the other bundles.
        assert_eq!(r.exclude, [a, b, c].into_iter().collect());
        pg.strategy = PlacementStrategy::Spread;
        assert_eq!(PgRequest::of(&pg).exclude, [b].into_iter().collect());
        pg.state = PgState::Pending;
        let all = PgRequest::of(&pg);
        assert_eq!((all.indices, all.rescheduling), (vec![0, 1, 2], false));
        assert!(pg.held().is_empty());
    }

    #[test]
    fn a_restarted_gcs_restores_its_jobs_as_ended() {
        let storage: Arc<dyn GcsStorage> = Arc::new(MemoryStorage::default());
        let (open, done) = (JobId::new(), JobId::new());
        for (job, end) in [(open, None), (done, Some(7))] {
            let rec = JobRecord {
                job_id: job,
                namespace: "ns".into(),
                driver_pid: 1,
                start_time_ms: 5,
                end_time_ms: end,
                submission_id: None,
                launch: None,
            };
            let bytes = rmp_serde::to_vec(&rec).expect("encode");
            storage.put("jobs", job.0.as_bytes(), &bytes).expect("put");
        }
        let directory = Arc::new(ActorDirectory::new(Arc::new(ObjectTable::new(1 << 20))));
        let gcs = Gcs::new(storage.clone(), directory);
        assert_eq!(gcs.jobs.len(), 2);
        assert!(gcs.jobs[&open].end_time_ms.is_some_and(|t| t >= 5));
        assert_eq!(gcs.jobs[&done].end_time_ms, Some(7));
        // The end time given at the restart is stored too.
        let stored = storage
            .get("jobs", open.0.as_bytes())
            .expect("get")
            .expect("row");
        let rec: JobRecord = rmp_serde::from_slice(&stored).expect("decode");
        assert!(rec.end_time_ms.is_some());
    }

    fn record(name: &str, detached: bool, state: ActorState, node: Option<NodeId>) -> ActorRecord {
        ActorRecord {
            spec: ActorSpec {
                name: Some(name.into()),
                detached,
                max_restarts: 1,
                ..ActorSpec::for_test()
            },
            state,
            num_restarts: 0,
            node_id: node,
            pid: None,
            death_cause: None,
            killed: false,
        }
    }

    #[test]
    fn a_restarted_gcs_keeps_only_its_detached_actors() {
        let storage: Arc<dyn GcsStorage> = Arc::new(MemoryStorage::default());
        let (old_head, other) = (NodeId::new(), NodeId::new());
        let node_row = rmp_serde::to_vec(&old_head).expect("encode");
        storage
            .put("nodes", old_head.0.as_bytes(), &node_row)
            .expect("put");
        let mut hosted = record("hosted", false, ActorState::Alive, Some(old_head));
        hosted.spec.owned_elsewhere = true;
        hosted.spec.name = None;
        let recs = [
            record("dead", true, ActorState::Dead, Some(other)),
            hosted,
            record("attached", false, ActorState::Alive, Some(other)),
            record("far", true, ActorState::Alive, Some(other)),
            record("home", true, ActorState::Alive, Some(old_head)),
            record("new", true, ActorState::PendingCreation, None),
        ];
        for r in &recs {
            let bytes = rmp_serde::to_vec(r).expect("encode");
            storage
                .put("actors", r.spec.actor_id.0.as_bytes(), &bytes)
                .expect("put");
        }
        // A group with a bundle on the old head and one on the other node.
        let pg = PgRecord {
            id: PlacementGroupId::new(),
            name: None,
            bundles: vec![ResourceSet::new(), ResourceSet::new()],
            strategy: PlacementStrategy::Spread,
            state: PgState::Created,
            placement: vec![old_head, other],
            job_id: Some(JobId::new()),
        };
        let bytes = rmp_serde::to_vec(&pg).expect("encode");
        storage
            .put("placement_groups", pg.id.0.as_bytes(), &bytes)
            .expect("put");
        let directory = Arc::new(ActorDirectory::new(Arc::new(ObjectTable::new(1 << 20))));
        let gcs = Gcs::new(storage.clone(), directory);
        // Its job ended with the head: removed, its bundle elsewhere to be given back.
        assert_eq!(gcs.pgs[&pg.id].state, PgState::Removed);
        assert_eq!(gcs.pg_returns, vec![(pg.id, vec![other])]);
        let id = |i: usize| recs[i].spec.actor_id;
        let state = |i: usize| gcs.actors[&id(i)].state;
        assert_eq!(gcs.actors.len(), recs.len(), "every record is listed");
        for (i, r) in recs.iter().enumerate().take(3) {
            assert_eq!(state(i), ActorState::Dead, "{:?}", r.spec.name);
        }
        assert_eq!(
            gcs.actors[&id(2)].death_cause.as_deref(),
            Some("its owner died with the head")
        );
        // The deaths given at the restart are stored too.
        let stored = storage
            .get("actors", id(2).0.as_bytes())
            .expect("get")
            .expect("row");
        let rec: ActorRecord = rmp_serde::from_slice(&stored).expect("decode");
        assert_eq!(rec.state, ActorState::Dead);
        // Detached ones come back: the one on another node to that node, the others here.
        let mut back = gcs.recovering.clone();
        back.sort();
        let mut want = vec![(id(3), Some(other)), (id(4), None), (id(5), None)];
        want.sort();
        assert_eq!(back, want);
        for (i, name) in [(3, "far"), (4, "home"), (5, "new")] {
            assert_eq!(gcs.named.get(&("ns".into(), name.into())), Some(&id(i)));
        }
        assert!(!gcs.named.contains_key(&("ns".into(), "attached".into())));
        assert!(!gcs.named.contains_key(&("ns".into(), "dead".into())));
    }
}
