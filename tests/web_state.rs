//! The state API over real HTTP against a real 2-node cluster: nodes, actors (a named one, a
//! killed one), placement groups, jobs, Ray's envelope, `limit` / `detail` / filters, 400s,
//! the actors summary and the cluster summary; tasks (merged across nodes), workers, objects,
//! their summaries, the timeline and the node-log routes.

mod common;

use common::cluster::{cluster, connect};
use common::http::{get, json};
use mobula::{ActorOptions, PlacementStrategy, ResourceSet};

#[mobula::actor]
pub struct Counter {
    n: u64,
}

#[mobula::actor]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn add(&mut self, v: u64) -> u64 {
        self.n += v;
        self.n
    }
}

fn rows(url: &str) -> serde_json::Value {
    let (status, body) = get(url, &[]);
    assert_eq!(status, 200, "{url}: {body}");
    let v = json(&body);
    assert_eq!(v["result"], true, "{body}");
    assert_eq!(v["msg"], "", "{body}");
    v["data"]["result"].clone()
}

#[test]
fn the_state_api_lists_nodes_actors_groups_and_jobs() {
    mobula::worker_entry();
    let c = cluster();
    let url = c.dashboard();
    let rt = connect(&c);

    let nodes = rows(&format!("{url}/api/v0/nodes"));
    assert_eq!(nodes["total"], 2, "{nodes}");
    let list = nodes["result"].as_array().expect("rows");
    assert!(list.iter().all(|n| n["state"] == "ALIVE"), "{nodes}");
    assert_eq!(list.iter().filter(|n| n["is_head_node"] == true).count(), 1);
    assert!(list[0].get("resources_available").is_none(), "detail only");

    let named = Counter::options(ActorOptions::new().name("counter"))
        .remote(&rt)
        .expect("named");
    assert_eq!(rt.get(&named.add(2)).expect("call"), 2);
    let doomed = Counter::options(ActorOptions::new())
        .remote(&rt)
        .expect("unnamed");
    assert_eq!(rt.get(&doomed.add(1)).expect("call"), 1);
    rt.kill(&doomed).expect("kill");
    let pg = rt
        .placement_group_named(
            vec![ResourceSet::new().with("CPU", 1.0)],
            PlacementStrategy::Pack,
            Some("group".to_string()),
        )
        .expect("pg");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));

    common::eventually("the killed actor is DEAD", || {
        let a = rows(&format!(
            "{url}/api/v0/actors?filter_keys=state&filter_predicates=%3D&filter_values=DEAD"
        ));
        a["num_after_truncation"] == 1
    });
    let actors = rows(&format!("{url}/api/v0/actors?detail=true"));
    assert_eq!(actors["total"], 2, "{actors}");
    let list = actors["result"].as_array().expect("rows");
    let counter = list
        .iter()
        .find(|a| a["name"] == "counter")
        .expect("the named actor");
    assert_eq!(counter["state"], "ALIVE");
    assert_eq!(counter["class_name"], "Counter", "{counter}");
    assert_eq!(counter["actor_id"].as_str().map(str::len), Some(32));
    assert!(counter["node_id"].is_string(), "{counter}");
    assert!(counter.get("required_resources").is_some(), "detail");
    let limited = rows(&format!(
        "{url}/api/v0/actors?limit=1&filter_keys=class_name&filter_predicates=%21%3D&filter_values=Nope"
    ));
    assert_eq!(limited["num_filtered"], 2);
    assert_eq!(limited["num_after_truncation"], 1);
    assert!(limited["result"][0].get("death_cause").is_none());

    let pgs = rows(&format!("{url}/api/v0/placement_groups"));
    assert_eq!(pgs["result"][0]["name"], "group", "{pgs}");
    assert_eq!(pgs["result"][0]["state"], "CREATED", "{pgs}");
    assert!(rows(&format!("{url}/api/v0/jobs"))["total"].as_u64() >= Some(1));

    let (status, body) = get(&format!("{url}/api/v0/actors?limit=10001"), &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        &format!("{url}/api/v0/actors?filter_keys=state&filter_predicates=%3E&filter_values=A"),
        &[],
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = get(&format!("{url}/api/v0/no_such_list"), &[]);
    assert_eq!(status, 404, "{body}");

    let (status, body) = get(&format!("{url}/api/v0/actors/summarize"), &[]);
    assert_eq!(status, 200, "{body}");
    let s = json(&body);
    let counts = &s["data"]["result"]["result"]["node_id_to_summary"]["cluster"]["summary"]["Counter"]
        ["state_counts"];
    assert_eq!(counts["ALIVE"], 1, "{body}");
    assert_eq!(counts["DEAD"], 1, "{body}");

    let (status, body) = get(&format!("{url}/api/v0/cluster_summary"), &[]);
    assert_eq!(status, 200, "{body}");
    let s = json(&body);
    assert_eq!(s["data"]["nodes"]["alive"], 2, "{body}");
    assert_eq!(s["data"]["resources"]["total"]["CPU"], 4.0, "{body}");
    assert_eq!(s["data"]["actors"]["ALIVE"], 1, "{body}");
}

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::remote]
fn broken() -> Result<u64, String> {
    Err("broken on purpose".to_string())
}

fn node_of(row: &serde_json::Value) -> String {
    row["node_id"].as_str().unwrap_or_default().to_string()
}

#[test]
fn tasks_workers_objects_logs_and_the_timeline_span_both_nodes() {
    mobula::worker_entry();
    let c = cluster();
    let url = c.dashboard();
    let rt = connect(&c);
    let spread = mobula::TaskOptions::new().scheduling_strategy(mobula::SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..10)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt))
        .collect();
    let ran: std::collections::BTreeSet<String> =
        rt.get_all(&refs).expect("tasks").into_iter().collect();
    assert_eq!(ran.len(), 2, "SPREAD used both nodes: {ran:?}");
    let failed = broken::remote(&rt);
    assert!(rt.get(&failed).is_err());
    let counter = Counter::remote(&rt).expect("actor");
    assert_eq!(rt.get(&counter.add(5)).expect("call"), 5);
    let big = rt.put(&vec![7u8; 2 << 20]).expect("put");

    // Tasks: one row per attempt, each on the node that ran it, merged across nodes.
    common::eventually("every task is listed as ended", || {
        let t = rows(&format!(
            "{url}/api/v0/tasks?filter_keys=func_or_class_name&filter_predicates=%3D&filter_values=where_am_i&detail=true"
        ));
        t["num_filtered"] == 10
            && t["result"]
                .as_array()
                .is_some_and(|r| r.iter().all(|t| t["state"] == "FINISHED"))
    });
    let t = rows(&format!(
        "{url}/api/v0/tasks?filter_keys=func_or_class_name&filter_predicates=%3D&filter_values=where_am_i&detail=true"
    ));
    let list = t["result"].as_array().expect("rows");
    let on: std::collections::BTreeSet<String> = list.iter().map(node_of).collect();
    assert_eq!(on, ran, "each task is listed on the node that ran it: {t}");
    for row in list {
        assert_eq!(row["type"], "NORMAL_TASK");
        assert!(row["worker_pid"].is_u64(), "{row}");
        assert!(row["start_time_ms"].as_u64() <= row["end_time_ms"].as_u64());
    }
    let f = rows(&format!(
        "{url}/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=FAILED&detail=true"
    ));
    assert_eq!(f["num_filtered"], 1, "{f}");
    assert_eq!(
        f["result"][0]["error_type"], "TASK_EXECUTION_EXCEPTION",
        "{f}"
    );
    assert!(
        f["result"][0]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("broken on purpose")),
        "{f}"
    );
    let brief = rows(&format!("{url}/api/v0/tasks?limit=1"));
    assert!(brief["result"][0].get("events").is_none(), "detail only");

    let (status, body) = get(&format!("{url}/api/v0/tasks/summarize"), &[]);
    assert_eq!(status, 200, "{body}");
    let s = json(&body);
    let cl = &s["data"]["result"]["result"]["node_id_to_summary"]["cluster"];
    assert_eq!(
        cl["summary"]["where_am_i"]["state_counts"]["FINISHED"], 10,
        "{body}"
    );
    assert_eq!(
        cl["summary"]["broken"]["state_counts"]["FAILED"], 1,
        "{body}"
    );
    assert_eq!(cl["total_actor_scheduled"], 1, "{body}");
    assert!(cl["total_actor_tasks"].as_u64() >= Some(1), "{body}");
    assert_eq!(cl["summary_by"], "func_name");

    // The timeline: a complete event per task that ran, on its node's track.
    let (status, body) = get(&format!("{url}/api/v0/tasks/timeline?download=1"), &[]);
    assert_eq!(status, 200, "{body}");
    let trace = json(&body);
    let events = trace.as_array().expect("events");
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "where_am_i")
        .collect();
    assert_eq!(mine.len(), 10, "{body}");
    assert!(mine.iter().all(|e| e["ph"] == "X" && e["ts"].is_u64()));

    // Workers of both nodes, with their pids.
    let w = rows(&format!("{url}/api/v0/workers?limit=1000"));
    let wn: std::collections::BTreeSet<String> = w["result"]
        .as_array()
        .expect("rows")
        .iter()
        .map(node_of)
        .collect();
    assert_eq!(wn.len(), 2, "workers on both nodes: {w}");

    // Objects: the 2 MiB put is in the driver's node's store.
    let o = rows(&format!("{url}/api/v0/objects?limit=10000"));
    let put_row = o["result"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["object_id"] == big.id().hex())
        .cloned()
        .unwrap_or_else(|| panic!("the put object is listed: {o}"));
    assert!(
        put_row["object_size"].as_u64() >= Some(2 << 20),
        "{put_row}"
    );
    let (status, body) = get(&format!("{url}/api/v0/objects/summarize"), &[]);
    assert_eq!(status, 200, "{body}");
    let s = json(&body);
    assert!(
        s["data"]["result"]["result"]["node_id_to_summary"]["cluster"]["total_objects"].as_u64()
            >= Some(1),
        "{body}"
    );

    // Logs: each node lists its own log; the other node's is read through the head.
    let worker_node = c.worker_node_id();
    let (status, body) = get(&format!("{url}/api/v0/logs?node_id={worker_node}"), &[]);
    assert_eq!(status, 200, "{body}");
    let cats = json(&body)["data"]["result"].clone();
    let files = cats["node"].as_array().expect("node logs");
    assert_eq!(files.len(), 1, "{body}");
    let file = files[0].as_str().expect("name").to_string();
    let (status, text) = get(
        &format!("{url}/api/v0/logs/file?node_id={worker_node}&filename={file}&lines=5"),
        &[],
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.lines().count() <= 5 && !text.is_empty(), "{text}");
    let (status, body) = get(&format!("{url}/api/v0/logs"), &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        &format!("{url}/api/v0/logs/file?node_id={worker_node}&filename=..%2Fsecret"),
        &[],
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&format!("{url}/api/v0/logs?node_id=ffff"), &[]);
    assert_eq!(status, 404, "{body}");
}
