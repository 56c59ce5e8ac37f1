//! Storage: the node's object table (objects, reference counts, the memory limit and the
//! waits on pending objects) and the GCS tables behind a storage trait.

pub mod buffers;
pub mod gcs_storage;
mod object_table;

use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

pub use gcs_storage::{
    GcsStorage, MemoryStorage, SledStorage, StorageError, WriteBehind, open_durable,
};
pub use object_table::{Lookup, Object, ObjectTable, Peek, StoreError, StoreStats, Waiter};

use crate::ids::ObjectId;

/// References that a queued call holds on its dependencies until it is done with them.
pub struct Pins {
    table: Arc<ObjectTable>,
    ids: Vec<ObjectId>,
}

impl Pins {
    /// Adds one reference to each id.
    pub fn new(table: &Arc<ObjectTable>, ids: impl IntoIterator<Item = ObjectId>) -> Self {
        let ids: Vec<ObjectId> = ids.into_iter().collect();
        for id in &ids {
            table.incref(*id);
        }
        Self {
            table: table.clone(),
            ids,
        }
    }

    /// Takes over references already counted for these ids.
    pub fn adopt(table: &Arc<ObjectTable>, ids: Vec<ObjectId>) -> Self {
        Self {
            table: table.clone(),
            ids,
        }
    }

    /// The pinned ids.
    pub fn ids(&self) -> &[ObjectId] {
        &self.ids
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            self.table.decref(id);
        }
    }
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pins({})", self.ids.len())
    }
}

/// Counts down once per sealed object and wakes the waiting thread at zero.
struct Latch {
    /// Goes below zero when more objects than needed are sealed.
    remaining: AtomicIsize,
    thread: Thread,
}

impl Latch {
    fn hit(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.thread.unpark();
        }
    }

    fn done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) <= 0
    }
}

/// Blocks the calling thread until `needed` of the `pending` objects are sealed (or dropped).
/// Returns false on timeout.
pub fn block_until(
    table: &ObjectTable,
    pending: &[ObjectId],
    needed: usize,
    deadline: Option<Instant>,
) -> bool {
    if needed == 0 {
        return true;
    }
    let latch = Arc::new(Latch {
        remaining: AtomicIsize::new(needed as isize),
        thread: std::thread::current(),
    });
    for id in pending {
        let l = latch.clone();
        if let Err(w) = table.subscribe(*id, Box::new(move || l.hit())) {
            w();
        }
    }
    // A result usually arrives within microseconds of the call: spin briefly before paying
    // for a sleep and a wake-up.
    spin_until(SPIN, || latch.done());
    while !latch.done() {
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return latch.done();
                }
                std::thread::park_timeout(d - now);
            }
        }
    }
    true
}

/// How long a waiting thread spins before it sleeps.
pub const SPIN: Duration = Duration::from_micros(50);

/// Spins until `ready()` or `limit` passes; returns whether it became ready.
pub fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return ready();
        }
    }
}

/// Resolves once the object is sealed or dropped.
pub async fn sealed(table: &ObjectTable, id: ObjectId) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if let Err(w) = table.subscribe(
        id,
        Box::new(move || {
            let _ = tx.send(());
        }),
    ) {
        w();
    }
    let _ = rx.await;
}

/// Runs `then` once the object is sealed or dropped: spawned on the runtime of the thread
/// that seals it, so that no other thread is woken first (on `home` when that thread runs no
/// runtime; on the caller's runtime, or `home`, when it is sealed or unknown already).
pub fn when_sealed<F>(table: &ObjectTable, id: ObjectId, home: &tokio::runtime::Handle, then: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    /// Spawns its future when dropped: run as the waiter, or dropped with the object.
    struct Then<F: std::future::Future<Output = ()> + Send + 'static> {
        f: Option<F>,
        home: tokio::runtime::Handle,
    }
    impl<F: std::future::Future<Output = ()> + Send + 'static> Drop for Then<F> {
        fn drop(&mut self) {
            if let Some(f) = self.f.take() {
                crate::spawn_here(&self.home, f);
            }
        }
    }
    let then = Then {
        f: Some(then),
        home: home.clone(),
    };
    if let Err(w) = table.subscribe(id, Box::new(move || drop(then))) {
        w();
    }
}

/// The deadline `timeout` from now.
pub fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}
