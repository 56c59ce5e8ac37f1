//! The head's web server over real HTTP: version and health routes, token authentication
//! (generated for a non-loopback bind, 401 / 403), the browser guard, bad input.

mod common;

use common::cluster::head_with;

/// A GET with optional headers; returns (status, body).
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = common::web::get(url, headers);
    (status, body)
}

fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut req = agent.post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).expect("http");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn version_and_health_answer_like_ray() {
    let c = head_with(&[]);
    let url = c.dashboard();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, body) = get(&format!("{url}/api/version"), &[]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["version"], "4");
    assert_eq!(v["ray_version"], "2.60.0");
    assert!(
        v["session_name"]
            .as_str()
            .is_some_and(|s| s.starts_with("session_"))
    );
    assert_eq!(
        get(&format!("{url}/api/gcs_healthz"), &[]),
        (200, "success".into())
    );
    let (status, body) = get(&format!("{url}/api/authentication_mode"), &[]);
    assert_eq!(status, 200);
    assert!(body.contains("disabled"), "{body}");
    let (status, body) = get(&format!("{url}/no/such/route"), &[]);
    assert_eq!(status, 404, "{body}");
    assert!(c.token().is_none(), "a loopback dashboard needs no token");
    // A browser may read, but not change state without the token.
    let (status, body) = post(
        &format!("{url}/api/jobs/"),
        &[("Origin", "http://evil.example")],
        "{}",
    );
    assert_eq!(status, 403, "{body}");
}

#[test]
fn a_public_bind_requires_a_token() {
    let c = head_with(&["--dashboard-host", "0.0.0.0"]);
    let token = c.token().expect("a generated token");
    assert!(token.len() >= 32, "{token}");
    let port = c.dashboard().rsplit(':').next().expect("port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    // Health and the mode are open; the API is not.
    assert_eq!(get(&format!("{url}/api/gcs_healthz"), &[]).0, 200);
    assert!(
        get(&format!("{url}/api/authentication_mode"), &[])
            .1
            .contains("token")
    );
    let (status, body) = get(&format!("{url}/api/version"), &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Missing authentication token"), "{body}");
    let (status, body) = get(
        &format!("{url}/api/version"),
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Invalid authentication token"), "{body}");
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(&format!("{url}/api/version"), &[("Authorization", &bearer)]).0,
        200
    );
    assert_eq!(
        get(
            &format!("{url}/api/version"),
            &[("X-Ray-Authorization", &bearer)]
        )
        .0,
        200
    );
    // A login sets a cookie that then serves reads.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .post(&format!("{url}/api/authenticate"))
        .header("Authorization", &bearer)
        .send("")
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_string();
    assert_eq!(
        get(&format!("{url}/api/version"), &[("Cookie", &pair)]).0,
        200
    );
    // A browser's state change needs the token in a header, not just the cookie.
    let (status, _) = post(
        &format!("{url}/api/jobs/"),
        &[("Cookie", &pair), ("User-Agent", "Mozilla/5.0")],
        "{}",
    );
    assert_eq!(status, 403);
}

#[test]
fn a_taken_dashboard_port_is_a_loud_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let temp = tempfile::tempdir().expect("tempdir");
    let head_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
        .to_string();
    let o = std::process::Command::new(common::cluster::BIN)
        .args([
            "start",
            "--head",
            "--port",
            &head_port,
            "--bind",
            "127.0.0.1",
            "--dashboard-port",
            &port,
            "--temp-dir",
            temp.path().to_str().expect("path"),
        ])
        .output()
        .expect("mobula");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains(&port) && text.contains("--dashboard-port"),
        "{text}"
    );
}
