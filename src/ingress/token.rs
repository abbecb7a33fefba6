//! `POST /v1/token` (RFC 8693 token exchange → delegation token) and
//! `GET /.well-known/jwks.json` (the delegation key's public half).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::admit::audit;
use crate::identity::delegation::{self, Chain, DelegationError};
use crate::identity::revocation;
use crate::identity::Principal;
use crate::ingress::{self, ApiError};
use crate::policy::Member;
use crate::recording::EventBody;
use crate::Gateway;

pub async fn jwks(State(gw): State<Arc<Gateway>>) -> Response {
    match &gw.delegation {
        Some(k) => Json(k.jwks()).into_response(),
        None => Json(json!({"keys": []})).into_response(),
    }
}

/// Form (RFC 8693) or JSON, as a flat map of strings.
fn params(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if json {
        let v: HashMap<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
        Ok(v.into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect())
    } else {
        serde_urlencoded::from_bytes(body).map_err(|e| format!("body is not form-encoded: {e}"))
    }
}

pub(super) fn bad(reason: impl Into<String>, audit_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        reason.into(),
        audit_id,
    )
}

pub(super) fn unavailable(e: crate::recording::RecordError, audit_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "revocations_unavailable",
        format!("revocations cannot be read, so nothing is decided: {e}"),
        audit_id,
    )
}

pub(super) fn forbidden(reason: impl Into<String>, audit_id: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason.into(), audit_id)
}

pub async fn token(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let audit_id = ingress::new_audit_id();
    match exchange(&gw, peer, &headers, &body, &audit_id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn exchange(
    gw: &Gateway,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    audit_id: &str,
) -> Result<Response, ApiError> {
    let client = peer.to_string();
    let keys = gw
        .delegation
        .as_ref()
        .ok_or_else(|| forbidden(DelegationError::NotConfigured.to_string(), audit_id))?;
    let p = params(headers, body).map_err(|e| bad(e, audit_id))?;
    let subject = subject_token(&p, audit_id)?;
    let now = chrono::Utc::now().timestamp();
    let (caller, parent) =
        subject_chain(gw, keys, headers, subject, now, audit_id, &client).await?;
    let (actor, actor_id) = next_actor(gw, &p, audit_id).await?;
    let connections = requested_connections(gw, &p, audit_id)?;
    let ttl = requested_ttl(gw, &p, audit_id)?;
    refuse_revoked(gw, &parent, &actor, actor_id.as_deref(), audit_id).await?;
    let req = delegation::Request {
        parent: &parent,
        actor: actor.clone(),
        actor_id,
        connections,
        ttl,
        audit_id,
    };
    let claims =
        delegation::next_claims(keys, req, now).map_err(|e| forbidden(e.to_string(), audit_id))?;
    audit(
        gw,
        audit_id,
        &caller,
        &client,
        "delegate",
        EventBody::Delegation {
            chain: parent.members(),
            to: actor.clone(),
            connections: claims.connections.clone(),
            expires: claims.exp,
            root_audit_id: claims.root_audit_id.clone(),
        },
    )
    .await?;
    tracing::info!(target: "custody::audit", audit_id, chain = %parent.render(), to = %actor, root_audit_id = %claims.root_audit_id, "delegation issued");
    Ok(token_response(keys, &claims, now, audit_id))
}

/// The grant type must be token exchange, and the subject token present.
fn subject_token<'a>(
    p: &'a HashMap<String, String>,
    audit_id: &str,
) -> Result<&'a String, ApiError> {
    if p.get("grant_type").map(String::as_str) != Some(delegation::GRANT_TYPE) {
        return Err(bad(
            format!("grant_type must be {}", delegation::GRANT_TYPE),
            audit_id,
        ));
    }
    p.get("subject_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            bad(
                "subject_token is required: your OIDC ID token, or the delegation token you hold",
                audit_id,
            )
        })
}

/// The subject: an OIDC ID token (the originator), or a delegation token
/// held by the authenticated caller it names as next actor. Returns the
/// caller and the chain it extends.
async fn subject_chain(
    gw: &Gateway,
    keys: &delegation::Keys,
    headers: &HeaderMap,
    subject: &str,
    now: i64,
    audit_id: &str,
    client: &str,
) -> Result<(Principal, Chain), ApiError> {
    match keys.verify(subject, now) {
        Ok(claims) => {
            let caller = ingress::authenticate(gw, headers, audit_id, client).await?;
            let chain = delegation::chain_for(&caller, Some(claims))
                .map_err(|e| forbidden(e.to_string(), audit_id))?;
            Ok((caller, chain))
        }
        Err(DelegationError::Malformed(_)) => {
            let principal = gw.verifier.verify(subject).await.map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    format!("subject_token: {e}"),
                    audit_id,
                )
            })?;
            let chain = Chain::direct(&principal);
            Ok((principal, chain))
        }
        Err(e) => Err(forbidden(format!("subject_token: {e}"), audit_id)),
    }
}

/// The next actor's member name, and its stable id when it proved itself
/// with an ID token.
async fn next_actor(
    gw: &Gateway,
    p: &HashMap<String, String>,
    audit_id: &str,
) -> Result<(String, Option<String>), ApiError> {
    match (p.get("actor_token").filter(|t| !t.is_empty()), p.get("actor")) {
        (Some(t), _) => {
            let a = gw
                .verifier
                .verify(t)
                .await
                .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", format!("actor_token: {e}"), audit_id))?;
            Ok((a.member(), Some(a.id())))
        }
        (None, Some(m)) => match m.parse::<Member>() {
            Ok(Member::User(_) | Member::ServiceAccount(_)) => Ok((m.to_string(), None)),
            _ => Err(bad(format!("actor {m:?} must be user:EMAIL or serviceAccount:EMAIL"), audit_id)),
        },
        (None, None) => Err(bad("name the next actor: actor_token (its OIDC ID token) or actor (user:EMAIL or serviceAccount:EMAIL)", audit_id)),
    }
}

/// The connections the delegation is limited to (None: any allowed one);
/// each must exist.
fn requested_connections(
    gw: &Gateway,
    p: &HashMap<String, String>,
    audit_id: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    let connections = p
        .get("connections")
        .or(p.get("scope"))
        .map(|c| {
            c.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty());
    if let Some(unknown) = connections
        .iter()
        .flatten()
        .find(|c| gw.connection(c).is_none())
    {
        return Err(bad(format!("no connection named {unknown:?}"), audit_id));
    }
    Ok(connections)
}

fn requested_ttl(
    gw: &Gateway,
    p: &HashMap<String, String>,
    audit_id: &str,
) -> Result<std::time::Duration, ApiError> {
    let max = gw.config.identity.delegation_max_ttl;
    let ttl = match p.get("ttl") {
        Some(t) => {
            crate::config::parse_duration(t).map_err(|e| bad(format!("ttl: {e}"), audit_id))?
        }
        None => std::time::Duration::from_secs(3600).min(max),
    };
    if ttl > max {
        return Err(bad(
            format!(
                "ttl {}s is over delegation_max_ttl ({}s)",
                ttl.as_secs(),
                max.as_secs()
            ),
            audit_id,
        ));
    }
    Ok(ttl)
}

/// Every hand of the parent chain, and the one it goes to next, must be
/// unrevoked.
async fn refuse_revoked(
    gw: &Gateway,
    parent: &Chain,
    actor: &str,
    actor_id: Option<&str>,
    audit_id: &str,
) -> Result<(), ApiError> {
    let revoked = gw
        .revocations
        .current(gw.recorder.store.as_ref())
        .await
        .map_err(|e| unavailable(e, audit_id))?;
    let actor_revoked = revoked.iter().any(|r| r.covers(actor, actor_id));
    let hit =
        revocation::first_in(&revoked, parent).or_else(|| actor_revoked.then(|| actor.to_string()));
    if let Some(m) = hit {
        return Err(forbidden(
            format!("{m} is revoked, so no delegation is issued"),
            audit_id,
        ));
    }
    Ok(())
}

fn token_response(
    keys: &delegation::Keys,
    claims: &delegation::Claims,
    now: i64,
    audit_id: &str,
) -> Response {
    let token = keys.sign(claims);
    let body = json!({
        "access_token": token,
        "issued_token_type": delegation::TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": claims.exp - now,
        "audit_id": audit_id,
        "root_audit_id": claims.root_audit_id,
    });
    let mut resp = Json(body).into_response();
    if let Ok(v) = audit_id.parse() {
        resp.headers_mut().insert(ingress::AUDIT_HEADER, v);
    }
    resp
}
