//! A small pool of large, already-touched buffers. Encoding a big value into a fresh
//! allocation costs a page fault per 4 KiB on top of the copy, and freeing it unmaps the pages
//! again; the object store instead hands freed large buffers back here and the encoder reuses
//! them, so a `put` of a large value costs about one `memcpy` (Ray's plasma store gets the same
//! effect from its preallocated arena).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

/// Buffers below this size are not pooled.
pub const POOL_MIN: usize = 1 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static POOLED_BYTES: AtomicU64 = AtomicU64::new(0);
static LIMIT: AtomicU64 = AtomicU64::new(2 << 30);
const MAX_BUFFERS: usize = 8;

/// Sets how many bytes of free buffers the pool may keep.
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// Bytes currently kept in the pool.
pub fn pooled_bytes() -> u64 {
    POOLED_BYTES.load(Ordering::Relaxed)
}

/// An empty buffer with capacity for at least `min` bytes, from the pool when one fits
/// (at most 4x larger than needed).
fn take(min: usize) -> Option<Vec<u8>> {
    let mut pool = POOL.lock();
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= min && b.capacity() / 4 <= min)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    let mut b = pool.swap_remove(best);
    POOLED_BYTES.fetch_sub(b.capacity() as u64, Ordering::Relaxed);
    b.clear();
    Some(b)
}

/// Gives a freed object's buffer back, if it is large and nobody else holds it.
pub fn recycle(data: Bytes) {
    if data.len() < POOL_MIN {
        return;
    }
    let Ok(m) = data.try_into_mut() else {
        return;
    };
    let v: Vec<u8> = m.into();
    let cap = v.capacity() as u64;
    let mut pool = POOL.lock();
    if pool.len() >= MAX_BUFFERS
        || POOLED_BYTES.load(Ordering::Relaxed) + cap > LIMIT.load(Ordering::Relaxed)
    {
        return;
    }
    POOLED_BYTES.fetch_add(cap, Ordering::Relaxed);
    pool.push(v);
}

/// A `Write` sink that moves to a pooled buffer once it grows large.
#[derive(Default)]
pub struct PooledWriter {
    buf: Vec<u8>,
}

impl PooledWriter {
    /// The written bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

impl Write for PooledWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity()
            && need >= POOL_MIN
            && let Some(mut b) = take(need.max(self.buf.capacity() * 2))
        {
            b.extend_from_slice(&self.buf);
            self.buf = b;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused() {
        let big = vec![7u8; 2 * POOL_MIN];
        let ptr = big.as_ptr();
        recycle(Bytes::from(big));
        let mut w = PooledWriter::default();
        w.write_all(&[1, 2, 3]).expect("write");
        w.write_all(&vec![0u8; POOL_MIN + 10]).expect("write");
        let v = w.into_vec();
        assert_eq!(v.len(), POOL_MIN + 13);
        assert_eq!(&v[..3], &[1, 2, 3]);
        assert_eq!(v.as_ptr(), ptr, "the pooled buffer was reused");
        // Small or shared buffers are not pooled.
        recycle(Bytes::from(vec![0u8; 10]));
        let shared = Bytes::from(vec![0u8; POOL_MIN]);
        let other = shared.clone();
        recycle(shared);
        drop(other);
    }
}
