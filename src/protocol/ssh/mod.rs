//! SSH through the tunnel. Inside the WebSocket the gateway is an SSH server
//! (the caller is already authenticated by OIDC, so SSH client auth accepts
//! whatever the client offers); toward the target it is an SSH client with
//! a key from a secret reference that the caller never sees, checking the
//! target's host key against the pin in the config.

pub mod channel;
pub mod exec;
pub mod front;
mod input;
mod pump;
pub mod scp;
pub mod serve;
pub mod sftp;
pub mod sftp_gate;
pub mod text;
pub mod upstream;

/// What this instance's SSH sessions share.
#[derive(Default)]
pub struct Services {
    /// The gateway's SSH host key, when any connection is kind = "ssh".
    pub host_key: Option<russh::keys::PrivateKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("upstream {addr} is unreachable: {why}")]
    Unreachable { addr: String, why: String },
    #[error("upstream host key mismatch: {addr} presented {got}, but the connection pins {expected}; if the server's key really changed, update `host_key` in the config (ssh-keyscan prints it)")]
    HostKeyMismatch {
        addr: String,
        got: String,
        expected: String,
    },
    #[error("upstream refused the gateway's key for user {user:?}: check the connection's private_key and the server's authorized_keys")]
    AuthFailed { user: String },
    #[error("ssh key from {reference}: {why}")]
    Key { reference: String, why: String },
    #[error("host_key {0}")]
    Pin(String),
    #[error("upstream ssh: {0}")]
    Protocol(String),
    #[error("the session cannot be recorded, so it does not run: {0}")]
    Recording(String),
    /// Revoked, past its deadline, or the instance is stopping; `policy`
    /// when a rule (not the gateway's state) ended it.
    #[error("{reason}")]
    Interrupted { policy: bool, reason: String },
}

pub use crate::config::pins::{fingerprint, parse_destination, HostKeyPin, PinError};

impl From<PinError> for SshError {
    fn from(e: PinError) -> SshError {
        SshError::Pin(e.0)
    }
}

/// Whether `name` matches one of the `allow_env` globs (`*` matches any run).
pub fn env_allowed(globs: &[String], name: &str) -> bool {
    globs.iter().any(|g| glob(g, name))
}

fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The default `allow_env`: locale only.
pub fn default_env() -> Vec<String> {
    vec!["LANG".into(), "LC_*".into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PublicKey;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm9n+7wGfXNXhcz6kCzH3sNDX0P3G1cvbtpXIGsq1bb";

    #[test]
    fn pins_parse_known_hosts_lines_and_fingerprints() {
        let bare = HostKeyPin::parse(KEY).unwrap();
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert!(bare.matches(key.key_data()));
        let with_host = HostKeyPin::parse(&format!("[127.0.0.1]:2222 {KEY} comment")).unwrap();
        assert!(with_host.matches(key.key_data()));
        let fp = fingerprint(key.key_data());
        assert!(fp.starts_with("SHA256:"));
        assert!(HostKeyPin::parse(&fp).unwrap().matches(key.key_data()));
        let other =
            HostKeyPin::parse("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert!(!other.matches(key.key_data()));
        assert!(HostKeyPin::parse("").is_err());
        assert!(HostKeyPin::parse("hello world").is_err());
        assert!(HostKeyPin::parse("ssh-ed25519").is_err());
        assert!(HostKeyPin::parse("ssh-ed25519 AAAAnotbase64!").is_err());
    }

    #[test]
    fn destinations_and_env_globs() {
        assert_eq!(
            parse_destination("db.internal:5432"),
            Some(("db.internal".into(), 5432))
        );
        assert_eq!(parse_destination("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(parse_destination("nohost"), None);
        assert_eq!(parse_destination("h:0"), None);
        assert_eq!(parse_destination(":22"), None);
        let g = default_env();
        assert!(env_allowed(&g, "LANG"));
        assert!(env_allowed(&g, "LC_ALL"));
        assert!(!env_allowed(&g, "LD_PRELOAD"));
        assert!(!env_allowed(&g, "LANGUAGE"));
        assert!(env_allowed(&["*_TOKEN".into()], "CI_TOKEN"));
        assert!(env_allowed(&["A*B*C".into()], "AxxBxxC"));
        assert!(!env_allowed(&["A*B*C".into()], "AC"));
    }
}
