//! The user API: `init`, the [`Runtime`] handle with `put` / `get` / `wait` / `cancel` / `kill`
//! / `get_actor` / placement groups, and the helpers that `#[mobula::remote]` and
//! `#[mobula::actor]` expand to.

mod actor;
pub(crate) mod config;
mod object_ref;
mod options;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use actor::{ActorHandle, ActorType, RawActorHandle};
pub use config::{Config, WorkerMode};
pub use object_ref::{Arg, IntoArg, ObjectRef, RawArg, RawRef};
pub use options::{ActorOptions, TaskOptions};

use crate::codec;
use crate::core::CoreRef;
use crate::error::{Error, Result};
use crate::ids::{ActorId, ObjectId, PlacementGroupId, TaskId};
use crate::sched::{PlacementStrategy, ResourceSet};
use crate::spec::{ActorCall, ActorSpec, TaskArg, TaskSpec};
use object_ref::decode_object;

static GLOBAL: RwLock<Option<Runtime>> = RwLock::new(None);

/// What `wait` gives back: (ready, not ready).
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// A handle to the running runtime: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Runtime {
    core: CoreRef,
    namespace: Arc<str>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("job", &self.core.job_id())
            .field("node", &self.core.node_id())
            .finish()
    }
}

/// Starts an embedded local cluster in this process, sized by the machine (or by the
/// `MOBULA_*` environment variables), like `ray.init()`.
///
/// When this process was started by mobula as a worker process, this call does not return:
/// it serves tasks until the raylet tells it to exit.
pub fn init() -> Result<Runtime> {
    init_with(Config::from_env())
}

/// Starts the runtime with an explicit configuration.
pub fn init_with(config: Config) -> Result<Runtime> {
    crate::worker::process::enter_if_worker();
    if let Ok(filter) = std::env::var("MOBULA_LOG") {
        crate::log_to_stderr(tracing_subscriber::EnvFilter::new(filter));
    }
    let mut g = GLOBAL.write();
    if g.is_some() {
        return Err(Error::AlreadyInitialized);
    }
    let namespace: Arc<str> = config.namespace.clone().into();
    let core = match &config.address {
        Some(address) => {
            let socket = crate::cluster::driver_socket(&config.cluster_root, address)
                .map_err(|e| Error::runtime(e.to_string()))?;
            crate::worker::process::connect_driver(&socket, &config.namespace)?
        }
        None => crate::node::start_embedded(config)?,
    };
    let rt = Runtime { core, namespace };
    *g = Some(rt.clone());
    Ok(rt)
}

/// Installs a runtime built by a worker process.
pub(crate) fn install(core: CoreRef, namespace: &str) -> Runtime {
    let rt = Runtime {
        core,
        namespace: namespace.into(),
    };
    *GLOBAL.write() = Some(rt.clone());
    rt
}

/// The runtime of this process (inside a task or actor: the one it runs under).
pub fn runtime() -> Result<Runtime> {
    GLOBAL.read().clone().ok_or(Error::NotInitialized)
}

/// True while a runtime is running in this process.
pub fn is_initialized() -> bool {
    GLOBAL.read().is_some()
}

pub(crate) fn current_core() -> Option<CoreRef> {
    GLOBAL.read().as_ref().map(|r| r.core.clone())
}

/// Stops the runtime of this process. A later `init()` starts a new one.
pub fn shutdown() {
    let rt = GLOBAL.write().take();
    if let Some(rt) = rt {
        rt.core.shutdown();
    }
}

impl Runtime {
    /// The namespace of this job (for named actors).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The job's id.
    pub fn job_id(&self) -> crate::ids::JobId {
        self.core.job_id()
    }

    /// The id of the node this process belongs to.
    pub fn node_id(&self) -> crate::ids::NodeId {
        self.core.node_id()
    }

    /// Stores a value in the object store.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        let enc = codec::encode(value)?;
        let id = self.core.put(enc)?;
        Ok(ObjectRef::from_raw(RawRef::adopt(id, &self.core)))
    }

    /// Blocks until the value exists and returns it.
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T> {
        self.get_timeout(r, None)
    }

    /// As [`Runtime::get`], failing with [`Error::Timeout`] after `timeout`.
    pub fn get_timeout<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let objs = self.core.get_objects(&[r.id()], timeout)?;
        match objs.first() {
            Some(o) => decode_object(o),
            None => Err(Error::runtime("get returned no object")),
        }
    }

    /// Gets every value, in order; the first error wins.
    pub fn get_all<T: DeserializeOwned>(&self, refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
        let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
        let objs = self.core.get_objects(&ids, None)?;
        objs.iter().map(decode_object).collect()
    }

    /// Waits for the value without blocking the thread.
    pub async fn get_async<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T> {
        let o = self.core.get_object_async(r.id()).await?;
        decode_object(&o)
    }

    /// Splits `refs` into the first `num_returns` that are ready (in input order) and the
    /// rest, waiting at most `timeout` (forever when `None`) for that many to be ready.
    pub fn wait<T>(
        &self,
        refs: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<WaitResult<T>> {
        let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
        let num = num_returns.min(ids.len());
        let ready = self.core.wait(&ids, num, timeout)?;
        let mut done = Vec::new();
        let mut rest = Vec::new();
        for (r, ok) in refs.iter().zip(ready) {
            if ok && done.len() < num {
                done.push(r.clone());
            } else {
                rest.push(r.clone());
            }
        }
        Ok((done, rest))
    }

    /// Cancels the task producing `r`: a queued task never runs; a running one's result is
    /// replaced by [`Error::Cancelled`]. `get` then fails with that error.
    pub fn cancel<T>(&self, r: &ObjectRef<T>) -> Result<()> {
        self.core.cancel(r.id(), false)
    }

    /// As [`Runtime::cancel`], and kills the worker process running the task (process
    /// workers); the task is not retried.
    pub fn cancel_force<T>(&self, r: &ObjectRef<T>) -> Result<()> {
        self.core.cancel(r.id(), true)
    }

    /// Kills an actor for good: no restart; its pending and later calls fail with
    /// [`Error::ActorDied`].
    pub fn kill<A: ActorType>(&self, h: &ActorHandle<A>) -> Result<()> {
        self.core.kill_actor(h.raw().actor_id(), true)
    }

    /// Kills an actor's current incarnation; it restarts if `max_restarts` allows.
    pub fn kill_restartable<A: ActorType>(&self, h: &ActorHandle<A>) -> Result<()> {
        self.core.kill_actor(h.raw().actor_id(), false)
    }

    /// Looks up a named actor (in this job's namespace when `namespace` is `None`).
    pub fn get_actor<A: ActorType>(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<ActorHandle<A>> {
        let ns = namespace.unwrap_or(&self.namespace);
        let found = self.core.get_named_actor(name, ns)?;
        if found.class != A::CLASS_ID {
            return Err(Error::runtime(format!(
                "actor {name} is a {}, not a {}",
                found.class,
                A::CLASS_ID
            )));
        }
        Ok(ActorHandle::from_raw(RawActorHandle::new(
            found.actor_id,
            A::CLASS_ID,
            self.core.clone(),
        )))
    }

    /// Reserves a placement group: every bundle or none (gang reservation). Wait for it with
    /// [`PlacementGroup::wait`].
    pub fn placement_group(
        &self,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
    ) -> Result<PlacementGroup> {
        self.placement_group_named(bundles, strategy, None)
    }

    /// As [`Runtime::placement_group`], with a name for the dashboard.
    pub fn placement_group_named(
        &self,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
        name: Option<String>,
    ) -> Result<PlacementGroup> {
        let id = PlacementGroupId::new();
        self.core
            .create_placement_group(id, name, bundles.clone(), strategy)?;
        Ok(PlacementGroup {
            id,
            bundles,
            strategy,
            core: self.core.clone(),
        })
    }

    /// Removes a placement group and returns its resources.
    pub fn remove_placement_group(&self, pg: &PlacementGroup) -> Result<()> {
        self.core.remove_placement_group(pg.id)
    }

    /// Total resources of the cluster.
    pub fn cluster_resources(&self) -> Result<HashMap<String, f64>> {
        self.core.cluster_resources()
    }

    /// This node's own (total, available) resources.
    pub(crate) fn node_resources(&self) -> Result<(HashMap<String, f64>, HashMap<String, f64>)> {
        let r = self
            .raylet()
            .ok_or_else(|| Error::runtime("no node in this process"))?;
        let n = crate::node::mailbox(futures::executor::block_on(
            r.send(crate::actors::raylet::GetResources),
        ))?;
        Ok((
            n.total.positive_part().to_f64_map(),
            n.available.positive_part().to_f64_map(),
        ))
    }

    pub(crate) fn core(&self) -> &CoreRef {
        &self.core
    }

    pub(crate) fn raylet(&self) -> Option<actix::Addr<crate::actors::raylet::Raylet>> {
        self.core.node().map(|n| n.raylet.clone())
    }

    /// The Unix socket where this process's node accepts workers and drivers (process mode).
    pub fn raylet_socket(&self) -> Option<std::path::PathBuf> {
        self.core.node().and_then(|n| n.socket.clone())
    }

    /// Counters of this node's object store (objects, bytes used, the limit).
    pub fn object_store_stats(&self) -> Result<crate::store::StoreStats> {
        self.core.store_stats()
    }

    /// Resources free right now.
    pub fn available_resources(&self) -> Result<HashMap<String, f64>> {
        self.core.available_resources()
    }

    /// Stores a value in the GCS key-value store; with `overwrite == false` an existing key
    /// is kept. Returns whether the value was written.
    pub fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        overwrite: bool,
    ) -> Result<bool> {
        self.core.kv_put(namespace, key, value.to_vec(), overwrite)
    }

    /// Reads a value from the GCS key-value store.
    pub fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.core.kv_get(namespace, key)
    }

    /// Deletes a key from the GCS key-value store; returns whether it existed.
    pub fn kv_del(&self, namespace: &str, key: &str) -> Result<bool> {
        self.core.kv_del(namespace, key)
    }
}

/// Gets a value with the process's runtime (`ray.get`).
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T> {
    runtime()?.get(r)
}

/// Stores a value with the process's runtime (`ray.put`).
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>> {
    runtime()?.put(value)
}

/// A reserved (or pending) placement group.
#[derive(Clone)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: Vec<ResourceSet>,
    strategy: PlacementStrategy,
    core: CoreRef,
}

impl std::fmt::Debug for PlacementGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementGroup")
            .field("id", &self.id)
            .field("strategy", &self.strategy)
            .field("bundles", &self.bundles.len())
            .finish()
    }
}

impl PlacementGroup {
    /// The group's id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }
    /// The bundles asked for.
    pub fn bundles(&self) -> &[ResourceSet] {
        &self.bundles
    }
    /// The strategy asked for.
    pub fn strategy(&self) -> PlacementStrategy {
        self.strategy
    }
    /// Waits until every bundle is reserved. `Ok(false)` on timeout; an error when the group
    /// can never be placed or was removed.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        self.core.wait_placement_group(self.id, timeout)
    }
}

/// Helpers called by the code `#[mobula::remote]` and `#[mobula::actor]` generate.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use crate::api::actor::ActorType;
    pub use crate::codec::{Encoded, decode, encode};
    pub use crate::registry::{
        ACTOR_CLASSES, ActorClass, ActorInstance, MethodOutcome, REMOTE_FUNCTIONS, RemoteFunction,
        UserError,
    };
    pub use bytes::Bytes;
    pub use linkme;
    pub use tokio::sync::RwLock;

    fn lower_args(args: Vec<RawArg>) -> Result<(Vec<TaskArg>, Vec<ObjectId>, Vec<RawRef>)> {
        let mut out = Vec::with_capacity(args.len());
        let mut nested = Vec::new();
        let mut keep = Vec::new();
        for a in args {
            match a {
                RawArg::Value(v) => {
                    let v = v?;
                    nested.extend(v.nested);
                    keep.extend(v.pins);
                    out.push(TaskArg::Value(v.data));
                }
                RawArg::Ref(r) => {
                    out.push(TaskArg::Ref(r.id()));
                    keep.push(r);
                }
            }
        }
        Ok((out, nested, keep))
    }

    fn failed<R>(core: &CoreRef, e: Error) -> ObjectRef<R> {
        ObjectRef::from_raw(RawRef::adopt(core.put_error(&e), core))
    }

    /// Submits a task.
    pub fn submit_task<R>(
        rt: &Runtime,
        function: &'static str,
        fname: &'static str,
        opts: &TaskOptions,
        args: Vec<RawArg>,
    ) -> ObjectRef<R> {
        let core = &rt.core;
        let (args, nested, _keep) = match lower_args(args) {
            Ok(x) => x,
            Err(e) => return failed(core, e),
        };
        let return_id = ObjectId::new();
        let spec = TaskSpec {
            task_id: TaskId::new(),
            job_id: core.job_id(),
            function: function.to_string(),
            name: opts.name.clone().unwrap_or_else(|| fname.to_string()),
            args,
            nested,
            return_id,
            resources: opts.resource_set(),
            strategy: opts.strategy.clone(),
            max_retries: opts.max_retries,
            retry_exceptions: opts.retry_exceptions,
            attempt: 0,
        };
        match core.submit_task(spec) {
            Ok(()) => ObjectRef::from_raw(RawRef::adopt(return_id, core)),
            Err(e) => failed(core, e),
        }
    }

    /// Creates an actor.
    pub fn create_actor<A: ActorType>(
        rt: &Runtime,
        opts: &ActorOptions,
        ctor: &'static str,
        args: Vec<RawArg>,
    ) -> Result<ActorHandle<A>> {
        let core = &rt.core;
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| rt.namespace.to_string());
        if opts.get_if_exists
            && let Some(name) = &opts.name
        {
            match rt.get_actor::<A>(name, Some(&namespace)) {
                Ok(h) => return Ok(h),
                Err(Error::ActorNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let (args, nested, _keep) = lower_args(args)?;
        let (resources, placement_resources) = opts.resource_sets();
        let actor_id = ActorId::new();
        let spec = ActorSpec {
            actor_id,
            job_id: core.job_id(),
            class: A::CLASS_ID.to_string(),
            class_name: A::CLASS_NAME.to_string(),
            ctor: ctor.to_string(),
            args,
            nested,
            name: opts.name.clone(),
            namespace,
            detached: opts.detached,
            max_restarts: opts.max_restarts,
            max_task_retries: opts.max_task_retries,
            max_concurrency: opts
                .max_concurrency
                .unwrap_or(if A::IS_ASYNC { 1000 } else { 1 }),
            resources,
            placement_resources,
            strategy: opts.strategy.clone(),
            is_async: A::IS_ASYNC,
            owned_elsewhere: false,
            owner: None,
            hosted_name: None,
        };
        core.create_actor(spec)?;
        Ok(ActorHandle::from_raw(RawActorHandle::new(
            actor_id,
            A::CLASS_ID,
            core.clone(),
        )))
    }

    /// Calls an actor method.
    pub fn call_actor<R>(
        h: &RawActorHandle,
        method: &'static str,
        display: &'static str,
        args: Vec<RawArg>,
    ) -> ObjectRef<R> {
        let core = h.core();
        let (args, nested, _keep) = match lower_args(args) {
            Ok(x) => x,
            Err(e) => return failed(core, e),
        };
        let return_id = ObjectId::new();
        let call = ActorCall {
            task_id: TaskId::new(),
            actor_id: h.actor_id(),
            method: method.to_string(),
            name: display.to_string(),
            args,
            nested,
            return_id,
            attempt: 0,
        };
        match core.submit_actor_call(call) {
            Ok(()) => ObjectRef::from_raw(RawRef::adopt(return_id, core)),
            Err(e) => failed(core, e),
        }
    }

    /// Runs an `async fn` task body to completion on the worker thread.
    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    /// Wraps a method's output.
    pub fn done(r: std::result::Result<Encoded, UserError>) -> MethodOutcome {
        MethodOutcome::Done(r)
    }

    /// Encodes a return value. A large one is then freed on the reaper thread, so the task's
    /// result goes out without waiting for its memory to be given back.
    pub fn ret<T: Serialize + Send + 'static>(v: T) -> std::result::Result<Encoded, UserError> {
        let enc = encode(&v).map_err(|e| UserError::Failed(e.to_string()))?;
        if enc.data.len() >= crate::worker::shm::AWAY {
            crate::worker::shm::drop_away(v);
        }
        Ok(enc)
    }

    /// Encodes the `Ok` of a fallible function, or reports its `Err`.
    pub fn ret_result<T: Serialize + Send + 'static, E: std::fmt::Display>(
        v: std::result::Result<T, E>,
    ) -> std::result::Result<Encoded, UserError> {
        match v {
            Ok(v) => ret(v),
            Err(e) => Err(UserError::Failed(e.to_string())),
        }
    }

    /// Decodes argument `i` of `args`.
    pub fn arg<T: DeserializeOwned>(
        args: &[Bytes],
        i: usize,
        name: &str,
    ) -> std::result::Result<T, UserError> {
        let b = args
            .get(i)
            .ok_or_else(|| UserError::BadArgs(format!("missing argument {i} ({name})")))?;
        crate::codec::decode_shared(b)
            .map_err(|e| UserError::BadArgs(format!("argument {i} ({name}): {e}")))
    }

    /// Checks the argument count.
    pub fn arity(args: &[Bytes], n: usize) -> std::result::Result<(), UserError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(UserError::BadArgs(format!(
                "expected {n} arguments, got {}",
                args.len()
            )))
        }
    }
}
