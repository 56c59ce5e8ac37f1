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
//!
//! A worker process or driver also encodes its large values straight into such a file
//! ([`encoding_here`], [`Writer`]): the value's `Bytes` is then a mapping of a file that still
//! has its name, and sending it hands that name over instead of writing the value again
//! ([`NAMED`]). A node hands over the same way the values it received into such a file from
//! another node ([`Landing`]), so a driver reads a value pulled from elsewhere without the
//! node copying it once more.
//!
//! Fresh shared memory costs more to allocate and free than to copy: for a large value
//! (from [`AWAY`] on) a helper thread allocates the pages from the far end while the writer
//! fills them from the near end ([`Ahead`]), mappings are not populated up front (a value
//! nobody reads costs no page-table work), and the memory of a large value let go of is
//! freed on the process's reaper thread ([`drop_away`]), not on the actor or task thread
//! that dropped it. Files of that size are also used again, with their pages, by the process
//! that created them once nobody maps them (see "Reuse of large files" below): their reader
//! marks them taken instead of unlinking them and holds a lock while it maps them.

use std::cell::Cell;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::worker::process::alive;
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
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if name
            .to_str()
            .and_then(parties)
            .is_some_and(|(w, r)| w == pid || r == pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The writer and reader pids a shared-memory file's name carries:
/// `<PREFIX><writer>-<reader>-<uuid>[-r]`.
fn parties(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.strip_prefix(PREFIX)?.splitn(3, '-');
    let w = parts.next()?.parse().ok()?;
    let r = parts.next()?.parse().ok()?;
    Some((w, r))
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

/// Removes shared-memory values whose writer and reader are both gone (left behind by
/// processes that were killed); run when a node starts and stops. Returns how many.
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
        let Some((w, r)) = name.to_str().and_then(parties) else {
            continue;
        };
        if !alive(w) && !alive(r) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// The name of a new shared-memory file of this process for reader `reader` (and its path).
fn fresh_name(reader: u32) -> (PathBuf, String) {
    let name = format!(
        "{PREFIX}{}-{reader}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    (Path::new(DIR).join(&name), name)
}

/// A fresh shared-memory file, open for writing (and reading: to map it).
fn create() -> std::io::Result<(std::fs::File, String)> {
    let (path, name) = fresh_name(READER.with(Cell::get));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((f, name))
}

/// A shared-memory file for a value of about `hint` bytes: a spare of this process if one fits
/// (renamed as a fresh file would be named, positioned at its start, with the writable mapping
/// it kept), else a fresh one. A reused file can be longer than the value.
fn create_for(hint: usize) -> std::io::Result<Held> {
    if let Some(Spare { mut held, .. }) = take_spare(hint) {
        use std::io::Seek;
        let (_, name) = fresh_name(READER.with(Cell::get));
        let moved = std::fs::rename(Path::new(DIR).join(&held.name), Path::new(DIR).join(&name))
            .and_then(|()| held.file.seek(std::io::SeekFrom::Start(0)));
        match moved {
            Ok(_) => {
                held.name = name;
                return Ok(held);
            }
            Err(e) => {
                tracing::debug!(error = %e, "a spare shared-memory file could not be reused");
                let _ = std::fs::remove_file(Path::new(DIR).join(&held.name));
                drop_away(held);
            }
        }
    }
    let (file, name) = create()?;
    Ok(Held {
        file,
        name,
        map: None,
    })
}

/// Writes `data` to a new shared-memory file; returns its name.
fn write(data: &[u8]) -> std::io::Result<String> {
    let mut held = create_for(data.len())?;
    let path = Path::new(DIR).join(&held.name);
    let written = if data.len() >= AWAY {
        fill(&held.file, held.map.take(), 0, data).map(Some)
    } else {
        held.file.write_all(data).map(|()| None)
    };
    match written {
        Ok(map) => {
            let name = held.name.clone();
            // Sent by name at once: reused once its reader lets go of it.
            if data.len() >= AWAY {
                held.map = map;
                handed_over(held);
            }
            Ok(name)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Makes `f` at least `len` bytes long (never shorter: a reused file keeps its pages).
fn grow_to(f: &std::fs::File, len: usize) -> std::io::Result<()> {
    if f.metadata()?.len() < len as u64 {
        f.set_len(len as u64)?;
    }
    Ok(())
}

/// A mapping of a shared-memory file, unmapped on drop: read-only, or writable for a
/// [`Landing`] until it is finished.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// A reader's hold on a large file while it maps it (`reuse`).
    hold: Option<Hold>,
    /// Mapped writable (and shared, from the file's start: such a mapping is kept with its
    /// file for reuse).
    writable: bool,
}

impl Mapping {
    /// Maps `len` bytes of `f` with protection `prot` and `flags`. The pages are mapped as
    /// they are first touched, not here: a value read by nobody (handed on by name, or kept
    /// unread) costs no page-table work, and one read costs a fault per 16 pages (the
    /// kernel's fault-around) instead of one walk per page up front.
    fn of(
        f: &std::fs::File,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: mapping a regular file this process opened; the mapping is owned by the
        // returned value and unmapped once, on its drop.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, f.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr,
            len,
            hold: None,
            writable: prot & libc::PROT_WRITE != 0,
        })
    }
}

// SAFETY: the mapping is owned by this value; through it the memory is only read (a
// landing's mapping is written only through `&mut Landing`).
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
        let region = Unmap {
            ptr: self.ptr as usize,
            len: self.len,
            hold: self.hold.take(),
        };
        // Unmapping a large value frees its pages (tens of milliseconds for hundreds of MiB):
        // not on the thread that let go of it, an actor's or a task's. A small one is
        // unmapped here, as `region` goes.
        if region.len >= AWAY {
            drop_away(region);
        }
    }
}

/// Values from this size on are let go of on the reaper thread ([`drop_away`]), and their
/// pages allocated by a helper thread while they are written ([`Ahead`]).
pub(crate) const AWAY: usize = 8 << 20;

/// A mapping being let go of: unmapped when dropped (on the reaper thread, for a large one).
struct Unmap {
    ptr: usize,
    len: usize,
    hold: Option<Hold>,
}

impl Drop for Unmap {
    fn drop(&mut self) {
        // SAFETY: unmapping the region its `Mapping` mapped, once (the mapping is gone).
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
        // The lock goes only once the pages are no longer mapped here.
        if let Some(h) = self.hold.take() {
            h.let_go();
        }
    }
}

type Reaped = Box<dyn Send>;

/// The reaper: a thread of this process that drops what it is given (bounded; when full, or
/// when the thread could not start, the caller drops it itself).
static REAPER: std::sync::LazyLock<Option<std::sync::mpsc::SyncSender<Reaped>>> =
    std::sync::LazyLock::new(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Reaped>(64);
        std::thread::Builder::new()
            .name("mobula-reaper".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                loop {
                    match rx.recv_timeout(SPARE_IDLE / 4) {
                        Ok(v) => drop(v),
                        Err(RecvTimeoutError::Timeout) => expire_spares(),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .map_err(|e| tracing::debug!(error = %e, "no reaper thread; large values are freed in place"))
            .ok()
            .map(|_| tx)
    });

/// Drops `v` on the reaper thread: freeing a large value (a task's result once encoded, a
/// mapping of a value) costs a page-table walk over all of it, which the thread that lets go
/// of it need not wait for.
pub(crate) fn drop_away<T: Send + 'static>(v: T) {
    // Refused (full, or no reaper): the error holds `v`, dropped here.
    if let Some(tx) = REAPER.as_ref() {
        let _ = tx.try_send(Box::new(v));
    }
}

// Reuse of large files. Fresh shared memory costs its writer a page allocation per 4 KiB
// and its last user a page freed per 4 KiB, more than copying the value; so a file of
// [`AWAY`] bytes or more is used again by the process that created it, with its pages, once
// nobody maps it. Its reader (another process, or this one) proves it has it: it takes a
// shared `flock` on its own open file, checks the name is still that file's, and renames it
// `<name>-r` ("taken") instead of unlinking it; it keeps the lock until its mapping is gone.
// The creator keeps its own open file of each value it sent (`Reuse::out`); once the value
// is taken and an exclusive `flock` of its own succeeds, no reader maps it, and the file is
// renamed back into this process's spares. A file is named to one reader once, so no reader
// can come to a file after it was taken. Spares are few, bounded in bytes, and unlinked
// after `SPARE_IDLE` unused (on the reaper thread) and when the process exits; a reader
// letting go of a file whose writer is gone unlinks it; a killed process leaves its files to
// `remove_of` / `remove_orphans`, as any file of its.

/// The suffix a reader gives a large file it maps.
const TAKEN: &str = "-r";

/// Where file `name` is once its reader took it.
fn taken_path(name: &str) -> PathBuf {
    Path::new(DIR).join(format!("{name}{TAKEN}"))
}
/// Spares kept per process, and their bytes at most (and a sixteenth of the free space:
/// every worker process of a node keeps its own).
const SPARES: usize = 4;
const SPARE_BYTES: u64 = 1 << 30;
/// A spare unused this long is unlinked.
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// Taken files watched for their reader to let go; beyond, the oldest taken ones are
/// unlinked (their reader's mapping keeps the memory) instead of waited for.
const OUT: usize = 64;

/// A large file of this process: open, its name, and the writable mapping of it from its
/// start that wrote it, if any (kept with the file, so its page tables are reused too).
struct Held {
    file: std::fs::File,
    name: String,
    map: Option<Mapping>,
}

/// A file of this process ready to be used again: its pages allocated, `cap` bytes long.
struct Spare {
    held: Held,
    cap: u64,
    since: std::time::Instant,
}

/// Files sent by name (`Held::name`), waiting to be taken and let go of, and spares.
#[derive(Default)]
struct Reuse {
    spares: Vec<Spare>,
    out: std::collections::VecDeque<Held>,
}

static REUSE: std::sync::LazyLock<parking_lot::Mutex<Reuse>> =
    std::sync::LazyLock::new(Default::default);

fn flock(f: &std::fs::File, op: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a file this process opened.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

fn inode(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// A reader's hold on a large file it maps: its open file (with the shared lock), where it
/// was renamed taken, and the pid of the process that wrote it.
struct Hold {
    file: std::fs::File,
    taken: PathBuf,
    writer: u32,
}

impl Hold {
    /// The mapping is gone: the lock goes with the file. If the writer is gone too, nobody
    /// will reuse the file: its name goes as well, or its pages would stay.
    fn let_go(self) {
        if !alive(self.writer)
            && std::fs::symlink_metadata(&self.taken)
                .is_ok_and(|m| self.file.metadata().is_ok_and(|f| inode(&f) == inode(&m)))
        {
            let _ = std::fs::remove_file(&self.taken);
        }
    }
}

/// A reader takes large file `f`, opened by its name `name` (see above): locked shared,
/// checked to be the file of that name, renamed taken (its new path is returned). The lock
/// stays while `f` is open.
fn take(f: &std::fs::File, name: &str) -> std::io::Result<PathBuf> {
    if !flock(f, libc::LOCK_SH | libc::LOCK_NB) {
        return Err(std::io::Error::other("its writer is reusing it"));
    }
    let path = Path::new(DIR).join(name);
    if inode(&f.metadata()?) != inode(&std::fs::symlink_metadata(&path)?) {
        return Err(std::io::Error::other("its name is another file's"));
    }
    let taken = taken_path(name);
    if std::fs::rename(&path, &taken).is_err() {
        // Cannot mark it taken: unlinked, as a small value is (its writer forgets it).
        std::fs::remove_file(&path)?;
    }
    Ok(taken)
}

/// A large file of this process was sent by name: watched until its reader lets go of it.
fn handed_over(held: Held) {
    release_at_exit();
    let mut r = REUSE.lock();
    r.out.push_back(held);
    reclaim(&mut r);
}

/// A large file of this process that nobody else has (never sent): a spare, or unlinked.
fn let_go(held: Held) {
    let mut r = REUSE.lock();
    keep_spare(&mut r, held);
}

/// Keeps `held` as a spare if there is room, else unlinks it.
fn keep_spare(r: &mut Reuse, held: Held) {
    let cap = held.file.metadata().map(|m| m.len()).unwrap_or(0);
    let kept: u64 = r.spares.iter().map(|s| s.cap).sum();
    let room = SPARE_BYTES.min(free_space() / 16);
    if cap >= AWAY as u64 && r.spares.len() < SPARES && kept + cap <= room {
        std::sync::LazyLock::force(&REAPER);
        release_at_exit();
        r.spares.push(Spare {
            held,
            cap,
            since: std::time::Instant::now(),
        });
    } else {
        let _ = std::fs::remove_file(Path::new(DIR).join(&held.name));
        // Its last close frees its pages: not on this thread.
        drop_away(held);
    }
}

/// Files sent whose reader let go of them become spares; files gone (removed with a dead
/// process's) are forgotten; beyond [`OUT`], the oldest taken ones are unlinked.
fn reclaim(r: &mut Reuse) {
    let mut waiting = std::collections::VecDeque::with_capacity(r.out.len());
    let mut free: Vec<Held> = Vec::new();
    let mut taken_count = 0;
    for o in std::mem::take(&mut r.out) {
        let Ok(me) = o.file.metadata().map(|m| inode(&m)) else {
            drop_away(o);
            continue;
        };
        let taken = taken_path(&o.name);
        let is_taken = std::fs::symlink_metadata(&taken).is_ok_and(|m| inode(&m) == me);
        if !is_taken {
            // Not read yet (still under its name), or gone.
            if std::fs::symlink_metadata(Path::new(DIR).join(&o.name))
                .is_ok_and(|m| inode(&m) == me)
            {
                waiting.push_back(o);
            } else {
                drop_away(o);
            }
            continue;
        }
        if flock(&o.file, libc::LOCK_EX | libc::LOCK_NB) {
            // Nobody maps it: ours again, under a spare's name (meant for no reader).
            let (path, name) = fresh_name(0);
            let moved = std::fs::rename(&taken, &path).is_ok();
            flock(&o.file, libc::LOCK_UN);
            if moved {
                free.push(Held { name, ..o });
            } else {
                let _ = std::fs::remove_file(&taken);
                drop_away(o);
            }
        } else {
            taken_count += 1;
            waiting.push_back(o);
        }
    }
    // Too many watched: the oldest taken ones are left to their readers.
    while waiting.len() > OUT && taken_count > 0 {
        let Some(pos) = waiting
            .iter()
            .position(|o| std::fs::symlink_metadata(Path::new(DIR).join(&o.name)).is_err())
        else {
            break;
        };
        if let Some(o) = waiting.remove(pos) {
            let _ = std::fs::remove_file(taken_path(&o.name));
            drop_away(o);
            taken_count -= 1;
        }
    }
    r.out = waiting;
    for held in free {
        keep_spare(r, held);
    }
}

/// The spare that best fits a value of `hint` bytes (at least that long, at most twice).
fn take_spare(hint: usize) -> Option<Spare> {
    if hint < AWAY {
        return None;
    }
    let mut r = REUSE.lock();
    reclaim(&mut r);
    let hint = hint as u64;
    let best = r
        .spares
        .iter()
        .enumerate()
        .filter(|(_, s)| s.cap >= hint && s.cap <= hint.saturating_mul(2))
        .min_by_key(|(_, s)| s.cap)
        .map(|(i, _)| i)?;
    Some(r.spares.swap_remove(best))
}

/// Unlinks spares unused for [`SPARE_IDLE`] (and reclaims what readers let go of).
fn expire_spares() {
    let mut r = REUSE.lock();
    reclaim(&mut r);
    let (keep, idle): (Vec<Spare>, Vec<Spare>) = std::mem::take(&mut r.spares)
        .into_iter()
        .partition(|s| s.since.elapsed() < SPARE_IDLE);
    r.spares = keep;
    drop(r);
    for s in idle {
        let _ = std::fs::remove_file(Path::new(DIR).join(&s.held.name));
    }
}

/// Unlinks this process's spares and the taken files it watches (a node stopping, or this
/// process exiting); a file not taken yet is left to its reader ([`Hold::let_go`]).
pub(crate) fn release_spares() {
    release(&mut REUSE.lock());
}

/// Makes this process release its spares when it exits (registered once).
fn release_at_exit() {
    extern "C" fn at_exit() {
        // Never waits at exit: a thread holding the table (if any) is stopped mid-way.
        if let Some(mut r) = REUSE.try_lock() {
            release(&mut r);
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: atexit(3) with a function that takes no arguments and does not unwind.
        unsafe {
            libc::atexit(at_exit);
        }
    });
}

fn release(r: &mut Reuse) {
    for s in r.spares.drain(..) {
        let _ = std::fs::remove_file(Path::new(DIR).join(&s.held.name));
    }
    for o in r.out.drain(..) {
        let _ = std::fs::remove_file(taken_path(&o.name));
    }
}

/// Allocates the pages of a large value's range `from..to` on a helper thread, from the end
/// backwards, while its writer fills it from the start and says how far it got
/// ([`Ahead::reached`]); the two meet in the middle, so each page is allocated once and the
/// allocation (most of the cost of filling fresh shared memory) is split over two cores.
struct Ahead {
    reached: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ahead {
    /// Pages are allocated this many bytes at a time.
    const STEP: usize = 2 << 20;

    /// A helper populating bytes `from..` of writable mapping `map`, which must outlive the
    /// returned value (dropping it stops and joins the helper). `None` for a range too small
    /// to be worth a thread, or if none could start.
    fn populate(map: &Mapping, from: usize) -> Option<Ahead> {
        use std::sync::atomic::Ordering;
        let (base, to) = (map.ptr as usize, map.len);
        if to.saturating_sub(from) < AWAY {
            return None;
        }
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(from));
        let seen = reached.clone();
        let thread = std::thread::Builder::new()
            .name("mobula-pages".into())
            .spawn(move || {
                let mut end = to;
                while end > from {
                    let start = ((end - 1) / Self::STEP * Self::STEP).max(from);
                    // The writer is in this step already: it allocates the rest as it goes.
                    if seen.load(Ordering::Acquire) + Self::STEP >= start {
                        break;
                    }
                    // SAFETY: `base..base + to` stays mapped while the helper runs (its owner
                    // drops the helper first); populating only allocates and maps pages, it
                    // writes nothing.
                    let done = unsafe {
                        libc::madvise(
                            (base + start) as *mut libc::c_void,
                            end - start,
                            libc::MADV_POPULATE_WRITE,
                        ) == 0
                    };
                    if !done {
                        break;
                    }
                    end = start;
                }
            })
            .ok()?;
        Some(Ahead {
            reached,
            thread: Some(thread),
        })
    }

    /// The writer has filled everything before `at`.
    fn reached(&self, at: usize) {
        self.reached.store(at, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Ahead {
    /// Stops the helper (it finishes the step it is on) and waits for it, so it never touches
    /// a range its owner let go of.
    fn drop(&mut self) {
        self.reached(usize::MAX / 2);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Maps and unlinks shared-memory file `name` of `len` bytes.
fn read(name: &str, len: u64) -> std::io::Result<Bytes> {
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
    let n = usize::try_from(len).map_err(|_| bad("shared-memory value too large"))?;
    let taken = if n >= AWAY {
        // Large: its writer reuses the file once no reader holds it (`reuse`). Locked first,
        // then checked to still be the file of that name, then renamed "taken".
        let t =
            take(&f, name).map_err(|e| bad(&format!("shared-memory value not readable: {e}")))?;
        Some(t)
    } else {
        // Gone from the directory at once: the mapping keeps the memory until dropped.
        let _ = std::fs::remove_file(&path);
        None
    };
    // A reused file can be longer than the value it holds, never shorter.
    let size = f.metadata()?.len();
    if size < len || len == 0 {
        return Err(bad("shared-memory value of the wrong size"));
    }
    let mut map = Mapping::of(&f, n, libc::PROT_READ, libc::MAP_PRIVATE)?;
    if let Some(taken) = taken {
        // A name not of the usual form has no writer to wait for (0: never alive).
        let writer = parties(name).map_or(0, |(w, _)| w);
        map.hold = Some(Hold {
            file: f,
            taken,
            writer,
        });
    }
    Ok(Bytes::from_owner(map))
}

/// This process's shared-memory files that still have their name, by the address of the
/// value's first byte: (its length, the file's name). A value found here is sent by name and
/// leaves the table; whoever maps it then unlinks it.
static NAMED: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<usize, (usize, String)>>,
> = std::sync::LazyLock::new(Default::default);

static ENCODE_HERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process (a worker process or a driver, which send their values to a node
/// through shared memory) encode large values straight into shared-memory files.
pub(crate) fn encode_here() {
    ENCODE_HERE.store(available(), std::sync::atomic::Ordering::Relaxed);
}

/// Whether large values encoded in this process go straight into shared memory.
pub(crate) fn encoding_here() -> bool {
    ENCODE_HERE.load(std::sync::atomic::Ordering::Relaxed)
}

/// A shared-memory file of this process mapped as a value; unlinked on drop unless its name
/// was handed over.
struct Named {
    /// Maps at least the value's `len` bytes (`None` only while dropped).
    map: Option<Mapping>,
    len: usize,
    /// The file and its name, for a value large enough to reuse the file of (`reuse`).
    file: Option<(std::fs::File, String)>,
}

impl AsRef<[u8]> for Named {
    fn as_ref(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m.as_ref()[..self.len],
            None => &[],
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else {
            return;
        };
        let unsent = NAMED.lock().remove(&(map.ptr as usize));
        let held = |(file, name)| Held {
            file,
            name,
            // Only a writable mapping is worth keeping for the next value.
            map: Some(map).filter(|m| m.writable),
        };
        match (unsent, self.file.take()) {
            // Never sent: nobody else has it.
            (Some(_), Some(f)) => let_go(held(f)),
            (Some((_, name)), None) => {
                let _ = std::fs::remove_file(Path::new(DIR).join(name));
            }
            // Sent: reused once its reader lets go of it.
            (None, Some(f)) => handed_over(held(f)),
            (None, None) => {}
        }
    }
}

/// Maps `f` (`len` bytes, named `name`) as a value that keeps its name until sent; `map`, a
/// writable mapping of it from its start, is used if it reaches far enough.
fn map_named(
    f: std::fs::File,
    name: String,
    len: usize,
    map: Option<Mapping>,
) -> std::io::Result<Bytes> {
    let map = match map {
        Some(m) if m.len >= len => m,
        other => {
            drop(other);
            // Shared: its pages are the file's (nobody writes it after this).
            Mapping::of(&f, len, libc::PROT_READ, libc::MAP_SHARED).inspect_err(|_| {
                let _ = std::fs::remove_file(Path::new(DIR).join(&name));
            })?
        }
    };
    Ok(named(
        map,
        len,
        (len >= AWAY).then(|| (f, name.clone())),
        name,
    ))
}

/// The first `len` bytes of `map` as a named value of this process.
fn named(map: Mapping, len: usize, file: Option<(std::fs::File, String)>, name: String) -> Bytes {
    NAMED.lock().insert(map.ptr as usize, (len, name));
    Bytes::from_owner(Named {
        map: Some(map),
        len,
        file,
    })
}

/// The name of `data`'s file if it is the whole of a named value of this process; it is
/// handed over (the receiver unlinks it), so a later send writes a copy.
fn hand_over(data: &Bytes) -> Option<String> {
    let mut named = NAMED.lock();
    let at = data.as_ptr() as usize;
    match named.get(&at) {
        Some((len, _)) if *len == data.len() => named.remove(&at).map(|(_, n)| n),
        _ => None,
    }
}

/// Free bytes in the shared-memory directory (0 if unknown).
fn free_space() -> u64 {
    let Ok(dir) = std::ffi::CString::new(DIR) else {
        return 0;
    };
    // SAFETY: statvfs(3) fills the zeroed struct for a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(dir.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
    }
}

/// A value of known size being received into a shared-memory file (mapped writable; a spare
/// of this process if one fits); [`Landing::finish`] makes it a named value. Dropped
/// unfinished, it leaves nothing behind.
pub(crate) struct Landing {
    /// Dropped before `map` (fields drop in order).
    ahead: Option<Ahead>,
    /// Maps at least `len` bytes.
    map: Option<Mapping>,
    len: usize,
    name: String,
    file: Option<std::fs::File>,
}

impl Landing {
    /// A landing for `len` bytes (at least [`SHM_MIN`]), or `None` where shared memory is not
    /// available or `len` is small.
    pub(crate) fn new(len: usize) -> Option<Landing> {
        // The size is a peer's word: only what the shared-memory directory has room for.
        if len < SHM_MIN || !available() || len as u64 > free_space() / 2 {
            return None;
        }
        let made = (|| {
            let Held { file, name, map } = create_for(len)?;
            // Shared and writable: only this landing writes it until it is finished.
            match writable(&file, map, len, 0) {
                // The landing stops its helper before unmapping.
                Ok((map, ahead)) => Ok(Landing {
                    ahead,
                    map: Some(map),
                    len,
                    name,
                    file: Some(file),
                }),
                Err(e) => {
                    let _ = std::fs::remove_file(Path::new(DIR).join(&name));
                    Err(e)
                }
            }
        })();
        made.map_err(|e: std::io::Error| tracing::debug!(error = %e, "no shared memory for a received value"))
            .ok()
    }

    /// The bytes to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match &self.map {
            // SAFETY: `ptr` maps at least `len` writable bytes, written only through this
            // landing.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.ptr as *mut u8, self.len) },
            None => &mut [],
        }
    }

    /// The bytes before `at` are filled.
    pub(crate) fn filled(&self, at: usize) {
        if let Some(a) = &self.ahead {
            a.reached(at);
        }
    }

    /// The received value, named (sent by name to a local reader).
    pub(crate) fn finish(mut self) -> Bytes {
        self.ahead = None;
        let Some(map) = self.map.take() else {
            return Bytes::new();
        };
        let name = std::mem::take(&mut self.name);
        let file = self
            .file
            .take()
            .filter(|_| self.len >= AWAY)
            .map(|f| (f, name.clone()));
        named(map, self.len, file, name)
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.ahead = None;
        if self.map.take().is_some() {
            let _ = std::fs::remove_file(Path::new(DIR).join(&self.name));
        }
    }
}

/// A writable mapping of `f`'s first `len` bytes (the file grown to that length if shorter):
/// `map` if it is one reaching that far (a reused file's: its pages are mapped already), else
/// a new one, with a helper populating its pages from `from` on ([`Ahead`]; drop it first).
fn writable(
    f: &std::fs::File,
    map: Option<Mapping>,
    len: usize,
    from: usize,
) -> std::io::Result<(Mapping, Option<Ahead>)> {
    grow_to(f, len)?;
    match map {
        Some(m) if m.writable && m.len >= len => Ok((m, None)),
        other => {
            drop(other);
            let m = Mapping::of(f, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)?;
            let ahead = Ahead::populate(&m, from);
            Ok((m, ahead))
        }
    }
}

/// An encoding's output: in memory while small, moved into a shared-memory file once it
/// reaches [`SHM_MIN`] (large writes go to the file directly, without a copy in memory).
pub(crate) struct Writer {
    mem: Vec<u8>,
    file: Option<(std::io::BufWriter<std::fs::File>, String)>,
    /// The writable mapping of the file from its start that large writes went through.
    map: Option<Mapping>,
    len: usize,
    failed: bool,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer {
            mem: Vec::new(),
            file: None,
            map: None,
            len: 0,
            failed: false,
        }
    }

    /// The value written: a mapping of its file, or the bytes in memory.
    pub(crate) fn finish(mut self) -> std::io::Result<Bytes> {
        let Some((w, name)) = self.file.take() else {
            return Ok(Bytes::from(std::mem::take(&mut self.mem)));
        };
        let path = Path::new(DIR).join(&name);
        let f = match w.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e.into_error());
            }
        };
        // A reused file may be longer than this value: it keeps its pages.
        map_named(f, name, self.len, self.map.take())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An encoding that failed before `finish` leaves no file behind.
        if let Some((_, name)) = &self.file {
            let _ = std::fs::remove_file(Path::new(DIR).join(name));
        }
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() && !self.failed && self.mem.len() + data.len() >= SHM_MIN {
            match create_for(self.mem.len() + data.len()) {
                Ok(Held { file, name, map }) => {
                    let mut w = std::io::BufWriter::with_capacity(256 << 10, file);
                    w.write_all(&self.mem)?;
                    self.mem = Vec::new();
                    self.file = Some((w, name));
                    self.map = map;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "shared memory unavailable; encoding in memory");
                    self.failed = true;
                }
            }
        }
        let at = self.len;
        self.len += data.len();
        match &mut self.file {
            Some((w, _)) if data.len() >= AWAY => {
                // A large write goes through a mapping of the file (through write(2), its
                // helper and this thread would queue on the file's lock).
                use std::io::Seek;
                w.flush()?;
                let f = w.get_mut();
                self.map = Some(fill(f, self.map.take(), at, data)?);
                f.seek(std::io::SeekFrom::Start((at + data.len()) as u64))?;
            }
            Some((w, _)) => w.write_all(data)?,
            None => self.mem.extend_from_slice(data),
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies `data` into bytes `at..` of `f` (grown to that length) through a writable
/// mapping ([`writable`]: `map` if it reaches far enough); returns the mapping, to keep.
fn fill(
    f: &std::fs::File,
    map: Option<Mapping>,
    at: usize,
    data: &[u8],
) -> std::io::Result<Mapping> {
    let end = at + data.len();
    let (map, ahead) = writable(f, map, end, at)?;
    let base = map.ptr as usize;
    let mut done = at;
    for part in data.chunks(Ahead::STEP) {
        // SAFETY: `done..done + part.len()` lies within the `end` writable bytes mapped, which
        // only this function writes.
        unsafe {
            std::ptr::copy_nonoverlapping(part.as_ptr(), (base + done) as *mut u8, part.len());
        }
        done += part.len();
        if let Some(a) = &ahead {
            a.reached(done);
        }
    }
    drop(ahead);
    Ok(map)
}

/// `#[serde(with = "shm")]` for a `Bytes` field.
pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    if data.len() >= SHM_MIN && on() {
        let named = hand_over(data).map(Ok);
        match named.unwrap_or_else(|| write(data)) {
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

    /// `b` encoded with shared memory switched on, as a worker frame is.
    fn send(b: Bytes) -> Vec<u8> {
        let _s = Scope::enter();
        rmp_serde::to_vec(&V(b)).expect("encode")
    }

    /// `wire` decoded with shared memory switched on, as a worker frame is.
    fn receive(wire: &[u8]) -> Bytes {
        let _s = Scope::enter();
        rmp_serde::from_slice::<V>(wire).expect("decode").0
    }

    #[test]
    fn named_values_are_handed_over_once_and_leave_nothing_behind() {
        if !available() {
            return;
        }
        let file_of = |b: &Bytes| {
            NAMED
                .lock()
                .get(&(b.as_ptr() as usize))
                .map(|(_, n)| Path::new(DIR).join(n))
        };
        // Small output stays in memory; large output is a named file, written as it grows.
        let mut w = Writer::new();
        w.write_all(b"small").expect("write");
        let small = w.finish().expect("finish");
        assert_eq!(&small[..], b"small");
        assert!(file_of(&small).is_none());
        let mut w = Writer::new();
        w.write_all(&[1, 2, 3]).expect("write");
        w.write_all(&vec![4u8; SHM_MIN]).expect("write");
        let big = w.finish().expect("finish");
        assert_eq!(big.len(), SHM_MIN + 3);
        assert_eq!((&big[..3], big[SHM_MIN + 2]), (&[1u8, 2, 3][..], 4));
        let path = file_of(&big).expect("a named file");
        assert!(path.exists());
        // Sent: by name, without a new file; the receiver maps and unlinks it.
        let wire = send(big.clone());
        assert!(wire.len() < 200);
        assert!(file_of(&big).is_none(), "handed over");
        let back = receive(&wire);
        assert_eq!(back, big);
        assert!(!path.exists(), "the receiver unlinked it");
        // A second send writes a copy.
        let again = send(big.clone());
        let copy = receive(&again);
        assert_eq!(copy, big);
        // A named value dropped unsent removes its file; so do an unfinished writer and
        // landing.
        let mut w = Writer::new();
        w.write_all(&vec![5u8; SHM_MIN]).expect("write");
        let unsent = w.finish().expect("finish");
        let p = file_of(&unsent).expect("named");
        drop(unsent);
        assert!(!p.exists());
        let mut w = Writer::new();
        w.write_all(&vec![5u8; SHM_MIN]).expect("write");
        let p = Path::new(DIR).join(&w.file.as_ref().expect("a file").1);
        drop(w);
        assert!(!p.exists());
        let landing = Landing::new(SHM_MIN).expect("a landing");
        let p = Path::new(DIR).join(&landing.name);
        assert!(p.exists());
        drop(landing);
        assert!(!p.exists());
        // A landing, filled and finished, is a named value like a writer's.
        let mut landing = Landing::new(SHM_MIN + 1).expect("a landing");
        landing.bytes_mut().fill(6);
        let got = landing.finish();
        assert!(got.iter().all(|&b| b == 6) && got.len() == SHM_MIN + 1);
        let p = file_of(&got).expect("named");
        drop(got);
        assert!(!p.exists());
        assert!(
            Landing::new(SHM_MIN - 1).is_none(),
            "small values land in memory"
        );
    }

    #[test]
    fn large_values_are_written_whole_while_a_helper_allocates_their_pages() {
        if !available() {
            return;
        }
        // A pattern that shows any byte out of place; the large write starts at an offset
        // that is not a page's.
        let pattern = |n: usize, seed: u8| -> Vec<u8> {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
                .collect()
        };
        let head = pattern(SHM_MIN - 5, 1);
        let body = pattern(2 * AWAY + Ahead::STEP / 3, 2);
        let tail = pattern(1000, 3);
        let mut w = Writer::new();
        w.write_all(&head).expect("write");
        w.write_all(&body).expect("large write");
        w.write_all(&tail).expect("write after it");
        let got = w.finish().expect("finish");
        assert_eq!(got.len(), head.len() + body.len() + tail.len());
        assert!(
            got[..head.len()] == head[..],
            "the bytes before the large write"
        );
        assert!(
            got[head.len()..head.len() + body.len()] == body[..],
            "the large write"
        );
        assert!(
            got[head.len() + body.len()..] == tail[..],
            "the bytes after it"
        );
        // A landing filled in frames, saying how far it got, as the data plane fills one.
        let value = pattern(AWAY + 3 * Ahead::STEP + 17, 4);
        let mut landing = Landing::new(value.len()).expect("a landing");
        assert!(landing.ahead.is_some(), "a helper for a large landing");
        let mut at = 0;
        for frame in value.chunks(1 << 20) {
            landing.bytes_mut()[at..at + frame.len()].copy_from_slice(frame);
            at += frame.len();
            landing.filled(at);
        }
        let got = landing.finish();
        assert!(got[..] == value[..]);
        // Never sent, it is kept as a spare of this process (or unlinked if there is no room).
        let name = NAMED
            .lock()
            .get(&(got.as_ptr() as usize))
            .map(|(_, n)| n.clone())
            .expect("named");
        drop(got);
        let spare = REUSE.lock().spares.iter().any(|s| s.held.name == name);
        assert_eq!(Path::new(DIR).join(&name).exists(), spare);
        // A landing dropped half filled stops its helper and leaves nothing behind.
        let mut half = Landing::new(2 * AWAY).expect("a landing");
        half.bytes_mut()[..AWAY / 2].fill(7);
        half.filled(AWAY / 2);
        let p = Path::new(DIR).join(&half.name);
        drop(half);
        assert!(!p.exists());
    }

    #[test]
    fn a_large_file_is_reused_once_its_reader_lets_go_and_not_before() {
        use std::os::unix::fs::MetadataExt;
        if !available() {
            return;
        }
        // Its own size: no other test's spare fits it, nor it theirs.
        let n = 5 * AWAY + 11;
        let write = |b: u8| {
            let mut w = Writer::new();
            w.write_all(&vec![b; n]).expect("write");
            w.finish().expect("finish")
        };
        let ino = |b: &Bytes| {
            let name = NAMED
                .lock()
                .get(&(b.as_ptr() as usize))
                .map(|(_, n)| n.clone());
            std::fs::metadata(Path::new(DIR).join(name.expect("named")))
                .expect("its file")
                .ino()
        };
        let first = write(1);
        let first_ino = ino(&first);
        // Sent by name and read (here, as another process would): the reader holds it.
        let wire = send(first);
        let read = receive(&wire);
        assert!(read.iter().all(|&b| b == 1) && read.len() == n);
        // While the reader maps it, a new value gets another file and the read one stays.
        let second = write(2);
        let second_ino = ino(&second);
        assert_ne!(second_ino, first_ino, "not reused while its reader maps it");
        assert!(
            read.iter().all(|&b| b == 1),
            "the reader's value is untouched"
        );
        // Once the reader lets go (its unmapping runs on the reaper), the file is a spare.
        drop(read);
        let mut spare = false;
        for _ in 0..6000 {
            let mut r = REUSE.lock();
            reclaim(&mut r);
            spare = r
                .spares
                .iter()
                .any(|s| s.held.file.metadata().is_ok_and(|m| m.ino() == first_ino));
            drop(r);
            if spare {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(spare, "never: the read file became a spare");
        let third = write(3);
        assert_eq!(ino(&third), first_ino, "the spare is reused");
        assert!(third.iter().all(|&b| b == 3) && third.len() == n);
        assert!(second.iter().all(|&b| b == 2));
        drop(second);
        // A shorter value in a reused file is its own length, to its writer and its reader.
        drop(third);
        let mut w = Writer::new();
        w.write_all(&vec![4u8; n - AWAY]).expect("write");
        let fourth = w.finish().expect("finish");
        assert!(
            [first_ino, second_ino].contains(&ino(&fourth)),
            "one of the two spares (the second value's and the third's) is reused"
        );
        assert!(fourth.iter().all(|&b| b == 4) && fourth.len() == n - AWAY);
        let wire = send(fourth);
        let fourth = receive(&wire);
        assert!(fourth.iter().all(|&b| b == 4) && fourth.len() == n - AWAY);
        // Spares unused for a while are unlinked.
        drop(fourth);
        let names: Vec<String> = {
            let mut r = REUSE.lock();
            for s in &mut r.spares {
                s.since -= SPARE_IDLE;
            }
            r.spares.iter().map(|s| s.held.name.clone()).collect()
        };
        expire_spares();
        for name in names {
            assert!(
                !Path::new(DIR).join(name).exists(),
                "an idle spare is unlinked"
            );
        }
    }

    #[test]
    fn drop_away_frees_on_the_reaper_thread() {
        struct Tell(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .send(std::thread::current().name().map(str::to_string));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        drop_away(Tell(tx));
        let on = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("dropped");
        assert_eq!(on.as_deref(), Some("mobula-reaper"));
    }

    #[test]
    fn large_values_travel_by_shared_memory_only_where_switched_on() {
        let big = Bytes::from(vec![9u8; SHM_MIN + 5]);
        let inline = rmp_serde::to_vec(&V(big.clone())).expect("encode");
        assert!(inline.len() > SHM_MIN, "off: the bytes travel inline");
        let shm = send(big.clone());
        if !available() {
            return;
        }
        assert!(shm.len() < 200, "on: only a name travels");
        // Off, the receiver refuses it (and leaves the file); on, it maps and unlinks it.
        assert!(rmp_serde::from_slice::<V>(&shm).is_err());
        let back = receive(&shm);
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
