//! `custody dev`: a signing key, a local OIDC issuer and its tokens, for
//! development on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::{DevCommand, DevTokenArgs};
use super::{shutdown_signal, CliError};
use crate::identity::devissuer::DevIssuer;
use crate::recording;

pub async fn run(command: DevCommand) -> Result<ExitCode, CliError> {
    match command {
        DevCommand::Keygen { out } => keygen(out),
        DevCommand::Issuer { listen, key_dir } => issuer(&listen, key_dir).await,
        DevCommand::Token(args) => token(args),
    }
}

fn keygen(out: PathBuf) -> Result<ExitCode, CliError> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    // PKCS#8 v1 (no embedded public key), which OpenSSL also reads.
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(CliError::EncodeKey)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .map_err(|source| CliError::CreateKey {
            path: out.display().to_string(),
            source,
        })?;
    f.write_all(pem.as_bytes())?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(CliError::EncodePublicKey)?;
    eprintln!(
        "custody: wrote {} ({}); its public key, for `custody verify --public-key`:",
        out.display(),
        recording::seal::key_id(&key.verifying_key())
    );
    print!("{public}");
    Ok(ExitCode::SUCCESS)
}

async fn issuer(listen: &str, key_dir: PathBuf) -> Result<ExitCode, CliError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        return Err(CliError::NotLoopback(local));
    }
    let issuer = DevIssuer::load_or_create(&key_dir, &format!("http://{local}"))?;
    eprintln!("custody: development issuer {} serving JWKS", issuer.issuer);
    axum::serve(listener, issuer.router()?)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn token(args: DevTokenArgs) -> Result<ExitCode, CliError> {
    let DevTokenArgs {
        key_dir,
        issuer,
        audience,
        email,
        groups,
        ttl,
        alg,
    } = args;
    let alg = match alg.as_str() {
        "RS256" => jsonwebtoken::Algorithm::RS256,
        "ES256" => jsonwebtoken::Algorithm::ES256,
        other => return Err(CliError::Alg(other.to_string())),
    };
    let iss = DevIssuer::load_or_create(&key_dir, &issuer)?;
    println!("{}", iss.token(&email, &groups, &audience, ttl, alg)?);
    Ok(ExitCode::SUCCESS)
}
