//! The node's object storage: sealed objects held as `bytes::Bytes` (a `get` inside the process
//! clones a pointer, never the data), pending objects with the callbacks waiting on them,
//! reference counts, the memory limit, and spilling: with a spill directory, an object that
//! does not fit under the limit makes room by writing other sealed objects to files there
//! (or goes there itself), a read of a spilled object restores it when it fits again, and
//! freeing one deletes its file. A `put` spills on the putting thread; a `seal` (often on an
//! actor's or the network's thread) never touches the disk: it keeps its value over the limit
//! for a moment and wakes the table's spill thread, which writes other values out.
//!
//! The table is sharded by id so that many submitting threads and workers do not contend on
//! one lock. Callbacks run after the shard lock is released.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::ids::ObjectId;
use crate::worker::process::alive;

const SHARDS: usize = 64;

/// Reads of a spilled object that found its file gone (restored, freed or spilled again by
/// another thread meanwhile) before the object counts as lost.
const RESTORE_TRIES: usize = 4;

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
    /// The object could not be spilled to disk.
    #[error("cannot spill an object of {needed} bytes to {path}: {reason}")]
    Spill {
        /// Size of the object.
        needed: u64,
        /// The file.
        path: String,
        /// Why.
        reason: String,
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
            e @ StoreError::Spill { .. } => crate::Error::Runtime(e.to_string()),
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
    /// Sealed, its value in a file of the spill directory.
    Spilled(std::path::PathBuf),
}

struct Entry {
    state: State,
    refs: u32,
    nested: Vec<ObjectId>,
    size: u64,
    /// When the value entered memory (sealed or restored; the table's clock): the oldest
    /// spill first.
    age: u64,
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

/// What [`ObjectTable::peek`] found, without reading anything from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Unknown or freed.
    Missing,
    /// Known but not sealed yet.
    Pending,
    /// Sealed.
    Sealed {
        /// Size of the value in bytes.
        size: u64,
        /// The object holds an error.
        is_error: bool,
        /// The value is in a file of the spill directory, not in memory.
        spilled: bool,
    },
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
    /// Bytes of sealed objects now on disk.
    pub spilled_bytes: u64,
    /// Objects written to disk so far.
    pub spilled_objects: u64,
    /// Spilled objects read back into memory so far.
    pub restored_objects: u64,
    /// Whether the table spills (it has a spill directory).
    pub spilling: bool,
}

/// The object table of one node.
pub struct ObjectTable {
    shards: Box<[Mutex<HashMap<ObjectId, Entry>>]>,
    used: AtomicU64,
    limit: u64,
    spill: Option<Spill>,
    /// Ticks once per value entering memory (`Entry::age`).
    clock: AtomicU64,
}

/// Where and how much a table spilled.
struct Spill {
    dir: std::path::PathBuf,
    bytes: AtomicU64,
    written: AtomicU64,
    /// Numbers the spill files.
    seq: AtomicU64,
    restored: AtomicU64,
    /// Held while choosing and writing victims: two threads short of room do not write
    /// the same values twice (the second finds the room made, or makes the rest).
    writer: Mutex<()>,
    /// Wakes the spill thread (`None`: it did not start; seals spill on their own thread).
    wake: Option<flume::Sender<()>>,
    /// Set once the directory is removed: no file is written any more. Writers hold it
    /// shared for the length of a write, so the removal waits for them.
    closed: RwLock<bool>,
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
            spill: None,
            clock: AtomicU64::new(0),
        }
    }

    /// A table over `limit` bytes that spills to files in `dir` (created when first needed,
    /// removed by [`ObjectTable::remove_spill_dir`]), with its spill thread (which ends
    /// when the table is dropped).
    pub fn with_spill_dir(limit: u64, dir: std::path::PathBuf) -> Arc<Self> {
        let (tx, rx) = flume::bounded::<()>(1);
        Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            let spawned = std::thread::Builder::new()
                .name("mobula-spill".to_string())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        let Some(t) = weak.upgrade() else {
                            break;
                        };
                        t.relieve();
                    }
                });
            let wake = match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no spill thread: seals spill on their own thread");
                    None
                }
            };
            let mut t = Self::new(limit);
            t.spill = Some(Spill {
                dir,
                bytes: AtomicU64::new(0),
                written: AtomicU64::new(0),
                seq: AtomicU64::new(0),
                restored: AtomicU64::new(0),
                writer: Mutex::new(()),
                wake,
                closed: RwLock::new(false),
            });
            t
        })
    }

    /// Deletes the spill directory and what is in it (the node is shutting down); nothing is
    /// spilled any more.
    pub fn remove_spill_dir(&self) {
        if let Some(sp) = &self.spill {
            *sp.closed.write() = true;
            let _ = std::fs::remove_dir_all(&sp.dir);
        }
    }

    /// The name of the spill directory of node `node` (hex) in this process:
    /// `spill-<pid>-<node>`, so that a later node can tell one whose process is gone.
    pub fn spill_dir_name(node: &str) -> String {
        format!("spill-{}-{node}", std::process::id())
    }

    /// Deletes the spill directories under `root` (and under the `mobula-<pid>-*` temp dirs
    /// in it) whose process is gone: a node killed with SIGKILL never ran its shutdown.
    /// Run when a node starts. Returns how many went.
    pub fn remove_orphan_spill_dirs(root: &std::path::Path) -> usize {
        fn pid_of(name: &str, prefix: &str) -> Option<u32> {
            name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
        }
        let Ok(entries) = std::fs::read_dir(root) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(pid) = pid_of(name, "spill-")
                && !alive(pid)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                tracing::debug!(dir = %e.path().display(), "removed the spill directory of a node that is gone");
                n += 1;
            } else if pid_of(name, "mobula-").is_some_and(|p| !alive(p)) && e.path().is_dir() {
                n += Self::remove_orphan_spill_dirs(&e.path());
            }
        }
        n
    }

    /// Spills sealed values until the table is under its limit again, or nothing more can
    /// go (the spill thread's work; also how a producing thread takes its share).
    pub fn relieve(&self) {
        if self.spill.is_some() && self.used.load(Ordering::Acquire) > self.limit {
            self.make_room(0, None);
        }
    }

    /// Whether storing `size` more bytes would spill (a cheap check, for callers that move
    /// such a put off their thread).
    pub fn would_spill(&self, size: u64) -> bool {
        self.spill.is_some() && self.used.load(Ordering::Acquire).saturating_add(size) > self.limit
    }

    /// A file of its own for each write (`<object id>.<n>`): two threads spilling the same
    /// value, or a value spilled again after a restore, never share (or delete) a file.
    fn spill_path(sp: &Spill, id: &ObjectId) -> std::path::PathBuf {
        let n = sp.seq.fetch_add(1, Ordering::Relaxed);
        sp.dir.join(format!("{}.{n}", id.hex()))
    }

    fn write_spill(
        sp: &Spill,
        id: &ObjectId,
        data: &[u8],
    ) -> Result<std::path::PathBuf, StoreError> {
        let path = Self::spill_path(sp, id);
        let fail = |e: std::io::Error| StoreError::Spill {
            needed: data.len() as u64,
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let closed = sp.closed.read();
        if *closed {
            return Err(fail(std::io::Error::other("the node is shutting down")));
        }
        std::fs::create_dir_all(&sp.dir).map_err(fail)?;
        std::fs::write(&path, data).map_err(fail)?;
        drop(closed);
        tracing::debug!(object = %id, bytes = data.len(), path = %path.display(), "spilled an object to disk");
        Ok(path)
    }

    /// Spills sealed objects (other than `keep`), oldest first, until `needed` more bytes fit
    /// under the limit, or nothing more can go. Returns whether they fit now.
    fn make_room(&self, needed: u64, keep: Option<&ObjectId>) -> bool {
        let Some(sp) = &self.spill else {
            return false;
        };
        let over = || {
            self.used
                .load(Ordering::Acquire)
                .saturating_add(needed)
                .saturating_sub(self.limit)
        };
        if over() == 0 {
            return true;
        }
        let _writer = sp.writer.lock();
        // The values in memory, the oldest first (each shard locked in turn, briefly).
        let mut candidates: Vec<(u64, ObjectId, usize)> = Vec::new();
        for (idx, shard) in self.shards.iter().enumerate() {
            candidates.extend(shard.lock().iter().filter_map(|(id, e)| match &e.state {
                State::Ready(o) if !o.is_error && e.size > 0 && Some(id) != keep => {
                    Some((e.age, *id, idx))
                }
                _ => None,
            }));
        }
        candidates.sort_unstable_by_key(|c| c.0);
        for (_, id, idx) in candidates {
            if over() == 0 {
                break;
            }
            let data = match self.shards[idx].lock().get(&id) {
                Some(Entry {
                    state: State::Ready(o),
                    ..
                }) => o.data.clone(),
                _ => continue,
            };
            // Written outside the shard's lock, swapped in under it.
            let path = match Self::write_spill(sp, &id, &data) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot spill an object");
                    break;
                }
            };
            let mut shard = self.shards[idx].lock();
            let swapped = match shard.get_mut(&id) {
                // Still the same value in memory, and the room still wanted (frees meanwhile
                // may have made it): it lives on disk from now on.
                Some(e)
                    if matches!(&e.state, State::Ready(o) if o.data.as_ptr() == data.as_ptr())
                        && over() > 0 =>
                {
                    e.state = State::Spilled(path.clone());
                    self.used.fetch_sub(e.size, Ordering::AcqRel);
                    sp.bytes.fetch_add(e.size, Ordering::AcqRel);
                    sp.written.fetch_add(1, Ordering::Relaxed);
                    true
                }
                _ => false,
            };
            drop(shard);
            if !swapped {
                let _ = std::fs::remove_file(&path);
            }
        }
        over() == 0
    }

    /// Room for `size` bytes: reserved in memory (spilling others if need be), or `false`
    /// when the value has to go to disk itself. With `defer` (a seal) nothing is written
    /// here: the value is counted over the limit and the spill thread makes the room.
    fn admit(&self, id: &ObjectId, size: u64, defer: bool) -> Result<bool, StoreError> {
        match self.reserve(size) {
            Ok(()) => return Ok(true),
            Err(e) if self.spill.is_none() => return Err(e),
            Err(_) => {}
        }
        if let Some(wake) = self.spill.as_ref().and_then(|sp| sp.wake.as_ref())
            && defer
        {
            self.used.fetch_add(size, Ordering::AcqRel);
            let _ = wake.try_send(());
            return Ok(true);
        }
        if size <= self.limit && self.make_room(size, Some(id)) && self.reserve(size).is_ok() {
            return Ok(true);
        }
        Ok(false)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
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
            age: 0,
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
        let state = if is_error {
            // Errors are tiny and must reach their reader even when the store is full.
            self.used.fetch_add(size, Ordering::AcqRel);
            State::Ready(Object { data, is_error })
        } else if self.admit(&id, size, false)? {
            State::Ready(Object { data, is_error })
        } else {
            self.spilled_state(&id, &data)?
        };
        for n in &nested {
            self.incref(*n);
        }
        let waiters = {
            let mut shard = self.shard(&id).lock();
            match shard.get_mut(&id) {
                Some(e) => {
                    e.refs += 1;
                    Self::fill(e, state, nested, size, self.tick())
                }
                None => {
                    shard.insert(
                        id,
                        Entry {
                            state,
                            refs: 1,
                            nested,
                            size,
                            age: self.tick(),
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

    /// The state of a value written straight to disk (it does not fit in memory at all).
    fn spilled_state(&self, id: &ObjectId, data: &Bytes) -> Result<State, StoreError> {
        let Some(sp) = &self.spill else {
            return Err(StoreError::Full {
                needed: data.len() as u64,
                used: self.used.load(Ordering::Relaxed),
                limit: self.limit,
            });
        };
        let path = Self::write_spill(sp, id, data)?;
        sp.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
        sp.written.fetch_add(1, Ordering::Relaxed);
        Ok(State::Spilled(path))
    }

    /// Gives back what a state not kept had taken (memory, or its file).
    fn forget(&self, state: State, size: u64) {
        match state {
            State::Ready(_) => {
                self.used.fetch_sub(size, Ordering::AcqRel);
            }
            State::Spilled(path) => {
                let _ = std::fs::remove_file(path);
                if let Some(sp) = &self.spill {
                    sp.bytes.fetch_sub(size, Ordering::AcqRel);
                }
            }
            State::Pending(_) => {}
        }
    }

    fn fill(
        e: &mut Entry,
        state: State,
        nested: Vec<ObjectId>,
        size: u64,
        age: u64,
    ) -> Vec<Waiter> {
        match std::mem::replace(&mut e.state, state) {
            State::Pending(w) => {
                e.nested = nested;
                e.size = size;
                e.age = age;
                w
            }
            old => {
                // Sealed twice (a retried task finishing late): keep the first value.
                e.state = old;
                Vec::new()
            }
        }
    }

    /// Seals a pending object with a task's result. Returns false when nobody holds a
    /// reference any more (the value is dropped) or the object was already sealed.
    /// A value over the memory limit of a table that does not spill is replaced by a
    /// store-full error; one that spills keeps it and wakes its spill thread.
    pub fn seal(&self, id: ObjectId, data: Bytes, nested: Vec<ObjectId>, is_error: bool) -> bool {
        let size = data.len() as u64;
        let placed = if is_error {
            // Errors are tiny and must reach their reader even when the store is full.
            self.used.fetch_add(size, Ordering::AcqRel);
            Ok(State::Ready(Object { data, is_error }))
        } else {
            match self.admit(&id, size, true) {
                Ok(true) => Ok(State::Ready(Object { data, is_error })),
                Ok(false) => self.spilled_state(&id, &data),
                Err(e) => Err(e),
            }
        };
        let (state, nested, size) = match placed {
            Ok(state) => (state, nested, size),
            Err(e) => {
                let err: crate::Error = e.into();
                let enc = crate::codec::encode(&err)
                    .map(|e| e.data)
                    .unwrap_or_default();
                let n = enc.len() as u64;
                self.used.fetch_add(n, Ordering::AcqRel);
                let obj = Object {
                    data: enc,
                    is_error: true,
                };
                (State::Ready(obj), Vec::new(), n)
            }
        };
        let mut state = Some(state);
        let waiters = {
            let mut shard = self.shard(&id).lock();
            match shard.get_mut(&id) {
                Some(e) if matches!(e.state, State::Pending(_)) => {
                    // Nested refs live in other shards: they are counted after unlocking.
                    let st = state.take().map_or(State::Pending(Vec::new()), |s| s);
                    Some(Self::fill(e, st, nested.clone(), size, self.tick()))
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
                if let Some(st) = state {
                    self.forget(st, size);
                }
                false
            }
        }
    }

    /// The object's state; a spilled object is read back from its file (on this thread).
    pub fn lookup(&self, id: &ObjectId) -> Lookup {
        let mut last = None;
        for _ in 0..RESTORE_TRIES {
            let path = match self.shard(id).lock().get(id) {
                Some(Entry {
                    state: State::Ready(o),
                    ..
                }) => return Lookup::Ready(o.clone()),
                Some(Entry {
                    state: State::Spilled(p),
                    ..
                }) => p.clone(),
                Some(_) => return Lookup::Pending,
                None => return Lookup::Missing,
            };
            match std::fs::read(&path) {
                Ok(d) => return self.restore(id, &path, Bytes::from(d)),
                // Restored, freed or spilled again by another thread meanwhile: look again.
                Err(e) => last = Some((path, e)),
            }
        }
        let Some((path, e)) = last else {
            return Lookup::Missing;
        };
        tracing::error!(object = %id, path = %path.display(), error = %e, "cannot read a spilled object back");
        let err = crate::Error::ObjectLost {
            id: id.hex(),
            reason: format!("its spill file {} is unreadable: {e}", path.display()),
        };
        let enc = crate::codec::encode(&err)
            .map(|e| e.data)
            .unwrap_or_default();
        Lookup::Ready(Object {
            data: enc,
            is_error: true,
        })
    }

    /// Keeps a spilled object read back from `path` in memory again when it fits without
    /// spilling others (its file goes); otherwise it stays on disk and is read each time.
    fn restore(&self, id: &ObjectId, path: &std::path::Path, data: Bytes) -> Lookup {
        let size = data.len() as u64;
        if self.reserve(size).is_ok() {
            let mut shard = self.shard(id).lock();
            let back = match shard.get_mut(id) {
                Some(e) if matches!(&e.state, State::Spilled(p) if p == path) => {
                    e.state = State::Ready(Object {
                        data: data.clone(),
                        is_error: false,
                    });
                    e.age = self.tick();
                    true
                }
                _ => false,
            };
            drop(shard);
            match (back, &self.spill) {
                (true, Some(sp)) => {
                    sp.bytes.fetch_sub(size, Ordering::AcqRel);
                    sp.restored.fetch_add(1, Ordering::Relaxed);
                    // Each write has a file of its own: this one is nobody else's.
                    let _ = std::fs::remove_file(path);
                    tracing::debug!(object = %id, bytes = size, "restored a spilled object");
                }
                _ => {
                    self.used.fetch_sub(size, Ordering::AcqRel);
                }
            }
        }
        Lookup::Ready(Object {
            data,
            is_error: false,
        })
    }

    /// The object's state and size, never touching the disk (for the callers that only
    /// decide something from them: the raylet, the scheduler, waits).
    pub fn peek(&self, id: &ObjectId) -> Peek {
        match self.shard(id).lock().get(id) {
            None => Peek::Missing,
            Some(e) => match &e.state {
                State::Pending(_) => Peek::Pending,
                State::Ready(o) => Peek::Sealed {
                    size: e.size,
                    is_error: o.is_error,
                    spilled: false,
                },
                State::Spilled(_) => Peek::Sealed {
                    size: e.size,
                    is_error: false,
                    spilled: true,
                },
            },
        }
    }

    /// Bytes `offset..offset + len` of a sealed value (cut to its end) with the value's size:
    /// a slice of the memory, or of a spilled value's file read without restoring it.
    pub fn read_part(&self, id: &ObjectId, offset: u64, len: u64) -> Option<(u64, Bytes)> {
        let cut = |size: u64| {
            let start = offset.min(size);
            (start, (start.saturating_add(len)).min(size))
        };
        for _ in 0..RESTORE_TRIES {
            let (path, size) = match self.shard(id).lock().get(id) {
                Some(Entry {
                    state: State::Ready(o),
                    ..
                }) => {
                    let (s, e) = cut(o.data.len() as u64);
                    return Some((o.data.len() as u64, o.data.slice(s as usize..e as usize)));
                }
                Some(Entry {
                    state: State::Spilled(p),
                    size,
                    ..
                }) => (p.clone(), *size),
                _ => return None,
            };
            let (s, e) = cut(size);
            let read = || -> std::io::Result<Vec<u8>> {
                let mut f = std::fs::File::open(&path)?;
                f.seek(std::io::SeekFrom::Start(s))?;
                let mut buf = vec![0u8; (e - s) as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            };
            if let Ok(buf) = read() {
                return Some((size, Bytes::from(buf)));
            }
            // Its file went (restored, freed, spilled again): look again.
        }
        None
    }

    /// The objects a sealed object's value refers to (empty if none, or not sealed here).
    pub fn nested_of(&self, id: &ObjectId) -> Vec<ObjectId> {
        match self.shard(id).lock().get(id) {
            Some(e) if matches!(e.state, State::Ready(_) | State::Spilled(_)) => e.nested.clone(),
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
                state: State::Ready(_) | State::Spilled(_),
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
                work.extend(e.nested);
                match e.state {
                    State::Pending(ws) => {
                        self.used.fetch_sub(e.size, Ordering::AcqRel);
                        for w in ws {
                            w();
                        }
                    }
                    State::Ready(o) => {
                        self.used.fetch_sub(e.size, Ordering::AcqRel);
                        super::buffers::recycle(o.data);
                    }
                    spilled @ State::Spilled(_) => self.forget(spilled, e.size),
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
        let sp = self.spill.as_ref();
        let read = |f: fn(&Spill) -> &AtomicU64| sp.map_or(0, |s| f(s).load(Ordering::Relaxed));
        StoreStats {
            objects,
            used_bytes: self.used.load(Ordering::Relaxed),
            limit_bytes: self.limit,
            spilled_bytes: read(|s| &s.bytes),
            spilled_objects: read(|s| &s.written),
            restored_objects: read(|s| &s.restored),
            spilling: sp.is_some(),
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
                let sealed = matches!(e.state, State::Ready(_) | State::Spilled(_));
                out.push((*id, e.size, sealed, e.refs));
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
    fn spill_dirs_of_gone_processes_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().expect("root");
        // A process that has exited: its pid is free (and not reused this quickly).
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let gone = child.id();
        child.wait().expect("wait");
        let mine = root.path().join(ObjectTable::spill_dir_name("aaaa"));
        let orphan = root.path().join(format!("spill-{gone}-bbbb"));
        let nested = root
            .path()
            .join(format!("mobula-{gone}-cc/spill-{gone}-dddd"));
        let other = root.path().join("spilled-notes");
        for d in [&mine, &orphan, &nested, &other] {
            std::fs::create_dir_all(d).expect("dir");
            std::fs::write(d.join("x.0"), b"value").expect("file");
        }
        assert_eq!(ObjectTable::remove_orphan_spill_dirs(root.path()), 2);
        assert!(mine.exists() && other.exists());
        assert!(!orphan.exists() && !nested.exists());
    }

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

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |rd| rd.count())
    }

    #[test]
    fn objects_past_the_limit_spill_and_come_back_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = dir.path().join("spill");
        let t = ObjectTable::with_spill_dir(100, spill.clone());
        let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            t.put(*id, Bytes::from(vec![i as u8; 40]), vec![], false)
                .expect("a put never fails while the disk has room");
        }
        let s = t.stats();
        assert!(s.used_bytes <= 100, "{s:?}");
        assert_eq!(s.used_bytes + s.spilled_bytes, 200, "{s:?}");
        assert!(s.spilled_objects >= 3, "{s:?}");
        assert_eq!(files_in(&spill) as u64 * 40, s.spilled_bytes);
        for (i, id) in ids.iter().enumerate() {
            assert!(t.is_ready(id));
            let o = t.get(id).expect("sealed");
            assert_eq!(o.data, Bytes::from(vec![i as u8; 40]), "object {i} intact");
        }
        // Freeing deletes the files of spilled objects.
        for id in &ids {
            t.decref(*id);
        }
        let s = t.stats();
        assert_eq!((s.used_bytes, s.spilled_bytes), (0, 0), "{s:?}");
        assert_eq!(files_in(&spill), 0);
        t.remove_spill_dir();
        assert!(!spill.exists());
    }

    #[test]
    fn an_object_bigger_than_the_store_goes_to_disk_and_a_read_restores_when_it_fits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ObjectTable::with_spill_dir(100, dir.path().join("s"));
        let big = ObjectId::new();
        t.create_pending(big);
        assert!(t.seal(big, Bytes::from(vec![9u8; 150]), vec![], false));
        // The seal left the writing to the spill thread; this thread takes its share.
        t.relieve();
        assert_eq!(t.stats().spilled_bytes, 150);
        assert_eq!(t.get(&big).map(|o| o.data.len()), Some(150));
        assert_eq!(
            t.stats().restored_objects,
            0,
            "it does not fit: read from disk"
        );
        let small = ObjectId::new();
        t.put(small, Bytes::from(vec![1u8; 60]), vec![], false)
            .expect("put");
        t.put(ObjectId::new(), Bytes::from(vec![2u8; 60]), vec![], false)
            .expect("put");
        assert_eq!(
            t.stats().used_bytes,
            60,
            "the first one spilled for the second"
        );
        t.decref(big);
        // The spilled small one is read back into memory once there is room.
        let spilled_small = t.stats().spilled_bytes == 60;
        let o = t.get(&small).expect("sealed");
        assert_eq!(o.data, Bytes::from(vec![1u8; 60]));
        if spilled_small {
            assert_eq!(t.stats().spilled_bytes, 60, "no room yet: still on disk");
        }
    }

    /// Waits for `cond` (the spill thread works on its own), failing after a generous bound.
    fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_seal_over_the_limit_leaves_the_writing_to_the_spill_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ObjectTable::with_spill_dir(100, dir.path().join("s"));
        let old = ObjectId::new();
        t.put(old, Bytes::from(vec![1u8; 80]), vec![], false)
            .expect("put");
        let new = ObjectId::new();
        t.create_pending(new);
        assert!(t.seal(new, Bytes::from(vec![2u8; 80]), vec![], false));
        assert!(t.is_ready(&new));
        until("the store is under its limit", || {
            t.stats().used_bytes <= 100
        });
        let s = t.stats();
        assert_eq!(s.used_bytes + s.spilled_bytes, 160, "{s:?}");
        assert_eq!(
            t.get(&old).map(|o| o.data),
            Some(Bytes::from(vec![1u8; 80]))
        );
        assert_eq!(
            t.get(&new).map(|o| o.data),
            Some(Bytes::from(vec![2u8; 80]))
        );
    }

    #[test]
    fn the_oldest_values_spill_first_and_a_restored_one_counts_as_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ObjectTable::with_spill_dir(100, dir.path().join("s"));
        let put = || {
            let id = ObjectId::new();
            t.put(id, Bytes::from(vec![0u8; 40]), vec![], false)
                .expect("put");
            id
        };
        let spilled = |id: &ObjectId| matches!(t.peek(id), Peek::Sealed { spilled: true, .. });
        let (a, b, c) = (put(), put(), put());
        assert!(spilled(&a) && !spilled(&b) && !spilled(&c));
        t.decref(b);
        assert_eq!(t.get(&a).map(|o| o.data.len()), Some(40));
        assert!(!spilled(&a), "restored: there is room again");
        let d = put();
        assert!(spilled(&c), "older than the restored one");
        assert!(!spilled(&a) && !spilled(&d));
        assert_eq!(t.stats().restored_objects, 1);
    }

    #[test]
    fn a_seal_never_fails_on_the_disk_but_a_put_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let t = ObjectTable::with_spill_dir(100, file.join("spill"));
        let id = ObjectId::new();
        t.create_pending(id);
        assert!(t.seal(id, Bytes::from(vec![3u8; 150]), vec![], false));
        t.relieve();
        assert_eq!(
            t.get(&id).map(|o| o.data.len()),
            Some(150),
            "kept in memory"
        );
        let err = t
            .put(ObjectId::new(), Bytes::from(vec![0u8; 10]), vec![], false)
            .expect_err("nothing can be spilled");
        assert!(
            matches!(&err, StoreError::Spill { path, .. } if path.contains("not-a-dir")),
            "{err}"
        );
    }

    #[test]
    fn peek_and_read_part_leave_a_spilled_value_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ObjectTable::with_spill_dir(100, dir.path().join("s"));
        let id = ObjectId::new();
        let value: Vec<u8> = (0..150u8).collect();
        t.put(id, Bytes::from(value.clone()), vec![], false)
            .expect("a put bigger than the store");
        assert_eq!(
            t.peek(&id),
            Peek::Sealed {
                size: 150,
                is_error: false,
                spilled: true
            }
        );
        let (size, part) = t.read_part(&id, 100, 80).expect("a part");
        assert_eq!((size, &part[..]), (150, &value[100..]));
        let (_, part) = t.read_part(&id, 10, 5).expect("a part");
        assert_eq!(&part[..], &value[10..15]);
        let s = t.stats();
        assert_eq!((s.spilled_bytes, s.restored_objects), (150, 0), "{s:?}");
        assert_eq!(t.peek(&ObjectId::new()), Peek::Missing);
    }

    #[test]
    fn concurrent_spills_and_restores_keep_every_value_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ObjectTable::with_spill_dir(1000, dir.path().join("s"));
        let ids: Vec<ObjectId> = (0..40).map(|_| ObjectId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            t.put(*id, Bytes::from(vec![i as u8; 100]), vec![], false)
                .expect("put");
        }
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let (t, ids) = (t.clone(), ids.clone());
                std::thread::spawn(move || {
                    for round in 0..20 {
                        for (i, id) in ids.iter().enumerate().skip((k + round) % 3) {
                            let o = t.get(id).expect("sealed");
                            assert!(!o.is_error, "object {i} lost");
                            assert_eq!(o.data, Bytes::from(vec![i as u8; 100]), "object {i}");
                        }
                        // Room taken by new values spills the restored ones again.
                        let extra = ObjectId::new();
                        t.put(extra, Bytes::from(vec![0u8; 300]), vec![], false)
                            .expect("put");
                        t.decref(extra);
                    }
                })
            })
            .collect();
        for h in threads {
            h.join().expect("a reader failed");
        }
        let s = t.stats();
        assert!(s.restored_objects > 0 && s.spilled_objects > 40, "{s:?}");
        for id in &ids {
            t.decref(*id);
        }
        until("every file is deleted", || {
            let s = t.stats();
            (s.used_bytes, s.spilled_bytes) == (0, 0) && files_in(&dir.path().join("s")) == 0
        });
    }

    #[test]
    fn nothing_is_spilled_once_the_directory_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = dir.path().join("s");
        let t = ObjectTable::with_spill_dir(10, spill.clone());
        t.put(ObjectId::new(), Bytes::from(vec![0u8; 20]), vec![], false)
            .expect("spilled");
        t.remove_spill_dir();
        assert!(!spill.exists());
        let err = t
            .put(ObjectId::new(), Bytes::from(vec![0u8; 20]), vec![], false)
            .expect_err("shut down");
        assert!(err.to_string().contains("shutting down"), "{err}");
        assert!(!spill.exists());
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
