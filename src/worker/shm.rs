//! Large values between a node and its worker processes and drivers go through shared memory
//! instead of the socket: the sender writes the value into a fresh file of `/dev/shm` (one
//! copy) and sends its name; the receiver maps it, unlinks it and uses the mapping as the
//! value's `Bytes` (no copy). Through the socket the same value cost four copies (into the
//! frame, into and out of the kernel, out of the frame).
//!
//! Only frames of the worker protocol use it: `encode_frame` / `decode_body` switch it on for
//! the current thread ([`Scope`]); anything else serializing the same types (messages between
//! nodes) sends the bytes inline, and a shared-memory reference arriving where it is not
//! switched on is refused. A receiver only maps files whose name it accepts (`mobula-shm-`
//! files directly in the shared-memory directory), so a worker cannot make its node read or
//! delete anything else.

use std::cell::Cell;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serializer};

/// Values from this size on go through shared memory.
pub const SHM_MIN: usize = 1 << 20;

const DIR: &str = "/dev/shm";
const PREFIX: &str = "mobula-shm-";

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    /// The process meant to read what this thread encodes (0: unknown, the node).
    static READER: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` (an encoding) with its shared-memory values named for process `pid`, the reader,
/// so they can be removed if that process goes away without reading them.
pub(crate) fn to_reader<R>(pid: u32, f: impl FnOnce() -> R) -> R {
    let was = READER.with(|c| c.replace(pid));
    let r = f();
    READER.with(|c| c.set(was));
    r
}

/// Removes the shared-memory values that process `pid` wrote or was meant to read and did
/// not (it is gone). Returns how many.
pub(crate) fn remove_of(pid: u32) -> usize {
    if pid == 0 || !available() {
        return 0;
    }
    let (wrote, meant) = (format!("{PREFIX}{pid}-"), format!("-{pid}-"));
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // `<writer>-<reader>-<uuid>`
        let reader_part = rest.find('-').map(|i| &rest[i..]);
        if (name.starts_with(&wrote) || reader_part.is_some_and(|r| r.starts_with(&meant)))
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Switches shared memory on for this thread while it lives (when the directory exists).
pub(crate) struct Scope(bool);

impl Scope {
    pub(crate) fn enter() -> Self {
        let was = ON.with(|c| c.replace(available()));
        Scope(was)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        ON.with(|c| c.set(self.0));
    }
}

fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| Path::new(DIR).is_dir() && std::env::var_os("MOBULA_NO_SHM").is_none())
}

fn on() -> bool {
    ON.with(Cell::get)
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Removes shared-memory values whose writer and reader are both gone (left behind by
/// processes that were killed); run when a node starts. Returns how many.
pub(crate) fn remove_orphans() -> usize {
    if !available() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|s| s.strip_prefix(PREFIX)) else {
            continue;
        };
        // `<writer>-<reader>-<uuid>`
        let mut parts = rest.splitn(3, '-');
        let (Some(w), Some(r)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        ) else {
            continue;
        };
        if !alive(w) && !alive(r) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Writes `data` to a new shared-memory file; returns its name.
fn write(data: &[u8]) -> std::io::Result<String> {
    let name = format!(
        "{PREFIX}{}-{}-{}",
        std::process::id(),
        READER.with(Cell::get),
        uuid::Uuid::new_v4().simple()
    );
    let path = Path::new(DIR).join(&name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    if let Err(e) = f.write_all(data) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(name)
}

/// A read-only mapping of a shared-memory file, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and private to this owner; the pointer is only read.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the region this owner mapped, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Maps and unlinks shared-memory file `name` of `len` bytes.
fn read(name: &str, len: u64) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    if !name.starts_with(PREFIX)
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("not a shared-memory value of mobula"));
    }
    let path: PathBuf = Path::new(DIR).join(name);
    let f = std::fs::File::open(&path)?;
    // Gone from the directory at once: the mapping keeps the memory until dropped.
    let _ = std::fs::remove_file(&path);
    let size = f.metadata()?.len();
    if size != len || len == 0 {
        return Err(bad("shared-memory value of the wrong size"));
    }
    let n = usize::try_from(len).map_err(|_| bad("shared-memory value too large"))?;
    // SAFETY: mapping a regular file we opened, read-only and private; checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            f.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Bytes::from_owner(Mapping { ptr, len: n }))
}

/// `#[serde(with = "shm")]` for a `Bytes` field.
pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    if data.len() >= SHM_MIN && on() {
        match write(data) {
            Ok(name) => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&name)?;
                t.serialize_element(&(data.len() as u64))?;
                return t.end();
            }
            Err(e) => {
                tracing::debug!(error = %e, "shared memory unavailable; sending inline");
            }
        }
    }
    s.serialize_bytes(data)
}

struct BytesOrShm;

impl<'de> Visitor<'de> for BytesOrShm {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes, or a shared-memory value")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        if !on() {
            return Err(A::Error::custom(
                "a shared-memory value where none may come",
            ));
        }
        let name: String = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("shared-memory value without a name"))?;
        let len: u64 = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("shared-memory value without a size"))?;
        read(&name, len).map_err(A::Error::custom)
    }
}

/// `#[serde(with = "shm")]` for a `Bytes` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_any(BytesOrShm)
}

/// `#[serde(with = "shm::vec")]` for a `Vec<Bytes>` field.
pub mod vec {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct One(#[serde(with = "super")] Bytes);

    /// Serializes each element as [`super::serialize`] does.
    pub fn serialize<S: Serializer>(v: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| One(b.clone())))
    }

    /// Deserializes each element as [`super::deserialize`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
        Ok(Vec::<One>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

/// `#[serde(with = "shm::objects")]` for a `Result<Vec<(Bytes, bool)>, Error>` field.
pub mod objects {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::error::Error;

    /// Object values (and whether each is an error), or why there are none.
    type Objects = Result<Vec<(Bytes, bool)>, Error>;

    #[derive(Serialize, Deserialize)]
    struct One(#[serde(with = "super")] Bytes, bool);

    /// Serializes each value as [`super::serialize`] does.
    pub fn serialize<S: Serializer>(v: &Objects, s: S) -> Result<S::Ok, S::Error> {
        let r: Result<Vec<One>, &Error> = match v {
            Ok(xs) => Ok(xs.iter().map(|(b, e)| One(b.clone(), *e)).collect()),
            Err(e) => Err(e),
        };
        r.serialize(s)
    }

    /// Deserializes each value as [`super::deserialize`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Objects, D::Error> {
        let r = Result::<Vec<One>, Error>::deserialize(d)?;
        Ok(r.map(|xs| xs.into_iter().map(|o| (o.0, o.1)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct V(#[serde(with = "super")] Bytes);

    #[test]
    fn large_values_travel_by_shared_memory_only_where_switched_on() {
        let big = Bytes::from(vec![9u8; SHM_MIN + 5]);
        let inline = rmp_serde::to_vec(&V(big.clone())).expect("encode");
        assert!(inline.len() > SHM_MIN, "off: the bytes travel inline");
        let shm = {
            let _s = Scope::enter();
            rmp_serde::to_vec(&V(big.clone())).expect("encode")
        };
        if !available() {
            return;
        }
        assert!(shm.len() < 200, "on: only a name travels");
        // Off, the receiver refuses it (and leaves the file); on, it maps and unlinks it.
        assert!(rmp_serde::from_slice::<V>(&shm).is_err());
        let back = {
            let _s = Scope::enter();
            rmp_serde::from_slice::<V>(&shm).expect("decode").0
        };
        assert_eq!(back, big);
        let _s = Scope::enter();
        assert!(rmp_serde::from_slice::<V>(&shm).is_err(), "read once");
        // Values meant for a process that is gone are removed.
        let orphan = to_reader(4_000_001, || {
            rmp_serde::to_vec(&V(big.clone())).expect("encode")
        });
        assert!(orphan.len() < 200);
        assert_eq!(remove_of(4_000_001), 1);
        // One whose writer and reader are both gone is an orphan; a live writer's is not.
        let name = format!("{PREFIX}4000002-4000003-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(Path::new(DIR).join(&name), b"x").expect("orphan");
        let live = format!(
            "{PREFIX}{}-4000003-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        std::fs::write(Path::new(DIR).join(&live), b"x").expect("live");
        remove_orphans();
        assert!(
            !Path::new(DIR).join(&name).exists(),
            "the orphan is removed"
        );
        assert!(
            Path::new(DIR).join(&live).exists(),
            "a live writer's value stays"
        );
        let _ = std::fs::remove_file(Path::new(DIR).join(&live));
        assert!(rmp_serde::from_slice::<V>(&orphan).is_err(), "removed");
        // Names outside the pattern are refused.
        let evil = rmp_serde::to_vec(&("../etc/passwd", 10u64)).expect("encode");
        assert!(rmp_serde::from_slice::<V>(&evil).is_err());
    }
}
