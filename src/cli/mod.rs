//! The `custody` command line: one module per subcommand. `main.rs` parses
//! [`args::Cli`] and calls the subcommand's `run`.

pub mod args;
pub mod client;
pub mod config;
pub mod connect;
pub mod delegate;
pub mod dev;
pub mod exec;
pub mod mcp;
mod render;
pub mod replay;
pub mod review;
pub mod revoke;
pub mod serve;
pub mod sessions;
mod tunnel;
pub mod ui;
pub mod verify;

pub use client::{ClientError, Target};

/// Why a subcommand failed. Variants with a message and a source print as
/// "message: source" (main prints the whole chain).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the gateway went wrong; carries its own exit code.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--since {0:?}: use a duration (\"24h\", \"7d\"), a date (2026-11-30) or an RFC 3339 time"
    )]
    Since(String),
    #[error(transparent)]
    OutOfRange(#[from] chrono::OutOfRangeError),
    #[error("cannot encode the key")]
    EncodeKey(#[source] ed25519_dalek::pkcs8::Error),
    #[error("cannot encode the public key")]
    EncodePublicKey(#[source] ed25519_dalek::pkcs8::spki::Error),
    #[error("cannot create {path} (it must not exist yet)")]
    CreateKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the development issuer only listens on loopback, not {0}")]
    NotLoopback(std::net::SocketAddr),
    #[error("--alg {0}: use RS256 or ES256")]
    Alg(String),
    #[error(transparent)]
    DevIssuer(#[from] crate::identity::devissuer::DevIssuerError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(transparent)]
    Serve(#[from] crate::ServeError),
    #[error(transparent)]
    Recording(#[from] crate::recording::RecordError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
