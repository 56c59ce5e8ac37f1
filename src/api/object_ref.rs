//! `ObjectRef<T>`: a typed, reference-counted handle to an object that exists now or will exist
//! when a task finishes, and the argument conversions that let a call take either a value or a
//! reference.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, Encoded};
use crate::core::{Core, CoreRef};
use crate::error::{Error, Result};
use crate::ids::ObjectId;

struct RefInner {
    id: ObjectId,
    core: Weak<dyn Core>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        if let Some(c) = self.core.upgrade() {
            c.decref(self.id);
        }
    }
}

/// An untyped counted reference. Every live `RawRef` holds one count on its object; clones
/// share it.
#[derive(Clone)]
pub struct RawRef(Arc<RefInner>);

impl RawRef {
    /// Takes over a reference the caller already holds (from a `put` or a submission).
    pub(crate) fn adopt(id: ObjectId, core: &CoreRef) -> Self {
        RawRef(Arc::new(RefInner {
            id,
            core: Arc::downgrade(core),
        }))
    }

    /// Adds a new reference to `id`.
    pub(crate) fn acquire(id: ObjectId, core: &CoreRef) -> Self {
        core.incref(id);
        Self::adopt(id, core)
    }

    /// The object id.
    pub fn id(&self) -> ObjectId {
        self.0.id
    }
}

impl fmt::Debug for RawRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.id)
    }
}

/// A typed future: the value of type `T` that a task returns or a `put` stored.
///
/// Pass it to other remote calls (also nested inside argument values) to make them depend on
/// it; `get` it to read the value. The object is freed when no `ObjectRef` to it, no pending
/// call taking it and no stored object containing it remains.
pub struct ObjectRef<T> {
    raw: RawRef,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.raw.id())
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw.id() == other.raw.id()
    }
}
impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.id().hash(state)
    }
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_raw(raw: RawRef) -> Self {
        Self {
            raw,
            _t: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.raw.id()
    }

    /// The untyped reference.
    pub fn raw(&self) -> &RawRef {
        &self.raw
    }

    /// Forgets the value type.
    pub fn untyped(&self) -> ObjectRef<()> {
        ObjectRef::from_raw(self.raw.clone())
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Blocks until the value exists and returns it (using the process's runtime).
    pub fn get(&self) -> Result<T> {
        crate::api::runtime()?.get(self)
    }

    /// Waits for the value without blocking the thread.
    pub async fn get_async(&self) -> Result<T> {
        crate::api::runtime()?.get_async(self).await
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        codec::note_nested(&self.raw);
        self.id().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::deserialize(d)?;
        let core = crate::api::current_core()
            .ok_or_else(|| serde::de::Error::custom("object ref decoded outside a runtime"))?;
        Ok(ObjectRef::from_raw(RawRef::acquire(id, &core)))
    }
}

/// One argument of a remote call, before submission.
#[derive(Debug)]
pub enum RawArg {
    /// An encoded value (or the error encoding it hit).
    Value(Result<Encoded>),
    /// A reference to resolve.
    Ref(RawRef),
}

/// A call argument of type `T`: a value or an `ObjectRef<T>`.
#[derive(Debug)]
pub struct Arg<T> {
    raw: RawArg,
    _t: PhantomData<fn() -> T>,
}

impl<T> Arg<T> {
    /// The untyped argument.
    pub fn into_raw(self) -> RawArg {
        self.raw
    }
}

/// Things that can be passed where a `T` parameter of a remote call is expected: a `T`, an
/// `ObjectRef<T>` or a `&ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Converts to an argument.
    fn into_arg(self) -> Arg<T>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg {
            raw: RawArg::Value(codec::encode(&self)),
            _t: PhantomData,
        }
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg {
            raw: RawArg::Ref(self.raw),
            _t: PhantomData,
        }
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg {
            raw: RawArg::Ref(self.raw.clone()),
            _t: PhantomData,
        }
    }
}

/// Decodes a sealed object as a `T` or as the error it holds.
pub(crate) fn decode_object<T: DeserializeOwned>(o: &crate::store::Object) -> Result<T> {
    if o.is_error {
        Err(codec::decode::<Error>(&o.data)?)
    } else {
        codec::decode_shared(&o.data)
    }
}
