//! `POST /v1/revocations`: admins revoke a principal in every instance (the
//! record lives in the store; live sessions under it end).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::admit::audit;
use super::token::{bad, forbidden, unavailable};
use crate::identity::revocation::Revoked;
use crate::identity::Principal;
use crate::ingress::{self, ApiError};
use crate::policy::Member;
use crate::recording::EventBody;
use crate::Gateway;

#[derive(serde::Deserialize)]
struct RevokeRequest {
    principal: String,
    #[serde(default)]
    reason: String,
}

pub async fn revoke(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let audit_id = ingress::new_audit_id();
    let client = peer.to_string();
    match revoke_principal(&gw, &headers, &body, &audit_id, &client).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn revoke_principal(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
    audit_id: &str,
    client: &str,
) -> Result<Response, ApiError> {
    let admin = unrevoked_admin(gw, headers, audit_id, client).await?;
    let (req, principal) = revocation_request(gw, body, audit_id)?;
    let member = principal.to_string();
    audit(
        gw,
        audit_id,
        &admin,
        client,
        "revoke",
        EventBody::Revocation {
            principal: member.clone(),
            reason: req.reason.clone(),
        },
    )
    .await?;
    let record = json!({"principal": member, "by": admin.member(), "by_id": admin.id(), "reason": req.reason, "at": chrono::Utc::now(), "audit_id": audit_id});
    let created = gw
        .revocations
        .revoke(gw.recorder.store.as_ref(), &principal, &record)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
                audit_id,
            )
        })?;
    tracing::warn!(target: "custody::audit", audit_id, principal = %member, by = %admin.member(), "principal revoked");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"principal": member, "revoked": true, "already": !created, "audit_id": audit_id}))).into_response())
}

/// The authenticated caller, when it is an admin and not itself revoked.
async fn unrevoked_admin(
    gw: &Gateway,
    headers: &HeaderMap,
    audit_id: &str,
    client: &str,
) -> Result<Principal, ApiError> {
    let admin = ingress::authenticate(gw, headers, audit_id, client).await?;
    let admins: Vec<Member> = gw
        .config
        .identity
        .admins
        .iter()
        .filter_map(|m| m.get_ref().parse().ok())
        .collect();
    if !admins.iter().any(|m| m.matches(&admin)) {
        return Err(forbidden(
            format!(
                "{} is not in [identity] admins{}",
                admin.member(),
                crate::policy::unresolved_note(crate::policy::unresolved_groups(&admin, &admins))
            ),
            audit_id,
        ));
    }
    // An admin revoked (under any of its names) revokes nobody.
    if gw
        .revocations
        .is_revoked(
            gw.recorder.store.as_ref(),
            &admin.member(),
            Some(&admin.id()),
        )
        .await
        .map_err(|e| unavailable(e, audit_id))?
    {
        return Err(forbidden(
            format!("{} is revoked, so it may not revoke", admin.member()),
            audit_id,
        ));
    }
    Ok(admin)
}

/// The request body and the principal it names.
fn revocation_request(
    gw: &Gateway,
    body: &[u8],
    audit_id: &str,
) -> Result<(RevokeRequest, Revoked), ApiError> {
    let req: RevokeRequest = serde_json::from_slice(body).map_err(|e| {
        bad(
            format!("body must be {{\"principal\": \"user:EMAIL\", \"reason\": \"...\"}}: {e}"),
            audit_id,
        )
    })?;
    // A federated workload's principal:// names its pool, not its issuer.
    let issuers: Vec<String> = gw
        .config
        .identity
        .issuers
        .iter()
        .map(|i| match &i.workload_identity_pool {
            Some(pool) => format!("{}/{}", crate::identity::workload::IAM, pool.get_ref()),
            None => i.issuer.get_ref().clone(),
        })
        .collect();
    let principal =
        Revoked::parse(&req.principal, &issuers).map_err(|e| bad(e.to_string(), audit_id))?;
    Ok((req, principal))
}
