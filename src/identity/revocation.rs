//! Revocation records live in the recording store (`_revocations/NAME`, NAME
//! the percent-encoded principal), so every stateless instance agrees; each
//! instance rereads the list at most every 5 s. A store it cannot read
//! refuses requests (fail closed), and live tunnels watch the list so a
//! revocation ends them too.
//!
//! Only what can be enforced is accepted: a person or workload, named by
//! email (`user:`, `serviceAccount:`), by subject at any configured issuer
//! (`subject:SUB`) or by subject at one issuer
//! (`principal://ISSUER/subject/SUB`). Groups and domains are refused:
//! membership is whatever the next token says, so revoking one could not
//! hold.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::identity::delegation::Chain;
use crate::identity::{issuer_key, split_principal_id};
use crate::policy::Member;
use crate::recording::{ObjectStore, RecordError};

const DIR: &str = "_revocations/";
/// How stale an instance's view of revocations may be.
pub const CACHE: Duration = Duration::from_secs(5);
/// Longest subject accepted in `subject:` and `principal://` names.
const MAX_SUBJECT: usize = 255;

const ACCEPTED: &str = "user:EMAIL, serviceAccount:EMAIL, subject:SUB (that subject at every configured issuer) or principal://ISSUER/subject/SUB (ISSUER is the issuer URL without https://)";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevokeError {
    #[error("{0:?} cannot be revoked: group and domain membership is whatever the next token says, so it cannot be enforced; revoke its members one by one or remove it from allow lists. Accepted: {ACCEPTED}")]
    Unenforceable(String),
    #[error("{0:?} is not a principal that can be revoked. Accepted: {ACCEPTED}")]
    Syntax(String),
    #[error("{0:?} names no configured issuer ([[identity.issuers]]: {1})")]
    UnknownIssuer(String, String),
}

/// A revoked principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// `user:EMAIL` or `serviceAccount:EMAIL`: every identity with that
    /// (verified, in-domain) email, whichever prefix its member name has.
    Email { member: String, email: String },
    /// `subject:SUB`: that subject at every configured issuer.
    Subject(String),
    /// `principal://ISSUER/subject/SUB`: one identity.
    Principal(String),
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revoked::Email { member, .. } => f.write_str(member),
            Revoked::Subject(s) => write!(f, "subject:{s}"),
            Revoked::Principal(id) => f.write_str(id),
        }
    }
}

fn subject_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT && !s.chars().any(char::is_control)
}

impl Revoked {
    /// Parses an admin's principal; `issuers` are the configured issuer
    /// URLs a `principal://` name must refer to (empty: any, for records).
    pub fn parse(s: &str, issuers: &[String]) -> Result<Revoked, RevokeError> {
        let s = s.trim();
        if let Some(sub) = s.strip_prefix("subject:") {
            return if subject_ok(sub) {
                Ok(Revoked::Subject(sub.to_string()))
            } else {
                Err(RevokeError::Syntax(s.to_string()))
            };
        }
        if s.starts_with("principal://") {
            let (iss, sub) = split_principal_id(s).ok_or_else(|| RevokeError::Syntax(s.into()))?;
            if !subject_ok(sub) || iss.chars().any(char::is_control) {
                return Err(RevokeError::Syntax(s.to_string()));
            }
            if !issuers.is_empty() && !issuers.iter().any(|i| issuer_key(i) == iss) {
                let known: Vec<&str> = issuers.iter().map(|i| issuer_key(i)).collect();
                return Err(RevokeError::UnknownIssuer(s.into(), known.join(", ")));
            }
            return Ok(Revoked::Principal(s.to_string()));
        }
        match s.parse::<Member>() {
            Ok(m @ (Member::User(_) | Member::ServiceAccount(_))) => {
                let member = m.to_string();
                let email = member
                    .split_once(':')
                    .map(|(_, e)| e.to_string())
                    .unwrap_or_default();
                Ok(Revoked::Email { member, email })
            }
            Ok(_) => Err(RevokeError::Unenforceable(s.to_string())),
            Err(_) if s.starts_with("group:") || s.starts_with("domain:") => {
                Err(RevokeError::Unenforceable(s.to_string()))
            }
            Err(_) => Err(RevokeError::Syntax(s.to_string())),
        }
    }

    /// Whether this revocation covers a hand of a chain: its member name
    /// and, when known, its identity.
    pub fn covers(&self, member: &str, id: Option<&str>) -> bool {
        match self {
            Revoked::Email { email, .. } => member
                .split_once(':')
                .filter(|(kind, _)| *kind == "user" || *kind == "serviceAccount")
                .is_some_and(|(_, e)| e.eq_ignore_ascii_case(email)),
            Revoked::Subject(sub) => {
                member.strip_prefix("subject:") == Some(sub.as_str())
                    || id
                        .and_then(split_principal_id)
                        .is_some_and(|(_, s)| s == sub)
            }
            Revoked::Principal(p) => id == Some(p.as_str()),
        }
    }
}

/// The object name of a record: the principal percent-encoded, so no
/// principal can name a path (`/`, `..`) or anything but one object.
pub fn object_name(principal: &str) -> String {
    let mut out = String::from(DIR);
    for b in principal.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses `object_name`; names written before encoding read as themselves.
fn decode(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first hand of `chain` a revocation in `set` covers, as its member name.
pub fn first_in(set: &HashSet<Revoked>, chain: &Chain) -> Option<String> {
    chain
        .hands()
        .into_iter()
        .find(|(m, id)| set.iter().any(|r| r.covers(m, id.as_deref())))
        .map(|(m, _)| m)
}

#[derive(Default)]
pub struct Revocations {
    cache: tokio::sync::Mutex<Option<(Instant, HashSet<Revoked>)>>,
    /// Wakes this instance's tunnel watchers when it writes a revocation.
    written: tokio::sync::Notify,
}

impl Revocations {
    /// Revoked principals, at most `CACHE` old, and when they were read.
    async fn read(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<(Instant, HashSet<Revoked>), RecordError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, set)) = cache.as_ref() {
            if at.elapsed() < CACHE {
                return Ok((*at, set.clone()));
            }
        }
        let mut set = HashSet::new();
        for key in store.list(DIR).await? {
            let Some(name) = key.strip_prefix(DIR) else {
                continue;
            };
            match Revoked::parse(&decode(name), &[]) {
                Ok(r) => {
                    set.insert(r);
                }
                // Records of groups or domains were never enforceable.
                Err(e) => tracing::warn!(object = %key, error = %e, "revocation record ignored"),
            }
        }
        let at = Instant::now();
        *cache = Some((at, set.clone()));
        Ok((at, set))
    }

    pub async fn current(&self, store: &dyn ObjectStore) -> Result<HashSet<Revoked>, RecordError> {
        Ok(self.read(store).await?.1)
    }

    /// The first revoked hand of `chain` (originator, hops, caller), if any.
    pub async fn first_revoked(
        &self,
        store: &dyn ObjectStore,
        chain: &Chain,
    ) -> Result<Option<String>, RecordError> {
        Ok(first_in(&self.current(store).await?, chain))
    }

    /// Whether one hand (member name, identity) is revoked.
    pub async fn is_revoked(
        &self,
        store: &dyn ObjectStore,
        member: &str,
        id: Option<&str>,
    ) -> Result<bool, RecordError> {
        let set = self.current(store).await?;
        Ok(set.iter().any(|r| r.covers(member, id)))
    }

    /// Resolves, with the reason, once a hand of `chain` is revoked: within
    /// `CACHE` of a revocation written anywhere, at once for one written by
    /// this instance. A store that cannot be read is retried: the session's
    /// recording (same store) ends it if the store is really gone.
    pub async fn until_revoked(&self, store: &dyn ObjectStore, chain: &Chain) -> String {
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let next = match self.read(store).await {
                Ok((at, set)) => {
                    if let Some(m) = first_in(&set, chain) {
                        return format!(
                            "{m} was revoked, so this session under the chain {} has ended",
                            chain.render()
                        );
                    }
                    at + CACHE
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocations cannot be read; live sessions keep running until they can");
                    Instant::now() + CACHE / 5
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = &mut written => {}
            }
        }
    }

    /// Writes the record; false when the principal was already revoked.
    pub async fn revoke(
        &self,
        store: &dyn ObjectStore,
        principal: &Revoked,
        record: &serde_json::Value,
    ) -> Result<bool, RecordError> {
        let key = object_name(&principal.to_string());
        let created = match store.create(&key, Bytes::from(record.to_string())).await {
            Ok(()) => true,
            Err(RecordError::Exists(_)) => false,
            Err(e) => return Err(e),
        };
        *self.cache.lock().await = None;
        self.written.notify_waiters();
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Principal;

    fn person(issuer: &str, email: Option<&str>) -> Principal {
        Principal {
            subject: "alice-uid".into(),
            email: email.map(str::to_string),
            issuer: issuer.into(),
            groups: vec!["dba@example.com".into()],
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    fn revoked(s: &str) -> HashSet<Revoked> {
        [Revoked::parse(s, &["https://idp.example".into()]).unwrap()].into()
    }

    #[test]
    fn only_enforceable_principals_are_accepted() {
        let issuers = ["https://idp.example".to_string()];
        for s in [
            "group:dba@example.com",
            "domain:example.com",
            "allAuthenticatedUsers",
        ] {
            assert!(
                matches!(
                    Revoked::parse(s, &issuers),
                    Err(RevokeError::Unenforceable(_))
                ),
                "{s}"
            );
        }
        for s in [
            "subject:",
            "alice",
            "user:alice",
            "principal://idp.example/x",
            "subject:a\nb",
        ] {
            assert!(
                matches!(Revoked::parse(s, &issuers), Err(RevokeError::Syntax(_))),
                "{s}"
            );
        }
        assert!(matches!(
            Revoked::parse("principal://other.example/subject/a", &issuers),
            Err(RevokeError::UnknownIssuer(..))
        ));
        let r = Revoked::parse("user:Alice@Example.com", &issuers).unwrap();
        assert_eq!(r.to_string(), "user:alice@example.com");
        let r = Revoked::parse("principal://idp.example/subject/Alice-UID", &issuers).unwrap();
        assert_eq!(r.to_string(), "principal://idp.example/subject/Alice-UID");
    }

    #[test]
    fn a_revocation_covers_every_token_of_the_identity() {
        let with_email = Chain::direct(&person("https://idp.example", Some("alice@example.com")));
        let without = Chain::direct(&person("https://idp.example", None));
        let elsewhere = Chain::direct(&person("https://partner.example", None));
        let by_id = revoked("principal://idp.example/subject/alice-uid");
        assert!(first_in(&by_id, &with_email).is_some());
        assert!(first_in(&by_id, &without).is_some());
        assert!(first_in(&by_id, &elsewhere).is_none());
        let by_sub = revoked("subject:alice-uid");
        assert!(first_in(&by_sub, &with_email).is_some());
        assert!(first_in(&by_sub, &elsewhere).is_some());
        let by_email = revoked("user:alice@example.com");
        assert!(first_in(&by_email, &with_email).is_some());
        assert!(first_in(&by_email, &without).is_none());
        // A hop known only by its member name is still matched by it.
        let mut chain = Chain::direct(&person("https://idp.example", Some("bob@example.com")));
        chain.hops = vec!["serviceAccount:ci@p.iam.gserviceaccount.com".into()];
        let sa = revoked("serviceAccount:ci@p.iam.gserviceaccount.com");
        assert_eq!(
            first_in(&sa, &chain).as_deref(),
            Some("serviceAccount:ci@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn object_names_stay_one_object() {
        let name = object_name("user:a/../../../../tmp/x@y");
        assert_eq!(
            name,
            "_revocations/user%3Aa%2F..%2F..%2F..%2F..%2Ftmp%2Fx@y"
        );
        assert_eq!(name.matches('/').count(), 1);
        for p in [
            "user:alice@example.com",
            "principal://idp.example/subject/a b%2F",
        ] {
            let n = object_name(p);
            assert_eq!(decode(n.strip_prefix(DIR).unwrap()), p);
        }
        // Records written before encoding read as themselves.
        assert_eq!(decode("user:old@example.com"), "user:old@example.com");
    }
}
