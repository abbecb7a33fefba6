//! Just-in-time approvals. A statement a guardrail holds becomes a review in
//! the store; approvers decide; an approval is bound to the requesting chain,
//! the connection and the statement's hash, and is used once (or opens the
//! connection for a window). Every state change creates an object that must
//! not exist yet (`ifGenerationMatch=0` on GCS, a hard link in a directory),
//! so two instances racing on one review cannot both win.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::Principal;
use crate::policy::Member;
use crate::recording::{ObjectStore, RecordError};

const DIR: &str = "_reviews/";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no review {0}")]
    NotFound(String),
    #[error("review {0} is already {1}")]
    Decided(String, String),
    #[error("review {0} expired unanswered")]
    Expired(String),
    #[error("{who} may not approve review {id}: not among its approvers ({approvers})")]
    NotApprover {
        id: String,
        who: String,
        approvers: String,
    },
    #[error("{who} may not decide review {id}: it is their own request, or they are part of its chain ({chain})")]
    OwnRequest {
        id: String,
        who: String,
        chain: String,
    },
    #[error("{0} already approved this review")]
    AlreadyApproved(String),
    #[error("review {id} does not cover this request: {why}")]
    Mismatch { id: String, why: String },
    #[error("review {0} was approved for a single use and has been used")]
    Used(String),
    #[error("review {0} is not approved (it is {1})")]
    NotApproved(String, String),
    #[error("review store: {0}")]
    Store(#[from] RecordError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// The audit id of the request that was held.
    pub audit_id: String,
    pub created: i64,
    /// Unanswered after this, the review expires.
    pub expires: i64,
    /// originator → hops → caller of the held request.
    pub chain: Vec<String>,
    pub connection: String,
    pub rule: String,
    /// The statement as reviewers see it (masked like recordings).
    pub statement: String,
    /// SHA-256 of the exact statement the approval is bound to.
    pub statement_sha256: String,
    pub approvers: Vec<String>,
    pub required: usize,
    /// JIT access: an approval opens the connection to the chain for this long.
    pub window_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vote {
    pub by: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// "approved" or "denied".
    pub state: String,
    pub by: Vec<String>,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Use {
    pub audit_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub request: Request,
    pub approvals: Vec<Vote>,
    pub decision: Option<Decision>,
    pub used: Option<Use>,
    /// pending, approved, denied, expired or used (filled by `state_at`).
    pub state: String,
}

pub fn statement_hash(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn key(id: &str, name: &str) -> String {
    format!("{DIR}{id}/{name}")
}

fn vote_key(id: &str, member: &str) -> String {
    key(
        id,
        &format!(
            "approve-{}.json",
            &statement_hash(&member.to_ascii_lowercase())[..16]
        ),
    )
}

impl Review {
    pub fn state_at(&self, now: i64) -> &'static str {
        match (&self.decision, &self.used) {
            (_, Some(_)) if self.request.window_secs.is_none() => "used",
            (Some(d), _) if d.state == "denied" => "denied",
            // An approval lasts its window, or (single use) as long as the
            // review could wait for it: approval_expires after the decision.
            (Some(d), _) => {
                let lasts = match self.request.window_secs {
                    Some(w) => w as i64,
                    None => self.request.expires - self.request.created,
                };
                if now >= d.at + lasts {
                    "expired"
                } else {
                    "approved"
                }
            }
            (None, _) if now >= self.request.expires => "expired",
            (None, _) => "pending",
        }
    }

    /// Whether this approved review covers `chain` on `connection` for a
    /// statement with hash `hash` (any statement, within a window grant).
    pub fn covers(
        &self,
        chain: &[String],
        connection: &str,
        hash: Option<&str>,
        now: i64,
    ) -> Result<(), ReviewError> {
        let id = &self.request.id;
        let state = self.state_at(now);
        match state {
            "approved" => {}
            "used" => return Err(ReviewError::Used(id.clone())),
            other => return Err(ReviewError::NotApproved(id.clone(), other.into())),
        }
        let mismatch = |why: String| ReviewError::Mismatch {
            id: id.clone(),
            why,
        };
        if self.request.chain != chain {
            return Err(mismatch(format!(
                "it was requested by {}",
                self.request.chain.join(" → ")
            )));
        }
        if self.request.connection != connection {
            return Err(mismatch(format!(
                "it is for connection {}",
                self.request.connection
            )));
        }
        if self.request.window_secs.is_none() {
            if let Some(h) = hash {
                if h != self.request.statement_sha256 {
                    return Err(mismatch("it approved a different statement".into()));
                }
            }
        }
        Ok(())
    }
}

pub async fn create(store: &dyn ObjectStore, req: &Request) -> Result<(), ReviewError> {
    let body = serde_json::to_vec(req).unwrap_or_default();
    store
        .create(&key(&req.id, "request.json"), Bytes::from(body))
        .await?;
    Ok(())
}

fn check_id(id: &str) -> Result<(), ReviewError> {
    crate::recording::store::check_id(id).map_err(|_| ReviewError::NotFound(id.to_string()))
}

pub async fn load(store: &dyn ObjectStore, id: &str, now: i64) -> Result<Review, ReviewError> {
    check_id(id)?;
    let request: Request = match store.get(&key(id, "request.json")).await {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ReviewError::Store(RecordError::Corrupt(id.into(), 1, e.to_string())))?,
        Err(RecordError::NotFound(_)) => return Err(ReviewError::NotFound(id.to_string())),
        Err(e) => return Err(e.into()),
    };
    let mut review = Review {
        request,
        approvals: Vec::new(),
        decision: None,
        used: None,
        state: String::new(),
    };
    for k in store.list(&key(id, "")).await? {
        let name = k.rsplit('/').next().unwrap_or_default();
        let get = || store.get(&k);
        if name.starts_with("approve-") {
            if let Ok(v) = serde_json::from_slice(&get().await?) {
                review.approvals.push(v);
            }
        } else if name == "decision.json" {
            review.decision = serde_json::from_slice(&get().await?).ok();
        } else if name == "used.json" {
            review.used = serde_json::from_slice(&get().await?).ok();
        }
    }
    review.approvals.sort_by_key(|v| v.at);
    review.state = review.state_at(now).to_string();
    Ok(review)
}

pub async fn list(store: &dyn ObjectStore, now: i64) -> Result<Vec<Review>, ReviewError> {
    let mut out = Vec::new();
    for dir in store.list_dirs(DIR).await? {
        let id = dir
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if let Ok(r) = load(store, id, now).await {
            out.push(r);
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.request.created));
    Ok(out)
}

/// An approver may decide: in the approver list, and not part of the chain.
fn may_decide(review: &Review, who: &Principal) -> Result<(), ReviewError> {
    let id = review.request.id.clone();
    let me = who.member();
    if review
        .request
        .chain
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&me))
    {
        return Err(ReviewError::OwnRequest {
            id,
            who: me,
            chain: review.request.chain.join(" → "),
        });
    }
    let allowed = review
        .request
        .approvers
        .iter()
        .filter_map(|m| m.parse::<Member>().ok())
        .any(|m| m.matches(who));
    if !allowed {
        return Err(ReviewError::NotApprover {
            id,
            who: me,
            approvers: review.request.approvers.join(", "),
        });
    }
    Ok(())
}

fn pending(review: &Review, now: i64) -> Result<(), ReviewError> {
    match review.state_at(now) {
        "pending" => Ok(()),
        "expired" => Err(ReviewError::Expired(review.request.id.clone())),
        other => Err(ReviewError::Decided(
            review.request.id.clone(),
            other.into(),
        )),
    }
}

/// Records one approval; the one that reaches the required count decides.
/// Of two deciders racing, exactly one creates the decision; the other is
/// told the review is already decided.
pub async fn approve(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    reason: &str,
    now: i64,
) -> Result<Review, ReviewError> {
    let review = load(store, id, now).await?;
    pending(&review, now)?;
    may_decide(&review, who)?;
    let me = who.member();
    let vote = Vote {
        by: me.clone(),
        reason: reason.to_string(),
        at: now,
    };
    match store
        .create(
            &vote_key(id, &me),
            Bytes::from(serde_json::to_vec(&vote).unwrap_or_default()),
        )
        .await
    {
        Err(RecordError::Exists(_)) => return Err(ReviewError::AlreadyApproved(me)),
        other => other?,
    }
    let review = load(store, id, now).await?;
    if review.approvals.len() >= review.request.required.max(1) {
        let decision = Decision {
            state: "approved".into(),
            by: review.approvals.iter().map(|v| v.by.clone()).collect(),
            reason: reason.to_string(),
            at: now,
        };
        decide(store, id, &decision).await?;
    }
    load(store, id, now).await
}

pub async fn deny(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    reason: &str,
    now: i64,
) -> Result<Review, ReviewError> {
    let review = load(store, id, now).await?;
    pending(&review, now)?;
    may_decide(&review, who)?;
    let decision = Decision {
        state: "denied".into(),
        by: vec![who.member()],
        reason: reason.to_string(),
        at: now,
    };
    decide(store, id, &decision).await?;
    load(store, id, now).await
}

async fn decide(store: &dyn ObjectStore, id: &str, d: &Decision) -> Result<(), ReviewError> {
    let body = Bytes::from(serde_json::to_vec(d).unwrap_or_default());
    match store.create(&key(id, "decision.json"), body).await {
        Ok(()) => Ok(()),
        Err(RecordError::Exists(_)) => {
            let now = d.at;
            let state = load(store, id, now)
                .await
                .map(|r| r.state)
                .unwrap_or_else(|_| "decided".into());
            Err(ReviewError::Decided(id.to_string(), state))
        }
        Err(e) => Err(e.into()),
    }
}

/// Marks a single-use approval used; a second use is refused.
pub async fn claim(
    store: &dyn ObjectStore,
    review: &Review,
    audit_id: &str,
    now: i64,
) -> Result<(), ReviewError> {
    if review.request.window_secs.is_some() {
        return Ok(());
    }
    let used = Use {
        audit_id: audit_id.to_string(),
        at: now,
    };
    match store
        .create(
            &key(&review.request.id, "used.json"),
            Bytes::from(serde_json::to_vec(&used).unwrap_or_default()),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(RecordError::Exists(_)) => Err(ReviewError::Used(review.request.id.clone())),
        Err(e) => Err(e.into()),
    }
}
