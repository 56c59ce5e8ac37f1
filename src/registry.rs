//! The link-time registry of remote functions and actor classes.
//!
//! `#[mobula::remote]` and `#[mobula::actor]` add one entry each to a `linkme` distributed
//! slice. The entry's id is the item's full module path, so every process running the same
//! binary finds the same code under the same id and can invoke it on MessagePack bytes without
//! knowing its types.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use bytes::Bytes;
use linkme::distributed_slice;

use crate::codec::Encoded;

/// Why user code did not produce a value.
#[derive(Debug, Clone, PartialEq)]
pub enum UserError {
    /// The function returned `Err(e)`; the text is `e.to_string()`.
    Failed(String),
    /// The function panicked; the text is the panic message.
    Panicked(String),
    /// The arguments did not decode into the parameter types.
    BadArgs(String),
    /// The actor class has no method (or constructor) of that name.
    NoSuchMethod(String),
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::Failed(m) => write!(f, "{m}"),
            UserError::Panicked(m) => write!(f, "panicked: {m}"),
            UserError::BadArgs(m) => write!(f, "bad arguments: {m}"),
            UserError::NoSuchMethod(m) => write!(f, "no such method: {m}"),
        }
    }
}

/// The invoker of a remote function: decoded-argument bytes in, encoded return value out.
pub type InvokeFn = fn(Vec<Bytes>) -> Result<Encoded, UserError>;

/// One remote function.
#[derive(Debug)]
pub struct RemoteFunction {
    /// Stable id: the function's module path and name.
    pub id: &'static str,
    /// The short name, shown in errors and the dashboard.
    pub name: &'static str,
    /// Runs the function.
    pub invoke: InvokeFn,
}

/// A method call still running (an `async fn` method).
pub type LocalFuture = Pin<Box<dyn Future<Output = Result<Encoded, UserError>>>>;

/// What calling an actor method gives back.
pub enum MethodOutcome {
    /// A synchronous method ran to completion.
    Done(Result<Encoded, UserError>),
    /// An `async fn` method (or any method of an async actor): poll it on the actor's thread.
    Pending(LocalFuture),
}

/// A live actor instance, type-erased. Lives on one thread for its whole life.
pub trait ActorInstance {
    /// Calls `method` with encoded arguments.
    fn call(&mut self, method: &str, args: Vec<Bytes>) -> MethodOutcome;
}

/// Builds an actor instance with the named constructor.
pub type ConstructFn = fn(&str, Vec<Bytes>) -> Result<Box<dyn ActorInstance>, UserError>;

/// One actor class.
#[derive(Debug)]
pub struct ActorClass {
    /// Stable id: the type's module path and name.
    pub id: &'static str,
    /// The type's short name.
    pub name: &'static str,
    /// True when any method is `async fn`: the actor runs on an event loop and calls may
    /// interleave (up to `max_concurrency`).
    pub is_async: bool,
    /// Builds an instance.
    pub construct: ConstructFn,
}

/// All remote functions linked into this binary.
#[distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// All actor classes linked into this binary.
#[distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

fn functions() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static MAP: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    MAP.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|f| (f.id, f)).collect())
}

fn classes() -> &'static HashMap<&'static str, &'static ActorClass> {
    static MAP: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    MAP.get_or_init(|| ACTOR_CLASSES.iter().map(|c| (c.id, c)).collect())
}

/// Looks up a remote function by id.
pub fn function(id: &str) -> Option<&'static RemoteFunction> {
    functions().get(id).copied()
}

/// Looks up an actor class by id.
pub fn actor_class(id: &str) -> Option<&'static ActorClass> {
    classes().get(id).copied()
}

/// Ids of every registered function and class (what a driver registers with the GCS).
pub fn all_ids() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = REMOTE_FUNCTIONS.iter().map(|f| f.id).collect();
    v.extend(ACTOR_CLASSES.iter().map(|c| c.id));
    v.sort_unstable();
    v
}

/// Extracts a readable message from a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
