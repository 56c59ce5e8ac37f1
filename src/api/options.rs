//! Per-call options of tasks and actors (resources, retries, scheduling, names), with Ray's
//! defaults.

use std::collections::HashMap;

use crate::api::PlacementGroup;
use crate::sched::{ResourceSet, SchedulingStrategy};

/// Options of one task submission. `Default` is Ray's: 1 CPU, 3 retries on system failure,
/// user errors not retried, the DEFAULT strategy.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub(crate) num_cpus: f64,
    pub(crate) num_gpus: f64,
    pub(crate) memory: f64,
    pub(crate) resources: HashMap<String, f64>,
    pub(crate) max_retries: i32,
    pub(crate) retry_exceptions: bool,
    pub(crate) strategy: SchedulingStrategy,
    pub(crate) name: Option<String>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            num_cpus: 1.0,
            num_gpus: 0.0,
            memory: 0.0,
            resources: HashMap::new(),
            max_retries: 3,
            retry_exceptions: false,
            strategy: SchedulingStrategy::Default,
            name: None,
        }
    }
}

impl TaskOptions {
    /// Ray's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// CPUs held while the task runs (fractions allowed; 0 is allowed).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }
    /// GPUs held while the task runs.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    /// Memory (bytes) reserved for admission control.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes as f64;
        self
    }
    /// A custom resource amount.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.insert(name.into(), amount);
        self
    }
    /// Retries after a system failure (worker or node death); -1 retries forever.
    pub fn max_retries(mut self, n: i32) -> Self {
        self.max_retries = n;
        self
    }
    /// Also retry when the function returns an error or panics.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes;
        self
    }
    /// Where the task may run.
    pub fn scheduling_strategy(mut self, s: SchedulingStrategy) -> Self {
        self.strategy = s;
        self
    }
    /// Runs the task in a bundle of a placement group (`None`: any bundle).
    pub fn placement_group(mut self, pg: &PlacementGroup, bundle_index: Option<usize>) -> Self {
        self.strategy = SchedulingStrategy::PlacementGroup {
            pg: pg.id(),
            bundle_index,
            capture_child_tasks: false,
        };
        self
    }
    /// The name shown in errors and the dashboard.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn resource_set(&self) -> ResourceSet {
        build_resources(self.num_cpus, self.num_gpus, self.memory, &self.resources)
    }
}

fn build_resources(
    cpus: f64,
    gpus: f64,
    memory: f64,
    custom: &HashMap<String, f64>,
) -> ResourceSet {
    let mut r = ResourceSet::new()
        .with(crate::sched::CPU, cpus)
        .with(crate::sched::GPU, gpus)
        .with(crate::sched::MEMORY, memory);
    for (k, v) in custom {
        r = r.with(k, *v);
    }
    r
}

/// Options of one actor creation. `Default` is Ray's: 1 CPU to place the actor and none held
/// while it lives, no name, no restarts, no call retries.
#[derive(Debug, Clone)]
pub struct ActorOptions {
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) detached: bool,
    pub(crate) max_restarts: i32,
    pub(crate) max_task_retries: i32,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) num_cpus: Option<f64>,
    pub(crate) num_gpus: f64,
    pub(crate) memory: f64,
    pub(crate) resources: HashMap<String, f64>,
    pub(crate) strategy: SchedulingStrategy,
    pub(crate) get_if_exists: bool,
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self {
            name: None,
            namespace: None,
            detached: false,
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: None,
            num_cpus: None,
            num_gpus: 0.0,
            memory: 0.0,
            resources: HashMap::new(),
            strategy: SchedulingStrategy::Default,
            get_if_exists: false,
        }
    }
}

impl ActorOptions {
    /// Ray's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers the actor under a name, for `get_actor`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The namespace of the name (default: the job's namespace).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    /// A detached actor outlives the job that created it.
    pub fn detached(mut self, yes: bool) -> Self {
        self.detached = yes;
        self
    }
    /// Restarts allowed after the actor dies; -1 restarts forever.
    pub fn max_restarts(mut self, n: i32) -> Self {
        self.max_restarts = n;
        self
    }
    /// Times a call interrupted by the actor's death is retried; -1 forever.
    pub fn max_task_retries(mut self, n: i32) -> Self {
        self.max_task_retries = n;
        self
    }
    /// Calls that may run at once (default 1; 1000 for async actors).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }
    /// CPUs held while the actor lives.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// GPUs held while the actor lives.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    /// Memory (bytes) reserved for admission control.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes as f64;
        self
    }
    /// A custom resource amount held while the actor lives.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.insert(name.into(), amount);
        self
    }
    /// Where the actor may run.
    pub fn scheduling_strategy(mut self, s: SchedulingStrategy) -> Self {
        self.strategy = s;
        self
    }
    /// Places the actor in a bundle of a placement group (`None`: any bundle).
    pub fn placement_group(mut self, pg: &PlacementGroup, bundle_index: Option<usize>) -> Self {
        self.strategy = SchedulingStrategy::PlacementGroup {
            pg: pg.id(),
            bundle_index,
            capture_child_tasks: false,
        };
        self
    }
    /// With a name: return the existing actor of that name instead of failing.
    pub fn get_if_exists(mut self, yes: bool) -> Self {
        self.get_if_exists = yes;
        self
    }

    /// (held while alive, needed to place)
    pub(crate) fn resource_sets(&self) -> (ResourceSet, ResourceSet) {
        let held = build_resources(
            self.num_cpus.unwrap_or(0.0),
            self.num_gpus,
            self.memory,
            &self.resources,
        );
        let place = if self.num_cpus.is_none() && held.is_empty() {
            ResourceSet::new().with(crate::sched::CPU, 1.0)
        } else {
            held.clone()
        };
        (held, place)
    }
}
