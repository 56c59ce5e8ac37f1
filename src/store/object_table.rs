//! The node's object storage: sealed objects held as `bytes::Bytes` (a `get` inside the process
//! clones a pointer, never the data), pending objects with the callbacks waiting on them,
//! reference counts, and the memory limit.
//!
//! The table is sharded by id so that many submitting threads and workers do not contend on
//! one lock. Callbacks run after the shard lock is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::ids::ObjectId;

const SHARDS: usize = 64;

/// Errors of the object table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The object does not fit under the memory limit.
    #[error("object of {needed} bytes does not fit: {used} of {limit} bytes in use")]
    Full {
        /// Size of the object.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

impl From<StoreError> for crate::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full {
                needed,
                used,
                limit,
            } => crate::Error::StoreFull {
                needed,
                used,
                limit,
            },
        }
    }
}

/// A sealed object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The encoded value (or encoded [`crate::Error`] when `is_error`).
    pub data: Bytes,
    /// The object holds an error instead of a value.
    pub is_error: bool,
}

/// A callback run once when an object is sealed (or dropped unsealed).
pub type Waiter = Box<dyn FnOnce() + Send>;

enum State {
    Pending(Vec<Waiter>),
    Ready(Object),
}

struct Entry {
    state: State,
    refs: u32,
    nested: Vec<ObjectId>,
    size: u64,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Sealed.
    Ready(Object),
    /// Known but not sealed yet.
    Pending,
    /// Unknown or freed.
    Missing,
}

/// Counters for metrics and the state API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects known (pending or sealed).
    pub objects: u64,
    /// Bytes of sealed objects.
    pub used_bytes: u64,
    /// The memory limit.
    pub limit_bytes: u64,
}

/// The object table of one node.
pub struct ObjectTable {
    shards: Box<[Mutex<HashMap<ObjectId, Entry>>]>,
    used: AtomicU64,
    limit: u64,
}

impl std::fmt::Debug for ObjectTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTable")
            .field("used", &self.used.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish()
    }
}

fn shard_of(id: &ObjectId) -> usize {
    let (hi, lo) = id.0.as_u64_pair();
    ((hi ^ lo) as usize) % SHARDS
}

impl ObjectTable {
    /// A table that holds at most `limit` bytes of sealed objects.
    pub fn new(limit: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            used: AtomicU64::new(0),
            limit,
        }
    }

    fn shard(&self, id: &ObjectId) -> &Mutex<HashMap<ObjectId, Entry>> {
        &self.shards[shard_of(id)]
    }

    fn reserve(&self, size: u64) -> Result<(), StoreError> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(size) > self.limit {
                return Err(StoreError::Full {
                    needed: size,
                    used: cur,
                    limit: self.limit,
                });
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Registers an object that a task will produce, holding one reference.
    pub fn create_pending(&self, id: ObjectId) {
        self.shard(&id).lock().entry(id).or_insert(Entry {
            state: State::Pending(Vec::new()),
            refs: 1,
            nested: Vec::new(),
            size: 0,
        });
    }

    /// Stores a new sealed object holding one reference (a `put`).
    pub fn put(
        &self,
        id: ObjectId,
        data: Bytes,
        nested: Vec<ObjectId>,
        is_error: bool,
    ) -> Result<(), StoreError> {
        let size = data.len() as u64;
        if self.is_ready(&id) {
            // Already stored (the same put delivered twice): the first value stays.
            return Ok(());
        }
        if is_error {
            // Errors are tiny and must reach their reader even when the store is full.
            self.used.fetch_add(size, Ordering::AcqRel);
        } else {
            self.reserve(size)?;
        }
        for n in &nested {
            self.incref(*n);
        }
        let waiters = {
            let mut shard = self.shard(&id).lock();
            match shard.get_mut(&id) {
                Some(e) => {
                    e.refs += 1;
                    Self::fill(e, data, nested, is_error, size)
                }
                None => {
                    shard.insert(
                        id,
                        Entry {
                            state: State::Ready(Object { data, is_error }),
                            refs: 1,
                            nested,
                            size,
                        },
                    );
                    Vec::new()
                }
            }
        };
        for w in waiters {
            w();
        }
        Ok(())
    }

    fn fill(
        e: &mut Entry,
        data: Bytes,
        nested: Vec<ObjectId>,
        is_error: bool,
        size: u64,
    ) -> Vec<Waiter> {
        match std::mem::replace(&mut e.state, State::Ready(Object { data, is_error })) {
            State::Pending(w) => {
                e.nested = nested;
                e.size = size;
                w
            }
            State::Ready(old) => {
                // Sealed twice (a retried task finishing late): keep the first value.
                e.state = State::Ready(old);
                Vec::new()
            }
        }
    }

    /// Seals a pending object with a task's result. Returns false when nobody holds a
    /// reference any more (the value is dropped) or the object was already sealed.
    /// A value over the memory limit is replaced by a store-full error.
    pub fn seal(&self, id: ObjectId, data: Bytes, nested: Vec<ObjectId>, is_error: bool) -> bool {
        let size = data.len() as u64;
        let reserved = if is_error {
            // Errors are tiny and must reach their reader even when the store is full.
            self.used.fetch_add(size, Ordering::AcqRel);
            Ok(())
        } else {
            self.reserve(size)
        };
        let (data, nested, is_error, size) = match reserved {
            Ok(()) => (data, nested, is_error, size),
            Err(e) => {
                let err: crate::Error = e.into();
                let enc = crate::codec::encode(&err)
                    .map(|e| e.data)
                    .unwrap_or_default();
                let n = enc.len() as u64;
                self.used.fetch_add(n, Ordering::AcqRel);
                (enc, Vec::new(), true, n)
            }
        };
        let waiters = {
            let mut shard = self.shard(&id).lock();
            match shard.get_mut(&id) {
                Some(e) if matches!(e.state, State::Pending(_)) => {
                    // Nested refs live in other shards: they are counted after unlocking.
                    Some(Self::fill(e, data, nested.clone(), is_error, size))
                }
                _ => None,
            }
        };
        match waiters {
            Some(ws) => {
                for n in &nested {
                    self.incref(*n);
                }
                for w in ws {
                    w();
                }
                true
            }
            None => {
                self.used.fetch_sub(size, Ordering::AcqRel);
                false
            }
        }
    }

    /// The object's state.
    pub fn lookup(&self, id: &ObjectId) -> Lookup {
        match self.shard(id).lock().get(id) {
            Some(Entry {
                state: State::Ready(o),
                ..
            }) => Lookup::Ready(o.clone()),
            Some(_) => Lookup::Pending,
            None => Lookup::Missing,
        }
    }

    /// The objects a sealed object's value refers to (empty if none, or not sealed here).
    pub fn nested_of(&self, id: &ObjectId) -> Vec<ObjectId> {
        match self.shard(id).lock().get(id) {
            Some(e) if matches!(e.state, State::Ready(_)) => e.nested.clone(),
            _ => Vec::new(),
        }
    }

    /// The sealed object, if it is sealed.
    pub fn get(&self, id: &ObjectId) -> Option<Object> {
        match self.lookup(id) {
            Lookup::Ready(o) => Some(o),
            _ => None,
        }
    }

    /// True when the object is sealed.
    pub fn is_ready(&self, id: &ObjectId) -> bool {
        matches!(
            self.shard(id).lock().get(id),
            Some(Entry {
                state: State::Ready(_),
                ..
            })
        )
    }

    /// Runs `waiter` once the object is sealed. Returns the waiter back when the object is
    /// already sealed or unknown, so the caller decides what to do.
    pub fn subscribe(&self, id: ObjectId, waiter: Waiter) -> Result<(), Waiter> {
        let mut shard = self.shard(&id).lock();
        match shard.get_mut(&id) {
            Some(Entry {
                state: State::Pending(ws),
                ..
            }) => {
                ws.push(waiter);
                Ok(())
            }
            _ => Err(waiter),
        }
    }

    /// Adds a reference.
    pub fn incref(&self, id: ObjectId) {
        if let Some(e) = self.shard(&id).lock().get_mut(&id) {
            e.refs += 1;
        }
    }

    /// Drops a reference; the last one frees the object and the references it holds.
    pub fn decref(&self, id: ObjectId) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            let freed = {
                let mut shard = self.shard(&id).lock();
                let Some(e) = shard.get_mut(&id) else {
                    continue;
                };
                e.refs = e.refs.saturating_sub(1);
                if e.refs > 0 {
                    continue;
                }
                shard.remove(&id)
            };
            if let Some(e) = freed {
                self.used.fetch_sub(e.size, Ordering::AcqRel);
                work.extend(e.nested);
                match e.state {
                    State::Pending(ws) => {
                        for w in ws {
                            w();
                        }
                    }
                    State::Ready(o) => super::buffers::recycle(o.data),
                }
            }
        }
    }

    /// The current reference count (0 when unknown), for tests and the state API.
    pub fn refcount(&self, id: &ObjectId) -> u32 {
        self.shard(id).lock().get(id).map_or(0, |e| e.refs)
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let objects = self.shards.iter().map(|s| s.lock().len() as u64).sum();
        StoreStats {
            objects,
            used_bytes: self.used.load(Ordering::Relaxed),
            limit_bytes: self.limit,
        }
    }

    /// Object ids with their size and whether they are sealed (for the state API).
    pub fn list(&self, limit: usize) -> Vec<(ObjectId, u64, bool, u32)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            for (id, e) in s.lock().iter() {
                if out.len() >= limit {
                    return out;
                }
                out.push((*id, e.size, matches!(e.state, State::Ready(_)), e.refs));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn put_get_and_free() {
        let t = ObjectTable::new(1 << 20);
        let id = ObjectId::new();
        t.put(id, Bytes::from_static(b"abc"), vec![], false)
            .expect("put");
        assert_eq!(t.get(&id).map(|o| o.data), Some(Bytes::from_static(b"abc")));
        assert_eq!(t.stats().used_bytes, 3);
        t.incref(id);
        t.decref(id);
        assert!(t.is_ready(&id));
        t.decref(id);
        assert!(matches!(t.lookup(&id), Lookup::Missing));
        assert_eq!(t.stats().used_bytes, 0);
    }

    #[test]
    fn limit_is_enforced_with_a_clear_error() {
        let t = ObjectTable::new(10);
        let err = t
            .put(ObjectId::new(), Bytes::from(vec![0u8; 11]), vec![], false)
            .expect_err("over limit");
        assert_eq!(
            err,
            StoreError::Full {
                needed: 11,
                used: 0,
                limit: 10
            }
        );
        assert!(err.to_string().contains("does not fit"));
    }

    #[test]
    fn seal_wakes_waiters_once() {
        let t = ObjectTable::new(1 << 20);
        let id = ObjectId::new();
        t.create_pending(id);
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        assert!(
            t.subscribe(
                id,
                Box::new(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                })
            )
            .is_ok()
        );
        assert!(t.seal(id, Bytes::from_static(b"x"), vec![], false));
        assert!(!t.seal(id, Bytes::from_static(b"y"), vec![], false));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(t.get(&id).map(|o| o.data), Some(Bytes::from_static(b"x")));
        assert!(t.subscribe(id, Box::new(|| {})).is_err());
    }

    #[test]
    fn nested_refs_live_as_long_as_their_container() {
        let t = ObjectTable::new(1 << 20);
        let inner = ObjectId::new();
        let outer = ObjectId::new();
        t.put(inner, Bytes::from_static(b"in"), vec![], false)
            .expect("put");
        t.put(outer, Bytes::from_static(b"out"), vec![inner], false)
            .expect("put");
        t.decref(inner); // the user's handle goes away
        assert!(t.is_ready(&inner), "kept alive by its container");
        t.decref(outer);
        assert!(matches!(t.lookup(&inner), Lookup::Missing));
        assert_eq!(t.stats().objects, 0);
    }

    #[test]
    fn sealing_a_dropped_object_discards_it() {
        let t = ObjectTable::new(1 << 20);
        let id = ObjectId::new();
        t.create_pending(id);
        t.decref(id);
        assert!(!t.seal(id, Bytes::from_static(b"late"), vec![], false));
        assert_eq!(t.stats().used_bytes, 0);
    }
}
