//! `custody review`: list, show, approve and deny statements held for approval.

use std::process::ExitCode;

use super::args::{ListFormat, ReviewCommand};
use super::client::{control, ClientError, Target};
use super::CliError;

pub async fn run(command: ReviewCommand) -> Result<ExitCode, CliError> {
    match command {
        ReviewCommand::List { format, gw } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let v = get(&target, None).await?;
            let list = v["reviews"].as_array().cloned().unwrap_or_default();
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Text => print!("{}", render(&list)),
            }
        }
        ReviewCommand::Show { id, gw } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let v = get(&target, Some(&id)).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ReviewCommand::Approve { id, reason, gw } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let v = decide(&target, &id, "approve", &reason).await?;
            eprintln!(
                "custody: review {id} is {}",
                v["state"].as_str().unwrap_or("?")
            );
        }
        ReviewCommand::Deny { id, reason, gw } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let v = decide(&target, &id, "deny", &reason).await?;
            eprintln!(
                "custody: review {id} is {}",
                v["state"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET /v1/reviews` or `/v1/reviews/ID`.
pub(crate) async fn get(
    target: &Target,
    id: Option<&str>,
) -> Result<serde_json::Value, ClientError> {
    let path = match id {
        Some(id) => format!("/v1/reviews/{id}"),
        None => "/v1/reviews".to_string(),
    };
    let req = super::client::http()
        .get(format!("{}{path}", target.gateway))
        .bearer_auth(&target.token);
    control(target, &path, req).await
}

/// `POST /v1/reviews/ID/approve|deny`.
async fn decide(
    target: &Target,
    id: &str,
    action: &str,
    reason: &str,
) -> Result<serde_json::Value, ClientError> {
    let path = format!("/v1/reviews/{id}/{action}");
    let req = super::client::http()
        .post(format!("{}{path}", target.gateway))
        .bearer_auth(&target.token)
        .json(&serde_json::json!({ "reason": reason }));
    control(target, &path, req).await
}

/// One line per review, for `custody review list`.
fn render(reviews: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<36}  {:<9}  {:<14}  {:<40}  {}\n",
        "REVIEW", "STATE", "CONNECTION", "REQUESTED BY", "STATEMENT"
    );
    for r in reviews {
        let req = &r["request"];
        let chain: Vec<&str> = req["chain"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
            .unwrap_or_default();
        let stmt: String = req["statement"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect();
        out.push_str(&format!(
            "{:<36}  {:<9}  {:<14}  {:<40}  {}\n",
            req["id"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            req["connection"].as_str().unwrap_or_default(),
            chain.join(" → "),
            stmt.replace('\n', " ")
        ));
    }
    out
}
