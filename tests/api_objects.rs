//! Objects: put / get / get_all, reference counting (objects nobody can reach are freed,
//! including through refs nested in stored values), the memory limit, and the KV store.

mod common;

use common::{HANG, start, threads};
use mobula::ObjectRef;

#[mobula::remote]
fn make_refs(n: u64) -> mobula::Result<Vec<ObjectRef<u64>>> {
    let rt = mobula::runtime()?;
    (0..n).map(|i| rt.put(&i)).collect()
}

#[mobula::remote]
fn big(bytes: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![1u8; bytes])
}

#[test]
fn put_and_get_values_of_many_types() {
    let rt = start(threads(1.0));
    let s = rt.put(&"text".to_string()).expect("put");
    let v = rt.put(&vec![1.5f64, 2.5]).expect("put");
    let t = rt.put(&(1u8, Some("x".to_string()))).expect("put");
    assert_eq!(rt.get(&s).expect("get"), "text");
    assert_eq!(rt.get(&v).expect("get"), vec![1.5, 2.5]);
    assert_eq!(rt.get(&t).expect("get"), (1, Some("x".to_string())));
    assert_eq!(mobula::get(&s).expect("free get"), "text");
    let refs: Vec<_> = (0..10u32).map(|i| rt.put(&i).expect("put")).collect();
    assert_eq!(rt.get_all(&refs).expect("all"), (0..10).collect::<Vec<_>>());
}

#[test]
fn unreachable_objects_are_freed() {
    let rt = start(threads(1.0));
    let base = rt.object_store_stats().expect("stats");
    {
        let a = rt.put(&vec![0u8; 10_000]).expect("put");
        let b = a.clone();
        drop(a);
        assert_eq!(
            rt.object_store_stats().expect("stats").objects,
            base.objects + 1
        );
        drop(b);
    }
    assert_eq!(rt.object_store_stats().expect("stats"), base);

    // Refs nested in a task's return value stay alive as long as the value.
    let outer = make_refs::remote(&rt, 5);
    let inner = rt.get_timeout(&outer, Some(HANG)).expect("refs");
    assert_eq!(rt.get_all(&inner).expect("inner"), vec![0, 1, 2, 3, 4]);
    drop(inner);
    assert!(rt.object_store_stats().expect("stats").objects >= base.objects + 6);
    drop(outer);
    // The worker that made them lets go of its own handles just after sealing the result.
    common::eventually("every object freed", || {
        rt.object_store_stats().expect("stats").objects == base.objects
    });
}

fn spill_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("spill-"))
                .map(|e| std::fs::read_dir(e.path()).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn objects_past_the_memory_limit_spill_to_disk_and_come_back() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = threads(1.0).object_store_memory(4 << 20);
    config.temp_dir = Some(temp.path().to_path_buf());
    let rt = start(config);
    // Ten puts of 1 MiB each into a 4 MiB store, and one bigger than the whole store.
    let values: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1 << 20]).collect();
    let refs: Vec<_> = values
        .iter()
        .map(|v| rt.put(&serde_bytes::ByteBuf::from(v.clone())).expect("put"))
        .collect();
    let huge = rt
        .put(&vec![u64::MAX; 1 << 20])
        .expect("a put over the whole limit");
    let s = rt.object_store_stats().expect("stats");
    assert!(s.used_bytes <= 4 << 20, "{s:?}");
    assert!(s.spilled_bytes >= 7 << 20, "{s:?}");
    assert!(
        spill_files(temp.path()) >= 7,
        "the spilled values are files"
    );
    // Read back intact, and a task takes spilled objects as its arguments.
    for (r, v) in refs.iter().zip(&values) {
        let back: serde_bytes::ByteBuf = rt.get(r).expect("get");
        assert_eq!(&back.into_vec(), v);
    }
    assert_eq!(rt.get(&huge).expect("get").len(), 1 << 20);
    let sizes: Vec<_> = refs.iter().map(|r| byte_len::remote(&rt, r)).collect();
    assert_eq!(rt.get_all(&sizes).expect("tasks"), vec![1 << 20; 10]);
    // A task result over the limit is spilled too, not an error.
    let r = big::remote(&rt, 5 << 20);
    assert_eq!(rt.get(&r).expect("a big result").len(), 5 << 20);
    // Freed objects take their files along.
    drop((refs, sizes, huge, r));
    common::eventually("the spill files are deleted", || {
        spill_files(temp.path()) == 0
    });
    let s = rt.object_store_stats().expect("stats");
    assert_eq!((s.spilled_bytes, s.used_bytes), (0, 0), "{s:?}");
}

#[mobula::remote]
fn byte_len(b: serde_bytes::ByteBuf) -> usize {
    b.len()
}

#[test]
fn large_objects_round_trip() {
    let rt = start(threads(1.0));
    let data: Vec<u8> = (0..(16 << 20)).map(|i| (i % 251) as u8).collect();
    let r = rt
        .put(&serde_bytes::ByteBuf::from(data.clone()))
        .expect("put");
    let back: serde_bytes::ByteBuf = rt.get(&r).expect("get");
    assert_eq!(back.into_vec(), data);
}

#[test]
fn kv_store() {
    let rt = start(threads(1.0));
    assert!(rt.kv_put("ns", "k", b"v1", false).expect("put"));
    assert!(!rt.kv_put("ns", "k", b"v2", false).expect("kept"));
    assert_eq!(rt.kv_get("ns", "k").expect("get"), Some(b"v1".to_vec()));
    assert!(rt.kv_put("ns", "k", b"v2", true).expect("overwrite"));
    assert_eq!(rt.kv_get("ns", "k").expect("get"), Some(b"v2".to_vec()));
    assert_eq!(rt.kv_get("other", "k").expect("get"), None);
    assert!(rt.kv_del("ns", "k").expect("del"));
    assert_eq!(rt.kv_get("ns", "k").expect("get"), None);
}

#[test]
fn cluster_resources_reflect_the_config() {
    let rt = start(threads(3.0).num_gpus(0.0).resource("custom", 5.0));
    let total = rt.cluster_resources().expect("resources");
    assert_eq!(total.get("CPU"), Some(&3.0));
    assert_eq!(total.get("custom"), Some(&5.0));
    assert_eq!(total.get("GPU"), None);
    assert_eq!(
        rt.available_resources().expect("available").get("CPU"),
        Some(&3.0)
    );
}
