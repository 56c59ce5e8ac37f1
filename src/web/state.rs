//! The state API (`/api/v0/*`, what `ray list|get|summary` call): Ray's response envelope,
//! `limit` / `detail` / `filter_*` semantics and row shapes for nodes, actors, placement
//! groups and jobs, the actors summary, and `/api/v0/cluster_summary` for the dashboard.
//! Rows come from the head alone: nodes from the daemon loop's `StatusReport`, actors,
//! placement groups and jobs from the head's own GCS (actors and groups other nodes'
//! drivers created live in those nodes' GCS and are not listed yet). Handlers only await
//! actor messages.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, guard, web};
use serde_json::{Value, json};

use super::{WebState, text};
use crate::actors::gcs::{ActorState, ListActors, ListJobs, ListPgs, PgState};
use crate::sched::ResourceSet;

/// Largest `limit` accepted (Ray's `RAY_MAX_LIMIT_FROM_API_SERVER`).
pub const MAX_LIMIT: usize = 10_000;
/// The resources `/api/v0/{what}` lists.
const LISTS: &[&str] = &["nodes", "actors", "placement_groups", "jobs"];
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

fn resources(r: &ResourceSet) -> Value {
    let m: BTreeMap<&str, f64> = r.iter().map(|(k, a)| (k, a.to_f64())).collect();
    json!(m)
}

fn actor_state(s: &ActorState) -> &'static str {
    match s {
        ActorState::PendingCreation => "PENDING_CREATION",
        ActorState::Alive => "ALIVE",
        ActorState::Restarting => "RESTARTING",
        ActorState::Dead => "DEAD",
    }
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
    Ok(status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "node_ip": null,
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

async fn actor_rows(st: &WebState) -> Res<Vec<Value>> {
    let actors = node(st)?.gcs.send(ListActors).await.map_err(unavailable)?;
    // An actor the head hosts for another node is that node's to list.
    let mut rows: Vec<Value> = actors
        .iter()
        .filter(|a| !a.spec.owned_elsewhere)
        .map(|a| {
            json!({
                "actor_id": a.spec.actor_id.hex(),
                "class_name": a.spec.class_name,
                "state": actor_state(&a.state),
                "job_id": a.spec.job_id.hex(),
                "name": a.spec.name.clone().unwrap_or_default(),
                "node_id": a.node_id.map(|n| n.hex()),
                "pid": a.pid,
                "ray_namespace": a.spec.namespace,
                "required_resources": resources(&a.spec.resources),
                "death_cause": a.death_cause,
                "is_detached": a.spec.detached,
                "num_restarts": a.num_restarts,
            })
        })
        .collect();
    rows.sort_by(|a, b| a["actor_id"].as_str().cmp(&b["actor_id"].as_str()));
    Ok(rows)
}

const ACTOR_DETAIL: &[&str] = &[
    "required_resources",
    "death_cause",
    "is_detached",
    "num_restarts",
];

async fn pg_rows(st: &WebState) -> Res<Vec<Value>> {
    let pgs = node(st)?.gcs.send(ListPgs).await.map_err(unavailable)?;
    let mut rows: Vec<Value> = pgs
        .iter()
        .map(|p| {
            let state = match &p.state {
                PgState::Pending => "PENDING",
                PgState::Created => "CREATED",
                PgState::Removed => "REMOVED",
                PgState::Failed(_) => "FAILED",
            };
            let bundles: Vec<Value> = p
                .bundles
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    json!({
                        "bundle_id": i,
                        "node_id": p.placement.get(i).map(|n| n.hex()),
                        "unit_resources": resources(b),
                    })
                })
                .collect();
            json!({
                "placement_group_id": p.id.hex(),
                "name": p.name.clone().unwrap_or_default(),
                "creator_job_id": null,
                "state": state,
                "bundles": bundles,
                "is_detached": false,
                "stats": null,
                "topology_strategy": format!("{:?}", p.strategy).to_uppercase(),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        a["placement_group_id"]
            .as_str()
            .cmp(&b["placement_group_id"].as_str())
    });
    Ok(rows)
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

async fn list(st: &WebState, what: &str, query: &str) -> Res<Value> {
    let q = ListQuery::parse(query)?;
    let (rows, detail_only): (Vec<Value>, &[&str]) = match what {
        "nodes" => (node_rows(st).await?, &["resources_available"]),
        "actors" => (actor_rows(st).await?, ACTOR_DETAIL),
        "placement_groups" => (pg_rows(st).await?, PG_DETAIL),
        "jobs" => (job_rows(st).await?, &[]),
        other => {
            return Err(StateError::BadRequest(format!(
                "listing {other} is not supported yet"
            )));
        }
    };
    Ok(envelope(rows, &q, detail_only, ""))
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

async fn summarize_actors(st: web::Data<WebState>) -> HttpResponse {
    let rows = match actor_rows(&st).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    for r in &rows {
        let class = r["class_name"].as_str().unwrap_or_default().to_string();
        let state = r["state"].as_str().unwrap_or_default().to_string();
        let e = summary
            .entry(class.clone())
            .or_insert_with(|| json!({"class_name": class, "state_counts": {}}));
        let n = e["state_counts"][&state].as_u64().unwrap_or(0);
        e["state_counts"][&state] = json!(n + 1);
    }
    HttpResponse::Ok().json(json!({"result": true, "msg": "", "data": {"result": {
        "total": rows.len(), "num_after_truncation": rows.len(), "num_filtered": rows.len(),
        "result": {"node_id_to_summary": {"cluster": {
            "summary": summary, "total_actors": rows.len(), "summary_by": "class"}}},
        "partial_failure_warning": "", "warnings": null,
    }}}))
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
        Ok(rows) => {
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
}
