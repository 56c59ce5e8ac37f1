//! The head's GCS on sled: a head killed with SIGKILL and started again with the same
//! storage and port gets its tables back (checked through the KV, which lives only in the
//! storage); the KV is the cluster's, one table at the head, the same for drivers and tasks
//! of every node and kept across a head restart; an unusable storage directory is a clear
//! error at start.

mod common;

use common::cluster::{cluster, head_only, output};
use mobula::{Config, SchedulingStrategy, TaskOptions};

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

/// A task's view of the KV.
#[mobula::remote]
fn kv_seen(key: String) -> mobula::Result<Option<String>> {
    let v = mobula::runtime()?.kv_get("app", &key)?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A driver on the worker node: reads `from_head`, writes `from_worker`, and has a task
/// pinned to its node read `from_head` too; prints what it saw.
#[test]
fn child_driver_of_the_kv_test() {
    mobula::worker_entry();
    let Some((rt, _)) = common::child_driver(&[]) else {
        return;
    };
    let read = rt
        .kv_get("app", "from_head")
        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    let wrote = rt.kv_put("app", "from_worker", b"w", true);
    let pinned = TaskOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: rt.node_id(),
        soft: false,
    });
    let task = rt.get_timeout(
        &kv_seen::options(pinned).remote(&rt, "from_head".to_string()),
        Some(common::HANG),
    );
    println!(
        "KV_CHILD node={} read={read:?} wrote={wrote:?} task={task:?}",
        rt.node_id()
    );
}

#[test]
fn the_kv_is_the_clusters_and_outlives_a_head_restart() {
    mobula::worker_entry();
    let c = cluster();
    let addr = format!("127.0.0.1:{}", c.port);
    let worker = c.worker_node_id();
    // The child driver's line, once the worker node answers (after a restart, it has to
    // rejoin the new head first).
    let child = || {
        common::until_child_says(
            "the worker node's driver never reached the kv",
            || {
                let mut cmd = common::child_test("child_driver_of_the_kv_test");
                cmd.env("CHILD_ADDRESS", &addr)
                    .env("CHILD_ROOT", c.temp.path())
                    .env("MOBULA_DRIVER_NODE", &worker);
                cmd
            },
            |text| {
                text.lines()
                    .find_map(|l| l.split_once("KV_CHILD").map(|(_, rest)| rest.to_string()))
                    .filter(|l| l.contains("wrote=Ok(true)"))
            },
        )
    };
    {
        let rt = common::start(Config::default().address(&addr).cluster_root(c.temp.path()));
        rt.kv_put("app", "from_head", b"h", true).expect("put");
        let line = child();
        assert!(line.contains(&format!("node={worker}")), "{line}");
        assert!(line.contains(r#"read=Ok(Some("h"))"#), "{line}");
        assert!(line.contains(r#"task=Ok(Some("h"))"#), "{line}");
        assert_eq!(
            rt.kv_get("app", "from_worker").expect("get").as_deref(),
            Some(&b"w"[..]),
            "the worker node's write is the head's"
        );
        rt.kv_del("app", "from_worker").expect("del");
    }
    let pid = c.head_record().pid as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(pid));
    c.restart_head();
    let line = child();
    assert!(line.contains(r#"read=Ok(Some("h"))"#), "{line}");
    assert!(line.contains(r#"task=Ok(Some("h"))"#), "{line}");
    let rt = common::start(Config::default().address(&addr).cluster_root(c.temp.path()));
    assert_eq!(
        rt.kv_get("app", "from_worker").expect("get").as_deref(),
        Some(&b"w"[..]),
        "written through the worker node after the restart"
    );
}
