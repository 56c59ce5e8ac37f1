//! `mobula list | get | summary | timeline | logs` (the `mobula` binary) against a real
//! 2-node cluster that a connected driver gave tasks, an actor and a put: the real rows in
//! table, JSON and yaml form, filters and the truncation trailer, `get` by id prefix, the
//! summaries, the timeline file, both nodes' logs, the token, and the errors' exit codes.

mod common;

use std::process::Command;

use common::cluster::{BIN, Cluster, cluster, connect, head_with};
use common::{Tally, where_am_i};
use serde_json::Value;

/// What one run of the CLI did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `mobula CMD --address URL ARGS...` in `cwd`, without a token from the environment.
fn mobula_in(cwd: &std::path::Path, url: &str, cmd: &str, args: &[&str]) -> Out {
    let o = Command::new(BIN)
        .arg(cmd)
        .args(["--address", url])
        .args(args)
        .current_dir(cwd)
        .env_remove("MOBULA_AUTH_TOKEN")
        .env_remove("RAY_AUTH_TOKEN")
        .output()
        .expect("mobula");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn mobula(c: &Cluster, cmd: &str, args: &[&str]) -> Out {
    mobula_in(c.temp.path(), &c.dashboard(), cmd, args)
}

/// Runs a command that must succeed.
fn ok(c: &Cluster, cmd: &str, args: &[&str]) -> Out {
    let o = mobula(c, cmd, args);
    assert_eq!(o.code, 0, "mobula {cmd} {args:?}: {o}");
    o
}

/// The JSON a command printed.
fn json_of(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o}"))
}

#[test]
fn the_state_cli_lists_gets_summarizes_traces_and_reads_logs() {
    mobula::worker_entry();
    let c = cluster();
    let rt = connect(&c);
    let spread = mobula::TaskOptions::new().scheduling_strategy(mobula::SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..6)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt))
        .collect();
    rt.get_all(&refs).expect("tasks");
    let counter = Tally::remote(&rt).expect("actor");
    assert_eq!(rt.get(&counter.add(5)).expect("call"), 5);
    let actor_id = counter.id().hex();
    let big = rt.put(&vec![7u8; 1 << 20]).expect("put");

    // list tasks --format json: the task rows with their names, once all have ended.
    let filter = ["--filter", "func_or_class_name=where_am_i"];
    common::eventually("the CLI lists every task as FINISHED", || {
        let o = ok(
            &c,
            "list",
            &["tasks", "--format", "json", filter[0], filter[1]],
        );
        json_of(&o)
            .as_array()
            .is_some_and(|r| r.len() == 6 && r.iter().all(|t| t["state"] == "FINISHED"))
    });
    let o = ok(
        &c,
        "list",
        &["tasks", "--format", "json", "--limit", "1000"],
    );
    let tasks = json_of(&o);
    let tasks = tasks.as_array().expect("rows");
    assert_eq!(
        tasks.iter().filter(|t| t["name"] == "where_am_i").count(),
        6,
        "{o}"
    );
    assert!(
        tasks.iter().any(|t| t["type"] == "ACTOR_TASK"),
        "the actor call is listed: {o}"
    );
    let task_id = tasks
        .iter()
        .find(|t| t["name"] == "where_am_i")
        .and_then(|t| t["task_id"].as_str())
        .expect("a task id")
        .to_string();

    // The default table: Ray's header, a column per key, the truncation trailer.
    let o = ok(&c, "list", &["tasks", "--limit", "2"]);
    assert!(o.stdout.starts_with("======== List: "), "{o}");
    assert!(
        o.stdout.contains("TASK_ID") && o.stdout.contains("STATE"),
        "{o}"
    );
    assert!(o.stdout.contains("2 rows shown of "), "{o}");

    // list actors --filter state=ALIVE shows the actor; state!=ALIVE does not.
    let o = ok(&c, "list", &["actors", "--filter", "state=ALIVE"]);
    assert!(
        o.stdout.contains(&actor_id) && o.stdout.contains("Tally"),
        "{o}"
    );
    assert!(o.stdout.contains("ACTOR_ID") && o.stdout.contains("ALIVE"));
    let o = ok(
        &c,
        "list",
        &["actors", "--filter", "state!=ALIVE", "--format", "json"],
    );
    assert_eq!(json_of(&o), serde_json::json!([]), "{o}");
    let o = ok(&c, "list", &["actors", "--detail"]);
    assert!(
        o.stdout.contains(&format!("- actor_id: {actor_id}"))
            && o.stdout.contains("required_resources:"),
        "--detail prints yaml with the detail fields: {o}"
    );

    // Nodes, both of them; the other lists answer.
    let o = ok(&c, "list", &["nodes", "--format", "json"]);
    let nodes = json_of(&o);
    let nodes = nodes.as_array().expect("rows");
    assert_eq!(nodes.len(), 2, "{o}");
    let worker_node = nodes
        .iter()
        .find(|n| n["is_head_node"] == false)
        .and_then(|n| n["node_id"].as_str())
        .expect("the worker node")
        .to_string();
    let o = ok(
        &c,
        "list",
        &["objects", "--format", "json", "--limit", "10000"],
    );
    assert!(o.stdout.contains(&big.id().hex()), "the put is listed: {o}");
    for what in ["jobs", "placement-groups", "workers"] {
        ok(&c, "list", &[what]);
    }
    let o = ok(&c, "list", &["workers", "--format", "yaml"]);
    assert!(o.stdout.contains("- worker_id: "), "{o}");

    // get: by a prefix, every field; JSON too; a missing id exits 1.
    let o = ok(&c, "get", &["actors", &actor_id[..10]]);
    assert!(
        o.stdout.contains(&format!("actor_id: {actor_id}"))
            && o.stdout.contains("class_name: Tally")
            && o.stdout.contains("state: ALIVE")
            && o.stdout.contains("required_resources:"),
        "{o}"
    );
    let o = ok(&c, "get", &["tasks", &task_id, "--format", "json"]);
    assert_eq!(json_of(&o)["task_id"], task_id.as_str(), "{o}");
    assert_eq!(json_of(&o)["name"], "where_am_i", "{o}");
    let o = ok(&c, "get", &["nodes", &worker_node]);
    assert!(
        o.stdout.contains("is_head_node: false") && o.stdout.contains("node_ip: 127.0.0.1"),
        "{o}"
    );
    let o = mobula(&c, "get", &["actors", "ffffffffffffffff"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(
        o.stderr.contains("no actors with id ffffffffffffffff"),
        "{o}"
    );

    // summary: per function its type and counts per state, and the totals.
    let o = ok(&c, "summary", &["tasks"]);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("where_am_i "))
        .unwrap_or_else(|| panic!("a where_am_i row: {o}"));
    assert!(
        line.contains("NORMAL_TASK") && line.split_whitespace().any(|w| w == "6"),
        "{o}"
    );
    assert!(
        o.stdout.contains("total_tasks: ") && o.stdout.contains("total_actor_tasks: "),
        "{o}"
    );
    assert!(o.stdout.lines().any(|l| l.starts_with("TOTAL ")), "{o}");
    assert!(o.stdout.contains("FINISHED"), "{o}");
    let o = ok(&c, "summary", &["tasks", "--format", "json"]);
    assert_eq!(
        json_of(&o)["summary"]["where_am_i"]["state_counts"]["FINISHED"],
        6,
        "{o}"
    );
    let o = ok(&c, "summary", &["actors"]);
    assert!(
        o.stdout.contains("ALIVE")
            && o.stdout
                .lines()
                .any(|l| l.starts_with("Tally ") && l.split_whitespace().any(|w| w == "1")),
        "{o}"
    );
    let o = ok(&c, "summary", &["objects"]);
    assert!(o.stdout.contains("total_objects: "), "{o}");

    // timeline: the Chrome trace, to a named file and to the default one here.
    let file = c.temp.path().join("trace.json");
    let o = ok(&c, "timeline", &["--output", file.to_str().expect("path")]);
    assert!(
        o.stdout.contains(file.to_str().expect("path")) && o.stdout.contains("ui.perfetto.dev"),
        "{o}"
    );
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("trace")).expect("json");
    let events = trace.as_array().expect("an array of events");
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["name"] == "where_am_i")
        .collect();
    assert_eq!(mine.len(), 6, "{trace}");
    assert!(mine.iter().all(|e| e["ph"] == "X" && e["dur"].is_u64()));
    let here = tempfile::tempdir().expect("cwd");
    let o = mobula_in(here.path(), &c.dashboard(), "timeline", &[]);
    assert_eq!(o.code, 0, "{o}");
    let written: Vec<String> = std::fs::read_dir(here.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        written.len() == 1 && written[0].starts_with("timeline-") && written[0].ends_with(".json"),
        "{written:?} {o}"
    );

    // logs: the head's files by category; the worker node's file, its last lines.
    let o = ok(&c, "logs", &[]);
    assert!(
        o.stdout.contains("node:") && o.stdout.contains(".log"),
        "{o}"
    );
    let o = ok(&c, "logs", &["--node-id", &worker_node[..8]]);
    let file = o
        .stdout
        .lines()
        .skip_while(|l| *l != "node:")
        .nth(1)
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("the worker node's log: {o}"));
    assert!(file.ends_with(".log"), "{o}");
    let o = ok(
        &c,
        "logs",
        &["--node-id", &worker_node, &file, "--tail", "5"],
    );
    let n = o.stdout.lines().count();
    assert!((1..=5).contains(&n), "{n} lines: {o}");
    let o = mobula(&c, "logs", &["--node-id", &worker_node, "no-such.log"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("not found"), "{o}");
    let o = mobula(&c, "logs", &["--node-id", "ffffffff"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("no node with id ffffffff"), "{o}");

    // Errors: an unknown resource, a bad filter, a limit the server refuses, no server.
    let o = mobula(&c, "list", &["nosuch"]);
    assert_ne!(o.code, 0, "{o}");
    assert!(o.stderr.contains("invalid value 'nosuch'"), "{o}");
    let o = mobula(&c, "list", &["tasks", "--filter", "state"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("bad --filter"), "{o}");
    let o = mobula(&c, "list", &["tasks", "--limit", "10001"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(
        o.stderr.contains("400") && o.stderr.contains("exceeds the maximum"),
        "the server's message: {o}"
    );
    let o = mobula(&c, "list", &["tasks", "--filter", "state>1"]);
    assert_eq!(o.code, 1, "{o}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let o = mobula_in(
        c.temp.path(),
        &format!("http://{closed}"),
        "list",
        &["nodes"],
    );
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("cannot reach"), "{o}");
    drop(rt);
}

#[test]
fn the_state_cli_sends_the_token() {
    let _turn = common::exclusive();
    let c = head_with(&["--auth-token", "cli-token-5678"]);
    let o = mobula(&c, "list", &["nodes"]);
    assert_eq!(o.code, 1, "no token: {o}");
    assert!(o.stderr.contains("401"), "{o}");
    let o = mobula(&c, "list", &["nodes", "--auth-token", "wrong"]);
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("403"), "{o}");
    let o = ok(&c, "list", &["nodes", "--auth-token", "cli-token-5678"]);
    assert!(o.stdout.contains("ALIVE"), "{o}");
    // Without --address and --auth-token: the cluster's head.json and auth_token file.
    let dir = c.temp.path().to_str().expect("path");
    let o = Command::new(BIN)
        .args(["list", "nodes", "--temp-dir", dir])
        .env_remove("MOBULA_AUTH_TOKEN")
        .env_remove("RAY_AUTH_TOKEN")
        .env_remove("MOBULA_DASHBOARD_ADDRESS")
        .env_remove("RAY_API_SERVER_ADDRESS")
        .env_remove("RAY_ADDRESS")
        .output()
        .expect("mobula");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("ALIVE"), "{text}");
}
