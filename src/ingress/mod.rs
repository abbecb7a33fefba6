//! The HTTP surface: health, connections, tunnel and exec. Every `/v1`
//! answer carries `x-custody-audit-id`; every refusal is JSON with a reason.

pub mod forwarded;
pub mod listen;
pub mod reviews;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::identity::delegation::{self, Chain, DelegationError};
use crate::identity::{bearer, Principal};
use crate::ingress::forwarded::Origin;

use crate::policy;
use crate::policy::guardrails::Verdict;
use crate::protocol::postgres::exec::{self, ExecOutcome};
use crate::protocol::postgres::relay;
use crate::recording::{EventBody, Recording};
use crate::session::tunnel;
use crate::session::Session;
use crate::{telemetry, Gateway};
use tracing::Instrument;

pub use crate::wire::{AUDIT_HEADER, DELEGATION_HEADER};

pub use crate::wire::csv::to_csv;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/connections", get(connections))
        .route("/v1/tunnel/{connection}", get(tunnel_handler))
        .route("/v1/exec/{connection}", post(exec_handler))
        .route("/v1/token", post(crate::ingress::token::token))
        .route("/v1/reviews", get(crate::ingress::reviews::list))
        .route("/v1/reviews/{id}", get(crate::ingress::reviews::show))
        .route(
            "/v1/reviews/{id}/{action}",
            post(crate::ingress::reviews::decide),
        )
        .route("/v1/revocations", post(crate::ingress::token::revoke))
        .route("/.well-known/jwks.json", get(crate::ingress::token::jwks))
        .with_state(gw)
}

/// A refusal or failure, rendered once for every endpoint.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    pub(crate) reason: String,
    audit_id: String,
    extra: serde_json::Value,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        reason: impl Into<String>,
        audit_id: &str,
    ) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
            audit_id: audit_id.to_string(),
            extra: json!({}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"error": self.error, "reason": self.reason, "audit_id": self.audit_id});
        if let (Some(b), Some(extra)) = (body.as_object_mut(), self.extra.as_object()) {
            b.extend(extra.clone());
        }
        with_audit(&self.audit_id, (self.status, Json(body)).into_response())
    }
}

fn with_audit(audit_id: &str, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(audit_id) {
        resp.headers_mut().insert(AUDIT_HEADER, v);
    }
    resp
}

pub fn new_audit_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The TCP peer and the client behind it (see [`Origin::of`]).
fn origin(gw: &Gateway, headers: &HeaderMap, peer: SocketAddr) -> Origin {
    Origin::of(peer, headers, &gw.trusted_proxies)
}

/// The caller and the chain it acts under: its own OIDC identity, plus a
/// verified delegation from `X-Custody-Delegation` when present. Revoked
/// principals anywhere in the chain are refused.
pub(crate) async fn identify(
    gw: &Gateway,
    headers: &HeaderMap,
    audit_id: &str,
    origin: &Origin,
    connection: &str,
) -> Result<(Principal, Chain), ApiError> {
    let client = origin.client.to_string();
    let client = client.as_str();
    let principal = authenticate(gw, headers, audit_id, client).await?;
    let token = headers
        .get(DELEGATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.trim().is_empty());
    let refuse = |error: &'static str, reason: String| {
        tracing::warn!(target: "custody::audit", audit_id, client, principal = %principal.member(), connection, outcome = error, reason = %reason, "request refused");
        let (rec, id, who, conn, from, why) = (
            gw.recorder.clone(),
            audit_id.to_string(),
            principal.member(),
            connection.to_string(),
            origin.clone(),
            reason.clone(),
        );
        tokio::spawn(async move { record_refusal(rec, id, who, conn, from, why).await });
        ApiError::new(StatusCode::FORBIDDEN, error, reason, audit_id)
    };
    let claims = match token {
        None => None,
        Some(t) => {
            let Some(keys) = &gw.delegation else {
                return Err(refuse(
                    "delegation",
                    DelegationError::NotConfigured.to_string(),
                ));
            };
            let now = chrono::Utc::now().timestamp();
            Some(
                keys.verify(t, now)
                    .map_err(|e| refuse("delegation", e.to_string()))?,
            )
        }
    };
    let chain = delegation::chain_for(&principal, claims)
        .map_err(|e| refuse("delegation", e.to_string()))?;
    let revoked = gw
        .revocations
        .first_revoked(gw.recorder.store.as_ref(), &chain)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocations_unavailable",
                format!("revocations cannot be read, so nothing runs: {e}"),
                audit_id,
            )
        })?;
    if let Some(m) = revoked {
        return Err(refuse(
            "revoked",
            format!("{m} is revoked, so the chain {} is refused", chain.render()),
        ));
    }
    Ok((principal, chain))
}

pub(crate) async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    audit_id: &str,
    client: &str,
) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let result = match bearer(auth) {
        Ok(token) => gw.verifier.verify(token).await,
        Err(e) => Err(e),
    };
    result.map_err(|e| {
        tracing::warn!(target: "custody::audit", audit_id, client, outcome = "unauthenticated", reason = %e, "request refused");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string(), audit_id)
    })
}

/// Authenticates, authorizes and starts the recording: the only way to a Session.
/// The caller's trace id from W3C `traceparent` or Google's
/// `X-Cloud-Trace-Context`, validated; None when absent or malformed.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
    };
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if let [version, trace, span, flags, ..] = parts.as_slice() {
            if version.len() == 2
                && *version != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && flags.len() == 2
            {
                return Some(trace.to_ascii_lowercase());
            }
        }
    }
    let cloud = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())?;
    let trace = cloud.split('/').next()?;
    hex(trace, 32).then(|| trace.to_ascii_lowercase())
}

#[allow(clippy::too_many_arguments)]
async fn admit(
    gw: &Gateway,
    (principal, chain): (Principal, Chain),
    origin: &Origin,
    trace: Option<String>,
    span: &tracing::Span,
    name: &str,
    mode: &str,
    audit_id: &str,
) -> Result<Session, ApiError> {
    let Some(conn) = gw.connection(name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            format!("no connection named {name:?}; `GET /v1/connections` lists yours"),
            audit_id,
        ));
    };
    let now = chrono::Utc::now().timestamp();
    let permit = policy::authorize(&principal, &chain, conn, now).map_err(|e| {
        let status = StatusCode::FORBIDDEN;
        let client = origin.client;
        tracing::warn!(target: "custody::audit", audit_id, client = %client, peer = %origin.peer, principal = %principal.member(), connection = name, outcome = "forbidden", reason = %e, "request refused");
        let reason = e.to_string();
        let (store, id, who, conn, from) = (gw.recorder.clone(), audit_id.to_string(), principal.member(), name.to_string(), origin.clone());
        tokio::spawn(async move { record_refusal(store, id, who, conn, from, reason).await });
        ApiError::new(status, "forbidden", e.to_string(), audit_id)
    })?;
    Session::start(&gw.recorder, audit_id.to_string(), permit, mode, origin, trace, span.clone())
        .await
        .map_err(|e| {
            tracing::error!(target: "custody::audit", audit_id, error = %e, "session refused: cannot record");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recording_unavailable",
                format!("the session cannot be recorded, so it does not run: {e}"),
                audit_id,
            )
        })
}

/// Policy refusals leave a record in the store too, replayable by audit id.
pub(crate) async fn record_refusal(
    recorder: Arc<crate::recording::Recorder>,
    audit_id: String,
    principal: String,
    connection: String,
    origin: Origin,
    reason: String,
) {
    let first = EventBody::SessionStart {
        audit_id: audit_id.clone(),
        principal,
        groups: Vec::new(),
        connection,
        mode: "refused".into(),
        client_addr: Some(origin.client.to_string()),
        peer: Some(origin.peer.to_string()),
        granted_by: None,
        trace_id: None,
        chain: Vec::new(),
        root_audit_id: None,
    };
    let done = match Recording::start(&recorder, &audit_id, first, None).await {
        Ok(rec) => rec.finish(EventBody::Refused { reason }).await,
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        tracing::error!(target: "custody::audit", audit_id, error = %e, "refusal could not be recorded");
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let mut keys = gw.verifier.ready().await;
    if !keys {
        keys = gw.verifier.warm().await.is_ok();
    }
    let store = gw.recorder.probe().await;
    let ok = keys && store.is_ok();
    let spans = telemetry::stats().map(|s| {
        use std::sync::atomic::Ordering::Relaxed;
        json!({"exported": s.exported.load(Relaxed), "failed": s.failed.load(Relaxed), "dropped": s.dropped.load(Relaxed)})
    });
    let body = json!({
        "spans": spans,
        "ready": ok,
        "config": "loaded",
        "issuer_keys": if keys { "fetched" } else { "not fetched" },
        "recording_store": match &store { Ok(()) => "writable".to_string(), Err(e) => e.to_string() },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn connections(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let client = origin(&gw, &headers, peer).client.to_string();
    let principal = match authenticate(&gw, &headers, &audit_id, &client).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let list: Vec<_> = gw
        .connections
        .iter()
        .filter(|c| policy::may_use(&principal, c).is_some())
        .map(|c| json!({"name": c.name(), "kind": c.kind, "database": c.database}))
        .collect();
    with_audit(
        &audit_id,
        Json(json!({"principal": principal.member(), "connections": list})).into_response(),
    )
}

async fn tunnel_handler(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let audit_id = new_audit_id();
    let span = telemetry::session_span(&headers, &audit_id, &name, "tunnel");
    let origin = origin(&gw, &headers, peer);
    // Authenticate before looking at the upgrade, so a bad token is a 401 whatever else is wrong.
    let who = match identify(&gw, &headers, &audit_id, &origin, &name)
        .instrument(span.clone())
        .await
    {
        Ok(p) => p,
        Err(e) => return refused(&span, e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_a_websocket",
                format!("{e}; this endpoint is a WebSocket tunnel: use `custody connect`"),
                &audit_id,
            )
            .into_response()
        }
    };
    let trace = telemetry::span_trace_id(&span).or_else(|| trace_id(&headers));
    let mut session = match admit(&gw, who, &origin, trace, &span, &name, "tunnel", &audit_id)
        .instrument(span.clone())
        .await
    {
        Ok(s) => s,
        Err(e) => return refused(&span, e),
    };
    session.traceparent = telemetry::traceparent(&span, &headers);
    if let Some(id) = headers
        .get(reviews::REVIEW_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        match reviews::approve_session(&gw, &session, id).await {
            Ok(r) => session.approval = Some(r),
            Err(e) => {
                let _ = session.finish(end_event("approval not usable", 0, 0)).await;
                return refused(&span, e);
            }
        }
    }
    let resp = ws
        .max_message_size(gw.config.server.max_message_bytes.max(1 << 20))
        .on_upgrade(move |socket| async move {
            let _live = gw.live.enter();
            let (tx, rx) = tunnel::split(socket);
            match session.permit.connection.kind {
                crate::config::Kind::Ssh => {
                    crate::protocol::ssh::serve::serve(gw.clone(), session, tx, rx)
                        .instrument(span)
                        .await
                }
                crate::config::Kind::Postgres => {
                    relay::serve(&gw, session, tx, rx).instrument(span).await
                }
            }
        });
    with_audit(&audit_id, resp)
}

#[derive(serde::Deserialize)]
struct ExecRequest {
    input: String,
}

async fn exec_handler(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let audit_id = new_audit_id();
    let span = telemetry::session_span(&headers, &audit_id, &name, "exec");
    let done = exec_inner(&gw, &name, peer, &headers, &body, &audit_id, &span)
        .instrument(span.clone())
        .await;
    match done {
        Ok(r) => with_audit(&audit_id, r),
        Err(e) => refused(&span, e),
    }
}

async fn exec_inner(
    gw: &Gateway,
    name: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    audit_id: &str,
    span: &tracing::Span,
) -> Result<Response, ApiError> {
    let origin = origin(gw, headers, peer);
    let who = identify(gw, headers, audit_id, &origin, name).await?;
    let trace = telemetry::span_trace_id(span).or_else(|| trace_id(headers));
    let mut session = admit(gw, who, &origin, trace, span, name, "exec", audit_id).await?;
    session.traceparent = telemetry::traceparent(span, headers);
    let req: ExecRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("body must be JSON {{\"input\": \"SQL\"}}: {e}");
            let _ = session.finish(end_event(&reason, 0, 0)).await;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                reason,
                audit_id,
            ));
        }
    };
    let conn = session.permit.connection.clone();
    if conn.kind == crate::config::Kind::Ssh {
        return crate::protocol::ssh::exec::respond(gw, session, headers, &req.input).await;
    }
    // What is checked is exactly what the upstream will get.
    let input = req.input.replace('\0', "");
    if let Some(rails) = gw.rails.get(conn.name()) {
        let held = match rails.check(&input) {
            Verdict::NeedsApproval { rule } if reviews::approvable(&conn) => Some(rule),
            _ => None,
        };
        let review_id = headers
            .get(reviews::REVIEW_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        match (&held, review_id) {
            (Some(_), Some(id)) => {
                if let Err(e) = reviews::use_approval(gw, &session, id, &input).await {
                    let _ = session.finish(end_event("approval not usable", 0, 0)).await;
                    return Err(e);
                }
            }
            (Some(rule), None) => {
                let shown = match gw.masking_for(&conn, &session.permit.principal).await {
                    Ok(Some(engine)) => crate::protocol::postgres::masking::sql(
                        &engine,
                        &input,
                        &mut Default::default(),
                    ),
                    _ => input.clone(),
                };
                let resp = reviews::hold(gw, &session, &input, &shown, rule).await;
                let _ = session.finish(end_event("held for approval", 0, 0)).await;
                return resp;
            }
            _ => {}
        }
        let refused = if held.is_some() {
            None
        } else {
            crate::protocol::postgres::hooks::refusal(rails, &input, "exec", audit_id)
        };
        if let Some((mut event, message)) = refused {
            if let Ok(Some(engine)) = gw.masking_for(&conn, &session.permit.principal).await {
                let catalog = Default::default();
                let ctx = crate::protocol::postgres::hooks::MaskCtx {
                    engine: &engine,
                    catalog: &catalog,
                };
                crate::protocol::postgres::hooks::scrub(Some(ctx), &mut event);
            }
            let _ = session.tap().record(event).await;
            let _ = session
                .finish(end_event("refused by guardrail", 0, 0))
                .await;
            let mut e = ApiError::new(StatusCode::FORBIDDEN, "guardrail", message, audit_id);
            e.extra = json!({"sqlstate": "42501"});
            return Err(e);
        }
    }
    let password = match conn.password_ref() {
        Some(r) => gw.secrets.get(&r).await.map_err(|e| e.to_string()),
        None => Err(format!(
            "connection {} has no password reference",
            conn.name()
        )),
    };
    let outcome = match password {
        Ok(pw) => exec::run(gw, &session, &pw, &input)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    let result = match outcome {
        Ok(ExecOutcome::Done(r)) => {
            let rows = r.rows.len() as u64;
            if let Err(e) = session.finish(end_event("completed", 1, rows)).await {
                return Err(recording_failed(&e.to_string(), audit_id));
            }
            if csv {
                Ok((
                    [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                    to_csv(&r.columns, &r.rows),
                )
                    .into_response())
            } else {
                Ok(Json(json!({"audit_id": audit_id, "columns": r.columns, "rows": r.rows, "command_tag": r.command_tag, "truncated": r.truncated})).into_response())
            }
        }
        Ok(ExecOutcome::QueryError { sqlstate, message }) => {
            let _ = session.finish(end_event("query failed", 1, 0)).await;
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query_failed",
                message,
                audit_id,
            );
            e.extra = json!({"sqlstate": sqlstate});
            Err(e)
        }
        Err(why) if why.starts_with("the session cannot be recorded") => {
            let _ = session.finish(end_event("recording failed", 0, 0)).await;
            Err(recording_failed(&why, audit_id))
        }
        Err(why) => {
            let _ = session
                .tap()
                .record(EventBody::Error {
                    message: why.clone(),
                })
                .await;
            let _ = session.finish(end_event("upstream failed", 0, 0)).await;
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                why,
                audit_id,
            ))
        }
    };
    result
}

/// A refused request: its span says why, the caller gets the JSON reason.
fn refused(span: &tracing::Span, e: ApiError) -> Response {
    span.record("custody.outcome", e.error);
    span.record("otel.status_code", "ERROR");
    e.into_response()
}

pub(crate) fn recording_failed(why: &str, audit_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "recording_unavailable",
        format!("the result is withheld because the session could not be recorded: {why}"),
        audit_id,
    )
}

pub(crate) fn end_event(reason: &str, statements: u64, rows: u64) -> EventBody {
    EventBody::SessionEnd {
        reason: reason.into(),
        statements,
        rows,
        bytes_from_client: 0,
        bytes_to_client: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_from_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id(&h), None, "all-zero trace ids are invalid");
        h.insert(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1".parse().unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("105445aa7843bc8bf206b12000100000")
        );
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
