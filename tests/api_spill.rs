//! Object spilling through the public API. An embedded runtime with a 64 MiB store takes ten
//! 16 MiB puts and a put bigger than the whole store: they go to files in its spill
//! directory, come back intact, are task and async actor call arguments, a task result over
//! the limit spills too, and freeing them deletes the files. A head started with
//! `--object-store-memory` does the same for a driver over its socket with worker processes
//! (spilled task and constructor arguments are read off the raylet's thread), and `/metrics`
//! reports the spilling; another node pulls spilled values from it, small ones too (read from
//! the files, not restored).

mod common;

use common::cluster::{connect, head_with};
use common::http::get_typed;
use mobula::{SchedulingStrategy, TaskOptions};
use serde_bytes::ByteBuf;

const MIB: usize = 1 << 20;
const STORE: usize = 64 * MIB;
const VALUE: usize = 16 * MIB;
const VALUES: u8 = 10;

/// Value `i`: distinct at both ends, so a mixed-up or cut value shows.
fn value(i: u8) -> Vec<u8> {
    let mut v = vec![i; VALUE];
    v[..8].copy_from_slice(&u64::from(i).to_le_bytes());
    v[VALUE - 1] = !i;
    v
}

/// What a task reports of a value: its length and both ends.
fn digest_of(b: &[u8]) -> (usize, u64, u8) {
    let head = b
        .get(..8)
        .and_then(|h| <[u8; 8]>::try_from(h).ok())
        .map_or(u64::MAX, u64::from_le_bytes);
    (b.len(), head, b.last().copied().unwrap_or(0))
}

#[mobula::remote]
fn digest(b: ByteBuf) -> (usize, u64, u8) {
    digest_of(&b)
}

#[mobula::actor]
pub struct Digester;

#[mobula::actor]
impl Digester {
    pub fn new() -> Self {
        Digester
    }

    /// An async method: its spilled arguments are read off the actor's event loop.
    pub async fn digest(&self, b: ByteBuf) -> (usize, u64, u8) {
        digest_of(&b)
    }
}

/// A sync actor built from a (spilled) value: the raylet reads constructor arguments back
/// off its thread before the host starts.
#[mobula::actor]
pub struct Holder {
    held: (usize, u64, u8),
}

#[mobula::actor]
impl Holder {
    pub fn new(b: ByteBuf) -> Self {
        Holder {
            held: digest_of(&b),
        }
    }

    pub fn held(&self) -> (usize, u64, u8) {
        self.held
    }
}

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::remote]
fn make(len: usize, fill: u8) -> ByteBuf {
    ByteBuf::from(vec![fill; len])
}

/// Files in the spill directories (`spill-<pid>-<node id>`) under `temp`.
fn spill_files(temp: &std::path::Path) -> usize {
    std::fs::read_dir(temp)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("spill-"))
                .map(|e| std::fs::read_dir(e.path()).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn objects_past_the_store_limit_spill_come_back_and_their_files_go_when_freed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = common::threads(2.0).object_store_memory(STORE as u64);
    config.temp_dir = Some(temp.path().to_path_buf());
    let rt = common::start(config);
    let refs: Vec<_> = (0..VALUES)
        .map(|i| {
            rt.put(&ByteBuf::from(value(i)))
                .expect("a put while the disk has room")
        })
        .collect();
    let huge = rt
        .put(&ByteBuf::from(vec![7u8; STORE + MIB]))
        .expect("a put bigger than the whole store");
    let s = rt.object_store_stats().expect("stats");
    assert!(s.used_bytes <= STORE as u64, "{s:?}");
    let total = (usize::from(VALUES) * VALUE + STORE + MIB) as u64;
    assert!(s.spilled_bytes >= total - STORE as u64, "{s:?}");
    assert!(s.spilled_objects >= 6, "{s:?}");
    assert!(
        spill_files(temp.path()) >= 6,
        "the spilled values are files"
    );

    // Read back intact (restoring some), and spilled objects are task arguments.
    for (i, r) in (0..VALUES).zip(&refs) {
        let back: ByteBuf = rt.get(r).expect("get");
        assert!(back.as_slice() == value(i).as_slice(), "value {i} intact");
    }
    let digests: Vec<_> = refs.iter().map(|r| digest::remote(&rt, r)).collect();
    let want: Vec<_> = (0..VALUES).map(|i| digest_of(&value(i))).collect();
    assert_eq!(rt.get_all(&digests).expect("tasks"), want);
    let d = Digester::remote(&rt).expect("an async actor");
    let calls: Vec<_> = refs.iter().map(|r| d.digest(r)).collect();
    assert_eq!(rt.get_all(&calls).expect("actor calls"), want);
    drop((calls, d));
    let h = Holder::remote(&rt, &refs[0]).expect("an actor built from a spilled value");
    assert_eq!(rt.get(&h.held()).expect("held"), want[0]);
    drop(h);
    assert_eq!(
        rt.get(&digest::remote(&rt, &huge))
            .expect("a task on the huge value"),
        (STORE + MIB, u64::from_le_bytes([7; 8]), 7)
    );
    // A task result bigger than the store is spilled too, not an error.
    let big = make::remote(&rt, STORE + MIB, 3);
    let back = rt.get(&big).expect("a result over the limit");
    assert!(back.len() == STORE + MIB && back.iter().all(|b| *b == 3));
    drop(back);

    // With room again, reading a spilled value brings it back into memory (its file goes).
    let mut refs = refs;
    let keep = refs.split_off(usize::from(VALUES) - 3);
    drop((refs, digests, huge, big));
    common::eventually("the freed objects leave the store", || {
        let s = rt.object_store_stats().expect("stats");
        // Three encoded values (a few bytes over 16 MiB each).
        s.used_bytes + s.spilled_bytes < 4 * VALUE as u64
    });
    let before = rt.object_store_stats().expect("stats");
    for (i, r) in (VALUES - 3..).zip(&keep) {
        let back: ByteBuf = rt.get(r).expect("get");
        assert!(back.as_slice() == value(i).as_slice(), "value {i} intact");
    }
    let after = rt.object_store_stats().expect("stats");
    assert_eq!(after.spilled_bytes, 0, "{after:?}");
    assert_eq!(
        after.restored_objects - before.restored_objects,
        before.spilled_bytes / VALUE as u64,
        "{before:?} {after:?}"
    );

    // Freed objects take their files along.
    drop(keep);
    common::eventually("the spill files are deleted", || {
        spill_files(temp.path()) == 0
    });
    let s = rt.object_store_stats().expect("stats");
    assert_eq!((s.spilled_bytes, s.used_bytes), (0, 0), "{s:?}");
}

/// The value of `family`'s sample in a Prometheus text (its only node), if any.
fn sample(body: &str, family: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn a_head_with_object_store_memory_spills_a_drivers_objects_and_reports_it() {
    mobula::worker_entry();
    let store = STORE.to_string();
    let c = head_with(&["--object-store-memory", &store]);
    let rt = common::start(
        mobula::Config::default()
            .address(format!("127.0.0.1:{}", c.port))
            .cluster_root(c.temp.path()),
    );
    let url = format!("{}/metrics", c.dashboard());
    let refs: Vec<_> = (0..VALUES)
        .map(|i| rt.put(&ByteBuf::from(value(i))).expect("put"))
        .collect();
    // Worker processes take the spilled values as arguments, and make one over the limit.
    let digests: Vec<_> = refs.iter().map(|r| digest::remote(&rt, r)).collect();
    let want: Vec<_> = (0..VALUES).map(|i| digest_of(&value(i))).collect();
    assert_eq!(rt.get_all(&digests).expect("tasks"), want);
    let big = make::remote(&rt, STORE + MIB, 5);
    assert_eq!(rt.get(&big).expect("a big result").len(), STORE + MIB);
    // An actor in a worker process, built from the oldest (spilled) value.
    let h = Holder::remote(&rt, &refs[0]).expect("an actor built from a spilled value");
    assert_eq!(rt.get(&h.held()).expect("held"), want[0]);
    drop(h);

    let metrics = |what: &str, cond: &dyn Fn(&str) -> bool| {
        common::eventually(what, || {
            let (status, _, body) = get_typed(&url, &[]);
            assert_eq!(status, 200, "{body}");
            // Heartbeats bring the numbers: no need to ask more often than this.
            cond(&body) || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                false
            }
        });
    };
    metrics("the metrics show spilled bytes and objects", &|body| {
        body.contains("# TYPE mobula_object_store_spilled_bytes gauge")
            && body.contains("# TYPE mobula_object_store_spilled_objects_total counter")
            && sample(body, "mobula_object_store_spilled_bytes").is_some_and(|v| v > 0.0)
            && sample(body, "mobula_object_store_spilled_objects_total").is_some_and(|v| v >= 1.0)
    });
    // The head spills into its cluster directory (under `--temp-dir`).
    assert!(
        spill_files(&c.dir()) >= 1,
        "spill files under {:?}",
        c.dir()
    );
    for (i, r) in (0..VALUES).zip(&refs) {
        let back: ByteBuf = rt.get(r).expect("get");
        assert!(back.as_slice() == value(i).as_slice(), "value {i} intact");
    }
    drop((refs, digests, big));
    metrics("freed objects leave the disk", &|body| {
        sample(body, "mobula_object_store_spilled_bytes") == Some(0.0)
    });
    common::eventually("the head's spill files are deleted", || {
        spill_files(&c.dir()) == 0
    });
}

#[test]
fn another_node_pulls_values_spilled_on_the_head() {
    mobula::worker_entry();
    let store = STORE.to_string();
    let c = head_with(&["--object-store-memory", &store]);
    c.join(&[]);
    let rt = connect(&c);
    // A small value put first is the oldest, so among the first to spill: a spilled argument
    // travels as a reference (read from its file off the daemon's threads), not inline.
    let small = rt.put(&ByteBuf::from(vec![9u8; 4096])).expect("put");
    let refs: Vec<_> = (0..VALUES)
        .map(|i| rt.put(&ByteBuf::from(value(i))).expect("put"))
        .collect();
    let here = rt.node_id().hex();
    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let there = loop {
        let n = rt
            .get(&where_am_i::options(spread.clone()).remote(&rt))
            .expect("where");
        if n != here {
            break n;
        }
    };
    let pin = TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&there).expect("node id"),
        soft: false,
    });
    let digests: Vec<_> = refs
        .iter()
        .map(|r| digest::options(pin.clone()).remote(&rt, r))
        .collect();
    let got = rt.get_all(&digests);
    if got.is_err() {
        c.dump_logs();
    }
    let want: Vec<_> = (0..VALUES).map(|i| digest_of(&value(i))).collect();
    assert_eq!(got.expect("tasks on the other node"), want);
    let small = digest::options(pin.clone()).remote(&rt, &small);
    assert_eq!(
        rt.get(&small)
            .expect("a small spilled argument on the other node"),
        digest_of(&[9u8; 4096])
    );
}
