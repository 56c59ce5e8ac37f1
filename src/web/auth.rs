//! Token authentication compatible with Ray's token mode, and the browser guard.
//!
//! - A server with a token accepts it as `Authorization: Bearer <token>`,
//!   `X-Ray-Authorization: Bearer <token>` (or the bare token), or the
//!   `ray-authentication-token` cookie set by `POST /api/authenticate`. A missing token is a
//!   401, a wrong one a 403, with Ray's messages. Health, version-free static and login routes
//!   are exempt.
//! - A token is required whenever the dashboard binds a non-loopback address: the head then
//!   generates one (`resolve_token`) into `<cluster dir>/auth_token`, mode 0600.
//! - A browser-originated request (User-Agent `Mozilla…`, or an `Origin`, `Referer` or
//!   `Sec-Fetch-*` header) that changes state (anything but GET, HEAD, OPTIONS) is refused
//!   unless it carries the token in a header: a cookie alone does not count, so another site
//!   (or a DNS-rebinding page) cannot make a browser change the cluster.

use std::path::{Path, PathBuf};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{WebError, WebState, text};

/// The cookie `POST /api/authenticate` sets (Ray's name).
pub const COOKIE: &str = "ray-authentication-token";

/// Paths served without a token.
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/" | "/favicon.ico"
            | "/api/authentication_mode"
            | "/api/authenticate"
            | "/api/healthz"
            | "/api/gcs_healthz"
            | "/-/healthz"
    ) || path.starts_with("/static/")
}

/// Whether a request looks like it came from a browser (Ray's rule).
pub fn is_browser(req: &HttpRequest) -> bool {
    let h = req.headers();
    h.get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla"))
        || h.contains_key("origin")
        || h.contains_key("referer")
        || h.keys().any(|k| k.as_str().starts_with("sec-fetch-"))
}

/// Where a request carried a token.
enum Presented {
    Header(String),
    Cookie(String),
    None,
}

fn bearer(v: &str) -> String {
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .unwrap_or(v)
        .trim()
        .to_string()
}

fn presented(req: &HttpRequest) -> Presented {
    let h = req.headers();
    for name in ["authorization", "x-ray-authorization"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Presented::Header(bearer(v));
        }
    }
    match req.cookie(COOKIE) {
        Some(c) => Presented::Cookie(c.value().to_string()),
        None => Presented::None,
    }
}

/// Compares in time independent of where the strings differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware every request passes.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<WebState>>()
        .and_then(|s| s.token.clone());
    let path = req.path().to_string();
    // Never keep a clone of the request: routing needs it unshared.
    let browser_write =
        is_browser(req.request()) && changes_state(req.method()) && path != "/api/authenticate";
    let given = presented(req.request());
    let refuse = |req: ServiceRequest, status: StatusCode, msg: &str| {
        tracing::debug!(path = %path, status = status.as_u16(), "request refused");
        Ok(req.into_response(text(status, msg.to_string())))
    };
    if browser_write {
        let ok = match (&token, &given) {
            (Some(t), Presented::Header(g)) => same_token(t, g),
            _ => false,
        };
        if !ok {
            return refuse(
                req,
                StatusCode::FORBIDDEN,
                "Forbidden: a browser request that changes state must carry the token in an Authorization header",
            );
        }
    } else if let Some(t) = &token
        && !exempt(&path)
    {
        match &given {
            Presented::None => {
                return refuse(
                    req,
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized: Missing authentication token",
                );
            }
            Presented::Header(g) | Presented::Cookie(g) if !same_token(t, g) => {
                return refuse(
                    req,
                    StatusCode::FORBIDDEN,
                    "Forbidden: Invalid authentication token",
                );
            }
            _ => {}
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `GET /api/authentication_mode`.
pub async fn authentication_mode(st: web::Data<WebState>) -> HttpResponse {
    let mode = if st.token.is_some() {
        "token"
    } else {
        "disabled"
    };
    HttpResponse::Ok().json(serde_json::json!({ "authentication_mode": mode }))
}

#[derive(serde::Deserialize)]
struct Login {
    token: Option<String>,
}

/// `POST /api/authenticate`: checks the token (header, or JSON `{"token": ...}`) and sets the
/// HttpOnly, SameSite=Strict cookie for 30 days.
pub async fn authenticate(
    st: web::Data<WebState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let Some(want) = &st.token else {
        return HttpResponse::Ok().json(serde_json::json!({ "authentication_mode": "disabled" }));
    };
    let given = match presented(&req) {
        Presented::Header(g) => Some(g),
        _ => serde_json::from_slice::<Login>(&body)
            .ok()
            .and_then(|l| l.token),
    };
    match given {
        None => text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: Missing authentication token",
        ),
        Some(g) if !same_token(want, &g) => text(
            StatusCode::FORBIDDEN,
            "Forbidden: Invalid authentication token",
        ),
        Some(g) => {
            let cookie = actix_web::cookie::Cookie::build(COOKIE, g)
                .http_only(true)
                .same_site(actix_web::cookie::SameSite::Strict)
                .path("/")
                .max_age(actix_web::cookie::time::Duration::days(30))
                .finish();
            HttpResponse::Ok()
                .cookie(cookie)
                .json(serde_json::json!({ "authenticated": true }))
        }
    }
}

/// The token file of a cluster directory.
pub fn token_file(dir: &Path) -> PathBuf {
    dir.join("auth_token")
}

/// Whether a host string names a loopback interface.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Decides the server's token: the one given (`--auth-token`, `MOBULA_AUTH_TOKEN`,
/// `RAY_AUTH_TOKEN`), else a new one when the dashboard binds a non-loopback address or
/// `RAY_AUTH_MODE=token` asks for it, else none. A token in use is written to
/// `<cluster dir>/auth_token` with mode 0600 (the CLI on this machine reads it there).
pub fn resolve_token(
    host: &str,
    given: Option<String>,
    cluster_dir: &Path,
) -> Result<Option<String>, WebError> {
    let given = given
        .or_else(|| std::env::var("MOBULA_AUTH_TOKEN").ok())
        .or_else(|| std::env::var("RAY_AUTH_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string());
    let forced = std::env::var("RAY_AUTH_MODE").is_ok_and(|m| m == "token");
    let token = match given {
        Some(t) => Some(t),
        None if forced || !is_loopback(host) => {
            let bytes: [u8; 24] = rand::random();
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
        }
        None => None,
    };
    let path = token_file(cluster_dir);
    match &token {
        Some(t) => write_private(&path, t).map_err(|source| WebError::Token { path, source })?,
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The token a client on this machine should send: `MOBULA_AUTH_TOKEN`, `RAY_AUTH_TOKEN`, or
/// the cluster directory's token file.
pub fn client_token(cluster_dir: Option<&Path>) -> Option<String> {
    std::env::var("MOBULA_AUTH_TOKEN")
        .ok()
        .or_else(|| std::env::var("RAY_AUTH_TOKEN").ok())
        .or_else(|| cluster_dir.and_then(|d| std::fs::read_to_string(token_file(d)).ok()))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert_eq!(bearer("Bearer xyz"), "xyz");
        assert_eq!(bearer("xyz"), "xyz");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("::1"));
        assert!(!is_loopback("0.0.0.0"));
        assert!(!is_loopback("192.0.2.2"));
    }

    #[test]
    fn a_public_bind_gets_a_private_token_file() {
        let d = tempfile::tempdir().expect("temp dir");
        let t = resolve_token("0.0.0.0", None, d.path()).expect("token");
        let t = t.expect("a token for a public bind");
        let file = token_file(d.path());
        assert_eq!(std::fs::read_to_string(&file).expect("file"), t);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            resolve_token("127.0.0.1", Some("given".into()), d.path()).expect("token"),
            Some("given".to_string())
        );
    }
}
