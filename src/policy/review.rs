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
    Decided(String, State),
    #[error("review {0} expired unanswered")]
    Expired(String),
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
    NotApproved(String, State),
    #[error("review {id} was approved by {who}, who has since been revoked; ask for a new review")]
    ApproverRevoked { id: String, who: String },
    #[error("{0}")]
    BadReason(String),
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
    /// The identities (`principal://…`) of the chain's hands, where known:
    /// what self-approval is checked against, whatever names a token shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_ids: Vec<String>,
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
    /// The voter's identity: one vote per identity, whatever names it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub reason: String,
    pub at: i64,
}

/// Where a review is: stored as these lowercase words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Used,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the deciding vote (or the denial) made of a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Approved,
    Denied,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub state: Outcome,
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
    /// Filled by `state_at` when loaded.
    pub state: State,
}

/// Reviews stored before direct chains were shown once name a direct
/// caller twice (`[alice, alice]`): the same chain as `[alice]`.
fn direct_once(chain: &[String]) -> &[String] {
    match chain {
        [a, b] if a.eq_ignore_ascii_case(b) => &chain[..1],
        _ => chain,
    }
}

pub fn statement_hash(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn key(id: &str, name: &str) -> String {
    format!("{DIR}{id}/{name}")
}

/// One object per voter identity: two tokens of one person race for one name.
fn vote_key(id: &str, identity: &str) -> String {
    key(
        id,
        &format!("approve-{}.json", &statement_hash(identity)[..16]),
    )
}

/// Two votes come from one voter when they share an identity or a member name.
fn same_voter(a: &Vote, b: &Vote) -> bool {
    a.by.eq_ignore_ascii_case(&b.by) || (a.id.is_some() && a.id == b.id)
}

/// The votes that count: the first of each voter, in order.
pub fn distinct_votes(votes: &[Vote]) -> Vec<&Vote> {
    let mut out: Vec<&Vote> = Vec::new();
    for v in votes {
        if !out.iter().any(|o| same_voter(o, v)) {
            out.push(v);
        }
    }
    out
}

/// The longest reason kept with a decision.
const MAX_REASON: usize = 2000;

/// A reason is text a reviewer can read: printable, no control characters
/// (which could forge lines in logs and replays). Deny needs one; approve
/// may give none.
pub fn check_reason(reason: &str, required: bool) -> Result<(), ReviewError> {
    let bad = |why: &str| Err(ReviewError::BadReason(why.to_string()));
    if reason.is_empty() && !required {
        return Ok(());
    }
    if reason.chars().any(char::is_control) {
        return bad("the reason contains control characters (newlines, escapes): write it on one line of text");
    }
    if !reason.chars().any(|c| !c.is_whitespace()) {
        return bad(if required {
            "a denial needs a reason: give {\"reason\": \"...\"} with printable text"
        } else {
            "the reason has no printable text: give one or leave it out"
        });
    }
    if reason.chars().count() > MAX_REASON {
        return bad("the reason is over 2000 characters");
    }
    Ok(())
}

impl Review {
    pub fn state_at(&self, now: i64) -> State {
        match (&self.decision, &self.used) {
            (_, Some(_)) if self.request.window_secs.is_none() => State::Used,
            (Some(d), _) if d.state == Outcome::Denied => State::Denied,
            // An approval lasts its window, or (single use) as long as the
            // review could wait for it: approval_expires after the decision.
            (Some(d), _) => {
                let lasts = match self.request.window_secs {
                    Some(w) => i64::try_from(w).unwrap_or(i64::MAX),
                    None => self.request.expires.saturating_sub(self.request.created),
                };
                if now >= d.at.saturating_add(lasts) {
                    State::Expired
                } else {
                    State::Approved
                }
            }
            (None, _) if now >= self.request.expires => State::Expired,
            (None, _) => State::Pending,
        }
    }

    /// Whether this approved review covers `chain` on `connection` for a
    /// statement with hash `hash` (any statement, within a window grant).
    pub fn covers(
        &self,
        chain: &[String],
        chain_ids: &[String],
        connection: &str,
        hash: Option<&str>,
        now: i64,
    ) -> Result<(), ReviewError> {
        let id = &self.request.id;
        match self.state_at(now) {
            State::Approved => {}
            State::Used => return Err(ReviewError::Used(id.clone())),
            other => return Err(ReviewError::NotApproved(id.clone(), other)),
        }
        let mismatch = |why: String| ReviewError::Mismatch {
            id: id.clone(),
            why,
        };
        // Reviews stored before identities were recorded have none to compare.
        let ids_differ = !self.request.chain_ids.is_empty()
            && direct_once(&self.request.chain_ids) != direct_once(chain_ids);
        if direct_once(&self.request.chain) != direct_once(chain) || ids_differ {
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
        state: State::Pending,
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
    review.state = review.state_at(now);
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

/// Whether `who` is a hand of the review's chain, by member name or identity.
pub fn in_chain(review: &Review, who: &Principal) -> bool {
    let me = who.member();
    review
        .request
        .chain
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&me))
        || review.request.chain_ids.contains(&who.id())
}

pub fn is_approver(review: &Review, who: &Principal) -> bool {
    review
        .request
        .approvers
        .iter()
        .filter_map(|m| m.parse::<Member>().ok())
        .any(|m| m.matches(who))
}

/// An approver may decide: in the approver list, and not part of the chain.
/// Anyone else learns nothing: not even that the review exists.
fn may_decide(review: &Review, who: &Principal) -> Result<(), ReviewError> {
    let id = review.request.id.clone();
    if in_chain(review, who) {
        return Err(ReviewError::OwnRequest {
            id,
            who: who.member(),
            chain: review.request.chain.join(" → "),
        });
    }
    if !is_approver(review, who) {
        return Err(ReviewError::NotFound(id));
    }
    Ok(())
}

fn pending(review: &Review, now: i64) -> Result<(), ReviewError> {
    match review.state_at(now) {
        State::Pending => Ok(()),
        State::Expired => Err(ReviewError::Expired(review.request.id.clone())),
        other => Err(ReviewError::Decided(review.request.id.clone(), other)),
    }
}

/// Records one approval; once the required count is stored, the first
/// votes in the store's order (time, then object name: the same for every
/// instance) decide. Every voter whose vote is among them gets the
/// decision; a vote stored after them is told the review is decided.
pub async fn approve(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    reason: &str,
    now: i64,
) -> Result<Review, ReviewError> {
    record_vote(store, id, who, reason, now).await?;
    settle(store, id, who, now).await
}

/// Stores `who`'s vote, once per identity, on a pending review.
pub async fn record_vote(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    reason: &str,
    now: i64,
) -> Result<(), ReviewError> {
    let review = load(store, id, now).await?;
    may_decide(&review, who)?;
    pending(&review, now)?;
    let me = who.member();
    let vote = Vote {
        by: me.clone(),
        id: Some(who.id()),
        reason: reason.to_string(),
        at: now,
    };
    if review.approvals.iter().any(|v| same_voter(v, &vote)) {
        return Err(ReviewError::AlreadyApproved(me));
    }
    let body = Bytes::from(serde_json::to_vec(&vote).unwrap_or_default());
    match store.create(&vote_key(id, &who.id()), body).await {
        Err(RecordError::Exists(_)) => Err(ReviewError::AlreadyApproved(me)),
        other => Ok(other?),
    }
}

/// After `who`'s vote is stored: decide if enough votes are, and tell
/// `who` where its vote stands.
pub async fn settle(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    now: i64,
) -> Result<Review, ReviewError> {
    let review = load(store, id, now).await?;
    let votes = distinct_votes(&review.approvals);
    let required = review.request.required.max(1);
    if votes.len() < required && review.decision.is_none() {
        return Ok(review);
    }
    if review.decision.is_none() {
        // The decision is the deciding votes': their names, and the reason
        // of the one that completed the count.
        let deciding = &votes[..required];
        let decision = Decision {
            state: Outcome::Approved,
            by: deciding.iter().map(|v| v.by.clone()).collect(),
            reason: deciding
                .last()
                .map(|v| v.reason.clone())
                .unwrap_or_default(),
            at: now,
        };
        // Of instances racing, one creates it; the others' decisions are
        // the same votes, or they lose to it: either way, read it back.
        create_decision(store, id, &decision).await?;
    }
    let review = load(store, id, now).await?;
    let me = who.member();
    match &review.decision {
        Some(d)
            if d.state == Outcome::Approved && d.by.iter().any(|b| b.eq_ignore_ascii_case(&me)) =>
        {
            Ok(review)
        }
        Some(_) => Err(ReviewError::Decided(id.to_string(), review.state)),
        None => Ok(review),
    }
}

pub async fn deny(
    store: &dyn ObjectStore,
    id: &str,
    who: &Principal,
    reason: &str,
    now: i64,
) -> Result<Review, ReviewError> {
    let review = load(store, id, now).await?;
    may_decide(&review, who)?;
    pending(&review, now)?;
    let decision = Decision {
        state: Outcome::Denied,
        by: vec![who.member()],
        reason: reason.to_string(),
        at: now,
    };
    decide(store, id, &decision).await?;
    load(store, id, now).await
}

/// Creates the decision; Err(Decided) when another was there first.
async fn decide(store: &dyn ObjectStore, id: &str, d: &Decision) -> Result<(), ReviewError> {
    if create_decision(store, id, d).await? {
        return Ok(());
    }
    let state = load(store, id, d.at).await?.state;
    Err(ReviewError::Decided(id.to_string(), state))
}

/// Whether this call created the decision (false: one already existed).
async fn create_decision(
    store: &dyn ObjectStore,
    id: &str,
    d: &Decision,
) -> Result<bool, ReviewError> {
    let body = Bytes::from(serde_json::to_vec(d).unwrap_or_default());
    match store.create(&key(id, "decision.json"), body).await {
        Ok(()) => Ok(true),
        Err(RecordError::Exists(_)) => Ok(false),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(by: &str, id: Option<&str>) -> Vote {
        Vote {
            by: by.into(),
            id: id.map(str::to_string),
            reason: String::new(),
            at: 0,
        }
    }

    fn who(email: Option<&str>, sub: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: sub.into(),
            email: email.map(str::to_string),
            issuer: "https://idp.example".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    fn review(chain: &[&Principal]) -> Review {
        Review {
            request: Request {
                id: "r1".into(),
                audit_id: "a".into(),
                created: 0,
                expires: 100,
                chain: chain.iter().map(|p| p.member()).collect(),
                chain_ids: chain.iter().map(|p| p.id()).collect(),
                connection: "pg".into(),
                rule: "delete".into(),
                statement: "delete".into(),
                statement_sha256: String::new(),
                approvers: vec!["group:dba@example.com".into()],
                required: 2,
                window_secs: None,
            },
            approvals: Vec::new(),
            decision: None,
            used: None,
            state: State::Pending,
        }
    }

    #[test]
    fn one_vote_per_identity_whatever_the_name() {
        let votes = [
            vote("user:bob@example.com", Some("principal://i/subject/bob")),
            vote("subject:bob", Some("principal://i/subject/bob")),
            vote("user:BOB@example.com", None),
            vote("user:dave@example.com", Some("principal://i/subject/dave")),
        ];
        let counted: Vec<&str> = distinct_votes(&votes)
            .iter()
            .map(|v| v.by.as_str())
            .collect();
        assert_eq!(
            counted,
            vec!["user:bob@example.com", "user:dave@example.com"]
        );
    }

    #[test]
    fn the_chain_is_matched_by_identity_and_outsiders_learn_nothing() {
        let alice = who(Some("alice@example.com"), "alice-uid", &["dba@example.com"]);
        let alice_bare = who(None, "alice-uid", &["dba@example.com"]);
        let r = review(&[&alice]);
        assert!(matches!(
            may_decide(&r, &alice_bare),
            Err(ReviewError::OwnRequest { .. })
        ));
        let carol = who(Some("carol@example.com"), "carol-uid", &[]);
        assert!(matches!(
            may_decide(&r, &carol),
            Err(ReviewError::NotFound(_))
        ));
        let bob = who(Some("bob@example.com"), "bob-uid", &["dba@example.com"]);
        assert!(may_decide(&r, &bob).is_ok());
    }

    #[test]
    fn reasons_are_printable_text() {
        for bad in ["", " ", "\u{1}\u{7}", "ok\nforged line", "\u{1b}[2K"] {
            assert!(check_reason(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_reason("", false).is_ok());
        assert!(check_reason("\t", false).is_err());
        assert!(check_reason("ticket 42 — ok", true).is_ok());
        assert!(check_reason(&"x".repeat(2001), true).is_err());
    }
}
