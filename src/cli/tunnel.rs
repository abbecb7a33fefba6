//! The WebSocket end of a tunnel: open it with our identity, then copy
//! bytes both ways.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::client::{header_str, refusal, ClientError, Target};
use crate::wire::{AUDIT_HEADER, DELEGATION_HEADER, REVIEW_HEADER};

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
    match tokio_tungstenite::connect_async_with_config(req, None, true).await {
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

/// Copies bytes both ways until the gateway closes; returns its close reason.
pub(crate) async fn pump<R, W>(
    ws: Ws,
    mut local_r: R,
    mut local_w: W,
) -> Result<String, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let up = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            buf.reserve(64 * 1024);
            let n = local_r.read_buf(&mut buf).await?;
            if n == 0 {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "client closed".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                // Keep reading the gateway's answer; `down` ends the pump.
                std::future::pending::<()>().await;
            }
            let chunk: Bytes = buf.split().freeze();
            if sink.send(Message::Binary(chunk)).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), ClientError>(())
    };
    let down = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => local_w.write_all(&b).await?,
                Ok(Message::Close(frame)) => {
                    let _ = local_w.flush().await;
                    return Ok(frame.map(|f| f.reason.to_string()).unwrap_or_default());
                }
                Ok(_) => {}
                Err(e) => return Ok(format!("tunnel error: {e}")),
            }
            local_w.flush().await?;
        }
        Ok::<String, ClientError>("tunnel closed".into())
    };
    tokio::select! {
        r = up => r.map(|_| String::new()),
        r = down => r,
    }
}
