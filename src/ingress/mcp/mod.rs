//! `/mcp`: the Model Context Protocol over Streamable HTTP (rmcp), so an
//! agent reaches connections through tools whose every call is admitted,
//! decided, masked and recorded as `POST /v1/exec` is (`tools`).
//!
//! Every request is authenticated here before rmcp sees it: a session id
//! names the agent's `initialize`, never who it is. Clients of the
//! 2026-07-28 revision are served statelessly; older ones get rmcp's legacy
//! sessions, whose `initialize` is kept in the recording store so that any
//! instance can serve the session's next request (`SessionsInStore`).

mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use super::gateway::Gateway;
use super::{admit, new_audit_id};
use crate::recording::store::{check_id, ObjectStore};
use crate::recording::RecordError;
use crate::session::Origin;

pub use tools::Tools;

/// The most a JSON-RPC message may hold, as for `POST /v1/exec` (axum's
/// default body limit).
const MAX_BODY: usize = 2 * 1024 * 1024;

pub fn routes(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut shutdown = gw.shutdown.subscribe();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        stop.cancel();
    });
    // Hosts and origins are not checked: no browser can attach the bearer
    // token every request needs, so DNS rebinding gains nothing.
    let mut config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_BODY)
        .with_cancellation_token(cancel);
    config.session_store = Some(Arc::new(SessionsInStore(gw.recorder.store.clone())));
    let factory_gw = gw.clone();
    let service = StreamableHttpService::new(
        move || Ok(Tools::new(factory_gw.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(gw, authenticated))
}

/// 401 with a `WWW-Authenticate` challenge unless the request carries a
/// valid ID token; the tools then admit the caller in full (delegation,
/// revocation, authorization) for each call.
async fn authenticated(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let audit_id = new_audit_id();
    let client = Origin::of(peer, request.headers(), &gw.trusted_proxies)
        .client
        .to_string();
    match admit::authenticate(&gw, request.headers(), &audit_id, &client).await {
        Ok(_) => next.run(request).await,
        Err(e) => refused(e),
    }
}

/// The 401: a JSON-RPC error body, which MCP clients show their user (a
/// bare status reads as "Server returned an error response"), and the
/// challenge RFC 6750 asks for.
fn refused(e: super::ApiError) -> Response {
    let challenge = format!(
        "Bearer realm=\"custody\", error=\"invalid_token\", error_description=\"{}\"",
        e.reason.replace(['"', '\\'], "'")
    );
    let challenge = HeaderValue::from_str(&challenge)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"custody\""));
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32001,
            "message": format!("{}: {} (audit id {})", e.error, e.reason, e.audit_id),
            "data": {"error": e.error, "reason": e.reason, "audit_id": e.audit_id},
        },
    });
    let resp = (
        e.status,
        [(header::WWW_AUTHENTICATE, challenge)],
        Json(body),
    )
        .into_response();
    super::with_audit(&e.audit_id, resp)
}

/// Legacy MCP sessions' `initialize` (the agent's name, version and
/// capabilities; nothing that proves identity), in the write-once store:
/// `_mcp/sessions/ID.json`, and `ID.closed` once the client ends it.
struct SessionsInStore(Arc<dyn ObjectStore>);

fn session_key(id: &str, what: &str) -> Result<String, SessionStoreError> {
    // The id comes from the client's `Mcp-Session-Id` header.
    check_id(id)?;
    Ok(format!("_mcp/sessions/{id}.{what}"))
}

#[async_trait::async_trait]
impl SessionStore for SessionsInStore {
    async fn load(&self, id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Ok(key) = session_key(id, "json") else {
            return Ok(None);
        };
        match self.0.get(&session_key(id, "closed")?).await {
            Ok(_) => return Ok(None),
            Err(RecordError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match self.0.get(&key).await {
            Ok(data) => Ok(Some(serde_json::from_slice(&data)?)),
            Err(RecordError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn store(&self, id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let data = Bytes::from(serde_json::to_vec(state)?);
        match self.0.create(&session_key(id, "json")?, data).await {
            Ok(()) | Err(RecordError::Exists(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), SessionStoreError> {
        match self
            .0
            .create(&session_key(id, "closed")?, Bytes::new())
            .await
        {
            Ok(()) | Err(RecordError::Exists(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
