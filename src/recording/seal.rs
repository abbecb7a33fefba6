//! The tamper-evident format, as pure functions over bytes.
//!
//! A recording is segments `000001.jsonl`, `000002.jsonl`, … and a
//! `manifest.json`. Each segment's first line is a header naming its number,
//! the audit id, the first event's seq and the SHA-256 of the previous
//! segment's bytes. The manifest's first line lists every segment's hash and
//! the session summary; its second line is an Ed25519 signature over exactly
//! the first line's bytes, so no canonical-JSON rules are needed to verify.

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Event, RecordError};

pub const FORMAT: &str = "custody-recording/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentHeader {
    pub format: String,
    pub audit_id: String,
    pub segment: u32,
    pub first_seq: u64,
    /// SHA-256 (hex) of the previous segment's bytes; None for the first.
    pub prev_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentEntry {
    pub segment: u32,
    pub sha256: String,
    pub bytes: u64,
    pub events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestBody {
    pub format: String,
    pub audit_id: String,
    pub segments: Vec<SegmentEntry>,
    /// Events across all segments; seqs run 0..events.
    pub events: u64,
    pub sealed_at: chrono::DateTime<chrono::Utc>,
    /// The session_start and session_end events, the summary a reviewer reads first.
    pub start: Option<Event>,
    pub end: Option<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignatureLine {
    /// "Ed25519", or "none" when no signing key is configured.
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The header line that opens a segment, newline included.
pub fn header_line(h: &SegmentHeader) -> Vec<u8> {
    let mut line = serde_json::to_vec(h).unwrap_or_default();
    line.push(b'\n');
    line
}

/// `manifest.json`: the body line, then the signature line.
pub fn manifest(body: &ManifestBody, key: Option<&SigningKey>) -> Vec<u8> {
    let mut out = serde_json::to_vec(body).unwrap_or_default();
    let sig = match key {
        Some(k) => SignatureLine {
            alg: "Ed25519".into(),
            key_id: Some(key_id(&k.verifying_key())),
            public_key: Some(b64(k.verifying_key().as_bytes())),
            signature: Some(b64(&k.sign(&out).to_bytes())),
        },
        None => SignatureLine {
            alg: "none".into(),
            key_id: None,
            public_key: None,
            signature: None,
        },
    };
    out.push(b'\n');
    out.extend(serde_json::to_vec(&sig).unwrap_or_default());
    out.push(b'\n');
    out
}

/// Splits a manifest into the signed bytes, the body and the signature line.
pub fn parse_manifest(bytes: &[u8]) -> Result<(&[u8], ManifestBody, SignatureLine), String> {
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let body_bytes = lines.next().ok_or("the manifest is empty")?;
    let body: ManifestBody = serde_json::from_slice(body_bytes)
        .map_err(|e| format!("the manifest body is not valid: {e}"))?;
    let sig_line = lines.next().ok_or("the manifest has no signature line")?;
    let sig: SignatureLine = serde_json::from_slice(sig_line)
        .map_err(|e| format!("the manifest signature line is not valid: {e}"))?;
    Ok((body_bytes, body, sig))
}

/// A manifest is exactly the body line and the signature line as the
/// gateway writes them: nothing after, between or reformatted, and a key id
/// that is the embedded key's, so no unsigned byte can differ unnoticed.
pub fn check_manifest_bytes(
    bytes: &[u8],
    signed: &[u8],
    sig: &SignatureLine,
) -> Result<(), String> {
    let mut canonical = signed.to_vec();
    canonical.push(b'\n');
    canonical.extend(serde_json::to_vec(sig).unwrap_or_default());
    canonical.push(b'\n');
    if bytes != canonical {
        return Err(
            "its bytes are not the two lines the gateway writes (lines added, removed or reformatted after sealing)"
                .to_string(),
        );
    }
    if sig.alg != "Ed25519" {
        return Ok(());
    }
    // The gateway always embeds its key and key id; a pinned key must not
    // make a garbled one pass unnoticed.
    let Some(k) = embedded_key(sig) else {
        return Err("its embedded public key is missing or not an Ed25519 key".to_string());
    };
    match &sig.key_id {
        Some(id) if *id == key_id(&k) => Ok(()),
        other => Err(format!(
            "its key id {} is not the embedded key's ({})",
            other.as_deref().unwrap_or("(none)"),
            key_id(&k)
        )),
    }
}

/// "SHA256:<base64>" of the raw public key, as OpenSSH prints fingerprints.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn verify_signature(key: &VerifyingKey, signed: &[u8], sig_b64: &str) -> Result<(), String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|e| format!("the signature is not base64: {e}"))?;
    let sig = ed25519_dalek::Signature::from_slice(&raw)
        .map_err(|e| format!("the signature is malformed: {e}"))?;
    key.verify_strict(signed, &sig)
        .map_err(|_| "the manifest signature does not match its contents and key".to_string())
}

/// The public key embedded in a signature line.
pub fn embedded_key(sig: &SignatureLine) -> Option<VerifyingKey> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig.public_key.as_deref()?)
        .ok()?;
    VerifyingKey::from_bytes(&raw.try_into().ok()?).ok()
}

/// An Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, RecordError> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
        RecordError::Key(format!(
            "not an Ed25519 PKCS#8 PEM private key ({e}); make one with `custody dev keygen` or `openssl genpkey -algorithm ed25519`"
        ))
    })
}

/// A public key PEM (SPKI), or a private key PEM whose public half is taken.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, RecordError> {
    if let Ok(k) = VerifyingKey::from_public_key_pem(pem.trim()) {
        return Ok(k);
    }
    signing_key_from_pem(pem).map(|k| k.verifying_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_signature_round_trips_and_detects_edits() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let body = ManifestBody {
            format: FORMAT.into(),
            audit_id: "a".into(),
            segments: vec![],
            events: 0,
            sealed_at: chrono::Utc::now(),
            start: None,
            end: None,
        };
        let bytes = manifest(&body, Some(&key));
        let (signed, _, sig) = parse_manifest(&bytes).unwrap();
        let k = embedded_key(&sig).unwrap();
        assert_eq!(sig.key_id.as_deref(), Some(key_id(&k).as_str()));
        verify_signature(&k, signed, sig.signature.as_deref().unwrap()).unwrap();
        let tampered =
            String::from_utf8(bytes.clone())
                .unwrap()
                .replacen("\"events\":0", "\"events\":1", 1);
        let (signed, _, sig) = parse_manifest(tampered.as_bytes()).unwrap();
        assert!(verify_signature(&k, signed, sig.signature.as_deref().unwrap()).is_err());
    }
}
