//! The web dashboard in a real headless Chromium (driven over WebDriver's JSON wire protocol
//! with ureq) against a real two-node cluster: the overview's nodes and charts from the live
//! stream, the jobs list and a job's logs, a job submitted after the page loaded appearing
//! without a reload, and the actors, tasks (counts by function, a failure with its error),
//! placement groups and per-node logs pages, each with what a driver of the test made.
//! Screenshots go to `$CARGO_TARGET_DIR/web-screenshots/*.png`.
//! Skips (with a note) when `chromium` or `chromedriver` is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{cluster, connect};
use common::http::{get, post};
use mobula::{ActorOptions, PlacementStrategy, ResourceSet};
use serde_json::{Value, json};

#[mobula::remote]
fn dash_square(x: u64) -> u64 {
    x * x
}

#[mobula::remote]
fn dash_broken() -> Result<u64, String> {
    Err("dash-broken-on-purpose".to_string())
}

#[mobula::actor]
pub struct Gauge {
    v: u64,
}

#[mobula::actor]
impl Gauge {
    pub fn new() -> Self {
        Gauge { v: 7 }
    }

    pub fn read(&self) -> u64 {
        self.v
    }
}

/// A program on PATH (or in /usr/bin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            agent,
        };
        let deadline = Instant::now() + common::HANG;
        while b.agent.get(format!("{}/status", b.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("session id").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let r = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut r = r.expect("webdriver http");
        let text = r.body_mut().read_to_string().expect("webdriver body");
        let v: Value = serde_json::from_str(&text).expect("webdriver json");
        assert!(r.status().is_success(), "webdriver {method} {path}: {text}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The main view's text.
    fn text(&self) -> String {
        self.js("return document.getElementById('view').innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls the view's text until `cond` holds; returns it.
    fn await_text(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + common::HANG;
        loop {
            let t = self.text();
            if cond(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "never: {what}; page:\n{t}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.session("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("screenshot"));
        let dir = PathBuf::from(
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string()),
        )
        .join("web-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver's screenshots).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn submit(url: &str, entrypoint: &str) -> String {
    let body = json!({ "entrypoint": entrypoint }).to_string();
    let (status, text) = post(&format!("{url}/api/jobs/"), &[], &body);
    assert_eq!(status, 200, "{text}");
    common::http::json(&text)["submission_id"]
        .as_str()
        .expect("submission id")
        .to_string()
}

#[test]
fn the_dashboard_shows_the_live_cluster_in_a_browser() {
    mobula::worker_entry();
    let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        eprintln!("note: chromium or chromedriver not installed; skipping the browser test");
        return;
    };
    let c = cluster();
    let url = c.dashboard();
    c.await_status("two active nodes", |s| {
        s.split("Dead:")
            .next()
            .unwrap_or("")
            .matches(" node_")
            .count()
            >= 2
    });
    let job = submit(&url, "echo dashboard-line-one; echo dashboard-line-two");

    // The page and its assets are served; the stream sends snapshots.
    let (status, html) = get(&format!("{url}/"), &[]);
    assert_eq!(status, 200);
    assert!(html.contains("/static/app.js"), "{html}");
    assert_eq!(get(&format!("{url}/static/app.js"), &[]).0, 200);
    assert_eq!(get(&format!("{url}/static/app.css"), &[]).0, 200);

    let b = Browser::start(&chromium, &chromedriver);

    // Overview: both nodes, by id, alive, from the live stream.
    b.goto(&format!("{url}/#/overview"));
    let text = b.await_text("two alive nodes", |t| t.matches("ALIVE").count() >= 2);
    let ids = b.js("return [...document.querySelectorAll('.node-id')].map(e => e.textContent)");
    let ids: Vec<String> = ids
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let status = c.status();
    for id in &ids {
        assert!(
            id.len() >= 8 && status.contains(&id[..8]),
            "node {id} not in `mobula status`:\n{status}"
        );
    }
    assert!(
        text.contains("CPU") && text.contains("Usage over time"),
        "{text}"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('canvas.chart').length"),
        4
    );
    // The history grows from the stream without a reload.
    b.js("window.__loaded = true");
    b.await_text("a few snapshots", |_| {
        b.js("return (window.__loaded === true) && document.getElementById('live').textContent")
            == "live"
    });
    b.screenshot("overview");

    // Jobs: the list, then the job's detail with its log lines.
    b.goto(&format!("{url}/#/jobs"));
    b.await_text("the job in the list", |t| t.contains(&job));
    b.js("window.__loaded = true");
    // Live: a job submitted after the page loaded shows up without a reload.
    let late = submit(&url, "echo late-job");
    b.await_text("the late job", |t| t.contains(&late));
    assert_eq!(
        b.js("return window.__loaded === true"),
        true,
        "the page reloaded"
    );
    b.screenshot("jobs");
    b.goto(&format!("{url}/#/jobs/{job}"));
    let text = b.await_text("the job's logs and status", |t| {
        t.contains("dashboard-line-one")
            && t.contains("dashboard-line-two")
            && t.contains("SUCCEEDED")
    });
    assert!(text.contains(&job), "{text}");
    b.screenshot("job-detail");

    // A driver's work, for the state API's pages.
    let rt = connect(&c);
    let refs: Vec<_> = (0..6u64).map(|i| dash_square::remote(&rt, i)).collect();
    assert_eq!(rt.get_all(&refs).expect("tasks"), vec![0, 1, 4, 9, 16, 25]);
    assert!(rt.get(&dash_broken::remote(&rt)).is_err());
    let gauge = Gauge::options(ActorOptions::new().name("dash-gauge"))
        .remote(&rt)
        .expect("actor");
    assert_eq!(rt.get(&gauge.read()).expect("call"), 7);
    let pg = rt
        .placement_group_named(
            vec![ResourceSet::new().with("CPU", 1.0)],
            PlacementStrategy::Pack,
            Some("dash-group".to_string()),
        )
        .expect("pg");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));

    b.goto(&format!("{url}/#/actors"));
    b.await_text("the actor", |t| {
        t.contains("Gauge") && t.contains("dash-gauge") && t.contains("ALIVE")
    });
    b.screenshot("actors");
    b.goto(&format!("{url}/#/tasks"));
    let text = b.await_text("tasks by function and the failure", |t| {
        t.contains("dash_square") && t.contains("dash-broken-on-purpose")
    });
    assert!(
        text.contains("FINISHED") && text.contains("FAILED"),
        "{text}"
    );
    assert!(text.contains("TASK_EXECUTION_EXCEPTION"), "{text}");
    b.screenshot("tasks");
    b.goto(&format!("{url}/#/placement_groups"));
    b.await_text("the group", |t| {
        t.contains("dash-group") && t.contains("CREATED")
    });
    b.screenshot("placement-groups");

    // Logs: the worker node's files, then one of them opened from its link.
    let worker = c.worker_node_id();
    b.goto(&format!("{url}/#/logs/{worker}"));
    b.await_text("the node's log file", |t| t.contains("node.log"));
    b.screenshot("node-logs");
    b.js("document.querySelector('a.log-file').click(); return true");
    let text = b.await_text("the log's lines", |t| t.contains("joined the cluster"));
    assert!(text.contains("node daemon up"), "{text}");
    b.screenshot("node-log-file");
    drop(rt);
}
