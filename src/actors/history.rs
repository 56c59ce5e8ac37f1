//! The node's recent task history: one record per task attempt that this node scheduled or
//! ran (normal tasks, actor creations, actor method calls), with its state changes and their
//! times, kept in a bounded table so that a long-running node's memory does not grow without
//! end. The state API's `tasks` rows, the tasks summary and the Chrome-trace timeline are
//! read off it (`rows`).
//!
//! Shared by the raylet, the thread actor hosts and the worker connections of one node
//! (`Arc<TaskLog>`, one short `parking_lot` lock per event); nothing here blocks.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::error::Error;
use crate::ids::{ActorId, JobId, NodeId, TaskId, WorkerId};
use crate::sched::{ResourceSet, SchedulingStrategy};
use crate::spec::{ActorCall, ActorSpec, TaskSpec};

/// Records kept per node when `MOBULA_TASK_HISTORY` does not say otherwise (Ray keeps
/// 100,000 task events in its GCS for the whole cluster).
pub const DEFAULT_CAPACITY: usize = 20_000;

/// A task attempt's state, with Ray's names (`ray.util.state` `TaskStatus`), in the order a
/// task goes through them: merging two nodes' records of one attempt keeps the later state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskState {
    /// Waiting for its arguments.
    PendingArgsAvail,
    /// Waiting for a node with room.
    PendingNodeAssignment,
    /// Handed to another node or to a worker.
    SubmittedToWorker,
    /// Running.
    Running,
    /// Ended with a value.
    Finished,
    /// Ended with an error.
    Failed,
}

impl TaskState {
    /// Ray's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::PendingArgsAvail => "PENDING_ARGS_AVAIL",
            TaskState::PendingNodeAssignment => "PENDING_NODE_ASSIGNMENT",
            TaskState::SubmittedToWorker => "SUBMITTED_TO_WORKER",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
        }
    }

    /// Where a state name ranks (merging records of one attempt from two nodes).
    pub fn rank_of(name: &str) -> u8 {
        match name {
            "PENDING_ARGS_AVAIL" => 0,
            "PENDING_NODE_ASSIGNMENT" => 1,
            "SUBMITTED_TO_WORKER" => 2,
            "RUNNING" => 3,
            "FINISHED" | "FAILED" => 4,
            _ => 0,
        }
    }

    fn terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed)
    }
}

/// Ray's task types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    ActorCreation,
    ActorTask,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Normal => "NORMAL_TASK",
            Kind::ActorCreation => "ACTOR_CREATION_TASK",
            Kind::ActorTask => "ACTOR_TASK",
        }
    }
}

/// Ray's `error_type` for an error (`ErrorType` in `common.proto`).
pub fn error_type(e: &Error) -> &'static str {
    match e {
        Error::TaskFailed { .. } | Error::TaskPanicked { .. } => "TASK_EXECUTION_EXCEPTION",
        Error::ActorDied { .. } => "ACTOR_DIED",
        Error::ObjectLost { .. } => "OBJECT_LOST",
        Error::WorkerCrashed { .. } => "WORKER_DIED",
        Error::Cancelled { .. } => "TASK_CANCELLED",
        Error::Infeasible { .. } => "TASK_UNSCHEDULABLE_ERROR",
        Error::StoreFull { .. } | Error::OutOfMemory { .. } => "OUT_OF_MEMORY",
        Error::PlacementGroup { .. } => "TASK_PLACEMENT_GROUP_REMOVED",
        _ => "RUNTIME_ENV_SETUP_FAILED",
    }
}

#[derive(Debug, Clone)]
struct Record {
    task_id: TaskId,
    attempt: u32,
    name: String,
    /// Ray's `func_or_class_name`: the function's name (`f`) or `Class.method`.
    func: String,
    kind: Kind,
    job_id: Option<JobId>,
    actor_id: Option<ActorId>,
    state: TaskState,
    node_id: Option<NodeId>,
    worker_id: Option<WorkerId>,
    worker_pid: Option<u32>,
    error: Option<(&'static str, String)>,
    resources: ResourceSet,
    pg: Option<String>,
    /// `(state, unix ms)` in the order they happened.
    events: Vec<(TaskState, u64)>,
}

type Key = (TaskId, u32);

impl Record {
    /// A record of attempt `key` that starts in `state` now.
    fn new(key: Key, name: &str, kind: Kind, state: TaskState) -> Self {
        Self {
            task_id: key.0,
            attempt: key.1,
            name: name.to_string(),
            func: name.to_string(),
            kind,
            job_id: None,
            actor_id: None,
            state,
            node_id: None,
            worker_id: None,
            worker_pid: None,
            error: None,
            resources: ResourceSet::new(),
            pg: None,
            events: vec![(state, crate::web::now_ms())],
        }
    }
}

struct Inner {
    cap: usize,
    rows: HashMap<Key, Record>,
    /// Keys in the order their records were made; the oldest goes first when full.
    order: VecDeque<Key>,
    /// Records evicted to stay under `cap`.
    dropped: u64,
    /// Each actor's creation record, and each running call's class name.
    creations: HashMap<ActorId, Key>,
}

/// The bounded task table of one node.
pub struct TaskLog {
    node: NodeId,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for TaskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLog").field("node", &self.node).finish()
    }
}

/// The placement group a strategy names, as hex.
fn pg_of(s: &SchedulingStrategy) -> Option<String> {
    match s {
        SchedulingStrategy::PlacementGroup { pg, .. } => Some(pg.hex()),
        _ => None,
    }
}

impl TaskLog {
    /// A table of node `node` keeping at most `cap` records (at least 1).
    pub fn new(node: NodeId, cap: usize) -> Self {
        Self {
            node,
            inner: Mutex::new(Inner {
                cap: cap.max(1),
                rows: HashMap::new(),
                order: VecDeque::new(),
                dropped: 0,
                creations: HashMap::new(),
            }),
        }
    }

    /// A table sized by `MOBULA_TASK_HISTORY` (records), else [`DEFAULT_CAPACITY`].
    pub fn from_env(node: NodeId) -> Self {
        let cap = std::env::var("MOBULA_TASK_HISTORY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CAPACITY);
        Self::new(node, cap)
    }

    fn insert(&self, rec: Record) {
        let mut g = self.inner.lock();
        let key = (rec.task_id, rec.attempt);
        if g.rows.insert(key, rec).is_none() {
            g.order.push_back(key);
        }
        while g.rows.len() > g.cap {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(r) = g.rows.remove(&old) {
                g.dropped += 1;
                if r.kind == Kind::ActorCreation
                    && let Some(a) = r.actor_id
                {
                    g.creations.remove(&a);
                }
            }
        }
    }

    fn update(&self, key: Key, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.inner.lock().rows.get_mut(&key) {
            f(r);
        }
    }

    /// A task was submitted here (or retried: a new attempt).
    pub fn submitted(&self, spec: &TaskSpec, waits_for_args: bool) {
        let state = match waits_for_args {
            true => TaskState::PendingArgsAvail,
            false => TaskState::PendingNodeAssignment,
        };
        let mut r = Record::new(
            (spec.task_id, spec.attempt),
            &spec.name,
            Kind::Normal,
            state,
        );
        r.job_id = Some(spec.job_id);
        r.resources = spec.resources.clone();
        r.pg = pg_of(&spec.strategy);
        self.insert(r);
    }

    /// An actor's creation was submitted here.
    pub fn actor_submitted(&self, spec: &ActorSpec) {
        let key = (TaskId::new(), 0);
        let name = format!("{}.__init__", spec.class_name);
        let state = TaskState::PendingNodeAssignment;
        let mut r = Record::new(key, &name, Kind::ActorCreation, state);
        r.job_id = Some(spec.job_id);
        r.actor_id = Some(spec.actor_id);
        r.resources = spec.resources.clone();
        r.pg = pg_of(&spec.strategy);
        self.insert(r);
        self.inner.lock().creations.insert(spec.actor_id, key);
    }

    /// A state change of an attempt, placed on `node` (this one, or the node it went to).
    pub fn state(&self, task: TaskId, attempt: u32, state: TaskState, node: Option<NodeId>) {
        self.update((task, attempt), |r| {
            if r.state.terminal() {
                return;
            }
            r.state = state;
            if node.is_some() {
                r.node_id = node;
            }
            r.events.push((state, crate::web::now_ms()));
        });
    }

    /// An attempt started on a worker of this node.
    pub fn running(&self, task: TaskId, attempt: u32, worker: WorkerId, pid: Option<u32>) {
        let node = self.node;
        self.update((task, attempt), |r| {
            r.state = TaskState::Running;
            r.node_id = Some(node);
            r.worker_id = Some(worker);
            r.worker_pid = pid;
            r.events.push((TaskState::Running, crate::web::now_ms()));
        });
    }

    /// An attempt ended, with its value or its error.
    pub fn ended(&self, task: TaskId, attempt: u32, result: Result<(), &Error>) {
        self.update((task, attempt), |r| end(r, result));
    }

    /// An actor's creation task ran on `node` (`pid`) or failed.
    pub fn actor_created(&self, actor: ActorId, node: NodeId, result: Result<u32, &Error>) {
        let Some(key) = self.inner.lock().creations.remove(&actor) else {
            return;
        };
        self.update(key, |r| {
            r.node_id = Some(node);
            if let Ok(pid) = result {
                r.worker_pid = Some(pid);
            }
            end(r, result.map(|_| ()));
        });
    }

    /// An actor method call started running here.
    pub fn call_started(&self, call: &ActorCall, job: Option<JobId>, pid: u32) {
        let key = (call.task_id, call.attempt);
        let mut r = Record::new(key, &call.name, Kind::ActorTask, TaskState::Running);
        r.job_id = job;
        r.actor_id = Some(call.actor_id);
        r.node_id = Some(self.node);
        r.worker_pid = Some(pid);
        self.insert(r);
    }

    /// Records kept, records evicted so far.
    pub fn counts(&self) -> (usize, u64) {
        let g = self.inner.lock();
        (g.rows.len(), g.dropped)
    }

    /// Every record as a Ray `TaskState` row (detail fields included), oldest first.
    pub fn rows(&self) -> Vec<Value> {
        let g = self.inner.lock();
        g.order
            .iter()
            .filter_map(|k| g.rows.get(k))
            .map(row)
            .collect()
    }
}

fn end(r: &mut Record, result: Result<(), &Error>) {
    if r.state.terminal() {
        return;
    }
    r.state = match result {
        Ok(()) => TaskState::Finished,
        Err(e) => {
            r.error = Some((error_type(e), e.to_string()));
            TaskState::Failed
        }
    };
    r.events.push((r.state, crate::web::now_ms()));
}

fn row(r: &Record) -> Value {
    let first = |s: TaskState| r.events.iter().find(|(e, _)| *e == s).map(|(_, t)| *t);
    let creation = r.events.first().map(|(_, t)| *t);
    let end = r.events.iter().find(|(e, _)| e.terminal()).map(|(_, t)| *t);
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|(s, t)| json!({"state": s.name(), "created_ms": t}))
        .collect();
    json!({
        "task_id": r.task_id.hex(),
        "attempt_number": r.attempt,
        "name": r.name,
        "state": r.state.name(),
        "job_id": r.job_id.map(|j| j.hex()),
        "actor_id": r.actor_id.map(|a| a.hex()),
        "type": r.kind.name(),
        "func_or_class_name": r.func,
        "parent_task_id": null,
        "node_id": r.node_id.map(|n| n.hex()),
        "worker_id": r.worker_id.map(|w| w.hex()),
        "worker_pid": r.worker_pid,
        "error_type": r.error.as_ref().map(|e| e.0),
        "language": "RUST",
        "required_resources": crate::cluster::state::resources(&r.resources),
        "runtime_env_info": null,
        "placement_group_id": r.pg,
        "events": events,
        "profiling_data": null,
        "creation_time_ms": creation,
        "start_time_ms": first(TaskState::Running),
        "end_time_ms": end,
        "task_log_info": null,
        "error_message": r.error.as_ref().map(|e| e.1.clone()),
        "is_debugger_paused": null,
        "call_site": null,
    })
}

/// The fields of a task row that only `detail=true` returns (Ray's `TaskState`).
pub const TASK_DETAIL: &[&str] = &[
    "language",
    "required_resources",
    "runtime_env_info",
    "placement_group_id",
    "events",
    "profiling_data",
    "creation_time_ms",
    "start_time_ms",
    "end_time_ms",
    "task_log_info",
    "error_message",
    "is_debugger_paused",
    "call_site",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(attempt: u32) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::new(),
            job_id: JobId::new(),
            function: "m::f".into(),
            name: "f".into(),
            args: vec![],
            nested: vec![],
            return_id: crate::ObjectId::new(),
            resources: ResourceSet::new(),
            strategy: SchedulingStrategy::Default,
            max_retries: 0,
            retry_exceptions: false,
            attempt,
        }
    }

    #[test]
    fn an_attempt_goes_through_its_states() {
        let log = TaskLog::new(NodeId::new(), 10);
        let s = spec(0);
        log.submitted(&s, true);
        log.state(s.task_id, 0, TaskState::PendingNodeAssignment, None);
        log.running(s.task_id, 0, WorkerId::new(), Some(7));
        let err = Error::Cancelled { task: "f".into() };
        log.ended(s.task_id, 0, Err(&err));
        // A late report does not undo the end.
        log.state(s.task_id, 0, TaskState::Running, None);
        let rows = log.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["state"], "FAILED");
        assert_eq!(rows[0]["error_type"], "TASK_CANCELLED");
        assert_eq!(rows[0]["worker_pid"], 7);
        assert_eq!(rows[0]["events"].as_array().map(Vec::len), Some(4));
        assert!(rows[0]["start_time_ms"].is_u64() && rows[0]["end_time_ms"].is_u64());
    }

    #[test]
    fn a_memory_kill_is_rays_out_of_memory() {
        let oom = Error::OutOfMemory {
            task: "f".into(),
            detail: "node memory used 9 of 10".into(),
        };
        assert_eq!(error_type(&oom), "OUT_OF_MEMORY");
        assert!(
            oom.to_string()
                .starts_with("task f was killed because the node is out of memory")
        );
    }

    #[test]
    fn the_table_stays_bounded_and_drops_the_oldest() {
        let log = TaskLog::new(NodeId::new(), 3);
        let specs: Vec<TaskSpec> = (0..5).map(|_| spec(0)).collect();
        for s in &specs {
            log.submitted(s, false);
        }
        assert_eq!(log.counts(), (3, 2));
        let ids: Vec<String> = log
            .rows()
            .iter()
            .map(|r| r["task_id"].as_str().unwrap_or_default().to_string())
            .collect();
        let want: Vec<String> = specs[2..].iter().map(|s| s.task_id.hex()).collect();
        assert_eq!(ids, want);
        // An update of an evicted attempt is ignored, not re-created.
        log.ended(specs[0].task_id, 0, Ok(()));
        assert_eq!(log.counts(), (3, 2));
    }

    #[test]
    fn actor_creation_is_a_task_of_its_own() {
        let node = NodeId::new();
        let log = TaskLog::new(node, 10);
        let spec = ActorSpec::for_test();
        log.actor_submitted(&spec);
        log.actor_created(spec.actor_id, node, Ok(42));
        let rows = log.rows();
        assert_eq!(rows[0]["type"], "ACTOR_CREATION_TASK");
        assert_eq!(rows[0]["state"], "FINISHED");
        assert_eq!(rows[0]["func_or_class_name"], "Counter.__init__");
        assert_eq!(rows[0]["actor_id"], spec.actor_id.hex());
    }
}
