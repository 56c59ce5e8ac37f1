//! The storage behind the GCS tables: a small key-value trait (table, key) -> bytes, with an
//! in-memory implementation. The sled implementation for head recovery plugs in here.

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
}
