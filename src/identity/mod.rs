//! OIDC ID token verification against each configured issuer's JWKS.

pub mod delegation;
pub mod devissuer;
pub mod groups;
pub mod revocation;
pub mod workload;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::config::{IdentityConfig, IssuerConfig};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <OIDC ID token>`")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted (allowed: RS256, ES256)")]
    Algorithm(String),
    #[error("token issuer {0:?} is not configured in [[identity.issuers]]")]
    UnknownIssuer(String),
    #[error("token key id {0:?} is not in the issuer's JWKS")]
    UnknownKey(String),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("cannot fetch the issuer's keys from {url}: {why}")]
    Jwks { url: String, why: String },
}

/// The verified caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub email: Option<String>,
    pub issuer: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Google Workspace hosted domain (`hd`) of a verified token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
    /// Why `groups` could not be looked up (`[identity.google_groups]`):
    /// `group:` members then match nothing, and refusals say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_unresolved: Option<String>,
    /// Set for a token of an issuer with a `workload_identity_pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<workload::Workload>,
}

impl Principal {
    /// IAM-style name used in logs, recordings and refusals; a federated
    /// workload is named as IAM names it (`principal://iam.googleapis.com/…`).
    pub fn member(&self) -> String {
        if self.workload.is_some() {
            return self.id();
        }
        match &self.email {
            Some(e) if e.ends_with(".gserviceaccount.com") => format!("serviceAccount:{e}"),
            Some(e) => format!("user:{e}"),
            None => format!("subject:{}", self.subject),
        }
    }

    /// Who this is, whatever the token carried: issuer and subject, the
    /// only claims an IdP guarantees stable and unique together. Approvals,
    /// votes, self-approval checks and revocations compare this, so two
    /// tokens of one person (one without an email) stay one person.
    pub fn id(&self) -> String {
        match &self.workload {
            Some(w) => workload::principal_id(&w.pool, &self.subject),
            None => principal_id(&self.issuer, &self.subject),
        }
    }
}

/// `principal://ISSUER/subject/SUB`: ISSUER is the issuer URL without its
/// scheme and trailing slash (`accounts.google.com`), SUB the `sub` claim
/// verbatim.
pub fn principal_id(issuer: &str, subject: &str) -> String {
    format!("principal://{}/subject/{subject}", issuer_key(issuer))
}

/// The issuer as it appears in a `principal://` name.
pub fn issuer_key(issuer: &str) -> &str {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .unwrap_or(issuer);
    rest.trim_end_matches('/')
}

/// Splits `principal://ISSUER/subject/SUB` (the first `/subject/` ends
/// ISSUER); None when it is not that shape or either part is empty.
pub fn split_principal_id(s: &str) -> Option<(&str, &str)> {
    let (issuer, subject) = s.strip_prefix("principal://")?.split_once("/subject/")?;
    (!issuer.is_empty() && !subject.is_empty()).then_some((issuer, subject))
}

/// Groups an issuer may assert: with `email_domains` set, only groups named
/// `NAME@DOMAIN` in those domains (an issuer for partner.com must not make
/// anyone a member of group:dba@example.com). Returns (kept, dropped).
pub fn bound_groups(groups: Vec<String>, domains: &[String]) -> (Vec<String>, Vec<String>) {
    if domains.is_empty() {
        return (groups, Vec::new());
    }
    groups.into_iter().partition(|g| {
        g.rsplit_once('@')
            .is_some_and(|(_, d)| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    })
}

struct Issuer {
    cfg: IssuerConfig,
    /// Parsed `attribute_mapping` and `required_claims` of a pool's issuer
    /// (checked by `config check`; None when invalid, which refuses tokens).
    mapping: Option<workload::Mapping>,
    required: Option<Vec<(Vec<String>, String)>>,
    keys: RwLock<Keys>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

/// Unknown `kid`s trigger at most one JWKS refetch per issuer in this window.
const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// Keys are refreshed in the background of requests after this age.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

pub struct Verifier {
    issuers: Vec<Issuer>,
    audiences: Vec<String>,
    leeway: Duration,
    http: reqwest::Client,
    google_groups: Option<groups::GroupResolver>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    iat: Option<i64>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

impl Verifier {
    pub fn new(cfg: &IdentityConfig) -> Verifier {
        Verifier {
            issuers: cfg
                .issuers
                .iter()
                .inspect(|c| {
                    if c.workload_identity_pool.is_some() && c.required_claims.is_empty() {
                        tracing::warn!(issuer = %c.issuer.get_ref(), "a workload identity pool issuer without required_claims admits every tenant's tokens for this audience to principalSet://…/* and to attributes its tenants choose; set required_claims (e.g. the repository owner)");
                    }
                })
                .map(|c| Issuer {
                    cfg: c.clone(),
                    mapping: c
                        .workload_identity_pool
                        .as_ref()
                        .and_then(|_| workload::Mapping::parse(&c.attribute_mapping).ok()),
                    required: workload::parse_required(&c.required_claims).ok(),
                    keys: RwLock::new(Keys::default()),
                })
                .collect(),
            audiences: cfg.audiences.clone(),
            leeway: cfg.leeway,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            google_groups: cfg.google_groups.as_ref().map(groups::GroupResolver::new),
        }
    }

    /// Fetches every issuer's keys; readiness depends on it.
    pub async fn warm(&self) -> Result<(), AuthError> {
        for iss in &self.issuers {
            self.refresh(iss).await?;
        }
        Ok(())
    }

    pub async fn ready(&self) -> bool {
        for iss in &self.issuers {
            if iss.keys.read().await.fetched.is_none() {
                return false;
            }
        }
        true
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let (claimed_alg, kid) = signed_header(token)?;
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| *i.cfg.issuer.get_ref() == iss)
            .ok_or_else(|| AuthError::UnknownIssuer(iss.clone()))?;
        let (alg, key) = self.key(issuer, &kid).await?;
        if alg != claimed_alg {
            return Err(AuthError::Invalid(format!(
                "key {kid} is a {alg:?} key but the token says {claimed_alg:?}"
            )));
        }
        let c = self.validated_claims(token, alg, &key, issuer)?;
        let mut p = principal(issuer, c)?;
        if let Some(g) = &self.google_groups {
            g.resolve(&mut p).await;
        }
        Ok(p)
    }

    /// Signature, audience, issuer, expiry and not-before, then issued-at.
    fn validated_claims(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
        issuer: &Issuer,
    ) -> Result<Claims, AuthError> {
        let mut v = Validation::new(alg);
        // An issuer's own audiences replace [identity] audiences for its tokens.
        v.set_audience(issuer.cfg.audiences.as_ref().unwrap_or(&self.audiences));
        v.set_issuer(&[issuer.cfg.issuer.get_ref()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let now = chrono::Utc::now().timestamp();
        if c.iat
            .is_some_and(|iat| iat > now + self.leeway.as_secs() as i64)
        {
            return Err(AuthError::Invalid(
                "token issued in the future (iat)".into(),
            ));
        }
        Ok(c)
    }

    async fn key(&self, issuer: &Issuer, kid: &str) -> Result<(Algorithm, DecodingKey), AuthError> {
        {
            let keys = issuer.keys.read().await;
            let stale = keys.fetched.is_none_or(|t| t.elapsed() > KEYS_MAX_AGE);
            if let (Some(k), false) = (keys.by_kid.get(kid), stale) {
                return Ok(k.clone());
            }
            if keys.fetched.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
                return Err(AuthError::UnknownKey(kid.to_string()));
            }
        }
        self.refresh(issuer).await?;
        issuer
            .keys
            .read()
            .await
            .by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))
    }

    async fn refresh(&self, issuer: &Issuer) -> Result<(), AuthError> {
        let base = issuer.cfg.issuer.get_ref().trim_end_matches('/');
        let jwks_uri = match &issuer.cfg.jwks_uri {
            Some(u) => u.get_ref().clone(),
            None => {
                let url = format!("{base}/.well-known/openid-configuration");
                let doc: serde_json::Value = self.get_json(&url).await?;
                let uri = doc["jwks_uri"].as_str().ok_or_else(|| AuthError::Jwks {
                    url: url.clone(),
                    why: "discovery document has no jwks_uri".into(),
                })?;
                crate::config::check_issuer_url(uri).map_err(|why| AuthError::Jwks {
                    url: url.clone(),
                    why,
                })?;
                uri.to_string()
            }
        };
        let set: JwkSet = self.get_json(&jwks_uri).await?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                by_kid.insert(kid, (alg, key));
            }
        }
        *issuer.keys.write().await = Keys {
            by_kid,
            fetched: Some(Instant::now()),
        };
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let fail = |why: String| AuthError::Jwks {
            url: url.to_string(),
            why,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        resp.json().await.map_err(|e| fail(e.to_string()))
    }
}

fn b64_json(segment: &str) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The token header's algorithm (RS256 or ES256 only) and key id.
fn signed_header(token: &str) -> Result<(Algorithm, String), AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        if token.split('.').next().is_some_and(header_says_none) {
            AuthError::Algorithm("none".into())
        } else {
            AuthError::Malformed(e.to_string())
        }
    })?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header
        .kid
        .ok_or_else(|| AuthError::Malformed("token header has no kid".into()))?;
    Ok((header.alg, kid))
}

/// The caller as verified claims name it, within what its issuer may vouch
/// for. A pool's issuer makes a federated workload: its subject and
/// attributes come from the mapping, and it vouches for no email or group.
fn principal(issuer: &Issuer, c: Claims) -> Result<Principal, AuthError> {
    if let Some(pool) = &issuer.cfg.workload_identity_pool {
        let mapping = issuer.mapping.as_ref().ok_or_else(|| {
            AuthError::Invalid(
                "the issuer's attribute_mapping is invalid (run custody config check)".into(),
            )
        })?;
        let required = issuer.required.as_ref().ok_or_else(|| {
            AuthError::Invalid(
                "the issuer's required_claims are invalid (run custody config check)".into(),
            )
        })?;
        // Every claim the token carries, as IAM's `assertion` sees it.
        let mut claims = c.rest;
        claims.insert("sub".into(), serde_json::Value::String(c.sub));
        claims.insert("iss".into(), serde_json::Value::String(c.iss.clone()));
        if let Some(e) = c.email {
            claims.insert("email".into(), serde_json::Value::String(e));
        }
        if let Some(v) = c.email_verified {
            claims.insert("email_verified".into(), v);
        }
        if let Some(iat) = c.iat {
            claims.insert("iat".into(), serde_json::Value::from(iat));
        }
        workload::check_required(required, &claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let m = mapping
            .apply(&claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        return Ok(Principal {
            subject: m.subject,
            email: None,
            issuer: c.iss,
            groups: Vec::new(),
            hd: None,
            groups_unresolved: None,
            workload: Some(workload::Workload {
                pool: pool.get_ref().clone(),
                attributes: m.attributes,
                groups: m.groups,
            }),
        });
    }
    // Google sends a bool, some IdPs a string; an unverified email is not an identity.
    let verified = match &c.email_verified {
        None => true,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        Some(_) => false,
    };
    let groups_claim = issuer.cfg.groups_claim.as_deref().unwrap_or("groups");
    let groups = match c.rest.get(groups_claim) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(|s| s.to_ascii_lowercase()))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.to_ascii_lowercase()],
        _ => Vec::new(),
    };
    // With several issuers, one must not vouch for another's users or groups.
    let domains = &issuer.cfg.email_domains;
    let (groups, dropped) = bound_groups(groups, domains);
    if !dropped.is_empty() {
        // Group names only: nothing else of the token goes to the log.
        tracing::warn!(target: "custody::audit", issuer = %c.iss, dropped_groups = ?dropped, "groups outside the issuer's email_domains dropped");
    }
    let in_domain = |e: &String| {
        domains.is_empty()
            || e.rsplit_once('@')
                .is_some_and(|(_, d)| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    };
    let hd = c.rest.get("hd").and_then(|v| v.as_str()).filter(|d| {
        verified && (domains.is_empty() || domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    });
    let hd = hd.map(str::to_ascii_lowercase);
    Ok(Principal {
        subject: c.sub,
        hd,
        groups_unresolved: None,
        email: c
            .email
            .filter(|e| verified && in_domain(e))
            .map(|e| e.to_ascii_lowercase()),
        issuer: c.iss,
        groups,
        workload: None,
    })
}

fn header_says_none(segment: &str) -> bool {
    b64_json(segment)
        .and_then(|h| h["alg"].as_str().map(|a| a.eq_ignore_ascii_case("none")))
        .unwrap_or(false)
}

/// Picks the issuer before the signature is checked; the claim is verified afterwards.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AuthError::Malformed("not a JWT".into()))?;
    b64_json(payload)
        .and_then(|c| c["iss"].as_str().map(str::to_string))
        .ok_or_else(|| AuthError::Malformed("payload has no iss".into()))
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let h = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = h.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_bound_to_the_issuers_domains() {
        let groups = vec![
            "dpo@example.com".to_string(),
            "team@partner.com".to_string(),
            "team@PARTNER.com".to_string(),
            "admins".to_string(),
            "x@partner.com.evil.example".to_string(),
        ];
        let (kept, dropped) = bound_groups(groups.clone(), &["partner.com".into()]);
        assert_eq!(kept, vec!["team@partner.com", "team@PARTNER.com"]);
        assert_eq!(dropped.len(), 3);
        let (kept, dropped) = bound_groups(groups.clone(), &[]);
        assert_eq!((kept, dropped.len()), (groups, 0));
    }

    #[test]
    fn identity_is_issuer_and_subject() {
        let p = |email: Option<&str>| Principal {
            subject: "alice-uid".into(),
            email: email.map(str::to_string),
            issuer: "https://idp.example.com/".into(),
            groups: Vec::new(),
            hd: None,
            groups_unresolved: None,
            workload: None,
        };
        assert_eq!(p(Some("alice@example.com")).id(), p(None).id());
        assert_ne!(p(Some("alice@example.com")).member(), p(None).member());
        assert_eq!(
            p(None).id(),
            "principal://idp.example.com/subject/alice-uid"
        );
        assert_eq!(
            split_principal_id(&p(None).id()),
            Some(("idp.example.com", "alice-uid"))
        );
        let other = Principal {
            issuer: "https://partner.example".into(),
            ..p(None)
        };
        assert_ne!(other.id(), p(None).id());
        for bad in [
            "principal://x/subject/",
            "principal:///subject/a",
            "subject:a",
            "principal://x/a",
        ] {
            assert_eq!(split_principal_id(bad), None, "{bad}");
        }
    }
}
