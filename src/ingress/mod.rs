//! The HTTP surface, one file per endpoint family. Every request is
//! admitted here (`admit`): authenticated, its chain resolved, authorized,
//! given an audit id and a recording; then handed to a protocol as a
//! `SessionContext`. Every `/v1` answer carries `x-custody-audit-id`; every
//! refusal is JSON with a reason.

pub mod admit;
pub mod exec;
pub mod forwarded;
pub mod gateway;
pub mod health;
pub mod listen;
pub mod mcp;
pub mod reviews;
pub mod revocations;
pub mod sessions;
pub mod token;
pub mod tunnel;
pub mod ui;

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use crate::wire::csv::to_csv;
pub use crate::wire::{AUDIT_HEADER, DELEGATION_HEADER};
pub(crate) use admit::authenticate;
pub use admit::trace_id;
use gateway::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/v1/connections", get(health::connections))
        .route("/v1/tunnel/{connection}", get(tunnel::handler))
        .route("/v1/exec/{connection}", post(exec::handler))
        .route("/v1/token", post(token::token))
        .route("/v1/reviews", get(reviews::list))
        .route("/v1/reviews/{id}", get(reviews::show))
        .route("/v1/reviews/{id}/{action}", post(reviews::decide))
        .route("/v1/revocations", post(revocations::revoke))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{audit_id}", get(sessions::show))
        .route("/v1/sessions/{audit_id}/asciicast", get(sessions::cast))
        .route("/.well-known/jwks.json", get(token::jwks))
        .merge(mcp::routes(gw.clone()))
        .merge(ui::router())
        .layer(axum::middleware::from_fn(same_origin_only))
        .with_state(gw)
}

/// Another site's page must not drive the API with the browser's
/// credentials: behind a sign-in proxy that turns a cookie into the bearer
/// token, a cross-site form could approve a review or run a statement, and
/// a cross-site WebSocket could open a tunnel. Browsers say where a request
/// comes from in `Sec-Fetch-Site`; the CLI and agents send none.
async fn same_origin_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let api = path.starts_with("/v1/") || path == "/mcp";
    let site = request
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if api && matches!(site, "cross-site" | "same-site") {
        let reason = format!(
            "a request from another site ({site}) is refused: the API answers the console at this origin, the CLI and agents"
        );
        return ApiError::new(StatusCode::FORBIDDEN, "cross_site", reason, &new_audit_id())
            .into_response();
    }
    next.run(request).await
}

/// A refusal or failure, rendered once for every endpoint. Errors of the
/// layers below become one through `From`; the handler names the audit id.
#[derive(Debug)]
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

    /// An error of a layer below, before the handler names its audit id.
    pub(crate) fn of(
        status: StatusCode,
        error: &'static str,
        reason: impl Into<String>,
    ) -> ApiError {
        ApiError::new(status, error, reason, "")
    }

    /// Names the request's audit id, unless one is already set.
    pub(crate) fn at(mut self, audit_id: &str) -> ApiError {
        if self.audit_id.is_empty() {
            self.audit_id = audit_id.to_string();
        }
        self
    }

    pub(crate) fn with_sqlstate(mut self, sqlstate: &str) -> ApiError {
        self.extra = json!({"sqlstate": sqlstate});
        self
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

impl From<crate::policy::review::ReviewError> for ApiError {
    fn from(e: crate::policy::review::ReviewError) -> ApiError {
        use crate::policy::review::ReviewError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Decided(..) | E::AlreadyApproved(_) => StatusCode::CONFLICT,
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::BadReason(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        let error = match &e {
            E::BadReason(_) => "invalid_request",
            _ => "review",
        };
        ApiError::of(status, error, e.to_string())
    }
}

impl From<crate::session::approvals::ApprovalError> for ApiError {
    fn from(e: crate::session::approvals::ApprovalError) -> ApiError {
        use crate::session::approvals::ApprovalError as E;
        match e {
            E::Review(e) => e.into(),
            E::NoApprovers => ApiError::of(StatusCode::FORBIDDEN, "guardrail", e.to_string()),
            E::VoterRevoked(_) => ApiError::of(StatusCode::FORBIDDEN, "revoked", e.to_string()),
            E::UnknownAction(_) => ApiError::of(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        }
    }
}

impl From<crate::recording::RecordError> for ApiError {
    fn from(e: crate::recording::RecordError) -> ApiError {
        ApiError::of(
            StatusCode::SERVICE_UNAVAILABLE,
            "recording_unavailable",
            format!("the result is withheld because the session could not be recorded: {e}"),
        )
    }
}

pub(crate) fn with_audit(audit_id: &str, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(audit_id) {
        resp.headers_mut().insert(AUDIT_HEADER, v);
    }
    resp
}

pub fn new_audit_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A refused request: its span says why, the caller gets the JSON reason.
pub(crate) fn refused(span: &tracing::Span, e: ApiError) -> Response {
    span.record("custody.outcome", e.error);
    span.record("otel.status_code", "ERROR");
    e.into_response()
}
