//! The public error type of the user API: every way a remote call can fail, in one enum that
//! also crosses process boundaries (it is stored as the value of a failed task's object).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a remote call, `get`, `put` or actor operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The user function returned an error (`Err(e)` from a function returning `Result`).
    #[error("task {task} failed: {message}")]
    TaskFailed {
        /// Display name of the task.
        task: String,
        /// The error's `Display` text.
        message: String,
    },
    /// The user function panicked.
    #[error("task {task} panicked: {message}")]
    TaskPanicked {
        /// Display name of the task.
        task: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The actor is dead: killed, its process crashed, its constructor failed, or its
    /// restarts are exhausted.
    #[error("actor {actor} died: {reason}")]
    ActorDied {
        /// The actor's class and id.
        actor: String,
        /// Why it died.
        reason: String,
    },
    /// The object's value is gone and cannot be rebuilt.
    #[error("object {id} was lost: {reason}")]
    ObjectLost {
        /// The object id (hex).
        id: String,
        /// What happened to it.
        reason: String,
    },
    /// The worker process running the task died, and no retries were left.
    #[error("worker crashed while running task {task}: {detail}")]
    WorkerCrashed {
        /// Display name of the task.
        task: String,
        /// What is known about the crash (exit status or signal).
        detail: String,
    },
    /// The node's memory monitor killed the task's worker process (the node's memory, or
    /// its worker processes', passed the limit), and no retries were left.
    #[error("task {task} was killed because the node is out of memory: {detail}")]
    OutOfMemory {
        /// Display name of the task.
        task: String,
        /// The memory used and the limit it passed.
        detail: String,
    },
    /// The task was cancelled with `cancel`.
    #[error("task {task} was cancelled")]
    Cancelled {
        /// Display name of the task.
        task: String,
    },
    /// A `get` or `wait` ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No node of the cluster can ever satisfy the request.
    #[error(
        "infeasible: {what} asks for {asked} {resource}, but no node has more than {available}"
    )]
    Infeasible {
        /// The task, actor or placement group that asked.
        what: String,
        /// The resource that does not fit.
        resource: String,
        /// How much was asked.
        asked: f64,
        /// The most that any node of the cluster has.
        available: f64,
    },
    /// Storing the object would pass the object store's memory limit.
    #[error(
        "object store is full: an object of {needed} bytes does not fit ({used} of {limit} bytes in use)"
    )]
    StoreFull {
        /// Size of the object that did not fit.
        needed: u64,
        /// Bytes in use when it was refused.
        used: u64,
        /// The configured limit.
        limit: u64,
    },
    /// No actor of that name exists in that namespace.
    #[error("no actor named {name} in namespace {namespace}")]
    ActorNotFound {
        /// The name looked up.
        name: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// An actor with that name already exists in that namespace.
    #[error("an actor named {name} already exists in namespace {namespace}")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// A placement group could not be created or was removed.
    #[error("placement group {id}: {reason}")]
    PlacementGroup {
        /// The placement group's id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A value could not be encoded or decoded.
    #[error("serialization failed: {0}")]
    Serialization(String),
    /// No function or actor class with that id is linked into this binary.
    #[error("no remote function or actor class with id {0} is registered in this binary")]
    NotRegistered(String),
    /// `init()` was not called, or `shutdown()` already ran.
    #[error("the mobula runtime is not running: call mobula::init() first")]
    NotInitialized,
    /// `init()` was called while a runtime was already running.
    #[error("the mobula runtime is already running in this process")]
    AlreadyInitialized,
    /// The runtime itself failed (a system component is gone or misbehaved).
    #[error("runtime error: {0}")]
    Runtime(String),
}

impl Error {
    /// True for failures of the system (worker or node death) rather than of user code.
    pub fn is_system_failure(&self) -> bool {
        matches!(
            self,
            Error::WorkerCrashed { .. } | Error::ObjectLost { .. } | Error::OutOfMemory { .. }
        )
    }

    pub(crate) fn runtime(msg: impl std::fmt::Display) -> Self {
        Error::Runtime(msg.to_string())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
