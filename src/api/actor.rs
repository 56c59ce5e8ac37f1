//! Actor handles: `ActorHandle<A>` is a typed, cloneable, serializable reference to a live
//! actor; method calls on it go through the client struct that `#[mobula::actor]` generates.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::CoreRef;
use crate::ids::ActorId;

/// Implemented by `#[mobula::actor]` for an actor struct.
pub trait ActorType: 'static {
    /// Registry id of the class.
    const CLASS_ID: &'static str;
    /// Short name.
    const CLASS_NAME: &'static str;
    /// True when any method is `async fn`.
    const IS_ASYNC: bool;
    /// The generated client with one method per actor method.
    type Client: From<RawActorHandle> + AsRef<RawActorHandle> + Clone;
}

/// An untyped actor handle.
#[derive(Clone)]
pub struct RawActorHandle {
    actor_id: ActorId,
    class: &'static str,
    core: CoreRef,
}

impl RawActorHandle {
    pub(crate) fn new(actor_id: ActorId, class: &'static str, core: CoreRef) -> Self {
        Self {
            actor_id,
            class,
            core,
        }
    }
    /// The actor's id.
    pub fn actor_id(&self) -> ActorId {
        self.actor_id
    }
    /// The registry id of its class.
    pub fn class(&self) -> &'static str {
        self.class
    }
    pub(crate) fn core(&self) -> &CoreRef {
        &self.core
    }
}

impl fmt::Debug for RawActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({}, {:?})", self.class, self.actor_id)
    }
}

/// A handle to an actor of type `A`. Its methods (through `Deref` to the generated client)
/// submit calls and return `ObjectRef`s; calls from one caller run in submission order.
/// Handles can be cloned and passed to tasks and other actors.
pub struct ActorHandle<A: ActorType> {
    client: A::Client,
    _a: PhantomData<fn() -> A>,
}

impl<A: ActorType> ActorHandle<A> {
    pub(crate) fn from_raw(raw: RawActorHandle) -> Self {
        Self {
            client: A::Client::from(raw),
            _a: PhantomData,
        }
    }
    /// The untyped handle.
    pub fn raw(&self) -> &RawActorHandle {
        self.client.as_ref()
    }
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.raw().actor_id()
    }
}

impl<A: ActorType> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            _a: PhantomData,
        }
    }
}

impl<A: ActorType> fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw().fmt(f)
    }
}

impl<A: ActorType> Deref for ActorHandle<A> {
    type Target = A::Client;
    fn deref(&self) -> &A::Client {
        &self.client
    }
}

impl<A: ActorType> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.id().serialize(s)
    }
}

impl<'de, A: ActorType> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = ActorId::deserialize(d)?;
        let core = crate::api::current_core()
            .ok_or_else(|| serde::de::Error::custom("actor handle decoded outside a runtime"))?;
        Ok(Self::from_raw(RawActorHandle::new(id, A::CLASS_ID, core)))
    }
}
