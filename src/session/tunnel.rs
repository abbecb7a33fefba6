//! The gateway end of `/v1/tunnel`: binary WebSocket messages carry the
//! client's raw bytes; pings keep idle tunnels alive through Google's front
//! end; a close frame's code and reason say why the session ended.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel carries binary messages only; use `custody connect`")]
    Text,
    #[error("tunnel transport: {0}")]
    Transport(String),
}

pub use crate::wire::{CLOSE_ERROR, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL};

pub fn split(ws: WebSocket) -> (TunnelTx, TunnelRx) {
    let (tx, rx) = ws.split();
    (TunnelTx { inner: tx }, TunnelRx { inner: rx })
}

pub struct TunnelRx {
    inner: SplitStream<WebSocket>,
}

impl TunnelRx {
    /// Next chunk of client bytes; `Ok(None)` when the client closed.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TunnelError> {
        loop {
            match self.inner.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(_))) => return Err(TunnelError::Text),
                Some(Err(e)) => return Err(TunnelError::Transport(e.to_string())),
            }
        }
    }
}

pub struct TunnelTx {
    inner: SplitSink<WebSocket, Message>,
}

impl TunnelTx {
    pub async fn send(&mut self, bytes: Bytes) -> Result<(), TunnelError> {
        self.inner
            .send(Message::Binary(bytes))
            .await
            .map_err(|e| TunnelError::Transport(e.to_string()))
    }

    pub async fn ping(&mut self) -> Result<(), TunnelError> {
        self.inner
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(|e| TunnelError::Transport(e.to_string()))
    }

    /// Best effort: the peer may already be gone.
    pub async fn close(&mut self, code: u16, reason: &str) {
        // RFC 6455 limits the reason to 123 bytes; cut on a char boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..end].into(),
        };
        let _ = self.inner.send(Message::Close(Some(frame))).await;
        let _ = self.inner.close().await;
    }
}
