//! Values of the config that need parsing beyond their type: SSH host-key
//! pins and forwarding destinations, and the CIDRs of trusted proxies.
//! Protocols and ingress use them; `config::check` validates with them.

use std::net::IpAddr;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PublicKey};

/// Why a `host_key` pin does not parse.
#[derive(Debug, thiserror::Error)]
#[error("host_key {0}")]
pub struct PinError(pub String);

/// The upstream's host key(s) as pinned in the config: known_hosts lines
/// (`ssh-keyscan` output, with or without the host field) and/or
/// `SHA256:` fingerprints, one per line.
#[derive(Debug, Clone)]
pub struct HostKeyPin {
    keys: Vec<KeyData>,
    fingerprints: Vec<String>,
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

impl HostKeyPin {
    pub fn parse(text: &str) -> Result<HostKeyPin, PinError> {
        let mut pin = HostKeyPin {
            keys: Vec::new(),
            fingerprints: Vec::new(),
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("SHA256:") {
                let fp = line.split_whitespace().next().unwrap_or(line);
                pin.fingerprints.push(fp.to_string());
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| is_key_type(w)) else {
                return Err(PinError(format!(
                    "{line:?} is neither a known_hosts line (\"ssh-ed25519 AAAA...\") nor a SHA256: fingerprint"
                )));
            };
            let (Some(kind), Some(b64)) = (words.get(at), words.get(at + 1)) else {
                return Err(PinError(format!("{line:?} has no key after its type")));
            };
            let key = PublicKey::from_openssh(&format!("{kind} {b64}"))
                .map_err(|e| PinError(format!("{kind} key does not parse: {e}")))?;
            pin.keys.push(key.key_data().clone());
        }
        if pin.keys.is_empty() && pin.fingerprints.is_empty() {
            return Err(PinError("is empty".into()));
        }
        Ok(pin)
    }

    pub fn matches(&self, key: &KeyData) -> bool {
        let fp = fingerprint(key);
        self.keys.contains(key) || self.fingerprints.contains(&fp)
    }

    /// What the pin expects, for error messages (fingerprints only).
    pub fn describe(&self) -> String {
        let mut all: Vec<String> = self.keys.iter().map(fingerprint).collect();
        all.extend(self.fingerprints.iter().cloned());
        all.join(" or ")
    }
}

pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// "host:port" (or "[v6]:port") as configured in `local_forwarding`.
pub fn parse_destination(dest: &str) -> Option<(String, u16)> {
    let (host, port) = dest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| (host.to_string(), port))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CidrError {
    #[error("trusted_proxies entry {0:?} is not an IP address or CIDR such as \"10.0.0.0/8\" or \"::1\"")]
    BadCidr(String),
}

/// An IP network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError::BadCidr(s.to_string());
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
                b.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as ::ffff:a.b.c.d on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let prefix = |a: u128, b: u128, width: u32| {
            let shift = width - u32::from(self.bits);
            shift >= width || (a >> shift) == (b >> shift)
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => prefix(u32::from(n).into(), u32::from(i).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => prefix(n.into(), i.into(), 128),
            _ => false,
        }
    }
}
