//! The client side of the runtime: the operations a driver or a worker performs against its
//! node, behind one trait so the user API is the same whether the caller runs inside the node's
//! process (the embedded local cluster, thread workers) or in a worker process that reaches its
//! raylet over a Unix socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::codec::Encoded;
use crate::error::Result;
use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId};
use crate::sched::{PlacementStrategy, ResourceSet};
use crate::spec::{ActorCall, ActorSpec, TaskSpec};
use crate::store::Object;

/// What the GCS knows of a named actor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ActorLookup {
    /// The actor's id.
    pub actor_id: ActorId,
    /// Registry id of its class.
    pub class: String,
}

/// Operations of a runtime client.
pub(crate) trait Core: Send + Sync + 'static {
    fn job_id(&self) -> JobId;
    fn node_id(&self) -> NodeId;

    fn incref(&self, id: ObjectId);
    fn decref(&self, id: ObjectId);

    /// Stores a value; the new object holds one reference, owned by the caller.
    fn put(&self, value: Encoded) -> Result<ObjectId>;
    /// Stores an already-encoded error as an object (one reference, owned by the caller).
    fn put_error(&self, err: &crate::Error) -> ObjectId;
    /// Blocks until every object is sealed (or the timeout passes).
    fn get_objects(&self, ids: &[ObjectId], timeout: Option<Duration>) -> Result<Vec<Object>>;
    /// Resolves when the object is sealed.
    fn get_object_async(&self, id: ObjectId) -> BoxFuture<'static, Result<Object>>;
    /// Which objects are sealed, waiting until `num` are or the timeout passes.
    fn wait(&self, ids: &[ObjectId], num: usize, timeout: Option<Duration>) -> Result<Vec<bool>>;

    /// Submits a task. Its return object exists (pending, one reference owned by the caller)
    /// when this returns.
    fn submit_task(&self, spec: TaskSpec) -> Result<()>;
    /// Cancels the task that produces `return_id`.
    fn cancel(&self, return_id: ObjectId, force: bool) -> Result<()>;

    fn create_actor(&self, spec: ActorSpec) -> Result<()>;
    /// Submits a call. Its return object exists when this returns.
    fn submit_actor_call(&self, call: ActorCall) -> Result<()>;
    /// Whether `n` calls to `actor` would be taken by `submit_actor_call` without waiting for
    /// room in the actor's queue (`false`: they may wait).
    fn takes_calls_now(&self, _actor: &ActorId, _n: usize) -> bool {
        false
    }
    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<()>;
    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<ActorLookup>;

    fn create_placement_group(
        &self,
        id: PlacementGroupId,
        name: Option<String>,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
    ) -> Result<()>;
    fn wait_placement_group(&self, id: PlacementGroupId, timeout: Option<Duration>)
    -> Result<bool>;
    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<()>;

    fn kv_put(&self, ns: &str, key: &str, value: Vec<u8>, overwrite: bool) -> Result<bool>;
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;
    fn kv_del(&self, ns: &str, key: &str) -> Result<bool>;

    fn cluster_resources(&self) -> Result<HashMap<String, f64>>;
    /// The node embedded in this process, if there is one (its object table, raylet, GCS and
    /// worker socket).
    fn node(&self) -> Option<&crate::node::NodeClient> {
        None
    }
    /// Counters of this node's object store.
    fn store_stats(&self) -> Result<crate::store::StoreStats>;
    fn available_resources(&self) -> Result<HashMap<String, f64>>;

    /// Stops the runtime (for the embedded cluster) or disconnects (for a worker).
    fn shutdown(&self);
}

pub(crate) type CoreRef = Arc<dyn Core>;
