//! The head's web face: one actix-web server (`mobula start --head`, at `--dashboard-host` /
//! `--dashboard-port`, default 127.0.0.1:8265) on a thread and actix `System` of its own.
//! It owns the routes of the Ray-compatible Jobs API (`jobs`), the state API (`state`), the
//! dashboard (`dashboard`), Prometheus metrics (`metrics`), health and version routes (here),
//! and the token check every request passes (`auth`). Handlers never block: they await
//! actix messages to the node's GCS and raylet, or the daemon loop's answers
//! (`ClusterAsk`), and run disk work on `web::block`.

pub mod auth;
pub mod client;
pub mod dashboard;
pub mod jobs;
pub mod metrics;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::cluster::{ClusterDir, StatusReport};

/// Errors of the web server's boundary.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The dashboard address could not be bound.
    #[error(
        "cannot serve the dashboard on {addr}: {source} (choose another with --dashboard-port or --dashboard-host)"
    )]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The server thread could not start.
    #[error("cannot start the web server: {0}")]
    Start(String),
    /// The token file could not be written or read.
    #[error("auth token file {path}: {source}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Largest request body accepted (Ray's `DASHBOARD_CLIENT_MAX_SIZE`): working-dir packages.
pub const MAX_BODY: usize = 100 * 1024 * 1024;
/// Largest JSON body accepted.
pub const MAX_JSON: usize = 4 * 1024 * 1024;
/// The Ray version this server answers to (`ray job` checks it is a PEP 440 version ≥ 2.0).
pub const RAY_VERSION: &str = "2.60.0";
/// The Jobs API version (4: DELETE).
pub const API_VERSION: &str = "4";

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Interface (`--dashboard-host`).
    pub host: String,
    /// Port (`--dashboard-port`); 0 picks a free one.
    pub port: u16,
}

/// What every handler can reach.
pub struct WebState {
    /// The head's embedded node (GCS, raylet, object table through `rt.core().node()`).
    pub rt: crate::Runtime,
    /// The cluster's directory (`<temp-dir>/cluster-<port>`: logs, jobs, packages).
    pub dir: ClusterDir,
    /// `host:port` drivers join the cluster at (`MOBULA_ADDRESS` of job entrypoints).
    pub head_address: String,
    /// The temp dir root (`--temp-dir`), for drivers started by the jobs API.
    pub temp_root: PathBuf,
    /// Questions for the daemon loop (cluster-wide views).
    pub(crate) asks: flume::Sender<crate::node::ClusterAsk>,
    /// The token requests must carry, if any.
    pub token: Option<String>,
    /// When the head started.
    pub started: SystemTime,
    /// The head's session name (`/api/version`).
    pub session_name: String,
    /// The dashboard's own address, once bound.
    pub addr: parking_lot::Mutex<Option<SocketAddr>>,
    /// Submitted jobs being supervised.
    pub jobs: jobs::JobManager,
}

impl WebState {
    /// The head's embedded node (its GCS and raylet addresses), if it has one.
    pub(crate) fn node(&self) -> Option<&crate::node::NodeClient> {
        self.rt.core().node()
    }

    /// The cluster's status from the daemon loop, or `None` if it did not answer in time.
    pub async fn status(&self) -> Option<StatusReport> {
        let (tx, rx) = flume::bounded(1);
        self.asks
            .send_async(crate::node::ClusterAsk::Status { done: tx })
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(10), rx.recv_async())
            .await
            .ok()?
            .ok()
    }
}

impl WebState {
    /// A state query's answers from every alive node (or only `node`), or `None` if the
    /// daemon loop did not answer in time (each node has `NODE_TIMEOUT` of its own).
    pub async fn state(
        &self,
        query: crate::cluster::state::StateQuery,
        node: Option<String>,
    ) -> Option<Vec<crate::cluster::state::NodeAnswer>> {
        let (tx, rx) = flume::bounded(1);
        self.asks
            .send_async(crate::node::ClusterAsk::State {
                query,
                node,
                done: tx,
            })
            .await
            .ok()?;
        let wait = crate::cluster::state::NODE_TIMEOUT + Duration::from_secs(5);
        tokio::time::timeout(wait, rx.recv_async()).await.ok()?.ok()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running server: its address and a handle that stops it.
pub struct WebServer {
    /// The bound address.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl WebServer {
    /// Stops the server gracefully (waits for the thread's `System` to wind down).
    pub fn stop(&self) {
        futures::executor::block_on(self.handle.stop(true));
    }
}

/// A `text/plain` answer with a status (Ray's error bodies are plain text).
pub fn text(status: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(msg.into())
}

/// Registers every route on an app (also used by tests of single modules).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_JSON)
            .error_handler(|err, _req| {
                let msg = format!("malformed request body: {err}");
                actix_web::error::InternalError::from_response(
                    err,
                    text(actix_web::http::StatusCode::BAD_REQUEST, msg),
                )
                .into()
            }),
    )
    .app_data(web::QueryConfig::default().error_handler(|err, _req| {
        let msg = format!("bad query: {err}");
        actix_web::error::InternalError::from_response(
            err,
            text(actix_web::http::StatusCode::BAD_REQUEST, msg),
        )
        .into()
    }))
    .app_data(web::PayloadConfig::new(MAX_BODY))
    .route("/api/version", web::get().to(version))
    .route("/api/gcs_healthz", web::get().to(healthz))
    .route("/api/healthz", web::get().to(healthz))
    .route("/-/healthz", web::get().to(healthz))
    .route(
        "/api/authentication_mode",
        web::get().to(auth::authentication_mode),
    )
    .route("/api/authenticate", web::post().to(auth::authenticate))
    .configure(jobs::routes)
    .configure(state::routes)
    .configure(metrics::routes)
    .configure(dashboard::routes);
}

async fn version(st: web::Data<WebState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "version": API_VERSION,
        "ray_version": RAY_VERSION,
        "ray_commit": concat!("mobula-", env!("CARGO_PKG_VERSION")),
        "session_name": st.session_name,
    }))
}

async fn healthz() -> HttpResponse {
    text(actix_web::http::StatusCode::OK, "success")
}

/// Unknown routes: a 404 with a message.
async fn not_found(req: HttpRequest) -> HttpResponse {
    text(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
}

/// Starts the server on a thread of its own and returns once it is bound (or failed to).
pub fn start(state: WebState, opts: &WebOptions) -> Result<WebServer, WebError> {
    let addr_text = format!("{}:{}", opts.host, opts.port);
    let state = web::Data::new(state);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let shared = state.clone();
    std::thread::Builder::new()
        .name("mobula-web".to_string())
        .spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                let data = shared.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .wrap(actix_web::middleware::from_fn(auth::guard))
                        .configure(configure)
                        .default_service(web::to(not_found))
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(2)
                .bind(addr_text.as_str());
                let server = match server {
                    Ok(s) => s,
                    Err(source) => {
                        let _ = tx.send(Err(WebError::Bind {
                            addr: addr_text,
                            source,
                        }));
                        return;
                    }
                };
                let Some(addr) = server.addrs().first().copied() else {
                    let _ = tx.send(Err(WebError::Start("bound no address".to_string())));
                    return;
                };
                *shared.addr.lock() = Some(addr);
                actix_rt::spawn(jobs::resume(shared.clone().into_inner()));
                let running = server.run();
                let _ = tx.send(Ok((addr, running.handle())));
                if let Err(e) = running.await {
                    tracing::error!(error = %e, "the web server stopped");
                }
            });
        })
        .map_err(|e| WebError::Start(e.to_string()))?;
    let (addr, handle) = rx
        .recv()
        .map_err(|_| WebError::Start("the server thread ended".to_string()))??;
    tracing::info!(addr = %addr, auth = state.token.is_some(), "dashboard and jobs API up");
    Ok(WebServer { addr, handle })
}
