//! The WebSocket end of a tunnel: open it with our identity, then copy
//! bytes both ways.

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::client::{header_str, refusal, ClientError, Target};
use crate::wire::{self, AUDIT_HEADER, CLIENT_CLOSED, DELEGATION_HEADER, REVIEW_HEADER};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a tunnel; returns the socket and the session's audit id.
pub(crate) async fn open_tunnel(
    target: &Target,
    connection: &str,
) -> Result<(Ws, String), ClientError> {
    let url = target.tunnel_url(connection);
    let transport = |why: String| ClientError::Transport {
        url: url.clone(),
        why,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| transport(e.to_string()))?;
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", target.token)
            .parse()
            .map_err(|_| ClientError::Usage("token has invalid characters".into()))?,
    );
    if let Some(tp) = target.traceparent.as_ref().and_then(|t| t.parse().ok()) {
        h.insert("traceparent", tp);
    }
    if let Some(d) = target
        .delegation
        .as_ref()
        .and_then(|t| t.trim().parse().ok())
    {
        h.insert(DELEGATION_HEADER, d);
    }
    if let Some(r) = target.review.as_ref().and_then(|t| t.trim().parse().ok()) {
        h.insert(REVIEW_HEADER, r);
    }
    let config = WebSocketConfig::default().read_buffer_size(wire::TUNNEL_READ_BUFFER);
    match tokio_tungstenite::connect_async_with_config(req, Some(config), true).await {
        Ok((ws, resp)) => {
            let audit = header_str(resp.headers(), AUDIT_HEADER).unwrap_or_default();
            Ok((ws, audit))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let audit_id = header_str(resp.headers(), AUDIT_HEADER);
            let body = resp.body().as_deref().unwrap_or_default();
            Err(refusal(resp.status().as_u16(), body, audit_id))
        }
        Err(e) => Err(transport(e.to_string())),
    }
}

/// How long to wait for the gateway's Close after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Which side ended the pump first.
enum LocalEnd {
    /// The gateway closed (or failed) first: its reason.
    Gateway(String),
    /// The local side ended (EOF, a write to it failed, a signal): close.
    Local,
}

/// Copies bytes both ways until either side ends; returns the gateway's
/// close reason. When the local side ends first (EOF, a broken pipe,
/// `stop`), the WebSocket is closed properly: Close sent, the gateway's
/// Close awaited (briefly), so the session is recorded as closed by the
/// client rather than as a transport error.
pub(crate) async fn pump<R, W>(
    ws: Ws,
    mut local_r: R,
    mut local_w: W,
    stop: impl Future<Output = ()>,
) -> Result<String, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let ended = tokio::select! {
        r = up(&mut sink, &mut local_r) => r,
        r = down(&mut stream, &mut local_w) => r,
        _ = stop => LocalEnd::Local,
    };
    match ended {
        LocalEnd::Gateway(why) => {
            // Completes the close handshake the gateway started.
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
            Ok(why)
        }
        LocalEnd::Local => Ok(close(&mut sink, &mut stream, &mut local_w).await),
    }
}

/// Local bytes to the gateway until the local side ends.
async fn up<R: AsyncRead + Unpin>(sink: &mut SplitSink<Ws, Message>, local_r: &mut R) -> LocalEnd {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        buf.reserve(64 * 1024);
        match local_r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return LocalEnd::Local,
            Ok(_) => {}
        }
        let chunk: Bytes = buf.split().freeze();
        if sink.send(Message::Binary(chunk)).await.is_err() {
            // The gateway is gone; `down` reports why.
            std::future::pending::<()>().await;
        }
    }
}

/// Gateway bytes to the local side until the gateway closes.
async fn down<W: AsyncWrite + Unpin>(stream: &mut SplitStream<Ws>, local_w: &mut W) -> LocalEnd {
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Binary(b)) => {
                if local_w.write_all(&b).await.is_err() || local_w.flush().await.is_err() {
                    return LocalEnd::Local;
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = local_w.flush().await;
                return LocalEnd::Gateway(frame.map(|f| f.reason.to_string()).unwrap_or_default());
            }
            Ok(_) => {}
            Err(e) => return LocalEnd::Gateway(format!("tunnel error: {e}")),
        }
    }
    LocalEnd::Gateway("tunnel closed".into())
}

/// Our side of the close handshake: send Close, then keep delivering what
/// the gateway still sends (a half-closed client may want it) until its
/// Close arrives or `CLOSE_WAIT` passes. Returns the gateway's reason.
async fn close<W: AsyncWrite + Unpin>(
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
    local_w: &mut W,
) -> String {
    // The gateway's WebSocket echoes this reason in its answering Close.
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: CLIENT_CLOSED.into(),
    };
    if sink.send(Message::Close(Some(frame))).await.is_err() {
        return String::new();
    }
    let answer = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    let _ = local_w.write_all(&b).await;
                }
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| f.reason.to_string()).unwrap_or_default();
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        String::new()
    };
    let why = tokio::time::timeout(CLOSE_WAIT, answer)
        .await
        .unwrap_or_default();
    let _ = local_w.flush().await;
    why
}
