//! Upstream → client for one bridged channel: replies, output (masked and
//! recorded), exit status, EOF and close, with the SFTP gate's answers slipped
//! in between whole server packets.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::mpsc;

use super::channel::{file_event, Kind, Shared};
use super::sftp::FileOp;
use super::sftp_gate::ServerFrames;
use super::text::StreamText;
use crate::recording::EventBody;

/// Held output (a prompt without newline) is released after this long.
const FLUSH_IDLE: Duration = Duration::from_millis(40);

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
