//! Running user code: the worker interface the raylet drives, the thread workers of the
//! driver's process, worker processes (the user's binary re-executed in worker mode, talking to
//! the raylet over a Unix socket), and the execution of one task shared by both.

pub(crate) mod outbox;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod shm;
pub(crate) mod thread;

use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;

use bytes::Bytes;
use futures::FutureExt;

use crate::codec::Encoded;
use crate::error::Error;
use crate::ids::WorkerId;
use crate::registry::{self, ActorInstance, MethodOutcome, UserError};
use crate::spec::{ActorSpec, TaskSpec};

/// How a task ended, as a worker reports it to the raylet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum TaskOutcome {
    /// The return object was sealed with the value.
    Sealed,
    /// The task failed; `user` is true for errors and panics of user code (retried only with
    /// `retry_exceptions`).
    Failed { error: Error, user: bool },
}

/// Turns a user-code failure into the API error, naming the task.
pub(crate) fn user_error(name: &str, e: UserError) -> (Error, bool) {
    match e {
        UserError::Failed(message) => (
            Error::TaskFailed {
                task: name.to_string(),
                message,
            },
            true,
        ),
        UserError::Panicked(message) => (
            Error::TaskPanicked {
                task: name.to_string(),
                message,
            },
            true,
        ),
        UserError::BadArgs(message) | UserError::NoSuchMethod(message) => (
            Error::TaskFailed {
                task: name.to_string(),
                message,
            },
            false,
        ),
    }
}

/// Runs a remote function on resolved arguments, catching panics.
pub(crate) fn invoke_function(spec: &TaskSpec, args: Vec<Bytes>) -> Result<Encoded, (Error, bool)> {
    let Some(f) = registry::function(&spec.function) else {
        return Err((Error::NotRegistered(spec.function.clone()), false));
    };
    match catch_unwind(AssertUnwindSafe(|| (f.invoke)(args))) {
        Ok(Ok(enc)) => Ok(enc),
        Ok(Err(e)) => Err(user_error(&spec.name, e)),
        Err(p) => Err(user_error(
            &spec.name,
            UserError::Panicked(registry::panic_message(&*p)),
        )),
    }
}

/// Builds an actor instance with its constructor, catching panics.
pub(crate) fn construct_actor(
    spec: &ActorSpec,
    args: Vec<Bytes>,
) -> Result<Box<dyn ActorInstance>, Error> {
    let class = registry::actor_class(&spec.class)
        .ok_or_else(|| Error::NotRegistered(spec.class.clone()))?;
    let name = format!("{}::{}", spec.class_name, spec.ctor);
    match catch_unwind(AssertUnwindSafe(|| (class.construct)(&spec.ctor, args))) {
        Ok(Ok(i)) => Ok(i),
        Ok(Err(e)) => Err(user_error(&name, e).0),
        Err(p) => Err(user_error(&name, UserError::Panicked(registry::panic_message(&*p))).0),
    }
}

/// A method call that is still running (polled on the actor's event loop).
pub(crate) type RunningCall = Pin<Box<dyn Future<Output = Result<Encoded, UserError>>>>;

/// How starting a method call went.
pub(crate) enum CallStart {
    /// A sync method ran.
    Done(Result<Encoded, UserError>),
    /// An async method (or a method of an async actor) must be polled.
    Running(RunningCall),
}

/// Starts a method call; panics (now or while the future runs) become errors.
pub(crate) fn start_call(
    inst: &mut dyn ActorInstance,
    method: &str,
    args: Vec<Bytes>,
) -> CallStart {
    let panicked = |p: Box<dyn std::any::Any + Send>| -> Result<Encoded, UserError> {
        Err(UserError::Panicked(registry::panic_message(&*p)))
    };
    match catch_unwind(AssertUnwindSafe(|| inst.call(method, args))) {
        Err(p) => CallStart::Done(panicked(p)),
        Ok(MethodOutcome::Done(r)) => CallStart::Done(r),
        Ok(MethodOutcome::Pending(f)) => CallStart::Running(Box::pin(
            AssertUnwindSafe(f)
                .catch_unwind()
                .map(move |r| r.unwrap_or_else(panicked)),
        )),
    }
}

/// Runs a method call to completion on this thread.
pub(crate) fn call_blocking(
    inst: &mut dyn ActorInstance,
    method: &str,
    args: Vec<Bytes>,
) -> Result<Encoded, UserError> {
    match start_call(inst, method, args) {
        CallStart::Done(r) => r,
        CallStart::Running(f) => futures::executor::block_on(f),
    }
}

/// A single-threaded event loop for an async actor.
pub(crate) fn event_loop() -> std::io::Result<(tokio::runtime::Runtime, tokio::task::LocalSet)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((rt, tokio::task::LocalSet::new()))
}

/// What a thread knows about the worker it is (for `get` inside a task).
#[derive(Clone)]
pub(crate) struct WorkerCtx {
    pub worker_id: WorkerId,
    pub notify: flume::Sender<crate::actors::raylet::RayletMsg>,
}

thread_local! {
    static CTX: RefCell<Option<WorkerCtx>> = const { RefCell::new(None) };
    static GPU_IDS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn set_gpu_ids(ids: Vec<usize>) {
    GPU_IDS.with(|g| *g.borrow_mut() = ids);
}

/// The GPU instances assigned to the task running on this thread (empty outside a task or
/// when it asked for no GPU), as Ray's `ray.get_gpu_ids()`.
pub fn gpu_ids() -> Vec<usize> {
    GPU_IDS.with(|g| g.borrow().clone())
}

pub(crate) fn set_ctx(ctx: Option<WorkerCtx>) {
    CTX.with(|c| *c.borrow_mut() = ctx);
}

pub(crate) fn ctx() -> Option<WorkerCtx> {
    CTX.with(|c| c.borrow().clone())
}
