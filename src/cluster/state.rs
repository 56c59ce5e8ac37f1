//! The cluster-wide state queries behind `/api/v0/*`: what one node answers about itself
//! (its tasks, actors, placement groups, workers, objects and log files, as Ray state-API
//! rows), and the head's fan-out that asks every alive node and gathers the answers
//! (`gather`). A node answers from its own GCS, raylet, task history and object table; the
//! head merges (`web::state`).
//!
//! Rows cross the wire as JSON text inside `ClusterMsg::StateRows`, so the row shapes live
//! in one place (here) and the head only filters, merges and truncates them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::actors::gcs::{ActorState, ListActors, ListPgs, PgState};
use crate::sched::ResourceSet;

/// How long the head waits for one node's answer.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most objects one node lists.
const MAX_OBJECTS: usize = 10_000;
/// Most lines of a log file one answer carries.
pub const MAX_LOG_LINES: usize = 100_000;

/// What the head asks a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum StateQuery {
    /// Its task history.
    Tasks,
    /// The actors its GCS owns.
    Actors,
    /// The placement groups its GCS made.
    PlacementGroups,
    /// Its workers, alive and recently exited.
    Workers,
    /// The objects in its store.
    Objects,
    /// Its log files, by category.
    Logs,
    /// The last lines of one of its log files.
    LogFile {
        /// A name `Logs` listed.
        filename: String,
        /// How many lines from the end (0: all, up to [`MAX_LOG_LINES`]).
        lines: usize,
    },
}

/// One node's answer.
#[derive(Debug, Clone)]
pub struct NodeAnswer {
    /// The node (hex id).
    pub node_id: String,
    /// Its rows (an array), its log listing (an object) or a log's text (a string).
    pub result: Result<Value, String>,
}

/// What a node needs to answer.
#[derive(Clone)]
pub(crate) struct Here {
    pub rt: crate::Runtime,
    /// The address other nodes reach it at.
    pub ip: String,
    /// Where its logs are, and its own log file's name there.
    pub logs: Option<(PathBuf, Option<String>)>,
    /// Whether it is the head (it also lists the job drivers' logs).
    pub is_head: bool,
}

/// Resources as a JSON object of amounts, in name order (the rows' `required_resources`).
pub(crate) fn resources(r: &ResourceSet) -> Value {
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

impl Here {
    fn node(&self) -> Result<&crate::node::NodeClient, String> {
        self.rt
            .core()
            .node()
            .ok_or_else(|| "this process has no node".to_string())
    }

    /// This node's answer to `q`.
    pub(crate) async fn answer(&self, q: &StateQuery) -> Result<Value, String> {
        match q {
            StateQuery::Tasks => Ok(Value::Array(self.node()?.history.rows())),
            StateQuery::Actors => self.actors().await,
            StateQuery::PlacementGroups => self.pgs().await,
            StateQuery::Workers => {
                let node = self.node()?;
                let mut rows = node
                    .raylet
                    .send(crate::actors::raylet::ListWorkers)
                    .await
                    .map_err(|e| format!("raylet: {e}"))?;
                for r in &mut rows {
                    r["ip"] = self.ip.clone().into();
                }
                Ok(Value::Array(rows))
            }
            StateQuery::Objects => Ok(Value::Array(self.objects()?)),
            StateQuery::Logs => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.log_files())
                    .await
                    .map_err(|e| e.to_string())?
            }
            StateQuery::LogFile { filename, lines } => {
                let this = self.clone();
                let (f, n) = (filename.clone(), *lines);
                tokio::task::spawn_blocking(move || this.log_tail(&f, n))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }

    async fn actors(&self) -> Result<Value, String> {
        let node = self.node()?;
        let actors = node
            .gcs
            .send(ListActors)
            .await
            .map_err(|e| format!("gcs: {e}"))?;
        // An actor hosted here for another node is that node's to list.
        let rows = actors
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
        Ok(Value::Array(rows))
    }

    async fn pgs(&self) -> Result<Value, String> {
        let node = self.node()?;
        let pgs = node
            .gcs
            .send(ListPgs)
            .await
            .map_err(|e| format!("gcs: {e}"))?;
        let rows = pgs
            .iter()
            .map(|p| {
                let state = match &p.state {
                    PgState::Pending => "PENDING",
                    PgState::Created => "CREATED",
                    PgState::Rescheduling { .. } => "RESCHEDULING",
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
        Ok(Value::Array(rows))
    }

    fn objects(&self) -> Result<Vec<Value>, String> {
        let node = self.node()?;
        let me = self.rt.node_id().hex();
        let pid = std::process::id();
        Ok(node
            .table
            .list(MAX_OBJECTS)
            .into_iter()
            .map(|(id, size, ready, refs)| {
                json!({
                    "object_id": id.hex(),
                    "object_size": size,
                    "task_status": if ready { "FINISHED" } else { "PENDING_NODE_ASSIGNMENT" },
                    "attempt_number": 0,
                    "reference_type": if refs > 0 { "LOCAL_REFERENCE" } else { "PINNED_IN_MEMORY" },
                    "call_site": "disabled",
                    "type": "WORKER",
                    "pid": pid,
                    "ip": self.ip,
                    "node_id": me,
                    "num_references": refs,
                })
            })
            .collect())
    }

    /// This node's log files by category: `node` (its daemon's log, which also holds its
    /// worker processes' output) and, on the head, `job_driver` (submitted jobs' output).
    fn log_files(&self) -> Result<Value, String> {
        let mut cats: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for name in self.listed()? {
            let cat = if name.starts_with("job-driver-") {
                "job_driver"
            } else {
                "node"
            };
            cats.entry(cat).or_default().push(name);
        }
        Ok(json!(cats))
    }

    fn listed(&self) -> Result<Vec<String>, String> {
        let Some((dir, own)) = &self.logs else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            // Job drivers' logs: on the head, its copies of every submission's output; on
            // another node, the entrypoints it ran for the head (named for it).
            let driver = name.starts_with("job-driver-") && name.ends_with(".log");
            let here = name.ends_with(&format!("-on-{}.log", self.rt.node_id().hex()));
            let mine = own.as_deref() == Some(name.as_str())
                || (driver && here)
                || (driver && self.is_head && !name.contains("-on-"));
            if mine && e.file_type().is_ok_and(|t| t.is_file()) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn log_tail(&self, filename: &str, lines: usize) -> Result<Value, String> {
        if !self.listed()?.iter().any(|n| n == filename) {
            return Err(format!("log file {filename} not found on this node"));
        }
        let Some((dir, _)) = &self.logs else {
            return Err(format!("log file {filename} not found on this node"));
        };
        Ok(Value::String(tail(&dir.join(filename), lines)?))
    }
}

/// The last `lines` lines of a file (all of it, up to [`MAX_LOG_LINES`], for 0), read from the
/// end so a large log is not read whole.
pub fn tail(path: &Path, lines: usize) -> Result<String, String> {
    use std::io::{Read, Seek, SeekFrom};
    let want = if lines == 0 || lines > MAX_LOG_LINES {
        MAX_LOG_LINES
    } else {
        lines
    };
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    const STEP: u64 = 64 * 1024;
    loop {
        let newlines = buf.iter().filter(|b| **b == b'\n').count();
        // One more newline than lines: the text ends with one.
        if pos == 0 || newlines > want {
            break;
        }
        let start = pos.saturating_sub(STEP);
        let mut part = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut part))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        part.extend_from_slice(&buf);
        buf = part;
        pos = start;
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    let from = all.len().saturating_sub(want);
    Ok(all[from..].concat())
}

/// Asks each of `peers` (node id, libp2p peer) at once and gathers their answers, first this
/// node's own when `own_id` is given; a node that fails or does not answer within
/// [`NODE_TIMEOUT`] gives an error.
pub(crate) async fn gather(
    here: &Here,
    own_id: Option<&str>,
    peers: Vec<(String, libp2p::PeerId)>,
    net: &crate::net::NetHandle,
    q: &StateQuery,
) -> Vec<NodeAnswer> {
    let msg = super::encode(&super::ClusterMsg::State(q.clone()));
    let asks = peers.into_iter().map(|(node_id, peer)| {
        let msg = msg.clone();
        async move {
            let r = tokio::time::timeout(NODE_TIMEOUT, net.request(peer, msg)).await;
            let result = match r {
                Err(_) => Err(format!("node {node_id} did not answer in {NODE_TIMEOUT:?}")),
                Ok(Err(e)) => Err(format!("node {node_id}: {e}")),
                Ok(Ok(bytes)) => match super::decode(&bytes) {
                    Ok(super::ClusterMsg::StateRows(Ok(text))) => {
                        serde_json::from_str(&text).map_err(|e| format!("node {node_id}: {e}"))
                    }
                    Ok(super::ClusterMsg::StateRows(Err(e))) => Err(e),
                    Ok(other) => Err(format!("node {node_id}: unexpected reply {other:?}")),
                    Err(e) => Err(format!("node {node_id}: {e}")),
                },
            };
            NodeAnswer { node_id, result }
        }
    });
    let own = async {
        match own_id {
            Some(id) => Some(NodeAnswer {
                node_id: id.to_string(),
                result: here.answer(q).await,
            }),
            None => None,
        }
    };
    let (own, rest) = futures::join!(own, futures::future::join_all(asks));
    own.into_iter().chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_the_last_lines_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.log");
        let text: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).expect("write");
        assert_eq!(
            tail(&p, 3).expect("tail"),
            "line 199997\nline 199998\nline 199999\n"
        );
        std::fs::write(&p, "a\nb").expect("write");
        assert_eq!(tail(&p, 1).expect("tail"), "b");
        assert_eq!(tail(&p, 5).expect("tail"), "a\nb");
        std::fs::write(&p, "").expect("write");
        assert_eq!(tail(&p, 5).expect("tail"), "");
    }
}
