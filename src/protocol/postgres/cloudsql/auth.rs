//! The gateway's Google identity for Cloud SQL, on the same auth stack as
//! the GCS store (google-cloud-auth's application default credentials,
//! which honour GCE_METADATA_HOST, so tests point it at a stand-in).

use std::sync::OnceLock;

use google_cloud_auth::credentials::{AccessTokenCredentials, Builder};

/// Admin API calls (connectSettings, generateEphemeralCert).
const ADMIN_SCOPE: &str = "https://www.googleapis.com/auth/sqlservice.admin";
/// IAM database login: the token in the certificate and the password.
const LOGIN_SCOPE: &str = "https://www.googleapis.com/auth/sqlservice.login";

fn credentials(
    cell: &'static OnceLock<Result<AccessTokenCredentials, String>>,
    scope: &str,
) -> Result<&'static AccessTokenCredentials, String> {
    cell.get_or_init(|| {
        Builder::default()
            .with_scopes([scope])
            .build_access_token_credentials()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A token for the Admin API.
pub async fn admin_token() -> Result<String, String> {
    static CELL: OnceLock<Result<AccessTokenCredentials, String>> = OnceLock::new();
    let c = credentials(&CELL, ADMIN_SCOPE)?;
    c.access_token()
        .await
        .map(|t| t.token)
        .map_err(|e| e.to_string())
}

/// A fresh token for IAM database login (cached by the credentials until
/// shortly before it expires).
pub async fn login_token() -> Result<String, String> {
    static CELL: OnceLock<Result<AccessTokenCredentials, String>> = OnceLock::new();
    let c = credentials(&CELL, LOGIN_SCOPE)?;
    c.access_token()
        .await
        .map(|t| t.token)
        .map_err(|e| e.to_string())
}

/// The IAM database user of a service account: its email without
/// `.gserviceaccount.com`, as Cloud SQL names CLOUD_IAM_SERVICE_ACCOUNT users.
pub fn iam_user(email: &str) -> String {
    email
        .strip_suffix(".gserviceaccount.com")
        .unwrap_or(email)
        .to_string()
}

/// The gateway's service account email: the key file's `client_email`
/// (GOOGLE_APPLICATION_CREDENTIALS), else the metadata server's default
/// account (GCE_METADATA_HOST, else metadata.google.internal).
pub async fn service_account_email() -> Result<String, String> {
    if let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        return v["client_email"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                format!("{path} has no client_email: IAM database login needs a service account")
            });
    }
    let host =
        std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| "metadata.google.internal".into());
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/email");
    let resp = reqwest::Client::new()
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("metadata server {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("metadata server {url}: HTTP {}", resp.status()));
    }
    let email = resp.text().await.map_err(|e| e.to_string())?;
    Ok(email.trim().to_string())
}

/// The IAM database user of the gateway for `conn`, logged with the
/// session's span so traces show that IAM database login was used.
pub async fn database_user(
    conn: &crate::config::ConnectionConfig,
) -> Result<String, super::CloudSqlError> {
    let email = service_account_email()
        .await
        .map_err(|why| super::CloudSqlError::Credentials {
            instance: conn
                .instance
                .as_ref()
                .map(|i| i.get_ref().clone())
                .unwrap_or_default(),
            why: format!("IAM database login needs the service account's email: {why}"),
        })?;
    let user = iam_user(&email);
    tracing::info!(connection = conn.name(), db_user = %user, iam_database_login = true, "Cloud SQL IAM database login");
    Ok(user)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iam_user_drops_the_service_account_domain() {
        assert_eq!(
            super::iam_user("custody@p.iam.gserviceaccount.com"),
            "custody@p.iam"
        );
    }
}
