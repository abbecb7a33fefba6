//! The gateway as an SSH client of the target: pinned host key, a private
//! key from a secret reference, settings tuned for throughput.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::cipher;
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};

use super::{fingerprint, HostKeyPin, SshError};
use crate::config::ConnectionConfig;
use crate::secrets::SecretStore;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bigger windows and packets than russh's defaults: a 2 MiB window stalls a
/// fast stream every round trip, and AES-GCM (hardware) beats ChaCha20 here.
pub fn tuned_preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: Cow::Borrowed(&[
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_128_CTR,
        ]),
        ..Default::default()
    }
}
pub const WINDOW: u32 = 16 << 20;
/// russh caps a channel packet at what fits one TCP segment length field.
pub const PACKET: u32 = 65535;

pub struct Upstream {
    pin: HostKeyPin,
    /// Fingerprint of a key that did not match the pin, for the error.
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data().clone(),
            PublicKeyOrCertificate::Certificate(c) => c.public_key().clone(),
        };
        let ok = self.pin.matches(&data);
        if !ok {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(fingerprint(&data));
            }
        }
        Ok(ok)
    }
}

/// The connection's private key, read through the secret store now (so
/// rotation is picked up); OpenSSH and PEM formats.
pub async fn private_key(
    secrets: &SecretStore,
    conn: &ConnectionConfig,
) -> Result<PrivateKey, SshError> {
    let Some(raw) = conn.private_key.as_ref() else {
        return Err(SshError::Key {
            reference: "(none)".into(),
            why: format!("connection {} has no private_key", conn.name()),
        });
    };
    let reference = raw.get_ref().clone();
    let parsed = reference
        .parse::<crate::secrets::SecretRef>()
        .map_err(|e| SshError::Key {
            reference: reference.clone(),
            why: e.to_string(),
        })?;
    let text = secrets.get(&parsed).await.map_err(|e| SshError::Key {
        reference: reference.clone(),
        why: e.to_string(),
    })?;
    // The parse error never carries key material.
    russh::keys::decode_secret_key(text.expose(), None).map_err(|e| SshError::Key {
        reference,
        why: format!("not an OpenSSH or PEM private key ({e})"),
    })
}

/// Connects and checks the host key; authentication comes later, once the
/// client's user name is known.
pub async fn connect(conn: &ConnectionConfig) -> Result<Handle<Upstream>, SshError> {
    let addr = format!("{}:{}", conn.host, conn.port());
    let pin = HostKeyPin::parse(conn.host_key.as_deref().unwrap_or_default())?;
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SshError::Unreachable {
                    addr,
                    why: e.to_string(),
                })
            }
            Err(_) => {
                return Err(SshError::Unreachable {
                    addr,
                    why: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        };
    let _ = stream.set_nodelay(true);
    let config = Arc::new(client::Config {
        window_size: WINDOW,
        maximum_packet_size: PACKET,
        preferred: tuned_preferred(),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let mismatch = Arc::new(Mutex::new(None));
    let handler = Upstream {
        pin: pin.clone(),
        mismatch: mismatch.clone(),
    };
    let connecting = client::connect_stream(config, stream, handler);
    match tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => {
            let seen = mismatch.lock().ok().and_then(|m| m.clone());
            Err(match seen {
                Some(got) => SshError::HostKeyMismatch {
                    addr,
                    got,
                    expected: pin.describe(),
                },
                None => SshError::Unreachable {
                    addr,
                    why: format!("ssh handshake failed: {e}"),
                },
            })
        }
        Err(_) => Err(SshError::Unreachable {
            addr,
            why: "ssh handshake did not finish in time".into(),
        }),
    }
}

pub async fn authenticate(
    handle: &mut Handle<Upstream>,
    user: &str,
    key: PrivateKey,
) -> Result<(), SshError> {
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?
        .flatten();
    let res = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    if res.success() {
        Ok(())
    } else {
        Err(SshError::AuthFailed { user: user.into() })
    }
}

/// Connect, verify and log in as `user`: what exec and the tunnel share.
pub async fn open(
    secrets: &SecretStore,
    conn: &ConnectionConfig,
    user: &str,
) -> Result<Handle<Upstream>, SshError> {
    let key = private_key(secrets, conn).await?;
    let mut handle = connect(conn).await?;
    authenticate(&mut handle, user, key).await?;
    Ok(handle)
}
