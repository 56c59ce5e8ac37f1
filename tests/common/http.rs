//! A small HTTP client for the web tests (ureq, errors as statuses).

/// Status and body of an answer.
pub type Answer = (u16, String);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("http");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// `GET url` with headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.call())
}

/// `GET url` with headers; returns (status, content type, body).
pub fn get_typed(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = agent().get(url);
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

/// `DELETE url`.
pub fn delete(url: &str) -> Answer {
    read(agent().delete(url).call())
}

/// `POST url` with a JSON body and headers.
pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.send(body))
}

/// `PUT url` with raw bytes.
pub fn put(url: &str, body: &[u8]) -> Answer {
    read(agent().put(url).send(body))
}

/// Parses a JSON body, with the body in the panic message.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
