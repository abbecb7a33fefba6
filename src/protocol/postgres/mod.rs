//! PostgreSQL: the gateway is a server to the client and a client to the
//! upstream, relaying raw frames and inspecting only the few it must.

mod binview;
pub mod cancel;
pub mod cancel_seal;
pub mod catalog;
pub mod cloudsql;
pub mod codec;
pub mod comment;
pub mod exec;
pub mod hooks;
pub mod masking;
pub mod relay;
pub mod scanner;
pub mod startup;
pub mod tracker;
pub mod upstream;

use crate::secrets::SecretError;

/// The connection's upstream password, read through the secret store now
/// (so rotation is picked up).
pub async fn credential(
    conn: &crate::config::ConnectionConfig,
    secrets: &crate::secrets::SecretStore,
) -> Result<crate::secrets::Secret<String>, PgError> {
    if conn.iam_auth() {
        // IAM database login: the password is a fresh access token.
        return cloudsql::auth::login_token()
            .await
            .map(crate::secrets::Secret::new)
            .map_err(|why| {
                PgError::CloudSql(cloudsql::CloudSqlError::Credentials {
                    instance: conn
                        .instance
                        .as_ref()
                        .map(|i| i.get_ref().clone())
                        .unwrap_or_default(),
                    why,
                })
            });
    }
    let Some(r) = conn.password_ref() else {
        return Err(PgError::Credential(format!(
            "connection {} has no password reference",
            conn.name()
        )));
    };
    secrets
        .get(&r)
        .await
        .map_err(|e| PgError::Credential(format!("connection {}: {e}", conn.name())))
}

/// What this instance's PostgreSQL sessions share: cancel keys and catalogs.
#[derive(Default)]
pub struct Services {
    pub cancels: std::sync::Arc<cancel::CancelRegistry>,
    pub catalogs: catalog::Cache,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("message {tag:?} of {len} bytes exceeds the limit of {max} bytes (server.max_message_bytes)")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("cannot reach upstream {target}: {why}")]
    Unreachable { target: String, why: String },
    #[error("TLS to upstream {target} failed: {why}")]
    Tls { target: String, why: String },
    #[error("upstream refused the gateway's login: {message}")]
    Rejected { code: String, message: String },
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    #[error("cannot fetch the upstream credential: {0}")]
    Secret(#[from] SecretError),
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the session cannot be recorded: {0}")]
    Recording(String),
    #[error("upstream did not answer within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Credential(String),
    #[error("{0}")]
    CloudSql(#[from] cloudsql::CloudSqlError),
    /// The upstream answered with something masking or guardrails cannot
    /// stand behind (an unseen encoding switch, an unplanned COPY): the
    /// session ends rather than pass it on.
    #[error("{0}")]
    Refused(String),
}

impl PgError {
    /// The SQLSTATE a client sees for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            PgError::Protocol(_) | PgError::TooLarge { .. } => "08P01",
            PgError::Rejected { code, .. } if !code.is_empty() => code,
            PgError::Rejected { .. } | PgError::Auth(_) => "28000",
            PgError::Unreachable { .. }
            | PgError::Tls { .. }
            | PgError::Secret(_)
            | PgError::Io(_)
            | PgError::Timeout(_)
            | PgError::Credential(_)
            | PgError::CloudSql(_) => "08001",
            PgError::Recording(_) => "58000",
            PgError::Refused(_) => "0A000",
        }
    }
}
