//! Cloud SQL as its connectors reach it: the instance connection name is
//! resolved through the Cloud SQL Admin API (addresses, server CA), the
//! gateway gets a short-lived client certificate for a key pair it keeps in
//! memory, and dials the server-side proxy on port 3307 with mTLS (TLS 1.3,
//! no SSLRequest). One certificate per instance serves every session of
//! the process and is refreshed ahead of its expiry.
//!
//! Written on reqwest + rustls rather than the `cloud-sql-connector` crate:
//! two REST calls and a verifier are less to keep than a dependency that
//! needs a newer Rust than the tree builds with.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod verify;

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use cache::{material, Material};

use super::PgError;
use crate::config::ConnectionConfig;

/// The server-side proxy's port on every Cloud SQL instance.
pub const PORT: u16 = 3307;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudSqlError {
    #[error("Cloud SQL instance {instance}: {why}")]
    Admin { instance: String, why: String },
    #[error("Cloud SQL instance {instance} does not exist (the Admin API answered 404): check `instance` against `gcloud sql instances list --format='value(connectionName)'`")]
    NotFound { instance: String },
    #[error("the gateway may not connect to Cloud SQL instance {instance} (the Admin API answered 403: {message}): grant roles/cloudsql.client on the instance's project to the gateway's service account, and enable the Cloud SQL Admin API (sqladmin.googleapis.com)")]
    Forbidden { instance: String, message: String },
    #[error("Cloud SQL instance {instance}: the connection name says region {named} but the instance is in {actual}; set instance = \"{fixed}\"")]
    RegionMismatch {
        instance: String,
        named: String,
        actual: String,
        fixed: String,
    },
    #[error("Cloud SQL instance {instance} has no {ip_type} address (it has: {has}); set ip_type to one it has or give the instance a {ip_type} address")]
    NoAddress {
        instance: String,
        ip_type: String,
        has: String,
    },
    #[error("Cloud SQL instance {instance}: no Google credentials ({why}); run on GCP with a service account or set GOOGLE_APPLICATION_CREDENTIALS")]
    Credentials { instance: String, why: String },
    #[error("Cloud SQL instance {instance}: client certificate: {why}")]
    Certificate { instance: String, why: String },
}

/// A Cloud SQL instance: TLS 1.3 straight to its server-side proxy (port
/// 3307, no SSLRequest) with the instance's client certificate, the server
/// checked against the instance's CA and name.
pub async fn dial(conn: &ConnectionConfig) -> Result<TlsStream<TcpStream>, PgError> {
    let m = material(conn).await?;
    let instance = conn.instance.as_ref().map(|i| i.get_ref().as_str());
    let target = format!(
        "{} (Cloud SQL {} at {}:{})",
        conn.name(),
        instance.unwrap_or_default(),
        m.address,
        PORT
    );
    let addr = (m.address.as_str(), PORT);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| PgError::Unreachable {
            target: target.clone(),
            why: "connect timed out after 10s".into(),
        })?
        .map_err(|e| PgError::Unreachable {
            target: target.clone(),
            why: e.to_string(),
        })?;
    tcp.set_nodelay(true)?;
    let tls_err = |why: String| PgError::Tls {
        target: target.clone(),
        why,
    };
    // The verifier checks the instance's own identity, not this name.
    let name = ServerName::try_from(m.address.clone()).map_err(|e| tls_err(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(m.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            tls_err(format!(
                "{e} (expected the server to present {})",
                m.identity
            ))
        })?;
    Ok(tls)
}
