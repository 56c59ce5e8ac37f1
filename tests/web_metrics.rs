//! `GET /metrics` on a real two-node cluster (a head with a token and a worker node): a
//! driver runs SPREAD tasks on both nodes and an actor; the Prometheus text shows every
//! family with HELP and TYPE, parses, counts the tasks of both nodes (their numbers reach the
//! head in heartbeats), has cumulative histograms, and needs the token.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{connect, head_with};
use common::http::get_typed as get;
use mobula::{SchedulingStrategy, TaskOptions};

const TOKEN: &str = "metrics-test-token";
const TASKS: usize = 20;

#[mobula::remote]
fn where_am_i() -> mobula::Result<String> {
    Ok(mobula::runtime()?.node_id().hex())
}

#[mobula::actor]
pub struct Counter {
    n: u64,
}

#[mobula::actor]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: `# HELP` and `# TYPE` per family, and the samples.
#[derive(Debug, Default)]
struct Parsed {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Parsed {
    fn of(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    fn sum(&self, name: &str, label: &str, value: &str) -> f64 {
        self.of(name)
            .iter()
            .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
            .map(|s| s.value)
            .sum()
    }
}

/// Parses the label set `k="v",…` (with `\\`, `\"`, `\n` escapes).
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return Err(format!("empty label name in {s}"));
        }
        if chars.next() != Some('"') {
            return Err(format!("label {key} has no quoted value in {s}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s}")),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(format!("unterminated value in {s}")),
            }
        }
        out.insert(key, value);
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c} in {s}")),
        }
    }
}

fn parse(text: &str) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
            p.help.insert(name.to_string(), help.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type: {line}"));
            }
            p.kind.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|e| format!("bad value in {line}: {e}"))?,
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?;
                (n.to_string(), parse_labels(inner)?)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("bad metric name: {line}"));
        }
        p.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(p)
}

/// The family a sample belongs to (histogram samples carry suffixes).
fn family_of<'a>(p: &Parsed, name: &'a str) -> Option<&'a str> {
    if p.kind.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| p.kind.get(*base).map(String::as_str) == Some("histogram"))
}

#[test]
fn metrics_cover_the_whole_cluster() {
    mobula::worker_entry();
    let c = head_with(&["--auth-token", TOKEN]);
    c.join(&[]);
    let rt = connect(&c);
    let url = format!("{}/metrics", c.dashboard());
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // The token applies.
    let (status, _, body) = get(&url, &[]);
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = get(&url, &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 403, "{body}");

    let spread = TaskOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..TASKS)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt))
        .collect();
    let ran: BTreeSet<String> = rt.get_all(&refs).expect("tasks").into_iter().collect();
    assert_eq!(ran.len(), 2, "SPREAD uses both nodes: {ran:?}");
    // The actor runs on the other node: its owner (the driver's node) counts it, its host
    // does not count it again.
    let other = ran
        .iter()
        .find(|n| **n != rt.node_id().hex())
        .expect("the other node");
    let pin = mobula::ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(other).expect("node id"),
        soft: false,
    });
    let counter = Counter::options(pin).remote(&rt).expect("actor");
    assert_eq!(
        rt.get_timeout(&counter.bump(), Some(common::HANG))
            .expect("call"),
        1
    );

    // Both nodes' counters reach the head with their heartbeats.
    let deadline = Instant::now() + common::HANG;
    let (ctype, p) = loop {
        let (status, ctype, body) = get(&url, &auth);
        assert_eq!(status, 200, "{body}");
        let p = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        let finished = p.sum("mobula_tasks_total", "state", "finished");
        let alive = p.sum("mobula_actors", "state", "ALIVE");
        let nodes = p.of("mobula_node_alive").len();
        if finished == TASKS as f64 && alive == 1.0 && nodes == 2 {
            break (ctype, p);
        }
        assert!(
            Instant::now() < deadline,
            "finished {finished}, alive actors {alive}, nodes {nodes}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");

    // Every family, with HELP and TYPE; every sample belongs to a declared family.
    for (family, kind) in [
        ("mobula_node_alive", "gauge"),
        ("mobula_tasks_total", "counter"),
        ("mobula_tasks", "gauge"),
        ("mobula_actors", "gauge"),
        ("mobula_jobs", "gauge"),
        ("mobula_object_store_used_bytes", "gauge"),
        ("mobula_object_store_limit_bytes", "gauge"),
        ("mobula_object_store_objects", "gauge"),
        ("mobula_node_resource_total", "gauge"),
        ("mobula_node_resource_used", "gauge"),
        ("mobula_scheduling_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            p.kind.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
        assert!(
            p.help.get(family).is_some_and(|h| !h.is_empty()),
            "{family}"
        );
    }
    for s in &p.samples {
        assert!(s.name.starts_with("mobula_"), "{s:?}");
        assert!(family_of(&p, &s.name).is_some(), "undeclared: {s:?}");
    }

    // Two nodes, both alive, 2 CPUs each.
    let alive: BTreeMap<String, f64> = p
        .of("mobula_node_alive")
        .iter()
        .map(|s| (s.labels["node_id"].clone(), s.value))
        .collect();
    assert_eq!(alive.len(), 2, "{alive:?}");
    assert!(alive.values().all(|v| *v == 1.0), "{alive:?}");
    assert_eq!(
        alive.keys().cloned().collect::<BTreeSet<_>>(),
        ran,
        "the nodes the tasks ran on"
    );
    for node in alive.keys() {
        let cpus: Vec<f64> = p
            .of("mobula_node_resource_total")
            .iter()
            .filter(|s| &s.labels["node_id"] == node && s.labels["resource"] == "CPU")
            .map(|s| s.value)
            .collect();
        assert_eq!(cpus, vec![2.0], "node {node}");
        for fam in [
            "mobula_object_store_used_bytes",
            "mobula_object_store_limit_bytes",
            "mobula_object_store_objects",
        ] {
            assert!(
                p.of(fam).iter().any(|s| &s.labels["node_id"] == node),
                "{fam} of {node}"
            );
        }
        // Both nodes ran tasks.
        let finished = p
            .of("mobula_tasks_total")
            .iter()
            .filter(|s| &s.labels["node_id"] == node && s.labels["state"] == "finished")
            .map(|s| s.value)
            .sum::<f64>();
        assert!(finished >= 1.0, "node {node} finished {finished}");
    }
    let limit = p.sum("mobula_object_store_limit_bytes", "node_id", &head_id(&p));
    assert!(limit > 0.0, "the head's store limit");

    // Everything submitted went somewhere: spilled on, finished or failed.
    let submitted = p.sum("mobula_tasks_total", "state", "submitted");
    let spilled = p.sum("mobula_tasks_total", "state", "spilled");
    let failed = p.sum("mobula_tasks_total", "state", "failed");
    assert_eq!(failed, 0.0);
    assert!(spilled >= 1.0, "SPREAD sent tasks to the other node");
    assert_eq!(submitted, spilled + TASKS as f64);

    // Histograms: cumulative buckets ending in +Inf, which equals _count; every dispatch
    // to a worker was observed once.
    let mut dispatched = 0.0;
    for node in alive.keys() {
        let mut buckets: Vec<(f64, f64)> = p
            .of("mobula_scheduling_latency_seconds_bucket")
            .iter()
            .filter(|s| &s.labels["node_id"] == node)
            .map(|s| {
                let le = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("le"),
                };
                (le, s.value)
            })
            .collect();
        assert_eq!(buckets.len(), 17, "100µs…10s and +Inf: {buckets:?}");
        assert_eq!(buckets[0].0, 0.0001);
        assert_eq!(buckets[15].0, 10.0);
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let inf = buckets[16];
        assert_eq!(inf.0, f64::INFINITY);
        let count = p.sum("mobula_scheduling_latency_seconds_count", "node_id", node);
        assert_eq!(inf.1, count, "node {node}");
        let sum = p.sum("mobula_scheduling_latency_seconds_sum", "node_id", node);
        assert!(
            sum >= 0.0 && (count == 0.0 || sum > 0.0),
            "node {node}: {sum}"
        );
        dispatched += count;
    }
    assert_eq!(dispatched, TASKS as f64);

    // Jobs by status: this test's driver runs; no job was submitted. Nothing runs any more.
    let jobs = |kind: &str, status: &str| -> f64 {
        p.of("mobula_jobs")
            .iter()
            .filter(|s| s.labels["type"] == kind && s.labels["status"] == status)
            .map(|s| s.value)
            .sum()
    };
    assert!(jobs("driver", "RUNNING") >= 1.0, "the driver's job");
    assert_eq!(jobs("submission", "RUNNING"), 0.0);
    assert_eq!(
        p.of("mobula_jobs")
            .iter()
            .filter(|s| s.labels["type"] == "submission")
            .count(),
        5
    );
    assert_eq!(p.sum("mobula_tasks", "state", "running"), 0.0);
    drop(rt);
}

/// The head's node id.
fn head_id(p: &Parsed) -> String {
    p.of("mobula_node_alive")
        .iter()
        .find(|s| s.labels.get("is_head").map(String::as_str) == Some("true"))
        .map(|s| s.labels["node_id"].clone())
        .expect("a head")
}

#[test]
fn the_parser_reads_escapes() {
    let p = parse("# HELP m a\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\n\",b=\"\"} 2\nm 1e3\n")
        .expect("parse");
    assert_eq!(p.samples[0].labels["a"], "x\"y\\z\n");
    assert_eq!(p.samples[0].labels["b"], "");
    assert_eq!(p.samples[1].value, 1000.0);
}
