//! One node, embedded in the calling process: it starts an actix `System` on its own thread
//! with the GCS, the raylet (on its own arbiter) and the object table, and hands back the
//! [`NodeClient`], the in-process implementation of the client API.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::actors::directory::{ActorDirectory, QueuedCall, fail_call};
use crate::actors::gcs::{self, Gcs, PgWait};
use crate::actors::raylet::{self, QueuedTask, Raylet, RayletConfig, RayletMsg};
use crate::api::{Config, WorkerMode};
use crate::codec::Encoded;
use crate::core::{ActorLookup, Core, CoreRef};
use crate::error::{Error, Result};
use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId};
use crate::sched::{PlacementStrategy, ResourceSet};
use crate::spec::{ActorCall, ActorSpec, TaskSpec};
use crate::store::{self, Lookup, MemoryStorage, Object, ObjectTable, Pins};
use crate::worker::process::WorkerCommand;

/// Capacity of the raylet's hot-path channel: submitters block past it.
const RAYLET_CHANNEL: usize = 65_536;

/// The client of an embedded node.
pub(crate) struct NodeClient {
    job_id: JobId,
    node_id: NodeId,
    pub(crate) table: Arc<ObjectTable>,
    pub(crate) raylet_tx: flume::Sender<RayletMsg>,
    pub(crate) raylet: Addr<Raylet>,
    pub(crate) gcs: Addr<Gcs>,
    pub(crate) directory: Arc<ActorDirectory>,
    /// The node's recent task history (the state API's tasks).
    pub(crate) history: Arc<crate::actors::history::TaskLog>,
    system: Mutex<Option<(actix::System, std::thread::JoinHandle<()>)>>,
    temp_dir: Option<PathBuf>,
    /// The Unix socket where this node accepts worker processes and drivers (process mode).
    pub(crate) socket: Option<PathBuf>,
    /// Set on a cluster node: questions for the cluster (names, owners of actors).
    cluster: parking_lot::RwLock<Option<ClusterLink>>,
}

/// How a cluster node's client reaches its daemon.
#[derive(Clone)]
pub(crate) struct ClusterLink {
    pub asks: flume::Sender<ClusterAsk>,
    pub is_head: bool,
}

/// A question or report for the cluster, answered by the node's daemon (through the head,
/// which keeps the cluster-wide names and actor owners).
#[derive(Debug)]
pub(crate) enum ClusterAsk {
    /// The cluster's status as the head sees it (the web server's view of the nodes).
    Status {
        done: flume::Sender<crate::cluster::StatusReport>,
    },
    /// A state-API query, asked of every alive node (or only `node`) and gathered.
    State {
        query: crate::cluster::state::StateQuery,
        node: Option<String>,
        done: flume::Sender<Vec<crate::cluster::state::NodeAnswer>>,
    },
    /// Runs a submitted job's entrypoint on another node (the head's job manager); its
    /// events follow on `events`.
    RunJob {
        node: String,
        job: crate::cluster::jobs::RemoteJob,
        events: flume::Sender<crate::cluster::jobs::JobEvent>,
        done: flume::Sender<std::result::Result<(), String>>,
    },
    /// Stops a job another node runs.
    StopJob { node: String, sid: String },
    /// On a restarted head: the events of a job `node` ran for the old head go to `events`.
    FollowJob {
        node: String,
        sid: String,
        events: flume::Sender<crate::cluster::jobs::JobEvent>,
    },
    /// Claims a name for an actor this node owns.
    ClaimName {
        namespace: String,
        name: String,
        actor_id: ActorId,
        class: String,
        done: flume::Sender<Result<()>>,
    },
    /// A name this node's actor held is free again.
    ReleaseName {
        namespace: String,
        name: String,
        actor_id: ActorId,
    },
    /// This node owns a new actor.
    Owned { actor_id: ActorId },
    /// Finds a named actor elsewhere (and routes its calls there).
    LookupName {
        namespace: String,
        name: String,
        done: flume::Sender<Result<ActorLookup>>,
    },
    /// A KV operation for the head's GCS (the KV is cluster-wide).
    Kv {
        op: crate::actors::gcs::KvOp,
        done: flume::Sender<Result<crate::actors::gcs::KvAnswer>>,
    },
    /// Finds the owner of an actor this node does not know; its route is pending until then.
    LookupActor { actor_id: ActorId },
    /// Kills an actor another node owns (found through the head).
    Kill {
        actor_id: ActorId,
        no_restart: bool,
        done: flume::Sender<Result<()>>,
    },
    /// Reserves bundles of a placement group this node's GCS places on another node.
    CommitBundles {
        node: crate::NodeId,
        pg: crate::PlacementGroupId,
        bundles: Vec<(usize, crate::ResourceSet)>,
        done: flume::Sender<Result<()>>,
    },
    /// Gives back the bundles of a placement group on another node.
    ReturnBundles {
        node: crate::NodeId,
        pg: crate::PlacementGroupId,
    },
}

/// How long a client waits for the cluster to answer a name question.
const CLUSTER_ASK: Duration = Duration::from_secs(30);

impl ClusterLink {
    /// Asks the daemon a question and waits (blocking) for its answer.
    fn ask<T>(&self, question: impl FnOnce(flume::Sender<Result<T>>) -> ClusterAsk) -> Result<T> {
        let (done, rx) = flume::bounded(1);
        self.asks
            .send(question(done))
            .map_err(|_| Error::runtime("the node daemon is gone"))?;
        rx.recv_timeout(CLUSTER_ASK)
            .map_err(|_| Error::runtime("the cluster did not answer in time"))?
    }
}

/// A system actor's answer, or the error of it being unreachable.
pub(crate) fn mailbox<T>(r: std::result::Result<T, MailboxError>) -> Result<T> {
    r.map_err(|e| Error::runtime(format!("system actor unreachable: {e}")))
}

impl NodeClient {
    /// Reserves a placement group for `job` (a driver or worker connected to this node), which
    /// it ends with.
    pub(crate) fn create_placement_group_for(
        &self,
        job: JobId,
        id: PlacementGroupId,
        name: Option<String>,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
    ) -> Result<()> {
        self.ask(
            &self.gcs,
            gcs::CreatePg {
                id,
                name,
                bundles,
                strategy,
                job_id: job,
            },
        )?
    }

    /// Makes this node's client part of a cluster.
    pub(crate) fn link_cluster(&self, link: ClusterLink) {
        self.gcs
            .do_send(gcs::SetClusterLink(link.asks.clone(), link.is_head));
        *self.cluster.write() = Some(link);
    }

    fn ask<A, M>(&self, addr: &Addr<A>, msg: M) -> Result<M::Result>
    where
        A: Actor<Context = Context<A>> + Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        mailbox(futures::executor::block_on(addr.send(msg)))
    }

    /// Stores an object under a given id (one reference, held by the caller).
    pub(crate) fn put_with_id(&self, id: ObjectId, value: Encoded, is_error: bool) -> Result<()> {
        self.table
            .put(id, value.data, value.nested, is_error)
            .map_err(Into::into)
    }

    /// Waits (without blocking a thread) for the objects, up to `timeout`.
    pub(crate) async fn get_async_many(
        table: Arc<ObjectTable>,
        ids: Vec<ObjectId>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Object>> {
        let wait_all = async {
            for id in &ids {
                if matches!(table.peek(id), store::Peek::Pending) {
                    store::sealed(&table, *id).await;
                }
            }
        };
        match timeout {
            Some(t) => {
                if tokio::time::timeout(t, wait_all).await.is_err() {
                    return Err(Error::Timeout(t));
                }
            }
            None => wait_all.await,
        }
        let spilled = ids
            .iter()
            .any(|id| matches!(table.peek(id), store::Peek::Sealed { spilled: true, .. }));
        let read = move || ids.iter().map(|id| ready_or_lost(&table, id)).collect();
        // Spilled values are read back from their files on a blocking thread, not the
        // executor's (outside a tokio runtime, here).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if spilled => rt
                .spawn_blocking(read)
                .await
                .unwrap_or_else(|e| Err(Error::runtime(format!("reading objects failed: {e}")))),
            _ => read(),
        }
    }
}

fn ready_or_lost(table: &ObjectTable, id: &ObjectId) -> Result<Object> {
    match table.lookup(id) {
        Lookup::Ready(o) => Ok(o),
        Lookup::Pending | Lookup::Missing => Err(Error::ObjectLost {
            id: id.hex(),
            reason: "no reference to it is held here any more".to_string(),
        }),
    }
}

impl Core for NodeClient {
    fn job_id(&self) -> JobId {
        self.job_id
    }
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn incref(&self, id: ObjectId) {
        self.table.incref(id);
    }
    fn decref(&self, id: ObjectId) {
        self.table.decref(id);
    }

    fn put(&self, value: Encoded) -> Result<ObjectId> {
        let id = ObjectId::new();
        self.put_with_id(id, value, false)?;
        Ok(id)
    }

    fn put_error(&self, err: &Error) -> ObjectId {
        let id = ObjectId::new();
        let data = crate::codec::encode(err)
            .map(|e| e.data)
            .unwrap_or_default();
        // An error object is tiny: it is stored even over the limit, so the caller's `get`
        // reports the real failure.
        if self.table.put(id, data.clone(), Vec::new(), true).is_err() {
            self.table.create_pending(id);
            self.table.seal(id, data, Vec::new(), true);
        }
        id
    }

    fn get_objects(&self, ids: &[ObjectId], timeout: Option<Duration>) -> Result<Vec<Object>> {
        let pending: Vec<ObjectId> = ids
            .iter()
            .filter(|id| matches!(self.table.peek(id), store::Peek::Pending))
            .copied()
            .collect();
        if !pending.is_empty() {
            let ctx = crate::worker::ctx();
            if let Some(c) = &ctx {
                let _ = c.notify.send(RayletMsg::Blocked(c.worker_id));
            }
            let ok = store::block_until(
                &self.table,
                &pending,
                pending.len(),
                store::deadline(timeout),
            );
            if let Some(c) = &ctx {
                let _ = c.notify.send(RayletMsg::Unblocked(c.worker_id));
            }
            if !ok {
                return Err(Error::Timeout(timeout.unwrap_or_default()));
            }
        }
        ids.iter()
            .map(|id| ready_or_lost(&self.table, id))
            .collect()
    }

    fn get_object_async(&self, id: ObjectId) -> BoxFuture<'static, Result<Object>> {
        let table = self.table.clone();
        async move {
            let mut v = Self::get_async_many(table, vec![id], None).await?;
            v.pop().ok_or_else(|| Error::runtime("empty get"))
        }
        .boxed()
    }

    fn wait(&self, ids: &[ObjectId], num: usize, timeout: Option<Duration>) -> Result<Vec<bool>> {
        let flags =
            |t: &ObjectTable| -> Vec<bool> { ids.iter().map(|id| t.is_ready(id)).collect() };
        let now = flags(&self.table);
        let ready = now.iter().filter(|r| **r).count();
        if ready >= num {
            return Ok(now);
        }
        let pending: Vec<ObjectId> = ids
            .iter()
            .zip(&now)
            .filter(|(_, r)| !**r)
            .map(|(id, _)| *id)
            .collect();
        let ctx = crate::worker::ctx();
        if let Some(c) = &ctx {
            let _ = c.notify.send(RayletMsg::Blocked(c.worker_id));
        }
        store::block_until(&self.table, &pending, num - ready, store::deadline(timeout));
        if let Some(c) = &ctx {
            let _ = c.notify.send(RayletMsg::Unblocked(c.worker_id));
        }
        Ok(flags(&self.table))
    }

    fn submit_task(&self, spec: TaskSpec) -> Result<()> {
        self.table.create_pending(spec.return_id);
        let pins = Pins::new(&self.table, spec.deps());
        let task = QueuedTask {
            spec: Arc::new(spec),
            _pins: pins,
            submitted: std::time::Instant::now(),
        };
        self.raylet_tx
            .send(RayletMsg::Submit(task))
            .map_err(|_| Error::runtime("the raylet has stopped"))
    }

    fn cancel(&self, return_id: ObjectId, force: bool) -> Result<()> {
        self.raylet_tx
            .send(RayletMsg::Cancel { return_id, force })
            .map_err(|_| Error::runtime("the raylet has stopped"))
    }

    fn create_actor(&self, spec: ActorSpec) -> Result<()> {
        let link = self.cluster.read().clone().filter(|l| !l.is_head);
        let Some(link) = link else {
            return self.ask(&self.gcs, gcs::RegisterActor(spec))?;
        };
        // Names are unique cluster-wide: the head grants them.
        let (actor_id, claim) = (
            spec.actor_id,
            spec.name.clone().map(|n| (spec.namespace.clone(), n)),
        );
        if let Some((namespace, name)) = &claim {
            link.ask(|done| ClusterAsk::ClaimName {
                namespace: namespace.clone(),
                name: name.clone(),
                actor_id,
                class: spec.class.clone(),
                done,
            })?;
        }
        let created = self.ask(&self.gcs, gcs::RegisterActor(spec))?;
        match (&created, claim) {
            (Ok(()), None) => {
                let _ = link.asks.try_send(ClusterAsk::Owned { actor_id });
            }
            (Err(_), Some((namespace, name))) => {
                let _ = link.asks.try_send(ClusterAsk::ReleaseName {
                    namespace,
                    name,
                    actor_id,
                });
            }
            _ => {}
        }
        created
    }

    fn takes_calls_now(&self, actor: &ActorId, n: usize) -> bool {
        self.directory.get(actor).is_none_or(|r| r.room() >= n)
    }

    fn submit_actor_call(&self, call: ActorCall) -> Result<()> {
        self.table.create_pending(call.return_id);
        let pins = Pins::new(&self.table, call.deps());
        let actor_id = call.actor_id;
        let q = QueuedCall { call, _pins: pins };
        let link = self.cluster.read().clone();
        match (self.directory.get(&actor_id), link) {
            (Some(route), _) => route.submit(q),
            (None, Some(link)) => {
                // An actor of another node (its handle was passed here): calls queue until
                // the daemon found its owner.
                self.directory.register(actor_id, actor_id.hex()).submit(q);
                let _ = link.asks.try_send(ClusterAsk::LookupActor { actor_id });
            }
            (None, None) => fail_call(
                &self.table,
                q,
                &Error::ActorDied {
                    actor: actor_id.hex(),
                    reason: "no such actor is known on this node".to_string(),
                },
            ),
        }
        Ok(())
    }

    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<()> {
        let local = self.ask(
            &self.gcs,
            gcs::KillActor {
                actor_id: id,
                no_restart,
            },
        )?;
        match (local, self.cluster.read().clone()) {
            // Another node owns it: its owner kills it.
            (Err(_), Some(link)) => link.ask(|done| ClusterAsk::Kill {
                actor_id: id,
                no_restart,
                done,
            }),
            (r, _) => r,
        }
    }

    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<ActorLookup> {
        let local = self.ask(
            &self.gcs,
            gcs::GetNamedActor {
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
        )?;
        let link = self.cluster.read().clone();
        match (local, link) {
            (Err(Error::ActorNotFound { .. }), Some(link)) => {
                link.ask(|done| ClusterAsk::LookupName {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    done,
                })
            }
            (r, _) => r,
        }
    }

    fn create_placement_group(
        &self,
        id: PlacementGroupId,
        name: Option<String>,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
    ) -> Result<()> {
        self.create_placement_group_for(self.job_id, id, name, bundles, strategy)
    }

    fn wait_placement_group(
        &self,
        id: PlacementGroupId,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        match self.ask(&self.gcs, gcs::WaitPg(id))? {
            PgWait::Done(r) => r.map(|()| true),
            PgWait::Later(rx) => {
                let fut = async move {
                    match timeout {
                        None => rx.await.map(Some),
                        Some(t) => match tokio::time::timeout(t, rx).await {
                            Ok(r) => r.map(Some),
                            Err(_) => Ok(None),
                        },
                    }
                };
                // A timer needs a tokio runtime: run the wait on a small one.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(Error::runtime)?;
                match rt.block_on(fut) {
                    Ok(Some(r)) => r.map(|()| true),
                    Ok(None) => Ok(false),
                    Err(_) => Err(Error::runtime("the gcs dropped a placement group wait")),
                }
            }
        }
    }

    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<()> {
        self.ask(&self.gcs, gcs::RemovePg(id))?
    }

    fn kv_put(&self, ns: &str, key: &str, value: Vec<u8>, overwrite: bool) -> Result<bool> {
        let op = gcs::KvOp::Put {
            ns: ns.to_string(),
            key: key.to_string(),
            value,
            overwrite,
        };
        self.ask(&self.gcs, gcs::Kv(op))?
            .and_then(gcs::KvAnswer::done)
    }

    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let op = gcs::KvOp::Get {
            ns: ns.to_string(),
            key: key.to_string(),
        };
        self.ask(&self.gcs, gcs::Kv(op))?
            .and_then(gcs::KvAnswer::value)
    }

    fn kv_del(&self, ns: &str, key: &str) -> Result<bool> {
        let op = gcs::KvOp::Del {
            ns: ns.to_string(),
            key: key.to_string(),
        };
        self.ask(&self.gcs, gcs::Kv(op))?
            .and_then(gcs::KvAnswer::done)
    }

    fn cluster_resources(&self) -> Result<HashMap<String, f64>> {
        let (total, _) = self.ask(&self.raylet, raylet::GetClusterResources)?;
        Ok(total.positive_part().to_f64_map())
    }

    fn available_resources(&self) -> Result<HashMap<String, f64>> {
        let (_, available) = self.ask(&self.raylet, raylet::GetClusterResources)?;
        Ok(available.positive_part().to_f64_map())
    }

    fn node(&self) -> Option<&NodeClient> {
        Some(self)
    }

    fn store_stats(&self) -> Result<crate::store::StoreStats> {
        Ok(self.table.stats())
    }

    fn shutdown(&self) {
        let Some((system, thread)) = self.system.lock().take() else {
            return;
        };
        let _ = futures::executor::block_on(self.raylet.send(raylet::Shutdown));
        for route in self.directory.all() {
            route.kill(Error::ActorDied {
                actor: route.display.clone(),
                reason: "the runtime shut down".to_string(),
            });
        }
        system.stop();
        if thread.join().is_err() {
            tracing::error!("the system thread panicked");
        }
        self.table.remove_spill_dir();
        crate::worker::shm::release_spares();
        // Best effort: values of this node's worker processes that were killed with it.
        crate::worker::shm::remove_orphans();
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn default_resources(config: &Config) -> ResourceSet {
    let cpus = config
        .num_cpus
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as f64);
    let sys = crate::api::config::system_memory() as f64;
    let mut r = ResourceSet::new()
        .with(crate::sched::CPU, cpus)
        .with(crate::sched::GPU, config.num_gpus)
        .with(crate::sched::MEMORY, config.memory.unwrap_or(sys * 0.7))
        .with(
            crate::sched::OBJECT_STORE_MEMORY,
            object_store_limit(config) as f64,
        );
    for (k, v) in &config.resources {
        r = r.with(k, *v);
    }
    r
}

fn object_store_limit(config: &Config) -> u64 {
    config.object_store_memory.unwrap_or_else(|| {
        let sys = crate::api::config::system_memory();
        if sys == 0 { 2 << 30 } else { sys / 10 * 3 }
    })
}

/// Starts an embedded node and returns its client.
pub(crate) fn start_embedded(config: Config) -> Result<CoreRef> {
    config.memory_monitor.validate().map_err(Error::runtime)?;
    let orphans = crate::worker::shm::remove_orphans();
    if orphans > 0 {
        tracing::info!(
            removed = orphans,
            "removed shared-memory values of processes that are gone"
        );
    }
    let node_id = NodeId::new();
    let job_id = JobId::new();
    let (temp_dir, owned) = match &config.temp_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "mobula-{}-{}",
                std::process::id(),
                &node_id.hex()[16..24]
            )),
            true,
        ),
    };
    // Objects past the limit spill to this node's own directory (removed at shutdown; one
    // left by a killed node on the same root, or in a killed driver's temp dir, goes now).
    let spill_root = config.spill_root.as_ref().unwrap_or(&temp_dir);
    let swept = ObjectTable::remove_orphan_spill_dirs(spill_root)
        + ObjectTable::remove_orphan_spill_dirs(&std::env::temp_dir());
    if swept > 0 {
        tracing::info!(
            removed = swept,
            "removed spill directories of nodes that are gone"
        );
    }
    let table = ObjectTable::with_spill_dir(
        object_store_limit(&config),
        spill_root.join(ObjectTable::spill_dir_name(&node_id.hex())),
    );
    let directory = Arc::new(ActorDirectory::new(table.clone()));
    let (tx, rx) = flume::bounded::<RayletMsg>(RAYLET_CHANNEL);
    let command = if config.worker_mode == WorkerMode::Process {
        Some(WorkerCommand::current().map_err(Error::runtime)?)
    } else {
        None
    };
    let rcfg = RayletConfig {
        node_id,
        job_id,
        worker_mode: config.worker_mode,
        total: default_resources(&config),
        prestart_workers: config
            .prestart_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        temp_dir: temp_dir.clone(),
        worker_start_timeout: config.worker_start_timeout,
        infeasible_timeout: config.infeasible_timeout,
        memory_monitor: config.memory_monitor.clone(),
        history: Arc::new(crate::actors::history::TaskLog::from_env(node_id)),
    };
    let history = rcfg.history.clone();

    let storage: Arc<dyn crate::store::GcsStorage> = match &config.gcs_storage {
        Some(dir) => Arc::new(crate::store::open_durable(dir).map_err(Error::runtime)?),
        None => Arc::new(MemoryStorage::default()),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t2 = table.clone();
    let d2 = directory.clone();
    let raylet_tx = tx.clone();
    let thread = std::thread::Builder::new()
        .name("mobula-system".to_string())
        .spawn(move || {
            let sys = actix::System::new();
            sys.block_on(async move {
                let gcs = Gcs::new(storage, d2.clone()).start();
                let arb = Arbiter::new();
                let g2 = gcs.clone();
                let raylet = Raylet::start_in_arbiter(&arb.handle(), move |_| {
                    Raylet::new(rcfg, t2, d2, raylet_tx, rx).with_gcs(g2)
                });
                gcs.do_send(gcs::RegisterNode {
                    node_id,
                    raylet: raylet.clone(),
                });
                let _ = ready_tx.send((actix::System::current(), gcs, raylet));
            });
            if let Err(e) = sys.run() {
                tracing::error!(error = %e, "actix system stopped with an error");
            }
        })
        .map_err(Error::runtime)?;
    let (system, gcs, raylet) = ready_rx
        .recv()
        .map_err(|_| Error::runtime("the system thread did not start"))?;
    let client = Arc::new(NodeClient {
        job_id,
        node_id,
        table,
        raylet_tx: tx,
        raylet: raylet.clone(),
        gcs: gcs.clone(),
        directory,
        history,
        system: Mutex::new(Some((system, thread))),
        socket: command
            .as_ref()
            .map(|_| raylet::socket_path(&temp_dir, node_id)),
        temp_dir: owned.then_some(temp_dir.clone()),
        cluster: parking_lot::RwLock::new(None),
    });
    gcs.do_send(gcs::RegisterJob {
        job_id,
        namespace: config.namespace.clone(),
        driver_pid: std::process::id(),
        submission_id: None,
        launch: command
            .clone()
            .map(|command| crate::worker::process::JobLaunch {
                command,
                namespace: config.namespace.clone(),
            }),
    });
    gcs.do_send(gcs::RegisterFunctions {
        job_id,
        ids: crate::registry::all_ids()
            .into_iter()
            .map(str::to_string)
            .collect(),
    });
    if let Some(command) = command {
        let res = mailbox(futures::executor::block_on(raylet.send(
            raylet::StartPool {
                client: client.clone(),
                command: Some(command),
                namespace: config.namespace.clone(),
            },
        )))?;
        if let Err(e) = res {
            client.shutdown();
            return Err(e);
        }
    }
    // Actors an earlier life of this GCS kept in its storage come back now that workers can start.
    gcs.do_send(gcs::Recover);
    tracing::debug!(node = %node_id, job = %job_id, mode = ?config.worker_mode, "embedded node started");
    Ok(client)
}
