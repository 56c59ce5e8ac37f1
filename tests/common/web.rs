//! HTTP helpers for the tests of the head's web server (`ureq` without status errors).

/// A GET with optional headers; returns (status, content type, body).
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.call().expect("http");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (
        status,
        ctype,
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}
