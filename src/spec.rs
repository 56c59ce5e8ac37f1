//! Wire-level descriptions of work: a task submission, an actor creation and an actor method
//! call. These are what the client hands to the raylet and what a worker process receives.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId};
use crate::sched::{ResourceSet, SchedulingStrategy};

/// One argument of a call: an inline value, or a reference resolved before the call runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskArg {
    /// An encoded value.
    Value(Bytes),
    /// The value of this object, fetched when it exists.
    Ref(ObjectId),
}

/// Dependencies of a call: top-level references and references nested in inline values.
pub fn deps_of<'a>(
    args: &'a [TaskArg],
    nested: &'a [ObjectId],
) -> impl Iterator<Item = ObjectId> + 'a {
    args.iter()
        .filter_map(|a| match a {
            TaskArg::Ref(id) => Some(*id),
            TaskArg::Value(_) => None,
        })
        .chain(nested.iter().copied())
}

/// A submitted task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's id (kept across retries).
    pub task_id: TaskId,
    /// The job that submitted it.
    pub job_id: JobId,
    /// Registry id of the function.
    pub function: String,
    /// Display name.
    pub name: String,
    /// Arguments.
    pub args: Vec<TaskArg>,
    /// References nested inside inline arguments.
    pub nested: Vec<ObjectId>,
    /// Where the return value goes.
    pub return_id: ObjectId,
    /// Resources held while it runs.
    pub resources: ResourceSet,
    /// Where it may run.
    pub strategy: SchedulingStrategy,
    /// Retries on system failure (-1: forever).
    pub max_retries: i32,
    /// Whether user errors and panics are retried too.
    pub retry_exceptions: bool,
    /// Which attempt this is (0 first).
    pub attempt: u32,
}

impl TaskSpec {
    /// Every object this task waits for.
    pub fn deps(&self) -> impl Iterator<Item = ObjectId> + '_ {
        deps_of(&self.args, &self.nested)
    }

    /// True when another attempt is allowed after `attempt` failed.
    pub fn can_retry(&self) -> bool {
        self.max_retries < 0 || (self.attempt as i64) < self.max_retries as i64
    }
}

/// An actor to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorSpec {
    /// The actor's id.
    pub actor_id: ActorId,
    /// The creating job.
    pub job_id: JobId,
    /// Registry id of the class.
    pub class: String,
    /// The class's short name.
    pub class_name: String,
    /// Constructor name (`new` unless another was used).
    pub ctor: String,
    /// Constructor arguments.
    pub args: Vec<TaskArg>,
    /// References nested inside inline constructor arguments.
    pub nested: Vec<ObjectId>,
    /// Name for `get_actor`, if any.
    pub name: Option<String>,
    /// Namespace of the name.
    pub namespace: String,
    /// Detached actors outlive their job.
    pub detached: bool,
    /// Restarts allowed after the actor dies (-1: forever).
    pub max_restarts: i32,
    /// Times a call interrupted by the actor's death is retried (-1: forever).
    pub max_task_retries: i32,
    /// Calls that may run at once (async actors).
    pub max_concurrency: usize,
    /// Resources held while the actor lives.
    pub resources: ResourceSet,
    /// Resources needed to place the actor (held only while it is being created).
    pub placement_resources: ResourceSet,
    /// Where it may run.
    pub strategy: SchedulingStrategy,
    /// Whether the class runs on an event loop.
    pub is_async: bool,
    /// Set by the node that hosts an actor another node owns: the owner's GCS keeps the
    /// record users see (this node's copy drives the local host and its restarts).
    #[serde(default)]
    pub owned_elsewhere: bool,
    /// The node whose GCS owns the actor, set when it places the actor on another node: the
    /// host kills a non-detached actor whose owner node died.
    #[serde(default)]
    pub owner: Option<NodeId>,
    /// On a host: the name its owner gave it (the owner's to resolve), which the host takes
    /// over with the actor if the owner dies and the actor is detached.
    #[serde(default)]
    pub hosted_name: Option<String>,
}

impl ActorSpec {
    /// A spec of a `Counter` actor in namespace `ns`, with the defaults, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        ActorSpec {
            actor_id: ActorId::new(),
            job_id: JobId::new(),
            class: "m::Counter".into(),
            class_name: "Counter".into(),
            ctor: "new".into(),
            args: vec![],
            nested: vec![],
            name: None,
            namespace: "ns".into(),
            detached: false,
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: 1,
            resources: ResourceSet::new(),
            placement_resources: ResourceSet::new(),
            strategy: SchedulingStrategy::Default,
            is_async: false,
            owned_elsewhere: false,
            owner: None,
            hosted_name: None,
        }
    }

    /// Every object the constructor waits for.
    pub fn deps(&self) -> impl Iterator<Item = ObjectId> + '_ {
        deps_of(&self.args, &self.nested)
    }

    /// Display name: the class name and the id's tail.
    pub fn display(&self) -> String {
        format!("{}({})", self.class_name, &self.actor_id.hex()[24..])
    }
}

/// One method call on an actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorCall {
    /// The call's id.
    pub task_id: TaskId,
    /// The target actor.
    pub actor_id: ActorId,
    /// Method name.
    pub method: String,
    /// Display name (`Class.method`).
    pub name: String,
    /// Arguments.
    pub args: Vec<TaskArg>,
    /// References nested inside inline arguments.
    pub nested: Vec<ObjectId>,
    /// Where the return value goes.
    pub return_id: ObjectId,
    /// Which attempt this is (0 first).
    pub attempt: u32,
}

impl ActorCall {
    /// Every object this call waits for.
    pub fn deps(&self) -> impl Iterator<Item = ObjectId> + '_ {
        deps_of(&self.args, &self.nested)
    }
}
