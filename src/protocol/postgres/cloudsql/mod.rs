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

pub use cache::{material, Material};

/// The server-side proxy's port on every Cloud SQL instance.
pub const PORT: u16 = 3307;

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
