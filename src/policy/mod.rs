//! Who may use which connection. `authorize` is a pure function: the relay
//! only starts with the `Permit` it returns, so no code path skips the check.

pub mod command;
pub mod decision;
#[cfg(test)]
mod decision_tests;
pub mod guardrails;
mod kinds;
pub mod review;
#[cfg(test)]
mod review_tests;
pub mod shell;
pub mod sqltext;
pub mod sqltree;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::ConnectionConfig;
use crate::identity::delegation::Chain;
use crate::identity::Principal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{0:?} is not an IAM member: write user:EMAIL, group:EMAIL, serviceAccount:EMAIL, domain:DOMAIN, principal://ISSUER/subject/SUB, principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/subject/SUB, principalSet://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/attribute.NAME/VALUE (or …/POOL/group/GROUP, …/POOL/*) or allAuthenticatedUsers")]
    BadMember(String),
    #[error("{principal} is not in the allow list of connection {connection}{}", unresolved_note(.unresolved.as_deref()))]
    NotAllowed {
        principal: String,
        connection: String,
        /// Why the principal's groups are unknown, when a group: member might have matched.
        unresolved: Option<String>,
    },
    #[error("connection {connection} refuses this chain of custody ({chain}): {reason}")]
    Chain {
        connection: String,
        chain: String,
        reason: String,
    },
}

/// An IAM-style member from an allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    User(String),
    ServiceAccount(String),
    Group(String),
    Domain(String),
    /// One identity: `principal://ISSUER/subject/SUB` (see `Principal::id`),
    /// or a federated workload `principal://iam.googleapis.com/POOL/subject/SUB`.
    Principal(String),
    /// Federated workloads: `principalSet://iam.googleapis.com/POOL/…`.
    Workload(crate::identity::workload::PoolSet),
    AllAuthenticatedUsers,
}

impl FromStr for Member {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "allAuthenticatedUsers" {
            return Ok(Member::AllAuthenticatedUsers);
        }
        use crate::identity::workload;
        // Subjects are case-sensitive: kept verbatim.
        if let Some((iss, sub)) = crate::identity::split_principal_id(s.trim()) {
            let pool_ok = match iss.strip_prefix(workload::IAM) {
                Some(rest) => rest
                    .strip_prefix('/')
                    .is_some_and(|pool| workload::check_pool(pool).is_ok()),
                None => true,
            };
            if sub.chars().any(char::is_control) || iss.chars().any(char::is_control) || !pool_ok {
                return Err(PolicyError::BadMember(s.to_string()));
            }
            return Ok(Member::Principal(s.trim().to_string()));
        }
        if s.trim().starts_with("principalSet://") {
            return workload::PoolSet::parse(s.trim())
                .map(Member::Workload)
                .ok_or_else(|| PolicyError::BadMember(s.to_string()));
        }
        let bad = || PolicyError::BadMember(s.to_string());
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        let value = value.trim().to_ascii_lowercase();
        let is_email = |v: &str| {
            v.split_once('@')
                .is_some_and(|(a, d)| !a.is_empty() && d.contains('.'))
        };
        match kind {
            "user" if is_email(&value) => Ok(Member::User(value)),
            "serviceAccount" if is_email(&value) => Ok(Member::ServiceAccount(value)),
            "group" if is_email(&value) => Ok(Member::Group(value)),
            "domain" if value.contains('.') && !value.contains('@') => Ok(Member::Domain(value)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(v) => write!(f, "user:{v}"),
            Member::ServiceAccount(v) => write!(f, "serviceAccount:{v}"),
            Member::Group(v) => write!(f, "group:{v}"),
            Member::Domain(v) => write!(f, "domain:{v}"),
            Member::Principal(id) => f.write_str(id),
            Member::Workload(set) => write!(f, "{set}"),
            Member::AllAuthenticatedUsers => f.write_str("allAuthenticatedUsers"),
        }
    }
}

impl Member {
    pub fn matches(&self, p: &Principal) -> bool {
        let email = p.email.as_deref();
        match self {
            Member::User(e) | Member::ServiceAccount(e) => email == Some(e.as_str()),
            Member::Group(g) => p.groups.iter().any(|x| x.eq_ignore_ascii_case(g)),
            Member::Domain(d) => {
                p.hd.as_deref() == Some(d.as_str())
                    || email
                        .and_then(|e| e.rsplit_once('@'))
                        .is_some_and(|(_, dom)| dom == d)
            }
            Member::Principal(id) => p.id() == *id,
            Member::Workload(set) => p.workload.as_ref().is_some_and(|w| set.matches(w)),
            Member::AllAuthenticatedUsers => true,
        }
    }
}

/// `; group membership could not be resolved: WHY`, or nothing.
pub fn unresolved_note(why: Option<&str>) -> String {
    why.map(|w| format!("; group membership could not be resolved: {w}"))
        .unwrap_or_default()
}

/// Why `p`'s groups are unknown, when `members` names a group (else None).
pub fn unresolved_groups<'a>(p: &'a Principal, members: &[Member]) -> Option<&'a str> {
    let groups = members.iter().any(|m| matches!(m, Member::Group(_)));
    p.groups_unresolved.as_deref().filter(|_| groups)
}

/// Proof that policy allowed this principal onto this connection.
#[derive(Debug, Clone)]
pub struct Permit {
    pub principal: Principal,
    pub connection: Arc<ConnectionConfig>,
    /// The allow-list entry that granted access, for the audit record.
    pub granted_by: String,
    /// On whose behalf: originator → hops → caller.
    pub chain: Chain,
}

pub fn may_use(principal: &Principal, conn: &ConnectionConfig) -> Option<Member> {
    conn.members().into_iter().find(|m| m.matches(principal))
}

/// The chain's rules for this connection: its delegation's connection
/// list, and the connection's `[connections.delegation]` policy. `now` in
/// Unix seconds.
pub fn check_chain(chain: &Chain, conn: &ConnectionConfig, now: i64) -> Result<(), PolicyError> {
    let refuse = |reason: String| PolicyError::Chain {
        connection: conn.name().to_string(),
        chain: chain.render(),
        reason,
    };
    if let Some(allowed) = &chain.connections {
        if !allowed.iter().any(|c| c == conn.name()) {
            return Err(refuse(format!(
                "the delegation covers only {}",
                allowed.join(", ")
            )));
        }
    }
    let Some(d) = &conn.delegation else {
        return Ok(());
    };
    let originators = d.originator_members();
    if !originators.is_empty() && !originators.iter().any(|m| m.matches(&chain.originator)) {
        return Err(refuse(format!(
            "originator {} is not among its originators{}",
            chain.originator.member(),
            unresolved_note(unresolved_groups(&chain.originator, &originators))
        )));
    }
    if let Some(max) = d.max_depth {
        if chain.depth() > max {
            return Err(refuse(format!(
                "{} hops exceed max_depth {max}",
                chain.depth()
            )));
        }
    }
    if let (Some(age), Some(orig)) = (d.max_age(), chain.orig_iat) {
        let limit = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        if now - orig > limit {
            return Err(refuse(format!(
                "the original delegation is {}s old, over max_age {}s",
                now - orig,
                limit
            )));
        }
    }
    // A hop is named by its member name or, as principal://, its identity.
    let hands = chain.hands();
    for v in &d.via {
        let want = v.get_ref();
        let passed = |(m, id): &(String, Option<String>)| {
            m.eq_ignore_ascii_case(want) || id.as_deref() == Some(want.as_str())
        };
        if !hands[1..].iter().any(passed) {
            return Err(refuse(format!("the chain must pass through {want}")));
        }
    }
    Ok(())
}

pub fn authorize(
    principal: &Principal,
    chain: &Chain,
    conn: &Arc<ConnectionConfig>,
    now: i64,
) -> Result<Permit, PolicyError> {
    check_chain(chain, conn, now)?;
    let Some(member) = may_use(principal, conn) else {
        return Err(PolicyError::NotAllowed {
            principal: principal.member(),
            connection: conn.name().to_string(),
            unresolved: unresolved_groups(principal, &conn.members()).map(str::to_string),
        });
    };
    Ok(Permit {
        principal: principal.clone(),
        connection: conn.clone(),
        granted_by: member.to_string(),
        chain: chain.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn principal(email: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: "123".into(),
            email: Some(email.into()),
            issuer: "https://issuer".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    fn conn(allow: &str) -> Arc<ConnectionConfig> {
        let text = format!(
            "[identity]\naudiences=[\"a\"]\n[[identity.issuers]]\nissuer=\"https://i\"\n[[connections]]\nname=\"pg\"\nkind=\"postgres\"\nhost=\"h\"\ndatabase=\"d\"\nuser=\"u\"\npassword=\"env:P\"\nallow=[{allow}]\n"
        );
        Arc::new(Config::parse("t", &text).unwrap().connections[0].clone())
    }

    #[test]
    fn members_parse_and_match() {
        let alice = principal("alice@example.com", &["sre@example.com"]);
        for (m, ok) in [
            ("user:alice@example.com", true),
            ("user:Alice@Example.com", true),
            ("user:bob@example.com", false),
            ("group:sre@example.com", true),
            ("group:dba@example.com", false),
            ("domain:example.com", true),
            ("domain:other.com", false),
            ("serviceAccount:alice@example.com", true),
            ("allAuthenticatedUsers", true),
        ] {
            assert_eq!(m.parse::<Member>().unwrap().matches(&alice), ok, "{m}");
        }
        let id = "principal://issuer/subject/123";
        assert!(id.parse::<Member>().unwrap().matches(&alice));
        let bare = Principal {
            email: None,
            groups: Vec::new(),
            ..alice.clone()
        };
        assert!(id.parse::<Member>().unwrap().matches(&bare));
        assert!(!"principal://other/subject/123"
            .parse::<Member>()
            .unwrap()
            .matches(&alice));
        for bad in [
            "principal://issuer/subject/",
            "alice@example.com",
            "user:alice",
            "team:x@y.z",
            "domain:a@b.c",
        ] {
            assert!(bad.parse::<Member>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_match_hd_and_unresolved_groups_are_named() {
        let hd = Principal {
            hd: Some("example.com".into()),
            ..principal("alice@gmail.com", &[])
        };
        assert!("domain:example.com".parse::<Member>().unwrap().matches(&hd));
        assert!(!"domain:gmail.org".parse::<Member>().unwrap().matches(&hd));
        let c = conn("\"group:sre@example.com\"");
        let lost = Principal {
            groups_unresolved: Some("Cloud Identity answered 403".into()),
            ..principal("alice@example.com", &[])
        };
        let err = authorize(&lost, &Chain::direct(&lost), &c, 0).unwrap_err();
        assert_eq!(err.to_string(), "user:alice@example.com is not in the allow list of connection pg; group membership could not be resolved: Cloud Identity answered 403");
        // No group: member, so the groups could not have mattered.
        let c = conn("\"user:bob@example.com\"");
        let err = authorize(&lost, &Chain::direct(&lost), &c, 0).unwrap_err();
        assert!(!err.to_string().contains("resolved"), "{err}");
    }

    #[test]
    fn authorize_returns_permit_only_for_allowed() {
        let c = conn("\"group:sre@example.com\"");
        let alice = principal("alice@example.com", &["sre@example.com"]);
        let p = authorize(&alice, &Chain::direct(&alice), &c, 0).unwrap();
        assert_eq!(p.granted_by, "group:sre@example.com");
        let mallory = principal("mallory@example.com", &[]);
        let err = authorize(&mallory, &Chain::direct(&mallory), &c, 0).unwrap_err();
        assert!(matches!(err, PolicyError::NotAllowed { .. }));
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::config::Config;

    fn who(email: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: email.into(),
            email: Some(email.into()),
            issuer: "https://i".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    fn nightly() -> Arc<ConnectionConfig> {
        let text = "[identity]\naudiences=[\"a\"]\n[[identity.issuers]]\nissuer=\"https://i\"\n[[connections]]\nname=\"pg\"\nkind=\"postgres\"\nhost=\"h\"\ndatabase=\"d\"\nuser=\"u\"\npassword=\"env:P\"\nallow=[\"serviceAccount:job@p.iam.gserviceaccount.com\"]\n[connections.delegation]\noriginators=[\"group:eng@example.com\"]\nmax_depth=2\nmax_age=\"1h\"\nvia=[\"serviceAccount:ci@p.iam.gserviceaccount.com\"]\n";
        Arc::new(Config::parse("t", text).unwrap().connections[0].clone())
    }

    fn chain(hops: &[&str], orig_iat: i64) -> Chain {
        Chain {
            originator: who("alice@example.com", &["eng@example.com"]),
            hops: hops.iter().map(|h| h.to_string()).collect(),
            hop_ids: Vec::new(),
            caller: "serviceAccount:job@p.iam.gserviceaccount.com".into(),
            caller_id: "principal://i/subject/job@p.iam.gserviceaccount.com".into(),
            root_audit_id: Some("root".into()),
            orig_iat: Some(orig_iat),
            connections: None,
            exp: None,
        }
    }

    #[test]
    fn chains_are_checked_against_the_connection() {
        let c = nightly();
        let job = who("job@p.iam.gserviceaccount.com", &[]);
        let ci = "serviceAccount:ci@p.iam.gserviceaccount.com";
        assert!(authorize(&job, &chain(&[ci], 1000), &c, 1000 + 3599).is_ok());
        let refused = |ch: &Chain, now| match authorize(&job, ch, &c, now) {
            Err(PolicyError::Chain { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(refused(&chain(&[ci], 1000), 1000 + 3601).contains("max_age"));
        assert!(refused(&chain(&[], 1000), 1000).contains("must pass through"));
        assert!(refused(&chain(&[ci, "user:x@example.com"], 1000), 1000).contains("max_depth"));
        // A caller acting for itself is a chain of one: it must be an originator.
        assert!(refused(&Chain::direct(&job), 0).contains("not among its originators"));
        let mut narrowed = chain(&[ci], 1000);
        narrowed.connections = Some(vec!["other".into()]);
        assert!(refused(&narrowed, 1000).contains("covers only other"));
    }
}
