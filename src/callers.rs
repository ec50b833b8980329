//! Who may call, and who called: the accepted bearer tokens (kept only as digests) and the
//! caller identity derived from the one presented.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::ConnectionId;

/// The accepted tokens, kept only as SHA-256 digests: comparing fixed-length digests in
/// constant time leaks neither a token's bytes nor its length. Each digest carries the caller
/// it identifies.
#[derive(Clone, Default)]
pub struct InboundAuth {
    tokens: Arc<Vec<([u8; 32], Caller)>>,
}

impl std::fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InboundAuth({} tokens)", self.tokens.len())
    }
}

/// Why a configured token entry cannot be used (never quoting the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `name:` with nothing after it.
    #[error("the entry named {0:?} has no token after the ':'")]
    EmptyToken(String),
    /// The same token is configured for two callers.
    #[error("the same token is configured under two names (or named and plain)")]
    TwoNames,
    /// A connection list (after `@`) with a malformed id.
    #[error(
        "the entry named {0:?} lists a connection that is not 1 to 64 letters, digits, '.', \
         '_' or '-' (connections are separated by '+', or '*' for all)"
    )]
    BadConnection(String),
    /// A name outside `[A-Za-z0-9._-]{1,64}`.
    #[error(
        "an entry's name (before the first ':') must be 1 to 64 letters, digits, '.', '_' or \
         '-'"
    )]
    BadName,
}

/// The most characters in a caller's name.
const NAME_MAX: usize = 64;

fn is_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One configured entry: `name:token` (a named caller: rotating its token keeps its keys and
/// deliveries), or a plain `token` (the caller is derived from the token, as before names
/// existed). An entry with a ':' is always `name:token`.
///
/// A named caller may also list the stored connections it may use: `name@acme+globex:token`,
/// or `name@*:token` for all of them. Without a list (and with a plain token) a caller uses
/// only the default account.
///
/// # Errors
/// A [`TokenError`] when a named entry is malformed.
pub fn parse_entry(entry: &str) -> Result<(String, Caller), TokenError> {
    match entry.split_once(':') {
        None => Ok((
            entry.to_owned(),
            Caller::of_digest(&digest(entry.as_bytes())),
        )),
        Some((head, token)) => {
            let (name, list) = match head.trim().split_once('@') {
                Some((name, list)) => (name, Some(list)),
                None => (head.trim(), None),
            };
            let token = token.trim();
            if !is_name(name) {
                return Err(TokenError::BadName);
            }
            if token.is_empty() {
                return Err(TokenError::EmptyToken(name.to_owned()));
            }
            let allowed = match list {
                None => Allowed::DefaultOnly,
                Some("*") => Allowed::Any,
                Some(list) => Allowed::Only(
                    list.split('+')
                        .map(|c| {
                            ConnectionId::parse(c.trim())
                                .ok_or_else(|| TokenError::BadConnection(name.to_owned()))
                        })
                        .collect::<Result<Arc<[_]>, _>>()?,
                ),
            };
            let mut caller = Caller::named(name);
            caller.allowed = allowed;
            Ok((token.to_owned(), caller))
        }
    }
}

impl InboundAuth {
    /// Accepts any of `entries` (see [`parse_entry`]); with none, every caller is let in.
    ///
    /// # Errors
    /// The first malformed entry's [`TokenError`].
    pub fn parse(entries: &[SecretString]) -> Result<Self, TokenError> {
        let tokens = entries
            .iter()
            .map(|e| {
                parse_entry(e.expose_secret())
                    .map(|(token, caller)| (digest(token.as_bytes()), caller))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One token under two names would make its caller depend on the entries' order.
        for (i, (d, caller)) in tokens.iter().enumerate() {
            if tokens[..i].iter().any(|(e, c)| e == d && c != caller) {
                return Err(TokenError::TwoNames);
            }
        }
        Ok(Self {
            tokens: Arc::new(tokens),
        })
    }

    /// Like [`Self::parse`], for entries already checked (the configuration refuses malformed
    /// ones at start-up). One that is malformed all the same is kept as a plain token: a bad
    /// entry must never leave the service open to everyone.
    pub fn new(entries: &[SecretString]) -> Self {
        let tokens = entries
            .iter()
            .map(|e| {
                let entry = e.expose_secret();
                let (token, caller) = parse_entry(entry).unwrap_or_else(|_| {
                    (
                        entry.to_owned(),
                        Caller::of_digest(&digest(entry.as_bytes())),
                    )
                });
                (digest(token.as_bytes()), caller)
            })
            .collect();
        Self {
            tokens: Arc::new(tokens),
        }
    }

    /// True when no token is configured (auth off).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// True when `presented` is one of the tokens.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The caller `presented` identifies, when it is one of the tokens. Every configured token
    /// is compared, so the time taken does not say which one matched.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        use subtle::ConditionallySelectable;
        let d = digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, (known, _)) in self.tokens.iter().enumerate() {
            let hit = known.ct_eq(&d);
            index = u32::conditional_select(&index, &u32::try_from(i).unwrap_or(u32::MAX), hit);
            ok |= hit;
        }
        bool::from(ok)
            .then(|| {
                self.tokens
                    .get(usize::try_from(index).ok()?)
                    .map(|(_, c)| c.clone())
            })
            .flatten()
    }
}

/// Who called, as far as idempotency and deliveries are concerned: the name given to its
/// token (`n-{name}`), or, for a plain token, an id derived from the token's digest (`t-…`,
/// never the token). Two callers using the same `Idempotency-Key` never share a record; a
/// named caller keeps its keys and deliveries across a token rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    id: String,
    allowed: Allowed,
}

/// The stored connections a caller may use (every caller may use the default account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// None: only the default account.
    DefaultOnly,
    /// These.
    Only(Arc<[ConnectionId]>),
    /// All of them.
    Any,
}

impl Caller {
    /// Callers when inbound auth is off: all one, and it may use every connection.
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            allowed: Allowed::Any,
        }
    }

    fn named(name: &str) -> Self {
        Self {
            id: format!("n-{name}"),
            allowed: Allowed::DefaultOnly,
        }
    }

    /// Whether this caller may use the stored connection `id`.
    pub fn may_use(&self, id: &ConnectionId) -> bool {
        match &self.allowed {
            Allowed::DefaultOnly => false,
            Allowed::Only(list) => list.contains(id),
            Allowed::Any => true,
        }
    }

    fn of_digest(token_digest: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"gorgias-proxy caller\0");
        h.update(token_digest);
        let id: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id: format!("t-{id}"),
            allowed: Allowed::DefaultOnly,
        }
    }

    /// The identity, for keys.
    pub fn as_str(&self) -> &str {
        &self.id
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
    fn named_tokens_are_one_caller_across_a_rotation() {
        let auth = InboundAuth::parse(&[
            SecretString::from("billing:old-secret"),
            SecretString::from("billing:new-secret"),
            SecretString::from("support:other"),
            SecretString::from("plain-token"),
        ])
        .unwrap();
        let old = auth.identify("old-secret").unwrap();
        let new = auth.identify("new-secret").unwrap();
        assert_eq!(old, new, "one name, one caller");
        assert_eq!(old.as_str(), "n-billing");
        assert_ne!(auth.identify("other").unwrap(), old);
        // The whole entry is not a token; only what follows the name is.
        assert!(auth.identify("billing:old-secret").is_none());
        // A plain token keeps the identity it had before names existed.
        let plain = auth.identify("plain-token").unwrap();
        assert_eq!(
            plain,
            InboundAuth::new(&[SecretString::from("plain-token")])
                .identify("plain-token")
                .unwrap()
        );
        assert!(plain.as_str().starts_with("t-"));
    }

    #[test]
    fn malformed_named_entries_are_refused_without_quoting_the_token() {
        for name in ["bad name".to_owned(), String::new(), "x".repeat(65)] {
            let entry = SecretString::from(format!("{name}:secret-tok"));
            let err = InboundAuth::parse(&[entry]).unwrap_err();
            assert_eq!(err, TokenError::BadName);
            assert!(!err.to_string().contains("secret-tok"), "{err}");
        }
        let err = InboundAuth::parse(&[SecretString::from("billing:")]).unwrap_err();
        assert_eq!(err, TokenError::EmptyToken("billing".into()));
        let twice = [SecretString::from("billing:x"), SecretString::from("ops:x")];
        assert_eq!(
            InboundAuth::parse(&twice).unwrap_err(),
            TokenError::TwoNames
        );
        // Entries built in code and never checked: a malformed one still closes the door.
        let unchecked = InboundAuth::new(&[SecretString::from("bad name:x")]);
        assert!(!unchecked.is_open());
        assert!(unchecked.identify("x").is_none());
    }

    #[test]
    fn a_named_caller_may_list_the_connections_it_uses() {
        let auth = InboundAuth::parse(&[
            SecretString::from("billing@acme+globex:tok-1"),
            SecretString::from("ops@*:tok-2"),
            SecretString::from("support:tok-3"),
            SecretString::from("plain"),
        ])
        .unwrap();
        let id = |s| ConnectionId::parse(s).unwrap();
        let billing = auth.identify("tok-1").unwrap();
        assert_eq!(
            billing.as_str(),
            "n-billing",
            "the list is not part of the name"
        );
        assert!(billing.may_use(&id("acme")) && billing.may_use(&id("globex")));
        assert!(!billing.may_use(&id("initech")));
        assert!(auth.identify("tok-2").unwrap().may_use(&id("initech")));
        assert!(!auth.identify("tok-3").unwrap().may_use(&id("acme")));
        assert!(!auth.identify("plain").unwrap().may_use(&id("acme")));
        assert_eq!(
            InboundAuth::parse(&[SecretString::from("billing@bad id:x")]).unwrap_err(),
            TokenError::BadConnection("billing".into())
        );
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
