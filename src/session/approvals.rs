//! Carries approval decisions out against the review store, for every way
//! in: a hold becomes a stored, recorded and announced review; a named
//! review is checked against the session and used up; votes are counted.
//! The rules of a review (states, who may vote) are `policy::review`.

use std::sync::Arc;

use serde_json::json;

use super::Session;
use crate::config::ApprovalsConfig;
use crate::config::GuardrailsConfig;
use crate::identity::revocation::Revocations;
use crate::identity::Principal;
use crate::policy::review::{self, Request, Review, ReviewError, State};
use crate::recording::{EventBody, ObjectStore};

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("no approvers")]
    NoApprovers,
    #[error("{0} is revoked, so it may not approve or deny")]
    VoterRevoked(String),
    #[error("no action {0:?}: use approve or deny")]
    UnknownAction(String),
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A vote on a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Approve,
    Deny,
}

impl std::str::FromStr for Vote {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Vote, ApprovalError> {
        match s {
            "approve" => Ok(Vote::Approve),
            "deny" => Ok(Vote::Deny),
            other => Err(ApprovalError::UnknownAction(other.to_string())),
        }
    }
}

impl Vote {
    /// The audit event's action for this vote, given the review it left.
    pub fn action(self, after: &Review) -> &'static str {
        match (self, after.state) {
            (Vote::Approve, State::Approved) => "approved",
            (Vote::Approve, _) => "approval_recorded",
            (Vote::Deny, _) => "denied",
        }
    }
}

/// The review store, the revocation list approvals depend on, and the webhook.
pub struct Approvals {
    store: Arc<dyn ObjectStore>,
    revocations: Arc<Revocations>,
    config: ApprovalsConfig,
}

impl Approvals {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        revocations: Arc<Revocations>,
        config: ApprovalsConfig,
    ) -> Approvals {
        Approvals {
            store,
            revocations,
            config,
        }
    }

    /// Stores, records and announces the review of a held statement or command.
    pub async fn hold(
        &self,
        session: &Session,
        id: &str,
        statement: &str,
        shown: &str,
        rule: &str,
    ) -> Result<Request, ApprovalError> {
        let conn = &session.permit.connection;
        let g = conn.guardrails.as_ref().ok_or(ApprovalError::NoApprovers)?;
        let req = request(session, g, id, statement, shown, rule);
        review::create(self.store.as_ref(), &req).await?;
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
        self.announce("requested", &req, None, "");
        Ok(req)
    }

    /// A tunnel opened with CUSTODY_REVIEW: the review must be approved for
    /// this chain and connection; a single-use approval is used by this session.
    pub async fn open_with(&self, session: &Session, id: &str) -> Result<Review, ApprovalError> {
        self.covering(session, id, None).await
    }

    /// Checks that review `id` approved this chain, connection and statement,
    /// and marks a single-use approval used.
    pub async fn use_for(
        &self,
        session: &Session,
        id: &str,
        statement: &str,
    ) -> Result<Review, ApprovalError> {
        let hash = review::statement_hash(statement);
        let r = self.covering(session, id, Some(&hash)).await?;
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
        self.announce("used", &r.request, Some(&session.permit.principal), "");
        Ok(r)
    }

    /// Loads review `id`, checks it covers this session (and statement hash,
    /// when given), and uses it up if it is single-use.
    async fn covering(
        &self,
        session: &Session,
        id: &str,
        hash: Option<&str>,
    ) -> Result<Review, ApprovalError> {
        let store = self.store.as_ref();
        let t = now();
        let r = review::load(store, id, t).await?;
        let chain = &session.permit.chain;
        let conn = session.permit.connection.name();
        if let Err(e) = r.covers(&chain.members(), &chain.identities(), conn, hash, t) {
            return Err(refuse_use(session, &r, e).await);
        }
        // An approval is only as good as its approvers: one revoked since voids it.
        let revoked = self
            .revocations
            .current(store)
            .await
            .map_err(ReviewError::Store)?;
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
        review::claim(store, &r, &session.audit_id, t).await?;
        Ok(r)
    }

    /// One approver's vote. A revoked voter is refused before the review is
    /// looked at, so the answer says nothing of it.
    pub async fn vote(
        &self,
        who: &Principal,
        id: &str,
        vote: Vote,
        reason: &str,
    ) -> Result<Review, ApprovalError> {
        let store = self.store.as_ref();
        let revoked = self
            .revocations
            .is_revoked(store, &who.member(), Some(&who.id()))
            .await
            .map_err(ReviewError::Store)?;
        if revoked {
            return Err(ApprovalError::VoterRevoked(who.member()));
        }
        review::check_reason(reason, vote == Vote::Deny)?;
        let t = now();
        Ok(match vote {
            Vote::Approve => review::approve(store, id, who, reason, t).await?,
            Vote::Deny => review::deny(store, id, who, reason, t).await?,
        })
    }

    /// Announces a recorded vote (after it is in the audit record).
    pub fn announce_vote(&self, r: &Review, who: &Principal, reason: &str) {
        self.announce(r.state.as_str(), &r.request, Some(who), reason);
    }

    pub async fn list(&self) -> Result<Vec<Review>, ReviewError> {
        review::list(self.store.as_ref(), now()).await
    }

    pub async fn load(&self, id: &str) -> Result<Review, ReviewError> {
        review::load(self.store.as_ref(), id, now()).await
    }

    /// Webhook: a JSON POST per new review and decision (or Slack's {"text"}).
    /// Fire and forget: a webhook that is down never holds up a request.
    fn announce(&self, action: &str, req: &Request, by: Option<&Principal>, reason: &str) {
        let Some(url) = self.config.webhook.clone() else {
            return;
        };
        let body = webhook_body(
            self.config.webhook_format.as_deref(),
            action,
            req,
            by.map(|p| p.member()),
            reason,
        );
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
}

/// The stored request for a statement `session` holds under `rule`.
fn request(
    session: &Session,
    g: &GuardrailsConfig,
    id: &str,
    statement: &str,
    shown: &str,
    rule: &str,
) -> Request {
    let t = now();
    Request {
        id: id.to_string(),
        audit_id: session.audit_id.clone(),
        created: t,
        expires: t.saturating_add(i64::try_from(g.approval_expires.as_secs()).unwrap_or(i64::MAX)),
        chain: session.permit.chain.members(),
        chain_ids: session.permit.chain.identities(),
        connection: session.permit.connection.name().to_string(),
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
    }
}

/// A review found expired when used is an audit event of the session.
async fn refuse_use(session: &Session, r: &Review, e: ReviewError) -> ApprovalError {
    if r.state == State::Expired {
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
    e.into()
}

fn webhook_body(
    format: Option<&str>,
    action: &str,
    req: &Request,
    by: Option<String>,
    reason: &str,
) -> serde_json::Value {
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
    match format {
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
    }
}
