//! Chain of custody: RFC 8693 token exchange issues short-lived delegation
//! tokens (JWT, EdDSA, signed by the gateway's `[identity] signing_key`) that
//! carry the originating principal and every hop. A caller presents its own
//! OIDC token plus a delegation naming it as the next actor; the gateway
//! verifies both and records originator → hops → caller everywhere. Chains
//! are never taken from unsigned input. Token signing and checking are pure
//! functions; the gateway supplies keys, time and revocations.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::identity::Principal;

pub const AUDIENCE: &str = "custody-delegation";
pub const TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DelegationError {
    #[error("delegation token is malformed: {0}")]
    Malformed(String),
    #[error("delegation token signature is not valid (forged, or signed by another gateway)")]
    Signature,
    #[error("delegation token expired at {0}")]
    Expired(i64),
    #[error("delegation token was issued by {0}, not this gateway")]
    Issuer(String),
    #[error("this delegation is for {intended}, not for {caller}")]
    WrongActor { intended: String, caller: String },
    #[error("a delegation cannot widen its parent: {0}")]
    Widened(String),
    #[error("{0} is revoked")]
    Revoked(String),
    #[error("delegation is not configured: set [identity] signing_key")]
    NotConfigured,
}

/// One hop back in RFC 8693 form: `act.sub` is the most recent delegator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Act {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Act>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The originating principal's member name.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The originator as verified at the first exchange (groups included,
    /// so policy can match originators by group).
    pub originator: Principal,
    /// Principals that passed custody on, oldest first (the originator excluded).
    #[serde(default)]
    pub hops: Vec<String>,
    /// The hops' identities (`principal://…`), parallel to `hops`; absent in
    /// tokens from older gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hop_ids: Vec<String>,
    /// RFC 8693 `act`, nested newest-outermost; mirrors `hops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    /// The principal who may act with this token next (RFC 8693 `may_act`).
    pub may_act: String,
    /// The next actor's identity, when it was named by its own token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act_id: Option<String>,
    /// Connections this delegation is limited to; None: whatever policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<String>>,
    /// Audit id of the first exchange: ties every hop's records together.
    pub root_audit_id: String,
    /// When the original delegation was made (for `max_age`).
    pub orig_iat: i64,
}

/// Who is acting, on whose behalf: what policy checks and records keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub originator: Principal,
    /// Intermediaries, oldest first.
    pub hops: Vec<String>,
    /// The hops' identities, parallel to `hops` where known.
    pub hop_ids: Vec<String>,
    pub caller: String,
    /// The caller's identity (`principal://ISSUER/subject/SUB`).
    pub caller_id: String,
    pub root_audit_id: Option<String>,
    pub orig_iat: Option<i64>,
    pub connections: Option<Vec<String>>,
    /// When the delegation expires (sessions under it end then).
    pub exp: Option<i64>,
}

impl Chain {
    /// A caller acting for itself.
    pub fn direct(p: &Principal) -> Chain {
        Chain {
            originator: p.clone(),
            hops: Vec::new(),
            hop_ids: Vec::new(),
            caller: p.member(),
            caller_id: p.id(),
            root_audit_id: None,
            orig_iat: None,
            connections: None,
            exp: None,
        }
    }

    pub fn delegated(&self) -> bool {
        self.root_audit_id.is_some()
    }

    /// A caller acting for itself: no delegation, no hops, the caller is
    /// the originator (shown once, not as a chain of itself twice).
    fn is_direct(&self) -> bool {
        !self.delegated()
            && self.hops.is_empty()
            && self.caller == self.originator.member()
            && self.caller_id == self.originator.id()
    }

    /// originator → hops → caller, as member names. A caller acting for
    /// itself is one member: its originator is its caller.
    pub fn members(&self) -> Vec<String> {
        self.hands().into_iter().map(|(m, _)| m).collect()
    }

    /// Every hand as (member name, identity when known), originator first:
    /// what revocations are checked against. A direct chain has one hand.
    pub fn hands(&self) -> Vec<(String, Option<String>)> {
        let mut h = vec![(self.originator.member(), Some(self.originator.id()))];
        if self.is_direct() {
            return h;
        }
        h.extend(
            self.hops
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), self.hop_ids.get(i).cloned())),
        );
        h.push((self.caller.clone(), Some(self.caller_id.clone())));
        h
    }

    /// The identities of every hand that has one known, originator first.
    pub fn identities(&self) -> Vec<String> {
        self.hands().into_iter().filter_map(|(_, id)| id).collect()
    }

    /// Number of hands the work passed through after the originator.
    pub fn depth(&self) -> usize {
        self.hops.len() + usize::from(self.delegated())
    }

    pub fn render(&self) -> String {
        self.members().join(" → ")
    }
}

fn act_of(hops: &[String]) -> Option<Act> {
    hops.iter().fold(None, |inner, sub| {
        Some(Act {
            sub: sub.clone(),
            act: inner.map(Box::new),
        })
    })
}

/// The gateway's delegation key.
pub struct Keys {
    signing: SigningKey,
    pub kid: String,
    pub issuer: String,
}

impl Keys {
    pub fn new(signing: SigningKey, issuer: &str) -> Keys {
        let kid = crate::recording::seal::key_id(&signing.verifying_key());
        Keys {
            signing,
            kid,
            issuer: issuer.to_string(),
        }
    }

    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public half as a JWK Set (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": B64.encode(self.verifying().as_bytes()),
        }]})
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = self.signing.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
    }

    /// Signature, issuer, audience and expiry; nothing else is trusted.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, DelegationError> {
        let bad = |m: &str| DelegationError::Malformed(m.to_string());
        if token.len() > 16 * 1024 {
            return Err(bad("longer than 16 KiB"));
        }
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three dot-separated parts"));
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("header is not base64url JSON"))?;
        if header["alg"] != "EdDSA" {
            return Err(bad("alg must be EdDSA"));
        }
        let sig = B64
            .decode(s)
            .map_err(|_| bad("signature is not base64url"))?;
        let sig =
            ed25519_dalek::Signature::from_slice(&sig).map_err(|_| DelegationError::Signature)?;
        self.verifying()
            .verify_strict(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| DelegationError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("claims are not the delegation shape"))?;
        if claims.iss != self.issuer {
            return Err(DelegationError::Issuer(claims.iss));
        }
        if claims.aud != AUDIENCE {
            return Err(bad("audience is not custody-delegation"));
        }
        if claims.exp <= now {
            return Err(DelegationError::Expired(claims.exp));
        }
        Ok(claims)
    }
}

/// The caller's chain: its own when no delegation is presented; else the
/// delegation's, which must name the caller as its next actor.
pub fn chain_for(caller: &Principal, claims: Option<Claims>) -> Result<Chain, DelegationError> {
    let Some(c) = claims else {
        return Ok(Chain::direct(caller));
    };
    let me = caller.member();
    let same_id = c.may_act_id.as_ref().is_none_or(|id| *id == caller.id());
    if !c.may_act.eq_ignore_ascii_case(&me) || !same_id {
        return Err(DelegationError::WrongActor {
            intended: c.may_act,
            caller: me,
        });
    }
    Ok(Chain {
        originator: c.originator,
        hops: c.hops,
        hop_ids: c.hop_ids,
        caller: me,
        caller_id: caller.id(),
        root_audit_id: Some(c.root_audit_id),
        orig_iat: Some(c.orig_iat),
        connections: c.connections,
        exp: Some(c.exp),
    })
}

/// What one exchange asks for.
pub struct Request<'a> {
    /// The chain of whoever exchanges (its own, or from the delegation it holds).
    pub parent: &'a Chain,
    pub actor: String,
    /// The actor's identity, when it was named by its own token.
    pub actor_id: Option<String>,
    pub connections: Option<Vec<String>>,
    pub ttl: Duration,
    pub audit_id: &'a str,
}

/// Claims for the next hop: never longer-lived or wider than the parent.
pub fn next_claims(keys: &Keys, req: Request<'_>, now: i64) -> Result<Claims, DelegationError> {
    let parent = req.parent;
    let connections = match (&parent.connections, req.connections) {
        (Some(p), Some(asked)) => {
            if let Some(extra) = asked.iter().find(|c| !p.contains(c)) {
                return Err(DelegationError::Widened(format!(
                    "connection {extra} is not among the parent's ({})",
                    p.join(", ")
                )));
            }
            Some(asked)
        }
        (Some(p), None) => Some(p.clone()),
        (None, asked) => asked,
    };
    let mut exp = now + i64::try_from(req.ttl.as_secs()).unwrap_or(i64::MAX / 2);
    if let Some(parent_exp) = parent.exp {
        exp = exp.min(parent_exp);
    }
    // The one who exchanges becomes a hop, unless it is the originator itself.
    let mut hops = parent.hops.clone();
    // Identities line up with hops only while every hop had one recorded.
    let mut hop_ids = parent.hop_ids.clone();
    hop_ids.truncate(hops.len());
    if parent.delegated() {
        if hop_ids.len() == hops.len() {
            hop_ids.push(parent.caller_id.clone());
        }
        hops.push(parent.caller.clone());
    }
    Ok(Claims {
        iss: keys.issuer.clone(),
        aud: AUDIENCE.into(),
        sub: parent.originator.member(),
        iat: now,
        exp,
        jti: uuid::Uuid::now_v7().to_string(),
        originator: parent.originator.clone(),
        act: act_of(&hops),
        hops,
        hop_ids,
        may_act: req.actor,
        may_act_id: req.actor_id,
        connections,
        root_audit_id: parent
            .root_audit_id
            .clone()
            .unwrap_or_else(|| req.audit_id.to_string()),
        orig_iat: parent.orig_iat.unwrap_or(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(email: &str) -> Principal {
        Principal {
            subject: email.into(),
            email: Some(email.into()),
            issuer: "https://issuer".into(),
            groups: vec!["eng@example.com".into()],
            hd: None,
            groups_unresolved: None,
            workload: None,
        }
    }

    fn keys() -> Keys {
        Keys::new(SigningKey::from_bytes(&[3; 32]), "https://custody.example")
    }

    fn exchange(
        k: &Keys,
        parent: &Chain,
        actor: &str,
        conns: Option<&[&str]>,
        now: i64,
    ) -> Result<String, DelegationError> {
        let req = Request {
            parent,
            actor: actor.into(),
            actor_id: None,
            connections: conns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ttl: Duration::from_secs(3600),
            audit_id: "root",
        };
        Ok(k.sign(&next_claims(k, req, now)?))
    }

    #[test]
    fn a_direct_chain_is_its_caller_once() {
        let alice = who("alice@example.com");
        let direct = Chain::direct(&alice);
        assert_eq!(direct.members(), vec![alice.member()]);
        assert_eq!(direct.render(), alice.member());
        assert_eq!(direct.identities(), vec![alice.id()]);
        assert_eq!(direct.depth(), 0);
        // A delegated chain keeps every hand, even when the caller is the originator.
        let k = keys();
        let t = exchange(&k, &direct, &alice.member(), None, 100).unwrap();
        let own = chain_for(&alice, Some(k.verify(&t, 101).unwrap())).unwrap();
        assert_eq!(own.members(), vec![alice.member(), alice.member()]);
        assert_eq!(own.render(), format!("{0} → {0}", alice.member()));
    }

    #[test]
    fn two_hops_keep_the_whole_chain() {
        let k = keys();
        let alice = who("alice@example.com");
        let ci = who("ci@p.iam.gserviceaccount.com");
        let job = who("job@p.iam.gserviceaccount.com");
        let t1 = exchange(&k, &Chain::direct(&alice), &ci.member(), Some(&["pg"]), 100).unwrap();
        let c1 = chain_for(&ci, Some(k.verify(&t1, 101).unwrap())).unwrap();
        let t2 = exchange(&k, &c1, &job.member(), None, 102).unwrap();
        let claims = k.verify(&t2, 103).unwrap();
        assert_eq!(claims.act.as_ref().unwrap().sub, ci.member());
        let c2 = chain_for(&job, Some(claims)).unwrap();
        assert_eq!(
            c2.members(),
            vec![alice.member(), ci.member(), job.member()]
        );
        assert_eq!(c2.root_audit_id.as_deref(), Some("root"));
        assert_eq!(c2.connections, Some(vec!["pg".to_string()]));
        assert_eq!(c2.depth(), 2);
        assert_eq!(c2.orig_iat, Some(100));
    }

    #[test]
    fn hops_keep_their_identities_and_the_actor_is_bound_to_one() {
        let k = keys();
        let alice = who("alice@example.com");
        let ci = who("ci@p.iam.gserviceaccount.com");
        let job = who("job@p.iam.gserviceaccount.com");
        let t1 = exchange(&k, &Chain::direct(&alice), &ci.member(), None, 100).unwrap();
        let c1 = chain_for(&ci, Some(k.verify(&t1, 101).unwrap())).unwrap();
        let t2 = exchange(&k, &c1, &job.member(), None, 102).unwrap();
        let c2 = chain_for(&job, Some(k.verify(&t2, 103).unwrap())).unwrap();
        assert_eq!(c2.identities(), vec![alice.id(), ci.id(), job.id()]);
        // Named by its token, the actor must come back as that identity.
        let mut claims = next_claims(
            &k,
            Request {
                parent: &Chain::direct(&alice),
                actor: ci.member(),
                actor_id: Some(ci.id()),
                connections: None,
                ttl: Duration::from_secs(60),
                audit_id: "a",
            },
            100,
        )
        .unwrap();
        let impostor = Principal {
            issuer: "https://other-issuer".into(),
            ..ci.clone()
        };
        assert!(chain_for(&impostor, Some(claims.clone())).is_err());
        claims.may_act_id = None;
        assert!(chain_for(&impostor, Some(claims)).is_ok());
    }

    #[test]
    fn forged_expired_retargeted_and_widened_are_refused() {
        let k = keys();
        let alice = who("alice@example.com");
        let ci = who("ci@p.iam.gserviceaccount.com");
        let t = exchange(&k, &Chain::direct(&alice), &ci.member(), Some(&["pg"]), 100).unwrap();
        let other = Keys::new(SigningKey::from_bytes(&[4; 32]), "https://custody.example");
        assert_eq!(other.verify(&t, 101), Err(DelegationError::Signature));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(
            String::from_utf8(B64.decode(parts[1]).unwrap())
                .unwrap()
                .replace("alice", "admin"),
        );
        parts[1] = &forged;
        assert_eq!(
            k.verify(&parts.join("."), 101),
            Err(DelegationError::Signature)
        );
        assert!(matches!(
            k.verify(&t, 100 + 3600),
            Err(DelegationError::Expired(_))
        ));
        let mallory = who("mallory@example.com");
        let err = chain_for(&mallory, Some(k.verify(&t, 101).unwrap())).unwrap_err();
        assert!(matches!(err, DelegationError::WrongActor { .. }));
        let c = chain_for(&ci, Some(k.verify(&t, 101).unwrap())).unwrap();
        let err = exchange(&k, &c, "user:x@example.com", Some(&["pg", "prod"]), 102).unwrap_err();
        assert!(matches!(err, DelegationError::Widened(_)), "{err}");
        // A child's expiry never passes its parent's.
        let child = next_claims(
            &k,
            Request {
                parent: &c,
                actor: "user:x@example.com".into(),
                actor_id: None,
                connections: None,
                ttl: Duration::from_secs(99_999),
                audit_id: "a",
            },
            102,
        )
        .unwrap();
        assert_eq!(child.exp, 100 + 3600);
    }
}
