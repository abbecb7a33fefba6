//! Google Groups through the Cloud Identity API (`[identity.google_groups]`).
//! Google-issued ID tokens carry no groups claim, so for a listed issuer the
//! verifier asks Cloud Identity which groups (transitively) the principal's
//! verified email is in. A failed lookup fails closed: `group:` members match
//! nothing and the principal carries the reason for the refusal to name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::OnceCell;

use super::Principal;
use crate::config::GoogleGroupsConfig;
use crate::secrets::is_loopback_http;

/// Only discussion-forum groups (Google Groups) have email keys to match.
pub const DISCUSSION_FORUM: &str = "cloudidentity.googleapis.com/groups.discussion_forum";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-identity.groups.readonly";
/// The API's maximum page size: fewer round trips.
const PAGE_SIZE: &str = "1000";
/// Bounds on one principal's lookup: beyond them it fails (closed).
const MAX_PAGES: usize = 20;
const MAX_GROUPS: usize = 10_000;
const MAX_BODY: usize = 8 << 20;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A failure is retried soon: an outage must not outlive itself by minutes.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Principals cached at most; beyond it stale entries are dropped.
const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GroupsError {
    #[error("the token has no verified email to look up")]
    NoEmail,
    #[error("the email contains control characters and cannot be looked up")]
    BadEmail,
    #[error("no Google credentials ({0}); set GOOGLE_APPLICATION_CREDENTIALS or run on GCP")]
    Credentials(String),
    #[error("cannot get an access token for Cloud Identity: {0}")]
    Token(String),
    #[error("Cloud Identity did not answer: {0}")]
    Transport(String),
    #[error("Cloud Identity did not answer within {}s", LOOKUP_TIMEOUT.as_secs())]
    Timeout,
    #[error("Cloud Identity answered {status}{detail}")]
    Status { status: u16, detail: String },
    #[error("Cloud Identity's answer is malformed: {0}")]
    Malformed(String),
    #[error("the lookup exceeds its bounds: {0}")]
    TooLarge(String),
}

/// The CEL query for `email`'s groups. The email sits in a single-quoted
/// CEL string: backslash and quote are escaped, so no email can end the
/// string and add a clause; control characters are refused outright.
pub fn query(email: &str) -> Result<String, GroupsError> {
    if email.chars().any(char::is_control) {
        return Err(GroupsError::BadEmail);
    }
    let mut quoted = String::with_capacity(email.len() + 2);
    for ch in email.chars() {
        if ch == '\\' || ch == '\'' {
            quoted.push('\\');
        }
        quoted.push(ch);
    }
    Ok(format!(
        "member_key_id == '{quoted}' && '{DISCUSSION_FORUM}' in labels"
    ))
}

/// One page of a `searchTransitiveGroups` answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Each membership's `groupKey.id`, lowercased.
    pub groups: Vec<String>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    memberships: Vec<Relation>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Relation {
    group_key: Option<EntityKey>,
}

#[derive(Deserialize)]
struct EntityKey {
    id: Option<String>,
}

/// Parses one page (`memberships[].groupKey.id`, `nextPageToken`); other
/// fields (`group`, `displayName`, `roles`, …) are not needed to match.
pub fn parse_page(body: &[u8]) -> Result<Page, GroupsError> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| GroupsError::Malformed(e.to_string()))?;
    let groups = a
        .memberships
        .into_iter()
        .filter_map(|m| m.group_key?.id)
        .map(|id| id.to_ascii_lowercase())
        .collect();
    Ok(Page {
        groups,
        next: a.next_page_token.filter(|t| !t.is_empty()),
    })
}

/// What a refusing answer says: Google's `error.status` and `error.message`
/// (bounded, printable), and what to do about a 403.
pub fn error_detail(status: u16, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect::<String>()
    };
    let mut out = String::new();
    if let Some(s) = v["error"]["status"].as_str() {
        out.push_str(&format!(" {}", text(s)));
    }
    if let Some(m) = v["error"]["message"].as_str() {
        out.push_str(&format!(": {}", text(m)));
    }
    if status == 403 {
        out.push_str(" (the gateway's service account needs the Groups Reader admin role, and searchTransitiveGroups needs Workspace Enterprise or Cloud Identity Premium)");
    }
    out
}

type Outcome = (Instant, Result<Vec<String>, GroupsError>);

/// Resolves principals' groups: one lookup per principal at a time
/// (single-flight), answers cached for `cache_ttl`, failures for 5 s.
pub struct GroupResolver {
    http: reqwest::Client,
    endpoint: String,
    issuers: Vec<String>,
    ttl: Duration,
    flights: Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>,
    auth: OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
}

impl GroupResolver {
    pub fn new(cfg: &GoogleGroupsConfig) -> GroupResolver {
        GroupResolver {
            http: reqwest::Client::builder()
                .timeout(LOOKUP_TIMEOUT)
                // A redirect would carry the token elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            endpoint: cfg.endpoint.get_ref().trim_end_matches('/').to_string(),
            issuers: cfg
                .issuers
                .iter()
                .map(|i| i.get_ref().trim_end_matches('/').to_string())
                .collect(),
            ttl: cfg.cache_ttl,
            flights: Mutex::new(HashMap::new()),
            auth: OnceCell::new(),
        }
    }

    /// Fills `p.groups` when its issuer is listed and its token carried no
    /// groups; on failure records why in `p.groups_unresolved`.
    pub async fn resolve(&self, p: &mut Principal) {
        if !p.groups.is_empty()
            || !self
                .issuers
                .contains(&p.issuer.trim_end_matches('/').into())
        {
            return;
        }
        let result = match &p.email {
            Some(email) => self.groups(email).await,
            None => Err(GroupsError::NoEmail),
        };
        match result {
            Ok(groups) => {
                tracing::debug!(principal = %p.member(), groups = groups.len(), "groups resolved through Cloud Identity");
                p.groups = groups;
            }
            Err(e) => {
                tracing::warn!(target: "custody::audit", principal = %p.member(), issuer = %p.issuer, reason = %e, "group membership could not be resolved");
                p.groups_unresolved = Some(e.to_string());
            }
        }
    }

    /// `email`'s groups, from the cache or one shared lookup.
    pub async fn groups(&self, email: &str) -> Result<Vec<String>, GroupsError> {
        let key = email.to_ascii_lowercase();
        let flight = self.flight(&key);
        let (_, result) = flight
            .get_or_init(|| async {
                let r = match tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(&key)).await {
                    Ok(r) => r,
                    Err(_) => Err(GroupsError::Timeout),
                };
                (Instant::now(), r)
            })
            .await;
        result.clone()
    }

    /// The flight for `key`: the running or fresh one, else a new one.
    fn flight(&self, key: &str) -> Arc<OnceCell<Outcome>> {
        let fresh = |cell: &OnceCell<Outcome>| match cell.get() {
            None => true,
            Some((at, Ok(_))) => at.elapsed() < self.ttl,
            Some((at, Err(_))) => at.elapsed() < FAILURE_TTL,
        };
        let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = map.get(key).filter(|c| fresh(c)) {
            return cell.clone();
        }
        if map.len() >= MAX_CACHED {
            map.retain(|_, c| fresh(c));
            if map.len() >= MAX_CACHED {
                map.clear();
            }
        }
        let cell = Arc::new(OnceCell::new());
        map.insert(key.to_string(), cell.clone());
        cell
    }

    async fn lookup(&self, email: &str) -> Result<Vec<String>, GroupsError> {
        let q = query(email)?;
        let url = format!(
            "{}/v1/groups/-/memberships:searchTransitiveGroups",
            self.endpoint
        );
        let bearer = self.bearer().await?;
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req = self
                .http
                .get(&url)
                .query(&[("query", q.as_str()), ("pageSize", PAGE_SIZE)]);
            if let Some(t) = &token {
                req = req.query(&[("pageToken", t.as_str())]);
            }
            if let Some(b) = &bearer {
                req = req.bearer_auth(b);
            }
            let page = fetch_page(req).await?;
            groups.extend(page.groups);
            if groups.len() > MAX_GROUPS {
                return Err(GroupsError::TooLarge(format!(
                    "more than {MAX_GROUPS} groups"
                )));
            }
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(groups),
            }
        }
        Err(GroupsError::TooLarge(format!(
            "more than {MAX_PAGES} pages"
        )))
    }

    /// The access token to send; none to a plain-http loopback stand-in.
    async fn bearer(&self) -> Result<Option<String>, GroupsError> {
        if is_loopback_http(&self.endpoint) {
            return Ok(None);
        }
        let provider = self
            .auth
            .get_or_try_init(|| async { gcp_auth::provider().await })
            .await
            .map_err(|e| GroupsError::Credentials(e.to_string()))?;
        let token = provider
            .token(&[SCOPE])
            .await
            .map_err(|e| GroupsError::Token(e.to_string()))?;
        Ok(Some(token.as_str().to_string()))
    }
}

/// Sends one page request and reads at most `MAX_BODY` of its answer.
async fn fetch_page(req: reqwest::RequestBuilder) -> Result<Page, GroupsError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            GroupsError::Timeout
        } else {
            GroupsError::Transport(causes(&e.without_url()))
        }
    };
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(GroupsError::TooLarge(format!(
                "an answer over {} MiB",
                MAX_BODY >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !(200..300).contains(&status) {
        return Err(GroupsError::Status {
            status,
            detail: error_detail(status, &body),
        });
    }
    parse_page(&body)
}

/// An error and its causes, `a: b: c` (reqwest's own text is only the first).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        out.push_str(&format!(": {c}"));
        next = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_quotes_the_email() {
        assert_eq!(
            query("alice@example.com").unwrap(),
            "member_key_id == 'alice@example.com' && 'cloudidentity.googleapis.com/groups.discussion_forum' in labels"
        );
        // A quote cannot end the string and add a clause of its own.
        let q = query("o'brien' || true || 'x@example.com").unwrap();
        assert!(q.starts_with(r"member_key_id == 'o\'brien\' || true || \'x@example.com' && "));
        let q = query(r"a\'@example.com").unwrap();
        assert!(q.starts_with(r"member_key_id == 'a\\\'@example.com' && "));
        assert_eq!(query("a\n@example.com"), Err(GroupsError::BadEmail));
    }

    #[test]
    fn query_stays_one_string_literal() {
        // Unescaping the literal gives back exactly the email.
        for email in [
            "plain@example.com",
            "o'brien@example.com",
            r"x\\'y@z.example",
        ] {
            let q = query(email).unwrap();
            let lit = &q["member_key_id == '".len()..q.find("' && '").unwrap()];
            let mut out = String::new();
            let mut chars = lit.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().unwrap()),
                    '\'' => panic!("unescaped quote in {q}"),
                    c => out.push(c),
                }
            }
            assert_eq!(out, email);
        }
    }

    #[test]
    fn pages_parse_in_the_documented_shape() {
        let body = serde_json::json!({
            "memberships": [
                {"group": "groups/01abc", "groupKey": {"id": "SRE@example.com"}, "displayName": "SRE",
                 "roles": [{"role": "MEMBER"}], "relationType": "DIRECT", "labels": {DISCUSSION_FORUM: ""}},
                {"group": "groups/02def", "groupKey": {"id": "eng@example.com"}, "relationType": "INDIRECT"},
                {"group": "groups/03ghi"},
            ],
            "nextPageToken": "p2",
        });
        let page = parse_page(body.to_string().as_bytes()).unwrap();
        assert_eq!(page.groups, vec!["sre@example.com", "eng@example.com"]);
        assert_eq!(page.next.as_deref(), Some("p2"));
        assert_eq!(parse_page(b"{}").unwrap(), Page::default());
        let last = parse_page(br#"{"memberships": [], "nextPageToken": ""}"#).unwrap();
        assert_eq!(last.next, None);
        for bad in [
            &b"not json"[..],
            br#"{"memberships": {}}"#,
            br#"{"memberships": [{"groupKey": {"id": 7}}]}"#,
        ] {
            assert!(matches!(parse_page(bad), Err(GroupsError::Malformed(_))));
        }
    }

    fn resolver(endpoint: &str) -> GroupResolver {
        GroupResolver::new(&GoogleGroupsConfig {
            endpoint: toml::Spanned::new(0..0, endpoint.into()),
            cache_ttl: Duration::from_secs(300),
            issuers: vec![toml::Spanned::new(
                0..0,
                "https://accounts.google.com/".into(),
            )],
        })
    }

    fn who(issuer: &str, email: Option<&str>, groups: &[&str]) -> Principal {
        Principal {
            subject: "1".into(),
            email: email.map(str::to_string),
            issuer: issuer.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    #[tokio::test]
    async fn only_listed_issuers_without_groups_are_looked_up_and_failures_close() {
        // Nothing listens on port 9: any lookup would fail.
        let r = resolver("http://127.0.0.1:9");
        for mut p in [
            who("https://idp.example", Some("a@example.com"), &[]),
            who(
                "https://accounts.google.com",
                Some("a@example.com"),
                &["x@example.com"],
            ),
        ] {
            let before = p.clone();
            r.resolve(&mut p).await;
            assert_eq!(p, before, "no lookup");
        }
        let mut p = who("https://accounts.google.com", None, &[]);
        r.resolve(&mut p).await;
        assert_eq!(
            p.groups_unresolved.as_deref(),
            Some("the token has no verified email to look up")
        );
        let mut p = who("https://accounts.google.com", Some("a@example.com"), &[]);
        r.resolve(&mut p).await;
        let why = p.groups_unresolved.unwrap_or_default();
        assert!(
            why.starts_with("Cloud Identity did not answer: error sending request: "),
            "{why}"
        );
        assert!(p.groups.is_empty());
    }

    #[test]
    fn refusals_name_googles_reason() {
        let body = br#"{"error": {"code": 403, "message": "Permission denied\n for groups", "status": "PERMISSION_DENIED"}}"#;
        let d = error_detail(403, body);
        assert!(
            d.starts_with(" PERMISSION_DENIED: Permission denied for groups"),
            "{d}"
        );
        assert!(d.contains("Groups Reader"), "{d}");
        assert_eq!(error_detail(502, b"<html>"), "");
    }
}
