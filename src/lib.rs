//! Custody: an access gateway that proves who is asking (OIDC), fetches the
//! upstream credential itself, and records every session.

pub mod client;
pub mod config;
pub mod devissuer;
pub mod identity;
pub mod ingress;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod secrets;
pub mod session;
pub mod telemetry;
pub mod tunnel;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use config::{Config, ConnectionConfig};
use identity::Verifier;
use policy::guardrails::Guardrails;
use recording::Store;
use secrets::SecretStore;
use session::CancelRegistry;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Recording(#[from] recording::RecordError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection {connection}: {source}")]
    Guardrails {
        connection: String,
        source: policy::guardrails::GuardrailError,
    },
}

/// Everything a request needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub connections: Vec<Arc<ConnectionConfig>>,
    pub verifier: Verifier,
    pub secrets: SecretStore,
    pub store: Arc<dyn Store>,
    pub cancels: Arc<CancelRegistry>,
    /// Compiled guardrails per connection name.
    pub rails: HashMap<String, Arc<Guardrails>>,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, ServeError> {
        let store = recording::open_store(config.recording.store.get_ref())?;
        let mut rails = HashMap::new();
        for c in &config.connections {
            if let Some(g) = &c.guardrails {
                let compiled = Guardrails::new(g).map_err(|source| ServeError::Guardrails {
                    connection: c.name().to_string(),
                    source,
                })?;
                rails.insert(c.name().to_string(), Arc::new(compiled));
            }
        }
        Ok(Gateway {
            rails,
            connections: config.connections.iter().cloned().map(Arc::new).collect(),
            verifier: Verifier::new(&config.identity),
            secrets: SecretStore::new(&config.secrets),
            store,
            cancels: Arc::default(),
            config,
        })
    }

    pub fn connection(&self, name: &str) -> Option<&Arc<ConnectionConfig>> {
        self.connections.iter().find(|c| c.name() == name)
    }
}

/// Serves until `shutdown` resolves. Tests call it with a `127.0.0.1:0` listener.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gw = Arc::new(Gateway::new(config)?);
    let warm = gw.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.verifier.warm().await {
            tracing::warn!(error = %e, "issuer keys not fetched yet; /readyz reports not ready until they are");
        }
    });
    let app = ingress::router(gw);
    use axum::serve::ListenerExt;
    // Tunnels are request/response traffic: never wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
