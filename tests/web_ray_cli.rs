//! Ray's own job CLI and Python SDK (`pip install "ray[default]"`), unchanged, against a
//! mobula head: submit (success and failure exit codes), status, logs, follow, stop, list,
//! delete, `--submission-id`, `--metadata-json`, `--entrypoint-num-cpus`, `--working-dir`,
//! `JobSubmissionClient`, and token mode; and its state CLI (`ray list actors | tasks |
//! nodes`, `ray summary tasks`, `ray get actors`) against a 2-node cluster a driver used. Ray comes from the venv in `MOBULA_RAY_VENV`
//! (default `~/.cache/ray-web-venv`, which `.ci/run` creates); without it the tests say so
//! and pass.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::cluster::{head_only, head_with};

fn venv() -> Option<PathBuf> {
    let dir = std::env::var("MOBULA_RAY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/ray-web-venv")
        });
    if dir.join("bin/ray").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no Ray CLI at {} (set MOBULA_RAY_VENV, or run .ci/run)",
            dir.display()
        );
        None
    }
}

/// Runs `ray ARGS` with extra environment; exit code and output.
fn ray(venv: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let o = Command::new(venv.join("bin/ray"))
        .args(args)
        .env_remove("RAY_ADDRESS")
        .env_remove("RAY_API_SERVER_ADDRESS")
        .env_remove("RAY_AUTH_TOKEN")
        .env("RAY_AUTH_MODE", "disabled")
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied())
        .output()
        .expect("ray");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn rays_job_cli_works_unchanged() {
    let Some(v) = venv() else { return };
    let c = head_only();
    let url = c.dashboard();
    let a = url.as_str();
    let (code, out) = ray(
        &v,
        &["job", "submit", "--address", a, "--", "echo", "hi from ray"],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hi from ray") && out.contains("succeeded"),
        "{out}"
    );

    let (code, out) = ray(
        &v,
        &[
            "job",
            "submit",
            "--address",
            a,
            "--",
            "sh",
            "-c",
            "echo bad; exit 3",
        ],
        &[],
    );
    assert_eq!(code, 1, "a failed job exits 1: {out}");
    assert!(out.contains("exit code 3"), "{out}");

    let wd = tempfile::tempdir().expect("tempdir");
    std::fs::write(wd.path().join("data.txt"), "from the working dir\n").expect("write");
    let (code, out) = ray(
        &v,
        &[
            "job",
            "submit",
            "--address",
            a,
            "--working-dir",
            wd.path().to_str().expect("path"),
            "--submission-id",
            "ray-wd",
            "--metadata-json",
            r#"{"owner":"ci"}"#,
            "--entrypoint-num-cpus",
            "1",
            "--",
            "cat",
            "data.txt",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the working dir"), "{out}");
    let (code, out) = ray(&v, &["job", "status", "--address", a, "ray-wd"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    let (code, out) = ray(&v, &["job", "logs", "--address", a, "ray-wd"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the working dir"), "{out}");
    let (code, out) = ray(&v, &["job", "logs", "--address", a, "-f", "ray-wd"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the working dir"), "{out}");

    let (code, out) = ray(
        &v,
        &[
            "job",
            "submit",
            "--address",
            a,
            "--no-wait",
            "--submission-id",
            "ray-long",
            "--",
            "sleep",
            "300",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = ray(&v, &["job", "stop", "--address", a, "ray-long"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was stopped"), "{out}");
    let (code, out) = ray(&v, &["job", "list", "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ray-wd") && out.contains("ray-long") && out.contains("'owner': 'ci'"),
        "{out}"
    );
    let (code, out) = ray(&v, &["job", "delete", "--address", a, "ray-long"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted successfully"), "{out}");
    let (code, _) = ray(&v, &["job", "status", "--address", a, "ray-long"], &[]);
    assert_ne!(code, 0, "a deleted job is gone");

    // The Python SDK.
    let script = format!(
        r#"
from ray.job_submission import JobSubmissionClient, JobStatus
import time
c = JobSubmissionClient("{a}")
sid = c.submit_job(entrypoint="echo sdk", metadata={{"k": "v"}}, submission_id="sdk-1")
deadline = time.time() + 120
while c.get_job_status(sid) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
    assert time.time() < deadline
    time.sleep(0.1)
assert c.get_job_status(sid) == JobStatus.SUCCEEDED
assert c.get_job_logs(sid) == "sdk\n", c.get_job_logs(sid)
assert c.get_job_info(sid).metadata == {{"k": "v"}}
assert any(j.submission_id == "sdk-1" for j in c.list_jobs())
assert c.delete_job(sid)
print("sdk ok")
"#
    );
    let o = Command::new(v.join("bin/python"))
        .args(["-c", &script])
        .env("RAY_AUTH_MODE", "disabled")
        .output()
        .expect("python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && text.contains("sdk ok"), "{text}");
}

#[test]
fn rays_cli_in_token_mode() {
    let Some(v) = venv() else { return };
    let c = head_with(&["--auth-token", "ci-token-1234"]);
    let url = c.dashboard();
    let a = url.as_str();
    let (code, out) = ray(
        &v,
        &["job", "submit", "--address", a, "--", "echo", "x"],
        &[],
    );
    assert_ne!(code, 0, "no token: {out}");
    let (code, out) = ray(
        &v,
        &[
            "job",
            "submit",
            "--address",
            a,
            "--",
            "echo",
            "with a token",
        ],
        &[
            ("RAY_AUTH_MODE", "token"),
            ("RAY_AUTH_TOKEN", "ci-token-1234"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("with a token"), "{out}");
    let (code, out) = ray(
        &v,
        &["job", "list", "--address", a],
        &[("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", "wrong")],
    );
    assert_ne!(code, 0, "a wrong token: {out}");
    assert!(out.contains("invalid"), "{out}");
}

#[test]
fn rays_state_cli_works_unchanged() {
    mobula::worker_entry();
    let Some(v) = venv() else { return };
    let c = common::cluster::cluster();
    let rt = common::cluster::connect(&c);
    let refs: Vec<_> = (0..3).map(|_| common::where_am_i::remote(&rt)).collect();
    rt.get_all(&refs).expect("tasks");
    let tally = common::Tally::remote(&rt).expect("actor");
    assert_eq!(rt.get(&tally.add(2)).expect("call"), 2);
    let actor_id = tally.id().hex();
    let url = c.dashboard();
    let a = url.as_str();
    let (status, body) = common::http::get(&format!("{url}/api/v0/nodes"), &[]);
    assert_eq!(status, 200, "{body}");
    let nodes: Vec<String> = common::http::json(&body)["data"]["result"]["result"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|n| n["node_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(nodes.len(), 2, "{body}");

    let (code, out) = ray(&v, &["list", "actors", "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&actor_id) && out.contains("Tally"), "{out}");
    let (code, out) = ray(&v, &["list", "tasks", "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("where_am_i") && out.contains("Tally.add"),
        "{out}"
    );
    let (code, out) = ray(&v, &["summary", "tasks", "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("where_am_i") && out.contains("NORMAL_TASK"),
        "{out}"
    );
    let (code, out) = ray(&v, &["get", "actors", &actor_id, "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("actor_id: {actor_id}")) && out.contains("class_name: Tally"),
        "{out}"
    );
    let (code, out) = ray(&v, &["list", "nodes", "--address", a], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        nodes.iter().all(|n| out.contains(n.as_str())) && out.contains("127.0.0.1"),
        "{out}"
    );
    drop(rt);
}
