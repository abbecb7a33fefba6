//! `custody ui`: the reviewers' console on loopback, like `kubectl proxy`.
//! It serves the same embedded pages as the gateway's `/ui/` and forwards
//! their `/v1` calls to the gateway with the CLI's own token (CUSTODY_TOKEN,
//! the metadata server or gcloud), so the browser never holds one.
//!
//! Any page the browser opens can send requests to loopback, so a call is
//! forwarded only when it names this server as its Host (no DNS
//! rebinding), comes from this origin if it says, and carries the
//! console's `x-custody-console` header (which no other origin can add
//! without a CORS preflight, never answered here).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::Json;

use super::args::GatewayArgs;
use super::client::{ClientError, Target};
use super::{shutdown_signal, CliError};

/// The header the console sends with each API call.
pub const CONSOLE_HEADER: &str = "x-custody-console";
/// Discovered ID tokens live an hour; fetch a new one well before.
const TOKEN_REUSE: Duration = Duration::from_secs(30 * 60);
/// Answer headers the console reads.
const PASSED_BACK: [&str; 4] = [
    "content-type",
    "x-custody-audit-id",
    "x-custody-verify",
    "retry-after",
];

#[derive(clap::Args)]
pub struct UiArgs {
    #[command(flatten)]
    pub gw: GatewayArgs,
    /// Where the console listens (loopback only)
    #[arg(long, default_value = "127.0.0.1:8484")]
    pub listen: SocketAddr,
    /// Only print the console's URL; do not open a browser
    #[arg(long)]
    pub no_browser: bool,
}

struct Proxy {
    gateway: String,
    explicit: Option<String>,
    /// Hosts this server answers as: its address (`127.0.0.1:PORT`) and `localhost:PORT`.
    hosts: [String; 2],
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    http: reqwest::Client,
}

impl Proxy {
    /// The token to send: the one given, or a discovered one, renewed.
    async fn token(&self) -> Result<String, ClientError> {
        let mut held = self.token.lock().await;
        if let Some((t, at)) = held.as_ref() {
            if self.explicit.is_some() || at.elapsed() < TOKEN_REUSE {
                return Ok(t.clone());
            }
        }
        let target = Target::resolve(Some(self.gateway.clone()), self.explicit.clone()).await?;
        *held = Some((target.token.clone(), Instant::now()));
        Ok(target.token)
    }
}

/// Why a request to the console may not be forwarded, if it may not.
pub fn refuse(headers: &HeaderMap, hosts: &[String]) -> Option<&'static str> {
    let text = |n: HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if !text(header::HOST).is_some_and(|h| hosts.iter().any(|x| x == h)) {
        return Some("the Host header does not name this console");
    }
    if let Some(origin) = text(header::ORIGIN) {
        let ours = origin
            .strip_prefix("http://")
            .is_some_and(|o| hosts.iter().any(|x| x == o));
        if !ours {
            return Some("the request comes from another origin");
        }
    }
    if !headers.contains_key(CONSOLE_HEADER) {
        return Some("only the console's own pages may call through it");
    }
    None
}

fn error(status: StatusCode, error: &str, reason: String) -> Response {
    let body = serde_json::json!({"error": error, "reason": reason, "audit_id": ""});
    (status, Json(body)).into_response()
}

/// `/v1/...` on to the gateway, with the token added and nothing else of
/// the browser's (no cookies) passed on.
async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(why) = refuse(&headers, &p.hosts) {
        return error(StatusCode::FORBIDDEN, "forbidden", why.to_string());
    }
    if !console_call(&method, uri.path()) {
        let why = format!(
            "custody ui forwards only the console's own calls, not {method} {}",
            uri.path()
        );
        return error(StatusCode::FORBIDDEN, "forbidden", why);
    }
    let token = match p.token().await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
    };
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let mut req = p
        .http
        .request(method, format!("{}{path}", p.gateway))
        .bearer_auth(&token)
        .header("x-serverless-authorization", format!("Bearer {token}"));
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let resp = match req.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("cannot reach the gateway at {}: {e}", p.gateway);
            return error(StatusCode::BAD_GATEWAY, "unreachable", why);
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut back = HeaderMap::new();
    for name in PASSED_BACK {
        if let Some(v) = resp.headers().get(name) {
            back.insert(HeaderName::from_static(name), v.clone());
        }
    }
    match resp.bytes().await {
        Ok(b) => (status, back, b).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, "unreachable", e.to_string()),
    }
}

/// What the console calls: reading sessions, connections and reviews, and
/// deciding reviews. Not exec, tokens, revocations or anything else another
/// local process might want the user's token for.
fn console_call(method: &Method, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('%'))
    {
        return false;
    }
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["v1", "connections"]) => true,
        ("GET", ["v1", "sessions", ..]) if parts.len() <= 4 => true,
        ("GET", ["v1", "reviews", ..]) if parts.len() <= 3 => true,
        ("POST", ["v1", "reviews", _, "approve" | "deny"]) => true,
        _ => false,
    }
}

pub async fn run(args: UiArgs) -> Result<ExitCode, CliError> {
    let UiArgs {
        gw,
        listen,
        no_browser,
    } = args;
    if !listen.ip().is_loopback() {
        let why = format!("custody ui listens on loopback only, not {listen}");
        return Err(ClientError::Usage(why).into());
    }
    // The token is found now, so a missing one is said before the browser opens.
    let target = Target::resolve(gw.gateway, gw.token.clone()).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;
    let port = local.port();
    let proxy = Proxy {
        gateway: target.gateway.clone(),
        explicit: gw.token.filter(|t| !t.is_empty()),
        hosts: [local.to_string(), format!("localhost:{port}")],
        token: tokio::sync::Mutex::new(Some((target.token, Instant::now()))),
        http: super::client::http(),
    };
    let app = crate::ingress::ui::router()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/v1/{*rest}", any(forward))
        .with_state(Arc::new(proxy));
    let url = format!("http://{local}/ui/");
    eprintln!("custody: console at {url} (for {})", target.gateway);
    if !no_browser {
        open(&url);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// The desktop's browser; a failure only means the URL is opened by hand.
fn open(url: &str) {
    let spawned = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("custody: cannot open a browser ({e}); open {url}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_consoles_own_paths_and_methods_are_forwarded() {
        let get = Method::GET;
        assert!(console_call(&get, "/v1/sessions"));
        assert!(console_call(&get, "/v1/sessions/01a2-x/asciicast"));
        assert!(console_call(&get, "/v1/reviews/abc"));
        assert!(console_call(&Method::POST, "/v1/reviews/abc/approve"));
        assert!(!console_call(&Method::POST, "/v1/exec/pg"));
        assert!(!console_call(&Method::POST, "/v1/token"));
        assert!(!console_call(&Method::POST, "/v1/revocations"));
        assert!(!console_call(&get, "/v1/../mcp"));
        assert!(!console_call(&get, "/v1/sessions/%2e%2e/x"));
        assert!(!console_call(&Method::DELETE, "/v1/sessions"));
    }

    #[test]
    fn only_the_consoles_own_calls_are_forwarded() {
        let hosts = ["127.0.0.1:8484".to_string(), "localhost:8484".to_string()];
        let ok = req(&[("host", "127.0.0.1:8484"), (CONSOLE_HEADER, "1")]);
        assert_eq!(refuse(&ok, &hosts), None);
        let same = req(&[
            ("host", "localhost:8484"),
            ("origin", "http://localhost:8484"),
            (CONSOLE_HEADER, "1"),
        ]);
        assert_eq!(refuse(&same, &hosts), None);
        let rebound = req(&[("host", "evil.example:8484"), (CONSOLE_HEADER, "1")]);
        assert!(refuse(&rebound, &hosts).is_some());
        let other = req(&[
            ("host", "127.0.0.1:8484"),
            ("origin", "https://evil.example"),
            (CONSOLE_HEADER, "1"),
        ]);
        assert!(refuse(&other, &hosts).is_some());
        let form_post = req(&[("host", "127.0.0.1:8484")]);
        assert!(refuse(&form_post, &hosts).is_some());
    }
}
