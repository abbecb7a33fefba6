//! `GET /v1/tunnel/{connection}`: admits the caller, then upgrades to a
//! WebSocket and hands the session to its protocol.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tracing::Instrument;

use super::admit::{self, Request};
use super::gateway::Gateway;
use super::{new_audit_id, refused, with_audit, ApiError};
use crate::config::Kind;
use crate::protocol;
use crate::session::tunnel::{self, Incoming, Outgoing, TunnelError, TunnelRx, TunnelTx};
use crate::session::SessionContext;
use crate::telemetry;

pub async fn handler(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let audit_id = new_audit_id();
    let kind = gw.connection(&name).map(|c| c.kind);
    let span = telemetry::session_span(&headers, &audit_id, &name, "tunnel", kind);
    let req = Request {
        headers: &headers,
        peer,
        connection: &name,
        mode: "tunnel",
        audit_id: &audit_id,
        span: &span,
    };
    let admitted = admit_tunnel(&gw, &req, ws).instrument(span.clone()).await;
    let (ws, ctx) = match admitted {
        Ok(a) => a,
        Err(e) => return refused(&span, e.at(&audit_id)),
    };
    let resp = ws
        .max_message_size(gw.config.server.max_message_bytes.max(1 << 20))
        .read_buffer_size(crate::wire::TUNNEL_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _live = gw.live.enter();
            let (tx, rx) = split(socket);
            run(&gw, ctx, tx, rx).instrument(span).await
        });
    with_audit(&audit_id, resp)
}

/// Authenticates before looking at the upgrade, so a bad token is a 401
/// whatever else is wrong; a named review must cover the session.
async fn admit_tunnel(
    gw: &Gateway,
    req: &Request<'_>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(WebSocketUpgrade, SessionContext), ApiError> {
    let who = admit::identify(gw, req).await?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_websocket",
            format!("{e}; this endpoint is a WebSocket tunnel: use `custody connect`"),
            req.audit_id,
        )
    })?;
    let mut session = admit::session(gw, req, who).await?;
    if let Some(id) = req.review() {
        match gw.approvals.open_with(&session, id).await {
            Ok(r) => session.approval = Some(r),
            Err(e) => {
                admit::end_unrun(session, "approval not usable").await;
                return Err(e.into());
            }
        }
    }
    Ok((ws, gw.context(session).await))
}

async fn run(gw: &Gateway, ctx: SessionContext, tx: TunnelTx, rx: TunnelRx) {
    match ctx.session.permit.connection.kind {
        Kind::Ssh => protocol::ssh::serve::serve(ctx, &gw.ssh, tx, rx).await,
        Kind::Postgres => protocol::postgres::relay::serve(ctx, &gw.postgres, tx, rx).await,
    }
}

/// The WebSocket's sink with its errors as the tunnel's. Not `sink_map_err`:
/// that takes its closure on the first error and panics on a second one,
/// which a close after a failed send is (seen with 1000 sessions at once).
struct Transport<S>(S);

fn transport(e: axum::Error) -> TunnelError {
    TunnelError::Transport(e.to_string())
}

impl<S> futures_util::Sink<Message> for Transport<S>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    type Error = TunnelError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(transport)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), TunnelError> {
        Pin::new(&mut self.0).start_send(item).map_err(transport)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(transport)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(transport)
    }
}

/// The WebSocket as the two halves of a tunnel.
fn split(ws: WebSocket) -> (TunnelTx, TunnelRx) {
    let (sink, stream) = ws.split();
    let sink = Transport(sink).with(|out: Outgoing| async move {
        Ok::<_, TunnelError>(match out {
            Outgoing::Data(b) => Message::Binary(b),
            Outgoing::Ping => Message::Ping(Bytes::new()),
            Outgoing::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        })
    });
    let stream = stream.map(|m| match m {
        Ok(Message::Binary(b)) => Ok(Incoming::Data(b)),
        Ok(Message::Close(_)) => Ok(Incoming::Closed),
        Ok(Message::Ping(_) | Message::Pong(_)) => Ok(Incoming::Control),
        Ok(Message::Text(_)) => Err(TunnelError::Text),
        Err(e) => Err(TunnelError::Transport(e.to_string())),
    });
    tunnel::halves(sink, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that fails every call, as a reset WebSocket does.
    struct Broken;

    impl futures_util::Sink<Message> for Broken {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Err(axum::Error::new(std::io::Error::other("reset"))))
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), axum::Error> {
            Err(axum::Error::new(std::io::Error::other("reset")))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Err(axum::Error::new(std::io::Error::other("reset"))))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Err(axum::Error::new(std::io::Error::other("reset"))))
        }
    }

    #[tokio::test]
    async fn a_close_after_a_failed_send_is_an_error_not_a_panic() {
        let mut sink = Transport(Broken);
        let sent = sink.send(Message::Binary(Bytes::from_static(b"x"))).await;
        assert!(matches!(sent, Err(TunnelError::Transport(_))), "{sent:?}");
        let closed = sink.close().await;
        assert!(
            matches!(closed, Err(TunnelError::Transport(_))),
            "{closed:?}"
        );
    }
}
