//! `/v1/reviews`: list, show, approve and deny. Thin: the rules are
//! `policy::review`, carrying them out is `session::approvals`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::gateway::Gateway;
use super::{admit, new_audit_id, ApiError};
use crate::identity::Principal;
use crate::policy::review::{self, Review, ReviewError};
use crate::recording::EventBody;
use crate::session::approvals::{ApprovalError, Vote};

pub use crate::wire::REVIEW_HEADER;

pub(crate) fn reviewable_by(r: &Review, who: &Principal) -> bool {
    review::in_chain(r, who) || review::is_approver(r, who)
}

async fn caller(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
    audit_id: &str,
) -> Result<Principal, ApiError> {
    admit::authenticate(gw, headers, audit_id, &peer.to_string()).await
}

fn answer(audit_id: &str, done: Result<Response, ApiError>) -> Response {
    done.unwrap_or_else(|e| e.at(audit_id).into_response())
}

/// `GET /v1/reviews`: the reviews the caller requested or may decide.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let all = gw.approvals.list().await?;
        let mine: Vec<&Review> = all.iter().filter(|r| reviewable_by(r, &who)).collect();
        Ok(Json(json!({"reviews": mine})).into_response())
    };
    answer(&audit_id, done.await)
}

/// `GET /v1/reviews/{id}`.
pub async fn show(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let r = gw.approvals.load(&id).await?;
        if !reviewable_by(&r, &who) {
            return Err(ReviewError::NotFound(id.clone()).into());
        }
        Ok(Json(json!(r)).into_response())
    };
    answer(&audit_id, done.await)
}

#[derive(serde::Deserialize, Default)]
struct DecideBody {
    #[serde(default)]
    reason: String,
}

/// `POST /v1/reviews/{id}/approve` and `/deny`.
pub async fn decide(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let b: DecideBody = if body.is_empty() {
            DecideBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::of(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("body must be {{\"reason\": \"...\"}}: {e}"),
                )
            })?
        };
        let vote: Vote = action.parse()?;
        let client = peer.to_string();
        let r = match gw.approvals.vote(&who, &id, vote, &b.reason).await {
            Ok(r) => r,
            Err(e) => {
                return Err(refused_vote(&gw, &audit_id, &who, &client, &id, &action, e).await)
            }
        };
        let event = EventBody::Review {
            review_id: id.clone(),
            action: vote.action(&r).into(),
            by: Some(who.member()),
            reason: Some(b.reason.clone()),
            review_audit_id: Some(r.request.audit_id.clone()),
        };
        admit::audit(&gw, &audit_id, &who, &client, "review", event).await?;
        tracing::info!(target: "custody::audit", audit_id, review_id = %id, principal = %who.member(), action, state = %r.state, "review decided");
        gw.approvals.announce_vote(&r, &who, &b.reason);
        Ok(Json(json!(r)).into_response())
    };
    answer(&audit_id, done.await)
}

/// A vote that was not taken: logged, and an expiry met becomes an audit event.
async fn refused_vote(
    gw: &Gateway,
    audit_id: &str,
    who: &Principal,
    client: &str,
    id: &str,
    action: &str,
    e: ApprovalError,
) -> ApiError {
    if let ApprovalError::VoterRevoked(_) = e {
        tracing::warn!(target: "custody::audit", audit_id, principal = %who.member(), action, "review action refused: principal revoked");
        return e.into();
    }
    tracing::warn!(target: "custody::audit", audit_id, review_id = %id, principal = %who.member(), action, reason = %e, "review action refused");
    if let ApprovalError::Review(ReviewError::Expired(_)) = e {
        let event = EventBody::Review {
            review_id: id.to_string(),
            action: "expired".into(),
            by: Some(who.member()),
            reason: None,
            review_audit_id: None,
        };
        let _ = admit::audit(gw, audit_id, who, client, "review", event).await;
    }
    e.into()
}
