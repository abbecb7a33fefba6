//! `/mcp`: the Model Context Protocol over Streamable HTTP (rmcp), so an
//! agent reaches connections through tools whose every call is admitted,
//! decided, masked and recorded as `POST /v1/exec` is (`tools`).
//!
//! Every request is authenticated here before rmcp sees it: a session id
//! names the agent's `initialize`, never who it is. Clients of the
//! 2026-07-28 revision are served statelessly; older ones get rmcp's legacy
//! sessions, whose `initialize` is kept in the recording store so that any
//! instance can serve the session's next request (`SessionsInStore`).

mod live;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use super::gateway::Gateway;
use super::{admit, new_audit_id, ApiError};
use crate::recording::store::{check_id, ObjectStore};
use crate::recording::RecordError;

pub use tools::Tools;

/// The most a JSON-RPC message may hold, as for `POST /v1/exec` (axum's
/// default body limit).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// A legacy session unused this long has ended (rmcp's own default).
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// Legacy sessions one principal may hold open on one instance.
pub const SESSIONS_PER_PRINCIPAL: usize = 16;

#[derive(Clone)]
struct Guard {
    gw: Arc<Gateway>,
    owners: Arc<Owners>,
    live: Arc<live::Live>,
    sessions: Arc<LocalSessionManager>,
}

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
    let store = gw.recorder.store.clone();
    config.session_store = Some(Arc::new(SessionsInStore(store.clone())));
    let factory_gw = gw.clone();
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE);
    let sessions = Arc::new(sessions);
    let service = StreamableHttpService::new(
        move || Ok(Tools::new(factory_gw.clone())),
        sessions.clone(),
        config,
    );
    let guard = Guard {
        gw,
        owners: Arc::new(Owners::new(store)),
        live: Arc::new(live::Live::new(SESSION_IDLE, SESSIONS_PER_PRINCIPAL)),
        sessions,
    };
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(guard, admitted))
}

const SESSION_HEADER: &str = "mcp-session-id";

/// Every request: a valid ID token, a chain that verifies and is not
/// revoked (401 or 403 otherwise), and a legacy session id only from the
/// principal that opened it. The tools then admit each call in full.
async fn admitted(
    State(guard): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let audit_id = new_audit_id();
    let span = tracing::Span::none();
    let req = admit::Request {
        headers: request.headers(),
        peer,
        connection: "-",
        mode: "mcp",
        audit_id: &audit_id,
        span: &span,
    };
    let who = match admit::identify(&guard.gw, &req).await {
        Ok((principal, _)) => principal.id(),
        Err(e) => {
            // Read what the client is still sending before answering: a
            // connection closed on an unread body reaches a client that is
            // still writing as a reset, not as this refusal.
            let _ = axum::body::to_bytes(request.into_body(), MAX_BODY).await;
            return refused(e);
        }
    };
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(id) = &session {
        match guard.owners.owner(id).await {
            Ok(Some(owner)) if owner == who => {}
            // Another principal's session is answered as one that does not
            // exist: its id alone is worth nothing.
            Ok(_) => {
                return refused(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_session",
                    "no such MCP session; start a new one (initialize)",
                    &audit_id,
                ))
            }
            Err(e) => return refused(owners_unavailable(e, &audit_id)),
        }
    }
    if !guard.seat(&who, session.as_deref()).await {
        return refused(too_many(&who, &audit_id));
    }
    let closing = request.method() == axum::http::Method::DELETE;
    let resp = next.run(request).await;
    let opened = resp
        .headers()
        .get(SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match (session, opened) {
        (None, Some(id)) => {
            if !guard.seat(&who, Some(&id)).await {
                let _ = guard.sessions.close_session(&id.as_str().into()).await;
                return refused(too_many(&who, &audit_id));
            }
            match guard.owners.record(&id, &who).await {
                Ok(()) => resp,
                // A session no instance could tie to its owner is not handed out.
                Err(e) => refused(owners_unavailable(e, &audit_id)),
            }
        }
        (Some(id), _) if closing => {
            guard.live.closed(&who, &id);
            resp
        }
        _ => resp,
    }
}

impl Guard {
    /// Whether `who` may use session `id` (or open one) here; closes the
    /// handles of its sessions that idled out.
    async fn seat(&self, who: &str, id: Option<&str>) -> bool {
        let (stale, ok) = match self.live.seat(who, id, Instant::now()) {
            live::Seat::Ok { stale } => (stale, true),
            live::Seat::Full { stale } => (stale, false),
        };
        for s in stale {
            let _ = self.sessions.close_session(&s.as_str().into()).await;
        }
        ok
    }
}

fn too_many(who: &str, audit_id: &str) -> ApiError {
    tracing::warn!(target: "custody::audit", audit_id, principal = who, outcome = "too_many_sessions", "request refused");
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions",
        format!("{who} already holds {SESSIONS_PER_PRINCIPAL} MCP sessions on this instance; end one (DELETE /mcp with its Mcp-Session-Id) or let one go unused for {} s, or use protocol revision 2026-07-28, which needs no session", SESSION_IDLE.as_secs()),
        audit_id,
    )
}

fn owners_unavailable(e: RecordError, audit_id: &str) -> ApiError {
    let reason = format!("MCP sessions cannot be checked, so none is served: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "recording_unavailable",
        reason,
        audit_id,
    )
}

/// A refusal as a JSON-RPC error body, which MCP clients show their user (a
/// bare status reads as "Server returned an error response"); a 401 also
/// carries the challenge RFC 6750 asks for.
fn refused(e: ApiError) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32001,
            "message": format!("{}: {} (audit id {})", e.error, e.reason, e.audit_id),
            "data": {"error": e.error, "reason": e.reason, "audit_id": e.audit_id},
        },
    });
    let mut resp = (e.status, Json(body)).into_response();
    if e.status == StatusCode::UNAUTHORIZED {
        let challenge = format!(
            "Bearer realm=\"custody\", error=\"invalid_token\", error_description=\"{}\"",
            e.reason.replace(['"', '\\'], "'")
        );
        let challenge = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"custody\""));
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    super::with_audit(&e.audit_id, resp)
}

/// Who opened each legacy session (`Principal::id()`), in the store as
/// `_mcp/sessions/ID.owner` so every instance can check it, and cached.
struct Owners {
    store: Arc<dyn ObjectStore>,
    cache: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Sessions live minutes; past this many the cache starts over.
const OWNERS_CACHED: usize = 4096;

impl Owners {
    fn new(store: Arc<dyn ObjectStore>) -> Owners {
        Owners {
            store,
            cache: Default::default(),
        }
    }

    fn cached(&self, id: &str) -> Option<String> {
        self.cache.lock().ok()?.get(id).cloned()
    }

    fn remember(&self, id: &str, owner: &str) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= OWNERS_CACHED {
                c.clear();
            }
            c.insert(id.to_string(), owner.to_string());
        }
    }

    async fn owner(&self, id: &str) -> Result<Option<String>, RecordError> {
        if let Some(o) = self.cached(id) {
            return Ok(Some(o));
        }
        if check_id(id).is_err() {
            return Ok(None);
        }
        match self.store.get(&format!("_mcp/sessions/{id}.owner")).await {
            Ok(data) => {
                let owner = String::from_utf8_lossy(&data).into_owned();
                self.remember(id, &owner);
                Ok(Some(owner))
            }
            Err(RecordError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn record(&self, id: &str, owner: &str) -> Result<(), RecordError> {
        check_id(id)?;
        let key = format!("_mcp/sessions/{id}.owner");
        self.store
            .create(&key, Bytes::from(owner.to_string()))
            .await?;
        self.remember(id, owner);
        Ok(())
    }
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

/// The most of a client's name or version kept (recorded, shown in replay).
pub(crate) const NAME_CHARS: usize = 128;

pub(crate) fn clip(s: &str) -> String {
    s.chars().take(NAME_CHARS).collect()
}

/// What a session needs restored, and no more: the client's name, version,
/// protocol and standard capabilities, without its free-form parts.
fn trimmed(state: &SessionState) -> SessionState {
    let mut p = state.initialize_params.clone();
    p.meta = None;
    p.capabilities.experimental = None;
    p.capabilities.extensions = None;
    p.client_info =
        rmcp::model::Implementation::new(clip(&p.client_info.name), clip(&p.client_info.version));
    SessionState::new(p)
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
        let data = Bytes::from(serde_json::to_vec(&trimmed(state))?);
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
