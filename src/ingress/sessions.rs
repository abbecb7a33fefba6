//! `/v1/sessions`: recorded sessions for reviewers. Auditors and admins
//! (`[identity] auditors`, `admins`) read every recording; anyone else
//! only its own, matched by identity (`Principal::id()`), never by name.
//! Reading a recording is itself recorded.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::gateway::Gateway;
use super::token::{bad, forbidden, unavailable};
use super::{admit, new_audit_id, with_audit, ApiError};
use crate::config::IdentityConfig;
use crate::identity::Principal;
use crate::policy::Member;
use crate::recording::detail;
use crate::recording::sessions::{self as listing, Cut, Filter};
use crate::recording::verify::Fetched;
use crate::recording::{self, asciicast, Event, EventBody, RecordError};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Each day back is one listing of the store: bounded for callers of the API.
const MAX_DAYS_BACK: i64 = 366;

/// Which recordings a caller may read.
#[derive(Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Only the sessions of this identity (`Principal::id()`).
    Own(String),
}

pub fn scope(identity: &IdentityConfig, who: &Principal) -> Scope {
    let mut readers = identity
        .admins
        .iter()
        .chain(&identity.auditors)
        .filter_map(|m| m.get_ref().parse::<Member>().ok());
    if readers.any(|m| m.matches(who)) {
        Scope::All
    } else {
        Scope::Own(who.id())
    }
}

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    since: Option<String>,
    principal: Option<String>,
    connection: Option<String>,
    mode: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
}

/// The authenticated, unrevoked caller and what it may read.
async fn reader(
    gw: &Gateway,
    headers: &HeaderMap,
    client: &str,
    audit_id: &str,
) -> Result<(Principal, Scope), ApiError> {
    let who = admit::authenticate(gw, headers, audit_id, client).await?;
    let revoked = gw
        .revocations
        .is_revoked(gw.recorder.store.as_ref(), &who.member(), Some(&who.id()))
        .await
        .map_err(|e| unavailable(e, audit_id))?;
    if revoked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "revoked",
            format!("{} is revoked, so it may not read recordings", who.member()),
            audit_id,
        ));
    }
    let scope = scope(&gw.config.identity, &who);
    Ok((who, scope))
}

fn store_error(e: RecordError, audit_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the recording store cannot be read: {e}"),
        audit_id,
    )
}

fn answer(audit_id: &str, done: Result<Response, ApiError>) -> Response {
    match done {
        Ok(r) => with_audit(audit_id, r),
        Err(e) => e.at(audit_id).into_response(),
    }
}

/// The listing a query asks for, as `scope` narrows it; why not, if it is malformed.
pub fn filter<'a>(
    q: &'a ListQuery,
    scope: &'a Scope,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Filter<'a>, String> {
    let since = q.since.as_deref().unwrap_or("24h");
    let since = listing::parse_since(since, now).ok_or_else(|| {
        format!("since {since:?} is not a duration (\"24h\", \"7d\") or a date/time (\"2026-11-30\", RFC 3339)")
    })?;
    if since < now - chrono::Duration::days(MAX_DAYS_BACK) {
        return Err(format!("since reaches back at most {MAX_DAYS_BACK} days here; `custody sessions --store` lists older sessions"));
    }
    if let Some(t) = &q.page_token {
        recording::store::check_id(t).map_err(|e| e.to_string())?;
        // The walk starts at the token's day and steps back a day per store
        // listing: a token from the far future would walk for years.
        let at = uuid::Uuid::parse_str(t)
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|ts| ts.to_unix().0 as i64)
            .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0));
        match at {
            Some(at) if at >= since && at <= now + chrono::Duration::days(1) => {}
            _ => return Err(format!("page_token {t:?} is not a next_page_token of this listing (an audit id between since and now)")),
        }
    }
    Ok(Filter {
        since,
        principal: q.principal.as_deref(),
        connection: q.connection.as_deref(),
        mode: q.mode.as_deref(),
        outcome: q.outcome.as_deref(),
        owner: match scope {
            Scope::All => None,
            Scope::Own(id) => Some(id),
        },
        before: q.page_token.as_deref(),
        limit: q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    })
}

/// `GET /v1/sessions`: newest first, filtered, one page at a time.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let (who, scope) = reader(&gw, &headers, &peer.to_string(), &audit_id).await?;
        let Query(q) = query.map_err(|e| bad(e.body_text(), &audit_id))?;
        let filter = filter(&q, &scope, chrono::Utc::now()).map_err(|e| bad(e, &audit_id))?;
        let found = listing::list(gw.recorder.store.as_ref(), &filter)
            .await
            .map_err(|e| store_error(e, &audit_id))?;
        // Who looked for what: listing shows principals, connections and
        // outcomes, so it is audited too (to the log; reads are recorded).
        tracing::info!(
            target: "custody::audit",
            audit_id,
            principal = %who.member(),
            all = scope == Scope::All,
            since = %filter.since,
            of_principal = ?filter.principal,
            connection = ?filter.connection,
            mode = ?filter.mode,
            outcome = ?filter.outcome,
            listed = found.sessions.len(),
            "recordings listed"
        );
        let total = match found.cut {
            Some(Cut::Of(n)) => Some(n),
            _ => None,
        };
        let body = json!({
            "sessions": found.sessions,
            "next_page_token": found.next_page(),
            "total": total,
            "all": scope == Scope::All,
        });
        Ok(Json(body).into_response())
    };
    answer(&audit_id, done.await)
}

/// The most of one recording the read API holds and serves.
const MAX_READ_BYTES: usize = 64 << 20;

/// A recording the caller may read, with its events; the read is audited.
async fn readable(
    gw: &Gateway,
    headers: &HeaderMap,
    client: &str,
    audit_id: &str,
    (id, view): (&str, &str),
) -> Result<(Fetched, Vec<Event>), ApiError> {
    let (who, scope) = reader(gw, headers, client, audit_id).await?;
    let own_only = || {
        forbidden(
            format!(
                "{} may read only its own sessions: it is not in [identity] auditors or admins",
                who.member()
            ),
            audit_id,
        )
    };
    // Whose it is is read from its first segment, before the rest is.
    let entitled = |first: &Fetched| match &scope {
        Scope::All => true,
        Scope::Own(me) => detail::owner(&detail::events(first)) == Some(me.as_str()),
    };
    let store = gw.recorder.store.as_ref();
    let rec = match recording::fetch_for(store, id, MAX_READ_BYTES, entitled).await {
        Ok(rec) => rec,
        Err(e @ RecordError::TooLarge(..)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                e.to_string(),
                audit_id,
            ))
        }
        Err(RecordError::BadId(_)) => {
            return Err(bad(format!("{id:?} is not an audit id"), audit_id))
        }
        // Others learn nothing, not even whether a recording exists.
        Err(RecordError::NotFound(_)) if scope != Scope::All => return Err(own_only()),
        Err(e @ RecordError::NotFound(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                e.to_string(),
                audit_id,
            ))
        }
        Err(e) => return Err(store_error(e, audit_id)),
    };
    let events = detail::events(&rec);
    if let Scope::Own(me) = &scope {
        if detail::owner(&events) != Some(me.as_str()) {
            return Err(own_only());
        }
    }
    let event = EventBody::RecordingRead {
        read_audit_id: id.to_string(),
        view: view.to_string(),
    };
    admit::audit(gw, audit_id, &who, client, "read", event).await?;
    tracing::info!(target: "custody::audit", audit_id, read_audit_id = id, principal = %who.member(), view, "recording read");
    Ok((rec, events))
}

/// `GET /v1/sessions/{audit_id}`: events, chain of custody and verify result.
pub async fn show(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let client = peer.to_string();
        let (rec, events) = readable(&gw, &headers, &client, &audit_id, (&id, "events")).await?;
        let key = gw.recorder.verifying_key();
        Ok(Json(detail::detail(&rec, key.as_ref(), events)).into_response())
    };
    answer(&audit_id, done.await)
}

/// `GET /v1/sessions/{audit_id}/asciicast`: an SSH terminal session as
/// asciicast v2; `x-custody-verify` says whether the recording verifies.
pub async fn cast(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit_id = new_audit_id();
    let done = async {
        let client = peer.to_string();
        let (rec, events) = readable(&gw, &headers, &client, &audit_id, (&id, "asciicast")).await?;
        if !asciicast::has_terminal(&events) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_terminal",
                format!("recording {id} holds no terminal (PTY) session to replay"),
                &audit_id,
            ));
        }
        let key = gw.recorder.verifying_key();
        let verdict = detail::verdict(&rec, key.as_ref());
        let headers = [
            (header::CONTENT_TYPE, "application/x-asciicast"),
            (
                header::HeaderName::from_static("x-custody-verify"),
                verdict.status,
            ),
        ];
        Ok((headers, asciicast::render(&events)).into_response())
    };
    answer(&audit_id, done.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(admins: &[&str], auditors: &[&str]) -> IdentityConfig {
        let list = |v: &[&str]| {
            v.iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "admins = [{}]\nauditors = [{}]",
            list(admins),
            list(auditors)
        );
        toml::from_str(&text).expect("identity config")
    }

    fn who(email: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: format!("sub-{email}"),
            email: Some(email.into()),
            issuer: "https://issuer.example.com".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    #[test]
    fn queries_become_filters_narrowed_to_the_scope() {
        let now = chrono::Utc::now();
        let q = ListQuery {
            mode: Some("exec".into()),
            limit: Some(10_000),
            ..Default::default()
        };
        let own = Scope::Own("principal://i/subject/a".into());
        let f = filter(&q, &own, now).expect("a filter");
        assert_eq!(f.owner, Some("principal://i/subject/a"));
        assert_eq!((f.mode, f.limit), (Some("exec"), MAX_LIMIT));
        assert_eq!(f.since, now - chrono::Duration::hours(24));
        assert_eq!(filter(&q, &Scope::All, now).map(|f| f.owner), Ok(None));
        for bad in [
            ListQuery {
                since: Some("soon".into()),
                ..Default::default()
            },
            ListQuery {
                since: Some("400d".into()),
                ..Default::default()
            },
            ListQuery {
                page_token: Some("../x".into()),
                ..Default::default()
            },
            // Year 10889: a walk of millions of days.
            ListQuery {
                page_token: Some("ffffffff-ffff-7fff-bfff-ffffffffffff".into()),
                ..Default::default()
            },
            // Before `since`, or no UUIDv7 at all.
            ListQuery {
                page_token: Some("00000000-0000-7000-8000-000000000000".into()),
                ..Default::default()
            },
            ListQuery {
                page_token: Some("not-a-uuid".into()),
                ..Default::default()
            },
        ] {
            assert!(filter(&bad, &Scope::All, now).is_err());
        }
    }

    #[test]
    fn a_next_page_token_of_now_is_accepted() {
        let now = chrono::Utc::now();
        let q = ListQuery {
            page_token: Some(uuid::Uuid::now_v7().to_string()),
            ..Default::default()
        };
        assert!(filter(&q, &Scope::All, now).is_ok());
    }

    #[test]
    fn auditors_and_admins_read_all_others_their_own() {
        let cfg = identity(&["user:root@example.com"], &["group:security@example.com"]);
        assert_eq!(scope(&cfg, &who("root@example.com", &[])), Scope::All);
        let sec = who("sam@example.com", &["security@example.com"]);
        assert_eq!(scope(&cfg, &sec), Scope::All);
        let alice = who("alice@example.com", &["sre@example.com"]);
        assert_eq!(scope(&cfg, &alice), Scope::Own(alice.id()));
    }
}
