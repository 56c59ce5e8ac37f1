//! Running user code: the worker interface the raylet drives, the thread workers of the
//! driver's process, worker processes (the user's binary re-executed in worker mode, talking to
//! the raylet over a Unix socket), and the execution of one task shared by both.

pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod thread;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;

use crate::codec::Encoded;
use crate::error::Error;
use crate::ids::WorkerId;
use crate::registry::{self, UserError};
use crate::spec::TaskSpec;

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

/// What a thread knows about the worker it is (for `get` inside a task).
#[derive(Clone)]
pub(crate) struct WorkerCtx {
    pub worker_id: WorkerId,
    pub notify: flume::Sender<crate::actors::raylet::RayletMsg>,
}

thread_local! {
    static CTX: RefCell<Option<WorkerCtx>> = const { RefCell::new(None) };
}

pub(crate) fn set_ctx(ctx: Option<WorkerCtx>) {
    CTX.with(|c| *c.borrow_mut() = ctx);
}

pub(crate) fn ctx() -> Option<WorkerCtx> {
    CTX.with(|c| c.borrow().clone())
}
