//! The accounts file: one `[[account]]` per Instagram account and one
//! `[[app]]` per further Meta app, with every fault named with its line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::apps::{WebhookApp, WebhookSecrets};
use super::env::{DEFAULT_GRAPH_URL, check_graph_url};
use crate::accounts::{AccountSpec, PaceOverrides, is_account_id, is_alias};
use crate::graph::{AccessToken, Account};
use crate::send::pacing::Rate;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::env::tests::env;

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
}
