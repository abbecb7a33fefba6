//! The approval flow around `review`: holding an exec statement (202 with a
//! review id), using an approval, the `/v1/reviews` API and the webhook.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::ConnectionConfig;
use crate::identity::Principal;
use crate::ingress::{self, ApiError};
use crate::policy::review::{self, Review, ReviewError};
use crate::recording::EventBody;
use crate::session::Session;
use crate::Gateway;

pub use crate::wire::REVIEW_HEADER;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn api_error(e: ReviewError, audit_id: &str) -> ApiError {
    let status = match &e {
        ReviewError::NotFound(_) => StatusCode::NOT_FOUND,
        ReviewError::Decided(..) | ReviewError::AlreadyApproved(_) => StatusCode::CONFLICT,
        ReviewError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ReviewError::BadReason(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    ApiError::new(status, "review", e.to_string(), audit_id)
}

/// A review found expired when used is an audit event of the session.
async fn refuse_use(session: &Session, r: &Review, e: ReviewError) -> ApiError {
    if r.state == "expired" {
        let _ = session
            .tap()
            .record(EventBody::Review {
                review_id: r.request.id.clone(),
                action: "expired".into(),
                by: None,
                reason: None,
                review_audit_id: Some(r.request.audit_id.clone()),
            })
            .await;
    }
    api_error(e, &session.audit_id)
}

/// Whether statements held by this connection's guardrails can be approved.
pub fn approvable(conn: &ConnectionConfig) -> bool {
    conn.guardrails
        .as_ref()
        .is_some_and(|g| !g.approvers.is_empty())
}

/// Holds `statement` for review: the review is stored, announced and
/// recorded; the caller gets 202 with its id.
pub async fn hold(
    gw: &Gateway,
    session: &Session,
    statement: &str,
    shown: &str,
    rule: &str,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let req = store_hold(gw, session, &id, statement, shown, rule).await?;
    let approve = format!("custody review approve {}", req.id);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "state": "pending",
            "review_id": req.id,
            "audit_id": session.audit_id,
            "reason": format!("this statement requires approval (guardrail \"{rule}\"): review {} waits for {} of {}", req.id, req.required, req.approvers.join(", ")),
            "approve": approve,
            "expires": req.expires,
        })),
    )
        .into_response())
}

/// A tunnel opened with CUSTODY_REVIEW: the review must be approved for
/// this chain and connection; a single-use approval is used by this session.
pub async fn approve_session(
    gw: &Gateway,
    session: &Session,
    id: &str,
) -> Result<Review, ApiError> {
    covering(gw, session, id, None).await
}

/// Loads review `id`, checks it covers this session (and statement hash,
/// when given), and uses it up if it is single-use.
async fn covering(
    gw: &Gateway,
    session: &Session,
    id: &str,
    hash: Option<&str>,
) -> Result<Review, ApiError> {
    let store = gw.recorder.store.as_ref();
    let t = now();
    let r = review::load(store, id, t)
        .await
        .map_err(|e| api_error(e, &session.audit_id))?;
    let chain = &session.permit.chain;
    if let Err(e) = r.covers(
        &chain.members(),
        &chain.identities(),
        session.permit.connection.name(),
        hash,
        t,
    ) {
        return Err(refuse_use(session, &r, e).await);
    }
    // An approval is only as good as its approvers: one revoked since voids it.
    let revoked = gw
        .revocations
        .current(store)
        .await
        .map_err(|e| api_error(ReviewError::Store(e), &session.audit_id))?;
    if let Some(v) = review::distinct_votes(&r.approvals)
        .into_iter()
        .find(|v| revoked.iter().any(|x| x.covers(&v.by, v.id.as_deref())))
    {
        let e = ReviewError::ApproverRevoked {
            id: r.request.id.clone(),
            who: v.by.clone(),
        };
        return Err(refuse_use(session, &r, e).await);
    }
    review::claim(store, &r, &session.audit_id, t)
        .await
        .map_err(|e| api_error(e, &session.audit_id))?;
    Ok(r)
}

/// Stores, records and announces the review of a held statement.
pub async fn store_hold(
    gw: &Gateway,
    session: &Session,
    id: &str,
    statement: &str,
    shown: &str,
    rule: &str,
) -> Result<review::Request, ApiError> {
    let conn = &session.permit.connection;
    let Some(g) = conn.guardrails.as_ref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "guardrail",
            "no approvers",
            &session.audit_id,
        ));
    };
    let t = now();
    let req = review::Request {
        id: id.to_string(),
        audit_id: session.audit_id.clone(),
        created: t,
        expires: t + g.approval_expires.as_secs() as i64,
        chain: session.permit.chain.members(),
        chain_ids: session.permit.chain.identities(),
        connection: conn.name().to_string(),
        rule: rule.to_string(),
        statement: shown.to_string(),
        statement_sha256: review::statement_hash(statement),
        approvers: g.approvers.iter().map(|m| m.get_ref().clone()).collect(),
        required: g.approvals_required.max(1),
        window_secs: g
            .approval_window
            .as_ref()
            .and_then(|w| crate::config::parse_duration(w.get_ref()).ok())
            .map(|d| d.as_secs()),
    };
    review::create(gw.recorder.store.as_ref(), &req)
        .await
        .map_err(|e| api_error(e, &session.audit_id))?;
    let _ = session
        .tap()
        .record(EventBody::Review {
            review_id: req.id.clone(),
            action: "requested".into(),
            by: None,
            reason: Some(format!("guardrail {rule}")),
            review_audit_id: None,
        })
        .await;
    tracing::info!(target: "custody::audit", audit_id = %session.audit_id, review_id = %req.id, rule, "statement held for approval");
    announce(gw, "requested", &req, None, "");
    Ok(req)
}

/// Checks that review `id` approved this chain, connection and statement,
/// and marks a single-use approval used.
pub async fn use_approval(
    gw: &Gateway,
    session: &Session,
    id: &str,
    statement: &str,
) -> Result<Review, ApiError> {
    let r = covering(gw, session, id, Some(&review::statement_hash(statement))).await?;
    let _ = session
        .tap()
        .record(EventBody::Review {
            review_id: id.to_string(),
            action: "used".into(),
            by: r.decision.as_ref().map(|d| d.by.join(", ")),
            reason: None,
            review_audit_id: Some(r.request.audit_id.clone()),
        })
        .await;
    announce(gw, "used", &r.request, Some(&session.permit.principal), "");
    Ok(r)
}

/// Webhook: a JSON POST per new review and decision (or Slack's {"text"}).
/// Fire and forget: a webhook that is down never holds up a request.
fn announce(
    gw: &Gateway,
    action: &str,
    req: &review::Request,
    by: Option<&Principal>,
    reason: &str,
) {
    let Some(url) = gw.config.approvals.webhook.clone() else {
        return;
    };
    let by = by.map(|p| p.member());
    let text = format!(
        "Custody review {} {action}{}: {} on {} (guardrail {}) by {}{}",
        req.id,
        by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
        req.statement.chars().take(200).collect::<String>(),
        req.connection,
        req.rule,
        req.chain.join(" → "),
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        }
    );
    let body = match gw.config.approvals.webhook_format.as_deref() {
        Some("slack") => json!({"text": text}),
        _ => json!({
            "event": action,
            "review_id": req.id,
            "audit_id": req.audit_id,
            "connection": req.connection,
            "rule": req.rule,
            "chain": req.chain,
            "statement": req.statement,
            "by": by,
            "reason": reason,
            "approve": format!("custody review approve {}", req.id),
        }),
    };
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build();
        if let Ok(c) = client {
            if let Err(e) = c.post(&url).json(&body).send().await {
                // Without the URL: Slack-style webhook URLs carry their secret in the path.
                tracing::warn!(error = %e.without_url(), "review webhook failed");
            }
        }
    });
}

fn reviewable_by(r: &Review, who: &Principal) -> bool {
    review::in_chain(r, who) || review::is_approver(r, who)
}

async fn caller(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
    audit_id: &str,
) -> Result<Principal, ApiError> {
    ingress::authenticate(gw, headers, audit_id, &peer.to_string()).await
}

/// `GET /v1/reviews`: the reviews the caller requested or may decide.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let audit_id = ingress::new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let all = review::list(gw.recorder.store.as_ref(), now())
            .await
            .map_err(|e| api_error(e, &audit_id))?;
        let mine: Vec<&Review> = all.iter().filter(|r| reviewable_by(r, &who)).collect();
        Ok::<_, ApiError>(Json(json!({"reviews": mine})).into_response())
    };
    done.await.unwrap_or_else(|e| e.into_response())
}

/// `GET /v1/reviews/{id}`.
pub async fn show(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit_id = ingress::new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let r = review::load(gw.recorder.store.as_ref(), &id, now())
            .await
            .map_err(|e| api_error(e, &audit_id))?;
        if !reviewable_by(&r, &who) {
            return Err(api_error(ReviewError::NotFound(id.clone()), &audit_id));
        }
        Ok(Json(json!(r)).into_response())
    };
    done.await.unwrap_or_else(|e| e.into_response())
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
    let audit_id = ingress::new_audit_id();
    let done = async {
        let who = caller(&gw, &headers, peer, &audit_id).await?;
        let b: DecideBody = if body.is_empty() {
            DecideBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("body must be {{\"reason\": \"...\"}}: {e}"),
                    &audit_id,
                )
            })?
        };
        let store = gw.recorder.store.as_ref();
        // Checked before the review is looked at: the answer says nothing of it.
        let revoked = gw
            .revocations
            .is_revoked(store, &who.member(), Some(&who.id()))
            .await
            .map_err(|e| api_error(ReviewError::Store(e), &audit_id))?;
        if revoked {
            tracing::warn!(target: "custody::audit", audit_id, principal = %who.member(), action, "review action refused: principal revoked");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "revoked",
                format!("{} is revoked, so it may not approve or deny", who.member()),
                &audit_id,
            ));
        }
        if let Err(e) = review::check_reason(&b.reason, action == "deny") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.to_string(),
                &audit_id,
            ));
        }
        let t = now();
        let r = match action.as_str() {
            "approve" => review::approve(store, &id, &who, &b.reason, t).await,
            "deny" => review::deny(store, &id, &who, &b.reason, t).await,
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no action {other:?}: use approve or deny"),
                    &audit_id,
                ))
            }
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "custody::audit", audit_id, review_id = %id, principal = %who.member(), action, reason = %e, "review action refused");
                if let ReviewError::Expired(_) = e {
                    // The expiry becomes an audit event when someone meets it.
                    let event = EventBody::Review {
                        review_id: id.clone(),
                        action: "expired".into(),
                        by: Some(who.member()),
                        reason: None,
                        review_audit_id: None,
                    };
                    let _ = crate::ingress::token::audit(
                        &gw,
                        &audit_id,
                        &who,
                        &peer.to_string(),
                        "review",
                        event,
                    )
                    .await;
                }
                return Err(api_error(e, &audit_id));
            }
        };
        crate::ingress::token::audit(
            &gw,
            &audit_id,
            &who,
            &peer.to_string(),
            "review",
            EventBody::Review {
                review_id: id.clone(),
                action: match (action.as_str(), r.state.as_str()) {
                    ("approve", "approved") => "approved".into(),
                    ("approve", _) => "approval_recorded".into(),
                    _ => "denied".into(),
                },
                by: Some(who.member()),
                reason: Some(b.reason.clone()),
                review_audit_id: Some(r.request.audit_id.clone()),
            },
        )
        .await?;
        tracing::info!(target: "custody::audit", audit_id, review_id = %id, principal = %who.member(), action, state = %r.state, "review decided");
        announce(&gw, &r.state, &r.request, Some(&who), &b.reason);
        Ok(Json(json!(r)).into_response())
    };
    done.await.unwrap_or_else(|e| e.into_response())
}
