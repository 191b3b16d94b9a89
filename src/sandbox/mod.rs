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

/// A recipient id that makes the sandbox fail the way Graph does.
pub struct Scenario {
    pub recipient_id: &'static str,
    /// What the gateway makes of Graph's answer: a test runs every
    /// scenario through the classifier.
    pub outcome: Reason,
    http_status: u16,
    code: i64,
    subcode: Option<i64>,
    kind: &'static str,
    message: &'static str,
    is_transient: bool,
}

/// Recipients that fail on purpose: each answers like Graph for that case.
pub const SCENARIOS: [Scenario; 9] = [
    Scenario {
        recipient_id: "10000000000000001",
        outcome: Reason::OutsideMessagingWindow,
        http_status: 400,
        code: 10,
        subcode: Some(2534022),
        kind: "OAuthException",
        message: "(#10) This message is sent outside of allowed window.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000002",
        outcome: Reason::RecipientUnavailable,
        http_status: 400,
        code: 551,
        subcode: Some(1545041),
        kind: "OAuthException",
        message: "(#551) This person isn't available right now.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000003",
        outcome: Reason::RecipientNotFound,
        http_status: 400,
        code: 100,
        subcode: Some(2534014),
        kind: "IGApiException",
        message: "No matching user found",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000004",
        outcome: Reason::RateLimited,
        http_status: 400,
        code: 613,
        subcode: None,
        kind: "OAuthException",
        message: "(#613) Calls to this api have exceeded the rate limit.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000005",
        outcome: Reason::AccessTokenInvalid,
        http_status: 400,
        code: 190,
        subcode: Some(463),
        kind: "OAuthException",
        message: "Error validating access token: Session has expired.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000006",
        outcome: Reason::PermissionMissing,
        http_status: 403,
        code: 10,
        subcode: None,
        kind: "OAuthException",
        message: "(#10) Application does not have permission for this action",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000007",
        outcome: Reason::RejectedByGraph,
        http_status: 400,
        code: 100,
        subcode: Some(2018047),
        kind: "OAuthException",
        message: "(#100) Upload attachment failure.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000008",
        outcome: Reason::UpstreamUnavailable,
        http_status: 500,
        code: 2,
        subcode: None,
        kind: "OAuthException",
        message: "An unexpected error has occurred. Please retry your request later.",
        is_transient: true,
    },
    Scenario {
        recipient_id: "10000000000000011",
        outcome: Reason::GraphError,
        http_status: 400,
        code: 1609005,
        subcode: None,
        kind: "OAuthException",
        message: "(#1609005) Error posting message.",
        is_transient: false,
    },
];

/// What the rate-limited recipient's answers ask to wait.
const RATE_LIMIT_PAUSE_SECONDS: &str = "1";

/// Fails every other call with a transient error, so a send succeeds on its
/// second Graph call (`graph_calls: 2`).
pub const FLAKY_RECIPIENT: &str = "10000000000000009";
/// Answers only after this long: a caller's deadline, or the upstream
/// timeout, runs out first (`DELIVERY_UNKNOWN`).
pub const SLOW_RECIPIENT: &str = "10000000000000010";
const SLOW_DELAY: Duration = Duration::from_secs(30);

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

#[derive(serde::Deserialize)]
struct InboundRequest {
    /// Who writes; the demo recipient by default.
    #[serde(default)]
    sender_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// Back-dates the message, such as "25h" or "8d".
    #[serde(default)]
    age: Option<String>,
    /// The account written to, by id or alias; `shop` by default.
    #[serde(default)]
    account: Option<String>,
}

/// Plays the Instagram user: records their message (opening their window as
/// Graph would) and delivers it to the gateway as a signed webhook.
async fn inbound(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let request: InboundRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"sender_id\",\"text\",\"age\",\"account\"}}: {e}"),
            )
                .into_response();
        }
    };
    let sender = request
        .sender_id
        .unwrap_or_else(|| DEMO_RECIPIENT.to_owned());
    if sender.is_empty() || !sender.bytes().all(|b| b.is_ascii_digit()) {
        return (
            StatusCode::BAD_REQUEST,
            "sender_id must be digits (an IGSID)",
        )
            .into_response();
    }
    let age = match request.age.as_deref().map(humantime::parse_duration) {
        None => Duration::ZERO,
        Some(Ok(age)) => age,
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("age: {e}")).into_response();
        }
    };
    let given = request.account.as_deref().unwrap_or("shop");
    let Some((account_id, _)) = ACCOUNTS
        .iter()
        .find(|(id, name)| *id == given || *name == given)
    else {
        return (
            StatusCode::BAD_REQUEST,
            format!("account must be one of the sandbox's: {ACCOUNT_ID} (shop), {SUPPORT_ACCOUNT_ID} (support)"),
        )
            .into_response();
    };
    let timestamp = now_ms() - age.as_millis() as i64;
    let serial = sandbox.next_id.fetch_add(1, Ordering::Relaxed);
    let mid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "ig_message_item:1:IGMessageThread:{account_id}:{sender}:in{serial}"
    ));
    {
        let mut store = sandbox.store.lock().await;
        let last = store
            .last_inbound_ms
            .entry(((*account_id).to_owned(), sender.clone()))
            .or_insert(timestamp);
        *last = (*last).max(timestamp);
    }
    let delivery = json!({
        "object": "instagram",
        "entry": [{
            "id": account_id,
            "time": now_ms(),
            "messaging": [{
                "sender": {"id": sender},
                "recipient": {"id": account_id},
                "timestamp": timestamp,
                "message": {"mid": mid, "text": request.text.unwrap_or_else(|| "Hi!".to_owned())},
            }],
        }],
    });
    let Some(target) = &sandbox.webhook else {
        return (
            StatusCode::CONFLICT,
            "the gateway's webhooks are off, so the message was recorded but not delivered",
        )
            .into_response();
    };
    let body = serde_json::to_vec(&delivery).expect("JSON values serialize");
    let signature = crate::edge::webhook::sign(&target.app_secret, &body);
    let answer = sandbox
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .header(crate::edge::webhook::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            Json(json!({"mid": mid, "sender_id": sender, "account_id": account_id, "timestamp_ms": timestamp, "webhook_status": status}))
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("the webhook could not be delivered: {e}"),
        )
            .into_response(),
    }
}

fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    kind: &str,
    message: &str,
) -> Response {
    graph_error_with(status, code, subcode, kind, message, false)
}

fn graph_error_with(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    kind: &str,
    message: &str,
    is_transient: bool,
) -> Response {
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "is_transient": is_transient,
        "fbtrace_id": format!("Sbx{:x}", rand::random::<u64>()),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({ "error": error }))).into_response()
}

fn invalid_parameter(message: &str) -> Response {
    graph_error(400, 100, None, "OAuthException", message)
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

async fn recipients() -> Json<Value> {
    let mut list: Vec<Value> = vec![
        json!({"recipient_id": DEMO_RECIPIENT, "outcome": "OK (wrote when the sandbox started)"}),
        json!({"recipient_id": "any other", "outcome": "OUTSIDE_MESSAGING_WINDOW until they write: POST /sandbox/inbound"}),
    ];
    list.extend(SCENARIOS.iter().map(|s| {
        json!({"recipient_id": s.recipient_id, "outcome": s.outcome.as_str(), "graph_code": s.code, "graph_subcode": s.subcode})
    }));
    list.push(
        json!({"recipient_id": FLAKY_RECIPIENT, "outcome": "OK after one retry (graph_calls: 2)"}),
    );
    list.push(
        json!({"recipient_id": SLOW_RECIPIENT, "outcome": "DELIVERY_UNKNOWN (answers after 30 s)"}),
    );
    Json(json!({ "recipients": list }))
}
