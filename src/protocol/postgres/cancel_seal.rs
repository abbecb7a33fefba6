//! Sealing of the cancel mappings kept in the store (`_cancels/`). Each
//! holds an upstream's real pid and cancel key: in clear, anyone who can
//! read the bucket and reach the database could cancel its queries, and
//! anyone who can write it could plant a mapping. Every instance signs
//! recordings with the same `recording.signing_key`, so each derives the
//! same two keys from it: one names objects (the name no longer shows the
//! gateway key a client holds), one encrypts and authenticates the mapping
//! (AES-256-GCM, the object's name as associated data).

use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Sha256;

pub struct Seal {
    naming: [u8; 32],
    aead: LessSafeKey,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Seal {
    /// Both keys from the recording signing key's secret bytes.
    pub fn derive(secret: &[u8]) -> Seal {
        let root = mac(secret, &[b"custody/cancels/v1"]);
        let naming = mac(&root, &[b"naming"]);
        let sealing = mac(&root, &[b"sealing"]);
        // A 32-byte key is what AES-256 takes: this cannot fail.
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &sealing).expect("AES-256 takes a 32-byte key"),
        );
        Seal { naming, aead }
    }

    /// The object name for the gateway's (pid, key): 128 bits of MAC.
    pub fn name(&self, pid: i32, key: i32) -> String {
        let tag = mac(&self.naming, &[&pid.to_be_bytes(), &key.to_be_bytes()]);
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What an `.ended` marker holds, so that one planted without the key
    /// is told apart.
    pub fn ended_mark(&self, name: &str) -> Vec<u8> {
        mac(&self.naming, &[b"ended/", name.as_bytes()]).to_vec()
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut body = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The mapping, or None when it was not sealed with this key for this name.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_only_with_its_key_and_name() {
        let (a, b) = (Seal::derive(b"one key"), Seal::derive(b"another key"));
        let name = a.name(42, 7);
        assert_eq!(
            name,
            Seal::derive(b"one key").name(42, 7),
            "every instance agrees"
        );
        assert_ne!(name, a.name(42, 8));
        assert_ne!(name, b.name(42, 7));
        assert_eq!(name.len(), 32);
        let sealed = a.seal(&name, b"{\"pid\":42}").expect("sealed");
        assert!(!sealed.windows(4).any(|w| w == b"pid\""), "no clear text");
        assert_eq!(
            a.open(&name, &sealed).as_deref(),
            Some(&b"{\"pid\":42}"[..])
        );
        assert_eq!(b.open(&name, &sealed), None, "another key");
        assert_eq!(a.open(&a.name(42, 8), &sealed), None, "another name");
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(a.open(&name, &flipped), None, "tampered");
        assert_eq!(a.open(&name, b"{\"pid\":42}"), None, "planted in clear");
        assert_eq!(a.open(&name, b""), None);
    }
}
