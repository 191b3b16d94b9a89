//! Graph stand-ins for tests: a wiremock answer or error as Graph words
//! them, a Graph that holds each call until released, and one that
//! rate-limits as Meta does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::{ACCOUNT, USER, eventually};

/// What a held Graph call carried.
#[derive(Clone, Debug)]
pub struct HeldCall {
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
struct HeldState {
    calls: std::sync::Mutex<Vec<HeldCall>>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// A Graph stand-in that holds every send until the test releases it, so
/// a premise like "these sends are under way" is made by construction,
/// not by a delay that a slow machine outlasts. Once released it answers
/// every send at once.
pub struct HeldGraph {
    pub url: String,
    state: Arc<HeldState>,
    released: tokio::sync::watch::Sender<bool>,
}

impl HeldGraph {
    /// A gateway's calls to it never time out, however slow the machine:
    /// they end when the test releases them.
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);

    pub async fn start() -> Self {
        use axum::extract::State;
        let state = Arc::new(HeldState::default());
        let released = tokio::sync::watch::Sender::new(false);
        type Shared = (Arc<HeldState>, tokio::sync::watch::Receiver<bool>);
        async fn hold(
            State((state, mut released)): State<Shared>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::Json<Value> {
            let authorization = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let n = {
                let mut calls = state.calls.lock().unwrap();
                calls.push(HeldCall {
                    path: uri.path().to_owned(),
                    authorization,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                calls.len()
            };
            // Counted while held, also when the gateway gives up the call.
            struct Held(Arc<HeldState>);
            impl Drop for Held {
                fn drop(&mut self) {
                    self.0
                        .waiting
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            state
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _held = Held(state.clone());
            let _ = released.wait_for(|r| *r).await;
            axum::Json(json!({"recipient_id": USER, "message_id": format!("mid.held.{n}")}))
        }
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(hold))
            .with_state((state.clone(), released.subscribe()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            state,
            released,
        }
    }

    /// Sends that reached Graph and are held there now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every held send, and every later one at once.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Holds sends again from now on.
    pub fn hold(&self) {
        self.released.send_replace(false);
    }

    /// Every call received, in order of arrival.
    pub fn calls(&self) -> Vec<HeldCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The text of every send received, in order of arrival.
    pub fn texts(&self) -> Vec<Value> {
        self.calls()
            .iter()
            .map(|c| c.body["message"]["text"].clone())
            .collect()
    }

    /// Waits until exactly `n` sends are held here.
    pub async fn until_waiting(&self, n: usize) {
        eventually(Duration::from_secs(60), "sends held at Graph", || async {
            match self.waiting() {
                held if held == n => Ok(()),
                held => Err(format!("{held} held, waiting for {n}")),
            }
        })
        .await
    }
}

pub fn ok_reply() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"recipient_id": USER, "message_id": "aWdfbWlkLTE"}))
}

pub fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
) -> ResponseTemplate {
    let mut error = json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AZtrace123"});
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
}

/// Answers 613 to a send when `limit` were accepted in the second before
/// it; records when each was accepted.
#[derive(Clone)]
pub struct MetaRateLimit {
    pub limit: usize,
    pub accepted: Arc<Mutex<VecDeque<Instant>>>,
    /// The text of each accepted send, in the same order.
    pub texts: Arc<Mutex<Vec<String>>>,
    pub refused: Arc<Mutex<usize>>,
    /// Sent on every answer.
    pub usage_percent: Arc<Mutex<u32>>,
    /// In `X-Business-Use-Case-Usage` rather than `X-App-Usage`.
    pub business_usage: bool,
}

impl MetaRateLimit {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            accepted: Arc::default(),
            texts: Arc::default(),
            refused: Arc::default(),
            usage_percent: Arc::default(),
            business_usage: false,
        }
    }

    /// The usage header this fake sends, and its value now.
    fn usage_header(&self) -> (&'static str, String) {
        let percent = *self.usage_percent.lock().unwrap();
        if self.business_usage {
            (
                "x-business-use-case-usage",
                format!(
                    r#"{{"{ACCOUNT}":[{{"type":"messenger","call_count":{percent},"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}}]}}"#
                ),
            )
        } else {
            (
                "x-app-usage",
                format!(r#"{{"call_count":{percent},"total_cputime":1,"total_time":1}}"#),
            )
        }
    }

    pub fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }

    /// The texts of the sends accepted so far, in order.
    pub fn texts(&self) -> Vec<String> {
        self.texts.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().iter().copied().collect()
    }
}

impl Respond for MetaRateLimit {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let (usage_header, usage) = self.usage_header();
        let mut accepted = self.accepted.lock().unwrap();
        // Per second, counted from the first send, as Graph counts calls.
        let in_this_second = match accepted.front() {
            None => 0,
            Some(first) => {
                let second = now.duration_since(*first).as_secs();
                accepted
                    .iter()
                    .rev()
                    .take_while(|t| t.duration_since(*first).as_secs() == second)
                    .count()
            }
        };
        if in_this_second >= self.limit {
            *self.refused.lock().unwrap() += 1;
            return graph_error(
                400,
                613,
                None,
                "(#613) Calls to this api have exceeded the rate limit.",
            )
            .insert_header(usage_header, usage.as_str());
        }
        accepted.push_back(now);
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let text = body["message"]["text"].as_str().unwrap_or_default();
        self.texts.lock().unwrap().push(text.to_owned());
        ok_reply().insert_header(usage_header, usage.as_str())
    }
}

/// The most sends the fake accepted in one second, counted as it counts.
pub fn busiest_second(accepted: &[Instant]) -> usize {
    let Some(first) = accepted.first() else {
        return 0;
    };
    let mut per_second = std::collections::HashMap::new();
    for t in accepted {
        *per_second
            .entry(t.duration_since(*first).as_secs())
            .or_insert(0) += 1;
    }
    per_second.into_values().max().unwrap_or(0)
}
