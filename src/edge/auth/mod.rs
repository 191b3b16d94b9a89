//! Who may call the gateway: API keys (kept only as SHA-256 hashes) or
//! client-certificate identities, each with the operations and the accounts
//! it may act for. Free of gRPC: the adapter reads the credentials off a
//! request and asks [`Keys::authenticate`].

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::accounts::file::{FileError, line_of};
use crate::accounts::{is_account_id, is_alias};

mod keys;

pub use keys::{KeySet, Keys, new_key};

/// What a key may be allowed to do, as named in the keys file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Send,
    SendAction,
    GetWindow,
    Subscribe,
    /// Operator calls: `ListAccounts`.
    Admin,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Send,
        Operation::SendAction,
        Operation::GetWindow,
        Operation::Subscribe,
        Operation::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::SendAction => "send_action",
            Operation::GetWindow => "get_window",
            Operation::Subscribe => "subscribe",
            Operation::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

/// A set of operations, as bits: checked on every call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Operations(u8);

impl Operations {
    fn insert(&mut self, op: Operation) {
        self.0 |= 1 << op as u8;
    }

    fn contains(self, op: Operation) -> bool {
        self.0 & (1 << op as u8) != 0
    }
}

/// Keys of `by_hash` are SHA-256 digests, already uniform: their first
/// bytes are the hash. (SipHash over them would cost more than the lookup.)
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    /// The digest's bytes come last (after the slice length): the last
    /// write of eight bytes or more decides.
    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The prefix of every secret `keys new` makes, so a leaked one is easy to
/// recognise (and to scan for).
pub const SECRET_PREFIX: &str = "mgw_";
/// Bytes of randomness in a secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Key ids appear in logs, errors and request-id scopes: keep them plain.
const MAX_ID_CHARS: usize = 64;

/// One entry of the keys file.
#[derive(Debug, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    /// `None`: every account ("*").
    accounts: Option<HashSet<String>>,
    allow: Operations,
    /// Part of the entry: a rotated secret is a different key, and streams
    /// opened with the old one end.
    credential: Credential,
}

#[derive(Debug, PartialEq, Eq)]
enum Credential {
    Sha256([u8; 32]),
    /// A client certificate identity, typed (`uri:…` or `dns:…`).
    Certificate(String),
}

/// A certificate identity as matched: a URI SAN (it has a scheme, like
/// `spiffe://prod/billing`) or a DNS SAN, typed, so a DNS name spelled like
/// a URI never matches a URI entry.
pub fn uri_identity(uri: &str) -> String {
    format!("uri:{uri}")
}

pub fn dns_identity(dns: &str) -> String {
    format!("dns:{}", dns.to_ascii_lowercase())
}

/// The typed identity of a `client_cert = "…"` value, or why it is not one.
fn client_cert_identity(value: &str) -> Result<String, String> {
    if value.contains("://") {
        return Ok(uri_identity(value));
    }
    let dns_ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if dns_ok {
        Ok(dns_identity(value))
    } else {
        Err(format!(
            "client_cert {value:?} must be a URI SAN (such as spiffe://prod/billing) or a DNS name"
        ))
    }
}

impl Key {
    pub fn may(&self, operation: Operation) -> bool {
        self.allow.contains(operation)
    }

    /// Whether the key's accounts name this one, by id or by alias.
    pub fn may_act_for(&self, id: &str, alias: Option<&str>) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|a| a.contains(id) || alias.is_some_and(|n| a.contains(n)))
    }
}

/// The caller of one request, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: every operation, every account.
    Open,
    Key(Arc<Key>),
}

/// Why a call is refused before it does anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a valid API key is required: send `authorization: Bearer <key>`")]
    InvalidKey,
    #[error("key {key_id:?} may not {}", .operation.as_str())]
    OperationNotAllowed {
        key_id: String,
        operation: Operation,
    },
    #[error("key {key_id:?} may not act for account {account}")]
    AccountNotAllowed { key_id: String, account: String },
}

impl Caller {
    /// The key id for logs, or "-" when authentication is off.
    pub fn id(&self) -> &str {
        match self {
            Caller::Open => "-",
            Caller::Key(k) => &k.id,
        }
    }

    /// The span a call's log lines are made in: it names the key. None
    /// when authentication is off, when it would only say "-" at the cost
    /// of a span per call.
    pub fn span(&self) -> tracing::Span {
        match self {
            Caller::Open => tracing::Span::none(),
            Caller::Key(k) => tracing::info_span!("call", key = k.id.as_str()),
        }
    }

    /// Checks `operation` alone.
    pub fn authorize_operation(&self, operation: Operation) -> Result<(), AuthError> {
        match self {
            Caller::Key(key) if !key.may(operation) => Err(AuthError::OperationNotAllowed {
                key_id: key.id.clone(),
                operation,
            }),
            _ => Ok(()),
        }
    }

    /// Checks `operation` for the account `id` (known also as `alias`);
    /// nothing may happen on an error.
    pub fn authorize(
        &self,
        operation: Operation,
        id: &str,
        alias: Option<&str>,
    ) -> Result<(), AuthError> {
        self.authorize_operation(operation)?;
        let Caller::Key(key) = self else {
            return Ok(());
        };
        if !key.may_act_for(id, alias) {
            return Err(AuthError::AccountNotAllowed {
                key_id: key.id.clone(),
                account: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Whether events of the account `id` (known also as `alias`) may be
    /// shown to this caller.
    pub fn sees(&self, id: &str, alias: Option<&str>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(k) => k.may_act_for(id, alias),
        }
    }

    /// The namespace of this caller's `request_id`s: two keys never share one.
    pub fn request_scope(&self) -> &str {
        match self {
            Caller::Open => "",
            Caller::Key(k) => &k.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KeySet, FileError> {
        KeySet::parse(Path::new("keys.toml"), text)
    }

    fn entry(id: &str, secret: &str) -> String {
        format!(
            "[[key]]\nid = \"{id}\"\nsha256 = \"{}\"\naccounts = [\"*\"]\nallow = [\"send\"]\n",
            hex::encode(Sha256::digest(secret.as_bytes()))
        )
    }

    #[test]
    fn a_secret_is_found_by_its_hash_and_nothing_else() {
        let set = parse(&entry("billing", "mgw_abc")).unwrap();
        assert_eq!(set.find(Some("mgw_abc"), &[]).unwrap().id, "billing");
        assert!(set.find(Some("mgw_abd"), &[]).is_none());
        assert!(set.find(None, &[]).is_none());
        let hash = hex::encode(Sha256::digest(b"mgw_abc"));
        assert!(set.find(Some(&hash), &[]).is_none(), "the hash is no key");
    }

    #[test]
    fn faults_in_the_file_name_the_line() {
        let dup = format!("{}\n{}", entry("a", "x"), entry("a", "y"));
        let e = parse(&dup).unwrap_err();
        assert_eq!((e.line, e.what.as_str()), (8, "duplicate id \"a\""));
        let same_hash = format!("{}\n{}", entry("a", "x"), entry("b", "x"));
        let e = parse(&same_hash).unwrap_err();
        assert_eq!((e.line, e.what.as_str()), (9, "duplicate sha256"));
        let bad_op = entry("a", "x").replace("\"send\"", "\"send\", \"delete_all\"");
        let e = parse(&bad_op).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.what.contains("unknown operation \"delete_all\""), "{e}");
        let e = parse("[[key]\nid=1").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("keys.toml:1: "), "{e}");
        let e = parse(&entry("a", "x").replace("sha256", "sha265")).unwrap_err();
        assert!(e.what.contains("sha265"), "{e}");
        let e = parse(&entry("a b", "x")).unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn a_key_is_held_to_its_operations_and_accounts() {
        let text = "[[key]]\nid = \"shop\"\nsha256 = \"".to_owned()
            + &hex::encode(Sha256::digest(b"s"))
            + "\"\naccounts = [\"111\"]\nallow = [\"send\", \"subscribe\"]\n";
        let set = parse(&text).unwrap();
        let caller = Caller::Key(set.find(Some("s"), &[]).unwrap());
        assert!(caller.authorize(Operation::Send, "111", None).is_ok());
        assert!(matches!(
            caller.authorize(Operation::GetWindow, "111", None),
            Err(AuthError::OperationNotAllowed { .. })
        ));
        assert!(matches!(
            caller.authorize(Operation::Send, "222", None),
            Err(AuthError::AccountNotAllowed { .. })
        ));
        assert!(caller.sees("111", None) && !caller.sees("222", None));
    }

    #[test]
    fn new_keys_are_long_random_url_safe_and_load() {
        let all = vec!["*".to_owned()];
        let (a, block) = new_key("svc", &all, &["send".into()]).unwrap();
        let (b, _) = new_key("svc", &all, &["send".into()]).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() >= SECRET_PREFIX.len() + 43);
        assert!(
            a[4..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(!block.contains(&a), "only the hash is written down");
        let set = parse(&block).unwrap();
        assert_eq!(set.find(Some(&a), &[]).unwrap().id, "svc");
        assert!(new_key("svc", &all, &["fly".into()]).is_err());
    }

    #[test]
    fn a_rotated_secret_is_a_different_key() {
        let before = parse(&entry("svc", "old-secret")).unwrap();
        let after = parse(&entry("svc", "new-secret")).unwrap();
        let old = before.find(Some("old-secret"), &[]).unwrap();
        assert!(before.holds(&old));
        assert!(
            !after.holds(&old),
            "streams opened with the old secret must end"
        );
    }

    #[test]
    fn certificate_identities_are_typed_and_unambiguous() {
        let cert = |id: &str, identity: &str| {
            format!(
                "[[key]]\nid = \"{id}\"\nclient_cert = \"{identity}\"\naccounts = [\"*\"]\nallow = [\"send\"]\n"
            )
        };
        let set =
            parse(&(cert("billing", "spiffe://prod/billing") + &cert("web", "Web.Prod.Example")))
                .unwrap();
        let uri = uri_identity("spiffe://prod/billing");
        let dns_spelled_like_uri = dns_identity("spiffe://prod/billing");
        let dns = dns_identity("web.prod.example");
        assert_eq!(
            set.find(None, std::slice::from_ref(&uri)).unwrap().id,
            "billing"
        );
        assert!(set.find(None, &[dns_spelled_like_uri]).is_none());
        assert_eq!(
            set.find(None, std::slice::from_ref(&dns)).unwrap().id,
            "web"
        );
        assert!(
            set.find(None, &[uri, dns]).is_none(),
            "two entries: neither"
        );
        let e = parse(&cert("x", "not a name")).unwrap_err();
        assert!(e.what.contains("client_cert"), "{e}");
    }
}
