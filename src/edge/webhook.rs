//! Instagram's webhooks over HTTP: the subscription handshake, and signed
//! deliveries stored durably before they are acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::accounts::Registry;
use crate::accounts::apps::WebhookSecrets;
use crate::conversation::inbox::Inbox;
use crate::conversation::payload::{PayloadError, parse_delivery};
use crate::metrics::Metrics;
use crate::refusals;
use crate::store::StoreError;

pub const PATH: &str = "/webhook";
/// Meta sends at most 1000 updates per delivery; anything bigger is not Meta.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Meta wants an answer within 5 s. If the store is slower than this, answer
/// 503 so Meta redelivers (duplicates are dropped).
const STORE_DEADLINE: Duration = Duration::from_secs(4);

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// `sha256=<hex>` of the HMAC-SHA256 of `body`: what Meta puts in
/// `X-Hub-Signature-256`.
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(app_secret, body).finalize().into_bytes())
    )
}

/// HMAC-SHA256 of `body` keyed with the app secret, as Meta computes it.
fn mac(app_secret: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// The 32 bytes of a well-formed `sha256=<64 hex>` header.
fn parse_signature(header: Option<&str>) -> Option<Vec<u8>> {
    let given = hex::decode(header?.strip_prefix("sha256=")?.trim()).ok()?;
    (given.len() == 32).then_some(given)
}

/// Checks a parsed signature over the raw bytes, in constant time.
fn signed_by(app_secret: &str, given: &[u8], body: &[u8]) -> bool {
    mac(app_secret, body).verify_slice(given).is_ok()
}

/// Parses and checks a `X-Hub-Signature-256` header.
#[cfg(test)]
fn verify(app_secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    parse_signature(header).is_some_and(|given| signed_by(app_secret, &given, body))
}

/// Why a delivery was not accepted; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("missing or invalid X-Hub-Signature-256")]
    BadSignature,
    #[error("the body is over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the body did not arrive in time")]
    BodyTimeout,
    #[error("the body could not be read")]
    BodyBroken,
    #[error("{0}")]
    BadPayload(#[from] PayloadError),
    #[error("not stored: {0}")]
    Store(#[from] StoreError),
    #[error("not stored in time; deliver again")]
    StoreTooSlow,
}

impl WebhookError {
    /// The `result` label of the deliveries metric.
    fn label(&self) -> &'static str {
        match self {
            WebhookError::BadSignature => "bad_signature",
            WebhookError::TooLarge => "too_large",
            WebhookError::BodyTimeout => "body_timeout",
            WebhookError::BodyBroken => "body_broken",
            WebhookError::BadPayload(_) => "bad_payload",
            WebhookError::Store(_) => "store_failed",
            WebhookError::StoreTooSlow => "store_too_slow",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = match self {
            WebhookError::BadSignature => StatusCode::UNAUTHORIZED,
            WebhookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            WebhookError::BadPayload(_) | WebhookError::BodyBroken => StatusCode::BAD_REQUEST,
            WebhookError::Store(_) | WebhookError::StoreTooSlow => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(status = status.as_u16(), error = %self, "webhook delivery not stored");
        } else {
            // Anyone can send junk: log it at a bounded rate.
            refusals::log(
                || tracing::warn!(status = status.as_u16(), error = %self, "webhook delivery refused"),
            );
        }
        (status, self.to_string()).into_response()
    }
}

struct Hook {
    inbox: Arc<Inbox>,
    accounts: Arc<Registry>,
    /// Account ids seen in deliveries but not configured, each logged once
    /// (shared by every app's path).
    strangers: Arc<Strangers>,
    /// The app this path is for; `None`: `/webhook`.
    app: Option<String>,
    metrics: Arc<Metrics>,
    secrets: WebhookSecrets,
    /// A body must arrive within this; a sender that trickles is cut off.
    body_read_timeout: Duration,
}

/// One route per Meta app: `/webhook` for the `INSTAGRAM_APP_SECRET` pair
/// (`None`), `/webhook/{name}` for each named app. A delivery is checked
/// against the secret of the path it arrives at.
pub fn router(
    inbox: Arc<Inbox>,
    accounts: Arc<Registry>,
    routes: Vec<(Option<String>, WebhookSecrets)>,
    body_read_timeout: Duration,
    metrics: Arc<Metrics>,
) -> Router {
    let strangers = Arc::new(Strangers::default());
    routes
        .into_iter()
        .fold(Router::new(), |router, (app, secrets)| {
            let path = match &app {
                None => PATH.to_owned(),
                Some(name) => format!("{PATH}/{name}"),
            };
            router.route(
                &path,
                get(handshake).post(deliver).with_state(Arc::new(Hook {
                    metrics: metrics.clone(),
                    inbox: inbox.clone(),
                    accounts: accounts.clone(),
                    strangers: strangers.clone(),
                    app,
                    secrets,
                    body_read_timeout,
                })),
            )
        })
}

async fn handshake(
    State(hook): State<Arc<Hook>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let token = query.get("hub.verify_token").map(String::as_bytes);
    let subscribe = query.get("hub.mode").map(String::as_str) == Some("subscribe");
    let token_ok = token.is_some_and(|t| bool::from(t.ct_eq(hook.secrets.verify_token.as_bytes())));
    match query.get("hub.challenge") {
        Some(challenge) if subscribe && token_ok => {
            (StatusCode::OK, challenge.clone()).into_response()
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

/// Everything that can be checked before the body is read is checked
/// first: the signature header's shape and the declared length. Then the
/// body must arrive in time and within the limit.
async fn deliver(
    State(hook): State<Arc<Hook>>,
    request: Request<Body>,
) -> Result<&'static str, WebhookError> {
    let result = take_delivery(&hook, request).await;
    hook.metrics.webhook_delivery(match &result {
        Ok(_) => "stored",
        Err(e) => e.label(),
    });
    result
}

async fn take_delivery(hook: &Hook, request: Request<Body>) -> Result<&'static str, WebhookError> {
    let headers = request.headers();
    let signature = parse_signature(headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()))
        .ok_or(WebhookError::BadSignature)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(WebhookError::TooLarge);
    }
    let read = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(hook.body_read_timeout, read).await {
        Err(_) => return Err(WebhookError::BodyTimeout),
        Ok(Err(e)) if is_length_limit(&e) => return Err(WebhookError::TooLarge),
        Ok(Err(_)) => return Err(WebhookError::BodyBroken),
        Ok(Ok(body)) => body,
    };
    if !signed_by(&hook.secrets.app_secret, &signature, &body) {
        return Err(WebhookError::BadSignature);
    }
    let delivery = parse_delivery(&body)?;
    if delivery.object != "instagram" && hook.strangers.first_object(&delivery.object) {
        tracing::warn!(
            object = %refusals::shown(&delivery.object),
            "a webhook delivery for another object: its entries are stored and streamed whole"
        );
    }
    for rejected in &delivery.rejected {
        hook.metrics.webhook_item_rejected(rejected.reason);
        refusals::log(|| {
            tracing::warn!(
                account = %refusals::shown(&rejected.account_id),
                reason = rejected.reason,
                "a webhook item refused for its shape; the rest of the delivery is stored"
            )
        });
    }
    let mut events = delivery.events;
    // An account tied to one app takes events only from that app's path:
    // another app's secret cannot write into its conversations.
    events.retain(|event| {
        let accepted = hook
            .accounts
            .accepts_from(&event.account_id, hook.app.as_deref());
        if !accepted {
            crate::refusals::note("a webhook entry for an account tied to another app");
        }
        accepted
    });
    let count = events.len();
    // Still stored and streamed (nothing is lost): an account may be added
    // to the file after Meta starts sending for it.
    for event in &events {
        if !hook.accounts.knows(&event.account_id)
            && hook.strangers.first_sighting(&event.account_id)
        {
            tracing::warn!(account = %event.account_id, "a webhook delivery names an account that is not configured: its events are stored and streamed, but the gateway cannot reply as it");
        }
    }
    let ingested = tokio::time::timeout(STORE_DEADLINE, hook.inbox.ingest(events))
        .await
        .map_err(|_| WebhookError::StoreTooSlow)??;
    if ingested.resolved > 0 {
        hook.metrics.unknown_sends("sent", ingested.resolved);
    }
    tracing::debug!(
        events = count,
        new = ingested.new_events,
        duplicates = ingested.duplicates,
        joined = ingested.joined,
        resolved = ingested.resolved,
        head = ingested.head,
        "webhook delivery stored"
    );
    Ok("EVENT_RECEIVED")
}

/// Ids (and objects) already logged as not configured; bounded in count
/// and in bytes, so a flood of made-up ids (which would need the app
/// secret) costs a fixed amount of memory.
#[derive(Default)]
struct Strangers(std::sync::Mutex<Seen>);

#[derive(Default)]
struct Seen {
    names: std::collections::HashSet<String>,
    bytes: usize,
}

impl Strangers {
    const MAX_REMEMBERED: usize = 1024;
    const MAX_BYTES: usize = 64 * 1024;

    fn first_sighting(&self, id: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.names.contains(id)
            || seen.names.len() >= Self::MAX_REMEMBERED
            || seen.bytes + id.len() > Self::MAX_BYTES
        {
            return false;
        }
        seen.bytes += id.len();
        seen.names.insert(id.to_owned())
    }

    fn first_object(&self, object: &str) -> bool {
        self.first_sighting(&format!("object:{object}"))
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfigured_account_is_logged_once_and_the_memory_of_them_is_bounded() {
        let strangers = Strangers::default();
        assert!(strangers.first_sighting("1"));
        assert!(!strangers.first_sighting("1"));
        for i in 2..=Strangers::MAX_REMEMBERED {
            assert!(strangers.first_sighting(&i.to_string()));
        }
        assert!(!strangers.first_sighting("beyond"));
        assert_eq!(
            strangers.0.lock().unwrap().names.len(),
            Strangers::MAX_REMEMBERED
        );
        // Bounded in bytes too: long names fill it sooner.
        let strangers = Strangers::default();
        let long = "1".repeat(Strangers::MAX_BYTES / 2);
        assert!(strangers.first_sighting(&long));
        assert!(!strangers.first_sighting(&format!("2{long}")));
    }

    #[test]
    fn signatures_are_checked_over_the_raw_bytes() {
        let body = br#"{"object":"instagram","entry":[]}"#;
        let good = sign("s3cret", body);
        assert!(good.starts_with("sha256=") && good.len() == 7 + 64);
        assert!(verify("s3cret", Some(&good), body));
        assert!(verify(
            "s3cret",
            Some(&good.to_uppercase().replace("SHA256=", "sha256=")),
            body
        ));
        assert!(!verify("other", Some(&good), body));
        assert!(!verify(
            "s3cret",
            Some(&good),
            br#"{"object":"instagram", "entry":[]}"#
        ));
        assert!(!verify("s3cret", None, body));
        assert!(!verify("s3cret", Some("sha1=abc"), body));
        assert!(!verify("s3cret", Some("sha256=zz"), body));
        assert!(!verify("s3cret", Some(&good[..20]), body));
    }
}
