//! `/readyz` and `GET /v1/connections`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::gateway::Gateway;
use super::{admit, new_audit_id, with_audit};
use crate::session::Origin;
use crate::{policy, telemetry};

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
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

pub async fn connections(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let client = Origin::of(peer, &headers, &gw.trusted_proxies)
        .client
        .to_string();
    let principal = match admit::authenticate(&gw, &headers, &audit_id, &client).await {
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
