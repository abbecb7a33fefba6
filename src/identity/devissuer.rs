//! A local OIDC issuer for development and tests: real RSA and EC keys, a
//! discovery document and a JWKS, served over plain http on loopback only.
//! Tokens are minted offline (`custody dev token`), never over the network.

use std::path::Path;

use axum::{routing::get, Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("key generation failed: {0}")]
    Keygen(String),
    #[error("cannot use key directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

pub const RSA_KID: &str = "dev-rsa-1";
pub const EC_KID: &str = "dev-ec-1";

pub struct DevIssuer {
    pub issuer: String,
    rsa_pem: String,
    ec_pem: String,
}

impl DevIssuer {
    pub fn generate(issuer: &str) -> Result<DevIssuer, DevIssuerError> {
        let mut rng = rand::thread_rng();
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048)
            .map_err(|e| DevIssuerError::Keygen(e.to_string()))?;
        let rsa_pem = rsa
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| DevIssuerError::Keygen(e.to_string()))?
            .to_string();
        let ec = p256::SecretKey::random(&mut rng);
        let ec_pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&ec, p256::pkcs8::LineEnding::LF)
            .map_err(|e| DevIssuerError::Keygen(e.to_string()))?
            .to_string();
        Ok(DevIssuer {
            issuer: issuer.trim_end_matches('/').to_string(),
            rsa_pem,
            ec_pem,
        })
    }

    /// Loads keys from `dir`, generating them on first use, so tokens minted
    /// by `custody dev token` match the JWKS the running issuer serves.
    pub fn load_or_create(dir: &Path, issuer: &str) -> Result<DevIssuer, DevIssuerError> {
        let io = |source| DevIssuerError::Io {
            dir: dir.display().to_string(),
            source,
        };
        let (rsa_path, ec_path) = (dir.join("rsa.pem"), dir.join("ec.pem"));
        if rsa_path.exists() && ec_path.exists() {
            return Ok(DevIssuer {
                issuer: issuer.trim_end_matches('/').to_string(),
                rsa_pem: std::fs::read_to_string(rsa_path).map_err(io)?,
                ec_pem: std::fs::read_to_string(ec_path).map_err(io)?,
            });
        }
        let me = DevIssuer::generate(issuer)?;
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(rsa_path, &me.rsa_pem).map_err(io)?;
        std::fs::write(ec_path, &me.ec_pem).map_err(io)?;
        Ok(me)
    }

    fn key(&self, alg: Algorithm) -> Result<(EncodingKey, &'static str), DevIssuerError> {
        Ok(match alg {
            Algorithm::ES256 => (EncodingKey::from_ec_pem(self.ec_pem.as_bytes())?, EC_KID),
            _ => (EncodingKey::from_rsa_pem(self.rsa_pem.as_bytes())?, RSA_KID),
        })
    }

    pub fn jwks(&self) -> Result<JwkSet, DevIssuerError> {
        let mut keys = Vec::new();
        for alg in [Algorithm::RS256, Algorithm::ES256] {
            let (key, kid) = self.key(alg)?;
            let mut jwk = Jwk::from_encoding_key(&key, alg)?;
            jwk.common.key_id = Some(kid.to_string());
            keys.push(jwk);
        }
        Ok(JwkSet { keys })
    }

    /// Signs arbitrary claims; tests use it to forge every kind of bad token too.
    pub fn sign(
        &self,
        claims: &serde_json::Value,
        alg: Algorithm,
    ) -> Result<String, DevIssuerError> {
        let (_, kid) = self.key(alg)?;
        self.sign_with_kid(claims, alg, kid)
    }

    /// Signs with this issuer's key for `alg` but names `kid` in the header.
    pub fn sign_with_kid(
        &self,
        claims: &serde_json::Value,
        alg: Algorithm,
        kid: &str,
    ) -> Result<String, DevIssuerError> {
        let (key, _) = self.key(alg)?;
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }

    /// A well-formed ID token for `email`, valid for `ttl_secs`.
    pub fn token(
        &self,
        email: &str,
        groups: &[String],
        audience: &str,
        ttl_secs: i64,
        alg: Algorithm,
    ) -> Result<String, DevIssuerError> {
        let now = chrono::Utc::now().timestamp();
        self.sign(
            &serde_json::json!({
                "iss": self.issuer, "sub": format!("dev|{email}"), "aud": audience,
                "email": email, "email_verified": true, "groups": groups,
                "iat": now, "nbf": now, "exp": now + ttl_secs,
            }),
            alg,
        )
    }

    pub fn router(&self) -> Result<Router, DevIssuerError> {
        let jwks = serde_json::to_value(self.jwks()?).unwrap_or_default();
        let discovery = serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        });
        Ok(Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .route("/jwks.json", get(move || async move { Json(jwks) })))
    }
}
