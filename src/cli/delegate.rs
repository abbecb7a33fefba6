//! `custody delegate`: a delegation token naming the next actor, printed
//! for a child to set as CUSTODY_DELEGATION.

use std::process::ExitCode;

use super::args::DelegateArgs;
use super::client::{control, ClientError, Target};
use super::CliError;

pub async fn run(args: DelegateArgs) -> Result<ExitCode, CliError> {
    let DelegateArgs {
        to,
        connections,
        ttl,
        gw,
    } = args;
    let target = Target::resolve(gw.gateway, gw.token).await?;
    let answer = delegate(&target, &to, &connections, &ttl).await?;
    eprintln!(
        "custody: delegated to {to} for {}s (root audit id {})",
        answer["expires_in"],
        answer["root_audit_id"].as_str().unwrap_or("?")
    );
    println!("{}", answer["access_token"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// `POST /v1/token`: exchanges our identity (or the delegation we hold)
/// for a delegation token naming `to` as the next actor.
async fn delegate(
    target: &Target,
    to: &str,
    connections: &[String],
    ttl: &str,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}/v1/token", target.gateway);
    let subject = target.delegation.as_deref().unwrap_or(&target.token);
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
        ),
        ("subject_token", subject.trim().to_string()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:jwt".to_string(),
        ),
        ("actor", to.to_string()),
        ("ttl", ttl.to_string()),
    ];
    if !connections.is_empty() {
        form.push(("connections", connections.join(" ")));
    }
    let req = super::client::http()
        .post(&url)
        .bearer_auth(&target.token)
        .form(&form);
    control(target, "/v1/token", req).await
}
