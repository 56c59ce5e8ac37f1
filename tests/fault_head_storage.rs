//! The head's GCS on sled: a head killed with SIGKILL and started again with the same
//! storage and port gets its tables back (checked through the KV, which lives only in the
//! storage); an unusable storage directory is a clear error at start.

mod common;

use common::cluster::{head_only, output};
use mobula::Config;

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn a_killed_head_restarted_on_its_storage_keeps_the_kv() {
    mobula::worker_entry();
    let c = head_only();
    let addr = format!("127.0.0.1:{}", c.port);
    {
        let rt = common::start(Config::default().address(&addr).cluster_root(c.temp.path()));
        rt.kv_put("app", "greeting", b"hello", true).expect("put");
        rt.kv_put("app", "gone", b"x", true).expect("put");
        assert!(rt.kv_del("app", "gone").expect("del"));
        assert_eq!(
            rt.kv_get("app", "greeting").expect("get").as_deref(),
            Some(&b"hello"[..])
        );
    }
    assert!(
        c.dir().join("gcs").is_dir(),
        "the head keeps its tables in the cluster dir"
    );
    let pid = c.head_record().pid as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(pid));

    c.restart_head();
    let rt = common::start(Config::default().address(&addr).cluster_root(c.temp.path()));
    assert_eq!(
        rt.kv_get("app", "greeting").expect("get").as_deref(),
        Some(&b"hello"[..]),
        "a value written before the kill"
    );

    assert_eq!(
        rt.kv_get("app", "gone").expect("get"),
        None,
        "a delete before the kill"
    );
}

#[test]
fn an_unusable_storage_dir_is_a_clear_error() {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("storage-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
        .to_string();
    let (ok, text) = output(&[
        "start",
        "--head",
        "--dashboard-port",
        "0",
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--storage",
        file.to_str().expect("path"),
        "--temp-dir",
        temp.path().to_str().expect("path"),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("storage-file") && text.contains("not a directory"),
        "{text}"
    );
}
