//! What an SSH session's channels share, how a channel's output is treated,
//! the client → upstream writer, the typed-line guard and file events.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use russh::client;
use russh::ChannelWriteHalf;
use tokio::sync::{mpsc, watch};

use super::scp::ScpTap;
use super::sftp::{FileOp, SftpTap};
use crate::config::ConnectionConfig;
use crate::mask::Engine;
use crate::policy::command::MAX_COMMAND;
use crate::policy::decision::{self, Decision, Grant, Input, Path, Rules};
use crate::recording::{EventBody, Tap};

/// What the session's channels share.
pub(super) struct Shared {
    pub(super) audit_id: String,
    pub(super) traceparent: Option<String>,
    pub(super) conn: Arc<ConnectionConfig>,
    pub(super) tap: Tap,
    pub(super) mask: Option<Arc<Engine>>,
    pub(super) rules: Rules,
    /// A JIT approval covers this session: held commands may run.
    pub(super) approved: bool,
    pub(super) authed: AtomicBool,
    pub(super) commands: AtomicU64,
    /// Set once: why the whole session must end now.
    pub(super) end: watch::Sender<Option<String>>,
    /// Channel pumps; each holds a recorder tap, so all must be gone
    /// before the recording can be sealed.
    pub(super) pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    pub(super) fn end_with(&self, why: String) {
        self.end.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub(super) async fn record(&self, body: EventBody) -> bool {
        match self.tap.record(body).await {
            Ok(()) => true,
            Err(e) => {
                self.end_with(format!("session ended because recording failed: {e}"));
                false
            }
        }
    }

    pub(super) fn shown(&self, text: &str) -> String {
        match &self.mask {
            Some(engine) => crate::mask::text(engine, text, &mut Default::default()),
            None => text.to_string(),
        }
    }

    /// Guardrails for a command or typed line: None when it may run.
    /// `terminal`: a PTY follows (typed lines), so a shell reading stdin is checked line by line.
    pub(super) fn refusal(&self, command: &str, terminal: bool) -> Option<(String, String)> {
        self.rules.guardrails.as_ref()?;
        let grant = if self.approved {
            Grant::Window
        } else {
            Grant::None
        };
        let input = Input::Command {
            text: command,
            terminal,
        };
        match decision::decide(Path::SshTunnel, &self.rules, grant, input) {
            Decision::Run | Decision::RunApproved { .. } => None,
            Decision::Refuse(r) if r.cause == decision::Cause::Denied => Some((r.rule, r.reason)),
            Decision::Refuse(decision::Refusal { rule, .. })
            | Decision::Hold { rule }
            | Decision::UseReview { rule, .. } => Some((
                rule,
                format!(
                    "the command requires approval; request it with `custody exec {} -- COMMAND`",
                    self.conn.name()
                ),
            )),
        }
    }
}

/// How a channel's output is treated, known once its request arrives.
#[derive(Default)]
pub(super) enum Kind {
    #[default]
    Pending,
    /// Shell or exec: masked (when configured) and recorded.
    Terminal,
    /// SFTP: passed through; file names and sizes recorded.
    Sftp(SftpTap),
    /// Legacy scp (`scp -t` / `scp -f` exec): passed through, never masked
    /// (file contents); file names and sizes recorded.
    Scp(ScpTap),
    /// Forwarded TCP or another subsystem: passed through, counted only.
    Raw,
}

/// Chunks of client data queued per channel (each at most one SSH packet).
pub(super) const UPWARD_QUEUE: usize = 64;

pub(super) enum Upward {
    Data(Bytes),
    Eof,
    Close,
}

pub(super) async fn write_up(
    up: Arc<ChannelWriteHalf<client::Msg>>,
    mut rx: mpsc::Receiver<Upward>,
) {
    while let Some(msg) = rx.recv().await {
        let sent = match msg {
            Upward::Data(b) => up.data_bytes(b).await,
            Upward::Eof => up.eof().await,
            Upward::Close => {
                let _ = up.close().await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Typed input on a PTY: bytes pass through as typed, but Enter on a line
/// that guardrails refuse becomes Ctrl-U (the shell discards the line).
/// Best effort: a shell's own editing (history, completion) is invisible
/// here, which is why exec commands, checked exactly, are the safe path.
pub(super) type LineRefusal = (String, String, String);
pub(super) fn typed(
    line: &mut Vec<u8>,
    data: &[u8],
    check: impl Fn(&str) -> Option<(String, String)>,
) -> (Bytes, Option<LineRefusal>) {
    let mut out = BytesMut::with_capacity(data.len());
    for &b in data {
        match b {
            b'\r' | b'\n' => {
                let text = String::from_utf8_lossy(line).into_owned();
                line.clear();
                if let Some((rule, reason)) = check(&text) {
                    out.extend_from_slice(&[0x15]);
                    return (out.freeze(), Some((rule, reason, text)));
                }
                out.extend_from_slice(&[b]);
            }
            0x7f | 0x08 => {
                line.pop();
                out.extend_from_slice(&[b]);
            }
            0x03 | 0x15 => {
                line.clear();
                out.extend_from_slice(&[b]);
            }
            _ => {
                if b >= 0x20 && line.len() < MAX_COMMAND {
                    line.push(b);
                }
                out.extend_from_slice(&[b]);
            }
        }
    }
    (out.freeze(), None)
}

pub(super) fn file_event(channel: u32, op: FileOp) -> EventBody {
    let file = |op: &str, path: String, to: Option<String>| EventBody::File {
        channel,
        op: op.into(),
        path,
        to,
        bytes_written: 0,
        bytes_read: 0,
    };
    match op {
        FileOp::File {
            path,
            write,
            bytes_written,
            bytes_read,
            ..
        } => EventBody::File {
            channel,
            op: if write { "write" } else { "read" }.into(),
            path,
            to: None,
            bytes_written,
            bytes_read,
        },
        FileOp::Remove { path } => file("remove", path, None),
        FileOp::Rename { from, to } => file("rename", from, Some(to)),
        FileOp::Mkdir { path } => file("mkdir", path, None),
        FileOp::Rmdir { path } => file("rmdir", path, None),
        FileOp::Setstat { path } => file("setstat", path, None),
        FileOp::Symlink { link, target } => file("symlink", link, Some(target)),
        FileOp::Hardlink { link, target } => file("hardlink", link, Some(target)),
        FileOp::Copy {
            from,
            to,
            bytes: Some(n),
        } => EventBody::File {
            channel,
            op: "copy".into(),
            path: from,
            to: Some(to),
            bytes_written: n,
            bytes_read: n,
        },
        // The server copied "to end of file" and the size was never seen:
        // the op name says the count is not known, rather than record 0.
        FileOp::Copy {
            from,
            to,
            bytes: None,
        } => file("copy (size not known)", from, Some(to)),
        FileOp::Unparsable { reason } => EventBody::Error {
            message: format!(
                "channel {channel}: {reason}; file names are no longer recorded on it"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str) -> Option<(String, String)> {
        line.contains("rm -rf")
            .then(|| ("pattern rm".to_string(), "no".to_string()))
    }

    #[test]
    fn typed_lines_refused_on_enter() {
        let mut line = Vec::new();
        let (out, r) = typed(&mut line, b"ls -l\r", check);
        assert_eq!(&out[..], b"ls -l\r");
        assert!(r.is_none());
        let (out, r) = typed(&mut line, b"rm -r", check);
        assert_eq!(&out[..], b"rm -r");
        assert!(r.is_none());
        let (out, r) = typed(&mut line, b"f /\rmore", check);
        assert_eq!(&out[..], b"f /\x15");
        let (rule, _, text) = r.unwrap();
        assert_eq!(rule, "pattern rm");
        assert_eq!(text, "rm -rf /");
        assert!(line.is_empty());
    }

    #[test]
    fn editing_keys_keep_the_line_honest() {
        let mut line = Vec::new();
        let (_, r) = typed(&mut line, b"rm -rf /x\x15echo ok\r", check);
        assert!(r.is_none(), "Ctrl-U cleared the dangerous text");
        let (_, r) = typed(&mut line, b"rm -rx\x7ff /\r", check);
        assert!(r.is_some(), "backspace edits are followed");
    }
}
