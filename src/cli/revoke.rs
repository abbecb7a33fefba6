//! `custody revoke`: an admin revokes a principal in every instance.

use std::process::ExitCode;

use super::args::RevokeArgs;
use super::client::{control, ClientError, Target};
use super::CliError;

pub async fn run(args: RevokeArgs) -> Result<ExitCode, CliError> {
    let RevokeArgs {
        principal,
        reason,
        gw,
    } = args;
    let target = Target::resolve(gw.gateway, gw.token).await?;
    let answer = revoke(&target, &principal, &reason).await?;
    let already = answer["already"].as_bool().unwrap_or(false);
    eprintln!(
        "custody: {principal} {}; every instance refuses it within 5 s",
        if already {
            "was already revoked"
        } else {
            "is revoked"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `POST /v1/revocations`.
async fn revoke(
    target: &Target,
    principal: &str,
    reason: &str,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}/v1/revocations", target.gateway);
    let req = super::client::http()
        .post(&url)
        .bearer_auth(&target.token)
        .json(&serde_json::json!({"principal": principal, "reason": reason}));
    control(target, "/v1/revocations", req).await
}
