//! The Instagram Graph API send endpoint: one small client around one HTTP
//! call, and the JSON bodies it posts.
//!
//! The client knows nothing of retries or gRPC; it makes one attempt and
//! says exactly how it ended (see [`Failure`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::model::error::{Failure, GraphError};
mod encode;
mod token;

pub use encode::{encode_action, encode_message};
pub use token::{Me, Refreshed, is_refreshable};

/// The access token. Never printed: `Debug` shows a placeholder and there is
/// no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    /// Kept out of `Display` on purpose: use only to build the header.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// One Instagram professional account the gateway sends as: a value handed
/// to the client per call, so several accounts can share one client.
#[derive(Clone, Debug)]
pub struct Account {
    /// Where Graph lives, without a trailing slash (`https://graph.instagram.com/v25.0`).
    pub base_url: String,
    /// The account's Instagram user id, or `me`.
    pub account_id: String,
    /// Parsed once: reqwest would otherwise parse (and IDNA-check) it per call.
    messages_url: reqwest::Url,
    authorization: HeaderValue,
    token: AccessToken,
}

impl Account {
    /// Fails if the pieces do not form a URL or the token cannot be a header.
    pub fn new(base_url: &str, account_id: &str, token: &AccessToken) -> Result<Self, String> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let messages_url = reqwest::Url::parse(&format!("{base_url}/{account_id}/messages"))
            .map_err(|e| format!("the base URL and account id do not form a URL: {e}"))?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| "INSTAGRAM_ACCESS_TOKEN contains characters not allowed in a header")?;
        // Keeps the token out of hyper's and reqwest's debug output.
        authorization.set_sensitive(true);
        Ok(Self {
            base_url,
            account_id: account_id.to_owned(),
            messages_url,
            authorization,
            token: token.clone(),
        })
    }

    /// The same account with another token (a refreshed one).
    pub fn with_token(&self, token: &AccessToken) -> Result<Self, String> {
        Self::new(&self.base_url, &self.account_id, token)
    }

    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// Whether `other` sends to the same place with the same token.
    pub fn same_as(&self, other: &Account) -> bool {
        self.messages_url == other.messages_url
            && self.authorization.as_bytes() == other.authorization.as_bytes()
    }

    pub fn messages_url(&self) -> &str {
        self.messages_url.as_str()
    }
}

/// What Graph answered to a successful call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GraphReply {
    pub recipient_id: String,
    pub message_id: Option<String>,
    /// The highest quota use Graph's usage headers reported (1.0 = 100 %).
    #[serde(skip)]
    pub usage: Option<f64>,
}

/// How one attempt failed, with any hint Graph gave about when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptError {
    pub failure: Failure,
    pub retry_after: Option<Duration>,
    /// As [`GraphReply::usage`], when Graph answered at all.
    pub usage: Option<f64>,
}

impl From<Failure> for AttemptError {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            retry_after: None,
            usage: None,
        }
    }
}

/// Graph answers are small; anything bigger is not Graph and is not read whole.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The Graph API's send endpoint over one shared HTTP connection pool.
#[derive(Clone, Debug)]
pub struct GraphClient {
    http: reqwest::Client,
}

impl GraphClient {
    /// One connection pool for the process; `connect_timeout` bounds the part
    /// of an attempt during which nothing has been sent yet.
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with(Self::settings(connect_timeout))
    }

    fn settings(connect_timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect would carry the token to wherever it points, and so
            // would a proxy taken from the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("messenger-gateway/", env!("CARGO_PKG_VERSION")))
    }

    fn with(settings: reqwest::ClientBuilder) -> Self {
        let http = settings
            .build()
            .expect("the HTTP client's fixed settings are valid");
        Self { http }
    }

    /// Posts one pre-encoded body to `{base}/{account}/messages`.
    pub async fn post_messages(
        &self,
        account: &Account,
        body: Bytes,
        timeout: Duration,
    ) -> Result<GraphReply, AttemptError> {
        let written = Arc::new(AtomicBool::new(false));
        let len = body.len() as u64;
        let body = WatchedBody {
            data: Some(body),
            len,
            polled: written.clone(),
        };
        let attempt = async {
            let mut response = self
                .http
                .post(account.messages_url.clone())
                .header(AUTHORIZATION, account.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap(body))
                .send()
                .await
                .map_err(transport_failure)?;
            let status = response.status().as_u16();
            let retry_after = retry_hint(response.headers());
            let usage = usage_ratio(response.headers());
            let mut raw = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
                if raw.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Failure::UnexpectedResponse {
                        http_status: status,
                        detail: format!("a body over {MAX_RESPONSE_BYTES} bytes"),
                    }
                    .into());
                }
                raw.extend_from_slice(&chunk);
            }
            interpret(status, &raw)
                .map(|reply| GraphReply { usage, ..reply })
                .map_err(|failure| AttemptError {
                    failure,
                    retry_after,
                    usage,
                })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            // Still connecting (or waiting for a connection): the body was
            // never asked for, so nothing Graph could act on was sent.
            Err(_) if !written.load(Ordering::SeqCst) => Err(Failure::NotSent {
                detail: format!(
                    "no connection to Graph was ready within {} ms",
                    timeout.as_millis()
                ),
            }
            .into()),
            Err(_) => Err(Failure::NoAnswerBeforeDeadline {
                detail: format!("waited {} ms", timeout.as_millis()),
            }
            .into()),
        }
    }
}

/// The request body, which marks when hyper first asks for it. Until then
/// not a byte of it has been written (at most the headers, which Graph
/// cannot act on without the body), so a timeout is "not sent".
struct WatchedBody {
    data: Option<Bytes>,
    len: u64,
    polled: Arc<AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.polled.store(true, Ordering::SeqCst);
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

fn transport_failure(e: reqwest::Error) -> AttemptError {
    let detail = error_chain(&e);
    let failure = if e.is_connect() {
        Failure::Connect { detail }
    } else if e.is_timeout() {
        Failure::NoAnswerBeforeDeadline { detail }
    } else {
        Failure::ConnectionLost { detail }
    };
    failure.into()
}

/// The causes, without reqwest's own message (which repeats the URL).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        parts.push(cause.to_string());
        next = cause.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: GraphError,
}

/// The fields of both Graph answers, so the usual ones take one parse.
#[derive(Deserialize)]
struct Answer {
    error: Option<GraphError>,
    recipient_id: Option<String>,
    message_id: Option<String>,
}

/// Reads Graph's answer by its body, never by the status alone.
fn interpret(http_status: u16, raw: &[u8]) -> Result<GraphReply, Failure> {
    match serde_json::from_slice::<Answer>(raw) {
        Ok(Answer {
            error: Some(error), ..
        }) => return Err(Failure::Graph { http_status, error }),
        Ok(Answer {
            recipient_id: Some(recipient_id),
            message_id,
            ..
        }) if (200..300).contains(&http_status) => {
            return Ok(GraphReply {
                recipient_id,
                message_id,
                usage: None,
            });
        }
        // Anything odder is told apart below.
        _ => {}
    }
    if let Ok(ErrorEnvelope { error }) = serde_json::from_slice(raw) {
        return Err(Failure::Graph { http_status, error });
    }
    if (200..300).contains(&http_status) {
        return serde_json::from_slice::<GraphReply>(raw).map_err(|_| {
            Failure::UnexpectedResponse {
                http_status,
                detail: "a body without recipient_id (the message may have been sent)".into(),
            }
        });
    }
    let detail = if serde_json::from_slice::<serde_json::Value>(raw).is_ok() {
        "JSON that is not a Graph error"
    } else if raw.is_empty() {
        "an empty body"
    } else {
        "a body that is not JSON"
    };
    Err(Failure::UnexpectedResponse {
        http_status,
        detail: detail.into(),
    })
}

/// The longest wait a Graph hint may ask for: beyond, a number is more
/// likely garbage than advice.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(60 * 60);

/// `Retry-After` (seconds), or the longest `estimated_time_to_regain_access`
/// (minutes) in `X-Business-Use-Case-Usage`; at most [`MAX_RETRY_HINT`].
fn retry_hint(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_hint_unclamped(headers).map(|d| d.min(MAX_RETRY_HINT))
}

fn retry_hint_unclamped(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(secs) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_secs(secs));
    }
    let usage: serde_json::Value = headers
        .get(&X_BUSINESS_USE_CASE_USAGE)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())?;
    let minutes = usage
        .as_object()?
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .filter_map(|u| u.get("estimated_time_to_regain_access")?.as_u64())
        .max()?;
    (minutes > 0).then(|| Duration::from_secs(minutes.saturating_mul(60)))
}

// Named once: a name given as `&str` is parsed at every lookup.
static X_APP_USAGE: HeaderName = HeaderName::from_static("x-app-usage");
static X_BUSINESS_USE_CASE_USAGE: HeaderName = HeaderName::from_static("x-business-use-case-usage");

/// The highest share of any quota in use, from `X-App-Usage` and
/// `X-Business-Use-Case-Usage` (percentages: `call_count`, `total_cputime`,
/// `total_time`), as a ratio (1.0 = 100 %).
fn usage_ratio(headers: &reqwest::header::HeaderMap) -> Option<f64> {
    const FIELDS: [&str; 3] = ["call_count", "total_cputime", "total_time"];
    let parse = |name: &HeaderName| -> Option<serde_json::Value> {
        serde_json::from_str(headers.get(name)?.to_str().ok()?).ok()
    };
    let mut quotas: Vec<serde_json::Value> = Vec::new();
    if let Some(app) = parse(&X_APP_USAGE) {
        quotas.push(app);
    }
    if let Some(serde_json::Value::Object(by_business)) = parse(&X_BUSINESS_USE_CASE_USAGE) {
        for list in by_business.into_values() {
            if let serde_json::Value::Array(items) = list {
                quotas.extend(items);
            }
        }
    }
    quotas
        .iter()
        .flat_map(|q| FIELDS.iter().filter_map(move |f| q.get(*f)?.as_f64()))
        .filter(|p| p.is_finite() && *p >= 0.0)
        .map(|p| p.min(1000.0) / 100.0)
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::*;
    use serde_json::{Value, json};

    fn user() -> Recipient {
        Recipient::User(Igsid::parse("17841400000000000").unwrap())
    }

    fn message(content: Content) -> OutgoingMessage {
        OutgoingMessage {
            recipient: user(),
            content,
            reply_to: None,
            human_agent: false,
        }
    }

    fn json_of(body: Bytes) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    fn text(s: &str) -> Content {
        Content::Text {
            text: Text::parse(s).unwrap(),
            quick_replies: vec![],
        }
    }

    #[test]
    fn text_encodes_to_the_starter_kit_body() {
        assert_eq!(
            json_of(encode_message(&message(text("Hello from my app")))),
            json!({"recipient":{"id":"17841400000000000"},"message":{"text":"Hello from my app"}})
        );
    }

    #[test]
    fn quick_replies_encode_with_messaging_type_response() {
        let content = Content::Text {
            text: Text::parse("Pick one").unwrap(),
            quick_replies: vec![QuickReply {
                title: Label::parse("Red", 20).unwrap(),
                payload: Payload::parse("RED").unwrap(),
            }],
        };
        assert_eq!(
            json_of(encode_message(&message(content))),
            json!({"recipient":{"id":"17841400000000000"},"messaging_type":"RESPONSE",
                   "message":{"text":"Pick one","quick_replies":[
                       {"content_type":"text","title":"Red","payload":"RED"}]}})
        );
    }

    #[test]
    fn one_attachment_encodes_as_attachment_and_several_as_attachments() {
        let image = |u: &str| Attachment {
            kind: AttachmentKind::Image,
            source: MediaSource::Url(HttpUrl::parse(u).unwrap()),
        };
        assert_eq!(
            json_of(encode_message(&message(Content::Attachments(vec![image(
                "https://x.test/a.png"
            )])))),
            json!({"recipient":{"id":"17841400000000000"},
                   "message":{"attachment":{"type":"image","payload":{"url":"https://x.test/a.png"}}}})
        );
        assert_eq!(
            json_of(encode_message(&message(Content::Attachments(vec![
                image("https://x.test/a.png"),
                image("https://x.test/b.png")
            ])))),
            json!({"recipient":{"id":"17841400000000000"},
                   "message":{"attachments":[
                       {"type":"image","payload":{"url":"https://x.test/a.png"}},
                       {"type":"image","payload":{"url":"https://x.test/b.png"}}]}})
        );
    }

    #[test]
    fn attachments_by_id_and_of_every_kind_encode() {
        for (kind, name) in [
            (AttachmentKind::Video, "video"),
            (AttachmentKind::Audio, "audio"),
            (AttachmentKind::File, "file"),
            (AttachmentKind::Image, "image"),
        ] {
            let content = Content::Attachments(vec![Attachment {
                kind,
                source: MediaSource::Id(GraphId::parse("998877").unwrap()),
            }]);
            assert_eq!(
                json_of(encode_message(&message(content))),
                json!({"recipient":{"id":"17841400000000000"},
                       "message":{"attachment":{"type":name,"payload":{"attachment_id":"998877"}}}})
            );
        }
    }

    #[test]
    fn sticker_and_post_share_encode() {
        assert_eq!(
            json_of(encode_message(&message(Content::LikeHeartSticker))),
            json!({"recipient":{"id":"17841400000000000"},"message":{"attachment":{"type":"like_heart"}}})
        );
        assert_eq!(
            json_of(encode_message(&message(Content::MediaShare {
                post_id: GraphId::parse("18000000000000001").unwrap()
            }))),
            json!({"recipient":{"id":"17841400000000000"},
                   "message":{"attachment":{"type":"MEDIA_SHARE","payload":{"id":"18000000000000001"}}}})
        );
    }

    #[test]
    fn generic_template_encodes_elements_and_buttons() {
        let element = TemplateElement {
            title: Label::parse("Shoes", 80).unwrap(),
            subtitle: Some(Label::parse("New in", 80).unwrap()),
            image_url: Some(HttpUrl::parse("https://x.test/s.png").unwrap()),
            default_action_url: Some(HttpUrl::parse("https://x.test/s").unwrap()),
            buttons: vec![
                Button::WebUrl {
                    title: Label::parse("Shop", 80).unwrap(),
                    url: HttpUrl::parse("https://x.test/shop").unwrap(),
                },
                Button::Postback {
                    title: Label::parse("More", 80).unwrap(),
                    payload: Payload::parse("MORE").unwrap(),
                },
            ],
        };
        assert_eq!(
            json_of(encode_message(&message(Content::GenericTemplate(vec![
                element
            ])))),
            json!({"recipient":{"id":"17841400000000000"},
                   "message":{"attachment":{"type":"template","payload":{
                       "template_type":"generic",
                       "elements":[{"title":"Shoes","subtitle":"New in",
                           "image_url":"https://x.test/s.png",
                           "default_action":{"type":"web_url","url":"https://x.test/s"},
                           "buttons":[
                               {"type":"web_url","title":"Shop","url":"https://x.test/shop"},
                               {"type":"postback","title":"More","payload":"MORE"}]}]}}}})
        );
    }

    #[test]
    fn reply_to_human_agent_and_private_replies_encode() {
        let mut m = message(text("hi"));
        m.reply_to = Some(GraphId::parse("aWdfbWlk").unwrap());
        m.human_agent = true;
        assert_eq!(
            json_of(encode_message(&m)),
            json!({"recipient":{"id":"17841400000000000"},
                   "messaging_type":"MESSAGE_TAG","tag":"HUMAN_AGENT",
                   "message":{"text":"hi"},"reply_to":{"mid":"aWdfbWlk"}})
        );
        let mut m = message(text("thanks for your comment"));
        m.recipient = Recipient::Comment(CommentId::parse("17900000000000001").unwrap());
        assert_eq!(
            json_of(encode_message(&m)),
            json!({"recipient":{"comment_id":"17900000000000001"},
                   "message":{"text":"thanks for your comment"}})
        );
    }

    #[test]
    fn sender_actions_encode() {
        let action = |action| OutgoingAction {
            recipient: Igsid::parse("17841400000000000").unwrap(),
            action,
        };
        let mid = || GraphId::parse("aWdfbWlk").unwrap();
        let r = json!({"id":"17841400000000000"});
        assert_eq!(
            json_of(encode_action(&action(SenderAction::TypingOn))),
            json!({"recipient":r,"sender_action":"typing_on"})
        );
        assert_eq!(
            json_of(encode_action(&action(SenderAction::TypingOff))),
            json!({"recipient":r,"sender_action":"typing_off"})
        );
        assert_eq!(
            json_of(encode_action(&action(SenderAction::MarkSeen))),
            json!({"recipient":r,"sender_action":"mark_seen"})
        );
        assert_eq!(
            json_of(encode_action(&action(SenderAction::React {
                message_id: mid(),
                reaction: "love".into()
            }))),
            json!({"recipient":r,"sender_action":"react","payload":{"message_id":"aWdfbWlk","reaction":"love"}})
        );
        assert_eq!(
            json_of(encode_action(&action(SenderAction::Unreact {
                message_id: mid()
            }))),
            json!({"recipient":r,"sender_action":"unreact","payload":{"message_id":"aWdfbWlk"}})
        );
    }

    #[test]
    fn error_bodies_are_read_whatever_the_status() {
        let body = br#"{"error":{"message":"(#10) outside window","type":"OAuthException","code":10,"error_subcode":2534022,"fbtrace_id":"AbC"}}"#;
        for status in [400, 403, 200] {
            match interpret(status, body) {
                Err(Failure::Graph { http_status, error }) => {
                    assert_eq!(http_status, status);
                    assert_eq!(error.code, Some(10));
                    assert_eq!(error.subcode, Some(2534022));
                    assert_eq!(error.fbtrace_id.as_deref(), Some("AbC"));
                    assert_eq!(error.kind.as_deref(), Some("OAuthException"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn non_graph_bodies_are_unexpected_responses() {
        assert!(matches!(
            interpret(502, b"<html>bad gateway</html>"),
            Err(Failure::UnexpectedResponse {
                http_status: 502,
                ..
            })
        ));
        assert!(matches!(
            interpret(200, b"{}"),
            Err(Failure::UnexpectedResponse {
                http_status: 200,
                ..
            })
        ));
        assert_eq!(
            interpret(200, br#"{"recipient_id":"1","message_id":"m"}"#).unwrap(),
            GraphReply {
                recipient_id: "1".into(),
                message_id: Some("m".into()),
                usage: None,
            }
        );
    }

    #[test]
    fn usage_is_the_highest_share_of_any_quota() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(usage_ratio(&headers), None);
        headers.insert(
            "x-app-usage",
            r#"{"call_count":12,"total_cputime":3,"total_time":5}"#
                .parse()
                .unwrap(),
        );
        assert_eq!(usage_ratio(&headers), Some(0.12));
        headers.insert(
            "x-business-use-case-usage",
            r#"{"178414":[{"type":"instagram","call_count":91,"total_cputime":10,"total_time":20,"estimated_time_to_regain_access":0}]}"#
                .parse()
                .unwrap(),
        );
        assert_eq!(usage_ratio(&headers), Some(0.91));
        headers.insert("x-app-usage", "not json".parse().unwrap());
        assert_eq!(usage_ratio(&headers), Some(0.91));
    }

    #[test]
    fn retry_hints_come_from_retry_after_or_business_usage() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        h.insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(
                r#"{"178414":[{"type":"instagram","call_count":100,"estimated_time_to_regain_access":5}]}"#,
            ),
        );
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(300)));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_hints_are_clamped_to_an_hour_without_overflow() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(retry_hint(&h), Some(MAX_RETRY_HINT));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(
                r#"{"1":[{"estimated_time_to_regain_access":18446744073709551615}]}"#,
            ),
        );
        assert_eq!(retry_hint(&h), Some(MAX_RETRY_HINT));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let token = AccessToken::new("IGQVJ-secret-token");
        let account = Account::new("http://127.0.0.1:1/v25.0/", "me", &token).unwrap();
        assert_eq!(
            account.messages_url(),
            "http://127.0.0.1:1/v25.0/me/messages"
        );
        assert!(!format!("{token:?}{account:?}").contains("secret"));
    }

    /// A connector that takes its time, as a far or overloaded host does.
    #[derive(Clone)]
    struct SlowConnect<S>(S);

    impl<S, R> tower::Service<R> for SlowConnect<S>
    where
        S: tower::Service<R> + Clone + Send + 'static,
        S::Future: Send,
        R: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, request: R) -> Self::Future {
            let call = self.0.call(request);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                call.await
            })
        }
    }

    #[tokio::test]
    async fn a_timeout_while_connecting_is_not_sent_and_one_after_is_unknown() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(r#"{"recipient_id":"1","message_id":"m"}"#)
                    .set_delay(Duration::from_millis(600)),
            )
            .mount(&server)
            .await;
        let account = Account::new(&server.uri(), "1", &AccessToken::new("t")).unwrap();
        let slow = GraphClient::with(
            GraphClient::settings(Duration::from_secs(5))
                .connector_layer(tower::layer::layer_fn(SlowConnect)),
        );
        let connecting = slow
            .post_messages(
                &account,
                Bytes::from_static(b"{}"),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(connecting.failure, Failure::NotSent { .. }),
            "{connecting:?}"
        );
        assert_eq!(server.received_requests().await.unwrap().len(), 0);

        let fast = GraphClient::new(Duration::from_secs(5));
        let answered_late = fast
            .post_messages(
                &account,
                Bytes::from_static(b"{}"),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                answered_late.failure,
                Failure::NoAnswerBeforeDeadline { .. }
            ),
            "{answered_late:?}"
        );
    }
}
