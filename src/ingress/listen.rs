//! The HTTP server loop. It is axum::serve's loop with deadlines: axum
//! offers no way to bound how long a client may take to send a request, so
//! a client that opens sockets and trickles (or never sends) headers would
//! hold them for as long as it likes.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests
/// in flight finish (upgraded WebSockets are no longer HTTP connections and
/// are the caller's to wait for).
///
/// `header_read_timeout` bounds every request's header read; until a
/// connection's first request arrives it also bounds the whole connection,
/// which covers the bytes hyper reads before it knows the HTTP version.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // Each connection holds a receiver; shutdown drops the sender, and
    // waits until every receiver is gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Tunnels are request/response traffic: never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let stop = stop_rx.clone();
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            header_read_timeout,
            stop,
        ));
    }
    drop(stop_rx);
    drop(listener);
    stop_tx.send_replace(());
    // Wait for the connections' graceful ends.
    stop_tx.closed().await;
    Ok(())
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let seen = Arc::new(AtomicBool::new(false));
    let inner = TowerToHyperService::new(app);
    let flag = seen.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        flag.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&inner, req)
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // CONNECT protocol is how WebSockets run over HTTP/2.
    builder.http2().enable_connect_protocol();
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service));
    let first_request = tokio::time::sleep(header_read_timeout);
    let mut first_request = pin!(first_request);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            _ = &mut first_request, if !seen.load(Ordering::Relaxed) => {
                // The request may have arrived in this very poll.
                if seen.load(Ordering::Relaxed) {
                    continue;
                }
                tracing::info!(%peer, timeout = ?header_read_timeout, "connection dropped: no complete request headers in time ([server] header_read_timeout)");
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
