//! Client → upstream data on a bridged channel: the SFTP gate, the file taps,
//! guardrails on typed lines, and input recording.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use russh::server::Session as SshSession;
use russh::ChannelId;

use super::channel::{file_event, typed, Kind, LineRefusal, Shared, Upward};
use super::front::{Chan, Front};
use super::sftp::FileOp;
use super::sftp_gate::Gated;
use crate::recording::EventBody;

impl Front {
    /// One chunk of client data for `channel`.
    pub(super) async fn client_data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), russh::Error> {
        self.bytes.0.fetch_add(data.len() as u64, Relaxed);
        let shared = self.shared.clone();
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let mut gated = match ch.gate.as_mut().map(|g| g.client(data)) {
            Some(Ok(g)) => Some(g),
            Some(Err(why)) => return self.close_sftp(channel, session, Vec::new(), why).await,
            None => None,
        };
        let input = data;
        let data: &[u8] = gated.as_ref().map_or(input, |g| &g.forward);
        let mut ops = tapped(ch, data);
        let unparsable = |o: &FileOp| matches!(o, FileOp::Unparsable { .. });
        if gated.is_some() && ops.iter().any(unparsable) {
            // The tap would stop naming files: stop the channel instead, before
            // the request it cannot read reaches the server.
            ops.retain(|o| !unparsable(o));
            let why = "a request the recording cannot read (a control packet over 64 KiB)".into();
            return self.close_sftp(channel, session, ops, why).await;
        }
        let (forward, refused) = if ch.pty && shared.rules.guardrails.is_some() {
            typed(&mut ch.line, data, |line| shared.refusal(line, true))
        } else if let Some(g) = gated.as_mut() {
            // The gate already copied what passes: hand that buffer on.
            (Bytes::from(std::mem::take(&mut g.forward)), None)
        } else {
            (Bytes::copy_from_slice(input), None)
        };
        record_input(&shared, ch, &forward).await;
        let number = ch.number;
        if !forward.is_empty() && ch.to_up.send(Upward::Data(forward)).await.is_err() {
            return Ok(());
        }
        for op in ops {
            shared.record(file_event(number, op)).await;
        }
        if let Some(g) = gated {
            answer_gated(&shared, ch, g).await;
        }
        if let Some(refused) = refused {
            refuse_line(&shared, channel, session, refused).await?;
        }
        Ok(())
    }

    /// Ends an SFTP channel whose requests can no longer be vouched for,
    /// recording the file operations seen up to then.
    pub(super) async fn close_sftp(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
        ops: Vec<FileOp>,
        why: String,
    ) -> Result<(), russh::Error> {
        let number = self.number(channel);
        if let Some(ch) = self.channels.remove(&channel) {
            let _ = ch.to_up.send(Upward::Close).await;
        }
        for op in ops {
            self.shared.record(file_event(number, op)).await;
        }
        self.shared
            .record(EventBody::Error {
                message: format!("sftp channel {number}: {why}; the channel was closed"),
            })
            .await;
        session.close(channel)
    }
}

/// The file operations the channel's tap reads in client data.
fn tapped(ch: &Chan, data: &[u8]) -> Vec<FileOp> {
    let mut ops = Vec::new();
    if let Ok(mut k) = ch.kind.lock() {
        match &mut *k {
            Kind::Sftp(tap) => ops = tap.client(data),
            Kind::Scp(tap) if tap.write => ops = tap.feed(data),
            _ => {}
        }
    }
    ops
}

async fn record_input(shared: &Shared, ch: &Chan, forward: &Bytes) {
    if ch.pty && shared.conn.record_input && !forward.is_empty() {
        let text = String::from_utf8_lossy(forward).into_owned();
        shared
            .record(EventBody::Input {
                channel: ch.number,
                data: shared.shown(&text),
            })
            .await;
    }
}

/// Sends the gate's own answers to the client and records what it refused.
async fn answer_gated(shared: &Shared, ch: &Chan, g: Gated) {
    let number = ch.number;
    if !g.replies.is_empty() {
        let _ = ch.inject.send(Bytes::from(g.replies)).await;
    }
    for what in g.refused {
        shared
            .record(EventBody::SshRequest {
                channel: number,
                request: "sftp".into(),
                detail: Some(what),
                outcome:
                    "refused: not allowed through this gateway (answered SSH_FX_OP_UNSUPPORTED)"
                        .into(),
            })
            .await;
    }
}

/// A typed line the guardrails refused: recorded, and the client is told.
async fn refuse_line(
    shared: &Shared,
    channel: ChannelId,
    session: &mut SshSession,
    (rule, reason, line): LineRefusal,
) -> Result<(), russh::Error> {
    shared
        .record(EventBody::Guardrail {
            sql: shared.shown(&line),
            protocol: "ssh-shell".into(),
            rule: rule.clone(),
            outcome: "refused".into(),
        })
        .await;
    let msg = format!(
        "\r\ncustody: refused by guardrail {rule}: {reason} (audit id {})\r\n",
        shared.audit_id
    );
    session.data(channel, Bytes::from(msg))?;
    Ok(())
}
