//! The review state machine: pending → approved (→ used, or expired when a
//! window or the single-use lifetime ends), pending → denied, pending →
//! expired; and what `covers` says in each state.

use super::review::*;

fn request(window: Option<u64>) -> Request {
    Request {
        id: "r1".into(),
        audit_id: "a1".into(),
        created: 1000,
        expires: 1100,
        chain: vec!["user:alice@example.com".into()],
        chain_ids: vec!["principal://i/subject/alice".into()],
        connection: "pg".into(),
        rule: "delete".into(),
        statement: "delete from t".into(),
        statement_sha256: statement_hash("delete from t"),
        approvers: vec!["user:bob@example.com".into()],
        required: 1,
        window_secs: window,
    }
}

fn review(window: Option<u64>) -> Review {
    Review {
        request: request(window),
        approvals: Vec::new(),
        decision: None,
        used: None,
        state: State::Pending,
    }
}

fn decided(mut r: Review, outcome: Outcome, at: i64) -> Review {
    r.decision = Some(Decision {
        state: outcome,
        by: vec!["user:bob@example.com".into()],
        reason: String::new(),
        at,
    });
    r
}

fn used(mut r: Review, at: i64) -> Review {
    r.used = Some(Use {
        audit_id: "a2".into(),
        at,
    });
    r
}

fn covers(r: &Review, hash: Option<&str>, now: i64) -> Result<(), ReviewError> {
    r.covers(
        &["user:alice@example.com".into()],
        &["principal://i/subject/alice".into()],
        "pg",
        hash,
        now,
    )
}

#[test]
fn pending_until_decided_then_expired_unanswered() {
    let r = review(None);
    assert_eq!(r.state_at(1000), State::Pending);
    assert_eq!(r.state_at(1099), State::Pending);
    assert_eq!(r.state_at(1100), State::Expired);
    assert!(matches!(
        covers(&r, None, 1050),
        Err(ReviewError::NotApproved(_, State::Pending))
    ));
    assert!(matches!(
        covers(&r, None, 1100),
        Err(ReviewError::NotApproved(_, State::Expired))
    ));
}

#[test]
fn a_single_use_approval_lasts_as_long_as_the_review_could_wait_and_is_used_once() {
    let r = decided(review(None), Outcome::Approved, 1050);
    assert_eq!(r.state_at(1050), State::Approved);
    // approval_expires (100 s) after the decision.
    assert_eq!(r.state_at(1149), State::Approved);
    assert_eq!(r.state_at(1150), State::Expired);
    let hash = statement_hash("delete from t");
    assert!(covers(&r, Some(&hash), 1060).is_ok());
    let other = statement_hash("delete from t where true");
    assert!(matches!(
        covers(&r, Some(&other), 1060),
        Err(ReviewError::Mismatch { .. })
    ));
    let r = used(r, 1070);
    assert_eq!(r.state_at(1071), State::Used);
    assert!(matches!(
        covers(&r, Some(&hash), 1071),
        Err(ReviewError::Used(_))
    ));
}

#[test]
fn a_window_approval_covers_any_statement_until_the_window_ends() {
    let r = used(decided(review(Some(600)), Outcome::Approved, 1050), 1060);
    // Use does not end a window.
    assert_eq!(r.state_at(1500), State::Approved);
    assert!(covers(&r, Some(&statement_hash("anything")), 1500).is_ok());
    assert_eq!(r.state_at(1650), State::Expired);
    assert!(matches!(
        covers(&r, None, 1650),
        Err(ReviewError::NotApproved(_, State::Expired))
    ));
}

#[test]
fn denied_is_final() {
    let r = decided(review(None), Outcome::Denied, 1050);
    for t in [1050, 1099, 5000] {
        assert_eq!(r.state_at(t), State::Denied);
    }
    assert!(matches!(
        covers(&r, None, 1060),
        Err(ReviewError::NotApproved(_, State::Denied))
    ));
}

#[test]
fn an_approval_covers_only_its_chain_and_connection() {
    let r = decided(review(None), Outcome::Approved, 1050);
    let other_chain = r.covers(&["user:mallory@example.com".into()], &[], "pg", None, 1060);
    assert!(matches!(other_chain, Err(ReviewError::Mismatch { .. })));
    let same_name_other_identity = r.covers(
        &["user:alice@example.com".into()],
        &["principal://other/subject/alice".into()],
        "pg",
        None,
        1060,
    );
    assert!(matches!(
        same_name_other_identity,
        Err(ReviewError::Mismatch { .. })
    ));
    let other_connection = r.covers(
        &["user:alice@example.com".into()],
        &["principal://i/subject/alice".into()],
        "prod",
        None,
        1060,
    );
    assert!(matches!(
        other_connection,
        Err(ReviewError::Mismatch { .. })
    ));
}

#[test]
fn states_are_stored_as_lowercase_words() {
    for (s, word) in [
        (State::Pending, "pending"),
        (State::Approved, "approved"),
        (State::Denied, "denied"),
        (State::Expired, "expired"),
        (State::Used, "used"),
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(word));
        assert_eq!(s.to_string(), word);
    }
    let d: Decision =
        serde_json::from_str(r#"{"state":"denied","by":[],"reason":"","at":1}"#).unwrap();
    assert_eq!(d.state, Outcome::Denied);
}

fn voter(name: &str) -> crate::identity::Principal {
    crate::identity::Principal {
        subject: format!("{name}-uid"),
        email: Some(format!("{name}@example.com")),
        issuer: "https://idp.example".into(),
        groups: vec!["dba@example.com".into()],
        hd: None,
        groups_unresolved: None,
        workload: None,
    }
}

async fn stored(required: usize) -> crate::recording::store::MemStore {
    let store = crate::recording::store::MemStore::default();
    let mut req = request(None);
    req.approvers = vec!["group:dba@example.com".into()];
    req.required = required;
    req.expires = i64::MAX;
    create(&store, &req).await.unwrap();
    store
}

/// Two approvers whose votes are both stored before either decides (two
/// instances racing): with one vote required, the first stored decides
/// alone and the other is told the review is decided; `by` names only
/// the deciding vote.
#[tokio::test]
async fn racing_votes_one_required() {
    let store = stored(1).await;
    let (bob, dave) = (voter("bob"), voter("dave"));
    record_vote(&store, "r1", &bob, "", 1000).await.unwrap();
    record_vote(&store, "r1", &dave, "", 1000).await.unwrap();
    let a = settle(&store, "r1", &dave, 1000).await;
    let b = settle(&store, "r1", &bob, 1000).await;
    let ok: Vec<&Review> = [&a, &b]
        .into_iter()
        .filter_map(|r| r.as_ref().ok())
        .collect();
    assert_eq!(ok.len(), 1, "exactly one wins: {a:?} {b:?}");
    let by = &ok[0].decision.as_ref().unwrap().by;
    assert_eq!(by.len(), 1);
    let loser = if a.is_ok() { &b } else { &a };
    assert!(
        matches!(loser, Err(ReviewError::Decided(_, State::Approved))),
        "{loser:?}"
    );
    let winner = if a.is_ok() {
        "user:dave@example.com"
    } else {
        "user:bob@example.com"
    };
    assert_eq!(by, &vec![winner.to_string()]);
}

/// With two required, both recorded votes are needed: both voters get the
/// approved review, whichever instance creates the decision.
#[tokio::test]
async fn racing_votes_two_required() {
    let store = stored(2).await;
    let (bob, dave) = (voter("bob"), voter("dave"));
    record_vote(&store, "r1", &bob, "", 1000).await.unwrap();
    record_vote(&store, "r1", &dave, "", 1001).await.unwrap();
    let a = settle(&store, "r1", &dave, 1001).await.unwrap();
    let b = settle(&store, "r1", &bob, 1001).await.unwrap();
    for r in [&a, &b] {
        assert_eq!(r.state, State::Approved);
        let mut by = r.decision.as_ref().unwrap().by.clone();
        by.sort();
        assert_eq!(by, vec!["user:bob@example.com", "user:dave@example.com"]);
    }
    // A third vote after the decision: 409.
    let carol = voter("carol");
    let late = approve(&store, "r1", &carol, "", 1002).await;
    assert!(
        matches!(late, Err(ReviewError::Decided(_, State::Approved))),
        "{late:?}"
    );
}

/// One vote of two: recorded, the review stays pending.
#[tokio::test]
async fn a_vote_short_of_the_count_is_recorded() {
    let store = stored(2).await;
    let r = approve(&store, "r1", &voter("bob"), "", 1000)
        .await
        .unwrap();
    assert_eq!(r.state, State::Pending);
    assert_eq!(r.approvals.len(), 1);
    let again = approve(&store, "r1", &voter("bob"), "", 1001).await;
    assert!(matches!(again, Err(ReviewError::AlreadyApproved(_))));
}

#[test]
fn a_review_stored_with_a_direct_caller_twice_still_covers_that_caller() {
    let mut r = decided(review(None), Outcome::Approved, 1050);
    r.request.chain = vec![
        "user:alice@example.com".into(),
        "user:alice@example.com".into(),
    ];
    r.request.chain_ids = vec![
        "principal://i/subject/alice".into(),
        "principal://i/subject/alice".into(),
    ];
    assert!(covers(&r, None, 1060).is_ok());
}
