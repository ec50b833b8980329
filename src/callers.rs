//! Who may call, and who called: the accepted bearer tokens (kept only as digests) and the
//! caller identity derived from the one presented.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted tokens, kept only as SHA-256 digests: comparing fixed-length digests in
/// constant time leaks neither a token's bytes nor its length.
#[derive(Clone, Default)]
pub struct InboundAuth {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InboundAuth({} tokens)", self.digests.len())
    }
}

impl InboundAuth {
    /// Accepts any of `tokens`; with none, every caller is let in.
    pub fn new(tokens: &[SecretString]) -> Self {
        Self {
            digests: Arc::new(
                tokens
                    .iter()
                    .map(|t| digest(t.expose_secret().as_bytes()))
                    .collect(),
            ),
        }
    }

    /// True when no token is configured (auth off).
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `presented` is one of the tokens.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The caller `presented` identifies, when it is one of the tokens. Every configured token
    /// is compared, so the time taken does not say which one matched.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0);
        for known in self.digests.iter() {
            ok |= known.ct_eq(&d);
        }
        bool::from(ok).then(|| Caller::of_digest(&d))
    }
}

/// Who called, as far as idempotency is concerned: derived from the bearer token's digest
/// (never the token), so two services using the same `Idempotency-Key` never share a record,
/// and a token rotation starts a fresh key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(String);

impl Caller {
    /// Callers when inbound auth is off: all one.
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    fn of_digest(token_digest: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"gorgias-proxy caller\0");
        h.update(token_digest);
        let id: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(format!("t-{id}"))
    }

    /// The identity, for keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let auth = InboundAuth::new(&[SecretString::from("alpha"), SecretString::from("beta")]);
        assert!(auth.accepts("alpha"));
        assert!(auth.accepts("beta"));
        assert!(!auth.accepts("alph"));
        assert!(!auth.accepts(""));
        assert!(!auth.is_open());
        assert!(InboundAuth::new(&[]).is_open());
    }

    #[test]
    fn each_token_is_its_own_caller_and_the_identity_is_not_the_token() {
        let auth = InboundAuth::new(&[SecretString::from("alpha"), SecretString::from("beta")]);
        let a = auth.identify("alpha").unwrap();
        let b = auth.identify("beta").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, auth.identify("alpha").unwrap());
        assert!(!a.as_str().contains("alpha"));
        assert!(auth.identify("gamma").is_none());
    }
}
