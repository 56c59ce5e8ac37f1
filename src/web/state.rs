//! The state API (`/api/v0/*`, what `ray list|get|summary` call): Ray's response envelope,
//! `limit` / `detail` / `filter_*` semantics and row shapes for nodes, actors, placement
//! groups and jobs, the actors summary, and `/api/v0/cluster_summary` for the dashboard.
//! Rows come from the head alone: nodes from the daemon loop's `StatusReport`, actors,
//! placement groups and jobs from the head's own GCS (actors and groups other nodes'
//! drivers created live in those nodes' GCS and are not listed yet). Handlers only await
//! actor messages.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, guard, web};
use serde_json::{Value, json};

use super::{WebState, text};
use crate::actors::gcs::ListJobs;
use crate::actors::history::{TASK_DETAIL, TaskState};
use crate::cluster::state::{NodeAnswer, StateQuery};

/// Largest `limit` accepted (Ray's `RAY_MAX_LIMIT_FROM_API_SERVER`).
pub const MAX_LIMIT: usize = 10_000;
/// The resources `/api/v0/{what}` lists.
const LISTS: &[&str] = &[
    "nodes",
    "actors",
    "placement_groups",
    "jobs",
    "tasks",
    "workers",
    "objects",
];
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;

/// Errors of the state API's boundary.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The query was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A data source did not answer.
    #[error("data source unavailable: {0}")]
    Unavailable(String),
}

impl StateError {
    fn response(&self) -> HttpResponse {
        let status = match self {
            StateError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StateError::Unavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, self.to_string())
    }
}

type Res<T> = Result<T, StateError>;

/// A list query: Ray's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Rows returned at most.
    pub limit: usize,
    /// Include `detail` fields.
    pub detail: bool,
    /// `(key, is_equal, value)` filters, ANDed.
    pub filters: Vec<(String, bool, String)>,
}

impl ListQuery {
    /// Parses a raw query string (`filter_*` repeat, so no serde struct).
    pub fn parse(query: &str) -> Res<Self> {
        let mut limit = DEFAULT_LIMIT;
        let mut detail = false;
        let (mut keys, mut preds, mut values) = (Vec::new(), Vec::new(), Vec::new());
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| StateError::BadRequest(format!("bad query: {e}")))?
            .into_inner();
        for (k, v) in pairs {
            match k.as_str() {
                "limit" => {
                    limit = v.parse().map_err(|_| {
                        StateError::BadRequest(format!("limit must be a number, got {v:?}"))
                    })?;
                    if limit > MAX_LIMIT {
                        return Err(StateError::BadRequest(format!(
                            "given limit {limit} exceeds the maximum {MAX_LIMIT}"
                        )));
                    }
                }
                "detail" => detail = matches!(v.to_ascii_lowercase().as_str(), "true" | "1"),
                "filter_keys" => keys.push(v),
                "filter_predicates" => preds.push(v),
                "filter_values" => values.push(v),
                _ => {}
            }
        }
        if keys.len() != preds.len() || keys.len() != values.len() {
            return Err(StateError::BadRequest(
                "filter_keys, filter_predicates and filter_values must pair up".to_string(),
            ));
        }
        let mut filters = Vec::new();
        for ((k, p), v) in keys.into_iter().zip(preds).zip(values) {
            let eq = match p.as_str() {
                "=" => true,
                "!=" => false,
                other => {
                    return Err(StateError::BadRequest(format!(
                        "unsupported filter predicate {other:?}: use = or !="
                    )));
                }
            };
            filters.push((k, eq, v));
        }
        Ok(Self {
            limit,
            detail,
            filters,
        })
    }

    fn matches(&self, row: &Value) -> bool {
        self.filters.iter().all(|(k, eq, v)| {
            let field = match row.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (field.eq_ignore_ascii_case(v)) == *eq
        })
    }
}

/// Filters, truncates and wraps rows in Ray's envelope. `detail_only` fields are dropped
/// unless `detail` is set.
pub fn envelope(rows: Vec<Value>, q: &ListQuery, detail_only: &[&str], warning: &str) -> Value {
    let total = rows.len();
    let filtered: Vec<Value> = rows.into_iter().filter(|r| q.matches(r)).collect();
    let num_filtered = filtered.len();
    let result: Vec<Value> = filtered
        .into_iter()
        .take(q.limit)
        .map(|mut r| {
            if !q.detail
                && let Value::Object(m) = &mut r
            {
                for f in detail_only {
                    m.remove(*f);
                }
            }
            r
        })
        .collect();
    json!({"result": true, "msg": "", "data": {"result": {
        "total": total,
        "num_after_truncation": result.len(),
        "num_filtered": num_filtered,
        "result": result,
        "partial_failure_warning": warning,
        "warnings": null,
    }}})
}

fn node(st: &WebState) -> Res<&crate::node::NodeClient> {
    st.node()
        .ok_or_else(|| StateError::Unavailable("the head has no node".to_string()))
}

fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("gcs: {e}"))
}

async fn node_rows(st: &WebState) -> Res<Vec<Value>> {
    let status = st
        .status()
        .await
        .ok_or_else(|| StateError::Unavailable("the daemon loop did not answer".to_string()))?;
    // Ray's `NodeState` wants `node_ip` a string: "" until the node's first heartbeat.
    Ok(status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "node_ip": n.ip,
                "is_head_node": n.is_head,
                "state": if n.alive { "ALIVE" } else { "DEAD" },
                "state_message": null,
                "node_name": n.node_id,
                "resources_total": n.total,
                "labels": {"ray.io/node-id": n.node_id},
                "resources_available": n.available,
            })
        })
        .collect())
}

/// Every alive node's answer to `q` (or only `node`'s).
async fn ask(st: &WebState, q: StateQuery, node: Option<String>) -> Res<Vec<NodeAnswer>> {
    st.state(q, node)
        .await
        .ok_or_else(|| StateError::Unavailable("the daemon loop did not answer".to_string()))
}

/// The nodes' rows put together, and a warning naming the nodes that did not answer (all
/// failing is an error).
async fn gathered(st: &WebState, q: StateQuery) -> Res<(Vec<Value>, String)> {
    let answers = ask(st, q, None).await?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let n = answers.len();
    for a in answers {
        match a.result {
            Ok(Value::Array(r)) => rows.extend(r),
            Ok(other) => failed.push(format!("node {}: not a list: {other}", a.node_id)),
            Err(e) => failed.push(e),
        }
    }
    if n > 0 && failed.len() == n {
        return Err(StateError::Unavailable(failed.join("; ")));
    }
    let warning = match failed.is_empty() {
        true => String::new(),
        false => format!(
            "{} of {n} nodes did not answer, their rows are missing: {}",
            failed.len(),
            failed.join("; ")
        ),
    };
    Ok((rows, warning))
}

fn sort_by(rows: &mut [Value], key: &str) {
    rows.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
}

async fn actor_rows(st: &WebState) -> Res<(Vec<Value>, String)> {
    let (mut rows, w) = gathered(st, StateQuery::Actors).await?;
    sort_by(&mut rows, "actor_id");
    Ok((rows, w))
}

/// One row per task attempt, newest first: a task run for another node has a record on the
/// node that scheduled it and on the one that ran it; the later state wins, and the runner's
/// worker fields fill in.
pub fn merge_tasks(rows: Vec<Value>) -> Vec<Value> {
    let mut by: HashMap<(String, u64), Value> = HashMap::new();
    for r in rows {
        let key = (
            r["task_id"].as_str().unwrap_or_default().to_string(),
            r["attempt_number"].as_u64().unwrap_or(0),
        );
        match by.get_mut(&key) {
            None => {
                by.insert(key, r);
            }
            Some(have) => {
                let rank = |v: &Value| TaskState::rank_of(v["state"].as_str().unwrap_or_default());
                let (mut keep, other) = match rank(&r) > rank(have) {
                    true => (r, have.clone()),
                    false => (have.clone(), r),
                };
                for f in ["worker_id", "worker_pid", "start_time_ms", "node_id"] {
                    if keep[f].is_null() {
                        keep[f] = other[f].clone();
                    }
                }
                if let (Some(a), Some(b)) = (
                    keep["creation_time_ms"].as_u64(),
                    other["creation_time_ms"].as_u64(),
                ) {
                    keep["creation_time_ms"] = a.min(b).into();
                }
                *have = keep;
            }
        }
    }
    let mut out: Vec<Value> = by.into_values().collect();
    out.sort_by(|a, b| {
        let t = |v: &Value| v["creation_time_ms"].as_u64().unwrap_or(0);
        t(b).cmp(&t(a))
            .then_with(|| a["task_id"].as_str().cmp(&b["task_id"].as_str()))
    });
    out
}

/// Fields Ray's `TaskState` requires to be strings (`ray list tasks` rejects a null one):
/// unknown ones are sent as "".
const TASK_STRINGS: &[&str] = &["parent_task_id", "job_id"];

async fn task_rows(st: &WebState) -> Res<(Vec<Value>, String)> {
    let (rows, w) = gathered(st, StateQuery::Tasks).await?;
    let mut rows = merge_tasks(rows);
    for r in &mut rows {
        for f in TASK_STRINGS {
            if r[*f].is_null() {
                r[*f] = "".into();
            }
        }
    }
    Ok((rows, w))
}

const ACTOR_DETAIL: &[&str] = &[
    "required_resources",
    "death_cause",
    "is_detached",
    "num_restarts",
];

async fn pg_rows(st: &WebState) -> Res<(Vec<Value>, String)> {
    let (mut rows, w) = gathered(st, StateQuery::PlacementGroups).await?;
    sort_by(&mut rows, "placement_group_id");
    Ok((rows, w))
}

const PG_DETAIL: &[&str] = &["bundles", "is_detached", "stats", "topology_strategy"];

async fn job_rows(st: &WebState) -> Res<Vec<Value>> {
    let jobs = node(st)?.gcs.send(ListJobs).await.map_err(unavailable)?;
    Ok(jobs
        .iter()
        .filter(|j| {
            !j.namespace.starts_with("_mobula") && !j.namespace.starts_with("_ray_internal")
        })
        .map(|j| {
            json!({
                "type": if j.submission_id.is_some() { "SUBMISSION" } else { "DRIVER" },
                "job_id": j.job_id.hex(),
                "submission_id": j.submission_id,
                "driver_info": {"id": j.job_id.hex(), "pid": j.driver_pid.to_string()},
                "status": if j.end_time_ms.is_some() { "SUCCEEDED" } else { "RUNNING" },
                "entrypoint": "",
                "message": null,
                "error_type": null,
                "start_time": j.start_time_ms,
                "end_time": j.end_time_ms,
                "metadata": {},
                "runtime_env": {},
                "namespace": j.namespace,
            })
        })
        .collect())
}

const WORKER_DETAIL: &[&str] = &[
    "exit_detail",
    "worker_launch_time_ms",
    "worker_launched_time_ms",
    "start_time_ms",
    "end_time_ms",
    "job_id",
    "actor_id",
    "thread",
];

async fn list(st: &WebState, what: &str, query: &str) -> Res<Value> {
    let q = ListQuery::parse(query)?;
    let ((rows, warning), detail_only): ((Vec<Value>, String), &[&str]) = match what {
        "nodes" => (
            (node_rows(st).await?, String::new()),
            &["resources_available"],
        ),
        "actors" => (actor_rows(st).await?, ACTOR_DETAIL),
        "placement_groups" => (pg_rows(st).await?, PG_DETAIL),
        "jobs" => ((job_rows(st).await?, String::new()), &[]),
        "tasks" => (task_rows(st).await?, TASK_DETAIL),
        "workers" => {
            let (mut rows, w) = gathered(st, StateQuery::Workers).await?;
            sort_by(&mut rows, "worker_id");
            ((rows, w), WORKER_DETAIL)
        }
        "objects" => {
            let (mut rows, w) = gathered(st, StateQuery::Objects).await?;
            sort_by(&mut rows, "object_id");
            ((rows, w), &[])
        }
        other => {
            return Err(StateError::BadRequest(format!(
                "listing {other} is not supported"
            )));
        }
    };
    Ok(envelope(rows, &q, detail_only, &warning))
}

async fn list_route(
    st: web::Data<WebState>,
    what: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    match list(&st, &what, req.query_string()).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => e.response(),
    }
}

/// Ray's envelope around a summary.
fn summary_envelope(summary: Value, n: usize, warning: &str) -> HttpResponse {
    HttpResponse::Ok().json(json!({"result": true, "msg": "", "data": {"result": {
        "total": n, "num_after_truncation": n, "num_filtered": n,
        "result": {"node_id_to_summary": {"cluster": summary}},
        "partial_failure_warning": warning, "warnings": null,
    }}}))
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

fn bump(m: &mut Value, k: &str) {
    let n = m[k].as_u64().unwrap_or(0);
    m[k] = json!(n + 1);
}

async fn summarize_actors(st: web::Data<WebState>) -> HttpResponse {
    let (rows, warning) = match actor_rows(&st).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    for r in &rows {
        let class = str_of(r, "class_name").to_string();
        let e = summary
            .entry(class.clone())
            .or_insert_with(|| json!({"class_name": class, "state_counts": {}}));
        bump(&mut e["state_counts"], str_of(r, "state"));
    }
    let s = json!({"summary": summary, "total_actors": rows.len(), "summary_by": "class"});
    summary_envelope(s, rows.len(), &warning)
}

/// Ray's `TaskSummaries.to_summary_by_func_name` over the merged task rows.
pub fn summarize_task_rows(rows: &[Value]) -> Value {
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    let (mut tasks, mut actor_tasks, mut scheduled) = (0u64, 0u64, 0u64);
    for r in rows {
        let key = match str_of(r, "name") {
            "" => str_of(r, "func_or_class_name"),
            n => n,
        }
        .to_string();
        let e = summary.entry(key.clone()).or_insert_with(
            || json!({"func_or_class_name": key, "type": r["type"], "state_counts": {}}),
        );
        bump(&mut e["state_counts"], str_of(r, "state"));
        match str_of(r, "type") {
            "NORMAL_TASK" => tasks += 1,
            "ACTOR_CREATION_TASK" => scheduled += 1,
            "ACTOR_TASK" => actor_tasks += 1,
            _ => {}
        }
    }
    json!({
        "summary": summary,
        "total_tasks": tasks,
        "total_actor_tasks": actor_tasks,
        "total_actor_scheduled": scheduled,
        "summary_by": "func_name",
    })
}

async fn summarize_tasks(st: web::Data<WebState>) -> HttpResponse {
    match task_rows(&st).await {
        Ok((rows, w)) => summary_envelope(summarize_task_rows(&rows), rows.len(), &w),
        Err(e) => e.response(),
    }
}

async fn summarize_objects(st: web::Data<WebState>) -> HttpResponse {
    let (rows, warning) = match gathered(&st, StateQuery::Objects).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let mb = |r: &Value| r["object_size"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    let mut nodes = std::collections::BTreeSet::new();
    let mut per = json!({"total_objects": 0, "total_size_mb": 0.0, "total_num_workers": 0,
        "total_num_nodes": 0, "task_state_counts": {}, "task_attempt_number_counts": {},
        "ref_type_counts": {}});
    let mut size = 0.0;
    let mut pids = std::collections::BTreeSet::new();
    for r in &rows {
        size += mb(r);
        nodes.insert(str_of(r, "node_id").to_string());
        pids.insert((str_of(r, "node_id").to_string(), r["pid"].as_u64()));
        bump(&mut per["task_state_counts"], str_of(r, "task_status"));
        bump(&mut per["ref_type_counts"], str_of(r, "reference_type"));
        bump(
            &mut per["task_attempt_number_counts"],
            &r["attempt_number"].as_u64().unwrap_or(0).to_string(),
        );
    }
    per["total_objects"] = rows.len().into();
    per["total_size_mb"] = size.into();
    per["total_num_workers"] = pids.len().into();
    per["total_num_nodes"] = nodes.len().into();
    let s = json!({
        "summary": {"disabled": per},
        "total_objects": rows.len(),
        "total_size_mb": size,
        "callsite_enabled": false,
        "summary_by": "callsite",
    });
    summary_envelope(s, rows.len(), &warning)
}

/// The merged task rows as Chrome-trace events (`chrome://tracing`, Perfetto): one complete
/// event (`ph: X`) per attempt that started, on a track per node (`pid`) and worker (`tid`).
pub fn chrome_trace(rows: &[Value], job: Option<&str>) -> Value {
    let mut events = Vec::new();
    for r in rows {
        if job.is_some_and(|j| !str_of(r, "job_id").eq_ignore_ascii_case(j)) {
            continue;
        }
        let Some(start) = r["start_time_ms"].as_u64() else {
            continue;
        };
        let end = r["end_time_ms"]
            .as_u64()
            .unwrap_or_else(super::now_ms)
            .max(start);
        let worker = match r["worker_id"].as_str() {
            Some(w) => format!("worker:{w}"),
            None => format!("pid:{}", r["worker_pid"]),
        };
        let failed = str_of(r, "state") == "FAILED";
        events.push(json!({
            "cat": "task::".to_string() + str_of(r, "func_or_class_name"),
            "name": r["name"],
            "pid": format!("Node {}", str_of(r, "node_id")),
            "tid": worker,
            "ts": start * 1000,
            "dur": (end - start) * 1000,
            "ph": "X",
            "cname": if failed { "terrible" } else { "rail_response" },
            "args": {
                "task_id": r["task_id"], "attempt_number": r["attempt_number"],
                "job_id": r["job_id"], "actor_id": r["actor_id"], "state": r["state"],
                "type": r["type"], "error_type": r["error_type"],
            },
        }));
    }
    Value::Array(events)
}

#[derive(serde::Deserialize)]
struct TimelineQuery {
    job_id: Option<String>,
    download: Option<String>,
}

async fn timeline(st: web::Data<WebState>, q: web::Query<TimelineQuery>) -> HttpResponse {
    let (rows, _) = match task_rows(&st).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let trace = chrome_trace(&rows, q.job_id.as_deref());
    let mut resp = HttpResponse::Ok();
    if q.download.as_deref() == Some("1") {
        let name = format!(
            "timeline-{}-{}.json",
            q.job_id.as_deref().unwrap_or("None"),
            super::now_ms()
        );
        resp.insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ));
    }
    resp.content_type("application/json")
        .body(trace.to_string())
}

/// `node_id`, or the node whose address is `node_ip` (Ray requires one of them).
async fn log_node(
    st: &WebState,
    id: Option<&str>,
    ip: Option<&str>,
) -> Result<String, HttpResponse> {
    let bad = |status, msg: String| {
        HttpResponse::build(status)
            .json(json!({"result": false, "msg": msg, "data": {"result": null}}))
    };
    if let Some(id) = id.filter(|i| !i.is_empty()) {
        return Ok(id.to_string());
    }
    let Some(ip) = ip.filter(|i| !i.is_empty()) else {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "Both node id and node ip are not provided. Please provide at least one of them."
                .to_string(),
        ));
    };
    let nodes = st.status().await.map(|s| s.nodes).unwrap_or_default();
    if let Some(n) = nodes.into_iter().find(|n| n.alive && n.ip == ip) {
        return Ok(n.node_id);
    }
    Err(bad(
        StatusCode::NOT_FOUND,
        format!("Cannot find matching node_id for a given node ip {ip}"),
    ))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    node_id: Option<String>,
    node_ip: Option<String>,
    glob: Option<String>,
}

/// Whether `name` matches a shell-style glob of `*` and `?`.
pub fn glob_match(glob: &str, name: &str) -> bool {
    fn go(g: &[u8], n: &[u8]) -> bool {
        match (g.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&g[1..], n) || (!n.is_empty() && go(g, &n[1..])),
            (Some(b'?'), Some(_)) => go(&g[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&g[1..], &n[1..]),
            _ => false,
        }
    }
    go(glob.as_bytes(), name.as_bytes())
}

async fn list_logs(st: web::Data<WebState>, q: web::Query<LogsQuery>) -> HttpResponse {
    let node = match log_node(&st, q.node_id.as_deref(), q.node_ip.as_deref()).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let answers = match ask(&st, StateQuery::Logs, Some(node.clone())).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let Some(a) = answers.into_iter().next() else {
        return HttpResponse::NotFound().json(json!({"result": false,
            "msg": format!("node {node} is not alive in this cluster"), "data": {"result": null}}));
    };
    match a.result {
        Ok(Value::Object(mut cats)) => {
            let glob = q.glob.as_deref().unwrap_or("*");
            for files in cats.values_mut() {
                if let Value::Array(f) = files {
                    f.retain(|n| n.as_str().is_some_and(|n| glob_match(glob, n)));
                }
            }
            HttpResponse::Ok().json(json!({"result": true, "msg": "", "data": {"result": cats}}))
        }
        Ok(other) => {
            StateError::Unavailable(format!("node {node}: not a listing: {other}")).response()
        }
        Err(e) => StateError::Unavailable(e).response(),
    }
}

#[derive(serde::Deserialize)]
struct LogFileQuery {
    node_id: Option<String>,
    node_ip: Option<String>,
    filename: Option<String>,
    submission_id: Option<String>,
    lines: Option<i64>,
    filter_ansi_code: Option<String>,
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), as Ray's `filter_ansi_code`.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn log_file(
    st: web::Data<WebState>,
    media: web::Path<String>,
    q: web::Query<LogFileQuery>,
) -> HttpResponse {
    if media.as_str() != "file" && media.as_str() != "stream" {
        return text(StatusCode::NOT_FOUND, format!("no log route {media}"));
    }
    // A submission's driver log is on the head.
    let (node, filename) = match (&q.filename, &q.submission_id) {
        (Some(f), _) => match log_node(&st, q.node_id.as_deref(), q.node_ip.as_deref()).await {
            Ok(n) => (Some(n), f.clone()),
            Err(r) => return r,
        },
        (None, Some(sid)) => (None, format!("job-driver-{sid}.log")),
        (None, None) => {
            return text(
                StatusCode::BAD_REQUEST,
                "give filename (with node_id or node_ip) or submission_id; actor, task and pid \
                 logs are in their node's log"
                    .to_string(),
            );
        }
    };
    let node = match node {
        Some(n) => n,
        None => match st
            .status()
            .await
            .and_then(|s| s.nodes.into_iter().find(|n| n.is_head))
        {
            Some(h) => h.node_id,
            None => {
                return StateError::Unavailable("the daemon loop did not answer".to_string())
                    .response();
            }
        },
    };
    // Ray's `lines`: 1000 by default, -1 for the whole file.
    let lines = match q.lines {
        None => 1000,
        Some(n) if n < 0 => 0,
        Some(n) => n as usize,
    };
    let query = StateQuery::LogFile { filename, lines };
    let answers = match ask(&st, query, Some(node.clone())).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    match answers.into_iter().next().map(|a| a.result) {
        Some(Ok(Value::String(t))) => {
            let plain = q
                .filter_ansi_code
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case("true"));
            let t = if plain { strip_ansi(&t) } else { t };
            HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body(t)
        }
        Some(Ok(other)) => StateError::Unavailable(format!("not a log: {other}")).response(),
        Some(Err(e)) if e.contains("not found") => text(StatusCode::NOT_FOUND, e),
        Some(Err(e)) => StateError::Unavailable(e).response(),
        None => text(
            StatusCode::NOT_FOUND,
            format!("node {node} is not alive in this cluster"),
        ),
    }
}

async fn cluster_summary(st: web::Data<WebState>) -> HttpResponse {
    let Some(status) = st.status().await else {
        return StateError::Unavailable("the daemon loop did not answer".to_string()).response();
    };
    let alive = status.nodes.iter().filter(|n| n.alive).count();
    let (mut total, mut avail) = (
        BTreeMap::<String, f64>::new(),
        BTreeMap::<String, f64>::new(),
    );
    for n in status.nodes.iter().filter(|n| n.alive) {
        for (k, v) in &n.total {
            *total.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &n.available {
            *avail.entry(k.clone()).or_default() += v;
        }
    }
    let used: BTreeMap<&String, f64> = total
        .iter()
        .map(|(k, t)| (k, (t - avail.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect();
    let mut actors_by_state: BTreeMap<String, u64> = BTreeMap::new();
    match actor_rows(&st).await {
        Ok((rows, _)) => {
            for r in rows {
                let s = r["state"].as_str().unwrap_or_default().to_string();
                *actors_by_state.entry(s).or_default() += 1;
            }
        }
        Err(e) => return e.response(),
    }
    HttpResponse::Ok().json(json!({"result": true, "msg": "", "data": {
        "nodes": {"alive": alive, "dead": status.nodes.len() - alive},
        "resources": {"total": total, "used": used},
        "actors": actors_by_state,
        "pending_demands": status.pending.len(),
    }}))
}

/// Registers this area's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v0/cluster_summary", web::get().to(cluster_summary))
        .route("/api/v0/actors/summarize", web::get().to(summarize_actors))
        .route("/api/v0/tasks/summarize", web::get().to(summarize_tasks))
        .route(
            "/api/v0/objects/summarize",
            web::get().to(summarize_objects),
        )
        .route("/api/v0/tasks/timeline", web::get().to(timeline))
        .route("/api/v0/logs", web::get().to(list_logs))
        .route("/api/v0/logs/{media}", web::get().to(log_file))
        .route(
            "/api/v0/{what}",
            web::get().to(list_route).guard(guard::fn_guard(listed)),
        );
}

/// The lists served here: other `/api/v0/*` paths stay free for other areas (and 404).
fn listed(ctx: &guard::GuardContext<'_>) -> bool {
    ctx.head()
        .uri
        .path()
        .strip_prefix("/api/v0/")
        .is_some_and(|w| LISTS.contains(&w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_predicates() {
        assert!(ListQuery::parse("limit=10001").is_err());
        assert!(ListQuery::parse("limit=x").is_err());
        assert!(ListQuery::parse("filter_keys=a&filter_predicates=%3C&filter_values=1").is_err());
        let q = ListQuery::parse(
            "limit=1&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&detail=True",
        )
        .expect("parses");
        assert_eq!(q.limit, 1);
        assert!(q.detail);
        let rows = vec![
            json!({"state": "ALIVE", "x": 1}),
            json!({"state": "DEAD", "x": 2}),
            json!({"state": "ALIVE", "x": 3}),
        ];
        let v = envelope(rows, &q, &["x"], "");
        let r = &v["data"]["result"];
        assert_eq!(r["total"], 3);
        assert_eq!(r["num_filtered"], 2);
        assert_eq!(r["num_after_truncation"], 1);
        assert_eq!(r["result"][0]["x"], 1);
    }

    #[test]
    fn ansi_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m up"),
            "2026  INFO up"
        );
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_match("*", "node.log"));
        assert!(glob_match("job-driver-*.log", "job-driver-raysubmit_1.log"));
        assert!(glob_match("node-?.log", "node-2.log"));
        assert!(!glob_match("node-?.log", "node-10.log"));
        assert!(!glob_match("*.out", "node.log"));
    }

    #[test]
    fn task_records_of_one_attempt_merge_and_summarize() {
        let origin = json!({"task_id": "t1", "attempt_number": 0, "state": "SUBMITTED_TO_WORKER",
            "node_id": "b", "worker_id": null, "creation_time_ms": 10, "name": "f",
            "type": "NORMAL_TASK"});
        let runner = json!({"task_id": "t1", "attempt_number": 0, "state": "RUNNING",
            "node_id": "b", "worker_id": "w", "creation_time_ms": 12, "name": "f",
            "type": "NORMAL_TASK"});
        let done = json!({"task_id": "t1", "attempt_number": 0, "state": "FINISHED",
            "node_id": "b", "worker_id": null, "creation_time_ms": 10, "name": "f",
            "type": "NORMAL_TASK"});
        let other = json!({"task_id": "t2", "attempt_number": 0, "state": "FAILED",
            "creation_time_ms": 20, "name": "C.m", "type": "ACTOR_TASK"});
        let rows = merge_tasks(vec![origin, runner, done, other]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["task_id"], "t2", "newest first");
        assert_eq!(rows[1]["state"], "FINISHED");
        assert_eq!(rows[1]["worker_id"], "w", "the runner's worker fills in");
        assert_eq!(rows[1]["creation_time_ms"], 10, "the earliest creation");
        let s = summarize_task_rows(&rows);
        assert_eq!(s["summary"]["f"]["state_counts"]["FINISHED"], 1);
        assert_eq!(s["total_tasks"], 1);
        assert_eq!(s["total_actor_tasks"], 1);
        let trace = chrome_trace(&rows, None);
        assert_eq!(trace.as_array().map(Vec::len), Some(0), "nothing started");
    }
}
