//! Secret references (`sm://`, `env:`, `file:`) and a store that resolves them
//! at run time, so no credential ever sits in the config or reaches a caller.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::sync::{Mutex, OnceCell};

use crate::config::SecretsConfig;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("this value is a plain secret: plain secrets are refused in config; store it in Secret Manager and write sm://PROJECT/SECRET (or env:NAME / file:PATH)")]
    Plain(Redacted),
    #[error("bad secret reference {reference}: {why}")]
    BadRef { reference: String, why: String },
    #[error("secret {reference}: environment variable is not set")]
    EnvMissing { reference: String },
    #[error("secret {reference}: cannot read file: {source}")]
    File {
        reference: String,
        source: std::io::Error,
    },
    #[error("secret {reference}: Secret Manager request failed: {why}")]
    SecretManager { reference: String, why: String },
    #[error("secret {reference}: payload checksum mismatch (corrupted in transit)")]
    Checksum { reference: String },
}

/// Prints as `<secret>`, so a refused value never lands in an error message.
#[derive(Clone)]
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A value that must never be printed: Debug and Display both say `<secret>`.
#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(v: T) -> Self {
        Secret(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    SecretManager {
        project: String,
        secret: String,
        version: String,
    },
    Env(String),
    File(String),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::SecretManager {
                project,
                secret,
                version,
            } => write!(f, "sm://{project}/{secret}#{version}"),
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{p}"),
        }
    }
}

impl FromStr for SecretRef {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SecretError::BadRef {
            reference: s.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = s.strip_prefix("sm://") {
            let (path, version) = rest.split_once('#').unwrap_or((rest, "latest"));
            let (project, secret) = path
                .split_once('/')
                .ok_or_else(|| bad("expected sm://PROJECT/SECRET[#VERSION]"))?;
            let ok = |v: &str| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !ok(project) || !ok(secret) || !ok(version) {
                return Err(bad(
                    "expected sm://PROJECT/SECRET[#VERSION] with letters, digits, '-' and '_'",
                ));
            }
            return Ok(SecretRef::SecretManager {
                project: project.into(),
                secret: secret.into(),
                version: version.into(),
            });
        }
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() {
                return Err(bad("expected env:NAME"));
            }
            return Ok(SecretRef::Env(name.into()));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(bad("expected file:PATH"));
            }
            return Ok(SecretRef::File(path.into()));
        }
        Err(SecretError::Plain(Redacted))
    }
}

/// Resolves references with a TTL cache so rotated secrets are picked up.
pub struct SecretStore {
    http: reqwest::Client,
    endpoint: String,
    ttl: Duration,
    cache: Mutex<HashMap<SecretRef, (Instant, Secret<String>)>>,
    auth: OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
}

impl SecretStore {
    pub fn new(cfg: &SecretsConfig) -> SecretStore {
        SecretStore {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            endpoint: cfg
                .secret_manager_endpoint
                .trim_end_matches('/')
                .to_string(),
            ttl: cfg.cache_ttl,
            cache: Mutex::new(HashMap::new()),
            auth: OnceCell::new(),
        }
    }

    pub async fn get(&self, r: &SecretRef) -> Result<Secret<String>, SecretError> {
        if let Some((at, v)) = self.cache.lock().await.get(r) {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let value = match r {
            SecretRef::Env(name) => {
                std::env::var(name)
                    .map(Secret::new)
                    .map_err(|_| SecretError::EnvMissing {
                        reference: r.to_string(),
                    })?
            }
            SecretRef::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|source| SecretError::File {
                    reference: r.to_string(),
                    source,
                })?,
            SecretRef::SecretManager {
                project,
                secret,
                version,
            } => self.access(r, project, secret, version).await?,
        };
        self.cache
            .lock()
            .await
            .insert(r.clone(), (Instant::now(), value.clone()));
        Ok(value)
    }

    async fn access(
        &self,
        r: &SecretRef,
        project: &str,
        secret: &str,
        version: &str,
    ) -> Result<Secret<String>, SecretError> {
        let fail = |why: String| SecretError::SecretManager {
            reference: r.to_string(),
            why,
        };
        let url = format!(
            "{}/v1/projects/{project}/secrets/{secret}/versions/{version}:access",
            self.endpoint
        );
        let mut req = self.http.get(&url);
        if !is_loopback_http(&self.endpoint) {
            let provider = self
                .auth
                .get_or_try_init(|| async { gcp_auth::provider().await })
                .await
                .map_err(|e| fail(format!("no Google credentials ({e}); set GOOGLE_APPLICATION_CREDENTIALS or run on GCP")))?;
            let token = provider
                .token(&["https://www.googleapis.com/auth/cloud-platform"])
                .await
                .map_err(|e| fail(format!("cannot get an access token: {e}")))?;
            req = req.bearer_auth(token.as_str());
        }
        let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                403 => ": grant roles/secretmanager.secretAccessor on this secret to the gateway's service account",
                404 => ": the secret or version does not exist",
                _ => "",
            };
            return Err(fail(format!("HTTP {status}{hint}")));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
        let data = body["payload"]["data"]
            .as_str()
            .ok_or_else(|| fail("response has no payload.data".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| fail("payload.data is not base64".into()))?;
        if let Some(sum) = body["payload"]["dataCrc32c"].as_str() {
            let want: u64 = sum
                .parse()
                .map_err(|_| fail("payload.dataCrc32c is not a number".into()))?;
            if u64::from(crc32c::crc32c(&bytes)) != want {
                return Err(SecretError::Checksum {
                    reference: r.to_string(),
                });
            }
        }
        let text = String::from_utf8(bytes).map_err(|_| fail("payload is not UTF-8".into()))?;
        Ok(Secret::new(text))
    }
}

/// Is `url` plain http to this machine? Parsed as reqwest will parse it
/// (WHATWG rules, the `url` crate), so the host checked is the host fetched:
/// only loopback IP literals (127.0.0.0/8, ::1) and `localhost` pass, and a
/// URL with userinfo never does (`http://127.0.0.1:80@evil.example/` goes to
/// evil.example; `http://127.0.0.1.evil.example/` is not an IP at all).
pub fn is_loopback_http(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "http" || !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            "sm://p/s".parse::<SecretRef>().unwrap(),
            SecretRef::SecretManager {
                project: "p".into(),
                secret: "s".into(),
                version: "latest".into()
            }
        );
        assert!(matches!(
            "sm://p/s#3".parse::<SecretRef>().unwrap(),
            SecretRef::SecretManager { version, .. } if version == "3"
        ));
        assert_eq!(
            "env:PG".parse::<SecretRef>().unwrap(),
            SecretRef::Env("PG".into())
        );
        assert!("sm://onlyproject".parse::<SecretRef>().is_err());
        let plain = "hunter2".parse::<SecretRef>().unwrap_err().to_string();
        assert!(plain.contains("plain secret") && !plain.contains("hunter2"));
    }

    #[test]
    fn loopback_http_only_for_loopback_literals() {
        for ok in [
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/x?y",
            "http://127.1.2.3/",
            "http://localhost:8085",
            "http://LOCALHOST/",
            "http://[::1]:8080/",
        ] {
            assert!(is_loopback_http(ok), "{ok} is loopback");
        }
        for bad in [
            "http://127.0.0.1.evil.example/",
            "http://127.0.0.1:80@evil.example/",
            "http://user@127.0.0.1/",
            "http://localhost.evil.example/",
            "http://localhost@evil.example/",
            "http://[::1].evil.example/",
            "http://evil.example/127.0.0.1",
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://[::ffff:8.8.8.8]/",
            "not a url",
            "",
        ] {
            assert!(!is_loopback_http(bad), "{bad} is not loopback");
        }
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s} {s:?}"), "<secret> <secret>");
    }
}
