//! `POST /v1/exec/{ssh connection}`: one command run on the upstream as the
//! connection's user; its stdout, stderr and exit status, masked and
//! recorded. Ingress decides first whether it runs.

use russh::client::{self, Handle};
use russh::{Channel, ChannelMsg};

use super::upstream::{self, Upstream};
use super::SshError;
use crate::policy::decision::{Cause, Refusal};
use crate::recording::EventBody;
use crate::session::{Session, SessionContext};

/// Output kept per stream; the answer says when it was cut.
pub const MAX_OUTPUT: usize = 16 << 20;

pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: Option<u32>,
    pub signal: Option<String>,
    pub truncated: bool,
}

/// What the caller is told when a command is refused.
pub fn refusal_message(r: &Refusal) -> String {
    let reason = match r.cause {
        Cause::Denied => r.reason.as_str(),
        Cause::NoApprovers | Cause::ApprovalElsewhere => {
            "the command requires approval, and this connection names no approvers"
        }
    };
    format!("refused by guardrail {}: {reason}", r.rule)
}

/// Runs `command` on the upstream as the connection's user; output is
/// masked before it is recorded or returned.
pub async fn run(ctx: &SessionContext, command: &str) -> Result<ExecResult, SshError> {
    let session = &ctx.session;
    let engine = ctx.masker.engine().map(|e| e.as_ref());
    let (handle, mut ch) = start(ctx, command).await?;
    let mut got = Collected::default();
    // A revocation, the deadline or a shutdown stops a running exec too:
    // the command is signalled, and what it wrote so far is recorded.
    let interrupted = tokio::select! {
        r = collect(&mut ch, &mut got) => { r?; None }
        i = ctx.interrupted() => Some(i),
    };
    if interrupted.is_some() {
        let _ = ch.signal(russh::Sig::TERM).await;
        let _ = ch.signal(russh::Sig::KILL).await;
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let text = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        match engine {
            Some(e) => crate::mask::text(e, &s, &mut Default::default()),
            None => s.into_owned(),
        }
    };
    let mut result = got.result;
    result.stdout = text(&got.out);
    result.stderr = text(&got.err);
    record(session, &result).await?;
    match interrupted {
        Some(i) => Err(SshError::Interrupted {
            policy: i.close_code() == crate::wire::CLOSE_POLICY,
            reason: i.reason(),
        }),
        None => Ok(result),
    }
}

/// What a command wrote, kept outside `collect` so an interrupted exec
/// still records its output so far.
struct Collected {
    out: Vec<u8>,
    err: Vec<u8>,
    result: ExecResult,
}

impl Default for Collected {
    fn default() -> Self {
        Collected {
            out: Vec::new(),
            err: Vec::new(),
            result: ExecResult {
                stdout: String::new(),
                stderr: String::new(),
                exit_status: None,
                signal: None,
                truncated: false,
            },
        }
    }
}

/// Logs in as the connection's user and starts `command` on a new channel.
async fn start(
    ctx: &SessionContext,
    command: &str,
) -> Result<(Handle<Upstream>, Channel<client::Msg>), SshError> {
    let session = &ctx.session;
    let conn = &session.permit.connection;
    let user = conn.user.clone().unwrap_or_else(|| "root".into());
    let handle = upstream::open(&ctx.credentials, conn, &user).await?;
    let ch = handle
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
    Ok((handle, ch))
}

/// Reads the channel to its close into `got`: raw stdout, raw stderr, and
/// the status.
async fn collect(ch: &mut Channel<client::Msg>, got: &mut Collected) -> Result<(), SshError> {
    let Collected { out, err, result } = got;
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => keep(out, &data, &mut result.truncated),
            ChannelMsg::ExtendedData { data, .. } => keep(err, &data, &mut result.truncated),
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
    Ok(())
}

/// Records the (already masked) output and the exit.
async fn record(session: &Session, result: &ExecResult) -> Result<(), SshError> {
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
    Ok(())
}

fn keep(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
