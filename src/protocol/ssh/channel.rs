//! One SSH channel's data path: what the session's channels share, the
//! upstream → client pump (replies, masked and recorded output, exit status),
//! the client → upstream writer, and the typed-line guard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use russh::client;
use russh::server::{self, Msg};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{mpsc, watch};

use super::scp::ScpTap;
use super::sftp::{FileOp, SftpTap};
use super::sftp_gate::ServerFrames;
use super::text::StreamText;
use crate::config::ConnectionConfig;
use crate::mask::Engine;
use crate::policy::command::MAX_COMMAND;
use crate::policy::decision::{self, Decision, Grant, Input, Path, Rules};
use crate::recording::{EventBody, Tap};

/// Held output (a prompt without newline) is released after this long.
const FLUSH_IDLE: Duration = Duration::from_millis(40);

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

/// Upstream → client for one channel: replies, output (masked, recorded),
/// exit status, EOF and close.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump(
    shared: Arc<Shared>,
    bytes: Arc<(AtomicU64, AtomicU64)>,
    mut up: ChannelReadHalf,
    client: ChannelWriteHalf<Msg>,
    handle: server::Handle,
    id: ChannelId,
    kind: Arc<Mutex<Kind>>,
    replies: mpsc::Sender<bool>,
    mut injected: mpsc::Receiver<Bytes>,
) {
    let mut p = Pump {
        shared,
        bytes,
        client,
        handle,
        id,
        number: u32::from(id),
        kind,
        replies,
        streams: [StreamText::default(), StreamText::default()],
        frames: ServerFrames::default(),
        held: Vec::new(),
    };
    let mut injecting = true;
    loop {
        let holding = p.streams.iter().any(StreamText::holding);
        let msg = tokio::select! {
            m = up.wait() => m,
            r = injected.recv(), if injecting => {
                match r {
                    Some(r) => {
                        if !p.inject(r).await {
                            break;
                        }
                    }
                    None => injecting = false,
                }
                continue;
            }
            _ = tokio::time::sleep(FLUSH_IDLE), if holding => {
                if !flush(&p.shared, &p.client, p.number, &mut p.streams).await {
                    break;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        if !p.message(msg).await {
            break;
        }
    }
    p.finish().await;
}

/// One channel's pump state.
struct Pump {
    shared: Arc<Shared>,
    bytes: Arc<(AtomicU64, AtomicU64)>,
    client: ChannelWriteHalf<Msg>,
    handle: server::Handle,
    id: ChannelId,
    number: u32,
    kind: Arc<Mutex<Kind>>,
    replies: mpsc::Sender<bool>,
    streams: [StreamText; 2],
    /// SFTP answers from the gate wait here for a boundary between server packets.
    frames: ServerFrames,
    held: Vec<Bytes>,
}

impl Pump {
    /// An answer from the gate: sent now at a packet boundary, else held.
    /// False when the client is gone.
    async fn inject(&mut self, r: Bytes) -> bool {
        if self.frames.at_boundary() && self.held.is_empty() {
            return send(&self.client, 0, r).await;
        }
        self.held.push(r);
        true
    }

    /// One message from the upstream; false when the pump must stop.
    async fn message(&mut self, msg: ChannelMsg) -> bool {
        let (shared, client, number) = (&self.shared, &self.client, self.number);
        match msg {
            ChannelMsg::Data { data } => return self.data(data).await,
            ChannelMsg::ExtendedData { data, ext } => {
                self.bytes.1.fetch_add(data.len() as u64, Relaxed);
                let i = usize::from(ext == 1);
                let (kind, stream) = (&self.kind, &mut self.streams[i]);
                if !deliver(shared, client, kind, number, i, stream, data).await {
                    return false;
                }
            }
            ChannelMsg::Success => {
                let _ = self.replies.try_send(true);
            }
            ChannelMsg::Failure => {
                let _ = self.replies.try_send(false);
            }
            ChannelMsg::ExitStatus { exit_status } => {
                flush(shared, client, number, &mut self.streams).await;
                shared
                    .record(EventBody::Exit {
                        channel: number,
                        status: Some(exit_status),
                        signal: None,
                    })
                    .await;
                let _ = client.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                flush(shared, client, number, &mut self.streams).await;
                shared
                    .record(EventBody::Exit {
                        channel: number,
                        status: None,
                        signal: Some(format!("{signal_name:?}")),
                    })
                    .await;
                let _ = self
                    .handle
                    .exit_signal_request(self.id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
            }
            ChannelMsg::Eof => {
                flush(shared, client, number, &mut self.streams).await;
                let _ = client.eof().await;
            }
            ChannelMsg::Close => return false,
            _ => {}
        }
        true
    }

    /// Standard output; held gate answers go out at the first SFTP packet
    /// boundary. False when the pump must stop.
    async fn data(&mut self, mut data: Bytes) -> bool {
        let (shared, client, kind, number) = (&self.shared, &self.client, &self.kind, self.number);
        self.bytes.1.fetch_add(data.len() as u64, Relaxed);
        let sftp = kind.lock().is_ok_and(|k| matches!(*k, Kind::Sftp(_)));
        let cut = if sftp {
            self.frames.first_boundary(&data)
        } else {
            None
        };
        if let Some(at) = cut.filter(|_| !self.held.is_empty()) {
            let head = data.split_to(at);
            if !head.is_empty()
                && !deliver(shared, client, kind, number, 0, &mut self.streams[0], head).await
            {
                return false;
            }
            let mut ok = true;
            for r in self.held.drain(..) {
                ok &= send(client, 0, r).await;
            }
            if !ok {
                return false;
            }
        }
        data.is_empty()
            || deliver(shared, client, kind, number, 0, &mut self.streams[0], data).await
    }

    /// The channel ended: flush held text, record the file operations left
    /// open, close the client's channel.
    async fn finish(mut self) {
        let (shared, number) = (&self.shared, self.number);
        flush(shared, &self.client, number, &mut self.streams).await;
        let left = match self.kind.lock() {
            Ok(mut k) => match &mut *k {
                Kind::Sftp(tap) => tap.finish(),
                Kind::Scp(tap) => tap.finish(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        for op in left {
            shared.record(file_event(number, op)).await;
        }
        let _ = self.client.close().await;
    }
}

/// Sends one chunk of output to the client; false when the client is gone.
pub(super) async fn deliver(
    shared: &Shared,
    client: &ChannelWriteHalf<Msg>,
    kind: &Mutex<Kind>,
    number: u32,
    stream: usize,
    text: &mut StreamText,
    data: Bytes,
) -> bool {
    let mut ops = Vec::new();
    let terminal = match kind.lock() {
        Ok(mut k) => match &mut *k {
            Kind::Sftp(tap) => {
                ops = tap.server(&data);
                false
            }
            // `scp -f`: the server sends the files. Passed raw (not recorded
            // as output) only while the stream really parses as scp and no
            // masking applies: a program that merely calls itself scp gets
            // the terminal treatment. Acks of `scp -t` and stderr are text.
            Kind::Scp(tap) if !tap.write && stream == 0 => {
                ops = tap.feed(&data);
                shared.mask.is_some() || tap.inert()
            }
            Kind::Scp(_) => true,
            Kind::Raw => false,
            Kind::Pending | Kind::Terminal => true,
        },
        Err(_) => false,
    };
    let unparsable = ops.iter().any(|o| matches!(o, FileOp::Unparsable { .. }));
    for op in ops {
        shared.record(file_event(number, op)).await;
    }
    // SFTP answers the tap cannot read would leave later files unnamed:
    // the channel ends instead (the pump closes it).
    if unparsable && kind.lock().is_ok_and(|k| matches!(*k, Kind::Sftp(_))) {
        return false;
    }
    if !terminal {
        return send(client, stream, data).await;
    }
    match &shared.mask {
        Some(engine) => {
            let ready = text.push(&data, true);
            if ready.is_empty() {
                return true;
            }
            let masked = crate::mask::text(engine, &ready, &mut Default::default());
            let sent = send(client, stream, Bytes::from(masked.clone().into_bytes())).await;
            record_output(shared, number, stream, masked).await;
            sent
        }
        None => {
            let ready = text.push(&data, false);
            let sent = send(client, stream, data).await;
            if !ready.is_empty() {
                record_output(shared, number, stream, ready).await;
            }
            sent
        }
    }
}

pub(super) async fn flush(
    shared: &Shared,
    client: &ChannelWriteHalf<Msg>,
    number: u32,
    streams: &mut [StreamText; 2],
) -> bool {
    let mut ok = true;
    for (i, st) in streams.iter_mut().enumerate() {
        let rest = st.flush();
        if rest.is_empty() {
            continue;
        }
        // Held text was never sent (masking on): mask and send it now.
        // Without masking only a cut UTF-8 tail is held, already sent raw.
        if let Some(engine) = &shared.mask {
            let masked = crate::mask::text(engine, &rest, &mut Default::default());
            ok &= send(client, i, Bytes::from(masked.clone().into_bytes())).await;
            record_output(shared, number, i, masked).await;
        } else {
            record_output(shared, number, i, rest).await;
        }
    }
    ok
}

pub(super) async fn send(client: &ChannelWriteHalf<Msg>, stream: usize, data: Bytes) -> bool {
    if stream == 1 {
        client.extended_data_bytes(1, data).await.is_ok()
    } else {
        client.data_bytes(data).await.is_ok()
    }
}

pub(super) async fn record_output(shared: &Shared, channel: u32, stream: usize, data: String) {
    shared
        .record(EventBody::Output {
            channel,
            stream: if stream == 1 { "e" } else { "o" }.into(),
            data,
        })
        .await;
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
