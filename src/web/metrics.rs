//! `GET /metrics`: the whole cluster's numbers in Prometheus' text exposition format (0.0.4).
//!
//! Nothing is scraped from the other nodes at request time: every node's heartbeat carries
//! its `NodeMetrics` snapshot (`crate::actors::metrics`), the head keeps the last one per node
//! in its members, and `WebState::status()` hands them over with the head's own (taken from
//! its raylet and GCS when asked). This module only renders them. Every family is named
//! `mobula_…`; see README "Metrics" for the list.

use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::{WebState, text};
use crate::actors::metrics::{Counts, Histogram, LATENCY_BOUNDS, NodeMetrics};
use crate::cluster::StatusReport;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Actor states always shown (zero when none), Ray's names.
const ACTOR_STATES: [&str; 4] = ["PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"];
/// Driver job statuses always shown.
const DRIVER_JOB_STATUSES: [&str; 2] = ["RUNNING", "SUCCEEDED"];
/// Statuses of Jobs API submissions.
const SUBMISSION_STATUSES: [&str; 5] = ["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"];

/// Registers this area's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

async fn metrics(st: web::Data<WebState>) -> HttpResponse {
    let Some(report) = st.status().await else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the head's daemon did not report the cluster's status in time",
        );
    };
    let submissions = super::jobs::status_counts(&st).await;
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(render(&report, &submissions))
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `# HELP` text: backslash and line feed.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the text format spells it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// Builds an exposition: families, each with its `# HELP` and `# TYPE` lines, then samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family (`kind`: counter, gauge, histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample line `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// The samples of one histogram series: cumulative `_bucket`s (`le`), `_sum`, `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = LATENCY_BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format_value(*b));
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Every family for a cluster's status.
pub fn render(report: &StatusReport, submissions: &Counts) -> String {
    let mut e = Exposition::default();
    let nodes = &report.nodes;
    let each = |e: &mut Exposition, name: &str, f: &dyn Fn(&NodeMetrics) -> u64| {
        for n in nodes {
            e.sample(name, &[("node_id", &n.node_id)], f(&n.metrics) as f64);
        }
    };

    e.family(
        "mobula_node_alive",
        "gauge",
        "Whether the node is heartbeating (1) or was declared dead (0).",
    );
    for n in nodes {
        let head = if n.is_head { "true" } else { "false" };
        let alive = if n.alive { 1.0 } else { 0.0 };
        e.sample(
            "mobula_node_alive",
            &[("node_id", &n.node_id), ("is_head", head)],
            alive,
        );
    }

    by_state(
        &mut e,
        nodes,
        (
            "mobula_tasks_total",
            "counter",
            "Tasks by what happened to them on the node: submitted to its raylet, spilled to another node, finished, failed.",
        ),
        |m| {
            named(&[
                ("submitted", m.tasks_submitted),
                ("spilled", m.tasks_spilled),
                ("finished", m.tasks_finished),
                ("failed", m.tasks_failed),
            ])
        },
    );

    by_state(
        &mut e,
        nodes,
        (
            "mobula_tasks",
            "gauge",
            "Tasks on the node now: running on a worker, queued for resources, waiting for their arguments.",
        ),
        |m| {
            named(&[
                ("running", m.tasks_running),
                ("queued", m.tasks_queued),
                ("waiting_for_args", m.tasks_waiting_args),
            ])
        },
    );

    e.family(
        "mobula_tasks_oom_killed_total",
        "counter",
        "Task attempts whose worker process the node's memory monitor killed (memory over its threshold or the worker cap).",
    );
    each(&mut e, "mobula_tasks_oom_killed_total", &|m| {
        m.tasks_oom_killed
    });

    by_state(
        &mut e,
        nodes,
        (
            "mobula_actors",
            "gauge",
            "Actors by state, counted by the node that owns them (whose GCS keeps their record).",
        ),
        |m| with_names(&m.actors, &ACTOR_STATES),
    );

    e.family(
        "mobula_jobs",
        "gauge",
        "Jobs by status: type driver from the nodes' GCS job tables (SUCCEEDED once the driver is gone), type submission from the Jobs API.",
    );
    let mut driver = Counts::new();
    for n in nodes {
        for (k, v) in &n.metrics.jobs {
            *driver.entry(k.clone()).or_default() += v;
        }
    }
    for (status, v) in with_names(&driver, &DRIVER_JOB_STATUSES) {
        e.sample(
            "mobula_jobs",
            &[("type", "driver"), ("status", &status)],
            v as f64,
        );
    }
    for (status, v) in with_names(submissions, &SUBMISSION_STATUSES) {
        e.sample(
            "mobula_jobs",
            &[("type", "submission"), ("status", &status)],
            v as f64,
        );
    }

    e.family(
        "mobula_object_store_used_bytes",
        "gauge",
        "Bytes of sealed objects in the node's object store.",
    );
    each(&mut e, "mobula_object_store_used_bytes", &|m| {
        m.store_used_bytes
    });
    e.family(
        "mobula_object_store_limit_bytes",
        "gauge",
        "The node's object store memory limit.",
    );
    each(&mut e, "mobula_object_store_limit_bytes", &|m| {
        m.store_limit_bytes
    });
    e.family(
        "mobula_object_store_objects",
        "gauge",
        "Objects in the node's object store (pending or sealed).",
    );
    each(&mut e, "mobula_object_store_objects", &|m| m.objects);
    // Spilling: only nodes whose store spills report these (all three or none).
    type Of = fn(&NodeMetrics) -> u64;
    let spill: [(&str, &str, &str, Of); 3] = [
        (
            "mobula_object_store_spilled_bytes",
            "gauge",
            "Bytes of the node's objects spilled to disk now.",
            |m| m.store_spilled_bytes.unwrap_or(0),
        ),
        (
            "mobula_object_store_spilled_objects_total",
            "counter",
            "Objects the node's store has written to disk.",
            |m| m.store_spilled_objects,
        ),
        (
            "mobula_object_store_restored_objects_total",
            "counter",
            "Spilled objects read back into the node's memory.",
            |m| m.store_restored_objects,
        ),
    ];
    if nodes
        .iter()
        .any(|n| n.metrics.store_spilled_bytes.is_some())
    {
        for (name, kind, help, of) in spill {
            e.family(name, kind, help);
            for n in nodes
                .iter()
                .filter(|n| n.metrics.store_spilled_bytes.is_some())
            {
                e.sample(name, &[("node_id", &n.node_id)], of(&n.metrics) as f64);
            }
        }
    }

    e.family(
        "mobula_node_resource_total",
        "gauge",
        "The node's resources (CPU, GPU, memory, custom).",
    );
    e.family_resources(nodes, "mobula_node_resource_total", |n, r| {
        n.total.get(r).copied().unwrap_or(0.0)
    });
    e.family(
        "mobula_node_resource_used",
        "gauge",
        "The node's resources in use (total minus available).",
    );
    e.family_resources(nodes, "mobula_node_resource_used", |n, r| {
        let total = n.total.get(r).copied().unwrap_or(0.0);
        (total - n.available.get(r).copied().unwrap_or(0.0)).max(0.0)
    });

    e.family(
        "mobula_scheduling_latency_seconds",
        "histogram",
        "Seconds from a task's submission to the node's raylet to its dispatch to a worker there.",
    );
    for n in nodes {
        e.histogram(
            "mobula_scheduling_latency_seconds",
            &[("node_id", &n.node_id)],
            &n.metrics.sched_latency,
        );
    }
    e.finish()
}

impl Exposition {
    fn family_resources(
        &mut self,
        nodes: &[crate::cluster::NodeStatus],
        name: &str,
        value: impl Fn(&crate::cluster::NodeStatus, &str) -> f64,
    ) {
        for n in nodes {
            let mut names: Vec<&String> = n.total.keys().collect();
            names.sort();
            for r in names {
                self.sample(
                    name,
                    &[("node_id", &n.node_id), ("resource", r)],
                    value(n, r),
                );
            }
        }
    }
}

/// A family with one sample per node and state of `states(node's metrics)`, labelled
/// `node_id` and `state`.
fn by_state(
    e: &mut Exposition,
    nodes: &[crate::cluster::NodeStatus],
    (name, kind, help): (&str, &str, &str),
    states: impl Fn(&NodeMetrics) -> Vec<(String, u64)>,
) {
    e.family(name, kind, help);
    for n in nodes {
        for (state, v) in states(&n.metrics) {
            e.sample(
                name,
                &[("node_id", &n.node_id), ("state", &state)],
                v as f64,
            );
        }
    }
}

fn named(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The counts with every name of `always` present (zero when absent), then any others.
fn with_names(counts: &Counts, always: &[&str]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = always
        .iter()
        .map(|s| (s.to_string(), counts.get(*s).copied().unwrap_or(0)))
        .collect();
    out.extend(
        counts
            .iter()
            .filter(|(k, _)| !always.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeStatus;
    use std::time::Duration;

    #[test]
    fn labels_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        let mut e = Exposition::default();
        e.family("m", "gauge", "two\nlines")
            .sample("m", &[("k", "v\"1"), ("j", "x")], 1.5);
        assert_eq!(
            e.finish(),
            "# HELP m two\\nlines\n# TYPE m gauge\nm{k=\"v\\\"1\",j=\"x\"} 1.5\n"
        );
    }

    #[test]
    fn values_use_the_text_format_spelling() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.0001), "0.0001");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for us in [50, 150, 150, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut e = Exposition::default();
        e.histogram("lat", &[("node_id", "n")], &h);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), LATENCY_BOUNDS.len() + 3, "{text}");
        assert_eq!(lines[0], "lat_bucket{node_id=\"n\",le=\"0.0001\"} 1");
        assert_eq!(lines[1], "lat_bucket{node_id=\"n\",le=\"0.00025\"} 3");
        assert_eq!(
            lines[LATENCY_BOUNDS.len() - 1],
            "lat_bucket{node_id=\"n\",le=\"10\"} 3"
        );
        assert_eq!(
            lines[LATENCY_BOUNDS.len()],
            "lat_bucket{node_id=\"n\",le=\"+Inf\"} 4"
        );
        assert!(lines[LATENCY_BOUNDS.len() + 1].starts_with("lat_sum{node_id=\"n\"} 20.0003"));
        assert_eq!(
            lines[LATENCY_BOUNDS.len() + 2],
            "lat_count{node_id=\"n\"} 4"
        );
    }

    #[test]
    fn render_covers_every_node_and_omits_unreported_spilling() {
        let mut total = std::collections::HashMap::new();
        total.insert("CPU".to_string(), 2.0);
        let mut available = total.clone();
        available.insert("CPU".to_string(), 0.5);
        let node = |id: &str, head: bool| NodeStatus {
            node_id: id.to_string(),
            is_head: head,
            alive: head,
            ip: String::new(),
            total: total.clone(),
            available: available.clone(),
            pending: Vec::new(),
            metrics: NodeMetrics {
                tasks_finished: 7,
                tasks_oom_killed: 2,
                ..NodeMetrics::default()
            },
        };
        let r = StatusReport {
            nodes: vec![node("aa", true), node("bb", false)],
            pending: Vec::new(),
        };
        let t = render(&r, &Counts::new());
        assert!(
            t.contains("mobula_node_alive{node_id=\"bb\",is_head=\"false\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("mobula_tasks_total{node_id=\"aa\",state=\"finished\"} 7\n"),
            "{t}"
        );
        assert!(
            t.contains("mobula_node_resource_used{node_id=\"bb\",resource=\"CPU\"} 1.5\n"),
            "{t}"
        );
        assert!(
            t.contains("mobula_actors{node_id=\"aa\",state=\"ALIVE\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("mobula_jobs{type=\"driver\",status=\"RUNNING\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE mobula_tasks_oom_killed_total counter\n"),
            "{t}"
        );
        assert!(
            t.contains("mobula_tasks_oom_killed_total{node_id=\"bb\"} 2\n"),
            "{t}"
        );
        assert!(!t.contains("spilled_bytes"), "{t}");
    }

    #[test]
    fn spilling_nodes_report_their_spill_families() {
        let node = |id: &str, spilled: Option<u64>| NodeStatus {
            node_id: id.to_string(),
            metrics: NodeMetrics {
                store_spilled_bytes: spilled,
                store_spilled_objects: 3,
                store_restored_objects: 1,
                ..NodeMetrics::default()
            },
            is_head: false,
            alive: true,
            ip: String::new(),
            total: Default::default(),
            available: Default::default(),
            pending: Vec::new(),
        };
        let r = StatusReport {
            nodes: vec![node("aa", Some(48)), node("bb", None)],
            pending: Vec::new(),
        };
        let t = render(&r, &Counts::new());
        for line in [
            "# TYPE mobula_object_store_spilled_bytes gauge\n",
            "mobula_object_store_spilled_bytes{node_id=\"aa\"} 48\n",
            "# TYPE mobula_object_store_spilled_objects_total counter\n",
            "mobula_object_store_spilled_objects_total{node_id=\"aa\"} 3\n",
            "mobula_object_store_restored_objects_total{node_id=\"aa\"} 1\n",
        ] {
            assert!(t.contains(line), "{line}{t}");
        }
        assert!(!t.contains("node_id=\"bb\"} 3"), "{t}");
    }
}
