//! mobula: a Ray-style distributed computing framework for Rust.
//!
//! Mark functions with [`remote`] and actor types with [`actor`]; start a runtime with
//! [`init`]; call them with `f::remote(&rt, args)` / `Type::remote(&rt, args)` and get typed
//! [`ObjectRef`]s back. See the README for a tour and ARCHITECTURE.md for how it works.
//!
//! ```no_run
//! #[mobula::remote]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let rt = mobula::init().expect("runtime");
//! let refs: Vec<_> = (0..4).map(|i| square::remote(&rt, i)).collect();
//! assert_eq!(rt.get_all(&refs).expect("results"), vec![0, 1, 4, 9]);
//! mobula::shutdown();
//! ```

#![warn(missing_docs, rust_2018_idioms)]
#![deny(unused_must_use)]

pub mod actors;
mod api;
pub mod bench;
pub mod codec;
mod core;
pub mod error;
pub mod ids;
mod node;
pub mod registry;
pub mod sched;
pub mod spec;
pub mod store;
pub(crate) mod worker;

pub use api::{
    ActorHandle, ActorOptions, ActorType, Arg, Config, IntoArg, ObjectRef, PlacementGroup,
    RawActorHandle, RawArg, RawRef, Runtime, TaskOptions, WorkerMode, get, init, init_with,
    is_initialized, put, runtime, shutdown,
};
pub use error::{Error, Result};
pub use ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
pub use mobula_macros::{actor, main, remote};
pub use sched::{PlacementStrategy, ResourceSet, SchedulingStrategy};

/// In a worker process, serves the raylet and exits; in any other process returns at once.
/// `#[mobula::main]` calls this before the body of `main`; `init()` calls it too.
pub fn worker_entry() {
    worker::process::enter_if_worker();
}

#[doc(hidden)]
pub use api::__private;
