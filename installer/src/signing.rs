//! Ed25519 keys and manifest signatures.
//!
//! Formats (all text, one line, trailing newline):
//! - public key file (`manifests/keys/<name>.pub`): base64 of the 32-byte key;
//! - signing key file / LOCKBOX_SIGNING_KEY: base64 of the 32-byte seed;
//! - `manifest.json.sig`: base64 of the 64-byte signature over the exact
//!   bytes of manifest.json.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_keys.rs"));
}

#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

fn decode_fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N]> {
    let raw = B64
        .decode(text.trim())
        .map_err(|e| Error::Usage(format!("{what}: not base64: {e}")))?;
    raw.try_into()
        .map_err(|v: Vec<u8>| Error::Usage(format!("{what}: {} bytes, want {N}", v.len())))
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey> {
    let bytes = decode_fixed::<32>(text, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| Error::Usage(format!("public key: {e}")))
}

pub fn parse_signing_key(text: &str) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&decode_fixed::<32>(
        text,
        "signing key",
    )?))
}

pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

pub fn encode_signing_key(key: &SigningKey) -> String {
    format!("{}\n", B64.encode(key.to_bytes()))
}

pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{}\n", B64.encode(key.to_bytes()))
}

/// The detached signature file's content for `manifest`.
pub fn sign(key: &SigningKey, manifest: &[u8]) -> String {
    format!("{}\n", B64.encode(key.sign(manifest).to_bytes()))
}

impl TrustedKeys {
    /// The keys of manifests/keys/ compiled into this binary.
    pub fn embedded() -> Result<TrustedKeys> {
        let mut t = TrustedKeys::default();
        for (name, text) in embedded::EMBEDDED_KEYS {
            t.add(name, parse_public_key(text)?);
        }
        Ok(t)
    }

    pub fn add(&mut self, name: &str, key: VerifyingKey) {
        self.keys.push((name.to_string(), key));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Returns the name of the key that signed `manifest`.
    pub fn verify(&self, manifest: &[u8], signature: &[u8]) -> Result<&str> {
        let text = std::str::from_utf8(signature)
            .map_err(|_| Error::Verification("signature file is not text".into()))?;
        let raw = B64
            .decode(text.trim())
            .map_err(|_| Error::Verification("signature file is not base64".into()))?;
        let sig = Signature::from_slice(&raw)
            .map_err(|_| Error::Verification(format!("signature has {} bytes", raw.len())))?;
        self.keys
            .iter()
            .find(|(_, k)| k.verify_strict(manifest, &sig).is_ok())
            .map(|(name, _)| name.as_str())
            .ok_or_else(|| {
                Error::Verification(format!(
                    "manifest signature matches none of the {} trusted key(s)",
                    self.keys.len()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_only_for_its_key_and_bytes() {
        let key = generate_signing_key();
        let other = generate_signing_key();
        let sig = sign(&key, b"manifest bytes");
        let mut trusted = TrustedKeys::default();
        trusted.add("k", key.verifying_key());
        assert_eq!(
            trusted.verify(b"manifest bytes", sig.as_bytes()).unwrap(),
            "k"
        );
        assert!(trusted.verify(b"manifest byteS", sig.as_bytes()).is_err());

        let mut untrusted = TrustedKeys::default();
        untrusted.add("other", other.verifying_key());
        assert!(matches!(
            untrusted.verify(b"manifest bytes", sig.as_bytes()),
            Err(Error::Verification(_))
        ));
    }

    #[test]
    fn garbage_signatures_are_verification_errors() {
        let mut trusted = TrustedKeys::default();
        trusted.add("k", generate_signing_key().verifying_key());
        for sig in [&b""[..], b"!!!", b"AAAA", &[0xff, 0xfe]] {
            assert!(matches!(
                trusted.verify(b"m", sig),
                Err(Error::Verification(_))
            ));
        }
    }

    #[test]
    fn key_files_round_trip() {
        let key = generate_signing_key();
        let again = parse_signing_key(&encode_signing_key(&key)).unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
        let public = parse_public_key(&encode_public_key(&key.verifying_key())).unwrap();
        assert_eq!(public, key.verifying_key());
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn embedded_keys_parse() {
        TrustedKeys::embedded().unwrap();
    }
}
