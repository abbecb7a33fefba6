//! One tunnelled PostgreSQL session: answer the client's startup, log in
//! upstream with the gateway's credential, then relay raw frames both ways,
//! batching each read into one write and tapping statements to the recorder.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self, Startup};
use super::comment;
use super::hooks::{self, ClientHook, MaskCtx, ServerHook};
use super::scanner::Scanner;
use super::tracker::Tracker;
use super::{upstream, PgError};
use crate::policy::guardrails::unsafe_encoding;
use crate::recording::EventBody;
use crate::session::tunnel::{self, TunnelRx, TunnelTx};
use crate::session::{CancelTarget, Session};
use crate::Gateway;

/// Upstream reads are sized to one tunnel message (the tunnel's unit is 64 KiB).
const READ_CHUNK: usize = 64 * 1024;

/// How a session ended, for the record and the close frame.
struct End {
    code: u16,
    reason: String,
    /// A PostgreSQL error to send the client first, when the stream allows it.
    client_error: Option<(String, String)>,
}

impl End {
    fn normal(reason: &str) -> End {
        End {
            code: tunnel::CLOSE_NORMAL,
            reason: reason.into(),
            client_error: None,
        }
    }
    fn failed(code: u16, sqlstate: &str, reason: String) -> End {
        End {
            code,
            reason: reason.clone(),
            client_error: Some((sqlstate.into(), reason)),
        }
    }
}

#[derive(Default)]
struct Counters {
    from_client: u64,
    to_client: u64,
}

pub async fn serve(gw: &Gateway, session: Session, mut tx: TunnelTx, mut rx: TunnelRx) {
    let mut counters = Counters::default();
    let tracker = Mutex::new(Tracker::default());
    let end = run(gw, &session, &mut tx, &mut rx, &tracker, &mut counters).await;
    if let Some((code, msg)) = &end.client_error {
        let mut out = BytesMut::new();
        codec::error_response(
            &mut out,
            "FATAL",
            code,
            &format!("custody: {msg}"),
            Some(&format!("audit id {}", session.audit_id)),
        );
        let _ = tx.send(out.freeze()).await;
    }
    tx.close(end.code, &end.reason).await;
    let (statements, rows) = tracker
        .lock()
        .map(|t| (t.statements, t.rows))
        .unwrap_or_default();
    let _ = session
        .finish(EventBody::SessionEnd {
            reason: end.reason,
            statements,
            rows,
            bytes_from_client: counters.from_client,
            bytes_to_client: counters.to_client,
        })
        .await;
}

async fn run(
    gw: &Gateway,
    session: &Session,
    tx: &mut TunnelTx,
    rx: &mut TunnelRx,
    tracker: &Mutex<Tracker>,
    counters: &mut Counters,
) -> End {
    let conn = &session.permit.connection;
    // Startup phase: answer SSL/GSSENC with 'N' (the tunnel is already TLS on
    // Cloud Run), serve cancels, and take the client's parameters.
    let mut pending = BytesMut::new();
    // Until the startup packet is in, a tunnel costs a socket and a task and
    // proves nothing: bound how long a client may take ([server] startup_timeout).
    let startup_timeout = gw.config.server.startup_timeout;
    let deadline = tokio::time::Instant::now() + startup_timeout;
    let (minor, params) = loop {
        match codec::decode_startup(&mut pending) {
            Ok(Some(Startup::Ssl | Startup::GssEnc)) => {
                if tx.send(Bytes::from_static(b"N")).await.is_err() {
                    return End::normal("client went away during startup");
                }
            }
            Ok(Some(Startup::Cancel { pid, key })) => return cancel(gw, session, pid, key).await,
            Ok(Some(Startup::Startup { minor, params })) => break (minor, params),
            Ok(None) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_elapsed) => {
                    return End::failed(
                        tunnel::CLOSE_POLICY,
                        "08P01",
                        format!(
                        "no startup packet within {startup_timeout:?} ([server] startup_timeout)"
                    ),
                    )
                }
                Ok(Ok(Some(b))) => {
                    counters.from_client += b.len() as u64;
                    if pending.len() + b.len() > codec::MAX_STARTUP {
                        return End::failed(
                            tunnel::CLOSE_PROTOCOL,
                            "08P01",
                            "startup packet too large".into(),
                        );
                    }
                    pending.extend_from_slice(&b);
                }
                Ok(Ok(None)) => return End::normal("client closed before startup"),
                Ok(Err(e)) => return End::failed(tunnel::CLOSE_PROTOCOL, "08P01", e.to_string()),
            },
            Err(e) => {
                return End::failed(
                    tunnel::CLOSE_PROTOCOL,
                    "08P01",
                    format!("invalid startup from client: {e}"),
                )
            }
        }
    };

    let password = match conn.password_ref() {
        Some(r) => match gw.secrets.get(&r).await {
            Ok(p) => p,
            Err(e) => {
                return End::failed(
                    tunnel::CLOSE_ERROR,
                    "08001",
                    format!("connection {}: {e}", conn.name()),
                )
            }
        },
        None => {
            return End::failed(
                tunnel::CLOSE_ERROR,
                "08001",
                format!("connection {} has no password reference", conn.name()),
            )
        }
    };
    let app = format!("custody/{}", session.audit_id);
    let up = match upstream::connect(conn, &password, &app, &params).await {
        Ok(up) => up,
        Err(e) => {
            let _ = session
                .tap()
                .record(EventBody::Error {
                    message: e.to_string(),
                })
                .await;
            return End::failed(tunnel::CLOSE_ERROR, e.sqlstate(), e.to_string());
        }
    };
    drop(password);
    let mut up = up;
    let engine = match gw.masking_for(conn, &session.permit.principal).await {
        Ok(e) => e,
        Err(e) => {
            return End::failed(
                tunnel::CLOSE_ERROR,
                "08001",
                format!("masking for {}: {e}", conn.name()),
            )
        }
    };
    let catalog = match &engine {
        Some(e) => match gw.catalog(conn, e, &mut up.stream, &mut up.leftover).await {
            Ok(c) => c,
            Err(e) => return End::failed(tunnel::CLOSE_ERROR, e.sqlstate(), e.to_string()),
        },
        None => Default::default(),
    };
    // Guardrails and masking read statements in the session's encoding; in
    // the client-only encodings a multibyte character can hide a quote, so
    // the two readers would disagree. Refused at startup (the client's own
    // parameter, or a role/database default the upstream reports).
    let guarded = gw.rails.contains_key(conn.name()) || engine.is_some();
    if guarded {
        let unsafe_enc = params
            .iter()
            .chain(up.params.iter())
            .find(|(k, v)| k.eq_ignore_ascii_case("client_encoding") && unsafe_encoding(v));
        if let Some((_, v)) = unsafe_enc {
            let why = format!("client_encoding {v} is refused on connection {}: guardrails or masking read statements, and in this encoding a multibyte character can hide a quote or backslash; use UTF8 (audit id {})", conn.name(), session.audit_id);
            let _ = session
                .tap()
                .record(EventBody::Error {
                    message: why.clone(),
                })
                .await;
            return End::failed(tunnel::CLOSE_POLICY, "0A000", why);
        }
    }
    let mask = engine.as_deref().map(|engine| MaskCtx {
        engine,
        catalog: &catalog,
    });

    let cancel_key = gw.cancels.register(CancelTarget {
        connection: conn.clone(),
        pid: up.pid,
        key: up.key,
        principal: session.permit.principal.member(),
        audit_id: session.audit_id.clone(),
    });
    let mut hello = BytesMut::new();
    if minor > 0 {
        let unsupported: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        codec::negotiate_protocol_version(&mut hello, &unsupported);
    }
    codec::auth_ok(&mut hello);
    for (k, v) in &up.params {
        codec::parameter_status(&mut hello, k, v);
    }
    codec::backend_key_data(&mut hello, cancel_key.pid, cancel_key.key);
    codec::ready_for_query(&mut hello, b'I');
    counters.to_client += hello.len() as u64;
    if tx.send(hello.freeze()).await.is_err() {
        return End::normal("client went away during startup");
    }

    let upstream::Upstream {
        stream, leftover, ..
    } = up;
    let (mut up_r, mut up_w) = tokio::io::split(stream);
    let max = gw.config.server.max_message_bytes;
    let mut client_scan = Scanner::new(max);
    let mut server_scan = Scanner::collect_limited(max);
    let Counters {
        from_client,
        to_client,
    } = counters;

    let rails = gw.rails.get(conn.name()).map(|r| r.as_ref());
    // Wakes the upstream side when a refusal is queued while it is idle.
    let refusals = tokio::sync::Notify::new();

    let comment = gw
        .config
        .telemetry
        .sqlcommenter
        .then(|| comment::sqlcommenter(session.traceparent.as_deref(), &session.audit_id));
    let client_to_upstream = async {
        let mut hook = ClientHook::new(tracker, rails, mask, &session.audit_id);
        hook.max_inspected = gw.config.server.max_inspected_statement_bytes;
        hook.comment = comment.as_deref();
        hook.approvable = crate::ingress::reviews::approvable(conn);
        if let Some(r) = &session.approval {
            hook.approved.review_id = r.request.id.clone();
            hook.approved.review_audit_id = r.request.audit_id.clone();
            hook.approved.window = r.request.window_secs.is_some();
            hook.approved
                .hashes
                .insert(r.request.statement_sha256.clone());
        }
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        if !pending.is_empty() {
            client_scan.feed(&pending, &mut hook, &mut out)?;
        }
        loop {
            // A held statement's review is stored before anything goes
            // upstream: the refusal naming it comes back from there and
            // must not reach the client before the review exists.
            if !out.is_empty() && hook.holds.is_empty() {
                up_w.write_all(&out).await?;
                out.clear();
            }
            for mut ev in hook.events.drain(..) {
                hooks::scrub(mask, &mut ev);
                session
                    .tap()
                    .record(ev)
                    .await
                    .map_err(|e| RelayEnd::Recording(e.to_string()))?;
            }
            for h in std::mem::take(&mut hook.holds) {
                let shown = match mask {
                    Some(m) => super::masking::sql(m.engine, &h.statement, &mut Default::default()),
                    None => h.statement.clone(),
                };
                let stored = crate::ingress::reviews::store_hold(
                    gw,
                    session,
                    &h.review_id,
                    &h.statement,
                    &shown,
                    &h.rule,
                )
                .await;
                if let Err(e) = stored {
                    tracing::error!(target: "custody::audit", audit_id = %session.audit_id, review_id = %h.review_id, "review could not be stored: {}", e.reason);
                }
            }
            if !out.is_empty() {
                up_w.write_all(&out).await?;
                out.clear();
            }
            if std::mem::take(&mut hook.blocked) {
                refusals.notify_one();
            }
            if hook.terminated {
                return Ok::<_, RelayEnd>(End::normal("client terminated the session"));
            }
            let chunk = match rx.recv().await {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(End::normal("client closed the tunnel")),
                Err(e) => return Err(RelayEnd::Client(e.to_string())),
            };
            *from_client += chunk.len() as u64;
            client_scan.feed(&chunk, &mut hook, &mut out)?;
        }
    };

    let upstream_to_client = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(&leftover);
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        let mut done = Vec::new();
        let every = gw.config.server.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut drain_later = false;
        loop {
            if buf.is_empty() {
                buf.reserve(READ_CHUNK);
                tokio::select! {
                    n = up_r.read_buf(&mut buf) => {
                        if n? == 0 {
                            return Ok::<_, RelayEnd>(End::normal("upstream closed the connection"));
                        }
                    }
                    _ = ping.tick() => {
                        tx.ping().await.map_err(|e| RelayEnd::Client(e.to_string()))?;
                        continue;
                    }
                    _ = refusals.notified() => {
                        // Mid-frame, the refusal waits for the frame's end.
                        drain_later = !server_scan.at_boundary();
                        if !drain_later {
                            hooks::drain_blocked(tracker, &mut out).map_err(RelayEnd::Upstream)?;
                            if !out.is_empty() {
                                *to_client += out.len() as u64;
                                tx.send(out.split().freeze()).await.map_err(|e| RelayEnd::Client(e.to_string()))?;
                            }
                        }
                        continue;
                    }
                }
            }
            let mut hook = ServerHook {
                tracker,
                done: &mut done,
                mask,
                guarded,
            };
            server_scan
                .feed(&buf, &mut hook, &mut out)
                .map_err(RelayEnd::Upstream)?;
            buf.clear();
            // A refusal that arrived mid-frame goes out once that frame has
            // streamed through (checked only then: no lock per read).
            if drain_later && server_scan.at_boundary() {
                drain_later = false;
                hooks::drain_blocked(tracker, &mut out).map_err(RelayEnd::Upstream)?;
            }
            *to_client += out.len() as u64;
            tx.send(out.split().freeze())
                .await
                .map_err(|e| RelayEnd::Client(e.to_string()))?;
            for mut ev in done.drain(..) {
                hooks::scrub(mask, &mut ev);
                session
                    .tap()
                    .record(ev)
                    .await
                    .map_err(|e| RelayEnd::Recording(e.to_string()))?;
            }
        }
    };

    let mut shutdown = gw.shutdown.subscribe();
    // A session opened under a delegation or a time-boxed approval ends when it does.
    let window_end = session.approval.as_ref().and_then(|r| {
        let w = r.request.window_secs?;
        Some(r.decision.as_ref()?.at + w as i64)
    });
    let expiry = match (session.permit.chain.exp, window_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let expired = async {
        match expiry {
            Some(exp) => {
                let left = exp - chrono::Utc::now().timestamp();
                tokio::time::sleep(std::time::Duration::from_secs(left.max(0) as u64)).await
            }
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = shutdown.wait_for(|down| *down) => Err(RelayEnd::Shutdown),
        _ = expired => Err(RelayEnd::Expired),
        why = gw.revocations.until_revoked(gw.recorder.store.as_ref(), &session.permit.chain) => Err(RelayEnd::Revoked(why)),
        r = client_to_upstream => r,
        r = upstream_to_client => r,
        why = session.tap().failure() => Err(RelayEnd::Recording(why)),
    };
    drop(cancel_key);
    let unanswered = tracker
        .lock()
        .map(|mut t| t.drain_unanswered())
        .unwrap_or_default();
    for mut ev in unanswered {
        hooks::scrub(mask, &mut ev);
        let _ = session.tap().record(ev).await;
    }
    match result {
        Ok(end) => end,
        Err(RelayEnd::Client(why)) => End {
            code: tunnel::CLOSE_PROTOCOL,
            reason: format!("client tunnel error: {why}"),
            client_error: None,
        },
        Err(RelayEnd::Shutdown) => End::failed(
            tunnel::CLOSE_GOING_AWAY,
            "57P01",
            "the gateway is shutting down (the instance is being stopped); reconnect to continue"
                .into(),
        )
        .only_if(server_scan.at_boundary()),
        Err(RelayEnd::ClientProtocol(e)) => End::failed(
            tunnel::CLOSE_PROTOCOL,
            e.sqlstate(),
            format!("malformed message from client: {e}"),
        )
        .only_if(server_scan.at_boundary()),
        Err(RelayEnd::Upstream(e)) => End::failed(
            tunnel::CLOSE_ERROR,
            "08006",
            format!("upstream connection lost: {e}"),
        )
        .only_if(server_scan.at_boundary()),
        Err(RelayEnd::Expired) => End::failed(
            tunnel::CLOSE_GOING_AWAY,
            "57P01",
            "the delegation or approval window this session runs under has expired; ask for a new one (custody delegate, or a new review) and reconnect".into(),
        )
        .only_if(server_scan.at_boundary()),
        Err(RelayEnd::Revoked(why)) => End::failed(tunnel::CLOSE_POLICY, "57P01", why)
            .only_if(server_scan.at_boundary()),
        Err(RelayEnd::Recording(why)) => End::failed(
            tunnel::CLOSE_ERROR,
            "58000",
            format!("session ended because recording failed: {why}"),
        )
        .only_if(server_scan.at_boundary()),
    }
}

impl End {
    /// Drops the client-facing error when the stream is mid-frame, where an
    /// injected frame would corrupt what the client sees; the close says why.
    fn only_if(mut self, at_boundary: bool) -> End {
        if !at_boundary {
            self.client_error = None;
        }
        self
    }
}

enum RelayEnd {
    Shutdown,
    Expired,
    Revoked(String),
    Client(String),
    ClientProtocol(PgError),
    Upstream(PgError),
    Recording(String),
}

impl From<PgError> for RelayEnd {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Io(_) => RelayEnd::Upstream(e),
            other => RelayEnd::ClientProtocol(other),
        }
    }
}

impl From<std::io::Error> for RelayEnd {
    fn from(e: std::io::Error) -> Self {
        RelayEnd::Upstream(PgError::Io(e))
    }
}

/// A CancelRequest arrives on its own tunnel; forward it if the key is ours
/// and the caller is the principal who owns the session being cancelled.
async fn cancel(gw: &Gateway, session: &Session, pid: i32, key: i32) -> End {
    let me = session.permit.principal.member();
    let outcome = match gw.cancels.lookup(pid, key) {
        None => "refused: unknown cancel key (the session ended or lives on another instance)"
            .to_string(),
        Some(t) if t.principal != me || t.connection.name() != session.permit.connection.name() => {
            "refused: the cancel key belongs to another principal or connection".to_string()
        }
        Some(t) => match upstream::cancel(&t.connection, t.pid, t.key).await {
            Ok(()) => format!("forwarded to the upstream of session {}", t.audit_id),
            Err(e) => format!("failed: {e}"),
        },
    };
    let _ = session
        .tap()
        .record(EventBody::Cancel {
            outcome: outcome.clone(),
        })
        .await;
    End::normal(&format!("cancel request {outcome}"))
}
