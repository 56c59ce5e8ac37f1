//! `mobula cluster-benchmark` against a real two-node cluster, with tiny rounds: every
//! workload runs on the other node and prints one line in Ray's format.

mod common;

use std::process::Command;

use common::cluster::{BIN, cluster_with};

#[test]
fn the_cluster_benchmark_runs_every_workload_on_the_other_node() {
    let c = cluster_with(&["--resources", r#"{"bench_remote": 1000}"#]);
    let o = Command::new(BIN)
        .args([
            "cluster-benchmark",
            "--address",
            &format!("127.0.0.1:{}", c.port),
            "--temp-dir",
            c.temp.path().to_str().expect("path"),
            "--warmup-secs",
            "0.01",
            "--round-secs",
            "0.05",
            "--rounds",
            "1",
            "--object-mib",
            "4",
        ])
        .output()
        .expect("mobula cluster-benchmark");
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        c.dump_logs();
    }
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for name in [
        "cross-node tasks sync",
        "cross-node tasks async",
        "cross-node 1:1 actor calls sync",
        "cross-node 1:1 actor calls async",
        "cross-node 1:1 async-actor calls sync",
        "cross-node 1:1 async-actor calls async",
        "cross-node get gigabytes",
        "cross-node task arg gigabytes",
    ] {
        let prefix = format!("{name} per second ");
        assert!(
            out.lines().any(|l| l.starts_with(&prefix)),
            "no line for {name}: {out}"
        );
    }
}
