//! The raylet actor: one per node. It owns the node's resource accounting, the task queue
//! (tasks wait here for their dependencies, then for resources), the worker pool (threads or
//! processes) and the hosts of the actors placed on this node. Scheduling decisions come from
//! `crate::sched`.
//!
//! Hot-path traffic (submissions, completions, a worker blocking in `get`) arrives over a
//! bounded `flume` channel consumed as a stream, so submitters feel back-pressure; control
//! messages from the GCS and actor hosts are ordinary actix messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::actor_host::{self, HostControl};
use crate::actors::directory::{ActorDirectory, Endpoint, Forwarder, QueuedCall, seal_error};
use crate::actors::gcs::{self, Gcs};
use crate::actors::history::TaskState;
use crate::actors::metrics::{NodeMetrics, RayletMetrics};
use crate::api::WorkerMode;
use crate::error::Error;
use crate::ids::{ActorId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::sched::{
    Allocation, ClusterView, Decision, Demand, NodeResources, NodeView, ResourceSet, Scheduler,
    SchedulingStrategy, bundle_request,
};
use crate::spec::{ActorSpec, TaskSpec};
use crate::store::{ObjectTable, Pins};
use crate::worker::TaskOutcome;
use crate::worker::process::{ProcessPool, ProcessWorker};
use crate::worker::thread::ThreadWorker;

/// A task waiting in the raylet, holding its dependencies.
#[derive(Debug)]
pub(crate) struct QueuedTask {
    pub spec: Arc<TaskSpec>,
    /// Held until the task is done: keeps its dependencies alive.
    pub _pins: Pins,
    /// When it was submitted (or last retried): scheduling latency counts from here.
    pub submitted: std::time::Instant,
}

/// Hot-path messages.
#[derive(Debug)]
pub(crate) enum RayletMsg {
    Submit(QueuedTask),
    TaskDone {
        worker: WorkerId,
        task_id: TaskId,
        outcome: TaskOutcome,
    },
    /// The worker's task blocked in `get`: lend its CPU to others.
    Blocked(WorkerId),
    /// The worker's task resumed.
    Unblocked(WorkerId),
    Cancel {
        return_id: ObjectId,
        force: bool,
    },
    /// A worker process is gone (crashed, killed, or exited).
    WorkerExited {
        worker: WorkerId,
        detail: String,
    },
    /// A worker process connected and is ready for work.
    WorkerReady(WorkerId),
    /// The memory monitor found the node's memory over its limit.
    MemoryPressure(crate::actors::memory_monitor::Pressure),
    /// A task's spilled arguments, read back off the raylet's thread, for its worker process.
    ArgsRead {
        worker: WorkerId,
        spec: Arc<TaskSpec>,
        args: Result<Vec<bytes::Bytes>, Error>,
    },
    /// An actor's spilled constructor arguments, read back off the raylet's thread.
    ActorArgsRead {
        actor: ActorId,
        args: Result<Vec<bytes::Bytes>, Error>,
    },
}

/// The jobs whose drivers left, most recent `ENDED_JOBS` of them: a long-lived node that
/// sees many drivers does not grow without end (a task of a job ended that long ago has
/// long been refused).
#[derive(Default)]
struct EndedJobs {
    set: std::collections::HashSet<crate::ids::JobId>,
    order: std::collections::VecDeque<crate::ids::JobId>,
}

const ENDED_JOBS: usize = 65_536;

impl EndedJobs {
    /// Records `job`; false if it was already recorded.
    fn insert(&mut self, job: crate::ids::JobId) -> bool {
        if !self.set.insert(job) {
            return false;
        }
        self.order.push_back(job);
        if self.order.len() > ENDED_JOBS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    fn contains(&self, job: &crate::ids::JobId) -> bool {
        self.set.contains(job)
    }
}

/// Static settings of a raylet.
#[derive(Debug, Clone)]
pub(crate) struct RayletConfig {
    pub node_id: NodeId,
    pub worker_mode: WorkerMode,
    /// The job of the process the node is embedded in.
    pub job_id: crate::ids::JobId,
    pub total: ResourceSet,
    pub prestart_workers: usize,
    pub temp_dir: std::path::PathBuf,
    pub worker_start_timeout: Duration,
    /// How long a request no node can hold waits (for a node that can) before it fails;
    /// zero fails it at once.
    pub infeasible_timeout: Duration,
    /// The node's task history, shared with its actor hosts and worker connections.
    pub history: Arc<crate::actors::history::TaskLog>,
    /// The node memory monitor's settings (started with the worker-process pool).
    pub memory_monitor: crate::MemoryMonitorConfig,
}

enum Worker {
    Thread(ThreadWorker),
    Process(ProcessWorker),
}

impl Worker {
    /// The pid it runs in: its own process, or this one for a thread (0 for a process not
    /// started yet or gone).
    fn pid(&self) -> u32 {
        match self {
            Worker::Process(p) => p.pid(),
            Worker::Thread(_) => std::process::id(),
        }
    }
}

struct WorkerSlot {
    worker: Worker,
    running: Option<TaskId>,
    /// Process still connecting.
    starting: bool,
    job: crate::ids::JobId,
    actor: Option<ActorId>,
    /// When it was started (unix ms).
    started_ms: u64,
}

/// Rows of exited workers kept for the state API.
const EXITED_WORKERS: usize = 1000;

struct Running {
    task: QueuedTask,
    worker: WorkerId,
    alloc: Allocation,
    lent_cpu: ResourceSet,
    /// When it was given to its worker (the memory monitor kills the latest first).
    started: std::time::Instant,
}

/// How long the memory monitor's victim may take to die before another is picked.
const OOM_KILL_GRACE: Duration = Duration::from_secs(10);

struct WaitingActor {
    spec: ActorSpec,
    pins: Pins,
    remaining: usize,
}

enum ActorPlace {
    /// Waiting for resources.
    Queued(ActorSpec, Pins),
    /// Resources allocated here, spilled constructor arguments being read back from disk
    /// off the raylet's thread (`RayletMsg::ActorArgsRead` then starts its host).
    Reading {
        alloc: Allocation,
        spec: ActorSpec,
        pins: Pins,
    },
    /// Host started, constructor running.
    Starting {
        alloc: Allocation,
        host: ActorHostRef,
        spec: ActorSpec,
    },
    Alive {
        alloc: Option<Allocation>,
        host: ActorHostRef,
    },
    /// Placed on another node, which hosts (and restarts) it; this node owns its record and
    /// forwards its calls. The pins hold large constructor arguments until it is placed.
    Remote { node: NodeId, pins: Option<Pins> },
}

#[derive(Clone)]
pub(crate) enum ActorHostRef {
    Thread(Addr<actor_host::ActorHost>),
    Process(WorkerId),
}

/// The raylet.
pub(crate) struct Raylet {
    cfg: RayletConfig,
    table: Arc<ObjectTable>,
    directory: Arc<ActorDirectory>,
    tx: flume::Sender<RayletMsg>,
    rx: Option<flume::Receiver<RayletMsg>>,
    gcs: Option<Addr<Gcs>>,
    me: Option<Addr<Raylet>>,
    view: ClusterView,
    scheduler: Scheduler,
    waiting: HashMap<TaskId, (QueuedTask, usize)>,
    /// Ready tasks by scheduling class (resources + strategy), FIFO within a class.
    queues: BTreeMap<String, VecDeque<QueuedTask>>,
    running: HashMap<TaskId, Running>,
    by_return: HashMap<ObjectId, TaskId>,
    workers: HashMap<WorkerId, WorkerSlot>,
    /// Idle task workers, per job (a worker process runs one job's executable).
    idle: HashMap<crate::ids::JobId, Vec<WorkerId>>,
    starting_procs: usize,
    threads_started: usize,
    waiting_actors: HashMap<ActorId, WaitingActor>,
    actors: HashMap<ActorId, ActorPlace>,
    /// Actors a restarted head took back from its storage, hosted on nodes not heard from
    /// yet: their routes start forwarding when the node's first heartbeat arrives.
    adopting: HashMap<NodeId, Vec<ActorId>>,
    actor_queue: VecDeque<ActorId>,
    procs: Option<ProcessPool>,
    /// The arbiter of the thread-mode actor hosts (their instances have threads of their own).
    hosts: Arbiter,
    /// Where work for other nodes goes (set on a cluster node).
    spill_tx: Option<flume::Sender<Outbound>>,
    /// How tasks placed on other nodes are sent (set with `spill_tx`).
    task_send: Option<TaskSend>,
    /// Where calls to actors on other nodes go (set on a cluster node).
    forward_tx: Option<Arc<dyn Forwarder>>,
    /// Tasks running on other nodes.
    spilled: HashMap<TaskId, (QueuedTask, NodeId)>,
    /// The spilled tasks sent on beyond their node's free resources (pipelined: they wait in
    /// its queue); not counted against it.
    pipelined: HashMap<TaskId, NodeId>,
    /// What was counted against other nodes (work sent there) since their last heartbeat.
    unreported: HashMap<NodeId, ResourceSet>,
    /// Other nodes keeping copies of objects of this node's store (large results of tasks
    /// they ran for it), until the object is freed here.
    copies: HashMap<ObjectId, Vec<NodeId>>,
    /// Jobs whose driver left: their tasks fail instead of running or retrying.
    ended_jobs: EndedJobs,
    /// Since when each scheduling class (tasks) or actor has been infeasible.
    infeasible_since: HashMap<String, std::time::Instant>,
    /// Task counters and scheduling latency (`/metrics`).
    metrics: RayletMetrics,
    /// Rows of the last exited workers (state API), at most `EXITED_WORKERS`.
    exited_workers: VecDeque<serde_json::Value>,
    /// Workers the memory monitor killed, with their task and what the memory was, until
    /// their death is reported.
    oom_killed: HashMap<WorkerId, (TaskId, String)>,
    /// The last victim and when it was killed: no other is picked while it is dying.
    oom_victim: Option<(WorkerId, std::time::Instant)>,
    /// When the last victim's death was reported: samples begun before it are stale.
    oom_exit_at: Option<std::time::Instant>,
    /// The monitor reported pressure with nothing to kill (warned once until a kill).
    oom_nothing_warned: bool,
    /// Tasks killed for memory, waiting out their backoff before they are queued again.
    backoff: HashMap<TaskId, QueuedTask>,
}

/// Arguments up to this size travel inside a spilled task's request; larger ones are pulled.
pub(crate) const INLINE_ARG: usize = 1 << 20;

/// A task whose arguments hold at least this many bytes prefers the node that has them.
const LOCALITY_BYTES: usize = 1 << 20;

/// A task to run on another node, with its arguments resolved and how to start its job's
/// workers there.
#[derive(Debug)]
pub(crate) struct SpillRequest {
    pub node: NodeId,
    pub spec: TaskSpec,
    pub launch: crate::worker::process::JobLaunch,
}

/// Sends a task this raylet placed on another node, from the calling thread (the daemon's
/// side, `cluster`): no hand-off to the daemon's event loop on the way to the lane.
pub(crate) type TaskSend = Arc<dyn Fn(SpillRequest) + Send + Sync>;

/// Work this raylet hands to its node's daemon for another node.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Ask `node` whether it still runs an actor a restarted head took back from storage
    /// (answered with `AdoptedGone` when it does not).
    CheckAdopted { node: NodeId, actor_id: ActorId },
    /// Create an actor there (arguments resolved as for tasks).
    Actor {
        node: NodeId,
        spec: Box<ActorSpec>,
        launch: crate::worker::process::JobLaunch,
    },
    /// Kill an actor placed there.
    KillActor {
        node: NodeId,
        actor_id: ActorId,
        no_restart: bool,
    },
    /// A job's driver left: every other node ends the job's work too.
    JobEnded(crate::ids::JobId),
    /// The object was freed here: `node` may drop the copy it kept.
    Release { node: NodeId, id: ObjectId },
}

fn class_key(spec: &TaskSpec) -> String {
    if spec.strategy == SchedulingStrategy::Default {
        let mut k = String::new();
        for (n, a) in spec.resources.iter() {
            k.push_str(n);
            k.push('=');
            k.push_str(&a.to_string());
            k.push(';');
        }
        k
    } else {
        format!("{:?}|{:?}", spec.resources, spec.strategy)
    }
}

fn request_of(resources: &ResourceSet, strategy: &SchedulingStrategy) -> ResourceSet {
    match strategy {
        SchedulingStrategy::PlacementGroup {
            pg, bundle_index, ..
        } => bundle_request(resources, *pg, *bundle_index),
        _ => resources.clone(),
    }
}

fn cpu_part(set: &ResourceSet) -> ResourceSet {
    let mut out = ResourceSet::new();
    for (n, a) in set.iter() {
        if n == crate::sched::CPU || n.starts_with("CPU_group_") {
            out = out.with_amount(n, a);
        }
    }
    out
}

impl Raylet {
    pub fn new(
        cfg: RayletConfig,
        table: Arc<ObjectTable>,
        directory: Arc<ActorDirectory>,
        tx: flume::Sender<RayletMsg>,
        rx: flume::Receiver<RayletMsg>,
    ) -> Self {
        let mut view = ClusterView::default();
        view.nodes.insert(
            cfg.node_id,
            NodeView {
                resources: NodeResources::new(cfg.total.clone()),
                alive: true,
                draining: false,
            },
        );
        Self {
            cfg,
            table,
            directory,
            tx,
            rx: Some(rx),
            gcs: None,
            me: None,
            view,
            scheduler: Scheduler::default(),
            waiting: HashMap::new(),
            queues: BTreeMap::new(),
            running: HashMap::new(),
            by_return: HashMap::new(),
            workers: HashMap::new(),
            idle: HashMap::new(),
            starting_procs: 0,
            threads_started: 0,
            waiting_actors: HashMap::new(),
            adopting: HashMap::new(),
            actors: HashMap::new(),
            actor_queue: VecDeque::new(),
            procs: None,
            hosts: Arbiter::new(),
            spill_tx: None,
            task_send: None,
            forward_tx: None,
            spilled: HashMap::new(),
            pipelined: HashMap::new(),
            infeasible_since: HashMap::new(),
            ended_jobs: Default::default(),
            copies: HashMap::new(),
            unreported: HashMap::new(),
            metrics: RayletMetrics::default(),
            exited_workers: VecDeque::new(),
            oom_killed: HashMap::new(),
            oom_victim: None,
            oom_exit_at: None,
            oom_nothing_warned: false,
            backoff: HashMap::new(),
        }
    }

    pub fn with_gcs(mut self, gcs: Addr<Gcs>) -> Self {
        self.gcs = Some(gcs);
        self
    }

    fn local(&mut self) -> &mut NodeResources {
        let id = self.cfg.node_id;
        &mut self
            .view
            .nodes
            .get_mut(&id)
            .expect("the local node is always in the view")
            .resources
    }

    fn local_ref(&self) -> &NodeResources {
        &self.view.nodes[&self.cfg.node_id].resources
    }

    // ---- tasks ----------------------------------------------------------------------------

    fn submit(&mut self, task: QueuedTask) {
        self.metrics.submitted += 1;
        if self.ended_jobs.contains(&task.spec.job_id) {
            self.metrics.failed += 1;
            seal_error(&self.table, task.spec.return_id, &job_gone(&task.spec.name));
            return;
        }
        self.by_return
            .insert(task.spec.return_id, task.spec.task_id);
        let mut remaining = 0;
        for dep in task.spec.deps() {
            if !self.table.is_ready(&dep) {
                remaining += 1;
                let addr = self.me.clone();
                let tid = task.spec.task_id;
                if let Err(w) = self.table.subscribe(
                    dep,
                    Box::new(move || {
                        if let Some(a) = addr {
                            a.do_send(DepsReady(tid));
                        }
                    }),
                ) {
                    // Sealed in the meantime.
                    drop(w);
                    remaining -= 1;
                }
            }
        }
        self.cfg.history.submitted(&task.spec, remaining > 0);
        if remaining == 0 {
            self.enqueue(task);
        } else {
            self.waiting.insert(task.spec.task_id, (task, remaining));
        }
    }

    fn enqueue(&mut self, task: QueuedTask) {
        let key = class_key(&task.spec);
        self.queues.entry(key).or_default().push_back(task);
    }

    fn deps_ready(&mut self, tid: TaskId) {
        let done = match self.waiting.get_mut(&tid) {
            Some((_, n)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if done && let Some((task, _)) = self.waiting.remove(&tid) {
            let (t, a) = (task.spec.task_id, task.spec.attempt);
            self.cfg
                .history
                .state(t, a, TaskState::PendingNodeAssignment, None);
            self.enqueue(task);
        }
    }

    /// Whether a request that no node can hold (a class of tasks or `actor:<id>`) has
    /// waited long enough for a node that can to fail now. The first call starts its clock.
    fn infeasible_expired(&mut self, key: &str) -> bool {
        let timeout = self.cfg.infeasible_timeout;
        if timeout.is_zero() {
            return true;
        }
        let since = *self
            .infeasible_since
            .entry(key.to_string())
            .or_insert_with(|| {
                tracing::warn!(
                    request = key,
                    timeout_s = timeout.as_secs_f64(),
                    "no node can hold a request: it waits for one"
                );
                std::time::Instant::now()
            });
        since.elapsed() >= timeout
    }

    /// What waits for resources: every queued class of tasks and every queued actor, by the
    /// resources it asks for, and whether no node could hold it.
    fn demands(&self) -> Vec<Demand> {
        let mut out: Vec<Demand> = Vec::new();
        let mut add = |req: ResourceSet, infeasible: bool| {
            Demand::add_to(&mut out, &req.positive_part().to_f64_map(), 1, infeasible);
        };
        for (key, q) in &self.queues {
            let infeasible = self.infeasible_since.contains_key(key);
            for t in q {
                add(request_of(&t.spec.resources, &t.spec.strategy), infeasible);
            }
        }
        for aid in &self.actor_queue {
            if let Some(ActorPlace::Queued(spec, _)) = self.actors.get(aid) {
                let infeasible = self.infeasible_since.contains_key(&actor_key(*aid));
                add(
                    request_of(&spec.placement_resources, &spec.strategy),
                    infeasible,
                );
            }
        }
        out
    }

    /// The driver of `job` left: its waiting and queued tasks fail, the worker processes
    /// running its tasks or idle for it are killed (their tasks fail, not retried). Its
    /// actors are the GCS's to end (detached ones live on).
    fn job_ended(&mut self, job: crate::ids::JobId) {
        if !self.ended_jobs.insert(job) {
            return;
        }

        let err = job_gone;
        let waiting: Vec<TaskId> = self
            .waiting
            .iter()
            .filter(|(_, (t, _))| t.spec.job_id == job)
            .map(|(id, _)| *id)
            .collect();
        for tid in waiting {
            if let Some((task, _)) = self.waiting.remove(&tid) {
                let e = err(&task.spec.name);
                self.fail_task(task, &e);
            }
        }
        let mut queued = Vec::new();
        for q in self.queues.values_mut() {
            let (gone, kept): (VecDeque<QueuedTask>, VecDeque<QueuedTask>) = std::mem::take(q)
                .into_iter()
                .partition(|t| t.spec.job_id == job);
            *q = kept;
            queued.extend(gone);
        }
        self.queues.retain(|_, q| !q.is_empty());
        let backing_off: Vec<TaskId> = self
            .backoff
            .iter()
            .filter(|(_, t)| t.spec.job_id == job)
            .map(|(id, _)| *id)
            .collect();
        queued.extend(backing_off.iter().filter_map(|id| self.backoff.remove(id)));
        for task in queued {
            let e = err(&task.spec.name);
            self.fail_task(task, &e);
        }
        let mut killed = 0;
        for slot in self.workers.values() {
            if slot.job != job || slot.actor.is_some() {
                continue;
            }
            if let Some(tid) = slot.running
                && let Some(run) = self.running.get(&tid)
            {
                // Its caller sees why; the worker's death then fails the task (`retry` refuses
                // tasks of ended jobs).
                seal_error(
                    &self.table,
                    run.task.spec.return_id,
                    &err(&run.task.spec.name),
                );
            }
            if let Worker::Process(p) = &slot.worker {
                p.kill();
                killed += 1;
            }
        }
        tracing::info!(job = %job, workers_killed = killed, "job ended: its driver exited");
    }

    fn fail_task(&mut self, task: QueuedTask, err: &Error) {
        self.metrics.failed += 1;
        self.seal_failure(task, err);
    }

    /// Seals a task's error without counting it (the node that ran it counted it).
    fn seal_failure(&mut self, task: QueuedTask, err: &Error) {
        self.cfg
            .history
            .ended(task.spec.task_id, task.spec.attempt, Err(err));
        self.by_return.remove(&task.spec.return_id);
        seal_error(&self.table, task.spec.return_id, err);
    }

    /// Starts every queued task that fits now.
    fn dispatch(&mut self) {
        let local = self.cfg.node_id;
        let keys: Vec<String> = self.queues.keys().cloned().collect();
        for key in keys {
            while let Some(q) = self.queues.get_mut(&key) {
                let Some(head) = q.front() else {
                    self.queues.remove(&key);
                    break;
                };
                let req = request_of(&head.spec.resources, &head.spec.strategy);
                // The policy translates placement-group requests itself; the allocation takes
                // the translated (group) resources.
                let preferred = (self.spill_tx.is_some())
                    .then(|| {
                        locality(
                            &self.table,
                            &self.copies,
                            &self.view,
                            &head.spec,
                            &req,
                            local,
                        )
                    })
                    .flatten();
                let decision = self.scheduler.pick_node(
                    &self.view,
                    &head.spec.resources,
                    &head.spec.strategy,
                    local,
                    preferred,
                );
                if !matches!(decision, Decision::Infeasible(_)) {
                    self.infeasible_since.remove(&key);
                }
                match decision {
                    Decision::Node(n) if n == local => {
                        let Some(task) = q.pop_front() else { break };
                        let Some(alloc) = self.local().allocate(&req) else {
                            // The policy said it fits; put it back and stop this class.
                            if let Some(q) = self.queues.get_mut(&key) {
                                q.push_front(task);
                            }
                            break;
                        };
                        self.start_task(task, alloc);
                    }
                    Decision::Node(n) => {
                        let Some(task) = q.pop_front() else { break };
                        if let Err(task) = self.spill(task, n, &req, false) {
                            if let Some(q) = self.queues.get_mut(&key) {
                                q.push_front(*task);
                            }
                            break;
                        }
                    }
                    Decision::Wait => {
                        let eligible = self.spill_tx.is_some()
                            && matches!(head.spec.strategy, SchedulingStrategy::Default);
                        let Some(n) =
                            pipeline_target(&self.view, &self.pipelined, local, eligible, &req)
                        else {
                            break;
                        };
                        let Some(task) = q.pop_front() else { break };
                        if let Err(task) = self.spill(task, n, &req, true) {
                            if let Some(q) = self.queues.get_mut(&key) {
                                q.push_front(*task);
                            }
                            break;
                        }
                    }
                    Decision::Infeasible(e) => {
                        if !self.infeasible_expired(&key) {
                            break;
                        }
                        let Some(q) = self.queues.get_mut(&key) else {
                            break;
                        };
                        let Some(task) = q.pop_front() else { break };
                        let err = infeasible_error(&task.spec.name, &req, self.local_ref(), &e);
                        self.fail_task(task, &err);
                    }
                }
            }
        }
        self.dispatch_actors();
    }

    /// Sends a task to another node (spillback), counted against it unless `pipelined` (it
    /// waits in that node's queue). Gives it back when that is not possible now.
    fn spill(
        &mut self,
        task: QueuedTask,
        node: NodeId,
        req: &ResourceSet,
        pipelined: bool,
    ) -> Result<(), Box<QueuedTask>> {
        let launch = self
            .procs
            .as_ref()
            .and_then(|p| p.launch_of(task.spec.job_id));
        let (Some(send), Some(launch)) = (self.task_send.clone(), launch) else {
            return Err(Box::new(task));
        };
        let mut spec = (*task.spec).clone();
        if let Err(e) = inline_args(&self.table, &mut spec.args, &mut spec.nested) {
            self.fail_task(task, &e);
            return Ok(());
        }
        let tid = spec.task_id;
        send(SpillRequest { node, spec, launch });
        if pipelined {
            self.pipelined.insert(tid, node);
        } else {
            self.count_against(node, req);
        }
        self.metrics.spilled += 1;
        let attempt = task.spec.attempt;
        self.cfg
            .history
            .state(tid, attempt, TaskState::SubmittedToWorker, Some(node));
        tracing::debug!(task = %task.spec.name, node = %node, "spilled a task to another node");
        self.spilled.insert(tid, (task, node));
        Ok(())
    }

    /// Counts work handed to `node` against it until its next heartbeat says otherwise.
    fn count_against(&mut self, node: NodeId, req: &ResourceSet) {
        if let Some(nv) = self.view.nodes.get_mut(&node) {
            nv.resources.force_acquire(req);
            *self.unreported.entry(node).or_default() += req;
        }
    }

    /// Work sent to `node` ended before its next heartbeat: what was counted for it is free
    /// again in the view (a heartbeat since then already told the truth).
    fn uncount(&mut self, node: NodeId, req: &ResourceSet) {
        let Some(counted) = self.unreported.get_mut(&node) else {
            return;
        };
        if req.iter().all(|(k, v)| counted.get(k) >= v) {
            *counted -= req;
            if let Some(nv) = self.view.nodes.get_mut(&node) {
                let r = &mut nv.resources;
                for (name, amount) in req.iter() {
                    let v = (r.available.get(name) + amount).min(r.total.get(name));
                    r.available.set(name, v);
                }
            }
        }
    }

    /// A spilled task's node is gone: the task is retried if it may be, else it fails.
    fn node_lost(&mut self, task: QueuedTask, node: NodeId, what: &str) {
        if task.spec.can_retry() {
            tracing::warn!(task = %task.spec.name, node = %node, what, "lost the node running a task; retrying it");
            let lost = Error::WorkerCrashed {
                task: task.spec.name.clone(),
                detail: format!("node {node} {what}"),
            };
            self.cfg
                .history
                .ended(task.spec.task_id, task.spec.attempt, Err(&lost));
            self.retry(task);
        } else {
            let err = Error::WorkerCrashed {
                task: task.spec.name.clone(),
                detail: format!("node {node} {what}"),
            };
            self.fail_task(task, &err);
        }
    }

    fn remote_done(
        &mut self,
        tid: TaskId,
        result: Result<RemoteValue, Error>,
        node_lost: bool,
        kept: bool,
    ) {
        let Some((task, node)) = self.spilled.remove(&tid) else {
            return;
        };
        if self.pipelined.remove(&tid).is_none() {
            self.uncount(node, &request_of(&task.spec.resources, &task.spec.strategy));
        }
        if node_lost {
            // Until it heartbeats again, the node gets no more work.
            if let Some(nv) = self.view.nodes.get_mut(&node) {
                nv.alive = false;
            }
            self.node_lost(task, node, "was lost");
            return;
        }
        match result {
            Ok(v) => {
                let id = task.spec.return_id;
                self.by_return.remove(&id);
                let sealed = match v {
                    RemoteValue::Value(v) => {
                        self.cfg
                            .history
                            .ended(task.spec.task_id, task.spec.attempt, Ok(()));
                        self.table.seal(id, v.data, v.nested, false)
                    }
                    // Its end is in the history already.
                    RemoteValue::Sealed(took) => took,
                };
                if kept && sealed {
                    self.copies.entry(id).or_default().push(node);
                } else if kept {
                    // Nobody here holds it any more: the copy there can go now.
                    self.release_copy(node, id);
                }
            }
            Err(e) => self.seal_failure(task, &e),
        }
    }

    /// Tells the nodes keeping copies of objects freed here to drop them.
    fn sweep_copies(&mut self) {
        let table = &self.table;
        let freed: Vec<ObjectId> = self
            .copies
            .keys()
            .filter(|id| matches!(table.peek(id), crate::store::Peek::Missing))
            .copied()
            .collect();
        for id in freed {
            for node in self.copies.remove(&id).unwrap_or_default() {
                self.release_copy(node, id);
            }
        }
    }

    /// Tells `node` to drop the copy it kept of object `id`.
    fn release_copy(&self, node: NodeId, id: ObjectId) {
        if let Some(tx) = &self.spill_tx
            && tx.try_send(Outbound::Release { node, id }).is_err()
        {
            tracing::warn!(object = %id, node = %node, "could not release a copy on another node");
        }
    }

    /// A node of the cluster changed (heartbeat) or died.
    fn remote_node(&mut self, node: NodeId, resources: Option<(ResourceSet, ResourceSet)>) {
        if node == self.cfg.node_id {
            return;
        }
        match resources {
            Some((total, available)) => {
                let nv = self.view.nodes.entry(node).or_insert_with(|| NodeView {
                    resources: NodeResources::new(total.clone()),
                    alive: true,
                    draining: false,
                });
                if nv.resources.total != total {
                    nv.resources = NodeResources::new(total);
                }
                nv.resources.available = available;
                nv.alive = true;
                self.unreported.remove(&node);
                for aid in self.adopting.remove(&node).unwrap_or_default() {
                    self.forward_adopted(aid, node);
                }
            }
            None => {
                if let Some(nv) = self.view.nodes.get_mut(&node) {
                    nv.alive = false;
                }
                for holders in self.copies.values_mut() {
                    holders.retain(|n| *n != node);
                }
                self.copies.retain(|_, h| !h.is_empty());
                let gone: Vec<ActorId> = self
                    .actors
                    .iter()
                    .filter(|(_, p)| matches!(p, ActorPlace::Remote { node: n, .. } if *n == node))
                    .map(|(a, _)| *a)
                    .collect();
                self.adopting.remove(&node);
                for aid in gone {
                    tracing::warn!(actor = %aid, node = %node, "the node hosting an actor died");
                    self.remote_actor_lost(aid, format!("its node {node} died"), false);
                }
                let lost: Vec<TaskId> = self
                    .spilled
                    .iter()
                    .filter(|(_, (_, n))| *n == node)
                    .map(|(t, _)| *t)
                    .collect();
                for tid in lost {
                    self.pipelined.remove(&tid);
                    if let Some((task, _)) = self.spilled.remove(&tid) {
                        self.node_lost(task, node, "died");
                    }
                }
            }
        }
    }

    fn start_task(&mut self, task: QueuedTask, alloc: Allocation) {
        let tid = task.spec.task_id;
        let spec = task.spec.clone();
        let Some(wid) = self.take_worker(spec.job_id) else {
            // No worker could be started: give the resources back and fail the task.
            self.local().release(&alloc);
            self.fail_task(
                task,
                &Error::runtime("no worker could be started on this node"),
            );
            return;
        };
        self.metrics.sched_latency.observe(task.submitted.elapsed());
        let pid = self.workers.get(&wid).map(|s| s.worker.pid());
        self.cfg
            .history
            .running(tid, spec.attempt, wid, pid.filter(|p| *p != 0));
        self.running.insert(
            tid,
            Running {
                task,
                worker: wid,
                alloc,
                lent_cpu: ResourceSet::new(),
                started: std::time::Instant::now(),
            },
        );
        if let Some(slot) = self.workers.get_mut(&wid) {
            slot.running = Some(tid);
            if slot.starting {
                return; // sent when it connects
            }
        }
        self.push_to_worker(wid, spec);
    }

    fn push_to_worker(&mut self, wid: WorkerId, spec: Arc<TaskSpec>) {
        let gpus = self
            .running
            .get(&spec.task_id)
            .map(|r| r.alloc.gpu_indices())
            .unwrap_or_default();
        let pushed = match self.workers.get(&wid).map(|s| &s.worker) {
            Some(Worker::Thread(t)) => t.push(spec, gpus).is_ok(),
            Some(Worker::Process(_))
                if crate::worker::thread::any_spilled(&self.table, &spec.args) =>
            {
                // Reading spilled arguments back is disk I/O: a blocking thread does it and
                // hands the task back (`ArgsRead`).
                let (table, tx) = (self.table.clone(), self.tx.clone());
                drop(tokio::task::spawn_blocking(move || {
                    let args = crate::worker::thread::resolve_args(&table, &spec.args);
                    let _ = tx.send(RayletMsg::ArgsRead {
                        worker: wid,
                        spec,
                        args,
                    });
                }));
                true
            }
            Some(Worker::Process(_)) => {
                let args = crate::worker::thread::resolve_args(&self.table, &spec.args);
                return self.execute_on_process(wid, spec, args);
            }
            None => false,
        };
        if !pushed {
            self.worker_gone(wid, "worker stopped accepting tasks".to_string());
        }
    }

    /// Sends a task with its arguments to its worker process (unless the worker went or
    /// stopped running it meanwhile); a failed argument fails the task, not the worker.
    fn execute_on_process(
        &mut self,
        wid: WorkerId,
        spec: Arc<TaskSpec>,
        args: Result<Vec<bytes::Bytes>, Error>,
    ) {
        let Some(slot) = self.workers.get(&wid) else {
            return;
        };
        let attempt = self.running.get(&spec.task_id).map(|r| r.task.spec.attempt);
        if slot.running != Some(spec.task_id) || attempt != Some(spec.attempt) {
            // Cancelled, retried or its worker reused while its arguments were read.
            return;
        }
        let Worker::Process(p) = &slot.worker else {
            return;
        };
        let gpus = self
            .running
            .get(&spec.task_id)
            .map(|r| r.alloc.gpu_indices())
            .unwrap_or_default();
        match args {
            Ok(args) => {
                if p.execute(&spec, args, gpus).is_err() {
                    self.worker_gone(wid, "worker stopped accepting tasks".to_string());
                }
            }
            Err(error) => self.task_done(
                wid,
                spec.task_id,
                TaskOutcome::Failed { error, user: false },
            ),
        }
    }

    /// An idle worker, or a new one.
    fn take_worker(&mut self, job: crate::ids::JobId) -> Option<WorkerId> {
        while let Some(w) = self.idle.get_mut(&job).and_then(|v| v.pop()) {
            if self.workers.contains_key(&w) {
                return Some(w);
            }
        }
        self.new_worker(job, None)
    }

    fn new_worker(
        &mut self,
        job: crate::ids::JobId,
        actor: Option<crate::worker::process::ActorLaunch>,
    ) -> Option<WorkerId> {
        let wid = WorkerId::new();
        // Thread workers serve the job of this process; other jobs (drivers connected to a
        // node daemon) always get processes of their own executable.
        let threads = self.cfg.worker_mode == WorkerMode::Thread && job == self.cfg.job_id;
        let worker = match threads {
            true => {
                self.threads_started += 1;
                match ThreadWorker::spawn(
                    wid,
                    self.threads_started,
                    self.table.clone(),
                    self.tx.clone(),
                ) {
                    Ok(t) => Worker::Thread(t),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker thread");
                        return None;
                    }
                }
            }
            false => {
                let pool = self.procs.as_ref()?;
                match pool.spawn(wid, job, actor) {
                    Ok(p) => {
                        self.starting_procs += 1;
                        Worker::Process(p)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker process");
                        return None;
                    }
                }
            }
        };
        let starting = matches!(worker, Worker::Process(_));
        self.workers.insert(
            wid,
            WorkerSlot {
                worker,
                running: None,
                starting,
                actor: None,
                job,
                started_ms: crate::web::now_ms(),
            },
        );
        Some(wid)
    }

    fn task_done(&mut self, worker: WorkerId, tid: TaskId, outcome: TaskOutcome) {
        if let Some(slot) = self.workers.get_mut(&worker)
            && slot.running == Some(tid)
        {
            // Only the worker's current task frees it (a stale report must not).
            slot.running = None;
            if slot.actor.is_none() {
                self.idle.entry(slot.job).or_default().push(worker);
            }
        }
        let Some(run) = self.running.remove(&tid) else {
            return;
        };
        self.release_running(&run);
        match outcome {
            TaskOutcome::Sealed => {
                self.cfg.history.ended(tid, run.task.spec.attempt, Ok(()));
                self.metrics.finished += 1;
                self.by_return.remove(&run.task.spec.return_id);
            }
            TaskOutcome::Failed { error, user } => {
                // A cancelled task has its object sealed already: never retried.
                let cancelled = self.table.is_ready(&run.task.spec.return_id);
                if user && !cancelled && run.task.spec.retry_exceptions && run.task.spec.can_retry()
                {
                    tracing::info!(task = %run.task.spec.name, attempt = run.task.spec.attempt, error = %error, "retrying task after a user error");
                    self.cfg
                        .history
                        .ended(tid, run.task.spec.attempt, Err(&error));
                    self.retry(run.task);
                } else {
                    self.fail_task(run.task, &error);
                }
            }
        }
    }

    /// Gives back a finished task's resources. A task that ended while blocked in `get` had
    /// lent its CPU out already: take that back first, so the release is not capped at the
    /// total and counted twice.
    fn release_running(&mut self, run: &Running) {
        if !run.lent_cpu.is_empty() {
            self.local().force_acquire(&run.lent_cpu);
        }
        self.local().release(&run.alloc);
    }

    fn retry(&mut self, mut task: QueuedTask) {
        if self.ended_jobs.contains(&task.spec.job_id) {
            let e = job_gone(&task.spec.name);
            self.fail_task(task, &e);
            return;
        }
        let mut spec = (*task.spec).clone();
        spec.attempt += 1;
        task.spec = Arc::new(spec);
        task.submitted = std::time::Instant::now();
        self.cfg.history.submitted(&task.spec, false);
        self.enqueue(task);
    }

    /// A worker died or stopped: its task is retried or fails; its actor dies.
    fn worker_gone(&mut self, wid: WorkerId, detail: String) {
        let Some(slot) = self.workers.remove(&wid) else {
            return;
        };
        let busy = slot.running.is_some() || slot.actor.is_some();
        let mut row = worker_row(wid, &slot, self.cfg.node_id);
        row["is_alive"] = false.into();
        row["exit_type"] = if busy {
            "SYSTEM_ERROR"
        } else {
            "INTENDED_SYSTEM_EXIT"
        }
        .into();
        row["exit_detail"] = detail.clone().into();
        row["end_time_ms"] = crate::web::now_ms().into();
        if self.exited_workers.len() >= EXITED_WORKERS {
            self.exited_workers.pop_front();
        }
        self.exited_workers.push_back(row);
        if slot.starting {
            self.starting_procs = self.starting_procs.saturating_sub(1);
        }
        if let Some(v) = self.idle.get_mut(&slot.job) {
            v.retain(|w| *w != wid);
        }
        let oom = self.oom_killed.remove(&wid);
        if self.oom_victim.is_some_and(|(w, _)| w == wid) {
            self.oom_victim = None;
            self.oom_exit_at = Some(std::time::Instant::now());
        }
        if let Some(tid) = slot.running
            && let Some((_, detail)) = oom.filter(|(t, _)| *t == tid)
            && let Some(run) = self.running.remove(&tid)
        {
            self.release_running(&run);
            self.oom_gone(run.task, detail);
        } else if let Some(tid) = slot.running
            && let Some(run) = self.running.remove(&tid)
        {
            self.release_running(&run);
            if !self.table.is_ready(&run.task.spec.return_id)
                && run.task.spec.can_retry()
                && !self.ended_jobs.contains(&run.task.spec.job_id)
            {
                tracing::warn!(task = %run.task.spec.name, worker = %wid, detail = %detail, "worker died; retrying its task");
                let died = Error::WorkerCrashed {
                    task: run.task.spec.name.clone(),
                    detail: detail.clone(),
                };
                self.cfg
                    .history
                    .ended(tid, run.task.spec.attempt, Err(&died));
                self.retry(run.task);
            } else {
                let err = Error::WorkerCrashed {
                    task: run.task.spec.name.clone(),
                    detail: detail.clone(),
                };
                self.fail_task(run.task, &err);
            }
        }
        if let Some(aid) = slot.actor
            && slot.starting
        {
            // Died before connecting; once connected, its connection reports the death.
            self.actor_exited(
                aid,
                format!("its worker process died: {detail}"),
                Vec::new(),
                Some(wid),
            );
        }
    }

    /// Whether a running or killed task would run again: retries left, its job alive and
    /// its object not sealed (cancelled).
    fn retriable(&self, spec: &TaskSpec) -> bool {
        spec.can_retry()
            && !self.ended_jobs.contains(&spec.job_id)
            && !self.table.is_ready(&spec.return_id)
    }

    /// The memory monitor found the node over its limit: kills the worker process of the
    /// most recently started retriable task (else of the most recently started task),
    /// unless the last victim is still dying.
    fn memory_pressure(&mut self, p: crate::actors::memory_monitor::Pressure) {
        use crate::actors::memory_monitor::{Candidate, pick_victim};
        if self.oom_exit_at.is_some_and(|t| p.at <= t) {
            return; // sampled while the last victim was still alive
        }
        if let Some((w, at)) = self.oom_victim {
            if self.workers.contains_key(&w) && at.elapsed() < OOM_KILL_GRACE {
                return;
            }
            self.oom_victim = None;
        }
        let candidates: Vec<Candidate> = self
            .running
            .iter()
            .filter(|(_, r)| {
                matches!(
                    self.workers.get(&r.worker),
                    Some(WorkerSlot { worker: Worker::Process(w), starting: false, .. }) if w.pid() > 0
                )
            })
            .map(|(tid, r)| Candidate {
                task: *tid,
                started: r.started,
                retriable: self.retriable(&r.task.spec),
            })
            .collect();
        let Some(run) = pick_victim(&candidates).and_then(|t| self.running.get(&t)) else {
            if !self.oom_nothing_warned {
                self.oom_nothing_warned = true;
                tracing::warn!(used = p.used, threshold = p.limit, detail = %p.describe(),
                    "memory over the limit, but no task runs in a worker process to kill");
            }
            return;
        };
        let (wid, tid) = (run.worker, run.task.spec.task_id);
        let name = run.task.spec.name.clone();
        let attempt = run.task.spec.attempt;
        let Some(WorkerSlot {
            worker: Worker::Process(w),
            ..
        }) = self.workers.get(&wid)
        else {
            return;
        };
        let pid = w.pid();
        w.kill();
        self.oom_nothing_warned = false;
        self.metrics.oom_killed += 1;
        let detail = p.describe();
        tracing::warn!(task = %name, task_id = %tid, attempt, pid, worker = %wid,
            used = p.used, threshold = p.limit, detail = %detail,
            "memory monitor killed the most recently started task's worker");
        self.oom_killed.insert(wid, (tid, detail));
        self.oom_victim = Some((wid, std::time::Instant::now()));
    }

    /// The worker of a task killed for memory is gone: the task runs again after a backoff
    /// if it may, else it fails with `OutOfMemory`.
    fn oom_gone(&mut self, task: QueuedTask, detail: String) {
        let err = Error::OutOfMemory {
            task: task.spec.name.clone(),
            detail,
        };
        if !self.retriable(&task.spec) {
            self.fail_task(task, &err);
            return;
        }
        let (tid, attempt) = (task.spec.task_id, task.spec.attempt);
        let delay = crate::actors::memory_monitor::backoff(attempt);
        tracing::info!(task = %task.spec.name, attempt, backoff_ms = delay.as_millis() as u64,
            "retrying a task killed for memory after a backoff");
        self.cfg.history.ended(tid, attempt, Err(&err));
        self.backoff.insert(tid, task);
        if let Some(me) = self.me.clone() {
            actix::spawn(async move {
                actix::clock::sleep(delay).await;
                me.do_send(RetryAfterBackoff(tid));
            });
        }
    }

    fn blocked(&mut self, wid: WorkerId, blocked: bool) {
        let Some(tid) = self.workers.get(&wid).and_then(|s| s.running) else {
            return;
        };
        let Some(run) = self.running.get_mut(&tid) else {
            return;
        };
        if blocked && run.lent_cpu.is_empty() {
            let cpu = cpu_part(&run.alloc.resources);
            if !cpu.is_empty() {
                run.lent_cpu = cpu.clone();
                self.local().force_release(&cpu);
            }
        } else if !blocked && !run.lent_cpu.is_empty() {
            let cpu = std::mem::take(&mut run.lent_cpu);
            self.local().force_acquire(&cpu);
        }
    }

    fn cancel(&mut self, return_id: ObjectId, force: bool) {
        let Some(tid) = self.by_return.get(&return_id).copied() else {
            return; // finished already, or never a task here
        };
        let err = |name: &str| Error::Cancelled {
            task: name.to_string(),
        };
        if let Some(task) = self
            .waiting
            .remove(&tid)
            .map(|(t, _)| t)
            .or_else(|| self.backoff.remove(&tid))
        {
            let e = err(&task.spec.name);
            self.fail_task(task, &e);
            return;
        }
        for q in self.queues.values_mut() {
            if let Some(pos) = q.iter().position(|t| t.spec.task_id == tid) {
                if let Some(task) = q.remove(pos) {
                    let e = err(&task.spec.name);
                    self.fail_task(task, &e);
                }
                return;
            }
        }
        if let Some(run) = self.running.get(&tid) {
            let e = err(&run.task.spec.name);
            self.cfg.history.ended(tid, run.task.spec.attempt, Err(&e));
            seal_error(&self.table, return_id, &e);
            let wid = run.worker;
            if force
                && let Some(WorkerSlot {
                    worker: Worker::Process(p),
                    ..
                }) = self.workers.get(&wid)
            {
                p.kill();
            }
        }
    }

    // ---- actors ---------------------------------------------------------------------------

    fn create_actor(&mut self, spec: ActorSpec) {
        if !spec.owned_elsewhere {
            self.cfg.history.actor_submitted(&spec);
        }
        let pins = Pins::new(&self.table, spec.deps().collect::<Vec<_>>());
        let mut remaining = 0;
        for dep in pins.ids().to_vec() {
            if !self.table.is_ready(&dep) {
                remaining += 1;
                let addr = self.me.clone();
                let aid = spec.actor_id;
                if let Err(w) = self.table.subscribe(
                    dep,
                    Box::new(move || {
                        if let Some(a) = addr {
                            a.do_send(ActorDepsReady(aid));
                        }
                    }),
                ) {
                    drop(w);
                    remaining -= 1;
                }
            }
        }
        if remaining == 0 {
            self.actors
                .insert(spec.actor_id, ActorPlace::Queued(spec.clone(), pins));
            self.actor_queue.push_back(spec.actor_id);
        } else {
            self.waiting_actors.insert(
                spec.actor_id,
                WaitingActor {
                    spec,
                    pins,
                    remaining,
                },
            );
        }
    }

    fn actor_deps_ready(&mut self, aid: ActorId) {
        let done = match self.waiting_actors.get_mut(&aid) {
            Some(w) => {
                w.remaining -= 1;
                w.remaining == 0
            }
            None => false,
        };
        if done && let Some(w) = self.waiting_actors.remove(&aid) {
            self.actors.insert(aid, ActorPlace::Queued(w.spec, w.pins));
            self.actor_queue.push_back(aid);
        }
    }

    fn dispatch_actors(&mut self) {
        let local = self.cfg.node_id;
        let mut i = 0;
        while i < self.actor_queue.len() {
            let aid = self.actor_queue[i];
            let Some(ActorPlace::Queued(spec, _)) = self.actors.get(&aid) else {
                self.actor_queue.remove(i);
                continue;
            };
            let req = request_of(&spec.placement_resources, &spec.strategy);
            let strategy = spec.strategy.clone();
            let placement = spec.placement_resources.clone();
            let decision = self
                .scheduler
                .pick_node(&self.view, &placement, &strategy, local, None);
            if !self.infeasible_since.is_empty() && !matches!(decision, Decision::Infeasible(_)) {
                self.infeasible_since.remove(&actor_key(aid));
            }
            match decision {
                Decision::Node(n) if n == local => {
                    self.actor_queue.remove(i);
                    let Some(alloc) = self.local().allocate(&req) else {
                        self.actor_queue.insert(i, aid);
                        i += 1;
                        continue;
                    };
                    if let Some(ActorPlace::Queued(spec, pins)) = self.actors.remove(&aid) {
                        self.read_actor_args(spec, pins, alloc);
                    }
                }
                Decision::Node(n) if self.spill_tx.is_some() => {
                    self.actor_queue.remove(i);
                    if let Some(ActorPlace::Queued(spec, pins)) = self.actors.remove(&aid)
                        && let Err((spec, pins)) = self.spill_actor(spec, pins, n, &req)
                    {
                        self.actors.insert(aid, ActorPlace::Queued(spec, pins));
                        self.actor_queue.insert(i, aid);
                        i += 1;
                    }
                }
                Decision::Node(_) | Decision::Wait => i += 1,
                Decision::Infeasible(_) if !self.infeasible_expired(&actor_key(aid)) => i += 1,
                Decision::Infeasible(e) => {
                    self.infeasible_since.remove(&actor_key(aid));
                    self.actor_queue.remove(i);
                    if let Some(ActorPlace::Queued(spec, _)) = self.actors.remove(&aid) {
                        let err = infeasible_error(&spec.display(), &req, self.local_ref(), &e);
                        self.report_creation(aid, self.cfg.node_id, Err(err));
                    }
                }
            }
        }
    }

    /// Hands an actor's creation to another node. Gives it back when that is not possible now.
    #[allow(clippy::result_large_err)]
    fn spill_actor(
        &mut self,
        mut spec: ActorSpec,
        pins: Pins,
        node: NodeId,
        req: &ResourceSet,
    ) -> Result<(), (ActorSpec, Pins)> {
        let launch = self.procs.as_ref().and_then(|p| p.launch_of(spec.job_id));
        let (Some(tx), Some(launch)) = (self.spill_tx.clone(), launch) else {
            return Err((spec, pins));
        };
        let aid = spec.actor_id;
        spec.owner = Some(self.cfg.node_id);
        if let Err(e) = inline_args(&self.table, &mut spec.args, &mut spec.nested) {
            self.report_creation(aid, self.cfg.node_id, Err(e));
            return Ok(());
        }
        let shown = spec.display();
        let spec = Box::new(spec);
        if let Err(e) = tx.try_send(Outbound::Actor { node, spec, launch }) {
            return match e.into_inner() {
                Outbound::Actor { spec, .. } => Err((*spec, pins)),
                _ => Ok(()),
            };
        }
        self.count_against(node, req);
        tracing::debug!(actor = %shown, node = %node, "placed an actor on another node");
        self.actors.insert(
            aid,
            ActorPlace::Remote {
                node,
                pins: Some(pins),
            },
        );
        Ok(())
    }

    /// Takes back an actor that `node` hosts for this node (a restarted head's actor, from its
    /// storage): its calls are forwarded there once the node is heard from.
    fn adopt_actor(&mut self, aid: ActorId, node: NodeId) {
        self.actors
            .insert(aid, ActorPlace::Remote { node, pins: None });
        if self.view.nodes.get(&node).is_some_and(|nv| nv.alive) {
            self.forward_adopted(aid, node);
        } else {
            self.adopting.entry(node).or_default().push(aid);
        }
    }

    fn forward_adopted(&mut self, aid: ActorId, node: NodeId) {
        if !matches!(self.actors.get(&aid), Some(ActorPlace::Remote { node: n, .. }) if *n == node)
        {
            return;
        }
        tracing::info!(actor = %aid, node = %node, "calls to an actor taken back from storage go to its node again");
        self.forward_route(aid, node);
        // The host may have dropped it meanwhile (its placement was never acknowledged,
        // or it died while this head was down): then it died, as with its node.
        if let Some(tx) = &self.spill_tx
            && tx
                .try_send(Outbound::CheckAdopted {
                    node,
                    actor_id: aid,
                })
                .is_err()
        {
            tracing::warn!(actor = %aid, node = %node, "could not check an actor taken back from storage");
        }
    }

    /// The route of actor `aid` forwards its calls to `node` from now on.
    fn forward_route(&self, aid: ActorId, node: NodeId) {
        if let (Some(tx), Some(route)) = (self.forward_tx.clone(), self.directory.get(&aid)) {
            route.activate_forward(Endpoint::Forward { node, tx });
        }
    }

    /// Tells `node` to kill actor `aid`, which it runs for this node.
    fn kill_on(&self, node: NodeId, aid: ActorId, no_restart: bool) {
        if let Some(tx) = &self.spill_tx
            && tx
                .try_send(Outbound::KillActor {
                    node,
                    actor_id: aid,
                    no_restart,
                })
                .is_err()
        {
            tracing::warn!(actor = %aid, node = %node, "could not kill an actor on its node");
        }
    }

    /// The node an actor was handed to created it (or could not); `durable` is told once the
    /// GCS's record of it is on disk (the node's report is acknowledged then).
    fn remote_actor_placed(
        &mut self,
        aid: ActorId,
        node: NodeId,
        result: Result<(), Error>,
        durable: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Some(ActorPlace::Remote { node: n, pins }) = self.actors.get_mut(&aid) else {
            return;
        };
        if *n != node {
            return;
        }
        pins.take();
        match result {
            Ok(()) => {
                self.forward_route(aid, node);
                self.report_creation_then(aid, node, Ok(0), durable);
            }
            Err(e) => {
                self.actors.remove(&aid);
                self.report_creation(aid, node, Err(e));
            }
        }
    }

    /// Starts an actor allocated here: at once when its constructor arguments are in memory;
    /// spilled ones are read back on a blocking thread first (disk I/O stays off this one).
    fn read_actor_args(&mut self, spec: ActorSpec, pins: Pins, alloc: Allocation) {
        if !crate::worker::thread::any_spilled(&self.table, &spec.args) {
            let args = crate::worker::thread::resolve_args(&self.table, &spec.args);
            return self.start_actor(spec, pins, alloc, args);
        }
        let aid = spec.actor_id;
        tracing::debug!(actor = %spec.display(), "reading an actor's spilled constructor arguments back");
        let (table, tx, args) = (self.table.clone(), self.tx.clone(), spec.args.clone());
        drop(tokio::task::spawn_blocking(move || {
            let args = crate::worker::thread::resolve_args(&table, &args);
            let _ = tx.send(RayletMsg::ActorArgsRead { actor: aid, args });
        }));
        self.actors
            .insert(aid, ActorPlace::Reading { alloc, spec, pins });
    }

    /// Spilled constructor arguments are back: the actor starts unless it was killed meanwhile.
    fn actor_args_read(&mut self, aid: ActorId, args: Result<Vec<bytes::Bytes>, Error>) {
        if !matches!(self.actors.get(&aid), Some(ActorPlace::Reading { .. })) {
            return;
        }
        if let Some(ActorPlace::Reading { alloc, spec, pins }) = self.actors.remove(&aid) {
            self.start_actor(spec, pins, alloc, args);
        }
    }

    fn start_actor(
        &mut self,
        spec: ActorSpec,
        pins: Pins,
        alloc: Allocation,
        args: Result<Vec<bytes::Bytes>, Error>,
    ) {
        let aid = spec.actor_id;
        let args = match args {
            Ok(a) => a,
            Err(e) => {
                self.local().release(&alloc);
                self.report_creation(aid, self.cfg.node_id, Err(e));
                return;
            }
        };
        drop(pins);
        let route = self.directory.register(aid, spec.display());
        let host = match self.cfg.worker_mode {
            WorkerMode::Thread => {
                let Some(me) = self.me.clone() else {
                    return;
                };
                let h = actor_host::spawn_thread_host(
                    &self.hosts.handle(),
                    spec.clone(),
                    args,
                    self.table.clone(),
                    route,
                    self.cfg.history.clone(),
                    me,
                );
                ActorHostRef::Thread(h)
            }
            WorkerMode::Process => {
                let Some(wid) = self.new_worker(spec.job_id, Some((spec.clone(), args, route)))
                else {
                    self.local().release(&alloc);
                    self.report_creation(
                        aid,
                        self.cfg.node_id,
                        Err(Error::runtime("no worker process could be started")),
                    );
                    return;
                };
                if let Some(slot) = self.workers.get_mut(&wid) {
                    slot.actor = Some(aid);
                }
                ActorHostRef::Process(wid)
            }
        };
        self.actors
            .insert(aid, ActorPlace::Starting { alloc, host, spec });
    }

    fn report_creation(&mut self, aid: ActorId, node: NodeId, result: Result<u32, Error>) {
        self.report_creation_then(aid, node, result, None);
    }

    /// As `report_creation`; `durable` is told once the GCS's record of it is on disk.
    fn report_creation_then(
        &mut self,
        aid: ActorId,
        node: NodeId,
        result: Result<u32, Error>,
        durable: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        self.cfg
            .history
            .actor_created(aid, node, result.as_ref().map(|p| *p));
        if let Some(g) = &self.gcs {
            g.do_send(gcs::ActorCreated {
                actor_id: aid,
                node_id: node,
                result,
                durable,
            });
        }
    }

    fn actor_started(&mut self, aid: ActorId, result: Result<u32, Error>) {
        let Some(ActorPlace::Starting { alloc, host, spec }) = self.actors.remove(&aid) else {
            return;
        };
        match &result {
            Ok(_) => {
                let keep = if spec.resources.is_empty() {
                    self.local().release(&alloc);
                    None
                } else {
                    Some(alloc)
                };
                self.actors
                    .insert(aid, ActorPlace::Alive { alloc: keep, host });
            }
            Err(_) => {
                self.local().release(&alloc);
                self.stop_host(&host);
            }
        }
        self.report_creation(aid, self.cfg.node_id, result);
    }

    fn stop_host(&mut self, host: &ActorHostRef) {
        match host {
            ActorHostRef::Thread(addr) => addr.do_send(HostControl::Stop),
            ActorHostRef::Process(wid) => {
                if let Some(WorkerSlot {
                    worker: Worker::Process(p),
                    ..
                }) = self.workers.get(wid)
                {
                    p.kill();
                }
            }
        }
    }

    fn stop_actor(&mut self, aid: ActorId, no_restart: bool) {
        if let Some(ActorPlace::Remote { node, .. }) = self.actors.get(&aid) {
            // Its node restarts it if it may; this node keeps forwarding its calls there.
            let node = *node;
            if no_restart {
                self.actors.remove(&aid);
            } else {
                self.forward_route(aid, node);
            }
            self.kill_on(node, aid, no_restart);
            return;
        }
        let not_started = self.waiting_actors.remove(&aid).is_some()
            || matches!(
                self.actors.get(&aid),
                Some(ActorPlace::Queued(..) | ActorPlace::Reading { .. })
            );
        if not_started {
            // It never ran: tell the GCS, which restarts it or records its death.
            if let Some(ActorPlace::Reading { alloc, .. }) = self.actors.remove(&aid) {
                self.local().release(&alloc);
            }
            self.actor_queue.retain(|a| *a != aid);
            if let Some(g) = &self.gcs {
                g.do_send(gcs::ActorDied {
                    actor_id: aid,
                    reason: "it was killed before it started".to_string(),
                    unfinished: Vec::new(),
                });
            }
            return;
        }
        if let Some(ActorPlace::Starting { host, .. } | ActorPlace::Alive { host, .. }) =
            self.actors.get(&aid)
        {
            let host = host.clone();
            self.stop_host(&host);
        }
    }

    /// An actor's host ended (stopped, or its process died).
    fn actor_exited(
        &mut self,
        aid: ActorId,
        reason: String,
        unfinished: Vec<QueuedCall>,
        host_worker: Option<WorkerId>,
    ) {
        let same_host = |h: &ActorHostRef| match (h, host_worker) {
            (ActorHostRef::Thread(..), None) => true,
            (ActorHostRef::Process(w), Some(x)) => *w == x,
            _ => false,
        };
        let matches = match self.actors.get(&aid) {
            Some(ActorPlace::Alive { host, .. }) | Some(ActorPlace::Starting { host, .. }) => {
                same_host(host)
            }
            _ => false,
        };
        if matches {
            match self.actors.remove(&aid) {
                Some(ActorPlace::Alive { alloc: Some(a), .. }) => {
                    self.local().release(&a);
                }
                Some(ActorPlace::Starting { alloc, .. }) => {
                    self.local().release(&alloc);
                }
                _ => {}
            }
            if let Some(w) = host_worker
                && let Some(WorkerSlot {
                    worker: Worker::Process(p),
                    ..
                }) = self.workers.get(&w)
            {
                p.kill();
            }
        } else {
            // A late report about an earlier incarnation: its leftover calls fail.
            let err = Error::ActorDied {
                actor: aid.hex(),
                reason,
            };
            for q in unfinished {
                crate::actors::directory::fail_call(&self.table, q, &err);
            }
            return;
        }
        if let Some(g) = &self.gcs {
            g.do_send(gcs::ActorDied {
                actor_id: aid,
                reason,
                unfinished,
            });
        }
    }

    fn shutdown_all(&mut self) {
        let hosts: Vec<ActorHostRef> = self
            .actors
            .values()
            .filter_map(|p| match p {
                ActorPlace::Starting { host, .. } | ActorPlace::Alive { host, .. } => {
                    Some(host.clone())
                }
                ActorPlace::Queued(..) | ActorPlace::Reading { .. } | ActorPlace::Remote { .. } => {
                    None
                }
            })
            .collect();
        for h in hosts {
            if let ActorHostRef::Thread(addr) = h {
                addr.do_send(HostControl::Stop);
            }
        }
        for slot in self.workers.values() {
            if let Worker::Process(p) = &slot.worker {
                p.kill();
            }
        }
        self.workers.clear();
        self.idle.clear();
    }
}

/// Where the raylet of `node` accepts worker processes and drivers.
pub(crate) fn socket_path(temp_dir: &std::path::Path, node: NodeId) -> std::path::PathBuf {
    temp_dir.join(format!("raylet-{}.sock", &node.hex()[..12]))
}

/// A spilled task's or actor's arguments: small ready references travel inline; large ones
/// stay references that the other node pulls in parts (the caller's pins keep them alive).
/// The objects an argument's value refers to join `nested`, so the other node pulls them too.
pub(crate) fn inline_args(
    table: &ObjectTable,
    args: &mut [crate::spec::TaskArg],
    nested: &mut Vec<ObjectId>,
) -> Result<(), Error> {
    for a in args.iter_mut() {
        let crate::spec::TaskArg::Ref(id) = a else {
            continue;
        };
        let id = *id;
        // A large or spilled value stays a reference (the other node pulls it in parts, read
        // off the daemon's threads): its size is enough, its file is not read here.
        if let crate::store::Peek::Sealed {
            size,
            is_error: false,
            spilled,
        } = table.peek(&id)
            && (spilled || size as usize > INLINE_ARG)
        {
            nested.extend(table.nested_of(&id));
            continue;
        }
        match table.lookup(&id) {
            crate::store::Lookup::Ready(o) if o.is_error => {
                return Err(crate::codec::decode::<Error>(&o.data).unwrap_or_else(|e| e));
            }
            crate::store::Lookup::Ready(o) => {
                nested.extend(table.nested_of(&id));
                if o.data.len() <= INLINE_ARG {
                    *a = crate::spec::TaskArg::Value(o.data);
                }
            }
            _ => {
                return Err(Error::ObjectLost {
                    id: id.hex(),
                    reason: "argument not available when it was sent to another node".to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The node holding the most bytes of a DEFAULT task's arguments, when they are worth staying
/// with (at least `LOCALITY_BYTES`): the policy takes it whenever the task fits there, ahead
/// of the hybrid ranking. This node holds every argument (results are brought to the node
/// that asked for them); other nodes hold the copies they kept of results they made
/// (`copies`). This node wins a tie while the task fits here.
fn locality(
    table: &ObjectTable,
    copies: &HashMap<ObjectId, Vec<NodeId>>,
    view: &ClusterView,
    spec: &TaskSpec,
    req: &ResourceSet,
    here: NodeId,
) -> Option<NodeId> {
    if spec.strategy != SchedulingStrategy::Default {
        return None;
    }
    let mut bytes: HashMap<NodeId, usize> = HashMap::new();
    for a in &spec.args {
        if let crate::spec::TaskArg::Ref(id) = a
            && let crate::store::Peek::Sealed { size, .. } = table.peek(id)
        {
            let size = size as usize;
            *bytes.entry(here).or_default() += size;
            for n in copies.get(id).into_iter().flatten() {
                *bytes.entry(*n).or_default() += size;
            }
        }
    }
    let fits = |n: &NodeId| {
        view.get(*n)
            .is_some_and(|nv| nv.alive && nv.resources.can_fit(req))
    };
    let most = bytes.get(&here).copied().unwrap_or(0);
    if most < LOCALITY_BYTES {
        return None;
    }
    if fits(&here) {
        return Some(here);
    }
    bytes
        .into_iter()
        .filter(|(n, b)| *n != here && *b >= LOCALITY_BYTES && fits(n))
        .max_by(|(na, a), (nb, b)| a.cmp(b).then(nb.cmp(na)))
        .map(|(n, _)| n)
}

/// Why a task of a job whose driver left does not run.
fn job_gone(task: &str) -> Error {
    Error::Cancelled {
        task: format!("{task} (its job's driver exited)"),
    }
}

/// The key under which an actor's creation is clocked in `infeasible_since` (tasks use their
/// class key).
fn actor_key(aid: ActorId) -> String {
    format!("actor:{aid}")
}

fn infeasible_error(
    what: &str,
    req: &ResourceSet,
    node: &NodeResources,
    e: &crate::sched::SchedError,
) -> Error {
    use crate::sched::SchedError as S;
    match e {
        S::Infeasible {
            resource,
            asked,
            max,
        }
        | S::InfeasibleOnNode {
            resource,
            asked,
            max,
            ..
        }
        | S::BundleTooSmall {
            resource,
            asked,
            max,
            ..
        } => {
            return Error::Infeasible {
                what: what.to_string(),
                resource: resource.clone(),
                asked: asked.to_f64(),
                available: max.to_f64(),
            };
        }
        _ => {}
    }
    // Otherwise name the first resource that the node's total cannot cover.
    for (name, asked) in req.iter() {
        let have = node.total.get(name);
        if asked > have {
            return Error::Infeasible {
                what: what.to_string(),
                resource: name.to_string(),
                asked: asked.to_f64(),
                available: have.to_f64(),
            };
        }
    }
    Error::Infeasible {
        what: what.to_string(),
        resource: e.to_string(),
        asked: 0.0,
        available: 0.0,
    }
}

impl Actor for Raylet {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        self.me = Some(ctx.address());
        if let Some(rx) = self.rx.take() {
            ctx.add_stream(rx.into_stream());
        }
        ctx.run_interval(Duration::from_secs(1), |r, _| {
            if !r.copies.is_empty() {
                r.sweep_copies();
            }
        });
        if !self.cfg.infeasible_timeout.is_zero() {
            // Infeasible requests fail once their time is up, even if nothing else happens.
            ctx.run_interval(Duration::from_millis(250), |r, _| {
                if !r.infeasible_since.is_empty() {
                    r.dispatch();
                }
            });
        }
        tracing::debug!(node = %self.cfg.node_id, "raylet started");
    }
}

impl StreamHandler<RayletMsg> for Raylet {
    fn handle(&mut self, msg: RayletMsg, _ctx: &mut Self::Context) {
        match msg {
            RayletMsg::Submit(t) => self.submit(t),
            RayletMsg::TaskDone {
                worker,
                task_id,
                outcome,
            } => self.task_done(worker, task_id, outcome),
            RayletMsg::Blocked(w) => self.blocked(w, true),
            RayletMsg::Unblocked(w) => self.blocked(w, false),
            RayletMsg::Cancel { return_id, force } => self.cancel(return_id, force),
            RayletMsg::WorkerExited { worker, detail } => self.worker_gone(worker, detail),
            RayletMsg::MemoryPressure(p) => self.memory_pressure(p),
            RayletMsg::ArgsRead { worker, spec, args } => {
                self.execute_on_process(worker, spec, args)
            }
            RayletMsg::ActorArgsRead { actor, args } => self.actor_args_read(actor, args),
            RayletMsg::WorkerReady(w) => {
                if let Some(slot) = self.workers.get_mut(&w)
                    && slot.starting
                {
                    slot.starting = false;
                    self.starting_procs = self.starting_procs.saturating_sub(1);
                    if let Some(tid) = slot.running
                        && let Some(run) = self.running.get(&tid)
                    {
                        let spec = run.task.spec.clone();
                        self.push_to_worker(w, spec);
                    }
                }
            }
        }
        self.dispatch();
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

// ---- control messages ---------------------------------------------------------------------

/// A dependency of a waiting task was sealed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct DepsReady(pub TaskId);

impl Handler<DepsReady> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: DepsReady, _ctx: &mut Self::Context) {
        self.deps_ready(msg.0);
        self.dispatch();
    }
}

/// A task killed for memory has waited out its backoff: queue it again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RetryAfterBackoff(pub TaskId);

impl Handler<RetryAfterBackoff> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RetryAfterBackoff, _ctx: &mut Self::Context) {
        if let Some(task) = self.backoff.remove(&msg.0) {
            self.retry(task);
            self.dispatch();
        }
    }
}

/// A dependency of a waiting actor creation was sealed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorDepsReady(pub ActorId);

impl Handler<ActorDepsReady> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: ActorDepsReady, _ctx: &mut Self::Context) {
        self.actor_deps_ready(msg.0);
        self.dispatch();
    }
}

/// Starts the worker-process pool (process mode) and its prestarted workers.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct StartPool {
    pub client: Arc<crate::node::NodeClient>,
    /// How to start workers of this process's own job (none: only connected drivers' jobs).
    pub command: Option<crate::worker::process::WorkerCommand>,
    pub namespace: String,
}

impl Handler<StartPool> for Raylet {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: StartPool, ctx: &mut Self::Context) -> Self::Result {
        use crate::core::Core;
        let jobs: crate::worker::process::Jobs = Arc::default();
        if let Some(command) = msg.command {
            jobs.lock().insert(
                msg.client.job_id(),
                crate::worker::process::JobLaunch {
                    command,
                    namespace: msg.namespace,
                },
            );
        }
        let socket = socket_path(&self.cfg.temp_dir, self.cfg.node_id);
        let pctx = crate::worker::process::PoolCtx {
            jobs,
            socket,
            node_id: self.cfg.node_id,
            raylet_tx: self.tx.clone(),
            table: self.table.clone(),
            raylet: ctx.address(),
            client: msg.client.clone(),
        };
        let pool = ProcessPool::new(pctx, self.cfg.worker_start_timeout)
            .map_err(|e| Error::runtime(format!("cannot start the worker process pool: {e}")))?;
        crate::actors::memory_monitor::spawn(
            self.cfg.memory_monitor.clone(),
            pool.procs(),
            self.tx.clone(),
        );
        self.procs = Some(pool);
        for _ in 0..self.cfg.prestart_workers {
            if let Some(w) = self.new_worker(self.cfg.job_id, None) {
                self.idle.entry(self.cfg.job_id).or_default().push(w);
            }
        }
        Ok(())
    }
}

/// Makes this raylet part of a cluster: work for other nodes goes to `work`, calls to actors
/// on other nodes to `calls`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetSpill {
    pub work: flume::Sender<Outbound>,
    pub tasks: TaskSend,
    pub calls: Arc<dyn Forwarder>,
}

impl Handler<SetSpill> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: SetSpill, _ctx: &mut Self::Context) {
        self.spill_tx = Some(msg.work);
        self.task_send = Some(msg.tasks);
        self.forward_tx = Some(msg.calls);
    }
}

/// An actor handed to another node was created there (or could not be).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteActorPlaced {
    pub actor_id: ActorId,
    pub node: NodeId,
    pub result: Result<(), Error>,
    /// Told once the owner's record of the actor is durable.
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Handler<RemoteActorPlaced> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RemoteActorPlaced, _ctx: &mut Self::Context) {
        self.remote_actor_placed(msg.actor_id, msg.node, msg.result, msg.durable);
        self.dispatch();
    }
}

/// Kills for good an actor that `node` runs for this node (a restarted head's actor whose
/// placement group ended).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KillRemoteActor {
    pub actor_id: ActorId,
    pub node: NodeId,
}

impl Handler<KillRemoteActor> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: KillRemoteActor, _ctx: &mut Self::Context) {
        self.kill_on(msg.node, msg.actor_id, true);
    }
}

/// The node hosting an actor a restarted head took back no longer runs it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AdoptedGone {
    pub actor_id: ActorId,
    pub node: NodeId,
    pub reason: String,
    /// It died there past its restarts: dead for good, not restarted.
    pub dead_for_good: bool,
}

impl Handler<AdoptedGone> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: AdoptedGone, _ctx: &mut Self::Context) {
        let (aid, node) = (msg.actor_id, msg.node);
        if !matches!(self.actors.get(&aid), Some(ActorPlace::Remote { node: n, .. }) if *n == node)
        {
            return;
        }
        tracing::warn!(actor = %aid, node = %node, reason = %msg.reason, "an actor taken back from storage no longer runs on its node");
        let reason = format!("its node {node} no longer ran it: {}", msg.reason);
        self.remote_actor_lost(aid, reason, msg.dead_for_good);
    }
}

impl Raylet {
    /// An actor this node placed on another node no longer runs there: its place is
    /// forgotten and the GCS decides (a restart within `max_restarts`, or, `for_good`, dead).
    fn remote_actor_lost(&mut self, aid: ActorId, reason: String, for_good: bool) {
        self.actors.remove(&aid);
        match &self.gcs {
            Some(g) if for_good => g.do_send(gcs::ActorGone {
                actor_id: aid,
                reason,
            }),
            Some(g) => g.do_send(gcs::ActorDied {
                actor_id: aid,
                reason,
                unfinished: Vec::new(),
            }),
            None => {}
        }
    }
}

/// A restarted head takes back an actor another node hosts for it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AdoptActor {
    pub actor_id: ActorId,
    pub node: NodeId,
}

impl Handler<AdoptActor> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: AdoptActor, _ctx: &mut Self::Context) {
        self.adopt_actor(msg.actor_id, msg.node);
    }
}

/// Another node's resources (`None`: it died).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteNode {
    pub node_id: NodeId,
    pub resources: Option<(ResourceSet, ResourceSet)>,
}

impl Handler<RemoteNode> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RemoteNode, _ctx: &mut Self::Context) {
        self.remote_node(msg.node_id, msg.resources);
        self.dispatch();
    }
}

/// The value of a spilled task that finished.
pub(crate) enum RemoteValue {
    /// For the raylet to seal.
    Value(crate::worker::protocol::WireValue),
    /// Sealed already where it arrived (so its readers wake without a hop through the
    /// raylet); whether the seal took (not: the task was cancelled, failed over or freed).
    Sealed(bool),
}

/// A spilled task finished on its node.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteDone {
    pub task_id: TaskId,
    pub result: Result<RemoteValue, Error>,
    /// The node could not be reached or dropped the connection: a system failure.
    pub node_lost: bool,
    /// The node that ran it keeps a copy of the value (until told to `Release` it).
    pub kept: bool,
}

/// Where a task that fits nowhere now is sent on anyway (pipelining, as Ray pushes the next
/// task to a leased worker before the last one is done): a DEFAULT-strategy task (`eligible`:
/// also, this node sends tasks elsewhere) goes to the alive remote node that could hold it
/// and has the fewest tasks pipelined there from here, fewer than its CPUs. It starts there
/// the moment a task ends, instead of a network round trip later.
fn pipeline_target(
    view: &ClusterView,
    pipelined: &HashMap<TaskId, NodeId>,
    local: NodeId,
    eligible: bool,
    req: &ResourceSet,
) -> Option<NodeId> {
    if !eligible {
        return None;
    }
    view.nodes
        .iter()
        .filter(|(id, nv)| **id != local && nv.is_schedulable() && nv.resources.is_feasible(req))
        .map(|(id, nv)| {
            let waiting = pipelined.values().filter(|n| *n == id).count();
            let cpus = nv.resources.total.get("CPU").to_f64().ceil() as usize;
            (waiting, cpus, *id)
        })
        .filter(|(waiting, cpus, _)| waiting < cpus)
        .min_by_key(|(waiting, _, id)| (*waiting, *id))
        .map(|(_, _, id)| id)
}

impl Handler<RemoteDone> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RemoteDone, _ctx: &mut Self::Context) {
        self.remote_done(msg.task_id, msg.result, msg.node_lost, msg.kept);
        self.dispatch();
    }
}

/// Registers how to start a job's workers (a task of it arrived from another node).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegisterJob {
    pub job_id: crate::ids::JobId,
    pub launch: crate::worker::process::JobLaunch,
}

impl Handler<RegisterJob> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RegisterJob, _ctx: &mut Self::Context) {
        if let Some(p) = &self.procs {
            p.register(msg.job_id, msg.launch);
        }
    }
}

/// Tells the raylet which GCS to report to.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetGcs(pub Addr<Gcs>);

impl Handler<SetGcs> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: SetGcs, _ctx: &mut Self::Context) {
        self.gcs = Some(msg.0);
    }
}

/// Create (or re-create, on restart) an actor on this node.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CreateActor(pub ActorSpec);

impl Handler<CreateActor> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: CreateActor, _ctx: &mut Self::Context) {
        self.create_actor(msg.0);
        self.dispatch();
    }
}

/// Stop an actor's host (kill).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopActor {
    pub actor_id: ActorId,
    /// Dead for good (else its restart policy applies).
    pub no_restart: bool,
}

impl Handler<StopActor> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: StopActor, _ctx: &mut Self::Context) {
        self.stop_actor(msg.actor_id, msg.no_restart);
        self.dispatch();
    }
}

/// A host finished running the constructor (Ok carries the host's pid).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorStarted {
    pub actor_id: ActorId,
    pub result: Result<u32, Error>,
}

impl Handler<ActorStarted> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: ActorStarted, _ctx: &mut Self::Context) {
        self.actor_started(msg.actor_id, msg.result);
        self.dispatch();
    }
}

/// A host ended; `unfinished` are calls it had not run.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorExited {
    pub actor_id: ActorId,
    pub reason: String,
    pub unfinished: Vec<QueuedCall>,
    /// The worker process that hosted it (`None`: a thread host).
    pub host_worker: Option<WorkerId>,
}

impl Handler<ActorExited> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: ActorExited, _ctx: &mut Self::Context) {
        self.actor_exited(msg.actor_id, msg.reason, msg.unfinished, msg.host_worker);
        self.dispatch();
    }
}

/// Reserve bundles of a placement group on this node, all or none.
#[derive(Message)]
#[rtype(result = "Result<(), crate::sched::SchedError>")]
pub(crate) struct CommitBundles {
    pub pg: PlacementGroupId,
    pub bundles: Vec<(usize, ResourceSet)>,
}

impl Handler<CommitBundles> for Raylet {
    type Result = Result<(), crate::sched::SchedError>;
    fn handle(&mut self, msg: CommitBundles, _ctx: &mut Self::Context) -> Self::Result {
        let mut done = Vec::new();
        for (idx, b) in &msg.bundles {
            if let Err(e) = self.local().commit_bundle(msg.pg, *idx, b) {
                for i in done {
                    let _ = self.local().return_bundle(msg.pg, i);
                }
                return Err(e);
            }
            done.push(*idx);
        }
        self.dispatch();
        Ok(())
    }
}

/// Return bundles of a placement group.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ReturnBundles {
    pub pg: PlacementGroupId,
}

impl Handler<ReturnBundles> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: ReturnBundles, _ctx: &mut Self::Context) {
        for i in self.local_ref().bundles_of(msg.pg) {
            if let Err(e) = self.local().return_bundle(msg.pg, i) {
                tracing::warn!(pg = %msg.pg, bundle = i, error = %e, "returning a bundle failed");
            }
        }
        self.dispatch();
    }
}

/// The driver of a job left (`broadcast`: this node's driver, so other nodes are told too).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JobEnded {
    pub job_id: crate::ids::JobId,
    pub broadcast: bool,
}

impl Handler<JobEnded> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: JobEnded, _ctx: &mut Self::Context) {
        self.job_ended(msg.job_id);
        if let Some(g) = &self.gcs {
            g.do_send(gcs::JobFinished(msg.job_id));
        }
        if msg.broadcast
            && let Some(tx) = &self.spill_tx
            && tx.try_send(Outbound::JobEnded(msg.job_id)).is_err()
        {
            tracing::warn!(job = %msg.job_id, "could not tell the other nodes that a job ended");
        }
        self.dispatch();
    }
}

/// Bundles committed on another node (`bundles`), or given back there (empty): updates this
/// raylet's view of that node before its next heartbeat does.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteBundles {
    pub node: NodeId,
    pub pg: PlacementGroupId,
    pub bundles: Vec<(usize, ResourceSet)>,
}

impl Handler<RemoteBundles> for Raylet {
    type Result = ();
    fn handle(&mut self, msg: RemoteBundles, _ctx: &mut Self::Context) {
        if msg.node == self.cfg.node_id {
            return;
        }
        let Some(nv) = self.view.nodes.get_mut(&msg.node) else {
            return;
        };
        if msg.bundles.is_empty() {
            for i in nv.resources.bundles_of(msg.pg) {
                let _ = nv.resources.return_bundle(msg.pg, i);
            }
        }
        for (i, b) in &msg.bundles {
            if let Err(e) = nv.resources.commit_bundle(msg.pg, *i, b) {
                tracing::debug!(pg = %msg.pg, node = %msg.node, error = %e, "bundle not mirrored in the view");
            }
        }
        self.dispatch();
    }
}

/// Every node this raylet knows, with its resources (other nodes' from their heartbeats).
#[derive(Message)]
#[rtype(result = "ClusterView")]
pub(crate) struct GetClusterView;

impl Handler<GetClusterView> for Raylet {
    type Result = MessageResult<GetClusterView>;
    fn handle(&mut self, _msg: GetClusterView, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.view.clone())
    }
}

/// The resources of every alive node this raylet knows (itself included): (total, available).
#[derive(Message)]
#[rtype(result = "(ResourceSet, ResourceSet)")]
pub(crate) struct GetClusterResources;

impl Handler<GetClusterResources> for Raylet {
    type Result = MessageResult<GetClusterResources>;
    fn handle(&mut self, _msg: GetClusterResources, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult((self.view.total(), self.view.available()))
    }
}

/// This node's resources (total, available).
#[derive(Message)]
#[rtype(result = "NodeResources")]
pub(crate) struct GetResources;

impl Handler<GetResources> for Raylet {
    type Result = MessageResult<GetResources>;
    fn handle(&mut self, _msg: GetResources, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.local_ref().clone())
    }
}

/// What waits for resources on this node.
#[derive(Message)]
#[rtype(result = "Vec<Demand>")]
pub(crate) struct GetDemand;

impl Handler<GetDemand> for Raylet {
    type Result = MessageResult<GetDemand>;
    fn handle(&mut self, _msg: GetDemand, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.demands())
    }
}

/// Stop every worker and host.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

impl Handler<Shutdown> for Raylet {
    type Result = ();
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.shutdown_all();
        ctx.stop();
    }
}

/// A worker's state-API row (Ray's `WorkerState`; `ip` is the daemon's to add).
fn worker_row(wid: WorkerId, slot: &WorkerSlot, node: NodeId) -> serde_json::Value {
    let pid = slot.worker.pid();
    serde_json::json!({
        "worker_id": wid.hex(),
        "is_alive": true,
        "worker_type": "WORKER",
        "exit_type": null,
        "node_id": node.hex(),
        "ip": null,
        "pid": pid,
        "exit_detail": null,
        "worker_launch_time_ms": slot.started_ms,
        "worker_launched_time_ms": slot.started_ms,
        "start_time_ms": slot.started_ms,
        "end_time_ms": null,
        "job_id": slot.job.hex(),
        "actor_id": slot.actor.map(|a| a.hex()),
        "thread": matches!(slot.worker, Worker::Thread(_)),
    })
}

/// The node's workers, alive and recently exited, as state-API rows.
#[derive(Message)]
#[rtype(result = "Vec<serde_json::Value>")]
pub(crate) struct ListWorkers;

impl Handler<ListWorkers> for Raylet {
    type Result = MessageResult<ListWorkers>;
    fn handle(&mut self, _msg: ListWorkers, _ctx: &mut Self::Context) -> Self::Result {
        let node = self.cfg.node_id;
        let mut rows: Vec<serde_json::Value> = self.exited_workers.iter().cloned().collect();
        rows.extend(self.workers.iter().map(|(w, s)| worker_row(*w, s, node)));
        MessageResult(rows)
    }
}

/// This node's task counters, gauges, scheduling latency and object-store numbers
/// (heartbeats, `/metrics`); actors and jobs are the GCS's to add.
#[derive(Message)]
#[rtype(result = "NodeMetrics")]
pub(crate) struct GetMetrics;

impl Handler<GetMetrics> for Raylet {
    type Result = MessageResult<GetMetrics>;
    fn handle(&mut self, _msg: GetMetrics, _ctx: &mut Self::Context) -> Self::Result {
        let m = &self.metrics;
        let mut out = NodeMetrics {
            tasks_submitted: m.submitted,
            tasks_spilled: m.spilled,
            tasks_finished: m.finished,
            tasks_failed: m.failed,
            tasks_running: self.running.len() as u64,
            tasks_queued: self.queues.values().map(|q| q.len() as u64).sum(),
            tasks_waiting_args: self.waiting.len() as u64,
            tasks_oom_killed: m.oom_killed,
            sched_latency: m.sched_latency.clone(),
            ..NodeMetrics::default()
        };
        crate::actors::metrics::store_metrics(&mut out, &self.table);
        MessageResult(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_jobs_stay_bounded() {
        let mut ended = EndedJobs::default();
        let first = crate::ids::JobId::new();
        assert!(ended.insert(first));
        assert!(!ended.insert(first));
        for _ in 0..ENDED_JOBS {
            ended.insert(crate::ids::JobId::new());
        }
        assert_eq!(ended.set.len(), ENDED_JOBS);
        assert_eq!(ended.order.len(), ENDED_JOBS);
        assert!(!ended.contains(&first), "the oldest is forgotten first");
    }

    #[test]
    fn tasks_pipeline_to_remote_nodes_up_to_their_cpus() {
        use crate::sched::{NodeResources, NodeView, resources::CPU};
        let cpu = |x: f64| ResourceSet::new().with(CPU, x);
        let (local, a, b) = (NodeId::new(), NodeId::new(), NodeId::new());
        let mut view = ClusterView::new();
        for (id, cpus) in [(local, 4.0), (a, 2.0), (b, 1.0)] {
            view.nodes
                .insert(id, NodeView::new(NodeResources::new(cpu(cpus))));
        }
        let mut pipelined: HashMap<TaskId, NodeId> = HashMap::new();
        let mut sent = Vec::new();
        while let Some(n) = pipeline_target(&view, &pipelined, local, true, &cpu(1.0)) {
            assert_ne!(n, local, "never the local node");
            pipelined.insert(TaskId::new(), n);
            sent.push(n);
        }
        // Fewest waiting first; at most one per CPU of each remote node.
        assert_eq!(sent.len(), 3);
        assert_eq!(sent.iter().filter(|n| **n == a).count(), 2);
        assert_eq!(sent.iter().filter(|n| **n == b).count(), 1);
        pipelined.clear();
        // Not eligible (another strategy, or no spillback), or nowhere it fits: none.
        assert_eq!(
            pipeline_target(&view, &pipelined, local, false, &cpu(1.0)),
            None
        );
        assert_eq!(
            pipeline_target(&view, &pipelined, local, true, &cpu(3.0)),
            None
        );
        if let Some(nv) = view.nodes.get_mut(&a) {
            nv.alive = false;
        }
        assert_eq!(
            pipeline_target(&view, &pipelined, local, true, &cpu(1.0)),
            Some(b),
            "not to a dead node"
        );
    }
}
