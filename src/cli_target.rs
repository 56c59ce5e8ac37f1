//! Where the head's web API is and how to authenticate, for the CLI commands that use it
//! (`mobula job`, `mobula list | get | summary | timeline | logs`): `--address`, else
//! `MOBULA_DASHBOARD_ADDRESS` / `RAY_API_SERVER_ADDRESS` / an http `RAY_ADDRESS`, else the
//! `head.json` of the cluster under `--temp-dir`; the token from `--auth-token`, the
//! environment or the cluster's `auth_token` file.

use std::path::PathBuf;
use std::process::ExitCode;

use mobula::web::client::WebClient;

/// Where the head's web API is and how to authenticate.
#[derive(clap::Args)]
pub struct Target {
    /// `http://HOST:PORT` of the head's dashboard (default: MOBULA_DASHBOARD_ADDRESS,
    /// RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS, else the cluster under --temp-dir).
    #[arg(long)]
    address: Option<String>,
    /// Root of the cluster directories (to find the dashboard and its token).
    #[arg(long, default_value = "/tmp/mobula")]
    temp_dir: PathBuf,
    /// The token to send (default: MOBULA_AUTH_TOKEN, RAY_AUTH_TOKEN, or the cluster's).
    #[arg(long)]
    auth_token: Option<String>,
}

impl Target {
    /// A client of the head's web API, found as the module doc says.
    pub fn client(&self) -> Result<WebClient, String> {
        let dir = mobula::cluster::pick_cluster(&self.temp_dir, None).ok();
        let env_url = [
            "MOBULA_DASHBOARD_ADDRESS",
            "RAY_API_SERVER_ADDRESS",
            "RAY_ADDRESS",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| v.starts_with("http://") || v.starts_with("https://"));
        let url = match (self.address.clone().or(env_url), &dir) {
            (Some(u), _) => u,
            (None, Some(d)) => d
                .read_head()
                .ok()
                .and_then(|h| h.dashboard)
                .ok_or_else(|| {
                    format!(
                        "the cluster in {} serves no dashboard; pass --address http://HOST:PORT",
                        d.dir.display()
                    )
                })?,
            (None, None) => {
                return Err(format!(
                    "no cluster under {} and no --address http://HOST:PORT",
                    self.temp_dir.display()
                ));
            }
        };
        let token = self
            .auth_token
            .clone()
            .or_else(|| mobula::web::auth::client_token(dir.as_ref().map(|d| d.dir.as_path())));
        Ok(WebClient::new(&url, token))
    }
}

/// Prints `mobula: MSG` to stderr; the failure exit code.
pub fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mobula: {msg}");
    ExitCode::FAILURE
}
