//! The service bundle: everything built once from the config and shared by
//! every request. Only ingress (and `run`) sees it; a protocol is handed a
//! `SessionContext` built from it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{self, Config, ConnectionConfig};
use crate::identity::{self, delegation, revocation, Verifier};
use crate::ingress::forwarded;
use crate::mask;
use crate::policy::decision::Rules;
use crate::policy::guardrails::Guardrails;
use crate::protocol;
use crate::recording::{self, Recorder};
use crate::secrets::{self, SecretStore};
use crate::session::approvals::Approvals;
use crate::session::context::{Limits, Masker, Watch};
use crate::session::{self, deadline, Session, SessionContext};

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
    Forwarded(#[from] forwarded::ForwardedError),
    #[error("connection {connection}: {source}")]
    Guardrails {
        connection: String,
        source: crate::policy::guardrails::GuardrailError,
    },
}

/// Everything a request needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub connections: Vec<Arc<ConnectionConfig>>,
    pub verifier: Verifier,
    pub secrets: Arc<SecretStore>,
    pub recorder: Arc<Recorder>,
    /// Delegation token keys, when `[identity] signing_key` is set.
    pub delegation: Option<delegation::Keys>,
    pub revocations: Arc<revocation::Revocations>,
    pub approvals: Arc<Approvals>,
    /// Compiled guardrails per connection name.
    rails: HashMap<String, Arc<Guardrails>>,
    /// Masking engines per connection, built on first use (the hash key is a secret).
    masks: HashMap<String, tokio::sync::OnceCell<Arc<mask::Engine>>>,
    pub postgres: protocol::postgres::Services,
    pub ssh: protocol::ssh::Services,
    /// Flips to true on SIGTERM: live sessions end and seal their recordings.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub live: Arc<session::live::LiveSessions>,
    /// `[server] trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<forwarded::Cidr>,
}

/// Reads a PEM signing key named by `reference`; `what` names it in errors.
async fn signing_key(
    secrets: &SecretStore,
    reference: &str,
    what: &str,
) -> Result<ed25519_dalek::SigningKey, ServeError> {
    let r = reference
        .parse::<secrets::SecretRef>()
        .map_err(|e| recording::RecordError::Key(e.to_string()))?;
    let pem = secrets
        .get(&r)
        .await
        .map_err(|e| recording::RecordError::Key(format!("{what}{r}: {e}")))?;
    Ok(recording::seal::signing_key_from_pem(pem.expose())?)
}

fn compile_rails(config: &Config) -> Result<HashMap<String, Arc<Guardrails>>, ServeError> {
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
    Ok(rails)
}

impl Gateway {
    pub async fn new(config: Config) -> Result<Gateway, ServeError> {
        let rc = &config.recording;
        let store = recording::open_store(rc.store.get_ref(), rc.endpoint.as_deref()).await?;
        let secrets = Arc::new(SecretStore::new(&config.secrets));
        let signer = match &rc.signing_key {
            Some(k) => Some(signing_key(&secrets, k.get_ref(), "cannot read ").await?),
            None => {
                tracing::warn!("recording.signing_key is not set: manifests are unsigned and `custody verify` will say so");
                None
            }
        };
        // Every instance holds the signing key, so it can seal what they share.
        let seal = signer
            .as_ref()
            .map(|k| protocol::postgres::cancel_seal::Seal::derive(&k.to_bytes()));
        let recorder = Arc::new(Recorder::new(store, signer, rc));
        let delegation = match &config.identity.signing_key {
            Some(k) => {
                let key = signing_key(&secrets, k.get_ref(), "identity.signing_key ").await?;
                let issuer = config
                    .identity
                    .audiences
                    .first()
                    .cloned()
                    .unwrap_or_default();
                Some(delegation::Keys::new(key, &issuer))
            }
            None => None,
        };
        let host_key = if config
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
        let proxies = config.server.trusted_proxies.iter();
        let trusted_proxies = forwarded::parse_proxies(proxies.map(|p| p.get_ref().as_str()))?;
        let revocations = Arc::new(revocation::Revocations::default());
        let approvals = Approvals::new(
            recorder.store.clone(),
            revocations.clone(),
            config.approvals.clone(),
        );
        Ok(Gateway {
            trusted_proxies,
            rails: compile_rails(&config)?,
            masks,
            postgres: protocol::postgres::Services {
                cancels: Arc::new(protocol::postgres::cancel::CancelRegistry::sealed(seal)),
                catalogs: Default::default(),
            },
            ssh: protocol::ssh::Services { host_key },
            shutdown: tokio::sync::watch::channel(false).0,
            live: Arc::default(),
            connections: config.connections.iter().cloned().map(Arc::new).collect(),
            verifier: Verifier::new(&config.identity),
            secrets,
            recorder,
            delegation,
            revocations,
            approvals: Arc::new(approvals),
            config,
        })
    }

    pub fn connection(&self, name: &str) -> Option<&Arc<ConnectionConfig>> {
        self.connections.iter().find(|c| c.name() == name)
    }

    /// The masking engine for this principal on this connection.
    pub async fn masker(&self, conn: &ConnectionConfig, principal: &identity::Principal) -> Masker {
        let (Some(cfg), Some(cell)) = (&conn.masking, self.masks.get(conn.name())) else {
            return Masker::Off;
        };
        if cfg.exempt_members().iter().any(|m| m.matches(principal)) {
            return Masker::Off;
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
            .await;
        match engine {
            Ok(e) => Masker::On(e.clone()),
            Err(why) => Masker::Failed(why),
        }
    }

    fn limits(&self) -> Limits {
        let s = &self.config.server;
        Limits {
            max_message_bytes: s.max_message_bytes,
            max_inspected: s.max_inspected_statement_bytes,
            startup_timeout: s.startup_timeout,
            ping_interval: s.ping_interval,
            exec_max_rows: s.exec_max_rows,
            ssh_login_timeout: self.config.ssh.login_timeout,
        }
    }

    /// What a protocol needs to run `session`: built once it is admitted
    /// (and its approval, if any, is known).
    pub async fn context(&self, session: Session) -> SessionContext {
        let conn = session.permit.connection.clone();
        let masker = self.masker(&conn, &session.permit.principal).await;
        let rules = Rules::for_connection(
            &conn,
            self.rails.get(conn.name()).cloned(),
            matches!(masker, Masker::On(_)),
            self.config.server.max_inspected_statement_bytes,
        );
        let deadline = deadline::compute(
            chrono::Utc::now().timestamp(),
            session.permit.chain.exp,
            deadline::window_end(session.approval.as_ref()),
            conn.max_duration,
        );
        SessionContext {
            session,
            deadline,
            limits: self.limits(),
            rules,
            masker,
            credentials: self.secrets.clone(),
            approvals: self.approvals.clone(),
            watch: Watch {
                shutdown: self.shutdown.subscribe(),
                revocations: self.revocations.clone(),
                store: self.recorder.store.clone(),
            },
            sqlcommenter: self.config.telemetry.sqlcommenter,
        }
    }
}
