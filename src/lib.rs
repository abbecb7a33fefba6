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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use config::{Config, ConnectionConfig};
use identity::Verifier;
use policy::guardrails::Guardrails;
use protocol::postgres::catalog::Catalog;
use recording::Recorder;
use secrets::SecretStore;
use session::CancelRegistry;

/// `[ssh] host_key`, else a fresh Ed25519 key (fine locally; on Cloud Run
/// every instance would present a different key, so configure one).
async fn ssh_host_key(
    config: &Config,
    secrets: &SecretStore,
) -> Result<russh::keys::PrivateKey, ServeError> {
    let Some(raw) = &config.ssh.host_key else {
        tracing::warn!(
            "ssh.host_key is not set: using a new host key for this process; clients cannot pin it"
        );
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
        return Ok(russh::keys::PrivateKey::from(pair));
    };
    let bad = |why: String| ServeError::SshHostKey(why);
    let r = raw
        .get_ref()
        .parse::<secrets::SecretRef>()
        .map_err(|e| bad(e.to_string()))?;
    let text = secrets
        .get(&r)
        .await
        .map_err(|e| bad(format!("cannot read {r}: {e}")))?;
    russh::keys::decode_secret_key(text.expose(), None)
        .map_err(|e| bad(format!("{r} is not an OpenSSH or PEM private key ({e})")))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("ssh.host_key: {0}")]
    SshHostKey(String),
    #[error(transparent)]
    Recording(#[from] recording::RecordError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("server.{0}")]
    Forwarded(#[from] ingress::forwarded::ForwardedError),
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
    pub recorder: Arc<Recorder>,
    /// Delegation token keys, when `[identity] signing_key` is set.
    pub delegation: Option<identity::delegation::Keys>,
    pub revocations: identity::revocation::Revocations,
    pub cancels: Arc<CancelRegistry>,
    /// Compiled guardrails per connection name.
    pub rails: HashMap<String, Arc<Guardrails>>,
    /// Masking engines per connection, built on first use (the hash key is a secret).
    masks: HashMap<String, tokio::sync::OnceCell<Arc<mask::Engine>>>,
    /// Catalog lookups per connection, reused for CATALOG_TTL.
    catalogs: std::sync::Mutex<HashMap<String, (std::time::Instant, Arc<Catalog>)>>,
    /// Flips to true on SIGTERM: live sessions end and seal their recordings.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub live: Arc<session::LiveSessions>,
    /// The gateway's SSH host key, when any connection is kind = "ssh".
    pub ssh_host_key: Option<russh::keys::PrivateKey>,
    /// `[server] trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ingress::forwarded::Cidr>,
}

/// Cloud Run allows 10 s between SIGTERM and SIGKILL; sessions get most of it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// How long a connection's column-rule catalog is reused before it is read again.
const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl Gateway {
    pub async fn new(config: Config) -> Result<Gateway, ServeError> {
        let rc = &config.recording;
        let store = recording::open_store(rc.store.get_ref(), rc.endpoint.as_deref()).await?;
        let secrets = SecretStore::new(&config.secrets);
        let signer = match rc
            .signing_key
            .as_ref()
            .map(|k| k.get_ref().parse::<secrets::SecretRef>())
        {
            Some(Ok(r)) => {
                let pem = secrets
                    .get(&r)
                    .await
                    .map_err(|e| recording::RecordError::Key(format!("cannot read {r}: {e}")))?;
                Some(recording::seal::signing_key_from_pem(pem.expose())?)
            }
            Some(Err(e)) => return Err(recording::RecordError::Key(e.to_string()).into()),
            None => {
                tracing::warn!("recording.signing_key is not set: manifests are unsigned and `custody verify` will say so");
                None
            }
        };
        let recorder = Arc::new(Recorder::new(store, signer, rc));
        let delegation = match config
            .identity
            .signing_key
            .as_ref()
            .map(|k| k.get_ref().parse::<secrets::SecretRef>())
        {
            Some(Ok(r)) => {
                let pem = secrets.get(&r).await.map_err(|e| {
                    recording::RecordError::Key(format!("identity.signing_key {r}: {e}"))
                })?;
                let key = recording::seal::signing_key_from_pem(pem.expose())?;
                let issuer = config
                    .identity
                    .audiences
                    .first()
                    .cloned()
                    .unwrap_or_default();
                Some(identity::delegation::Keys::new(key, &issuer))
            }
            Some(Err(e)) => return Err(recording::RecordError::Key(e.to_string()).into()),
            None => None,
        };
        let mut rails = HashMap::new();
        for c in &config.connections {
            if let Some(g) = &c.guardrails {
                let compiled = Guardrails::new(g)
                    .map_err(|source| ServeError::Guardrails {
                        connection: c.name().to_string(),
                        source,
                    })?
                    .with_limit(config.server.max_inspected_statement_bytes);
                rails.insert(c.name().to_string(), Arc::new(compiled));
            }
        }
        let ssh_host_key = if config
            .connections
            .iter()
            .any(|c| c.kind == config::Kind::Ssh)
        {
            Some(ssh_host_key(&config, &secrets).await?)
        } else {
            None
        };
        let masks = config
            .connections
            .iter()
            .filter(|c| c.masking.is_some())
            .map(|c| (c.name().to_string(), tokio::sync::OnceCell::new()))
            .collect();
        let trusted_proxies = ingress::forwarded::parse_proxies(
            config
                .server
                .trusted_proxies
                .iter()
                .map(|p| p.get_ref().as_str()),
        )?;
        Ok(Gateway {
            trusted_proxies,
            ssh_host_key,
            rails,
            masks,
            catalogs: std::sync::Mutex::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            live: Arc::default(),
            connections: config.connections.iter().cloned().map(Arc::new).collect(),
            verifier: Verifier::new(&config.identity),
            secrets,
            recorder,
            delegation,
            revocations: Default::default(),
            cancels: Arc::default(),
            config,
        })
    }

    pub fn connection(&self, name: &str) -> Option<&Arc<ConnectionConfig>> {
        self.connections.iter().find(|c| c.name() == name)
    }

    /// The masking engine for this principal on this connection: None when
    /// the connection has no masking or the principal is exempt.
    pub async fn masking_for(
        &self,
        conn: &ConnectionConfig,
        principal: &identity::Principal,
    ) -> Result<Option<Arc<mask::Engine>>, String> {
        let (Some(cfg), Some(cell)) = (&conn.masking, self.masks.get(conn.name())) else {
            return Ok(None);
        };
        if cfg.exempt_members().iter().any(|m| m.matches(principal)) {
            return Ok(None);
        }
        let engine = cell
            .get_or_try_init(|| async {
                let key = match cfg
                    .hash_key
                    .as_ref()
                    .map(|k| k.get_ref().parse::<secrets::SecretRef>())
                {
                    Some(Ok(r)) => Some(
                        self.secrets
                            .get(&r)
                            .await
                            .map_err(|e| format!("masking hash key: {e}"))?,
                    ),
                    Some(Err(e)) => return Err(format!("masking hash key: {e}")),
                    None => None,
                };
                let key_bytes = key.as_ref().map(|k| k.expose().as_bytes());
                mask::Engine::new(&cfg.engine_config(key_bytes))
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(Some(engine.clone()))
    }

    /// Column-rule catalog for a connection, read on `stream` when stale.
    pub async fn catalog(
        &self,
        conn: &ConnectionConfig,
        engine: &mask::Engine,
        stream: &mut Box<dyn protocol::postgres::upstream::Io>,
        buf: &mut bytes::BytesMut,
    ) -> Result<Arc<Catalog>, protocol::postgres::PgError> {
        if !engine.has_column_rules() {
            return Ok(Arc::default());
        }
        if let Ok(cache) = self.catalogs.lock() {
            if let Some((at, c)) = cache.get(conn.name()) {
                if at.elapsed() < CATALOG_TTL {
                    return Ok(c.clone());
                }
            }
        }
        let fresh = Arc::new(protocol::postgres::catalog::load(stream, buf, engine).await?);
        if let Ok(mut cache) = self.catalogs.lock() {
            cache.insert(
                conn.name().to_string(),
                (std::time::Instant::now(), fresh.clone()),
            );
        }
        Ok(fresh)
    }
}

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
