//! The one admission every way in goes through: authenticate the caller,
//! resolve its chain (delegation, revocation), authorize it for the
//! connection, mint the audit id's recording, and build the context a
//! protocol runs the session with.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};

use super::gateway::Gateway;
use super::ApiError;
use crate::identity::delegation::{self, Chain, DelegationError};
use crate::identity::{bearer, Principal};
use crate::policy;
use crate::recording::{EventBody, Recorder, Recording};
use crate::session::{Origin, Session};
use crate::telemetry;
use crate::wire::{DELEGATION_HEADER, REVIEW_HEADER};

/// One request asking for a session.
pub(crate) struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
    pub connection: &'a str,
    /// "tunnel" or "exec", as recorded.
    pub mode: &'static str,
    pub audit_id: &'a str,
    pub span: &'a tracing::Span,
}

impl Request<'_> {
    /// The TCP peer and the client behind it (see [`Origin::of`]).
    pub fn origin(&self, gw: &Gateway) -> Origin {
        Origin::of(self.peer, self.headers, &gw.trusted_proxies)
    }

    /// The approved review the request names (CUSTODY_REVIEW), if any.
    pub fn review(&self) -> Option<&str> {
        header_text(self.headers, REVIEW_HEADER)
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Authorizes the identified caller and starts the recording: the only way
/// to a Session. A session that cannot be recorded does not run.
pub(crate) async fn session(
    gw: &Gateway,
    req: &Request<'_>,
    (principal, chain): (Principal, Chain),
) -> Result<Session, ApiError> {
    let (name, audit_id) = (req.connection, req.audit_id);
    let origin = req.origin(gw);
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
        tracing::warn!(target: "custody::audit", audit_id, client = %origin.client, peer = %origin.peer, principal = %principal.member(), connection = name, outcome = "forbidden", reason = %e, "request refused");
        spawn_refusal(gw, audit_id, &principal, name, &origin, e.to_string());
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string(), audit_id)
    })?;
    let trace = telemetry::span_trace_id(req.span).or_else(|| trace_id(req.headers));
    let started = Session::start(
        &gw.recorder,
        audit_id.to_string(),
        permit,
        req.mode,
        &origin,
        trace,
        req.span.clone(),
    )
    .await;
    let mut session = started.map_err(|e| {
        tracing::error!(target: "custody::audit", audit_id, error = %e, "session refused: cannot record");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recording_unavailable",
            format!("the session cannot be recorded, so it does not run: {e}"),
            audit_id,
        )
    })?;
    session.traceparent = telemetry::traceparent(req.span, req.headers);
    Ok(session)
}

/// The caller and the chain it acts under: its own OIDC identity, plus a
/// verified delegation from `X-Custody-Delegation` when present. Revoked
/// principals anywhere in the chain are refused.
pub(crate) async fn identify(
    gw: &Gateway,
    req: &Request<'_>,
) -> Result<(Principal, Chain), ApiError> {
    let (audit_id, connection) = (req.audit_id, req.connection);
    let origin = req.origin(gw);
    let client = origin.client.to_string();
    let principal = authenticate(gw, req.headers, audit_id, &client).await?;
    let refuse = |error: &'static str, reason: String| {
        tracing::warn!(target: "custody::audit", audit_id, client, principal = %principal.member(), connection, outcome = error, reason = %reason, "request refused");
        spawn_refusal(
            gw,
            audit_id,
            &principal,
            connection,
            &origin,
            reason.clone(),
        );
        ApiError::new(StatusCode::FORBIDDEN, error, reason, audit_id)
    };
    let claims = match header_text(req.headers, DELEGATION_HEADER) {
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
    let result = match (bearer(auth), iap_assertion(headers)) {
        (Ok(token), _) => gw.verifier.verify(token).await,
        // Behind Identity-Aware Proxy a browser sends no bearer token: IAP
        // vouches for the user in its own signed header, a JWT that verifies
        // only when its issuer (https://cloud.google.com/iap) is configured.
        (Err(_), Some(token)) => gw.verifier.verify(token).await,
        (Err(e), None) => Err(e),
    };
    result.map_err(|e| {
        tracing::warn!(target: "custody::audit", audit_id, client, outcome = "unauthenticated", reason = %e, "request refused");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string(), audit_id)
    })
}

/// IAP's signed assertion (`x-goog-iap-jwt-assertion`), when present.
fn iap_assertion(headers: &HeaderMap) -> Option<&str> {
    header_text(headers, "x-goog-iap-jwt-assertion")
}

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

fn spawn_refusal(
    gw: &Gateway,
    audit_id: &str,
    principal: &Principal,
    connection: &str,
    origin: &Origin,
    reason: String,
) {
    let (rec, id, conn, from) = (
        gw.recorder.clone(),
        audit_id.to_string(),
        connection.to_string(),
        origin.clone(),
    );
    let principal = (principal.member(), principal.id());
    tokio::spawn(async move { record_refusal(rec, id, principal, conn, from, reason).await });
}

/// A request refused for what it asked (bad arguments), after its caller
/// was identified: logged and recorded like a policy refusal, before the
/// caller hears of it.
pub(crate) async fn record_bad_request(
    gw: &Gateway,
    req: &Request<'_>,
    who: &Principal,
    reason: &str,
) {
    let origin = req.origin(gw);
    tracing::warn!(target: "custody::audit", audit_id = req.audit_id, client = %origin.client, principal = %who.member(), connection = req.connection, outcome = "bad_request", reason = ?reason, "request refused");
    let principal = (who.member(), who.id());
    record_refusal(
        gw.recorder.clone(),
        req.audit_id.to_string(),
        principal,
        req.connection.to_string(),
        origin,
        reason.to_string(),
    )
    .await;
}

/// Policy refusals leave a record in the store too, replayable by audit id.
pub(crate) async fn record_refusal(
    recorder: Arc<Recorder>,
    audit_id: String,
    (principal, principal_id): (String, String),
    connection: String,
    origin: Origin,
    reason: String,
) {
    let first = EventBody::SessionStart {
        audit_id: audit_id.clone(),
        principal,
        principal_id: Some(principal_id),
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

/// Writes a small audit record (start, the event, end) for a control action.
pub(crate) async fn audit(
    gw: &Gateway,
    audit_id: &str,
    who: &Principal,
    client: &str,
    mode: &str,
    event: EventBody,
) -> Result<(), ApiError> {
    let first = EventBody::SessionStart {
        audit_id: audit_id.to_string(),
        principal: who.member(),
        principal_id: Some(who.id()),
        groups: who.groups.clone(),
        connection: "-".into(),
        mode: mode.into(),
        client_addr: Some(client.to_string()),
        // Control endpoints name the TCP peer as the client.
        peer: Some(client.to_string()),
        granted_by: None,
        trace_id: None,
        chain: Vec::new(),
        root_audit_id: None,
    };
    let unavailable = |e: crate::recording::RecordError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recording_unavailable",
            format!("the action cannot be recorded, so it is not taken: {e}"),
            audit_id,
        )
    };
    let rec = Recording::start(&gw.recorder, audit_id, first, None)
        .await
        .map_err(unavailable)?;
    rec.tap.record(event).await.map_err(unavailable)?;
    rec.finish(EventBody::SessionEnd {
        reason: "completed".into(),
        statements: 0,
        rows: 0,
        bytes_from_client: 0,
        bytes_to_client: 0,
    })
    .await
    .map_err(unavailable)
}

/// Ends a session that never ran (a body or an approval it could not use).
pub(crate) async fn end_unrun(session: Session, reason: &str) {
    let _ = session.finish(end_event(reason, 0, 0)).await;
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
