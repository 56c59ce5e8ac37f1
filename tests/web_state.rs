//! The state API over real HTTP against a real 2-node cluster: nodes, actors (a named one, a
//! killed one), placement groups, jobs, Ray's envelope, `limit` / `detail` / filters, 400s,
//! the actors summary and the cluster summary.

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
