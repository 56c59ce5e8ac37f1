//! The storage behind the GCS tables: a small key-value trait (table, key) -> bytes, with an
//! in-memory implementation and a durable one on sled (`open_durable`).
//!
//! Durability policy of `open_durable`: the GCS never waits for the disk. Writes update an
//! in-memory mirror at once (reads are served from it) and go, in order, over a bounded
//! channel to a `mobula-gcs-storage` thread, which applies them to sled (one tree per table)
//! and flushes after each batch it drained (group commit). A write is therefore on disk
//! within one flush of its arrival, typically a millisecond; a crash loses at most the
//! writes of the batch being flushed. Dropping the storage drains the channel and flushes.

use std::collections::BTreeMap;

use parking_lot::Mutex;

/// Every (key, value) of a table.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Errors of a GCS storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend failed to read or write.
    #[error("gcs storage failed: {0}")]
    Backend(String),
}

/// Durable (or not) storage of GCS tables.
pub trait GcsStorage: Send + Sync + 'static {
    /// Writes a value.
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Reads a value.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Deletes a value; returns whether it existed.
    fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError>;
    /// Every (key, value) of a table, in key order.
    fn scan(&self, table: &str) -> Result<Rows, StorageError>;
    /// Resolves once every write made so far is durable (at once for storage in memory).
    /// The GCS awaits it before acknowledging a write to a client, without blocking.
    fn synced(&self) -> futures::channel::oneshot::Receiver<()> {
        let (tx, rx) = futures::channel::oneshot::channel();
        let _ = tx.send(());
        rx
    }
}

/// GCS storage in memory: lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    tables: Mutex<BTreeMap<String, Table>>,
}

impl GcsStorage for MemoryStorage {
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tables
            .lock()
            .entry(table.to_string())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tables
            .lock()
            .get(table)
            .and_then(|t| t.get(key).cloned()))
    }

    fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self
            .tables
            .lock()
            .get_mut(table)
            .is_some_and(|t| t.remove(key).is_some()))
    }

    fn scan(&self, table: &str) -> Result<Rows, StorageError> {
        Ok(self
            .tables
            .lock()
            .get(table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

/// One tree per table in a sled database.
pub struct SledStorage {
    db: sled::Db,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl SledStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StorageError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StorageError::Backend(format!(
                "gcs storage {} is not a directory",
                dir.display()
            )));
        }
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                StorageError::Backend(format!("cannot open gcs storage {}: {e}", dir.display()))
            })?;
        Ok(Self { db })
    }

    fn tree(&self, table: &str) -> Result<sled::Tree, StorageError> {
        self.db.open_tree(table).map_err(backend)
    }

    /// Every table's name.
    fn tables(&self) -> Vec<String> {
        self.db
            .tree_names()
            .into_iter()
            .filter(|n| n.as_ref() != b"__sled__default")
            .filter_map(|n| String::from_utf8(n.to_vec()).ok())
            .collect()
    }

    /// Writes what the storage has to disk.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

impl GcsStorage for SledStorage {
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tree(table)?
            .insert(key, value)
            .map(|_| ())
            .map_err(backend)
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree(table)?
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.tree(table)?.remove(key).map_err(backend)?.is_some())
    }

    fn scan(&self, table: &str) -> Result<Rows, StorageError> {
        self.tree(table)?
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }
}

/// A write on its way to disk, or a wish to hear when the writes before it are.
enum Op {
    Put(String, Vec<u8>, Vec<u8>),
    Delete(String, Vec<u8>),
    Sync(futures::channel::oneshot::Sender<()>),
}

/// Writes queued at most (then `put` waits: back-pressure on a disk that cannot keep up).
const WRITE_QUEUE: usize = 65_536;

/// Reads from memory, writes behind to sled on a thread of its own (the policy atop).
pub struct WriteBehind {
    mirror: MemoryStorage,
    tx: Option<flume::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl WriteBehind {
    fn send(&self, op: Op) -> Result<(), StorageError> {
        match &self.tx {
            Some(tx) => tx
                .send(op)
                .map_err(|_| StorageError::Backend("the gcs storage writer stopped".into())),
            None => Err(StorageError::Backend("the gcs storage is closed".into())),
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn apply(db: &SledStorage, op: Op, synced: &mut Vec<futures::channel::oneshot::Sender<()>>) {
    let r = match op {
        Op::Put(t, k, v) => db.put(&t, &k, &v),
        Op::Delete(t, k) => db.delete(&t, &k).map(|_| ()),
        Op::Sync(done) => {
            synced.push(done);
            Ok(())
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "gcs storage write failed");
    }
}

impl GcsStorage for WriteBehind {
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.mirror.put(table, key, value)?;
        self.send(Op::Put(table.to_string(), key.to_vec(), value.to_vec()))
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.mirror.get(table, key)
    }

    fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        let existed = self.mirror.delete(table, key)?;
        self.send(Op::Delete(table.to_string(), key.to_vec()))?;
        Ok(existed)
    }

    fn scan(&self, table: &str) -> Result<Rows, StorageError> {
        self.mirror.scan(table)
    }

    fn synced(&self) -> futures::channel::oneshot::Receiver<()> {
        let (tx, rx) = futures::channel::oneshot::channel();
        // A closed writer drops the sender: the receiver then reports cancellation.
        let _ = self.send(Op::Sync(tx));
        rx
    }
}

/// Opens durable GCS storage in `dir` (see the policy atop): loads every table into memory,
/// then writes behind to sled. An unreadable or unusable `dir` is an error here, at start.
pub fn open_durable(dir: &std::path::Path) -> Result<WriteBehind, StorageError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StorageError::Backend(format!(
            "gcs storage {} is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        StorageError::Backend(format!("cannot create gcs storage {}: {e}", dir.display()))
    })?;
    let db = SledStorage::open(dir)?;
    let mirror = MemoryStorage::default();
    let mut rows = 0usize;
    for table in db.tables() {
        for (k, v) in db.scan(&table)? {
            mirror.put(&table, &k, &v)?;
            rows += 1;
        }
    }
    tracing::info!(dir = %dir.display(), rows, "gcs storage opened");
    let (tx, rx) = flume::bounded::<Op>(WRITE_QUEUE);
    let writer = std::thread::Builder::new()
        .name("mobula-gcs-storage".to_string())
        .spawn(move || {
            let mut synced = Vec::new();
            while let Ok(op) = rx.recv() {
                apply(&db, op, &mut synced);
                for op in rx.try_iter() {
                    apply(&db, op, &mut synced);
                }
                match db.flush() {
                    Ok(()) => synced.drain(..).for_each(|s| {
                        let _ = s.send(());
                    }),
                    // Waiters see their sender dropped: the write is not known to be durable.
                    Err(e) => {
                        tracing::error!(error = %e, "gcs storage flush failed");
                        synced.clear();
                    }
                }
            }
            if let Err(e) = db.flush() {
                tracing::error!(error = %e, "gcs storage flush failed");
            }
        })
        .map_err(backend)?;
    Ok(WriteBehind {
        mirror,
        tx: Some(tx),
        writer: Some(writer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_round_trips() {
        let s = MemoryStorage::default();
        s.put("kv", b"a", b"1").expect("put");
        s.put("kv", b"b", b"2").expect("put");
        assert_eq!(s.get("kv", b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(s.scan("kv").expect("scan").len(), 2);
        assert!(s.delete("kv", b"a").expect("delete"));
        assert!(!s.delete("kv", b"a").expect("delete"));
        assert_eq!(s.get("other", b"a").expect("get"), None);
    }

    #[test]
    fn durable_storage_survives_reopening() {
        let d = tempfile::tempdir().expect("temp dir");
        let path = d.path().join("gcs");
        {
            let s = open_durable(&path).expect("open");
            s.put("kv", b"a", b"1").expect("put");
            s.put("kv", b"b", b"2").expect("put");
            s.put("jobs", b"j", b"x").expect("put");
            assert!(s.delete("kv", b"b").expect("delete"));
            assert_eq!(s.get("kv", b"a").expect("get"), Some(b"1".to_vec()));
            futures::executor::block_on(s.synced()).expect("durable");
        }
        let s = open_durable(&path).expect("reopen");
        assert_eq!(s.get("kv", b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(s.get("kv", b"b").expect("get"), None);
        assert_eq!(s.scan("jobs").expect("scan").len(), 1);
    }

    #[test]
    fn a_file_in_place_of_the_storage_dir_is_an_error() {
        let d = tempfile::tempdir().expect("temp dir");
        let path = d.path().join("not-a-dir");
        std::fs::write(&path, b"x").expect("write");
        let err = open_durable(&path).err().expect("an error");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
