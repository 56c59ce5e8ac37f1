//! Objects: put / get / get_all, reference counting (objects nobody can reach are freed,
//! including through refs nested in stored values) and the KV store; spilling past the memory
//! limit is in `api_spill.rs`.

mod common;

use common::{HANG, start, threads};
use mobula::ObjectRef;

#[mobula::remote]
fn make_refs(n: u64) -> mobula::Result<Vec<ObjectRef<u64>>> {
    let rt = mobula::runtime()?;
    (0..n).map(|i| rt.put(&i)).collect()
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
