//! A stand-in for the Instagram Graph API send endpoint, served in-process on a
//! loopback port, so the gateway runs end to end with no credentials.
//!
//! It checks what Graph checks (bearer token, account, JSON shape, text
//! length, the messaging window), answers with Graph-shaped ids and errors,
//! keeps what it received for inspection, and has documented recipient ids
//! that fail on purpose. It plays two accounts, `shop` and `support`, each
//! with its own token, and Graph's token endpoints (`/me`,
//! `/refresh_access_token`). It also plays the Instagram user: `POST
//! /sandbox/inbound` makes it deliver a signed webhook to the gateway, which
//! opens (or, back-dated, fails to open) that person's window with the
//! account written to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::accounts::AccountSpec;
use crate::clock::{Clock, SystemClock};
use crate::graph::{AccessToken, Account};
use crate::model::error::Reason;
use crate::model::message::limits;
use crate::model::window::{HUMAN_AGENT_MS, STANDARD_MS};

mod scenarios;
mod user;

use scenarios::*;
pub use scenarios::{FLAKY_RECIPIENT, SCENARIOS, SLOW_RECIPIENT, Scenario};
use user::inbound;

/// The sandbox's first account (`shop`); `me` works too, with its token.
pub const ACCOUNT_ID: &str = "17841400000000001";
/// The sandbox's second account (`support`).
pub const SUPPORT_ACCOUNT_ID: &str = "17841400000000002";
/// The accounts the sandbox plays: id and alias.
pub const ACCOUNTS: [(&str, &str); 2] = [(ACCOUNT_ID, "shop"), (SUPPORT_ACCOUNT_ID, "support")];
/// How long a refreshed sandbox token lasts, as Graph says of its own.
const TOKEN_LIFETIME_S: u64 = 60 * 24 * 60 * 60;
/// The Graph version in the sandbox's base URL.
pub const VERSION: &str = "v25.0";
/// The IGSID the README's examples send to: always succeeds.
pub const DEMO_RECIPIENT: &str = "17841400000000000";
/// How many received requests the sandbox keeps for inspection.
const KEEP: usize = 1000;

#[derive(Default)]
struct Store {
    received: VecDeque<Value>,
    calls_by_recipient: HashMap<String, u64>,
    /// Each (account, person)'s last message, for the window.
    last_inbound_ms: HashMap<(String, String), i64>,
    /// Every token handed out, and whose it is (a refresh adds one; the
    /// old one keeps working, as on Graph for a while).
    tokens: HashMap<String, String>,
}

/// Where the sandbox delivers the webhooks it makes up, and the app secret
/// it signs them with.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub app_secret: String,
}

struct Sandbox {
    store: Mutex<Store>,
    next_id: AtomicU64,
    webhook: Option<WebhookTarget>,
    http: reqwest::Client,
}

/// A running sandbox, and the accounts that send to it.
pub struct RunningSandbox {
    pub addr: SocketAddr,
    /// `shop`, then `support`, each with its own token.
    pub accounts: Vec<AccountSpec>,
    pub base_url: String,
}

impl RunningSandbox {
    pub fn messages_log_url(&self) -> String {
        format!("http://{}/sandbox/messages", self.addr)
    }

    /// `POST {"sender_id","text","age"}` here to play the Instagram user.
    pub fn inbound_url(&self) -> String {
        format!("http://{}/sandbox/inbound", self.addr)
    }
}

/// Binds `listen` (use a loopback address) and serves until the runtime ends.
/// With `webhook` (the gateway's webhook URL and app secret), it can play the
/// Instagram user.
pub async fn start(
    listen: SocketAddr,
    webhook: Option<(String, String)>,
) -> std::io::Result<RunningSandbox> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}/{VERSION}");
    let mut tokens = HashMap::new();
    let accounts = ACCOUNTS
        .iter()
        .map(|(id, name)| {
            let token = new_token();
            tokens.insert(token.clone(), (*id).to_owned());
            let account = Account::new(&base_url, id, &AccessToken::new(token))
                .expect("a generated token is a valid header");
            AccountSpec::new(account).named(*name)
        })
        .collect();
    let webhook = webhook.map(|(url, app_secret)| WebhookTarget { url, app_secret });
    let app = router(tokens, webhook);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the sandbox stopped");
        }
    });
    Ok(RunningSandbox {
        addr,
        accounts,
        base_url,
    })
}

fn new_token() -> String {
    format!("sandbox-{:032x}", rand::random::<u128>())
}

fn router(tokens: HashMap<String, String>, webhook: Option<WebhookTarget>) -> Router {
    // The demo ids have written to every account just now, so the README's
    // first sends work; anyone else must write first (POST /sandbox/inbound),
    // as on Instagram.
    let now = now_ms();
    let store = Store {
        last_inbound_ms: [DEMO_RECIPIENT, FLAKY_RECIPIENT, SLOW_RECIPIENT]
            .into_iter()
            .flat_map(|id| ACCOUNTS.map(|(account, _)| ((account.to_owned(), id.to_owned()), now)))
            .collect(),
        tokens,
        ..Store::default()
    };
    let state = Arc::new(Sandbox {
        store: Mutex::new(store),
        next_id: AtomicU64::new(1),
        webhook,
        http: reqwest::Client::new(),
    });
    Router::new()
        .route("/{version}/{account}/messages", post(send))
        .route("/{version}/me", get(me))
        .route("/refresh_access_token", get(refresh_access_token))
        .route("/sandbox/messages", get(list).delete(clear))
        .route("/sandbox/recipients", get(recipients))
        .route("/sandbox/inbound", post(inbound))
        .with_state(state)
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

async fn send(
    State(sandbox): State<Arc<Sandbox>>,
    Path((version, account)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(owner) = sandbox.owner_of(&headers).await else {
        return invalid_token();
    };
    let account = if account == "me" {
        owner.clone()
    } else {
        account
    };
    if version != VERSION || account != owner {
        return invalid_parameter(&format!(
            "Unsupported post request. Object with ID '{account}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        ));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return invalid_parameter("(#100) The request body is not valid JSON");
    };
    let recipient = &body["recipient"];
    let (recipient_id, is_comment) =
        match (recipient["id"].as_str(), recipient["comment_id"].as_str()) {
            (Some(id), None) => (id.to_owned(), false),
            (None, Some(id)) => (id.to_owned(), true),
            _ => return invalid_parameter("(#100) The parameter recipient is required"),
        };
    let has_message = body["message"].is_object();
    let sender_action = body["sender_action"].as_str();
    if has_message == sender_action.is_some() {
        return invalid_parameter("(#100) Exactly one of message or sender_action is required");
    }
    if let Some(text) = body["message"]["text"].as_str()
        && text.len() > limits::TEXT_BYTES
    {
        return invalid_parameter(
            "(#100) Length of param message[text] must be less than or equal to 1000",
        );
    }
    if has_message && body["message"].as_object().is_some_and(|m| m.is_empty()) {
        return invalid_parameter("(#100) param message must be non-empty");
    }

    if let Some(s) = SCENARIOS.iter().find(|s| s.recipient_id == recipient_id) {
        let mut answer = graph_error_with(
            s.http_status,
            s.code,
            s.subcode,
            s.kind,
            s.message,
            s.is_transient,
        );
        // The demo's rate limit lasts a second, not Graph's minutes: the
        // gateway pauses the whole account for it.
        if s.code == 613 {
            answer.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RATE_LIMIT_PAUSE_SECONDS),
            );
        }
        return answer;
    }
    if !is_comment {
        let tagged = body["tag"].as_str() == Some("HUMAN_AGENT");
        let limit = if tagged { HUMAN_AGENT_MS } else { STANDARD_MS };
        let last = sandbox
            .store
            .lock()
            .await
            .last_inbound_ms
            .get(&(account.clone(), recipient_id.clone()))
            .copied();
        if last.is_none_or(|l| now_ms() - l >= limit) {
            return graph_error(
                400,
                10,
                Some(2534022),
                "OAuthException",
                "(#10) This message is sent outside of allowed window.",
            );
        }
    }
    let calls = {
        let mut store = sandbox.store.lock().await;
        let calls = store
            .calls_by_recipient
            .entry(recipient_id.clone())
            .or_default();
        *calls += 1;
        *calls
    };
    if recipient_id == FLAKY_RECIPIENT && calls % 2 == 1 {
        return graph_error_with(
            500,
            1,
            None,
            "OAuthException",
            "An unknown error occurred",
            true,
        );
    }
    if recipient_id == SLOW_RECIPIENT {
        tokio::time::sleep(SLOW_DELAY).await;
    }

    let serial = sandbox.next_id.fetch_add(1, Ordering::Relaxed);
    let message_id = has_message.then(|| {
        // Real ids are base64 of an `ig_message...` item key.
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "ig_message_item:1:IGMessageThread:{account}:{recipient_id}:{serial}"
        ))
    });
    // A private reply lands with the commenter, whose IGSID we make up.
    let delivered_to = if is_comment {
        format!("1784140{:010}", serial)
    } else {
        recipient_id
    };
    let now_ms = now_ms();
    {
        let mut store = sandbox.store.lock().await;
        if store.received.len() == KEEP {
            store.received.pop_front();
        }
        store.received.push_back(json!({
            "received_at_ms": now_ms,
            "account_id": account,
            "message_id": message_id,
            "body": body,
        }));
    }
    let mut answer = json!({ "recipient_id": delivered_to });
    if let Some(id) = message_id {
        answer["message_id"] = json!(id);
    }
    Json(answer).into_response()
}

impl Sandbox {
    /// The account whose token the request bears.
    async fn owner_of(&self, headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        self.store.lock().await.tokens.get(bearer).cloned()
    }
}

fn invalid_token() -> Response {
    graph_error(
        400,
        190,
        None,
        "OAuthException",
        "Invalid OAuth access token - Cannot parse access token",
    )
}

/// `GET /{version}/me?fields=user_id,username`, as Graph answers it.
async fn me(
    State(sandbox): State<Arc<Sandbox>>,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(owner) = sandbox.owner_of(&headers).await else {
        return invalid_token();
    };
    if version != VERSION {
        return invalid_parameter("Unknown path components");
    }
    let username = ACCOUNTS
        .iter()
        .find(|(id, _)| *id == owner)
        .map_or("", |(_, name)| name);
    Json(json!({"user_id": owner, "username": format!("sandbox_{username}"), "id": owner}))
        .into_response()
}

#[derive(serde::Deserialize)]
struct RefreshQuery {
    grant_type: Option<String>,
    access_token: Option<String>,
}

/// `GET /refresh_access_token?grant_type=ig_refresh_token&access_token=…`:
/// a new token for the same account, valid 60 days.
async fn refresh_access_token(
    State(sandbox): State<Arc<Sandbox>>,
    axum::extract::Query(query): axum::extract::Query<RefreshQuery>,
) -> Response {
    if query.grant_type.as_deref() != Some("ig_refresh_token") {
        return invalid_parameter("Unsupported grant_type");
    }
    let mut store = sandbox.store.lock().await;
    let Some(owner) = query
        .access_token
        .and_then(|t| store.tokens.get(&t).cloned())
    else {
        return invalid_token();
    };
    let token = new_token();
    store.tokens.insert(token.clone(), owner);
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": TOKEN_LIFETIME_S}))
        .into_response()
}

async fn list(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let store = sandbox.store.lock().await;
    Json(json!({ "messages": store.received }))
}

async fn clear(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    let mut store = sandbox.store.lock().await;
    store.received.clear();
    store.calls_by_recipient.clear();
    StatusCode::NO_CONTENT
}
