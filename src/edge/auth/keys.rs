//! The keys file: parsed whole (every fault named with its line), kept as
//! hashes, swapped on reload; and `keys new`.

use super::*;

/// A parsed keys file: secrets by hash, and certificate identities.
#[derive(Debug, Default)]
pub struct KeySet {
    by_hash: HashMap<[u8; 32], Arc<Key>, BuildHasherDefault<DigestHasher>>,
    by_identity: HashMap<String, Arc<Key>>,
}

impl KeySet {
    /// The key a bearer secret or one of a client certificate's identities
    /// names. A secret is looked up by its hash, so the time taken says
    /// nothing about how close a guess was.
    pub fn find(&self, bearer: Option<&str>, identities: &[String]) -> Option<Arc<Key>> {
        if let Some(secret) = bearer {
            let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            return self.by_hash.get(&hash).cloned();
        }
        // A certificate that matches two entries is ambiguous: neither.
        let mut found: Option<&Arc<Key>> = None;
        for key in identities.iter().filter_map(|id| self.by_identity.get(id)) {
            match found {
                Some(k) if !Arc::ptr_eq(k, key) => return None,
                _ => found = Some(key),
            }
        }
        found.cloned()
    }

    /// Whether `key` is still in force, unchanged.
    pub fn holds(&self, key: &Arc<Key>) -> bool {
        self.by_hash
            .values()
            .chain(self.by_identity.values())
            .any(|k| k.as_ref() == key.as_ref())
    }

    pub fn len(&self) -> usize {
        self.by_hash.len() + self.by_identity.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the text of a keys file; errors name `file`, the line and the
    /// fault.
    pub fn parse(file: &Path, text: &str) -> Result<Self, FileError> {
        let at = |span: std::ops::Range<usize>, what: String| FileError {
            file: file.to_owned(),
            line: line_of(text, span.start),
            what,
        };
        let parsed: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            FileError {
                file: file.to_owned(),
                line,
                what: e.message().to_owned(),
            }
        })?;
        let mut set = KeySet::default();
        let mut ids = HashSet::new();
        for entry in parsed.key {
            let id = entry.id.get_ref();
            if id.is_empty()
                || id.len() > MAX_ID_CHARS
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(at(
                    entry.id.span(),
                    format!(
                        "id {id:?} must be 1 to {MAX_ID_CHARS} letters, digits, '.', '_' or '-'"
                    ),
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(at(entry.id.span(), format!("duplicate id {id:?}")));
            }
            let mut allow = Operations::default();
            for op in &entry.allow {
                match Operation::parse(op.get_ref()) {
                    Some(o) => {
                        allow.insert(o);
                    }
                    None => {
                        return Err(at(
                            op.span(),
                            format!(
                                "unknown operation {:?} (known: {})",
                                op.get_ref(),
                                Operation::ALL.map(Operation::as_str).join(", ")
                            ),
                        ));
                    }
                }
            }
            let mut accounts = HashSet::new();
            for account in &entry.accounts {
                let a = account.get_ref();
                // `me` is the account a gateway configured with `me` sends as.
                if a != "*" && a != "me" && !is_account_id(a) && !is_alias(a) {
                    return Err(at(
                        account.span(),
                        format!(
                            "account {a:?} must be an Instagram account id (digits), an alias from the accounts file, \"me\" or \"*\""
                        ),
                    ));
                }
                accounts.insert(a.clone());
            }
            if accounts.is_empty() {
                return Err(at(
                    entry.id.span(),
                    format!("key {id:?} needs accounts = [...] (ids, or \"*\" for all)"),
                ));
            }
            let key = |credential| {
                Arc::new(Key {
                    id: id.clone(),
                    accounts: (!accounts.contains("*")).then(|| accounts.clone()),
                    allow,
                    credential,
                })
            };
            match (&entry.sha256, &entry.client_cert) {
                (Some(hash), None) => {
                    let bytes = hex::decode(hash.get_ref())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            at(
                                hash.span(),
                                "sha256 must be 64 hex digits (the SHA-256 of the secret)".into(),
                            )
                        })?;
                    let key = key(Credential::Sha256(bytes));
                    if set.by_hash.insert(bytes, key).is_some() {
                        return Err(at(hash.span(), "duplicate sha256".into()));
                    }
                }
                (None, Some(identity)) => {
                    let typed = client_cert_identity(identity.get_ref())
                        .map_err(|e| at(identity.span(), e))?;
                    let key = key(Credential::Certificate(typed.clone()));
                    if set.by_identity.insert(typed, key).is_some() {
                        return Err(at(identity.span(), "duplicate client_cert".into()));
                    }
                }
                _ => {
                    return Err(at(
                        entry.id.span(),
                        format!("key {id:?} needs exactly one of sha256 or client_cert"),
                    ));
                }
            }
        }
        // An empty file is far more often a write caught half done (or a
        // mistake) than a wish to lock every caller out and end every
        // stream; that is done by stopping the gateway.
        if set.is_empty() {
            return Err(FileError {
                file: file.to_owned(),
                line: 0,
                what: "holds no [[key]]: a keys file admits at least one key (replace the file atomically: write the new one beside it, then rename it over the old)".into(),
            });
        }
        Ok(set)
    }

    pub fn load(file: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(file).map_err(|e| FileError {
            file: file.to_owned(),
            line: 0,
            what: format!("cannot be read: {e}"),
        })?;
        Self::parse(file, &text)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: toml::Spanned<String>,
    sha256: Option<toml::Spanned<String>>,
    client_cert: Option<toml::Spanned<String>>,
    #[serde(default)]
    accounts: Vec<toml::Spanned<String>>,
    #[serde(default)]
    allow: Vec<toml::Spanned<String>>,
}

/// The 1-based line of a byte offset.
/// The keys in force, swapped whole on reload. Open (no file) means every
/// caller is let in.
pub struct Keys {
    file: Option<PathBuf>,
    current: ArcSwap<KeySet>,
    /// Bumped on every reload, so open streams re-check their key.
    reloaded: watch::Sender<u64>,
}

impl Keys {
    /// Authentication off.
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            file: None,
            current: ArcSwap::from_pointee(KeySet::default()),
            reloaded: watch::Sender::new(0),
        })
    }

    pub fn from_file(file: PathBuf) -> Result<Arc<Self>, FileError> {
        let set = KeySet::load(&file)?;
        Ok(Arc::new(Self {
            file: Some(file),
            current: ArcSwap::from_pointee(set),
            reloaded: watch::Sender::new(0),
        }))
    }

    pub fn is_open(&self) -> bool {
        self.file.is_none()
    }

    /// Re-reads the file; on an error the keys in force stay.
    pub fn reload(&self) -> Result<usize, FileError> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let set = KeySet::load(file)?;
        let n = set.len();
        self.current.store(Arc::new(set));
        self.reloaded.send_modify(|n| *n += 1);
        Ok(n)
    }

    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        identities: &[String],
    ) -> Result<Caller, AuthError> {
        if self.is_open() {
            return Ok(Caller::Open);
        }
        self.current
            .load()
            .find(bearer, identities)
            .map(Caller::Key)
            .ok_or(AuthError::InvalidKey)
    }

    /// Resolves once `caller`'s key is no longer in force (never for `Open`).
    pub async fn revoked(&self, caller: &Caller) {
        let Caller::Key(key) = caller else {
            return std::future::pending().await;
        };
        let mut reloads = self.reloaded.subscribe();
        loop {
            if !self.current.load().holds(key) {
                return;
            }
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// A fresh secret and its keys-file entry, for `keys new`.
pub fn new_key(
    id: &str,
    accounts: &[String],
    allow: &[String],
) -> Result<(String, String), String> {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::fill(&mut bytes);
    let secret = format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let block = format!(
        "[[key]]\nid = {id:?}\nsha256 = \"{hash}\"\naccounts = [{}]\nallow = [{}]\n",
        list(accounts),
        list(allow)
    );
    // The block must load, or the operator would find out at the next start.
    KeySet::parse(Path::new("<keys new>"), &block).map_err(|e| e.what)?;
    Ok((secret, block))
}
