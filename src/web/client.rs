//! A client of the head's web API: the Jobs API (`mobula job`: blocking HTTP over ureq, the
//! log tail over a WebSocket (tungstenite), working-dir uploads as Ray's CLI does them) and
//! the state API (`mobula list | get | summary | timeline | logs`: `GET`s with a query,
//! Ray's envelope unwrapped).

use std::io::Write;
use std::path::Path;

use serde_json::Value;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Malformed(String),
    /// A local file could not be read or packed.
    #[error("{0}")]
    Local(String),
}

type Res<T> = Result<T, ClientError>;

/// The web API (Jobs and state) of one head.
pub struct WebClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl WebClient {
    /// A client of `base` (`http://host:port`), sending `token` if given.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn finish(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Res<String> {
        let mut r = r.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        if status >= 400 {
            // The state API's errors are Ray's envelope: its `msg` is the message.
            let body = match serde_json::from_str::<Value>(&body) {
                Ok(v) if v["msg"].as_str().is_some_and(|m| !m.is_empty()) => {
                    v["msg"].as_str().unwrap_or_default().to_string()
                }
                _ => body,
            };
            return Err(ClientError::Status { status, body });
        }
        Ok(body)
    }

    fn json(body: &str) -> Res<Value> {
        serde_json::from_str(body).map_err(|e| ClientError::Malformed(format!("{e}: {body}")))
    }

    fn get(&self, path: &str) -> Res<String> {
        self.get_query(path, &[])
    }

    /// `GET path?query` (the pairs URL-encoded): the body of a successful answer.
    pub fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Res<String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .auth(self.agent.get(&url))
            .query_pairs(query.iter().copied())
            .call();
        self.finish(&url, r)
    }

    /// A state-API answer (`/api/v0/...`): the `data.result` of Ray's envelope.
    pub fn state(&self, path: &str, query: &[(&str, &str)]) -> Res<Value> {
        let v = Self::json(&self.get_query(path, query)?)?;
        if v["result"] != Value::Bool(true) {
            return Err(ClientError::Malformed(match v["msg"].as_str() {
                Some(m) if !m.is_empty() => m.to_string(),
                _ => v.to_string(),
            }));
        }
        Ok(v["data"]["result"].clone())
    }

    fn post(&self, path: &str, body: &str) -> Res<String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .auth(self.agent.post(&url))
            .header("content-type", "application/json")
            .send(body);
        self.finish(&url, r)
    }

    /// `GET /api/version`.
    pub fn version(&self) -> Res<Value> {
        Self::json(&self.get("/api/version")?)
    }

    /// Submits a job; returns its submission id.
    pub fn submit(&self, request: &Value) -> Res<String> {
        let v = Self::json(&self.post("/api/jobs/", &request.to_string())?)?;
        v["submission_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Malformed(v.to_string()))
    }

    /// A job's details.
    pub fn job(&self, id: &str) -> Res<Value> {
        Self::json(&self.get(&format!("/api/jobs/{id}"))?)
    }

    /// Every job.
    pub fn list(&self) -> Res<Vec<Value>> {
        match Self::json(&self.get("/api/jobs/")?)? {
            Value::Array(a) => Ok(a),
            other => Err(ClientError::Malformed(other.to_string())),
        }
    }

    /// A job's whole log.
    pub fn logs(&self, id: &str) -> Res<String> {
        let v = Self::json(&self.get(&format!("/api/jobs/{id}/logs"))?)?;
        Ok(v["logs"].as_str().unwrap_or_default().to_string())
    }

    /// Asks a job to stop; whether it was running.
    pub fn stop(&self, id: &str) -> Res<bool> {
        let v = Self::json(&self.post(&format!("/api/jobs/{id}/stop"), "")?)?;
        Ok(v["stopped"].as_bool().unwrap_or(false))
    }

    /// Deletes an ended job.
    pub fn delete(&self, id: &str) -> Res<bool> {
        let url = format!("{}/api/jobs/{id}", self.base);
        let r = self.auth(self.agent.delete(&url)).call();
        let v = Self::json(&self.finish(&url, r)?)?;
        Ok(v["deleted"].as_bool().unwrap_or(false))
    }

    /// Follows a job's log over the WebSocket tail, handing each chunk to `out`, until the
    /// server closes it (the job ended and its log was sent).
    pub fn tail(&self, id: &str, mut out: impl FnMut(&str)) -> Res<()> {
        use tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/api/jobs/{id}/logs/tail",
            self.base
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.headers_mut().insert("Authorization", v);
        }
        let (mut socket, _) = tungstenite::connect(req).map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        loop {
            match socket.read() {
                Ok(tungstenite::Message::Text(t)) => out(&t),
                Ok(tungstenite::Message::Close(_)) => return Ok(()),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                Err(e) => {
                    return Err(ClientError::Unreachable {
                        url,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Zips `dir` and uploads it unless the server has it; returns its `gcs://` URI.
    pub fn upload_working_dir(&self, dir: &Path) -> Res<String> {
        let zip = zip_dir(dir)?;
        let hash = xxhash_rust::xxh3::xxh3_64(&zip);
        let name = format!("_mobula_pkg_{hash:016x}.zip");
        let path = format!("/api/packages/gcs/{name}");
        match self.get(&path) {
            Ok(_) => {}
            Err(ClientError::Status { status: 404, .. }) => {
                let url = format!("{}{path}", self.base);
                let r = self.auth(self.agent.put(&url)).send(&zip[..]);
                self.finish(&url, r)?;
            }
            Err(e) => return Err(e),
        }
        Ok(format!("gcs://{name}"))
    }
}

/// The files under `dir`, zipped with paths relative to it (as Ray packs a working dir).
fn zip_dir(dir: &Path) -> Res<Vec<u8>> {
    let local = |e: &dyn std::fmt::Display| {
        ClientError::Local(format!("cannot pack {}: {e}", dir.display()))
    };
    if !dir.is_dir() {
        return Err(ClientError::Local(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut todo = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| local(&e))? {
            let p = e.map_err(|e| local(&e))?.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let rel = p.strip_prefix(dir).map_err(|e| local(&e))?;
        let name = rel.to_string_lossy().replace('\\', "/");
        z.start_file(name, opts).map_err(|e| local(&e))?;
        let bytes = std::fs::read(&p).map_err(|e| local(&e))?;
        z.write_all(&bytes).map_err(|e| local(&e))?;
    }
    z.finish().map_err(|e| local(&e))?;
    Ok(buf.into_inner())
}
