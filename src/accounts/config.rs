//! Settings from the environment, read exactly as the Instagram starter kit
//! reads them, and checked all at once so one message names every problem.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::accounts::{AccountSpec, PaceOverrides, is_account_id, is_alias};
use crate::graph::{AccessToken, Account};
use crate::send::pacing::Rate;

pub const DEFAULT_GRAPH_URL: &str = "https://graph.instagram.com/v25.0";

/// Every variable the gateway reads; none set at all means "use the sandbox".
pub const VARIABLES: [&str; 5] = [
    "INSTAGRAM_API_URL",
    "INSTAGRAM_GRAPH_API_URL",
    "INSTAGRAM_ACCOUNT_ID",
    "INSTAGRAM_USER_ID",
    "INSTAGRAM_ACCESS_TOKEN",
];

/// The line of a byte offset in `text`, from 1.
pub fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// `file:line: what`, or `file: what` when no line is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {what}", .file.display(), if *.line > 0 { format!(":{}", .line) } else { String::new() })]
pub struct FileError {
    pub file: PathBuf,
    pub line: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// The account to send as, or `None` when no Instagram variable is set.
///
/// An empty variable counts as unset, so `INSTAGRAM_API_URL=` in an env file
/// falls through to `INSTAGRAM_GRAPH_API_URL` instead of breaking the URL.
pub fn account_from_env(
    var: impl Fn(&str) -> Option<String>,
    allow_insecure_graph: bool,
) -> Result<Option<Account>, ConfigError> {
    let get = |name: &'static str| var(name).filter(|v| !v.is_empty()).map(|v| (name, v));
    if VARIABLES.iter().all(|name| get(name).is_none()) {
        return Ok(None);
    }
    let mut problems = Vec::new();

    let base = get("INSTAGRAM_API_URL").or_else(|| get("INSTAGRAM_GRAPH_API_URL"));
    let base_url = match base {
        None => Some(DEFAULT_GRAPH_URL.to_owned()),
        Some((name, value)) => match check_graph_url(&value, allow_insecure_graph) {
            Ok(()) => Some(value),
            Err(why) => {
                // Never echo a URL that carries credentials.
                let shown = if why == CREDENTIALS_IN_URL {
                    String::new()
                } else {
                    format!(" (got {value:?})")
                };
                problems.push(format!("{name} {why}{shown}"));
                None
            }
        },
    };

    let account_id = match get("INSTAGRAM_ACCOUNT_ID").or_else(|| get("INSTAGRAM_USER_ID")) {
        None => {
            problems.push(
                "INSTAGRAM_ACCOUNT_ID or INSTAGRAM_USER_ID must be set to the account's Instagram user id".to_owned(),
            );
            None
        }
        Some((_, value)) if value == "me" || value.bytes().all(|b| b.is_ascii_digit()) => {
            Some(value)
        }
        Some((name, value)) => {
            problems.push(format!("{name} must be digits or \"me\" (got {value:?})"));
            None
        }
    };

    let token = match get("INSTAGRAM_ACCESS_TOKEN") {
        None => {
            problems.push("INSTAGRAM_ACCESS_TOKEN must be set".to_owned());
            None
        }
        // Never echo the token, not even a bad one.
        Some((name, value)) if value.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            problems.push(format!(
                "{name} must not contain spaces or control characters"
            ));
            None
        }
        Some((_, value)) => Some(AccessToken::new(value)),
    };

    match (base_url, account_id, token) {
        (Some(base_url), Some(account_id), Some(token)) if problems.is_empty() => {
            Account::new(&base_url, &account_id, &token)
                .map(Some)
                .map_err(|e| ConfigError { problems: vec![e] })
        }
        _ => Err(ConfigError { problems }),
    }
}

/// The accounts file as written: one `[[account]]` per Instagram account.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<toml::Spanned<FileAccount>>,
    #[serde(default)]
    app: Vec<toml::Spanned<AppEntry>>,
}

/// A Meta app whose webhooks arrive at `/webhook/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    name: toml::Spanned<String>,
    secret_env: toml::Spanned<String>,
    verify_token_env: toml::Spanned<String>,
}

/// The app's webhook secrets. Never logged.
#[derive(Clone)]
pub struct WebhookSecrets {
    /// `INSTAGRAM_APP_SECRET`: the HMAC key Meta signs deliveries with.
    pub app_secret: String,
    /// `INSTAGRAM_VERIFY_TOKEN`: what Meta echoes in the handshake.
    pub verify_token: String,
}

impl WebhookSecrets {
    /// Fresh random secrets, for the sandbox: it never signs with a real one.
    pub fn random() -> Self {
        Self {
            app_secret: format!("sandbox-secret-{:032x}", rand::random::<u128>()),
            verify_token: format!("sandbox-verify-{:016x}", rand::random::<u64>()),
        }
    }
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecrets(..)")
    }
}

/// A Meta app of the accounts file: its name (the last part of its
/// webhook path) and secrets.
#[derive(Debug, Clone)]
pub struct WebhookApp {
    pub name: String,
    pub secrets: WebhookSecrets,
}

/// What an accounts file configures.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    pub accounts: Vec<AccountSpec>,
    pub apps: Vec<WebhookApp>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    id: toml::Spanned<String>,
    name: Option<toml::Spanned<String>>,
    token_env: Option<toml::Spanned<String>>,
    token_file: Option<toml::Spanned<PathBuf>>,
    api_url: Option<toml::Spanned<String>>,
    /// The `[[app]]` whose webhooks alone may carry this account's events.
    app: Option<toml::Spanned<String>>,
    /// This account's budgets, such as "100/s", where they differ from the
    /// flags'.
    pace_standard: Option<toml::Spanned<String>>,
    pace_media: Option<toml::Spanned<String>>,
    pace_private_replies: Option<toml::Spanned<String>>,
    /// Refused with its own message: tokens never sit in the file.
    token: Option<toml::Spanned<toml::Value>>,
}

/// Reads the accounts file at `file`; tokens come from the environment
/// (`var`) or the files the entries name. Every fault names the file and
/// line.
pub fn read_accounts_file(
    file: &Path,
    var: impl Fn(&str) -> Option<String>,
    allow_insecure_graph: bool,
) -> Result<AccountsConfig, FileError> {
    let text = std::fs::read_to_string(file).map_err(|e| FileError {
        file: file.to_owned(),
        line: 0,
        what: format!("cannot read the accounts file: {e}"),
    })?;
    parse_accounts(file, &text, var, allow_insecure_graph)
}

/// A token file is longer than no token.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Reads a token file as ssh reads a private key: a regular file (a FIFO
/// or a device would hang the start), of a few KiB at most, that only its
/// owner may read. A relative path is read from `dir`, the accounts file's
/// directory, wherever the gateway was started.
fn read_token_file(path: &Path, dir: &Path) -> Result<String, String> {
    let path = dir.join(path);
    let shown = path.display();
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("the token file {shown} cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the token file {shown} is not a regular file"));
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "the token file {shown} is {} bytes: a token file holds one token (at most {MAX_TOKEN_FILE_BYTES} bytes)",
            meta.len()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the token file {shown} may be read by others (mode {mode:o}): make it the owner's only (chmod 600)"
            ));
        }
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("the token file {shown} cannot be read: {e}"))?;
    match text.trim() {
        "" => Err(format!("the token file {shown} is empty")),
        token => Ok(token.to_owned()),
    }
}

/// Parses the text of an accounts file (see [`read_accounts_file`]).
pub fn parse_accounts(
    file: &Path,
    text: &str,
    var: impl Fn(&str) -> Option<String>,
    allow_insecure_graph: bool,
) -> Result<AccountsConfig, FileError> {
    let at = |span: std::ops::Range<usize>, what: String| FileError {
        file: file.to_owned(),
        line: line_of(text, span.start),
        what,
    };
    let parsed: AccountsFile = toml::from_str(text).map_err(|e| FileError {
        file: file.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        what: e.message().to_owned(),
    })?;
    if parsed.account.is_empty() {
        return Err(at(0..0, "no [[account]] is configured".into()).no_line());
    }
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    let mut apps_named = Vec::new();
    for entry in parsed.account {
        let span = entry.span();
        let entry = entry.into_inner();
        let id = entry.id.get_ref();
        if !is_account_id(id) {
            return Err(at(
                entry.id.span(),
                format!("account id {id:?} must be the Instagram user id (digits)"),
            ));
        }
        if !names.insert(id.clone()) {
            return Err(at(
                entry.id.span(),
                format!("account {id} is configured twice"),
            ));
        }
        if let Some(name) = &entry.name {
            let n = name.get_ref();
            if !is_alias(n) {
                return Err(at(
                    name.span(),
                    format!(
                        "name {n:?} must start with a letter and hold only letters, digits, '-', '_' or '.' (at most 64)"
                    ),
                ));
            }
            if !names.insert(n.clone()) {
                return Err(at(name.span(), format!("name {n:?} is used twice")));
            }
        }
        if let Some(t) = &entry.token {
            return Err(at(
                t.span(),
                "a token never goes in the file: use token_env = \"VAR\" or token_file = \"/path\""
                    .into(),
            ));
        }
        // Never echoes a token, not even a bad one.
        let raw = match (&entry.token_env, &entry.token_file) {
            (Some(_), Some(f)) => {
                return Err(at(
                    f.span(),
                    "give token_env or token_file, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    span,
                    format!("account {id} needs token_env or token_file"),
                ));
            }
            (Some(env), None) => var(env.get_ref())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    at(
                        env.span(),
                        format!("account {id}: the variable {} is not set", env.get_ref()),
                    )
                })?,
            (None, Some(path)) => {
                let dir = file.parent().unwrap_or(Path::new("."));
                read_token_file(path.get_ref(), dir)
                    .map_err(|why| at(path.span(), format!("account {id}: {why}")))?
            }
        };
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(at(
                span,
                format!("account {id}: the token must not contain spaces or control characters"),
            ));
        }
        let base_url = match &entry.api_url {
            None => DEFAULT_GRAPH_URL.to_owned(),
            Some(u) => {
                check_graph_url(u.get_ref(), allow_insecure_graph)
                    .map_err(|why| at(u.span(), format!("api_url {why}")))?;
                u.get_ref().clone()
            }
        };
        let account = Account::new(&base_url, id, &AccessToken::new(raw))
            .map_err(|e| at(span.clone(), format!("account {id}: {e}")))?;
        let mut spec = AccountSpec::new(account);
        let rate = |field: &Option<toml::Spanned<String>>| {
            field
                .as_ref()
                .map(|f| Rate::parse(f.get_ref()).map_err(|e| at(f.span(), e)))
                .transpose()
        };
        spec.pace = PaceOverrides {
            standard: rate(&entry.pace_standard)?,
            media: rate(&entry.pace_media)?,
            private_replies: rate(&entry.pace_private_replies)?,
        };
        if let Some(app) = entry.app {
            apps_named.push((app.get_ref().clone(), app.span()));
            spec.app = Some(app.into_inner());
        }
        specs.push(match entry.name {
            Some(n) => spec.named(n.into_inner()),
            None => spec,
        });
    }
    let mut apps: Vec<WebhookApp> = Vec::new();
    for app in parsed.app {
        let app = app.into_inner();
        let name = app.name.get_ref();
        if !is_alias(name) {
            return Err(at(
                app.name.span(),
                format!(
                    "app name {name:?} must start with a letter and hold only letters, digits, '-', '_' or '.' (it is a URL path)"
                ),
            ));
        }
        if apps.iter().any(|a| &a.name == name) {
            return Err(at(
                app.name.span(),
                format!("app {name:?} is configured twice"),
            ));
        }
        let secret = |field: &toml::Spanned<String>| {
            var(field.get_ref())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    at(
                        field.span(),
                        format!("app {name}: the variable {} is not set", field.get_ref()),
                    )
                })
        };
        apps.push(WebhookApp {
            name: name.clone(),
            secrets: WebhookSecrets {
                app_secret: secret(&app.secret_env)?,
                verify_token: secret(&app.verify_token_env)?,
            },
        });
    }
    if let Some((app, span)) = apps_named
        .into_iter()
        .find(|(app, _)| !apps.iter().any(|a| &a.name == app))
    {
        return Err(at(
            span,
            format!("app {app:?} is not one of the file's [[app]] blocks"),
        ));
    }
    Ok(AccountsConfig {
        accounts: specs,
        apps,
    })
}

impl FileError {
    fn no_line(mut self) -> Self {
        self.line = 0;
        self
    }
}

const CREDENTIALS_IN_URL: &str =
    "must not carry a user name or password: the token goes in INSTAGRAM_ACCESS_TOKEN";

/// The Graph base URL: https, or http only to this machine (tests, the
/// sandbox) unless `allow_insecure`: the token must not cross a network in
/// clear text.
fn check_graph_url(value: &str, allow_insecure: bool) -> Result<(), String> {
    let shape =
        format!("must be an http(s) URL without query or fragment, such as {DEFAULT_GRAPH_URL}");
    let u = url::Url::parse(value).map_err(|_| shape.clone())?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host().is_none()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(shape);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(CREDENTIALS_IN_URL.into());
    }
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if u.scheme() == "http" && !loopback && !allow_insecure {
        return Err(
            "must be https:// (http:// only to localhost, or with --allow-insecure-graph)".into(),
        );
    }
    Ok(())
}

/// The webhook secrets, or `None` when neither variable is set (webhooks
/// are then off). One without the other is a mistake worth stopping for.
pub fn webhook_secrets_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<WebhookSecrets>, ConfigError> {
    let get = |name: &str| var(name).filter(|v| !v.is_empty());
    match (get("INSTAGRAM_APP_SECRET"), get("INSTAGRAM_VERIFY_TOKEN")) {
        (None, None) => Ok(None),
        (Some(app_secret), Some(verify_token)) => Ok(Some(WebhookSecrets {
            app_secret,
            verify_token,
        })),
        (None, Some(_)) => Err(ConfigError {
            problems: vec!["INSTAGRAM_APP_SECRET must be set to verify webhook signatures (INSTAGRAM_VERIFY_TOKEN is set)".into()],
        }),
        (Some(_), None) => Err(ConfigError {
            problems: vec!["INSTAGRAM_VERIFY_TOKEN must be set for the webhook handshake (INSTAGRAM_APP_SECRET is set)".into()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn accounts(text: &str) -> Result<Vec<AccountSpec>, FileError> {
        parse_accounts(
            Path::new("accounts.toml"),
            text,
            env(&[
                ("SHOP", "shop-token"),
                ("HELP", "help-token"),
                ("APP_SECRET_B", "secret-b"),
                ("VERIFY_B", "verify-b"),
            ]),
            false,
        )
        .map(|c| c.accounts)
    }

    const TWO: &str = r#"
[[account]]
id = "17841400000000001"
name = "shop"
token_env = "SHOP"
api_url = "http://127.0.0.1:9/v25.0"

[[account]]
id = "17841400000000002"
token_env = "HELP"
"#;

    #[test]
    fn an_accounts_file_names_each_account_with_its_token_and_graph() {
        let specs = accounts(TWO).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].id(), "17841400000000001");
        assert_eq!(specs[0].name.as_deref(), Some("shop"));
        assert_eq!(
            specs[0].account.messages_url(),
            "http://127.0.0.1:9/v25.0/17841400000000001/messages"
        );
        assert_eq!(specs[1].name, None);
        assert_eq!(specs[1].account.base_url, DEFAULT_GRAPH_URL);
    }

    #[test]
    fn every_accounts_file_fault_is_named_with_its_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[[account]]\nid = \"12x\"\ntoken_env = \"SHOP\"\n",
                2,
                "digits",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken_env = \"SHOP\"\n[[account]]\nid = \"1\"\ntoken_env = \"HELP\"\n",
                5,
                "configured twice",
            ),
            (
                "[[account]]\nid = \"1\"\nname = \"a\"\ntoken_env = \"SHOP\"\n[[account]]\nid = \"2\"\nname = \"a\"\ntoken_env = \"HELP\"\n",
                7,
                "used twice",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken_env = \"MISSING\"\n",
                3,
                "is not set",
            ),
            (
                "[[account]]\nid = \"1\"\n",
                1,
                "needs token_env or token_file",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken = \"abc\"\n",
                3,
                "never goes in the file",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken_env = \"SHOP\"\napi_url = \"http://graph.example/v1\"\n",
                4,
                "api_url",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken_env = \"SHOP\"\ncolour = 1\n",
                4,
                "unknown field",
            ),
            (
                "[[account]]\nid = \"1\"\nname = \"9lives\"\ntoken_env = \"SHOP\"\n",
                3,
                "start with a letter",
            ),
            (
                "[[account]]\nid = \"1\"\ntoken_file = \"/nonexistent/token\"\n",
                3,
                "cannot be read",
            ),
        ];
        for (text, line, what) in cases {
            let e = accounts(text).unwrap_err();
            assert_eq!(
                (e.line, e.file.as_path()),
                (*line, Path::new("accounts.toml")),
                "{text}: {e}"
            );
            assert!(e.what.contains(what), "{text}: {e}");
            assert!(!e.to_string().contains("shop-token"));
        }
        let e = accounts("").unwrap_err();
        assert!(e.what.contains("no [[account]]"), "{e}");
    }

    #[test]
    fn apps_get_their_secrets_from_the_environment() {
        let text = format!(
            "{TWO}\n[[app]]\nname = \"brand-b\"\nsecret_env = \"APP_SECRET_B\"\nverify_token_env = \"VERIFY_B\"\n"
        );
        let var = env(&[
            ("SHOP", "s"),
            ("HELP", "h"),
            ("APP_SECRET_B", "secret-b"),
            ("VERIFY_B", "verify-b"),
        ]);
        let config = parse_accounts(Path::new("a.toml"), &text, &var, false).unwrap();
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].name, "brand-b");
        assert_eq!(config.apps[0].secrets.app_secret, "secret-b");
        assert_eq!(config.apps[0].secrets.verify_token, "verify-b");

        let missing = text.replace("VERIFY_B", "VERIFY_MISSING");
        let e = parse_accounts(Path::new("a.toml"), &missing, &var, false).unwrap_err();
        assert!(e.what.contains("VERIFY_MISSING is not set"), "{e}");
        assert_eq!(e.line, 15);
        let tied = text.replace(
            "token_env = \"HELP\"",
            "token_env = \"HELP\"\napp = \"brand-c\"",
        );
        let e = parse_accounts(Path::new("a.toml"), &tied, &var, false).unwrap_err();
        assert!(
            e.what.contains("not one of the file's [[app]] blocks"),
            "{e}"
        );
        let tied = text.replace(
            "token_env = \"HELP\"",
            "token_env = \"HELP\"\napp = \"brand-b\"",
        );
        let config = parse_accounts(Path::new("a.toml"), &tied, &var, false).unwrap();
        assert_eq!(config.accounts[1].app.as_deref(), Some("brand-b"));
        let paced = text.replace(
            "token_env = \"HELP\"",
            "token_env = \"HELP\"\npace_standard = \"50/s\"",
        );
        let config = parse_accounts(Path::new("a.toml"), &paced, &var, false).unwrap();
        assert_eq!(config.accounts[1].pace.standard, Some(Rate::per_second(50)));
        let bad = text.replace(
            "token_env = \"HELP\"",
            "token_env = \"HELP\"\npace_media = \"fast\"",
        );
        let e = parse_accounts(Path::new("a.toml"), &bad, &var, false).unwrap_err();
        assert!(e.what.contains("a rate is N/s"), "{e}");
        assert_eq!(e.line, 11);
        let bad = text.replace("brand-b", "../etc");
        let e = parse_accounts(Path::new("a.toml"), &bad, &var, false).unwrap_err();
        assert!(e.what.contains("URL path"), "{e}");
    }

    fn owner_only(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_token_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        owner_only(&path, "file-token\n");
        let text = format!("[[account]]\nid = \"1\"\ntoken_file = {:?}\n", path);
        let specs = accounts(&text).unwrap();
        assert_eq!(specs[0].id(), "1");
    }

    #[test]
    fn a_token_file_is_the_owners_alone_regular_small_and_found_beside_the_accounts_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf/accounts.toml");
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        let read = |token_file: &str| {
            let text = format!("[[account]]\nid = \"1\"\ntoken_file = {token_file:?}\n");
            parse_accounts(&file, &text, |_| None, false)
        };
        // Relative: beside the accounts file, wherever the gateway runs.
        owner_only(&dir.path().join("conf/shop"), "shop-token");
        assert_eq!(read("shop").unwrap().accounts.len(), 1);
        // Readable by the group or the world: refused, as ssh refuses a key.
        std::fs::set_permissions(
            dir.path().join("conf/shop"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = read("shop").unwrap_err();
        assert!(
            e.what.contains("chmod 600") && e.what.contains("644"),
            "{e}"
        );
        assert!(!e.to_string().contains("shop-token"));
        // A FIFO would hang the start; a directory or a huge file is no token.
        let fifo = dir.path().join("conf/fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            read("fifo")
                .unwrap_err()
                .what
                .contains("not a regular file")
        );
        assert!(read(".").unwrap_err().what.contains("not a regular file"));
        owner_only(&dir.path().join("conf/big"), &"t".repeat(5000));
        assert!(read("big").unwrap_err().what.contains("5000 bytes"));
    }

    fn account_from_env_test(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Account>, ConfigError> {
        account_from_env(var, false)
    }

    #[test]
    fn graph_urls_keep_the_token_safe() {
        let with = |url: &str, insecure: bool| {
            account_from_env(
                env(&[
                    ("INSTAGRAM_API_URL", url),
                    ("INSTAGRAM_ACCOUNT_ID", "1"),
                    ("INSTAGRAM_ACCESS_TOKEN", "t"),
                ]),
                insecure,
            )
        };
        let err = with("https://user:hunter2@graph.example/v25.0", false).unwrap_err();
        assert!(err.to_string().contains("user name or password"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(with("http://graph.example/v25.0", false).is_err());
        assert!(with("http://graph.example/v25.0", true).is_ok());
        for local in [
            "http://127.0.0.1:9/v25.0",
            "http://localhost:9/v25.0",
            "http://[::1]:9/x",
        ] {
            assert!(with(local, false).is_ok(), "{local}");
        }
        assert!(with("https://graph.instagram.com/v25.0", false).is_ok());
    }

    #[test]
    fn nothing_set_means_no_account() {
        assert_eq!(
            account_from_env_test(env(&[])).unwrap().map(|a| a.base_url),
            None
        );
        assert!(
            account_from_env_test(env(&[("INSTAGRAM_API_URL", "")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_sandbox_pair_wins_over_the_real_account_pair() {
        let account = account_from_env_test(env(&[
            ("INSTAGRAM_API_URL", "http://127.0.0.1:9/sandbox/v25.0/"),
            (
                "INSTAGRAM_GRAPH_API_URL",
                "https://graph.instagram.com/v25.0",
            ),
            ("INSTAGRAM_ACCOUNT_ID", "111"),
            ("INSTAGRAM_USER_ID", "222"),
            ("INSTAGRAM_ACCESS_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            account.messages_url(),
            "http://127.0.0.1:9/sandbox/v25.0/111/messages"
        );
    }

    #[test]
    fn the_real_account_pair_is_used_when_the_sandbox_pair_is_absent() {
        let account = account_from_env_test(env(&[
            ("INSTAGRAM_API_URL", ""),
            (
                "INSTAGRAM_GRAPH_API_URL",
                "https://graph.instagram.com/v24.0",
            ),
            ("INSTAGRAM_USER_ID", "222"),
            ("INSTAGRAM_ACCESS_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            account.messages_url(),
            "https://graph.instagram.com/v24.0/222/messages"
        );
    }

    #[test]
    fn the_base_url_defaults_to_graph_instagram_com() {
        let account = account_from_env_test(env(&[
            ("INSTAGRAM_USER_ID", "me"),
            ("INSTAGRAM_ACCESS_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            account.messages_url(),
            "https://graph.instagram.com/v25.0/me/messages"
        );
    }

    #[test]
    fn every_problem_is_named_at_once_and_the_token_is_never_echoed() {
        let err = account_from_env_test(env(&[
            ("INSTAGRAM_API_URL", "ftp://x"),
            ("INSTAGRAM_ACCOUNT_ID", "jane"),
            ("INSTAGRAM_ACCESS_TOKEN", "secret value"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        for name in [
            "INSTAGRAM_API_URL",
            "INSTAGRAM_ACCOUNT_ID",
            "INSTAGRAM_ACCESS_TOKEN",
        ] {
            assert!(text.contains(name), "{text}");
        }
        assert!(!text.contains("secret"), "{text}");

        let err = account_from_env_test(env(&[(
            "INSTAGRAM_GRAPH_API_URL",
            "https://graph.instagram.com/v25.0",
        )]))
        .unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert!(err.problems[0].contains("INSTAGRAM_ACCOUNT_ID or INSTAGRAM_USER_ID"));
        assert!(err.problems[1].contains("INSTAGRAM_ACCESS_TOKEN"));
    }

    #[test]
    fn webhook_secrets_come_in_pairs() {
        assert!(webhook_secrets_from_env(env(&[])).unwrap().is_none());
        let both = webhook_secrets_from_env(env(&[
            ("INSTAGRAM_APP_SECRET", "s"),
            ("INSTAGRAM_VERIFY_TOKEN", "v"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (both.app_secret.as_str(), both.verify_token.as_str()),
            ("s", "v")
        );
        let half = webhook_secrets_from_env(env(&[("INSTAGRAM_APP_SECRET", "s")])).unwrap_err();
        assert!(half.problems[0].starts_with("INSTAGRAM_VERIFY_TOKEN"));
        let secret = webhook_secrets_from_env(env(&[
            ("INSTAGRAM_APP_SECRET", "app-secret-91"),
            ("INSTAGRAM_VERIFY_TOKEN", "verify-token-37"),
        ]))
        .unwrap();
        let shown = format!("{secret:?}");
        assert!(!shown.contains("app-secret-91") && !shown.contains("verify-token-37"));
    }
}
