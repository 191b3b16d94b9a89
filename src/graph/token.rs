//! The token endpoints: which account a token is (`/me`), and refreshing an
//! Instagram-Login token before its 60 days run out.

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use super::{Account, AttemptError, ErrorEnvelope, GraphClient, MAX_RESPONSE_BYTES, error_chain};
use crate::model::error::Failure;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Me {
    /// The Instagram professional account's id: what webhooks call `entry.id`.
    #[serde(deserialize_with = "id_string")]
    pub user_id: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// A refreshed token, and how long it lasts.
#[derive(Clone, Deserialize)]
pub struct Refreshed {
    pub access_token: String,
    /// Seconds from now.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshed")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Graph gives ids as strings, but a number is read the same.
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "an id must be a string or a number",
        )),
    }
}

/// Instagram-Login tokens expire after 60 days and can be refreshed;
/// Facebook-Login page tokens (graph.facebook.com) never expire.
pub fn is_refreshable(account: &Account) -> bool {
    reqwest::Url::parse(&account.base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|host| host != "facebook.com" && !host.ends_with(".facebook.com"))
}

/// The Instagram account node, as a Page token reads it.
#[derive(Deserialize)]
struct Node {
    #[serde(deserialize_with = "id_string")]
    id: String,
    #[serde(default)]
    username: Option<String>,
}

impl GraphClient {
    /// Who the account's token acts as. An Instagram-Login token answers
    /// `/me`; a Facebook-Login Page token is a Page, not the Instagram
    /// account, so it is checked by reading the account's own node.
    pub async fn whose_token(
        &self,
        account: &Account,
        timeout: Duration,
    ) -> Result<Me, AttemptError> {
        if is_refreshable(account) {
            return self.me(account, timeout).await;
        }
        let url = format!(
            "{}/{}?fields=id,username",
            account.base_url, account.account_id
        );
        let request = self
            .http
            .get(url)
            .header(AUTHORIZATION, account.authorization.clone());
        let node: Node = self.get_json(request, timeout).await?;
        Ok(Me {
            user_id: node.id,
            username: node.username,
        })
    }

    /// `GET {base}/me?fields=user_id,username` with the account's token.
    pub async fn me(&self, account: &Account, timeout: Duration) -> Result<Me, AttemptError> {
        let url = format!("{}/me?fields=user_id,username", account.base_url);
        let request = self
            .http
            .get(url)
            .header(AUTHORIZATION, account.authorization.clone());
        self.get_json(request, timeout).await
    }

    /// `GET {host}/refresh_access_token?grant_type=ig_refresh_token&access_token=…`:
    /// the host of the account's Graph URL, without the version.
    pub async fn refresh(
        &self,
        account: &Account,
        timeout: Duration,
    ) -> Result<Refreshed, AttemptError> {
        let mut url = reqwest::Url::parse(&account.base_url).map_err(|e| {
            AttemptError::from(Failure::NotSent {
                detail: format!("the Graph URL does not parse: {e}"),
            })
        })?;
        url.set_path("/refresh_access_token");
        // Graph takes this token in the query only; the URL is never logged.
        url.query_pairs_mut()
            .clear()
            .append_pair("grant_type", "ig_refresh_token")
            .append_pair("access_token", account.token().expose_secret());
        self.get_json(self.http.get(url), timeout).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, AttemptError> {
        // Errors lose their URL: for a refresh it carries the token.
        let failed = |e: reqwest::Error| {
            let e = e.without_url();
            let detail = error_chain(&e);
            AttemptError::from(if e.is_connect() {
                Failure::Connect { detail }
            } else {
                Failure::ConnectionLost { detail }
            })
        };
        let attempt = async {
            let mut response = request.send().await.map_err(failed)?;
            let http_status = response.status().as_u16();
            let mut raw = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(failed)? {
                if raw.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(AttemptError::from(Failure::UnexpectedResponse {
                        http_status,
                        detail: format!("a body over {MAX_RESPONSE_BYTES} bytes"),
                    }));
                }
                raw.extend_from_slice(&chunk);
            }
            if let Ok(ErrorEnvelope { error }) = serde_json::from_slice(&raw) {
                return Err(Failure::Graph { http_status, error }.into());
            }
            serde_json::from_slice::<T>(&raw).map_err(|_| {
                AttemptError::from(Failure::UnexpectedResponse {
                    http_status,
                    detail: "a body that is not the expected JSON".into(),
                })
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::NoAnswerBeforeDeadline {
                detail: format!("waited {} ms", timeout.as_millis()),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::AccessToken;

    #[test]
    fn only_instagram_login_tokens_are_refreshed() {
        let at = |base: &str| Account::new(base, "1", &AccessToken::new("t")).unwrap();
        assert!(is_refreshable(&at("https://graph.instagram.com/v25.0")));
        assert!(is_refreshable(&at("http://127.0.0.1:9/v25.0")));
        assert!(!is_refreshable(&at("https://graph.facebook.com/v25.0")));
        assert!(!is_refreshable(&at("https://GRAPH.FACEBOOK.COM/v25.0")));
    }

    #[test]
    fn a_refreshed_token_never_prints() {
        let r: Refreshed =
            serde_json::from_str(r#"{"access_token":"IGAAsecret","expires_in":5184000}"#).unwrap();
        assert!(!format!("{r:?}").contains("IGAAsecret"));
        let me: Me =
            serde_json::from_str(r#"{"user_id":17841400000000001,"username":"shop"}"#).unwrap();
        assert_eq!(me.user_id, "17841400000000001");
    }
}
