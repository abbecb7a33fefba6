//! Custody: an access gateway that proves who is asking (OIDC), fetches the
//! upstream credential itself, and records every session.

pub mod cli;
pub mod config;
pub mod identity;
pub mod ingress;
pub mod mask;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod secrets;
pub mod session;
pub mod telemetry;
pub mod wire;

use std::future::Future;
use std::sync::Arc;

use config::Config;
pub use ingress::gateway::{Gateway, ServeError};

/// Cloud Run allows 10 s between SIGTERM and SIGKILL; sessions get most of it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Serves until `shutdown` resolves. Tests call it with a `127.0.0.1:0` listener.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gw = Arc::new(Gateway::new(config).await?);
    let warm = gw.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.verifier.warm().await {
            tracing::warn!(error = %e, "issuer keys not fetched yet; /readyz reports not ready until they are");
        }
    });
    let app = ingress::router(gw.clone());
    let signal = gw.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(
            live_sessions = signal.live.count(),
            "shutting down: no new sessions; live ones end and seal their recordings"
        );
        signal.shutdown.send_replace(true);
    };
    let header_read_timeout = gw.config.server.header_read_timeout;
    ingress::listen::serve(listener, app, header_read_timeout, shutdown).await?;
    // Upgraded tunnels outlive the HTTP server: wait for them to seal.
    let left = gw.live.wait_idle(SHUTDOWN_GRACE).await;
    if left > 0 {
        tracing::error!(
            left,
            "sessions still open at the end of the shutdown grace period"
        );
    }
    Ok(())
}
