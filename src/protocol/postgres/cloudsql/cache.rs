//! One client certificate per instance per process: fetched on first use,
//! refreshed once it nears expiry, refreshes rate-limited, and a failed
//! refresh keeps serving a certificate that is still valid.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

use super::verify::{self, InstanceVerifier, ServerIdentity};
use super::{admin, auth, CloudSqlError};
use crate::config::{ConnectionConfig, InstanceName, IpType};

/// Everything a dial needs, valid until `expires`.
pub struct Material {
    pub address: String,
    pub identity: ServerIdentity,
    pub database_version: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Unix seconds.
    pub not_before: i64,
    pub expires: i64,
}

impl Material {
    /// Refresh ahead of expiry: 4 minutes before, or halfway through a
    /// shorter certificate's life.
    fn refresh_at(&self) -> i64 {
        let life = self.expires - self.not_before;
        self.expires - (life / 2).min(240)
    }

    /// Still presentable: a handshake started now finishes before expiry.
    fn usable(&self, now: i64) -> bool {
        now + 5 < self.expires
    }

    /// At most one refresh per 30 s, or per quarter of a shorter life.
    fn min_interval(&self) -> Duration {
        let life = (self.expires - self.not_before).max(4) as u64;
        Duration::from_secs((life / 4).min(30))
    }
}

/// After a failed fetch with no usable certificate, sessions get the same
/// error for this long instead of each calling the Admin API.
const FAILURE_HOLD: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    current: Option<Arc<Material>>,
    last_attempt: Option<Instant>,
    last_error: Option<CloudSqlError>,
}

#[derive(Debug, PartialEq)]
enum Next {
    UseCurrent,
    Fetch,
    LastError,
}

/// The cache's decision, pure: `since` is the time since the last attempt.
fn next(st: &State, now: i64, since: Option<Duration>) -> Next {
    match &st.current {
        Some(m) if now < m.refresh_at() => Next::UseCurrent,
        Some(m) if m.usable(now) && since.is_some_and(|s| s < m.min_interval()) => Next::UseCurrent,
        Some(m) if m.usable(now) => Next::Fetch,
        _ if st.last_error.is_some() && since.is_some_and(|s| s < FAILURE_HOLD) => Next::LastError,
        _ => Next::Fetch,
    }
}

#[derive(Default)]
struct Entry {
    state: Mutex<State>,
    /// RSA 2048, as Cloud SQL signs; in memory only, for the process's life.
    key: OnceCell<Arc<rsa::RsaPrivateKey>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    admin: String,
    name: InstanceName,
    ip_type: IpType,
    iam: bool,
}

static ENTRIES: LazyLock<std::sync::Mutex<HashMap<Key, Arc<Entry>>>> =
    LazyLock::new(Default::default);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The instance's current certificate and settings, fetched or refreshed as due.
pub async fn material(conn: &ConnectionConfig) -> Result<Arc<Material>, CloudSqlError> {
    let Some(name) = conn.cloud_sql() else {
        return Err(CloudSqlError::Admin {
            instance: conn.name().into(),
            why: "the connection has no valid `instance`".into(),
        });
    };
    let key = Key {
        admin: conn.cloud_sql_admin.clone(),
        name,
        ip_type: conn.ip_type,
        iam: conn.iam_auth(),
    };
    let entry = {
        let mut all = ENTRIES.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.clone()).or_default().clone()
    };
    let mut st = entry.state.lock().await;
    let since = st.last_attempt.map(|t| t.elapsed());
    match (next(&st, now(), since), &st.current, &st.last_error) {
        (Next::UseCurrent, Some(m), _) => return Ok(m.clone()),
        (Next::LastError, _, Some(e)) => return Err(e.clone()),
        _ => {}
    }
    st.last_attempt = Some(Instant::now());
    match fetch(&key, &entry).await {
        Ok(m) => {
            tracing::info!(instance = %key.name, address = %m.address, expires = m.expires, "Cloud SQL client certificate fetched");
            st.current = Some(m.clone());
            st.last_error = None;
            Ok(m)
        }
        Err(e) => {
            st.last_error = Some(e.clone());
            match st.current.clone().filter(|m| m.usable(now())) {
                Some(m) => {
                    tracing::warn!(instance = %key.name, error = %e, "Cloud SQL certificate refresh failed; the current certificate is still valid and stays in use");
                    Ok(m)
                }
                None => Err(e),
            }
        }
    }
}

async fn fetch(key: &Key, entry: &Entry) -> Result<Arc<Material>, CloudSqlError> {
    let name = &key.name;
    let cert_err = |why: String| CloudSqlError::Certificate {
        instance: name.to_string(),
        why,
    };
    let private = entry
        .key
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048))
                .await
                .map_err(|e| e.to_string())?
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(cert_err)?
        .clone();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| cert_err(e.to_string()))?;
    let creds = |why: String| CloudSqlError::Credentials {
        instance: name.to_string(),
        why,
    };
    // Plain http is only ever a loopback stand-in: no token to send it.
    let token = if crate::secrets::is_loopback_http(&key.admin) {
        None
    } else {
        Some(auth::admin_token().await.map_err(creds)?)
    };
    let login = match key.iam {
        true => Some(auth::login_token().await.map_err(creds)?),
        false => None,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| cert_err(e.to_string()))?;
    let body = admin::connect_settings(&http, &key.admin, name, token.as_deref()).await?;
    let settings = admin::parse_settings(name, key.ip_type, &body)?;
    let pem = admin::ephemeral_cert(
        &http,
        &key.admin,
        name,
        &public_pem,
        login.as_deref(),
        token.as_deref(),
    )
    .await?;
    let key_der = private
        .to_pkcs8_der()
        .map_err(|e| cert_err(e.to_string()))?;
    build(name, settings, &pem, key_der.as_bytes()).map(Arc::new)
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(certs)
}

/// The TLS 1.3 client config: the ephemeral certificate as client auth,
/// the instance's CA and identity as the only acceptable server.
fn build(
    name: &InstanceName,
    settings: admin::Settings,
    cert_pem: &str,
    key_der: &[u8],
) -> Result<Material, CloudSqlError> {
    let cert_err = |why: String| CloudSqlError::Certificate {
        instance: name.to_string(),
        why,
    };
    let chain = pem_certs(cert_pem).map_err(|e| cert_err(format!("ephemeralCert: {e}")))?;
    let (not_before, expires) = verify::validity(&chain[0])
        .ok_or_else(|| cert_err("ephemeralCert has no readable validity".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in
        pem_certs(&settings.server_ca_pem).map_err(|e| cert_err(format!("serverCaCert: {e}")))?
    {
        roots
            .add(ca)
            .map_err(|e| cert_err(format!("serverCaCert: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = InstanceVerifier {
        roots: Arc::new(roots),
        identity: settings.identity.clone(),
        provider: provider.clone(),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cert_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| cert_err(e.to_string()))?;
    Ok(Material {
        address: settings.address,
        identity: settings.identity,
        database_version: settings.database_version,
        tls: Arc::new(tls),
        not_before,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(not_before: i64, expires: i64) -> Arc<Material> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Arc::new(Material {
            address: "10.0.0.3".into(),
            identity: ServerIdentity::CommonName("p:i".into()),
            database_version: String::new(),
            tls: Arc::new(tls),
            not_before,
            expires,
        })
    }

    #[test]
    fn refreshes_ahead_of_expiry_rate_limited() {
        let st = |m: Option<Arc<Material>>, failed: bool| State {
            current: m,
            last_attempt: None,
            last_error: failed.then(|| CloudSqlError::NotFound {
                instance: "p:r:i".into(),
            }),
        };
        let secs = Duration::from_secs;
        assert_eq!(next(&st(None, false), 0, None), Next::Fetch);
        assert_eq!(next(&st(None, true), 0, Some(secs(1))), Next::LastError);
        assert_eq!(next(&st(None, true), 0, Some(secs(3))), Next::Fetch);
        // A one-hour certificate is refreshed in its last 4 minutes, at most every 30 s.
        let hour = Some(material(0, 3600));
        assert_eq!(
            next(&st(hour.clone(), false), 3000, Some(secs(3000))),
            Next::UseCurrent
        );
        assert_eq!(
            next(&st(hour.clone(), false), 3400, Some(secs(3400))),
            Next::Fetch
        );
        assert_eq!(
            next(&st(hour.clone(), true), 3400, Some(secs(10))),
            Next::UseCurrent
        );
        assert_eq!(
            next(&st(hour.clone(), true), 3400, Some(secs(31))),
            Next::Fetch
        );
        // An expired one is fetched again (failures held briefly).
        assert_eq!(
            next(&st(hour.clone(), false), 3599, Some(secs(10))),
            Next::Fetch
        );
        assert_eq!(next(&st(hour, true), 3599, Some(secs(1))), Next::LastError);
        // A 20 s certificate: refreshed after 10 s, at most every 5 s.
        let short = Some(material(0, 20));
        assert_eq!(
            next(&st(short.clone(), false), 9, Some(secs(9))),
            Next::UseCurrent
        );
        assert_eq!(
            next(&st(short.clone(), false), 11, Some(secs(4))),
            Next::UseCurrent
        );
        assert_eq!(next(&st(short, false), 11, Some(secs(6))), Next::Fetch);
    }
}
