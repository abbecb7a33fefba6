//! The gateway end of a tunnel, whatever carries it: binary messages carry
//! the client's raw bytes; pings keep idle tunnels alive through Google's
//! front end; a close code and reason say why the session ended. Ingress
//! adapts its WebSocket to these two halves, so protocols never see HTTP.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel carries binary messages only; use `custody connect`")]
    Text,
    #[error("tunnel transport: {0}")]
    Transport(String),
}

/// What the gateway sends down a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Data(Bytes),
    Ping,
    /// RFC 6455 close code (see `wire::CLOSE_*`) and reason.
    Close(u16, String),
}

/// What arrives from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Data(Bytes),
    /// Pings and pongs: the transport's business.
    Control,
    Closed,
}

/// The largest message the gateway sends down a tunnel (the README's
/// promise: the tunnel's unit is 64 KiB).
pub const MAX_CHUNK: usize = 64 * 1024;

type TxSink = Pin<Box<dyn Sink<Outgoing, Error = TunnelError> + Send>>;
type RxStream = Pin<Box<dyn Stream<Item = Result<Incoming, TunnelError>> + Send>>;

pub fn halves(
    tx: impl Sink<Outgoing, Error = TunnelError> + Send + 'static,
    rx: impl Stream<Item = Result<Incoming, TunnelError>> + Send + 'static,
) -> (TunnelTx, TunnelRx) {
    (
        TunnelTx {
            inner: Box::pin(tx),
        },
        TunnelRx {
            inner: Box::pin(rx),
        },
    )
}

pub struct TunnelRx {
    inner: RxStream,
}

impl TunnelRx {
    /// Next chunk of client bytes; `Ok(None)` when the client closed.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TunnelError> {
        loop {
            match self.inner.next().await {
                None | Some(Ok(Incoming::Closed)) => return Ok(None),
                Some(Ok(Incoming::Data(b))) => return Ok(Some(b)),
                Some(Ok(Incoming::Control)) => continue,
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

pub struct TunnelTx {
    inner: TxSink,
}

impl TunnelTx {
    /// Sends `bytes` as messages of at most [`MAX_CHUNK`]: a frame of any
    /// size the gateway allows (a masked row of 50 MB) crosses a tunnel
    /// whose other end accepts 64 KiB messages.
    pub async fn send(&mut self, bytes: Bytes) -> Result<(), TunnelError> {
        if bytes.len() <= MAX_CHUNK {
            return self.inner.send(Outgoing::Data(bytes)).await;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_CHUNK));
            self.inner.feed(Outgoing::Data(chunk)).await?;
        }
        self.inner.flush().await
    }

    pub async fn ping(&mut self) -> Result<(), TunnelError> {
        self.inner.send(Outgoing::Ping).await
    }

    /// Best effort: the peer may already be gone.
    pub async fn close(&mut self, code: u16, reason: &str) {
        // RFC 6455 limits the reason to 123 bytes; cut on a char boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self
            .inner
            .send(Outgoing::Close(code, reason[..end].to_string()))
            .await;
        let _ = self.inner.close().await;
    }
}
