//! The `INSTAGRAM_*` variables, read exactly as the Instagram starter kit
//! reads them, and checked all at once so one message names every problem.
//! Also the Graph URL rule the accounts file shares.

use super::apps::WebhookSecrets;
use crate::graph::{AccessToken, Account};

pub const DEFAULT_GRAPH_URL: &str = "https://graph.instagram.com/v25.0";

/// Every variable the gateway reads; none set at all means "use the sandbox".
pub const VARIABLES: [&str; 5] = [
    "INSTAGRAM_API_URL",
    "INSTAGRAM_GRAPH_API_URL",
    "INSTAGRAM_ACCOUNT_ID",
    "INSTAGRAM_USER_ID",
    "INSTAGRAM_ACCESS_TOKEN",
];

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

pub(super) const CREDENTIALS_IN_URL: &str =
    "must not carry a user name or password: the token goes in INSTAGRAM_ACCESS_TOKEN";

/// The Graph base URL: https, or http only to this machine (tests, the
/// sandbox) unless `allow_insecure`: the token must not cross a network in
/// clear text.
pub(super) fn check_graph_url(value: &str, allow_insecure: bool) -> Result<(), String> {
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
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Variables as `var` reads them.
    pub(in crate::accounts) fn env(
        pairs: &[(&str, &str)],
    ) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
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
