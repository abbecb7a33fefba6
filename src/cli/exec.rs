//! `custody exec`: one statement (or command) through the gateway, its
//! answer printed; with --wait, a held statement waits for its review.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::args::{ExecArgs, Format};
use super::client::{header_str, refusal, ClientError, Target};
use super::render::{csv_from_json, render_table};
use super::{review, CliError};
use crate::wire::{AUDIT_HEADER, DELEGATION_HEADER, REVIEW_HEADER};

pub async fn run(args: ExecArgs) -> Result<ExitCode, CliError> {
    let ExecArgs {
        connection,
        format,
        review,
        wait,
        gw,
        input,
    } = args;
    let target = Target::resolve(gw.gateway, gw.token).await?;
    let sql = input.join(" ");
    match exec(&target, &connection, &sql, format, review.as_deref()).await {
        Err(ClientError::Held {
            review_id, reason, ..
        }) if wait => {
            eprintln!("custody: held for approval: {reason}");
            eprintln!("custody: waiting for a decision on review {review_id} (an approver runs `custody review approve {review_id}`)");
            wait_for_approval(&target, &review_id).await?;
            eprintln!("custody: review {review_id} approved; running the statement");
            exec(&target, &connection, &sql, format, Some(&review_id)).await?;
        }
        other => other?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the review until it is decided: Ok once approved, a refusal otherwise.
async fn wait_for_approval(target: &Target, review_id: &str) -> Result<(), ClientError> {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = review::get(target, Some(review_id)).await?;
        match r["state"].as_str().unwrap_or_default() {
            "pending" => continue,
            "approved" => return Ok(()),
            other => {
                let why = r["decision"]["reason"].as_str().unwrap_or_default();
                return Err(ClientError::Refused {
                    status: 403,
                    reason: format!("review {review_id} was {other} {why}")
                        .trim()
                        .to_string(),
                    audit_id: None,
                });
            }
        }
    }
}

/// Prints the result to stdout; the audit id goes to stderr.
async fn exec(
    target: &Target,
    connection: &str,
    input: &str,
    format: Format,
    review: Option<&str>,
) -> Result<(), ClientError> {
    let (status, audit_id, body) = send(target, connection, input, review).await?;
    if let Some(a) = &audit_id {
        eprintln!("custody: audit id {a}");
    }
    if status == 202 {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Held {
            review_id: json["review_id"].as_str().unwrap_or_default().to_string(),
            reason: json["reason"].as_str().unwrap_or_default().to_string(),
            audit_id,
        });
    }
    if status == 422 {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Query {
            sqlstate: json["sqlstate"].as_str().unwrap_or_default().to_string(),
            message: json["reason"].as_str().unwrap_or_default().to_string(),
            audit_id,
        });
    }
    if !(200..300).contains(&status) {
        return Err(refusal(status, &body, audit_id));
    }
    print_answer(&body, format)
}

/// `POST /v1/exec/CONNECTION`: the status, audit id and body of the answer.
async fn send(
    target: &Target,
    connection: &str,
    input: &str,
    review: Option<&str>,
) -> Result<(u16, Option<String>, bytes::Bytes), ClientError> {
    let url = format!("{}/v1/exec/{connection}", target.gateway);
    let transport = |why: String| ClientError::Transport {
        url: url.clone(),
        why,
    };
    let http = super::client::http();
    let mut req = http
        .post(&url)
        .bearer_auth(&target.token)
        .header(
            "x-serverless-authorization",
            format!("Bearer {}", target.token),
        )
        .json(&serde_json::json!({ "input": input }));
    if let Some(tp) = &target.traceparent {
        req = req.header("traceparent", tp);
    }
    if let Some(d) = &target.delegation {
        req = req.header(DELEGATION_HEADER, d.trim());
    }
    if let Some(r) = review {
        req = req.header(REVIEW_HEADER, r.trim());
    }
    let resp = req.send().await.map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let audit_id = header_str(resp.headers(), AUDIT_HEADER);
    let body = resp.bytes().await.map_err(|e| transport(e.to_string()))?;
    Ok((status, audit_id, body))
}

/// A successful answer on stdout, in `format`.
fn print_answer(body: &[u8], format: Format) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout();
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if v.get("exit_status").is_some() && format != Format::Json {
        return print_command(&v);
    }
    match format {
        // Rendered here from JSON, not taken from the gateway as text/csv, so
        // formula cells are neutralised whatever the gateway's version.
        Format::Csv => stdout.write_all(csv_from_json(&v).as_bytes())?,
        Format::Json => {
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )?;
        }
        Format::Table => stdout.write_all(render_table(&v).as_bytes())?,
    }
    Ok(())
}

/// An SSH connection answers stdout/stderr/exit_status: print them as the
/// command would have, and exit with its status (128+n style for signals).
fn print_command(v: &serde_json::Value) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout();
    stdout.write_all(v["stdout"].as_str().unwrap_or_default().as_bytes())?;
    stdout.flush()?;
    eprint!("{}", v["stderr"].as_str().unwrap_or_default());
    if v["truncated"].as_bool() == Some(true) {
        eprintln!("custody: output was cut at the gateway's limit");
    }
    let status = match (v["exit_status"].as_u64(), v["signal"].as_str()) {
        (Some(s), _) => s.min(255) as u8,
        (None, Some(sig)) => {
            eprintln!("custody: the remote command was killed by signal {sig}");
            255
        }
        _ => 255,
    };
    match status {
        0 => Ok(()),
        s => Err(ClientError::RemoteExit { status: s }),
    }
}
