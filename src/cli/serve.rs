//! `custody serve`: runs the gateway until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use super::args::ServeArgs;
use super::{shutdown_signal, CliError};
use crate::config::Config;

pub async fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    let ServeArgs { config, listen } = args;
    let config = Config::load(&config.display().to_string())?;
    let telemetry = crate::telemetry::init(&config.telemetry).await?;
    let addr = listen_addr(&config, listen);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    let local = listener.local_addr()?;
    eprintln!("custody: listening on http://{local}");
    tracing::info!(%local, connections = config.connections.len(), "custody serving");
    let served = crate::run(config, listener, shutdown_signal()).await;
    // Cloud Run's 10 s: sessions had 8, queued spans get what is left.
    telemetry
        .shutdown(std::time::Duration::from_millis(1500))
        .await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// --listen, else PORT on the configured host, else `[server] listen`.
fn listen_addr(config: &Config, listen: Option<String>) -> String {
    match (listen, std::env::var("PORT").ok()) {
        (Some(l), _) => l,
        (None, Some(port)) => {
            let host = config
                .server
                .listen
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("0.0.0.0");
            format!("{host}:{port}")
        }
        (None, None) => config.server.listen.clone(),
    }
}
