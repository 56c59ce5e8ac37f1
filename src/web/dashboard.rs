//! The live web dashboard: a single-page app (hand-written HTML, CSS and vanilla JS embedded
//! in the binary, served at `/` and `/static/…`) and its live stream, `GET
//! /api/dashboard/stream`, a `text/event-stream` that pushes a cluster snapshot every second
//! (from `WebState::status()`: nodes alive and dead, total and available resources, pending
//! demands). The page reads everything else from the state and Jobs APIs; it keeps the rolling
//! history of its charts itself, so this module holds no state.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use bytes::Bytes;

use super::WebState;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON: &[u8] = include_bytes!("assets/favicon.svg");

/// How often the stream pushes a snapshot.
const TICK: Duration = Duration::from_secs(1);

/// Registers this area's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/static/app.js", web::get().to(app_js))
        .route("/static/app.css", web::get().to(app_css))
        .route("/favicon.ico", web::get().to(favicon))
        .route("/api/dashboard/stream", web::get().to(stream));
}

fn asset(content_type: &str, body: &'static [u8]) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX.as_bytes())
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS.as_bytes())
}

async fn app_css() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS.as_bytes())
}

async fn favicon() -> HttpResponse {
    asset("image/svg+xml", FAVICON)
}

/// One snapshot of the cluster, as the stream sends it.
async fn snapshot(st: &WebState) -> serde_json::Value {
    let Some(report) = st.status().await else {
        return serde_json::json!({"ts": super::now_ms(), "error": "the cluster did not answer"});
    };
    let alive = report.nodes.iter().filter(|n| n.alive).count();
    let mut total = std::collections::BTreeMap::<String, f64>::new();
    let mut available = std::collections::BTreeMap::<String, f64>::new();
    for n in report.nodes.iter().filter(|n| n.alive) {
        for (k, v) in &n.total {
            *total.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &n.available {
            *available.entry(k.clone()).or_default() += v;
        }
    }
    serde_json::json!({
        "ts": super::now_ms(),
        "nodes_alive": alive,
        "nodes_dead": report.nodes.len() - alive,
        "total": total,
        "available": available,
        "pending": report.pending,
        "nodes": report.nodes,
    })
}

/// `GET /api/dashboard/stream`: a snapshot event every second until the client goes away.
async fn stream(st: web::Data<WebState>) -> HttpResponse {
    let events = futures::stream::unfold((st, true), |(st, first)| async move {
        if !first {
            tokio::time::sleep(TICK).await;
        }
        let snap = snapshot(&st).await;
        let frame = format!("event: snapshot\ndata: {snap}\n\n");
        Some((Ok::<_, actix_web::Error>(Bytes::from(frame)), (st, false)))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}
