//! What every gateway-facing subcommand shares: where the gateway is and
//! who we are ([`Target`]), how it refuses ([`ClientError`]), and control
//! requests (JSON over HTTP).

use std::time::Duration;

use crate::wire::AUDIT_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{reason} (HTTP {status})")]
    Refused {
        status: u16,
        reason: String,
        audit_id: Option<String>,
    },
    #[error("query failed: {message} (SQLSTATE {sqlstate})")]
    Query {
        sqlstate: String,
        message: String,
        audit_id: Option<String>,
    },
    #[error("cannot reach the gateway at {url}: {why}")]
    Transport { url: String, why: String },
    #[error("no identity token: pass --token or set CUSTODY_TOKEN. Tried, in order: {0}. On GCP the metadata server gives one; on a laptop run `gcloud auth login` (a person's token has gcloud's audience, which the gateway's Google issuer must list) or `gcloud auth activate-service-account`")]
    Token(String),
    #[error("held for approval: {reason}; an approver runs `custody review approve {review_id}`, then rerun with --review {review_id} (or use --wait)")]
    Held {
        review_id: String,
        reason: String,
        audit_id: Option<String>,
    },
    /// The remote command of an SSH exec did not succeed; its own stderr said why.
    #[error("the remote command exited with status {status}")]
    RemoteExit { status: u8 },
    #[error("{0}")]
    Usage(String),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    pub fn audit_id(&self) -> Option<&str> {
        match self {
            ClientError::Refused { audit_id, .. }
            | ClientError::Query { audit_id, .. }
            | ClientError::Held { audit_id, .. } => audit_id.as_deref(),
            _ => None,
        }
    }

    /// 2 for refusals (authentication, policy), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused { status, .. } if (400..500).contains(status) => 2,
            ClientError::Token(_) => 2,
            ClientError::Held { .. } => 3,
            ClientError::RemoteExit { status } => i32::from(*status),
            _ => 1,
        }
    }
}

/// Where the gateway is and how to prove who we are.
#[derive(Clone)]
pub struct Target {
    pub gateway: String,
    pub token: String,
    pub traceparent: Option<String>,
    /// A delegation token passed down by a parent (CUSTODY_DELEGATION).
    pub delegation: Option<String>,
    /// An approved review a tunnel runs its held statement under (CUSTODY_REVIEW).
    pub review: Option<String>,
}

impl Target {
    pub async fn resolve(
        gateway: Option<String>,
        token: Option<String>,
    ) -> Result<Target, ClientError> {
        let gateway = gateway
            .ok_or_else(|| {
                ClientError::Usage("no gateway: pass --gateway URL or set CUSTODY_GATEWAY".into())
            })?
            .trim_end_matches('/')
            .to_string();
        if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "gateway {gateway:?} must be an http:// or https:// URL"
            )));
        }
        let token = match token.filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => google_id_token(&gateway).await?,
        };
        Ok(Target {
            gateway,
            token,
            traceparent: std::env::var("TRACEPARENT").ok(),
            delegation: std::env::var("CUSTODY_DELEGATION")
                .ok()
                .filter(|d| !d.trim().is_empty()),
            review: std::env::var("CUSTODY_REVIEW")
                .ok()
                .filter(|d| !d.trim().is_empty()),
        })
    }

    pub(crate) fn tunnel_url(&self, connection: &str) -> String {
        let ws = if let Some(rest) = self.gateway.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.gateway.trim_start_matches("http://"))
        };
        format!("{ws}/v1/tunnel/{connection}")
    }
}

/// An ID token for the gateway as audience, as each place a caller may be
/// has one: the metadata server (GCP workloads), gcloud with the gateway as
/// audience (service accounts), plain gcloud (a person: the token's
/// audience is gcloud's own client id, which the gateway's Google issuer
/// must list). When all fail, the error names each attempt and its answer.
async fn google_id_token(audience: &str) -> Result<String, ClientError> {
    let mut tried = Vec::new();
    match metadata_token(audience).await {
        Ok(t) => return Ok(t),
        Err(why) => tried.push(format!("metadata server: {why}")),
    }
    let aud = format!("--audiences={audience}");
    for args in [
        vec!["auth", "print-identity-token", aud.as_str()],
        vec!["auth", "print-identity-token"],
    ] {
        let why = match tokio::process::Command::new("gcloud")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
        {
            Ok(out) if out.status.success() => {
                let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !token.is_empty() {
                    return Ok(token);
                }
                "printed no token".to_string()
            }
            Ok(out) => last_line(&String::from_utf8_lossy(&out.stderr)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gcloud is not installed".into(),
            Err(e) => e.to_string(),
        };
        tried.push(format!("gcloud {}: {why}", args.join(" ")));
    }
    Err(ClientError::Token(tried.join("; ")))
}

/// The client every call to the gateway uses. Redirects are not followed:
/// reqwest drops only `Authorization` on a cross-host redirect, so a 307
/// would carry `X-Serverless-Authorization`, the delegation token and the
/// statement to wherever the gateway (or something in front of it) points.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

async fn metadata_token(audience: &str) -> Result<String, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    // GCE_METADATA_HOST is how Google's own libraries let the metadata server move.
    let host =
        std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| "metadata.google.internal".into());
    let url =
        format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/identity");
    let resp = http
        .get(&url)
        .query(&[("audience", audience), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|e| format!("{host} is not reachable (not on GCP?): {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{host} answered HTTP {}", resp.status()));
    }
    let token = resp.text().await.map_err(|e| e.to_string())?;
    Ok(token.trim().to_string())
}

/// gcloud's error is its last line; one line keeps the combined message readable.
fn last_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed");
    line.trim().chars().take(300).collect()
}

pub(crate) fn header_str(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(crate) fn refusal(status: u16, body: &[u8], audit_id: Option<String>) -> ClientError {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let reason = json["reason"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let audit_id = audit_id.or_else(|| json["audit_id"].as_str().map(str::to_string));
    ClientError::Refused {
        status,
        reason,
        audit_id,
    }
}

/// Sends a control request; the JSON answer, or the refusal as an error.
pub(crate) async fn control(
    target: &Target,
    path: &str,
    req: reqwest::RequestBuilder,
) -> Result<serde_json::Value, ClientError> {
    let transport = |why: String| ClientError::Transport {
        url: format!("{}{path}", target.gateway),
        why,
    };
    let resp = req
        .header(
            "x-serverless-authorization",
            format!("Bearer {}", target.token),
        )
        .send()
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let audit_id = header_str(resp.headers(), AUDIT_HEADER);
    let body = resp.bytes().await.map_err(|e| transport(e.to_string()))?;
    if let Some(a) = &audit_id {
        eprintln!("custody: audit id {a}");
    }
    if !(200..300).contains(&status) {
        return Err(refusal(status, &body, audit_id));
    }
    serde_json::from_slice(&body).map_err(|e| transport(format!("answer is not JSON: {e}")))
}
