//! The runtime's actix actors: the GCS (control store), the raylet (scheduler and worker pool),
//! the actor hosts (one per user actor) and the worker-process connections, plus the actor
//! directory that routes calls straight to actor hosts.

pub(crate) mod actor_host;
pub(crate) mod directory;
pub mod gcs;
pub mod history;
pub mod memory_monitor;
pub mod metrics;
pub(crate) mod raylet;
pub(crate) mod worker_conn;
