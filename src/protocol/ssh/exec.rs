//! `POST /v1/exec/{ssh connection}`: one command, its stdout, stderr and
//! exit status as JSON. Guardrails and approval holds apply before the
//! upstream is even contacted.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use russh::ChannelMsg;
use serde_json::json;

use super::front::MAX_COMMAND;
use super::{upstream, SshError};
use crate::config::ConnectionConfig;
use crate::ingress::reviews;
use crate::ingress::{end_event, recording_failed, ApiError};
use crate::policy::guardrails::{Guardrails, Verdict};
use crate::policy::shell;
use crate::recording::EventBody;
use crate::session::Session;
use crate::Gateway;

/// Output kept per stream; the answer says when it was cut.
pub const MAX_OUTPUT: usize = 16 << 20;

pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: Option<u32>,
    pub signal: Option<String>,
    pub truncated: bool,
}

pub async fn respond(
    gw: &Gateway,
    session: Session,
    headers: &HeaderMap,
    command: &str,
) -> Result<Response, ApiError> {
    let audit_id = session.audit_id.clone();
    let conn = session.permit.connection.clone();
    let engine = gw
        .masking_for(&conn, &session.permit.principal)
        .await
        .ok()
        .flatten();
    let shown = match &engine {
        Some(e) => crate::protocol::postgres::masking::text(e, command, &mut Default::default()),
        None => command.to_string(),
    };
    let verdict = if command.len() > MAX_COMMAND {
        Verdict::Deny {
            rule: "command_length".into(),
            reason: format!(
                "the command is {} bytes; at most {MAX_COMMAND} are accepted",
                command.len()
            ),
        }
    } else {
        gw.rails
            .get(conn.name())
            .map(|r| check_command(r, &conn, command, false))
            .unwrap_or(Verdict::Allow)
    };
    let review_id = headers
        .get(reviews::REVIEW_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let denied = match verdict {
        Verdict::Allow => None,
        Verdict::Deny { rule, reason } => Some((rule, reason)),
        Verdict::NeedsApproval { rule } if reviews::approvable(&conn) => match review_id {
            Some(id) => {
                if let Err(e) = reviews::use_approval(gw, &session, id, command).await {
                    let _ = session.finish(end_event("approval not usable", 0, 0)).await;
                    return Err(e);
                }
                None
            }
            None => {
                let resp = reviews::hold(gw, &session, command, &shown, &rule).await;
                let _ = session.finish(end_event("held for approval", 0, 0)).await;
                return resp;
            }
        },
        Verdict::NeedsApproval { rule } => Some((
            rule,
            "the command requires approval, and this connection names no approvers".into(),
        )),
    };
    if let Some((rule, reason)) = denied {
        let _ = session
            .tap()
            .record(EventBody::Guardrail {
                sql: shown,
                protocol: "ssh-exec".into(),
                rule: rule.clone(),
                outcome: "refused".into(),
            })
            .await;
        let _ = session
            .finish(end_event("refused by guardrail", 0, 0))
            .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "guardrail",
            format!("refused by guardrail {rule}: {reason}"),
            &audit_id,
        ));
    }
    let _ = session
        .tap()
        .record(EventBody::SshRequest {
            channel: 0,
            request: "exec".into(),
            detail: Some(shown),
            outcome: "allowed".into(),
        })
        .await;
    match run(gw, &session, command, engine.as_deref()).await {
        Ok(r) => {
            if let Err(e) = session.finish(end_event("completed", 1, 0)).await {
                return Err(recording_failed(&e.to_string(), &audit_id));
            }
            Ok(Json(json!({
                "audit_id": audit_id,
                "stdout": r.stdout,
                "stderr": r.stderr,
                "exit_status": r.exit_status,
                "signal": r.signal,
                "truncated": r.truncated,
            }))
            .into_response())
        }
        Err(SshError::Recording(why)) => {
            let _ = session.finish(end_event("recording failed", 0, 0)).await;
            Err(recording_failed(&why, &audit_id))
        }
        Err(e) => {
            let message = e.to_string();
            let _ = session
                .tap()
                .record(EventBody::Error {
                    message: message.clone(),
                })
                .await;
            let _ = session.finish(end_event("upstream failed", 0, 0)).await;
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                message,
                &audit_id,
            ))
        }
    }
}

/// Whether the connection has deny or approval patterns for commands.
pub fn has_patterns(conn: &ConnectionConfig) -> bool {
    conn.guardrails
        .as_ref()
        .is_some_and(|g| !g.deny_patterns.is_empty() || !g.approval_patterns.is_empty())
}

/// Guardrails for one SSH command (exec or typed line) as the shell will read
/// it: patterns see the words with quoting removed (`top''secret` is
/// `topsecret`), and a command whose words are only known when it runs
/// (`$X`, `$(…)`, globs, …) is refused rather than guessed at. The raw text
/// is checked too, so a pattern written for the spelling still applies.
/// `terminal`: a PTY follows, whose typed lines are checked themselves.
pub fn check_command(
    rails: &Guardrails,
    conn: &ConnectionConfig,
    command: &str,
    terminal: bool,
) -> Verdict {
    if !has_patterns(conn) {
        return rails.check_command(command);
    }
    let lexed = if terminal {
        shell::normalize_nested_terminal(command)
    } else {
        shell::normalize_nested(command)
    };
    let normalized = match lexed {
        Ok(n) => n,
        Err(e) => {
            return Verdict::Deny {
                rule: "shell_syntax".into(),
                reason: format!("the command cannot be checked against this connection's patterns: {e}; write it with fixed words (quote special characters), or run a script that lives on the server"),
            }
        }
    };
    let (a, b) = (
        rails.check_command(&normalized),
        rails.check_command(command),
    );
    match (a, b) {
        (d @ Verdict::Deny { .. }, _) | (_, d @ Verdict::Deny { .. }) => d,
        (h @ Verdict::NeedsApproval { .. }, _) | (_, h @ Verdict::NeedsApproval { .. }) => h,
        _ => Verdict::Allow,
    }
}

/// Runs `command` on the upstream as the connection's user; output is
/// masked before it is recorded or returned.
pub async fn run(
    gw: &Gateway,
    session: &Session,
    command: &str,
    engine: Option<&crate::mask::Engine>,
) -> Result<ExecResult, SshError> {
    let conn = &session.permit.connection;
    let user = conn.user.clone().unwrap_or_else(|| "root".into());
    let handle = upstream::open(gw, conn, &user).await?;
    let mut ch = handle
        .channel_open_session()
        .await
        .map_err(|e| SshError::Protocol(format!("opening a channel: {e}")))?;
    let _ = ch
        .set_env(false, "CUSTODY_AUDIT_ID", session.audit_id.clone())
        .await;
    if let Some(tp) = &session.traceparent {
        let _ = ch.set_env(false, "TRACEPARENT", tp.clone()).await;
    }
    ch.exec(true, command.as_bytes().to_vec())
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut result = ExecResult {
        stdout: String::new(),
        stderr: String::new(),
        exit_status: None,
        signal: None,
        truncated: false,
    };
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => keep(&mut out, &data, &mut result.truncated),
            ChannelMsg::ExtendedData { data, .. } => keep(&mut err, &data, &mut result.truncated),
            ChannelMsg::Failure => {
                return Err(SshError::Protocol(
                    "the server refused to run the command".into(),
                ))
            }
            ChannelMsg::ExitStatus { exit_status } => result.exit_status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                result.signal = Some(format!("{signal_name:?}"))
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let text = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        match engine {
            Some(e) => crate::protocol::postgres::masking::text(e, &s, &mut Default::default()),
            None => s.into_owned(),
        }
    };
    result.stdout = text(&out);
    result.stderr = text(&err);
    for (stream, data) in [("o", &result.stdout), ("e", &result.stderr)] {
        if data.is_empty() {
            continue;
        }
        session
            .tap()
            .record(EventBody::Output {
                channel: 0,
                stream: stream.into(),
                data: data.clone(),
            })
            .await
            .map_err(|e| SshError::Recording(e.to_string()))?;
    }
    session
        .tap()
        .record(EventBody::Exit {
            channel: 0,
            status: result.exit_status,
            signal: result.signal.clone(),
        })
        .await
        .map_err(|e| SshError::Recording(e.to_string()))?;
    Ok(result)
}

fn keep(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
