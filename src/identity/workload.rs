//! Workload Identity Federation principals, as IAM names them. A token
//! from an issuer configured with a `workload_identity_pool` becomes
//! `principal://iam.googleapis.com/POOL/subject/SUBJECT`, with attributes
//! computed by the issuer's `attribute_mapping`; allow lists match it by
//! that name or by `principalSet://iam.googleapis.com/POOL/attribute.NAME/VALUE`,
//! `…/POOL/group/GROUP` and `…/POOL/*`, IAM's exact syntax.
//!
//! Mappings are a subset of IAM's CEL: `assertion.CLAIM` and dotted paths
//! into nested claims (`assertion.a.b`). Anything else is refused when the
//! config is checked, so a mapping never means something other than it says.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub const IAM: &str = "iam.googleapis.com";
/// IAM's limits: subject bytes, custom attributes, attribute name length,
/// and all mapped values together.
const MAX_SUBJECT: usize = 127;
const MAX_ATTRIBUTES: usize = 50;
const MAX_NAME: usize = 100;
const MAX_MAPPED_BYTES: usize = 8192;
const MAX_GROUPS: usize = 500;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error("workload_identity_pool {0:?} must read projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL_ID (POOL_ID: 4 to 32 lowercase letters, digits or hyphens, not starting with gcp-)")]
    Pool(String),
    #[error("attribute_mapping key {0:?} must be google.subject, google.groups or attribute.NAME (NAME: up to 100 of a-z, 0-9, _)")]
    Key(String),
    #[error("attribute_mapping value {0:?} is not supported: use assertion.CLAIM or a dotted path such as assertion.a.b (claim names of letters, digits, _ and -)")]
    Expression(String),
    #[error("attribute_mapping has {0} custom attributes; IAM allows at most {MAX_ATTRIBUTES}")]
    TooMany(usize),
    #[error("the token has no string value for google.subject ({0})")]
    NoSubject(String),
    #[error("the token's google.subject is {0} bytes; IAM allows at most {MAX_SUBJECT}")]
    LongSubject(usize),
    #[error("the token's mapped attributes are {0} bytes together; IAM allows at most {MAX_MAPPED_BYTES}")]
    LongAttributes(usize),
    #[error("the token's {0} is not what the issuer's required_claims name")]
    Required(String),
}

/// `required_claims`: claims every token of the issuer must carry with
/// exactly these values (`"assertion.repository_owner_id" = "1234"`), what
/// IAM's attribute condition is for: on a multi-tenant issuer (GitHub,
/// GitLab.com) any tenant can mint a token for the gateway's audience.
pub fn parse_required(
    map: &BTreeMap<String, String>,
) -> Result<Vec<(Vec<String>, String)>, WorkloadError> {
    map.iter().map(|(k, v)| Ok((path(k)?, v.clone()))).collect()
}

pub fn check_required(
    required: &[(Vec<String>, String)],
    claims: &HashMap<String, serde_json::Value>,
) -> Result<(), WorkloadError> {
    for (p, want) in required {
        if lookup(claims, p).and_then(scalar).as_deref() != Some(want.as_str()) {
            return Err(WorkloadError::Required(format!(
                "assertion.{}",
                p.join(".")
            )));
        }
    }
    Ok(())
}

/// `projects/N/locations/global/workloadIdentityPools/POOL`, checked.
pub fn check_pool(pool: &str) -> Result<(), WorkloadError> {
    let bad = || WorkloadError::Pool(pool.to_string());
    let rest = pool.strip_prefix("projects/").ok_or_else(bad)?;
    let (number, rest) = rest.split_once('/').ok_or_else(bad)?;
    let id = rest
        .strip_prefix("locations/global/workloadIdentityPools/")
        .ok_or_else(bad)?;
    let id_ok = (4..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.starts_with("gcp-");
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || !id_ok {
        return Err(bad());
    }
    Ok(())
}

/// A parsed `attribute_mapping`: claim paths for the subject, the groups
/// and each custom attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    subject: Vec<String>,
    groups: Option<Vec<String>>,
    attributes: Vec<(String, Vec<String>)>,
}

fn path(expr: &str) -> Result<Vec<String>, WorkloadError> {
    let bad = || WorkloadError::Expression(expr.to_string());
    let rest = expr.trim().strip_prefix("assertion.").ok_or_else(bad)?;
    let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
    let part_ok = |p: &String| {
        !p.is_empty()
            && p.len() <= MAX_NAME
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if parts.is_empty() || parts.len() > 8 || !parts.iter().all(part_ok) {
        return Err(bad());
    }
    Ok(parts)
}

/// An attribute name IAM accepts: `[a-z0-9_]{1,100}`.
pub fn attribute_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Mapping {
    /// The issuer's mapping; without one, `google.subject = assertion.sub`
    /// (IAM's default for OIDC providers).
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Mapping, WorkloadError> {
        let mut m = Mapping {
            subject: vec!["sub".into()],
            groups: None,
            attributes: Vec::new(),
        };
        for (key, expr) in map {
            match key.as_str() {
                "google.subject" => m.subject = path(expr)?,
                "google.groups" => m.groups = Some(path(expr)?),
                k => match k.strip_prefix("attribute.") {
                    Some(name) if attribute_name_ok(name) => {
                        m.attributes.push((name.to_string(), path(expr)?))
                    }
                    _ => return Err(WorkloadError::Key(key.clone())),
                },
            }
        }
        if m.attributes.len() > MAX_ATTRIBUTES {
            return Err(WorkloadError::TooMany(m.attributes.len()));
        }
        Ok(m)
    }

    /// The subject and attributes of a verified token's claims.
    pub fn apply(
        &self,
        claims: &HashMap<String, serde_json::Value>,
    ) -> Result<Mapped, WorkloadError> {
        let subject = lookup(claims, &self.subject)
            .and_then(scalar)
            .ok_or_else(|| {
                WorkloadError::NoSubject(format!("assertion.{}", self.subject.join(".")))
            })?;
        if subject.len() > MAX_SUBJECT {
            return Err(WorkloadError::LongSubject(subject.len()));
        }
        let mut attributes = BTreeMap::new();
        for (name, p) in &self.attributes {
            if let Some(v) = lookup(claims, p).and_then(scalar) {
                attributes.insert(name.clone(), v);
            }
        }
        let groups: Vec<String> = match self.groups.as_ref().and_then(|p| lookup(claims, p)) {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(scalar).take(MAX_GROUPS).collect()
            }
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        };
        let size = subject.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + groups.iter().map(String::len).sum::<usize>();
        if size > MAX_MAPPED_BYTES {
            return Err(WorkloadError::LongAttributes(size));
        }
        Ok(Mapped {
            subject,
            attributes,
            groups,
        })
    }
}

/// What a mapping made of a token.
pub struct Mapped {
    pub subject: String,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
}

fn lookup<'a>(
    claims: &'a HashMap<String, serde_json::Value>,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.get(p)?;
    }
    Some(v)
}

/// Strings as they are; numbers and booleans as JSON writes them.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.chars().any(char::is_control) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A federated workload, as a token of a pool's issuer made it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// `projects/N/locations/global/workloadIdentityPools/POOL`.
    pub pool: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `principal://iam.googleapis.com/POOL/subject/SUBJECT`.
pub fn principal_id(pool: &str, subject: &str) -> String {
    format!("principal://{IAM}/{pool}/subject/{subject}")
}

/// A `principalSet://` member: every workload of a pool, or those with an
/// attribute value or in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSet {
    All {
        pool: String,
    },
    Attribute {
        pool: String,
        name: String,
        value: String,
    },
    Group {
        pool: String,
        group: String,
    },
}

impl PoolSet {
    /// IAM's syntax exactly; None when `s` is not a pool principalSet.
    pub fn parse(s: &str) -> Option<PoolSet> {
        let rest = s.strip_prefix("principalSet://")?.strip_prefix(IAM)?;
        let rest = rest.strip_prefix('/')?;
        // projects/N/locations/global/workloadIdentityPools/POOL/…
        let mut parts = rest.splitn(7, '/');
        let fixed: Vec<&str> = parts.by_ref().take(6).collect();
        let tail = parts.next()?;
        if fixed.len() != 6 {
            return None;
        }
        let pool = fixed.join("/");
        check_pool(&pool).ok()?;
        if tail == "*" {
            return Some(PoolSet::All { pool });
        }
        let (kind, value) = tail.split_once('/')?;
        if value.is_empty() || value.chars().any(char::is_control) {
            return None;
        }
        if kind == "group" {
            return Some(PoolSet::Group {
                pool,
                group: value.to_string(),
            });
        }
        let name = kind.strip_prefix("attribute.")?;
        attribute_name_ok(name).then(|| PoolSet::Attribute {
            pool,
            name: name.to_string(),
            value: value.to_string(),
        })
    }

    pub fn matches(&self, w: &Workload) -> bool {
        match self {
            PoolSet::All { pool } => w.pool == *pool,
            PoolSet::Attribute { pool, name, value } => {
                w.pool == *pool && w.attributes.get(name) == Some(value)
            }
            PoolSet::Group { pool, group } => {
                w.pool == *pool && w.groups.iter().any(|g| g == group)
            }
        }
    }
}

impl std::fmt::Display for PoolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolSet::All { pool } => write!(f, "principalSet://{IAM}/{pool}/*"),
            PoolSet::Attribute { pool, name, value } => {
                write!(f, "principalSet://{IAM}/{pool}/attribute.{name}/{value}")
            }
            PoolSet::Group { pool, group } => {
                write!(f, "principalSet://{IAM}/{pool}/group/{group}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "projects/123456789/locations/global/workloadIdentityPools/github";

    #[test]
    fn pools_are_checked_as_iam_names_them() {
        assert!(check_pool(POOL).is_ok());
        for bad in [
            "projects/abc/locations/global/workloadIdentityPools/github",
            "projects/1/locations/us/workloadIdentityPools/github",
            "projects/1/locations/global/workloadIdentityPools/gh",
            "projects/1/locations/global/workloadIdentityPools/GitHub",
            "projects/1/locations/global/workloadIdentityPools/gcp-pool",
            "projects/1/locations/global/workloadIdentityPools/github/x",
            "projects//locations/global/workloadIdentityPools/github",
        ] {
            assert!(check_pool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn principal_sets_parse_exactly() {
        let s = format!("principalSet://iam.googleapis.com/{POOL}/attribute.repository/my-org/app");
        assert_eq!(
            PoolSet::parse(&s),
            Some(PoolSet::Attribute {
                pool: POOL.into(),
                name: "repository".into(),
                value: "my-org/app".into()
            })
        );
        assert_eq!(PoolSet::parse(&s).unwrap().to_string(), s);
        let all = format!("principalSet://iam.googleapis.com/{POOL}/*");
        assert_eq!(
            PoolSet::parse(&all),
            Some(PoolSet::All { pool: POOL.into() })
        );
        let group = format!("principalSet://iam.googleapis.com/{POOL}/group/admins");
        assert!(matches!(
            PoolSet::parse(&group),
            Some(PoolSet::Group { .. })
        ));
        for bad in [
            format!("principalSet://iam.googleapis.com/{POOL}/attribute.Repo/x"),
            format!("principalSet://iam.googleapis.com/{POOL}/attribute.repository/"),
            format!("principalSet://iam.googleapis.com/{POOL}/attribute.repository"),
            format!("principalSet://iam.googleapis.com/{POOL}/subject/x"),
            format!("principalSet://iam.googleapis.com/{POOL}"),
            format!("principalSet://evil.example/{POOL}/*"),
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/x/*".into(),
        ] {
            assert_eq!(PoolSet::parse(&bad), None, "{bad}");
        }
    }

    fn claims(v: serde_json::Value) -> HashMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn mappings_take_claims_and_dotted_paths_only() {
        let map: BTreeMap<String, String> = [
            ("google.subject", "assertion.sub"),
            ("attribute.repository", "assertion.repository"),
            ("attribute.ref", "assertion.ref"),
            ("attribute.team", "assertion.ext.team"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let m = Mapping::parse(&map).unwrap();
        let got = m
            .apply(&claims(serde_json::json!({
                "sub": "repo:my-org/app:ref:refs/heads/main",
                "repository": "my-org/app",
                "ref": "refs/heads/main",
                "ext": {"team": "payments"},
            })))
            .unwrap();
        assert_eq!(got.subject, "repo:my-org/app:ref:refs/heads/main");
        assert_eq!(got.attributes["repository"], "my-org/app");
        assert_eq!(got.attributes["team"], "payments");
        for (k, v) in [
            ("attribute.Repo", "assertion.repository"),
            ("google.display_name", "assertion.name"),
            ("attribute.x", "assertion.a + assertion.b"),
            ("attribute.x", "assertion['a']"),
            ("attribute.x", "'constant'"),
        ] {
            let map = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(Mapping::parse(&map).is_err(), "{k} = {v}");
        }
        let none = Mapping::parse(&BTreeMap::new()).unwrap();
        assert!(matches!(
            none.apply(&claims(serde_json::json!({"iss": "x"}))),
            Err(WorkloadError::NoSubject(_))
        ));
        let long = "s".repeat(128);
        assert!(matches!(
            none.apply(&claims(serde_json::json!({"sub": long}))),
            Err(WorkloadError::LongSubject(128))
        ));
    }
}
