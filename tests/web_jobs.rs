//! The Jobs API over real HTTP against a real head: submit, status, logs, the WebSocket tail,
//! stop, delete, packages and working dirs, every error case, a mobula driver started by an
//! entrypoint, and `mobula job`'s exit codes.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, head_only};
use common::http::{delete, get, json, post, put};
use serde_json::Value;

#[mobula::remote]
fn double(x: u64) -> u64 {
    x * 2
}

/// Polls a job until it is terminal; returns its details.
fn await_terminal(url: &str, sid: &str) -> Value {
    let deadline = Instant::now() + common::HANG;
    loop {
        let (status, body) = get(&format!("{url}/api/jobs/{sid}"), &[]);
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        if ["SUCCEEDED", "FAILED", "STOPPED"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "job {sid} never ended: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(url: &str, body: &str) -> String {
    let (status, text) = post(&format!("{url}/api/jobs/"), &[], body);
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 2, "exactly job_id and submission_id: {text}");
    assert_eq!(v["job_id"], v["submission_id"]);
    v["submission_id"].as_str().expect("sid").to_string()
}

#[test]
fn jobs_run_and_report_like_rays() {
    let c = head_only();
    let url = c.dashboard();
    // Success, with metadata and env vars.
    let sid = submit(
        &url,
        r#"{"entrypoint":"echo hello $GREETING; echo to-stderr >&2","runtime_env":{"env_vars":{"GREETING":"world"}},"metadata":{"owner":"me"}}"#,
    );
    assert!(sid.starts_with("raysubmit_"), "{sid}");
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "SUCCEEDED", "{v}");
    assert_eq!(v["type"], "SUBMISSION");
    assert_eq!(v["message"], "Job finished successfully.");
    assert_eq!(v["metadata"]["owner"], "me");
    assert_eq!(v["driver_exit_code"], 0);
    assert!(
        v["start_time"].as_u64().is_some() && v["end_time"].as_u64() >= v["start_time"].as_u64()
    );
    let (status, body) = get(&format!("{url}/api/jobs/{sid}/logs"), &[]);
    assert_eq!(status, 200);
    let logs = json(&body)["logs"].as_str().expect("logs").to_string();
    assert!(
        logs.contains("hello world") && logs.contains("to-stderr"),
        "{logs}"
    );

    // Failure: exit code, message with the last lines, error type.
    let failed = submit(
        &url,
        r#"{"entrypoint":"echo last words; exit 3","submission_id":"fails-1"}"#,
    );
    assert_eq!(failed, "fails-1");
    let v = await_terminal(&url, &failed);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["driver_exit_code"], 3);
    assert_eq!(v["error_type"], "JOB_ENTRYPOINT_COMMAND_ERROR");
    let msg = v["message"].as_str().expect("message");
    assert!(
        msg.contains("exit code 3") && msg.contains("last words"),
        "{msg}"
    );

    // Errors.
    let (status, body) = post(
        &format!("{url}/api/jobs/"),
        &[],
        r#"{"entrypoint":"true","submission_id":"fails-1"}"#,
    );
    assert_eq!(status, 500, "a duplicate id: {body}");
    assert!(body.contains("already exists"), "{body}");
    let (status, body) = post(
        &format!("{url}/api/jobs/"),
        &[],
        r#"{"entrypoint":"true","bogus":1}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let (status, _) = post(&format!("{url}/api/jobs/"), &[], r#"{"entrypoint":"#);
    assert_eq!(status, 400, "malformed JSON");
    let (status, body) = get(&format!("{url}/api/jobs/no-such-job"), &[]);
    assert_eq!(
        (status, body.as_str()),
        (404, "Job no-such-job does not exist")
    );
    assert_eq!(get(&format!("{url}/api/jobs/no-such-job/logs"), &[]).0, 404);
    assert_eq!(
        post(&format!("{url}/api/jobs/no-such-job/stop"), &[], "").0,
        404
    );
    assert_eq!(delete(&format!("{url}/api/jobs/no-such-job")).0, 404);

    // Stop: SIGTERM ends a sleeping job, the status says STOPPED.
    let long = submit(&url, r#"{"entrypoint":"echo started; exec sleep 600"}"#);
    let deadline = Instant::now() + common::HANG;
    while json(&get(&format!("{url}/api/jobs/{long}"), &[]).1)["status"] != "RUNNING" {
        assert!(Instant::now() < deadline, "never running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = delete(&format!("{url}/api/jobs/{long}"));
    assert_eq!(status, 500, "deleting a running job: {body}");
    assert!(body.contains("non-terminal"), "{body}");
    let (status, body) = post(&format!("{url}/api/jobs/{long}/stop"), &[], "");
    assert_eq!(
        (status, json(&body)["stopped"].clone()),
        (200, Value::Bool(true))
    );
    let v = await_terminal(&url, &long);
    assert_eq!(v["status"], "STOPPED", "{v}");
    let (_, body) = post(&format!("{url}/api/jobs/{long}/stop"), &[], "");
    assert_eq!(json(&body)["stopped"], false, "a job already ended");

    // The list: every submission, as an array.
    let (status, body) = get(&format!("{url}/api/jobs/"), &[]);
    assert_eq!(status, 200);
    let list = json(&body);
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|j| j["submission_id"].as_str())
        .collect();
    for id in [&sid, &failed, &long] {
        assert!(ids.contains(&id.as_str()), "{id} in {ids:?}");
    }

    // Delete after the end.
    let (status, body) = delete(&format!("{url}/api/jobs/{long}"));
    assert_eq!(
        (status, json(&body)["deleted"].clone()),
        (200, Value::Bool(true))
    );
    assert_eq!(get(&format!("{url}/api/jobs/{long}"), &[]).0, 404);

    // Prometheus counts submissions by status.
    let (status, metrics) = get(&format!("{url}/metrics"), &[]);
    assert_eq!(status, 200);
    for line in [
        "mobula_jobs{type=\"submission\",status=\"SUCCEEDED\"} 1",
        "mobula_jobs{type=\"submission\",status=\"FAILED\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[test]
fn packages_and_working_dirs() {
    let c = head_only();
    let url = c.dashboard();
    let pkg = format!("{url}/api/packages/gcs/_ray_pkg_0123456789abcdef.zip");
    let (status, body) = get(&pkg, &[]);
    assert_eq!(status, 404);
    assert_eq!(
        body,
        "Package gcs://_ray_pkg_0123456789abcdef.zip does not exist"
    );
    // A zip holding data.txt and sub/more.txt.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("data.txt", opts).expect("file");
        z.write_all(b"from the package\n").expect("write");
        z.start_file("sub/more.txt", opts).expect("file");
        z.write_all(b"nested\n").expect("write");
        z.finish().expect("finish");
    }
    assert_eq!(put(&pkg, buf.get_ref()).0, 200);
    assert_eq!(get(&pkg, &[]).0, 200);
    assert_eq!(
        get(&format!("{url}/api/packages/gcs/..%2Fescape"), &[]).0,
        400
    );
    let sid = submit(
        &url,
        r#"{"entrypoint":"cat data.txt sub/more.txt","runtime_env":{"working_dir":"gcs://_ray_pkg_0123456789abcdef.zip"}}"#,
    );
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "SUCCEEDED", "{v}");
    let logs = json(&get(&format!("{url}/api/jobs/{sid}/logs"), &[]).1)["logs"].clone();
    assert_eq!(logs, "from the package\nnested\n");
    // A missing package fails the job with a message.
    let sid = submit(
        &url,
        r#"{"entrypoint":"true","runtime_env":{"working_dir":"gcs://_ray_pkg_missing.zip"}}"#,
    );
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist")),
        "{v}"
    );
}

#[test]
fn the_log_tail_streams_then_closes_normally() {
    let c = head_only();
    let url = c.dashboard();
    let sid = submit(
        &url,
        r#"{"entrypoint":"for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; sleep 1; echo done"}"#,
    );
    let ws = format!(
        "{}/api/jobs/{sid}/logs/tail",
        url.replace("http://", "ws://")
    );
    let (mut socket, _) = tungstenite::connect(ws.as_str()).expect("websocket");
    let mut text = String::new();
    let close = loop {
        match socket.read().expect("frame") {
            tungstenite::Message::Text(t) => {
                assert!(t.lines().count() <= 10, "a frame of at most 10 lines");
                text.push_str(&t);
            }
            tungstenite::Message::Close(frame) => break frame,
            _ => {}
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1000));
    let want: String = (1..=12).map(|i| format!("line {i}\n")).collect::<String>() + "done\n";
    assert_eq!(text, want);
    // Before an upgrade, an unknown job is a plain 404.
    assert_eq!(get(&format!("{url}/api/jobs/nope/logs/tail"), &[]).0, 404);
}

/// The driver an entrypoint runs (a no-op when run on its own): joins the cluster through
/// `MOBULA_ADDRESS` and runs a task.
#[test]
fn child_driver_of_the_jobs_test() {
    mobula::worker_entry();
    if std::env::var("MOBULA_SUBMISSION_ID").is_err() {
        return;
    }
    let rt = mobula::init().expect("the driver joins the cluster");
    let v = rt.get(&double::remote(&rt, 21)).expect("a task");
    println!("the answer is {v}");
}

fn job_cli(c: &Cluster, args: &[&str]) -> (i32, String) {
    let url = c.dashboard();
    let o = std::process::Command::new(common::cluster::BIN)
        .args(["job"])
        .args(args.iter().take(1))
        .args(["--address", &url])
        .args(args.iter().skip(1))
        .output()
        .expect("mobula job");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn a_mobula_driver_joins_as_the_jobs_driver_and_the_cli_reports_exit_codes() {
    let c = head_only();
    let url = c.dashboard();
    let exe = std::env::current_exe().expect("exe");
    let entry = format!(
        "{} child_driver_of_the_jobs_test --exact --nocapture --test-threads=1",
        exe.display()
    );
    let body = serde_json::json!({ "entrypoint": entry, "submission_id": "driver-1" }).to_string();
    let sid = submit(&url, &body);
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "SUCCEEDED", "{v}");
    let logs = json(&get(&format!("{url}/api/jobs/{sid}/logs"), &[]).1)["logs"].clone();
    assert!(
        logs.as_str()
            .is_some_and(|l| l.contains("the answer is 42")),
        "{logs}"
    );
    assert!(
        v["job_id"].as_str().is_some_and(|j| !j.is_empty()),
        "the driver linked: {v}"
    );
    assert!(v["driver_info"]["pid"].as_str().is_some(), "{v}");
    // The driver's job id finds the same submission.
    let job_id = v["job_id"].as_str().expect("job id");
    assert_eq!(
        json(&get(&format!("{url}/api/jobs/{job_id}"), &[]).1)["submission_id"],
        "driver-1"
    );

    let (code, out) = job_cli(&c, &["submit", "--", "echo", "cli says hi"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cli says hi") && out.contains("succeeded"),
        "{out}"
    );
    let (code, out) = job_cli(
        &c,
        &[
            "submit",
            "--submission-id",
            "cli-fail",
            "--",
            "sh",
            "-c",
            "exit 4",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed"), "{out}");
    let (code, out) = job_cli(&c, &["status", "cli-fail"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    let (code, out) = job_cli(&c, &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cli-fail") && out.contains("driver-1"),
        "{out}"
    );
    let (code, out) = job_cli(&c, &["delete", "cli-fail"]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = job_cli(&c, &["status", "cli-fail"]);
    assert_eq!(code, 1, "an unknown job");
}

#[test]
fn an_entrypoint_runs_on_the_node_that_has_its_resources() {
    let c = common::cluster::cluster_with(&["--resources", r#"{"gizmo": 1}"#]);
    let url = c.dashboard();
    c.await_status("the gizmo node", |s| s.contains("gizmo"));
    let worker = c.worker_node_id();

    // A working dir travels with the job to that node.
    let pkg = format!("{url}/api/packages/gcs/_ray_pkg_00000000000000aa.zip");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("note.txt", zip::write::SimpleFileOptions::default())
            .expect("file");
        z.write_all(b"packaged-note\n").expect("write");
        z.finish().expect("finish");
    }
    assert_eq!(put(&pkg, buf.get_ref()).0, 200);
    let sid = submit(
        &url,
        r#"{"entrypoint":"echo remote-line; cat note.txt; echo id=$MOBULA_SUBMISSION_ID; exit 4",
            "entrypoint_resources":{"gizmo":1},
            "runtime_env":{"working_dir":"gcs://_ray_pkg_00000000000000aa.zip"}}"#,
    );
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["driver_exit_code"], 4, "{v}");
    assert_eq!(v["driver_node_id"], worker, "ran on the gizmo node: {v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("exit code 4") && m.contains("remote-line")),
        "{v}"
    );
    let (status, body) = get(&format!("{url}/api/jobs/{sid}/logs"), &[]);
    assert_eq!(status, 200, "{body}");
    let logs = json(&body)["logs"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        logs,
        format!("remote-line\npackaged-note\nid={sid}\n"),
        "the node's output, in order, on the head"
    );

    // Stopping one that runs there ends it there.
    let sid = submit(
        &url,
        r#"{"entrypoint":"echo waiting; sleep 600","entrypoint_resources":{"gizmo":1}}"#,
    );
    let deadline = Instant::now() + common::HANG;
    loop {
        let (_, body) = get(&format!("{url}/api/jobs/{sid}/logs"), &[]);
        if json(&body)["logs"]
            .as_str()
            .is_some_and(|l| l.contains("waiting"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = post(&format!("{url}/api/jobs/{sid}/stop"), &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["stopped"], true, "{body}");
    let v = await_terminal(&url, &sid);
    assert_eq!(v["status"], "STOPPED", "{v}");
    assert_eq!(v["driver_node_id"], worker, "{v}");
}
