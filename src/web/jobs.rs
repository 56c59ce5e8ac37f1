//! The Jobs REST API, wire-compatible with Ray's Jobs API version 4, and the supervisor of
//! submitted jobs.
//!
//! - Records: a submission's `JobInfo` is JSON in the head GCS's KV, namespace `job`, key
//!   `_ray_internal_job_info_<submission_id>` (where Ray keeps it), so it is durable with the
//!   head's storage. DRIVER jobs (programs that called `init()` against the head) come from
//!   the GCS job table; a driver started by a submission carries `MOBULA_SUBMISSION_ID` in
//!   its hello, which links the two.
//! - Supervision: an entrypoint is `sh -c ENTRYPOINT` in its own process group on the head,
//!   in the unpacked working dir, with `MOBULA_ADDRESS` (the head), `MOBULA_TEMP_DIR` and
//!   `MOBULA_SUBMISSION_ID` set, so a mobula program started there joins the cluster as the
//!   job's driver. Output goes to `<cluster dir>/logs/job-driver-<sid>.log`. Stop sends
//!   SIGTERM to the group, then SIGKILL after `RAY_JOB_STOP_WAIT_TIME_S` (3 s).
//! - Entrypoint resources: decision, the job waits (PENDING) until the head's free resources
//!   cover `entrypoint_num_cpus/gpus/memory/resources`, up to `RAY_JOB_START_TIMEOUT_SECONDS`
//!   (900 s), then fails; they are checked, not reserved, while the entrypoint runs.
//! - Packages (`--working-dir`): `PUT /api/packages/{protocol}/{name}` stores the zip under
//!   `<cluster dir>/packages/`; a job with `runtime_env.working_dir` gets it unpacked into
//!   `<cluster dir>/jobs/<sid>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{WebState, now_ms, text};
use crate::actors::gcs::{Kv, KvAnswer, KvOp};

/// KV namespace and key prefix of submission records (Ray's).
const KV_NS: &str = "job";
const KV_PREFIX: &str = "_ray_internal_job_info_";
/// Characters of generated submission ids (Ray's: no I, l, o, O, 0).
const ID_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz123456789";
/// Keys a submit request may carry.
const SUBMIT_KEYS: &[&str] = &[
    "entrypoint",
    "submission_id",
    "job_id",
    "runtime_env",
    "metadata",
    "entrypoint_num_cpus",
    "entrypoint_num_gpus",
    "entrypoint_memory",
    "entrypoint_resources",
    "entrypoint_label_selector",
];

/// A submission's status (Ray's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    /// Not started yet.
    Pending,
    /// Its entrypoint runs.
    Running,
    /// Stopped by a request.
    Stopped,
    /// Its entrypoint exited 0.
    Succeeded,
    /// It could not start, or its entrypoint exited non-zero.
    Failed,
}

impl JobStatus {
    /// Stopped, succeeded or failed: it never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Succeeded | Self::Failed)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::Pending => "Job has not started yet.",
            Self::Running => "Job is currently running.",
            Self::Stopped => "Job was intentionally stopped.",
            Self::Succeeded => "Job finished successfully.",
            Self::Failed => "Job failed.",
        }
    }
}

/// What the GCS keeps of a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub submission_id: String,
    /// The shell command.
    pub entrypoint: String,
    /// Where it is.
    pub status: JobStatus,
    /// Why it is there.
    pub message: Option<String>,
    /// Ray's error type, when it failed.
    pub error_type: Option<String>,
    /// Submission time (ms).
    pub start_time: u64,
    /// When it became terminal (ms).
    pub end_time: Option<u64>,
    /// User metadata.
    pub metadata: Map<String, Value>,
    /// The runtime environment asked for.
    pub runtime_env: Map<String, Value>,
    /// Entrypoint resources asked for (CPU, GPU, memory and custom).
    pub resources: HashMap<String, f64>,
    /// The entrypoint's exit code (negative: killed by that signal).
    pub driver_exit_code: Option<i32>,
    /// The entrypoint shell's pid.
    pub pid: Option<u32>,
    /// The node running the entrypoint, when it is not the head.
    #[serde(default)]
    pub node_id: Option<String>,
}

fn kv_key(sid: &str) -> String {
    format!("{KV_PREFIX}{sid}")
}

/// A running entrypoint the supervisor can be asked to stop.
struct Supervised {
    stop: tokio::sync::watch::Sender<bool>,
}

/// The supervisor's state, shared by the server's workers.
#[derive(Default)]
pub struct JobManager {
    running: parking_lot::Mutex<HashMap<String, Supervised>>,
    /// Serialises the writes of one submission's record (status changes are read-modify-write).
    writes: tokio::sync::Mutex<()>,
}

/// A failure of a job route, answered as Ray does (text with a status).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A bad request (400).
    #[error("{0}")]
    Bad(String),
    /// No such job or package (404).
    #[error("{0}")]
    NotFound(String),
    /// A server-side failure, or a request Ray answers with 500 (duplicate id, deleting a
    /// running job).
    #[error("{0}")]
    Internal(String),
}

impl actix_web::ResponseError for JobError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Bad(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        text(self.status_code(), self.to_string())
    }
}

type Res<T> = Result<T, JobError>;

fn node(st: &WebState) -> Res<&crate::node::NodeClient> {
    st.rt
        .core()
        .node()
        .ok_or_else(|| JobError::Internal("the head has no node".to_string()))
}

fn gcs_err(e: impl std::fmt::Display) -> JobError {
    JobError::Internal(format!("gcs: {e}"))
}

/// Runs a KV operation at the head's GCS.
async fn kv(st: &WebState, op: KvOp) -> Res<KvAnswer> {
    node(st)?
        .gcs
        .send(Kv(op))
        .await
        .map_err(gcs_err)?
        .map_err(gcs_err)
}

async fn load(st: &WebState, sid: &str) -> Res<Option<JobInfo>> {
    let op = KvOp::Get {
        ns: KV_NS.to_string(),
        key: kv_key(sid),
    };
    let got = kv(st, op).await?.value().map_err(gcs_err)?;
    match got {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JobError::Internal(format!("job record {sid} does not decode: {e}"))),
    }
}

async fn store(st: &WebState, info: &JobInfo) -> Res<()> {
    let bytes = serde_json::to_vec(info).map_err(|e| JobError::Internal(e.to_string()))?;
    let op = KvOp::Put {
        ns: KV_NS.to_string(),
        key: kv_key(&info.submission_id),
        value: bytes,
        overwrite: true,
    };
    kv(st, op).await?.done().map_err(gcs_err)?;
    Ok(())
}

async fn submissions(st: &WebState) -> Res<Vec<JobInfo>> {
    let op = KvOp::List {
        ns: KV_NS.to_string(),
        prefix: KV_PREFIX.to_string(),
    };
    let rows = kv(st, op).await?.entries().map_err(gcs_err)?;
    let mut out: Vec<JobInfo> = rows
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice(&v) {
            Ok(info) => Some(info),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "a job record does not decode: skipped");
                None
            }
        })
        .collect();
    out.sort_by_key(|j| j.start_time);
    Ok(out)
}

/// Submissions by status (for `/metrics`); empty when the GCS does not answer.
pub async fn status_counts(st: &WebState) -> crate::actors::metrics::Counts {
    let mut out = crate::actors::metrics::Counts::new();
    for j in submissions(st).await.unwrap_or_default() {
        *out.entry(j.status.name().to_string()).or_default() += 1;
    }
    out
}

async fn drivers(st: &WebState) -> Res<Vec<crate::actors::gcs::JobRecord>> {
    let jobs = node(st)?
        .gcs
        .send(crate::actors::gcs::ListJobs)
        .await
        .map_err(gcs_err)?;
    // The daemon's own job and internal namespaces are not users' jobs.
    Ok(jobs
        .into_iter()
        .filter(|j| {
            !j.namespace.starts_with("_mobula") && !j.namespace.starts_with("_ray_internal")
        })
        .collect())
}

/// Updates a stored record under the write lock; returns the new record.
async fn update(
    st: &WebState,
    sid: &str,
    change: impl FnOnce(&mut JobInfo),
) -> Res<Option<JobInfo>> {
    let _guard = st.jobs.writes.lock().await;
    let Some(mut info) = load(st, sid).await? else {
        return Ok(None);
    };
    if info.status.is_terminal() {
        return Ok(Some(info));
    }
    change(&mut info);
    store(st, &info).await?;
    Ok(Some(info))
}

/// The JobDetails of a submission, in Ray's key order.
fn submission_details(
    st: &WebState,
    info: &JobInfo,
    driver: Option<&crate::actors::gcs::JobRecord>,
) -> Value {
    let ip = st.head_address.split(':').next().unwrap_or("").to_string();
    let node_id = st.rt.node_id().hex();
    let driver_info = driver.map(
        |d| json!({"id": d.job_id.hex(), "node_ip_address": ip, "pid": d.driver_pid.to_string()}),
    );
    json!({
        "type": "SUBMISSION",
        "job_id": driver.map(|d| d.job_id.hex()),
        "submission_id": info.submission_id,
        "driver_info": driver_info,
        "status": info.status.name(),
        "entrypoint": info.entrypoint,
        "message": info.message.clone().unwrap_or_else(|| info.status.default_message().to_string()),
        "error_type": info.error_type,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": info.metadata,
        "runtime_env": info.runtime_env,
        "driver_agent_http_address": st.addr.lock().map(|a| format!("http://{a}")),
        "driver_node_id": info.node_id.clone().unwrap_or(node_id),
        "driver_exit_code": info.driver_exit_code,
    })
}

/// The JobDetails of a plain driver (Ray: SUCCEEDED once the driver is gone).
fn driver_details(st: &WebState, d: &crate::actors::gcs::JobRecord) -> Value {
    let ip = st.head_address.split(':').next().unwrap_or("").to_string();
    let (status, message) = match d.end_time_ms {
        Some(_) => ("SUCCEEDED", "Job finished successfully."),
        None => ("RUNNING", "Job is currently running."),
    };
    json!({
        "type": "DRIVER",
        "job_id": d.job_id.hex(),
        "submission_id": null,
        "driver_info": {"id": d.job_id.hex(), "node_ip_address": ip, "pid": d.driver_pid.to_string()},
        "status": status,
        "entrypoint": "",
        "message": message,
        "error_type": null,
        "start_time": d.start_time_ms,
        "end_time": d.end_time_ms,
        "metadata": {},
        "runtime_env": {},
        "driver_agent_http_address": null,
        "driver_node_id": st.rt.node_id().hex(),
        "driver_exit_code": null,
    })
}

/// A job by submission id or driver job id.
enum Found {
    Submission(Box<JobInfo>, Option<crate::actors::gcs::JobRecord>),
    Driver(crate::actors::gcs::JobRecord),
}

async fn find(st: &WebState, id: &str) -> Res<Found> {
    let drivers = drivers(st).await?;
    if let Some(info) = load(st, id).await? {
        let driver = drivers
            .into_iter()
            .find(|d| d.submission_id.as_deref() == Some(id));
        return Ok(Found::Submission(Box::new(info), driver));
    }
    if let Some(d) = drivers.into_iter().find(|d| d.job_id.hex() == id) {
        if let Some(sid) = d.submission_id.clone()
            && let Some(info) = load(st, &sid).await?
        {
            return Ok(Found::Submission(Box::new(info), Some(d)));
        }
        return Ok(Found::Driver(d));
    }
    Err(JobError::NotFound(format!("Job {id} does not exist")))
}

fn details_of(st: &WebState, found: &Found) -> Value {
    match found {
        Found::Submission(info, d) => submission_details(st, info, d.as_ref()),
        Found::Driver(d) => driver_details(st, d),
    }
}

fn submission_only(found: Found, what: &str) -> Res<JobInfo> {
    match found {
        Found::Submission(info, _) => Ok(*info),
        Found::Driver(_) => Err(JobError::Bad(format!(
            "Can only {what} submission type jobs"
        ))),
    }
}

fn new_submission_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| ID_CHARS[rng.random_range(0..ID_CHARS.len())] as char)
        .collect();
    format!("raysubmit_{tail}")
}

fn number(v: &Value, key: &str) -> Res<f64> {
    v.as_f64()
        .filter(|n| *n >= 0.0)
        .ok_or_else(|| JobError::Bad(format!("{key} must be a non-negative number, got {v}")))
}

fn string_map(v: &Value, key: &str) -> Res<Map<String, Value>> {
    let m = v
        .as_object()
        .ok_or_else(|| JobError::Bad(format!("{key} must be a dict, got {v}")))?;
    if let Some((k, bad)) = m.iter().find(|(_, x)| !x.is_string()) {
        return Err(JobError::Bad(format!(
            "{key} values must be strings: {k}={bad}"
        )));
    }
    Ok(m.clone())
}

/// Checks a submit request as Ray's `JobSubmitRequest(**json)` does.
fn parse_submit(body: &[u8]) -> Res<JobInfo> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| JobError::Bad(format!("malformed request body: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(JobError::Bad(
            "the request body must be a JSON object".to_string(),
        ));
    };
    m.retain(|_, v| !v.is_null());
    if let Some(k) = m.keys().find(|k| !SUBMIT_KEYS.contains(&k.as_str())) {
        return Err(JobError::Bad(format!(
            "JobSubmitRequest.__init__() got an unexpected keyword argument '{k}'"
        )));
    }
    let entrypoint =
        match m.get("entrypoint") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(JobError::Bad(format!(
                    "entrypoint must be a string, got {other}"
                )));
            }
            None => return Err(JobError::Bad(
                "JobSubmitRequest.__init__() missing 1 required positional argument: 'entrypoint'"
                    .to_string(),
            )),
        };
    let submission_id = match m.get("submission_id").or_else(|| m.get("job_id")) {
        None => new_submission_id(),
        Some(Value::String(s))
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            s.clone()
        }
        Some(other) => {
            return Err(JobError::Bad(format!(
                "submission_id must be a non-empty string of letters, digits, '_', '-' or '.', got {other}"
            )));
        }
    };
    let runtime_env = match m.get("runtime_env") {
        None => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(other) => {
            return Err(JobError::Bad(format!(
                "runtime_env must be a dict, got {other}"
            )));
        }
    };
    if let Some(wd) = runtime_env.get("working_dir")
        && !wd.is_string()
    {
        return Err(JobError::Bad(format!(
            "runtime_env.working_dir must be a string, got {wd}"
        )));
    }
    if let Some(env) = runtime_env.get("env_vars") {
        string_map(env, "runtime_env.env_vars")?;
    }
    let metadata = match m.get("metadata") {
        None => Map::new(),
        Some(v) => string_map(v, "metadata")?,
    };
    let mut resources = HashMap::new();
    if let Some(v) = m.get("entrypoint_num_cpus") {
        resources.insert(
            crate::sched::resources::CPU.to_string(),
            number(v, "entrypoint_num_cpus")?,
        );
    }
    if let Some(v) = m.get("entrypoint_num_gpus") {
        resources.insert(
            crate::sched::resources::GPU.to_string(),
            number(v, "entrypoint_num_gpus")?,
        );
    }
    if let Some(v) = m.get("entrypoint_memory") {
        if !v.is_u64() {
            return Err(JobError::Bad(format!(
                "entrypoint_memory must be an int, got {v}"
            )));
        }
        resources.insert(
            crate::sched::resources::MEMORY.to_string(),
            number(v, "entrypoint_memory")?,
        );
    }
    if let Some(v) = m.get("entrypoint_resources") {
        let o = v.as_object().ok_or_else(|| {
            JobError::Bad(format!("entrypoint_resources must be a dict, got {v}"))
        })?;
        for (k, q) in o {
            resources.insert(k.clone(), number(q, &format!("entrypoint_resources.{k}"))?);
        }
    }
    resources.retain(|_, q| *q > 0.0);
    Ok(JobInfo {
        submission_id,
        entrypoint,
        status: JobStatus::Pending,
        message: None,
        error_type: None,
        start_time: now_ms(),
        end_time: None,
        metadata,
        runtime_env,
        resources,
        driver_exit_code: None,
        pid: None,
        node_id: None,
    })
}

async fn submit(st: web::Data<WebState>, body: web::Bytes) -> Res<HttpResponse> {
    let info = parse_submit(&body)?;
    let sid = info.submission_id.clone();
    {
        let _guard = st.jobs.writes.lock().await;
        if load(&st, &sid).await?.is_some() {
            return Err(JobError::Internal(format!(
                "Job with submission_id {sid} already exists. Please use a different submission_id."
            )));
        }
        store(&st, &info).await?;
    }
    start_supervision(st.clone().into_inner(), info);
    tracing::info!(job = %sid, "job submitted");
    Ok(HttpResponse::Ok().json(json!({"job_id": sid, "submission_id": sid})))
}

/// Records that submission `sid` is supervised here; its stop switch.
fn supervised(st: &WebState, sid: &str) -> tokio::sync::watch::Receiver<bool> {
    let (stop, rx) = tokio::sync::watch::channel(false);
    st.jobs
        .running
        .lock()
        .insert(sid.to_string(), Supervised { stop });
    rx
}

/// Supervises a submission on the server's runtime until it ends.
fn start_supervision(state: Arc<WebState>, info: JobInfo) {
    let stop_rx = supervised(&state, &info.submission_id);
    actix_web::rt::spawn(async move {
        let sid = info.submission_id.clone();
        if let Err(e) = supervise(state.clone(), info, stop_rx).await {
            tracing::error!(job = %sid, error = %e, "job supervision failed");
            let msg = e.to_string();
            let _ = update(&state, &sid, |j| {
                finish(
                    j,
                    JobStatus::Failed,
                    Some(msg),
                    Some("JOB_ENTRYPOINT_COMMAND_START_ERROR"),
                    None,
                )
            })
            .await;
        }
        state.jobs.running.lock().remove(&sid);
    });
}

/// After a head restart: takes back the submissions its records say are not over. A pending
/// one is supervised again; a running entrypoint of the head that outlived the crash (its own
/// process group) is watched to its end, its exit code read from its exit file; one that
/// ended meanwhile gets its recorded code, or fails when it left none. An entrypoint another
/// node runs is followed again: that node kept its reports for the restarted head.
pub async fn resume(st: Arc<WebState>) {
    let subs = match submissions(&st).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the job records to resume them");
            return;
        }
    };
    for info in subs.into_iter().filter(|j| !j.status.is_terminal()) {
        let sid = info.submission_id.clone();
        let log = log_path(&st, &sid);
        let r = match (info.status, info.pid, info.node_id.clone()) {
            (_, _, Some(node)) => {
                // Its node holds back its reports while the head is down and sends them to
                // the restarted head, which follows them from here.
                tracing::info!(job = %sid, node = %node, "following again a job another node runs");
                let (events_tx, events) = flume::bounded(1024);
                let ask = crate::node::ClusterAsk::FollowJob {
                    node: node.clone(),
                    sid: sid.clone(),
                    events: events_tx,
                };
                if st.asks.send_async(ask).await.is_err() {
                    tracing::warn!(job = %sid, "the head's daemon loop is gone: the job is not followed");
                    continue;
                }
                let stop = supervised(&st, &sid);
                let (st, sid) = (st.clone(), sid.clone());
                actix_web::rt::spawn(async move {
                    if let Err(e) = follow_remote(&st, &sid, &node, events, stop).await {
                        tracing::warn!(job = %sid, error = %e, "cannot follow a job of another node");
                    }
                    st.jobs.running.lock().remove(&sid);
                });
                Ok(())
            }
            (JobStatus::Pending, _, None) => {
                tracing::info!(job = %sid, "supervising a pending job again after a restart");
                start_supervision(st.clone(), info);
                Ok(())
            }
            (_, Some(pid), None) if crate::cluster::jobs::runs_job(pid, &sid) => {
                tracing::info!(job = %sid, pid, "following a job whose entrypoint outlived the head's restart");
                let stop = supervised(&st, &sid);
                let (st, sid) = (st.clone(), sid.clone());
                actix_web::rt::spawn(async move {
                    let (code, stopped) = crate::cluster::jobs::adopt(&sid, pid, &log, stop).await;
                    if let Err(e) = ended(&st, &sid, code, stopped).await {
                        tracing::warn!(job = %sid, error = %e, "cannot record an adopted job's end");
                    }
                    st.jobs.running.lock().remove(&sid);
                });
                Ok(())
            }
            _ => match crate::cluster::jobs::recorded_exit(&log) {
                Some(code) => ended(&st, &sid, Some(code), false).await,
                None => {
                    let msg = "Job failed: its entrypoint ended while the head was down and left no exit code.".to_string();
                    failed_to_start(&st, &sid, msg, "JOB_SUPERVISOR_ACTOR_DIED").await
                }
            },
        };
        if let Err(e) = r {
            tracing::warn!(job = %sid, error = %e, "cannot resume a job");
        }
    }
}

fn finish(
    j: &mut JobInfo,
    status: JobStatus,
    message: Option<String>,
    error_type: Option<&str>,
    code: Option<i32>,
) {
    j.status = status;
    j.message = message;
    j.error_type = error_type.map(str::to_string);
    j.end_time = Some(now_ms());
    if code.is_some() {
        j.driver_exit_code = code;
    }
}

/// The log file of a submission.
pub fn log_path(st: &WebState, sid: &str) -> PathBuf {
    st.dir
        .dir
        .join("logs")
        .join(format!("job-driver-{sid}.log"))
}

fn package_path(st: &WebState, protocol: &str, name: &str) -> Res<PathBuf> {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    };
    if !ok(protocol) || !ok(name) {
        return Err(JobError::Bad(format!(
            "bad package name {protocol}://{name}"
        )));
    }
    Ok(st
        .dir
        .dir
        .join("packages")
        .join(format!("{protocol}_{name}")))
}

/// Where an entrypoint runs.
enum Placement {
    /// On the head.
    Head,
    /// On another node (hex id), which has the resources the head lacks.
    Node(String),
}

/// Waits until the head's free resources cover the entrypoint's (else those of another alive
/// node), or fails the job. `None`: the job ended while it waited.
async fn wait_for_resources(
    st: &WebState,
    info: &JobInfo,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Res<Option<Placement>> {
    if info.resources.is_empty() {
        return Ok(Some(Placement::Head));
    }
    let timeout = std::env::var("RAY_JOB_START_TIMEOUT_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(900.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    let mut told = false;
    loop {
        let nodes = st.status().await.map(|r| r.nodes).unwrap_or_default();
        let fits = |free: &HashMap<String, f64>| {
            info.resources
                .iter()
                .all(|(k, q)| free.get(k).copied().unwrap_or(0.0) + 1e-9 >= *q)
        };
        // The head first, then the other alive nodes.
        let mut order: Vec<_> = nodes.iter().filter(|n| n.alive).collect();
        order.sort_by_key(|n| !n.is_head);
        if let Some(n) = order.into_iter().find(|n| fits(&n.available)) {
            return Ok(Some(match n.is_head {
                true => Placement::Head,
                false => Placement::Node(n.node_id.clone()),
            }));
        }
        if !told {
            told = true;
            let want = format!("{:?}", info.resources);
            update(st, &info.submission_id, |j| {
                j.message = Some(format!("Job has not started yet. It is waiting for the resources {want} to be available on a node."));
            })
            .await?;
        }
        if tokio::time::Instant::now() >= deadline {
            let msg = format!(
                "Job supervisor could not be scheduled within {timeout} s: no node had the resources {:?} free.",
                info.resources
            );
            update(st, &info.submission_id, |j| {
                finish(
                    j,
                    JobStatus::Failed,
                    Some(msg),
                    Some("JOB_SUPERVISOR_ACTOR_START_TIMEOUT"),
                    None,
                )
            })
            .await?;
            return Ok(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {
                update(st, &info.submission_id, |j| finish(j, JobStatus::Stopped, None, None, None)).await?;
                return Ok(None);
            }
        }
    }
}

/// Unpacks a `working_dir` package into the job's own directory.
fn unpack(zip_path: &Path, into: &Path) -> Result<(), String> {
    let file = std::fs::File::open(zip_path)
        .map_err(|e| format!("cannot open {}: {e}", zip_path.display()))?;
    crate::cluster::jobs::unpack(file, into)
}

/// The `working_dir` package's path on the head, if the job has one.
fn package_of(st: &WebState, info: &JobInfo) -> Res<Option<PathBuf>> {
    let Some(uri) = info.runtime_env.get("working_dir").and_then(Value::as_str) else {
        return Ok(None);
    };
    let (protocol, name) = uri.split_once("://").ok_or_else(|| {
        JobError::Internal(format!(
            "working_dir {uri} is not a package URI (gcs://...)"
        ))
    })?;
    let zip = package_path(st, protocol, name)?;
    if !zip.exists() {
        return Err(JobError::Internal(format!("Package {uri} does not exist")));
    }
    Ok(Some(zip))
}

async fn working_dir(st: &WebState, info: &JobInfo) -> Res<PathBuf> {
    let dir = st.dir.dir.join("jobs").join(&info.submission_id);
    let Some(zip) = package_of(st, info)? else {
        std::fs::create_dir_all(&dir).map_err(|e| JobError::Internal(e.to_string()))?;
        return Ok(dir);
    };
    let into = dir.clone();
    web::block(move || unpack(&zip, &into))
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?
        .map_err(JobError::Internal)?;
    Ok(dir)
}

/// The last `n` lines of a log, at most 20,000 characters of them, for a failure message.
fn last_lines(path: &Path, n: usize) -> String {
    // Read from the end (`state::tail`), not the whole log.
    let text = crate::cluster::state::tail(path, n).unwrap_or_default();
    let tail = text.lines().collect::<Vec<_>>().join("\n");
    let max = 20_000;
    if tail.len() > max {
        let mut cut = tail.len() - max;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail
    }
}

/// The entrypoint's own environment: the cluster's address and `runtime_env.env_vars`.
fn job_env(st: &WebState, info: &JobInfo) -> Vec<(String, String)> {
    let mut env = vec![
        ("MOBULA_ADDRESS".to_string(), st.head_address.clone()),
        (
            "MOBULA_TEMP_DIR".to_string(),
            st.temp_root.to_string_lossy().into_owned(),
        ),
    ];
    if let Some(Value::Object(vars)) = info.runtime_env.get("env_vars") {
        for (k, v) in vars {
            if let Some(v) = v.as_str() {
                env.push((k.clone(), v.to_string()));
            }
        }
    }
    env
}

/// Records how an entrypoint ended.
async fn ended(st: &WebState, sid: &str, code: Option<i32>, stopped: bool) -> Res<()> {
    let log = log_path(st, sid);
    let tail = web::block(move || last_lines(&log, 10))
        .await
        .unwrap_or_default();
    update(st, sid, |j| {
        if stopped {
            finish(j, JobStatus::Stopped, None, None, code);
        } else if code == Some(0) {
            finish(j, JobStatus::Succeeded, None, None, code);
        } else {
            let shown = code.map_or("unknown".to_string(), |c| c.to_string());
            let msg = format!("Job entrypoint command failed with exit code {shown}, last available logs (truncated to 20,000 chars):\n{tail}");
            finish(j, JobStatus::Failed, Some(msg), Some("JOB_ENTRYPOINT_COMMAND_ERROR"), code);
        }
    })
    .await?;
    Ok(())
}

async fn failed_to_start(st: &WebState, sid: &str, msg: String, error_type: &str) -> Res<()> {
    update(st, sid, |j| {
        finish(j, JobStatus::Failed, Some(msg), Some(error_type), None)
    })
    .await?;
    Ok(())
}

async fn started(st: &WebState, sid: &str, pid: u32, node: Option<String>) -> Res<()> {
    update(st, sid, |j| {
        j.status = JobStatus::Running;
        j.message = None;
        j.pid = Some(pid);
        j.node_id = node;
    })
    .await?;
    Ok(())
}

/// Runs a job's entrypoint to its end.
async fn supervise(
    st: Arc<WebState>,
    info: JobInfo,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Res<()> {
    let sid = info.submission_id.clone();
    match wait_for_resources(&st, &info, &mut stop).await? {
        None => return Ok(()),
        Some(Placement::Node(node)) => return supervise_remote(&st, &info, node, stop).await,
        Some(Placement::Head) => {}
    }
    let cwd = working_dir(&st, &info).await?;
    let log = log_path(&st, &sid);
    let e = crate::cluster::jobs::Entrypoint {
        sid: &sid,
        command: &info.entrypoint,
        cwd: &cwd,
        log: &log,
        env: job_env(&st, &info),
    };
    let (child, pid) = match crate::cluster::jobs::spawn(&e) {
        Ok(c) => c,
        Err(msg) => {
            return failed_to_start(&st, &sid, msg, "JOB_ENTRYPOINT_COMMAND_START_ERROR").await;
        }
    };
    started(&st, &sid, pid, None).await?;
    let (code, stopped) = crate::cluster::jobs::wait(&sid, child, pid, stop).await;
    ended(&st, &sid, code, stopped).await
}

/// Runs a job's entrypoint on `node` (which has the resources the head lacks): the node
/// reports its output, which is appended to the head's copy of the log, and its end.
async fn supervise_remote(
    st: &WebState,
    info: &JobInfo,
    node: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Res<()> {
    use crate::cluster::jobs::{MAX_REMOTE_PACKAGE, RemoteJob};
    let sid = info.submission_id.clone();
    let package = match package_of(st, info)? {
        None => None,
        Some(zip) => {
            let bytes = web::block(move || std::fs::read(&zip))
                .await
                .map_err(|e| JobError::Internal(e.to_string()))?
                .map_err(|e| JobError::Internal(e.to_string()))?;
            if bytes.len() > MAX_REMOTE_PACKAGE {
                let msg = format!(
                    "the working_dir package ({} bytes) is over the {MAX_REMOTE_PACKAGE} bytes sent to a node other than the head",
                    bytes.len()
                );
                return failed_to_start(st, &sid, msg, "RUNTIME_ENV_SETUP_FAILED").await;
            }
            Some(serde_bytes::ByteBuf::from(bytes))
        }
    };
    let mut env = job_env(st, info);
    // The node adds its own cluster root; the head's would not exist there.
    env.retain(|(k, _)| k != "MOBULA_TEMP_DIR");
    let job = RemoteJob {
        sid: sid.clone(),
        entrypoint: info.entrypoint.clone(),
        env,
        package,
    };
    let (events_tx, events) = flume::bounded(1024);
    let (done, accepted) = flume::bounded(1);
    let ask = crate::node::ClusterAsk::RunJob {
        node: node.clone(),
        job,
        events: events_tx,
        done,
    };
    if st.asks.send_async(ask).await.is_err() {
        let msg = "the head's daemon loop is gone".to_string();
        return failed_to_start(st, &sid, msg, "JOB_SUPERVISOR_ACTOR_START_TIMEOUT").await;
    }
    match accepted.recv_async().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let msg = format!("node {node} did not take the job: {e}");
            return failed_to_start(st, &sid, msg, "JOB_SUPERVISOR_ACTOR_START_TIMEOUT").await;
        }
        Err(_) => {
            let msg = format!("node {node} did not answer");
            return failed_to_start(st, &sid, msg, "JOB_SUPERVISOR_ACTOR_START_TIMEOUT").await;
        }
    }
    tracing::info!(job = %sid, node = %node, "job entrypoint sent to another node");
    follow_remote(st, &sid, &node, events, stop).await
}

/// Follows a job `node` runs to its end: its output is appended to the head's copy of the
/// log, a stop is passed on to the node, and its end (or the node's death) is recorded.
async fn follow_remote(
    st: &WebState,
    sid: &str,
    node: &str,
    events: flume::Receiver<crate::cluster::jobs::JobEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Res<()> {
    use crate::cluster::jobs::JobEvent;
    let (sid, node) = (sid.to_string(), node.to_string());
    let log = log_path(st, &sid);
    let mut stop_sent = false;
    loop {
        tokio::select! {
            ev = events.recv_async() => match ev {
                Ok(JobEvent::Started { pid }) => started(st, &sid, pid, Some(node.clone())).await?,
                Ok(JobEvent::Log(bytes)) => {
                    let path = log.clone();
                    let appended = web::block(move || {
                        use std::io::Write;
                        std::fs::OpenOptions::new().create(true).append(true).open(&path)
                            .and_then(|mut f| f.write_all(&bytes))
                    }).await;
                    let failed = match appended {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(e) = failed {
                        tracing::warn!(job = %sid, error = %e, "cannot append to the job's log");
                    }
                }
                Ok(JobEvent::Ended { code, stopped }) => return ended(st, &sid, code, stopped).await,
                Ok(JobEvent::Failed { message, error_type }) => {
                    return failed_to_start(st, &sid, message, &error_type).await;
                }
                Err(_) => {
                    // The node died or left: its entrypoint died with it.
                    let msg = format!("Job failed: node {node}, which ran its entrypoint, is gone.");
                    return failed_to_start(st, &sid, msg, "JOB_SUPERVISOR_ACTOR_DIED").await;
                }
            },
            changed = stop.changed(), if !stop_sent => {
                if changed.is_err() || !*stop.borrow() {
                    continue;
                }
                stop_sent = true;
                let ask = crate::node::ClusterAsk::StopJob { node: node.clone(), sid: sid.clone() };
                let _ = st.asks.send_async(ask).await;
            }
        }
    }
}

async fn list(st: web::Data<WebState>) -> Res<HttpResponse> {
    let subs = submissions(&st).await?;
    let drivers = drivers(&st).await?;
    let mut out: Vec<Value> = subs
        .iter()
        .map(|info| {
            let d = drivers
                .iter()
                .find(|d| d.submission_id.as_deref() == Some(info.submission_id.as_str()));
            submission_details(&st, info, d)
        })
        .collect();
    out.extend(
        drivers
            .iter()
            .filter(|d| d.submission_id.is_none())
            .map(|d| driver_details(&st, d)),
    );
    Ok(HttpResponse::Ok().json(out))
}

async fn get_job(st: web::Data<WebState>, id: web::Path<String>) -> Res<HttpResponse> {
    let found = find(&st, &id).await?;
    Ok(HttpResponse::Ok().json(details_of(&st, &found)))
}

async fn logs(st: web::Data<WebState>, id: web::Path<String>) -> Res<HttpResponse> {
    let info = submission_only(find(&st, &id).await?, "get logs of")?;
    let path = log_path(&st, &info.submission_id);
    let text = web::block(move || {
        std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "logs": text })))
}

async fn stop(st: web::Data<WebState>, id: web::Path<String>) -> Res<HttpResponse> {
    let info = submission_only(find(&st, &id).await?, "stop")?;
    if info.status.is_terminal() {
        return Ok(HttpResponse::Ok().json(json!({"stopped": false})));
    }
    let sent = st
        .jobs
        .running
        .lock()
        .get(&info.submission_id)
        .map(|s| s.stop.send(true).is_ok())
        .unwrap_or(false);
    if !sent {
        // Not supervised here: it ran on another node when the head restarted (that node
        // is asked to stop it), or it cannot be running any more.
        if let Some(node) = info.node_id.clone() {
            let ask = crate::node::ClusterAsk::StopJob {
                node,
                sid: info.submission_id.clone(),
            };
            let _ = st.asks.send_async(ask).await;
        }
        update(&st, &info.submission_id, |j| {
            finish(j, JobStatus::Stopped, None, None, None)
        })
        .await?;
    }
    Ok(HttpResponse::Ok().json(json!({"stopped": true})))
}

async fn delete(st: web::Data<WebState>, id: web::Path<String>) -> Res<HttpResponse> {
    let info = submission_only(find(&st, &id).await?, "delete")?;
    if !info.status.is_terminal() {
        return Err(JobError::Internal(format!(
            "Attempted to delete job '{}', which is in a non-terminal state {}. Please stop the job before deleting it.",
            info.submission_id,
            info.status.name()
        )));
    }
    let op = KvOp::Del {
        ns: KV_NS.to_string(),
        key: kv_key(&info.submission_id),
    };
    let deleted = kv(&st, op).await?.done().map_err(gcs_err)?;
    let (log, dir) = (
        log_path(&st, &info.submission_id),
        st.dir.dir.join("jobs").join(&info.submission_id),
    );
    let _ = web::block(move || {
        let _ = std::fs::remove_file(log);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
    Ok(HttpResponse::Ok().json(json!({"deleted": deleted})))
}

/// Log text in frames of at most 10 lines or about 20 KB, as Ray's tail sends them.
fn frames_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut lines = 0;
    for line in text.split_inclusive('\n') {
        cur.push_str(line);
        lines += 1;
        if lines >= 10 || cur.len() >= 20_000 {
            out.push(std::mem::take(&mut cur));
            lines = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn tail(
    st: web::Data<WebState>,
    id: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let info = submission_only(find(&st, &id).await?, "get logs of")?;
    let (res, mut session, _incoming) = actix_ws::handle(&req, body)?;
    let path = log_path(&st, &info.submission_id);
    let sid = info.submission_id.clone();
    let state = st.into_inner();
    actix_web::rt::spawn(async move {
        let mut offset = 0u64;
        let mut pending = String::new();
        loop {
            // Read the status before the file: once terminal, what the file then holds is all.
            let terminal = load(&state, &sid)
                .await
                .ok()
                .flatten()
                .is_none_or(|j| j.status.is_terminal());
            let (p, from) = (path.clone(), offset);
            let chunk = web::block(move || read_from(&p, from)).await.ok().flatten();
            if let Some(bytes) = chunk {
                offset += bytes.len() as u64;
                pending.push_str(&String::from_utf8_lossy(&bytes));
                // Whole lines go now; a partial line waits for its end (or the job's).
                let cut = pending.rfind('\n').map_or(0, |i| i + 1);
                let ready: String = pending.drain(..cut).collect();
                for f in frames_of(&ready) {
                    if session.text(f).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            if terminal {
                if !pending.is_empty() && session.text(std::mem::take(&mut pending)).await.is_err()
                {
                    return;
                }
                let _ = session
                    .close(Some(actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Normal,
                        description: None,
                    }))
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(res)
}

/// Up to 1 MiB of `path` from `offset`, or `None` when there is nothing new.
fn read_from(path: &Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read(&mut buf).ok()?;
    (n > 0).then(|| {
        buf.truncate(n);
        buf
    })
}

async fn get_package(
    st: web::Data<WebState>,
    path: web::Path<(String, String)>,
) -> Res<HttpResponse> {
    let (protocol, name) = path.into_inner();
    let p = package_path(&st, &protocol, &name)?;
    let exists = web::block(move || p.is_file()).await.unwrap_or(false);
    if exists {
        Ok(HttpResponse::Ok().finish())
    } else {
        Err(JobError::NotFound(format!(
            "Package {protocol}://{name} does not exist"
        )))
    }
}

async fn put_package(
    st: web::Data<WebState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Res<HttpResponse> {
    let (protocol, name) = path.into_inner();
    let p = package_path(&st, &protocol, &name)?;
    web::block(move || -> std::io::Result<()> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = p.with_extension("part");
        std::fs::write(&tmp, &body)?;
        std::fs::rename(&tmp, &p)
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))?
    .map_err(|e| JobError::Internal(format!("cannot store package {protocol}://{name}: {e}")))?;
    tracing::info!(package = %format!("{protocol}://{name}"), "package stored");
    Ok(HttpResponse::Ok().finish())
}

/// Registers the Jobs API routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/jobs/", web::post().to(submit))
        .route("/api/jobs", web::post().to(submit))
        .route("/api/jobs/", web::get().to(list))
        .route("/api/jobs", web::get().to(list))
        .route("/api/jobs/{id}", web::get().to(get_job))
        .route("/api/jobs/{id}", web::delete().to(delete))
        .route("/api/jobs/{id}/logs", web::get().to(logs))
        .route("/api/jobs/{id}/logs/tail", web::get().to(tail))
        .route("/api/jobs/{id}/stop", web::post().to(stop))
        .route(
            "/api/packages/{protocol}/{name}",
            web::get().to(get_package),
        )
        .route(
            "/api/packages/{protocol}/{name}",
            web::put().to(put_package),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_requests_are_checked_like_rays() {
        let ok = parse_submit(br#"{"entrypoint":"echo hi","runtime_env":{},"metadata":{"a":"b"},"submission_id":null,"entrypoint_num_cpus":1.0}"#).expect("ok");
        assert_eq!(ok.entrypoint, "echo hi");
        assert!(ok.submission_id.starts_with("raysubmit_") && ok.submission_id.len() == 26);
        assert!(!ok.submission_id[10..].contains(['I', 'l', 'o', 'O', '0']));
        assert_eq!(ok.resources.get("CPU"), Some(&1.0));
        for bad in [
            &br#"{"entrypoint":"x","bogus":1}"#[..],
            br#"{"metadata":{}}"#,
            br#"{"entrypoint":5}"#,
            br#"{"entrypoint":"x","metadata":{"a":1}}"#,
            br#"{"entrypoint":"x","entrypoint_memory":1.5}"#,
            br#"{"entrypoint":"x","submission_id":"../etc"}"#,
            br#"not json"#,
            br#"[1]"#,
        ] {
            assert!(
                matches!(parse_submit(bad), Err(JobError::Bad(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tail_frames_hold_at_most_ten_lines() {
        let text: String = (0..25).map(|i| format!("line {i}\n")).collect();
        let f = frames_of(&text);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].lines().count(), 10);
        assert_eq!(f.concat(), text);
    }
}
