//! The CLI end of the tunnel: tokens, `connect` (local listener or stdio)
//! and `exec`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::postgres::codec::{self, Startup};
use crate::wire::{AUDIT_HEADER, DELEGATION_HEADER, REVIEW_HEADER};

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
    #[error("no identity token: pass --token or set CUSTODY_TOKEN; on GCP the metadata server is used, elsewhere `gcloud auth print-identity-token` ({0})")]
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

    fn tunnel_url(&self, connection: &str) -> String {
        let ws = if let Some(rest) = self.gateway.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.gateway.trim_start_matches("http://"))
        };
        format!("{ws}/v1/tunnel/{connection}")
    }
}

/// An ID token for the gateway as audience: metadata server first, then gcloud.
async fn google_id_token(audience: &str) -> Result<String, ClientError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| ClientError::Token(e.to_string()))?;
    // GCE_METADATA_HOST is how Google's own libraries let the metadata server move.
    let host =
        std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| "metadata.google.internal".into());
    let url =
        format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/identity");
    if let Ok(resp) = http
        .get(&url)
        .query(&[("audience", audience), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .send()
        .await
    {
        if resp.status().is_success() {
            if let Ok(t) = resp.text().await {
                return Ok(t.trim().to_string());
            }
        }
    }
    let aud = format!("--audiences={audience}");
    let mut last = String::from("metadata server not reachable");
    for args in [
        vec!["auth", "print-identity-token", aud.as_str()],
        vec!["auth", "print-identity-token"],
    ] {
        match tokio::process::Command::new("gcloud")
            .args(&args)
            .output()
            .await
        {
            Ok(out) if out.status.success() => {
                return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => last = format!("gcloud: {e}"),
        }
    }
    Err(ClientError::Token(last))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a tunnel; returns the socket and the session's audit id.
pub async fn open_tunnel(target: &Target, connection: &str) -> Result<(Ws, String), ClientError> {
    let url = target.tunnel_url(connection);
    let transport = |why: String| ClientError::Transport {
        url: url.clone(),
        why,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| transport(e.to_string()))?;
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", target.token)
            .parse()
            .map_err(|_| ClientError::Usage("token has invalid characters".into()))?,
    );
    if let Some(tp) = target.traceparent.as_ref().and_then(|t| t.parse().ok()) {
        h.insert("traceparent", tp);
    }
    if let Some(d) = target
        .delegation
        .as_ref()
        .and_then(|t| t.trim().parse().ok())
    {
        h.insert(DELEGATION_HEADER, d);
    }
    if let Some(r) = target.review.as_ref().and_then(|t| t.trim().parse().ok()) {
        h.insert(REVIEW_HEADER, r);
    }
    match tokio_tungstenite::connect_async_with_config(req, None, true).await {
        Ok((ws, resp)) => {
            let audit = header_str(resp.headers(), AUDIT_HEADER).unwrap_or_default();
            Ok((ws, audit))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let audit_id = header_str(resp.headers(), AUDIT_HEADER);
            let body = resp.body().as_deref().unwrap_or_default();
            Err(refusal(resp.status().as_u16(), body, audit_id))
        }
        Err(e) => Err(transport(e.to_string())),
    }
}

fn header_str(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn refusal(status: u16, body: &[u8], audit_id: Option<String>) -> ClientError {
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

/// Copies bytes both ways until the gateway closes; returns its close reason.
pub async fn pump<R, W>(ws: Ws, mut local_r: R, mut local_w: W) -> Result<String, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let up = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            buf.reserve(64 * 1024);
            let n = local_r.read_buf(&mut buf).await?;
            if n == 0 {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "client closed".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                // Keep reading the gateway's answer; `down` ends the pump.
                std::future::pending::<()>().await;
            }
            let chunk: Bytes = buf.split().freeze();
            if sink.send(Message::Binary(chunk)).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), ClientError>(())
    };
    let down = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => local_w.write_all(&b).await?,
                Ok(Message::Close(frame)) => {
                    let _ = local_w.flush().await;
                    return Ok(frame.map(|f| f.reason.to_string()).unwrap_or_default());
                }
                Ok(_) => {}
                Err(e) => return Ok(format!("tunnel error: {e}")),
            }
            local_w.flush().await?;
        }
        Ok::<String, ClientError>("tunnel closed".into())
    };
    tokio::select! {
        r = up => r.map(|_| String::new()),
        r = down => r,
    }
}

/// `custody connect --listen`: one tunnel per accepted local connection.
pub async fn listen(
    target: Target,
    connection: String,
    listener: TcpListener,
) -> Result<(), ClientError> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (target, connection) = (target.clone(), connection.clone());
        tokio::spawn(async move {
            match open_tunnel(&target, &connection).await {
                Ok((ws, audit)) => {
                    eprintln!("custody: session {audit} opened: {peer} → {connection}");
                    let (r, w) = sock.into_split();
                    let why = pump(ws, r, w).await.unwrap_or_else(|e| e.to_string());
                    let why = if why.is_empty() {
                        "closed".to_string()
                    } else {
                        why
                    };
                    eprintln!(
                        "custody: session {audit} ended: {why}{}",
                        cloud_run_hint(&why)
                    );
                }
                Err(e) => {
                    eprintln!(
                        "custody: {peer} → {connection} refused: {e}{}",
                        audit_suffix(&e)
                    );
                    pg_refuse(sock, &format!("custody: {e}{}", audit_suffix(&e))).await;
                }
            }
        });
    }
}

/// `custody connect --stdio`: the tunnel on stdin/stdout (OpenSSH ProxyCommand).
pub async fn stdio(target: Target, connection: String) -> Result<String, ClientError> {
    let (ws, audit) = open_tunnel(&target, &connection).await?;
    eprintln!("custody: session {audit} opened → {connection}");
    let why = pump(ws, stdin_reader(), stdout_writer()).await?;
    Ok(why)
}

/// Under ProxyCommand stdin and stdout are pipes: read and write them on the
/// reactor (non-blocking) instead of tokio's blocking-thread stdio, which
/// hands every chunk to another thread. Anything else (a terminal, a file)
/// keeps the portable path.
fn stdin_reader() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd;
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    }
}

fn stdout_writer() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd;
    let pipe = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdout()),
    }
}

fn audit_suffix(e: &ClientError) -> String {
    e.audit_id()
        .map(|a| format!(" (audit id {a})"))
        .unwrap_or_default()
}

/// Cloud Run ends any request after 60 minutes; say so rather than look broken.
fn cloud_run_hint(why: &str) -> &'static str {
    if why.contains("tunnel error") {
        " (Cloud Run ends a request after at most 60 minutes; reconnect to continue)"
    } else {
        ""
    }
}

/// A refused tunnel still owes a PostgreSQL client a real error, not a reset:
/// answer its startup as a server would, with a FATAL ErrorResponse.
async fn pg_refuse(mut sock: TcpStream, message: &str) {
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match codec::decode_startup(&mut buf) {
            Ok(Some(Startup::Ssl | Startup::GssEnc)) => {
                if sock.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(Some(Startup::Startup { .. })) => {
                let mut out = BytesMut::new();
                codec::error_response(&mut out, "FATAL", "28000", message, None);
                let _ = sock.write_all(&out).await;
                return;
            }
            Ok(None) => match tokio::time::timeout_at(deadline, sock.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            },
            _ => return,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// `custody exec`: prints the result to stdout; the audit id goes to stderr.
pub async fn exec(
    target: &Target,
    connection: &str,
    input: &str,
    format: Format,
    review: Option<&str>,
) -> Result<(), ClientError> {
    let url = format!("{}/v1/exec/{connection}", target.gateway);
    let transport = |why: String| ClientError::Transport {
        url: url.clone(),
        why,
    };
    let http = reqwest::Client::new();
    let mut req = http
        .post(&url)
        .bearer_auth(&target.token)
        .header(
            "x-serverless-authorization",
            format!("Bearer {}", target.token),
        )
        .json(&serde_json::json!({ "input": input }));
    if let Some(tp) = &target.traceparent {
        req = req.header("traceparent", tp);
    }
    if let Some(d) = &target.delegation {
        req = req.header(DELEGATION_HEADER, d.trim());
    }
    if let Some(r) = review {
        req = req.header(REVIEW_HEADER, r.trim());
    }
    let resp = req.send().await.map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let audit_id = header_str(resp.headers(), AUDIT_HEADER);
    let body = resp.bytes().await.map_err(|e| transport(e.to_string()))?;
    if let Some(a) = &audit_id {
        eprintln!("custody: audit id {a}");
    }
    if status == 202 {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Held {
            review_id: json["review_id"].as_str().unwrap_or_default().to_string(),
            reason: json["reason"].as_str().unwrap_or_default().to_string(),
            audit_id,
        });
    }
    if status == 422 {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Query {
            sqlstate: json["sqlstate"].as_str().unwrap_or_default().to_string(),
            message: json["reason"].as_str().unwrap_or_default().to_string(),
            audit_id,
        });
    }
    if !(200..300).contains(&status) {
        return Err(refusal(status, &body, audit_id));
    }
    let mut stdout = std::io::stdout();
    use std::io::Write;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    // An SSH connection answers stdout/stderr/exit_status: print them as the
    // command would have, and exit with its status (128+n style for signals).
    if v.get("exit_status").is_some() && format != Format::Json {
        stdout.write_all(v["stdout"].as_str().unwrap_or_default().as_bytes())?;
        stdout.flush()?;
        eprint!("{}", v["stderr"].as_str().unwrap_or_default());
        if v["truncated"].as_bool() == Some(true) {
            eprintln!("custody: output was cut at the gateway's limit");
        }
        let status = match (v["exit_status"].as_u64(), v["signal"].as_str()) {
            (Some(s), _) => s.min(255) as u8,
            (None, Some(sig)) => {
                eprintln!("custody: the remote command was killed by signal {sig}");
                255
            }
            _ => 255,
        };
        return match status {
            0 => Ok(()),
            s => Err(ClientError::RemoteExit { status: s }),
        };
    }
    match format {
        // Rendered here from JSON, not taken from the gateway as text/csv, so
        // formula cells are neutralised whatever the gateway's version.
        Format::Csv => stdout.write_all(csv_from_json(&v).as_bytes())?,
        Format::Json => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )?;
        }
        Format::Table => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            stdout.write_all(render_table(&v).as_bytes())?;
        }
    }
    Ok(())
}

/// The exec answer's columns and rows as CSV (see [`crate::wire::csv::to_csv`]).
pub fn csv_from_json(v: &serde_json::Value) -> String {
    let cell = |c: &serde_json::Value| match c {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|a| a.iter().filter_map(cell).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<Option<String>>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|r| r.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    crate::wire::csv::to_csv(&columns, &rows)
}

/// psql-style aligned output.
pub fn render_table(v: &serde_json::Value) -> String {
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let tag = v["command_tag"].as_str().unwrap_or_default();
    if columns.is_empty() {
        return format!("{tag}\n");
    }
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([columns[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&line(&columns));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    let n = rows.len();
    let more = if v["truncated"].as_bool() == Some(true) {
        ", truncated"
    } else {
        ""
    };
    out.push_str(&format!(
        "({n} row{}{more})\n",
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// Sends a control request; the JSON answer, or the refusal as an error.
async fn control(
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

/// `custody delegate`: exchanges our identity (or the delegation we hold)
/// for a delegation token naming `to` as the next actor.
pub async fn delegate(
    target: &Target,
    to: &str,
    connections: &[String],
    ttl: &str,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}/v1/token", target.gateway);
    let subject = target.delegation.as_deref().unwrap_or(&target.token);
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
        ),
        ("subject_token", subject.trim().to_string()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:jwt".to_string(),
        ),
        ("actor", to.to_string()),
        ("ttl", ttl.to_string()),
    ];
    if !connections.is_empty() {
        form.push(("connections", connections.join(" ")));
    }
    let req = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&target.token)
        .form(&form);
    control(target, "/v1/token", req).await
}

/// `custody revoke`: an admin revokes a principal in every instance.
pub async fn revoke(
    target: &Target,
    principal: &str,
    reason: &str,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}/v1/revocations", target.gateway);
    let req = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&target.token)
        .json(&serde_json::json!({"principal": principal, "reason": reason}));
    control(target, "/v1/revocations", req).await
}

/// `GET /v1/reviews` or `/v1/reviews/ID`.
pub async fn review_get(
    target: &Target,
    id: Option<&str>,
) -> Result<serde_json::Value, ClientError> {
    let path = match id {
        Some(id) => format!("/v1/reviews/{id}"),
        None => "/v1/reviews".to_string(),
    };
    let req = reqwest::Client::new()
        .get(format!("{}{path}", target.gateway))
        .bearer_auth(&target.token);
    control(target, &path, req).await
}

/// `POST /v1/reviews/ID/approve|deny`.
pub async fn review_decide(
    target: &Target,
    id: &str,
    action: &str,
    reason: &str,
) -> Result<serde_json::Value, ClientError> {
    let path = format!("/v1/reviews/{id}/{action}");
    let req = reqwest::Client::new()
        .post(format!("{}{path}", target.gateway))
        .bearer_auth(&target.token)
        .json(&serde_json::json!({ "reason": reason }));
    control(target, &path, req).await
}

/// One line per review, for `custody review list`.
pub fn render_reviews(reviews: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<36}  {:<9}  {:<14}  {:<40}  {}\n",
        "REVIEW", "STATE", "CONNECTION", "REQUESTED BY", "STATEMENT"
    );
    for r in reviews {
        let req = &r["request"];
        let chain: Vec<&str> = req["chain"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
            .unwrap_or_default();
        let stmt: String = req["statement"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect();
        out.push_str(&format!(
            "{:<36}  {:<9}  {:<14}  {:<40}  {}\n",
            req["id"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            req["connection"].as_str().unwrap_or_default(),
            chain.join(" → "),
            stmt.replace('\n', " ")
        ));
    }
    out
}
