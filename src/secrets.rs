//! Connection secrets at rest: AES-256-GCM (RustCrypto's `aes-gcm`) under `CONNECTIONS_KEY`,
//! so the database (its file, its backups, a replica's dump) never holds a credential in clear.
//!
//! A sealed secret is `v1.{key id}.{base64(nonce ‖ ciphertext ‖ tag)}`. The key id is derived
//! from the key (the first 8 hex digits of a SHA-256 over it), so it names the key without
//! revealing it, and rotation needs no bookkeeping: set the new key as `CONNECTIONS_KEY`, the
//! old one as `CONNECTIONS_KEY_PREVIOUS`, and run `gorgias-proxy connections rekey`.
//!
//! Each secret is bound to its connection and field (the AEAD's associated data): a ciphertext
//! copied onto another connection's row, or from `refresh_token` into `api_key`, does not open.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The format's version prefix.
const VERSION: &str = "v1";
/// AES-GCM's nonce length.
const NONCE_LEN: usize = 12;

/// Why a key or a sealed secret cannot be used (never quoting either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key is not 32 bytes of standard base64.
    #[error("must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    /// The secret was sealed under a key this process does not have.
    #[error(
        "a secret was sealed under key {0}, which is neither CONNECTIONS_KEY nor \
         CONNECTIONS_KEY_PREVIOUS"
    )]
    UnknownKey(String),
    /// The sealed value is damaged, or belongs to another connection or field.
    #[error("a stored secret cannot be decrypted (damaged, or moved from another row)")]
    Corrupt,
}

/// One key and its id.
struct SealingKey {
    id: String,
    cipher: Aes256Gcm,
    /// A key of its own for signing links (derived, so one secret serves both uses without
    /// the cipher's key ever keying a MAC).
    mac: [u8; 32],
}

impl SealingKey {
    fn parse(base64_key: &str) -> Result<Self, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_key.trim())
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        let mut h = Sha256::new();
        h.update(b"gorgias-proxy connections key id\0");
        h.update(&bytes);
        let id = h.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut m = Sha256::new();
        m.update(b"gorgias-proxy link signing key\0");
        m.update(&bytes);
        Ok(Self {
            id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            mac: m.finalize().into(),
        })
    }
}

/// The keys secrets are sealed and opened with: the current one seals; it and the previous
/// one open.
pub struct Keyring {
    current: SealingKey,
    previous: Option<SealingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(current {})", self.current.id)
    }
}

/// What a secret is sealed for: its connection and field, bound into the ciphertext.
fn associated(connection: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(connection.len() + field.len() + 1);
    aad.extend_from_slice(connection.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

impl Keyring {
    /// The keyring from `CONNECTIONS_KEY` (and `CONNECTIONS_KEY_PREVIOUS`), both base64.
    ///
    /// # Errors
    /// [`SecretError::BadKey`] when a key is not 32 bytes of base64.
    pub fn new(
        current: &SecretString,
        previous: Option<&SecretString>,
    ) -> Result<Self, SecretError> {
        Ok(Self {
            current: SealingKey::parse(current.expose_secret())?,
            previous: previous
                .map(|p| SealingKey::parse(p.expose_secret()))
                .transpose()?,
        })
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` for `connection`'s `field` under the current key.
    ///
    /// # Errors
    /// Never in practice (AES-GCM fails only past 64 GiB of plaintext).
    pub fn seal(&self, connection: &str, field: &str, plain: &str) -> Result<String, SecretError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated(connection, field);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}.{}.{}",
            self.current.id,
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    /// Opens a sealed secret of `connection`'s `field`.
    ///
    /// # Errors
    /// [`SecretError::UnknownKey`] when its key is not in the ring, [`SecretError::Corrupt`]
    /// when it does not open.
    pub fn open(
        &self,
        connection: &str,
        field: &str,
        sealed: &str,
    ) -> Result<SecretString, SecretError> {
        let (key_id, body) = key_id(sealed).ok_or(SecretError::Corrupt)?;
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SecretError::Corrupt)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let aad = associated(connection, field);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SecretError::Corrupt)
    }

    /// An HMAC-SHA256 of `message` under the current key, in URL-safe base64 (signed links).
    pub fn sign(&self, message: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(&self.current.mac, message))
    }

    /// Whether `signature` is [`Self::sign`] of `message` under the current or previous key
    /// (compared in constant time).
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .any(|k| bool::from(mac(&k.mac, message).as_slice().ct_eq(&given)))
    }

    /// Whether `sealed` is under the current key (rekeying skips those).
    pub fn is_current(&self, sealed: &str) -> bool {
        key_id(sealed).is_some_and(|(id, _)| id == self.current.id)
    }
}

fn mac(key: &[u8; 32], message: &str) -> [u8; 32] {
    use hmac::Mac;
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut m) = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(message.as_bytes());
    m.finalize().into_bytes().into()
}

/// A sealed value's key id and body.
pub fn key_id(sealed: &str) -> Option<(&str, &str)> {
    let rest = sealed.strip_prefix(VERSION)?.strip_prefix('.')?;
    rest.split_once('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::from(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
    }

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_field() {
        let ring = Keyring::new(&key(1), None).unwrap();
        let sealed = ring.seal("acme", "api_key", "s3cr3t-value").unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(
            ring.open("acme", "api_key", &sealed)
                .unwrap()
                .expose_secret(),
            "s3cr3t-value"
        );
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(
            sealed,
            ring.seal("acme", "api_key", "s3cr3t-value").unwrap()
        );
        assert_eq!(
            ring.open("other", "api_key", &sealed).unwrap_err(),
            SecretError::Corrupt
        );
        assert_eq!(
            ring.open("acme", "refresh_token", &sealed).unwrap_err(),
            SecretError::Corrupt
        );
        let mut damaged = sealed.clone();
        damaged.replace_range(damaged.len() - 3.., "AAA");
        assert!(ring.open("acme", "api_key", &damaged).is_err());
        assert!(ring.open("acme", "api_key", "garbage").is_err());
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_previous_one_sealed() {
        let old = Keyring::new(&key(1), None).unwrap();
        let sealed = old.seal("acme", "api_key", "k").unwrap();
        let rotated = Keyring::new(&key(2), Some(&key(1))).unwrap();
        assert!(!rotated.is_current(&sealed));
        assert_eq!(
            rotated
                .open("acme", "api_key", &sealed)
                .unwrap()
                .expose_secret(),
            "k"
        );
        let without_old = Keyring::new(&key(2), None).unwrap();
        assert!(matches!(
            without_old.open("acme", "api_key", &sealed),
            Err(SecretError::UnknownKey(id)) if id == old.current_id()
        ));
    }

    #[test]
    fn signed_links_verify_only_unchanged_and_under_a_known_key() {
        let ring = Keyring::new(&key(1), None).unwrap();
        let sig = ring.sign("acme\n1700000000");
        assert!(ring.verify("acme\n1700000000", &sig));
        assert!(!ring.verify("acme\n1700000001", &sig));
        assert!(!ring.verify("acme\n1700000000", "AAAA"));
        let rotated = Keyring::new(&key(2), Some(&key(1))).unwrap();
        assert!(rotated.verify("acme\n1700000000", &sig));
        assert!(
            !Keyring::new(&key(2), None)
                .unwrap()
                .verify("acme\n1700000000", &sig)
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert_eq!(
            Keyring::new(&SecretString::from("short"), None).unwrap_err(),
            SecretError::BadKey
        );
        let sixteen = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        assert!(Keyring::new(&SecretString::from(sixteen), None).is_err());
    }
}
