//! Refreshed tokens as the store keeps them: sealed with a key of the
//! operator's, or marked as kept in clear.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

/// Seals tokens kept in the store: encrypted (ChaCha20-Poly1305) with a
/// key derived from `MESSENGER_GATEWAY_STORE_KEY` when it is set; else
/// kept as they are, in a file only this user can read.
#[derive(Clone)]
pub struct Sealer(Option<Key>);

impl Sealer {
    pub fn new(store_key: Option<&str>) -> Self {
        Self(store_key.map(|k| Key::from(<[u8; 32]>::from(Sha256::digest(k.as_bytes())))))
    }

    /// Seals `account`'s token; the account id is bound in (as associated
    /// data), so a sealed token moved to another account's row won't open.
    pub fn seal(&self, account: &str, token: &str) -> String {
        let Some(key) = &self.0 else {
            return format!("plain:{token}");
        };
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let payload = Payload {
            msg: token.as_bytes(),
            aad: account.as_bytes(),
        };
        let sealed = ChaCha20Poly1305::new(key)
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("encrypting a short token cannot fail");
        format!("v1:{}", BASE64.encode([&nonce[..], &sealed].concat()))
    }

    /// `None` when it cannot be opened: another key or account, or a token
    /// kept in clear while a key is set (it is refreshed again, and sealed).
    pub fn open(&self, account: &str, sealed: &str) -> Option<String> {
        if let Some(plain) = sealed.strip_prefix("plain:") {
            return self.0.is_none().then(|| plain.to_owned());
        }
        let bytes = BASE64.decode(sealed.strip_prefix("v1:")?).ok()?;
        let (nonce, ciphertext) = bytes.split_at_checked(12)?;
        let payload = Payload {
            msg: ciphertext,
            aad: account.as_bytes(),
        };
        let plain = ChaCha20Poly1305::new(self.0.as_ref()?)
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()?;
        String::from_utf8(plain).ok()
    }
}
