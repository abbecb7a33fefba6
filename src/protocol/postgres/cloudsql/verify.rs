//! The server side of the instance TLS: the chain must end at the
//! instance's own CA (from connectSettings, never the web PKI), and the
//! leaf must name the instance. Legacy per-instance CAs issue leaves whose
//! only name is the common name `project:instance` (no SAN, so rustls'
//! hostname check cannot be used); CA-service-issued leaves carry the
//! instance's DNS name as a SAN.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Which name the instance's server certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIdentity {
    /// `project:instance` as the subject's common name (legacy server CA).
    CommonName(String),
    /// A DNS SAN (`serverCaMode` GOOGLE_MANAGED_CAS_CA / CUSTOMER_MANAGED_CAS_CA).
    Dns(String),
}

impl std::fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerIdentity::CommonName(cn) => write!(f, "common name {cn:?}"),
            ServerIdentity::Dns(d) => write!(f, "DNS name {d:?}"),
        }
    }
}

#[derive(Debug)]
pub struct InstanceVerifier {
    pub roots: Arc<RootCertStore>,
    pub identity: ServerIdentity,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for InstanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.identity {
            ServerIdentity::Dns(name) => {
                let name = ServerName::try_from(name.as_str())
                    .map_err(|e| Error::General(format!("instance DNS name {name:?}: {e}")))?;
                rustls::client::verify_server_name(&cert, &name)?;
            }
            ServerIdentity::CommonName(want) => {
                let got = common_name(end_entity);
                if got.as_deref() != Some(want.as_str()) {
                    return Err(Error::General(format!(
                        "the server certificate names {} instead of the instance {want:?}",
                        got.map_or("no common name".into(), |g| format!("{g:?}"))
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The client config offers TLS 1.3 only.
        Err(Error::General("TLS 1.2 is not used to Cloud SQL".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// id-at-commonName, 2.5.4.3.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The TBSCertificate's fields after the optional version: serial,
/// signature, issuer, validity, subject, … (Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version, serial, … }, … }).
fn tbs_fields(der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, body, rest) = tlv(tbs)?;
        if !(fields.is_empty() && tag == 0xa0) {
            fields.push((tag, body));
        }
        tbs = rest;
    }
    Some(fields)
}

/// The subject common name of a DER certificate; None when absent.
pub fn common_name(der: &[u8]) -> Option<String> {
    let fields = tbs_fields(der)?;
    let (SEQUENCE, mut rdns) = *fields.get(4)? else {
        return None;
    };
    while !rdns.is_empty() {
        let (SET, mut set, next) = tlv(rdns)? else {
            return None;
        };
        rdns = next;
        while !set.is_empty() {
            let (_, attr, next) = tlv(set)?;
            set = next;
            let (0x06, oid, value) = tlv(attr)? else {
                return None;
            };
            if oid == CN_OID {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// notBefore and notAfter (Unix seconds) of a DER certificate.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let fields = tbs_fields(der)?;
    let (SEQUENCE, v) = *fields.get(3)? else {
        return None;
    };
    let (t1, a, rest) = tlv(v)?;
    let (t2, b, _) = tlv(rest)?;
    Some((time(t1, a)?, time(t2, b)?))
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ).
fn time(tag: u8, body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let full = match tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy < 50 { "20" } else { "19" })
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    let t =
        chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S").ok()?;
    Some(t.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_and_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Google, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "example.com:p:db");
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("example.com:p:db"));
        // 2026-01-02 (UTCTime) and 2051-01-02 (GeneralizedTime after 2049).
        assert_eq!(validity(cert.der()), Some((1_767_312_000, 2_556_230_400)));
        let mut bare = rcgen::CertificateParams::new(vec!["db.example".to_string()]).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let cert = bare.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"\x30\x03\x02\x01"), None);
    }
}
