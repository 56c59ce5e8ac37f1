//! Job entrypoints: starting a submitted job's shell command in its own process group and
//! seeing it to its end (SIGTERM, then SIGKILL after the grace period, on stop), on the head
//! or on another node. The head's job manager (`web::jobs`) keeps the records; when only
//! another node has the entrypoint's resources it sends that node `ClusterMsg::RunJob`, and
//! the node runs the command here, forwards its output in `JobEvent::Log` chunks (the head
//! appends them to its own copy of the job's log, which its log routes read) and reports
//! `Started` and `Ended`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a stopped entrypoint gets between SIGTERM and SIGKILL (Ray's
/// `RAY_JOB_STOP_WAIT_TIME_S`, 3 s by default).
pub fn stop_wait() -> Duration {
    std::env::var("RAY_JOB_STOP_WAIT_TIME_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(3), |s| {
            Duration::from_secs_f64(s.max(0.0))
        })
}

/// Largest `working_dir` package sent to another node with its job (one libp2p message).
pub const MAX_REMOTE_PACKAGE: usize = 48 << 20;
/// Largest chunk of output one `JobEvent::Log` carries.
const LOG_CHUNK: usize = 1 << 20;

/// A job for another node to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteJob {
    /// The submission id.
    pub sid: String,
    /// The shell command.
    pub entrypoint: String,
    /// Its environment (the cluster's address and the job's id are added by the node).
    pub env: Vec<(String, String)>,
    /// The `working_dir` package (a zip), if the job has one.
    pub package: Option<serde_bytes::ByteBuf>,
}

/// What a node reports of a job it runs for the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobEvent {
    /// The entrypoint started (its shell's pid).
    Started {
        /// The pid.
        pid: u32,
    },
    /// Output the entrypoint wrote, in order.
    Log(serde_bytes::ByteBuf),
    /// It ended: its exit code (negative: the signal), and whether it was stopped.
    Ended {
        /// The code.
        code: Option<i32>,
        /// Stopped by a stop request.
        stopped: bool,
    },
    /// It could not be started.
    Failed {
        /// Why.
        message: String,
        /// Ray's error type.
        error_type: String,
    },
}

/// An entrypoint to start.
pub struct Entrypoint<'a> {
    /// The submission id.
    pub sid: &'a str,
    /// The shell command.
    pub command: &'a str,
    /// Where it runs.
    pub cwd: &'a Path,
    /// Where its output goes (appended).
    pub log: &'a Path,
    /// Its environment.
    pub env: Vec<(String, String)>,
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) on the process group of an entrypoint started here (its shell is the
    // group leader: `process_group(0)`).
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Where an entrypoint's exit code is written when it ends (beside its log): a supervisor
/// that restarted while the entrypoint ran (the head's crash) learns it from there.
pub fn exit_file(log: &Path) -> PathBuf {
    log.with_extension("exit")
}

/// The shell around an entrypoint: runs it, then writes its exit code to `MOBULA_EXIT_FILE`.
const WRAPPER: &str = r#"sh -c "$MOBULA_ENTRYPOINT"; c=$?; echo $c > "$MOBULA_EXIT_FILE"; exit $c"#;

/// Starts `e` in its own process group, output to its log.
pub fn spawn(e: &Entrypoint<'_>) -> Result<(tokio::process::Child, u32), String> {
    let _ = std::fs::remove_file(exit_file(e.log));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(e.log)
        .map_err(|err| format!("cannot open {}: {err}", e.log.display()))?;
    let err = out.try_clone().map_err(|err| err.to_string())?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .env("MOBULA_ENTRYPOINT", e.command)
        .env("MOBULA_EXIT_FILE", exit_file(e.log))
        .current_dir(e.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .env("MOBULA_SUBMISSION_ID", e.sid)
        .env("RAY_JOB_SUBMISSION_ID", e.sid)
        .kill_on_drop(true);
    for (k, v) in &e.env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|err| format!("Failed to start the entrypoint command: {err}"))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(job = %e.sid, pid, "job entrypoint started");
    Ok((child, pid))
}

/// Waits for a started entrypoint to end; once `stop` turns true, SIGTERM to its group, then
/// SIGKILL after [`stop_wait`]. Returns its exit code and whether it was stopped.
pub async fn wait(
    sid: &str,
    mut child: tokio::process::Child,
    pid: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Option<i32>, bool) {
    let mut stopped = false;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            changed = stop.changed(), if !stopped => {
                if changed.is_err() || !*stop.borrow() {
                    continue;
                }
                stopped = true;
                tracing::info!(job = %sid, pid, "stopping the job: SIGTERM");
                signal_group(pid, libc::SIGTERM);
                match tokio::time::timeout(stop_wait(), child.wait()).await {
                    Ok(s) => break s,
                    Err(_) => {
                        tracing::info!(job = %sid, pid, "the job outlived its grace period: SIGKILL");
                        signal_group(pid, libc::SIGKILL);
                    }
                }
            }
        }
    };
    // Whatever the shell left behind in its group goes with it.
    signal_group(pid, libc::SIGKILL);
    let code = status.ok().map(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
    });
    tracing::info!(job = %sid, code = ?code, stopped, "job ended");
    (code, stopped)
}

/// Whether `pid` is the wrapper shell of job `sid` (not a process that reused its pid).
pub fn runs_job(pid: u32, sid: &str) -> bool {
    let want = format!("MOBULA_SUBMISSION_ID={sid}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

/// The exit code an ended entrypoint left in its exit file.
pub fn recorded_exit(log: &Path) -> Option<i32> {
    std::fs::read_to_string(exit_file(log))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Watches an entrypoint this process did not start (it outlived the supervisor that did)
/// until it ends, stopping it like `wait` does; its code comes from its exit file.
pub async fn adopt(
    sid: &str,
    pid: u32,
    log: &Path,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Option<i32>, bool) {
    let mut stopped = false;
    let mut term_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed(), if !stopped => {
                if changed.is_ok() && *stop.borrow() {
                    stopped = true;
                    tracing::info!(job = %sid, pid, "stopping an adopted job: SIGTERM");
                    signal_group(pid, libc::SIGTERM);
                    term_at = Some(tokio::time::Instant::now());
                }
            }
        }
        if !runs_job(pid, sid) {
            break;
        }
        if term_at.is_some_and(|t| t.elapsed() >= stop_wait()) {
            signal_group(pid, libc::SIGKILL);
        }
    }
    let code = recorded_exit(log);
    tracing::info!(job = %sid, code = ?code, stopped, "an adopted job ended");
    (code, stopped)
}

/// Unpacks a `working_dir` package (a zip) into `into`.
pub fn unpack(zip: impl std::io::Read + std::io::Seek, into: &Path) -> Result<(), String> {
    let mut archive =
        zip::ZipArchive::new(zip).map_err(|e| format!("the package is not a zip: {e}"))?;
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    // `extract` refuses entries that would land outside `into`.
    archive
        .extract(into)
        .map_err(|e| format!("cannot unpack into {}: {e}", into.display()))
}

/// How long a job event goes on being refused or undelivered while a head is connected
/// before the node gives up on it (a restarted head takes the job back within a moment).
const JOB_EVENT_PATIENCE: Duration = Duration::from_secs(60);

/// Sends one job event (an encoded `ClusterMsg::JobEvent`) to the head until it takes it:
/// to `first` (the head that sent the job) while no other head is known, else to the current
/// head; while there is none (the head is down) it waits for one. False when a head kept
/// refusing it, or could not be reached, for `JOB_EVENT_PATIENCE`.
pub(crate) async fn deliver(
    net: &crate::net::NetHandle,
    head: &mut tokio::sync::watch::Receiver<Option<libp2p::PeerId>>,
    first: libp2p::PeerId,
    msg: &[u8],
) -> bool {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let current = *head.borrow_and_update();
        let peer = match current {
            Some(p) => p,
            None if failing_since.is_none() => first,
            None => {
                // The head is gone: wait for it, however long it takes.
                failing_since = None;
                if head.changed().await.is_err() {
                    return false;
                }
                continue;
            }
        };
        match net
            .request(peer, msg.to_vec())
            .await
            .map(|b| super::decode(&b))
        {
            Ok(Ok(super::ClusterMsg::Released)) => return true,
            other => {
                tracing::debug!(reply = ?other.map(|r| r.map(|m| format!("{m:?}"))), "a job event was not taken: sending it again");
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > JOB_EVENT_PATIENCE {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The log of a job this node runs for the head: named for the node too, as the head keeps
/// `job-driver-<sid>.log` and nodes of one machine share the cluster directory.
pub fn remote_log_name(sid: &str, node: &str) -> String {
    format!("job-driver-{sid}-on-{node}.log")
}

/// Runs a job for the head on node `node`: `<cluster dir>/jobs/<sid>` as its working dir,
/// [`remote_log_name`] in `<cluster dir>/logs/` for its output, every event to `report`
/// (in order; output is read off the log as it grows).
pub(crate) async fn run_here(
    job: RemoteJob,
    cluster_dir: PathBuf,
    node: String,
    env: Vec<(String, String)>,
    stop: tokio::sync::watch::Receiver<bool>,
    report: flume::Sender<JobEvent>,
) {
    let cwd = cluster_dir.join("jobs").join(&job.sid);
    let log = cluster_dir
        .join("logs")
        .join(remote_log_name(&job.sid, &node));
    let package = job.package.map(serde_bytes::ByteBuf::into_vec);
    let dir = cwd.clone();
    let unpacked = tokio::task::spawn_blocking(move || match package {
        Some(zip) => unpack(std::io::Cursor::new(zip), &dir),
        None => std::fs::create_dir_all(&dir).map_err(|e| e.to_string()),
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(message) = unpacked {
        let error_type = "RUNTIME_ENV_SETUP_FAILED".to_string();
        let _ = report
            .send_async(JobEvent::Failed {
                message,
                error_type,
            })
            .await;
        return;
    }
    let mut all_env = env;
    all_env.extend(job.env);
    let e = Entrypoint {
        sid: &job.sid,
        command: &job.entrypoint,
        cwd: &cwd,
        log: &log,
        env: all_env,
    };
    let (child, pid) = match spawn(&e) {
        Ok(c) => c,
        Err(message) => {
            let error_type = "JOB_ENTRYPOINT_COMMAND_START_ERROR".to_string();
            let _ = report
                .send_async(JobEvent::Failed {
                    message,
                    error_type,
                })
                .await;
            return;
        }
    };
    let _ = report.send_async(JobEvent::Started { pid }).await;
    let ended = wait(&job.sid, child, pid, stop);
    tokio::pin!(ended);
    let mut offset = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (code, stopped) = loop {
        tokio::select! {
            r = &mut ended => break r,
            _ = tick.tick() => forward_log(&log, &mut offset, &report).await,
        }
    };
    forward_log(&log, &mut offset, &report).await;
    let _ = report.send_async(JobEvent::Ended { code, stopped }).await;
}

/// Sends what the log gained since `offset`, in chunks.
async fn forward_log(log: &Path, offset: &mut u64, report: &flume::Sender<JobEvent>) {
    loop {
        let (path, from) = (log.to_path_buf(), *offset);
        let chunk = tokio::task::spawn_blocking(move || read_chunk(&path, from))
            .await
            .unwrap_or_default();
        if chunk.is_empty() {
            return;
        }
        *offset += chunk.len() as u64;
        let full = chunk.len() == LOG_CHUNK;
        if report
            .send_async(JobEvent::Log(serde_bytes::ByteBuf::from(chunk)))
            .await
            .is_err()
            || !full
        {
            return;
        }
    }
}

fn read_chunk(path: &Path, from: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() {
        return buf;
    }
    let _ = f.take(LOG_CHUNK as u64).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster directory with its `logs/`.
    fn cluster_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs");
        dir
    }

    fn job(sid: &str, entrypoint: &str, env: Vec<(String, String)>) -> RemoteJob {
        RemoteJob {
            sid: sid.into(),
            entrypoint: entrypoint.into(),
            env,
            package: None,
        }
    }

    #[tokio::test]
    async fn a_job_runs_here_and_reports_its_output_and_end() {
        let dir = cluster_dir();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let (tx, rx) = flume::unbounded();
        let env = vec![("FOO".into(), "two".into())];
        let job = job("raysubmit_t", "echo one; echo $FOO; pwd; exit 3", env);
        run_here(job, dir.path().to_path_buf(), "n1".into(), vec![], stop, tx).await;
        let events: Vec<JobEvent> = rx.drain().collect();
        assert!(
            matches!(events.first(), Some(JobEvent::Started { .. })),
            "{events:?}"
        );
        let out: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Log(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("one\ntwo\n"), "{out}");
        assert!(out.contains("jobs/raysubmit_t"), "{out}");
        assert!(
            matches!(
                events.last(),
                Some(JobEvent::Ended {
                    code: Some(3),
                    stopped: false
                })
            ),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_stopped_job_is_terminated() {
        let dir = cluster_dir();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let (tx, rx) = flume::unbounded();
        let job = job("raysubmit_s", "echo started; sleep 600", vec![]);
        let run = tokio::spawn(run_here(
            job,
            dir.path().to_path_buf(),
            "n1".into(),
            vec![],
            stop,
            tx,
        ));
        // Stop once it has started.
        while !matches!(rx.recv_async().await, Ok(JobEvent::Started { .. })) {}
        let _ = stop_tx.send(true);
        run.await.expect("run");
        let last = rx.drain().last();
        assert!(
            matches!(last, Some(JobEvent::Ended { stopped: true, .. })),
            "{last:?}"
        );
    }
}
