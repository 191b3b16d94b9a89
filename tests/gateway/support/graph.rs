//! The one Graph stand-in of tests and benches (benches include this file
//! by path, so it imports nothing from the tests): [`serve_graph`], an
//! HTTP/1.1 server whose answers a test or bench gives as a function of
//! each call; [`HeldGraph`], which holds every send until released; and
//! Graph's own wording of a success and an error, as bodies and as wiremock
//! answers ([`ok_reply`], [`graph_error`], [`MetaRateLimit`]), for tests
//! that match requests with wiremock.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

/// The recipient every success names.
pub const GRAPH_RECIPIENT: &str = "17841400000000000";

/// One call as the stand-in saw it, its body read.
pub struct Call {
    pub method: hyper::Method,
    pub path: String,
    pub query: String,
    /// The whole `Authorization` header, if any.
    pub authorization: String,
    pub body: Bytes,
}

impl Call {
    /// The bearer token, if any.
    pub fn token(&self) -> &str {
        self.authorization
            .strip_prefix("Bearer ")
            .unwrap_or_default()
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the stand-in answers a call.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16, body: &Value) -> Self {
        Self::new(status, body.to_string())
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// HTTP/1.1 on `listener`, on the caller's runtime: each call's body is
/// read, then `answer` gives the reply. Runs until the runtime ends.
pub async fn serve_graph<F, Fut>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move {
                    let method = req.method().clone();
                    let path = req.uri().path().to_owned();
                    let query = req.uri().query().unwrap_or("").to_owned();
                    let authorization = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    let call = Call {
                        method,
                        path,
                        query,
                        authorization,
                        body,
                    };
                    let reply = answer(call).await;
                    let mut response = hyper::Response::builder()
                        .status(reply.status)
                        .header("content-type", "application/json");
                    for (name, value) in reply.headers {
                        response = response.header(name, value);
                    }
                    Ok::<_, Infallible>(response.body(Full::new(reply.body)).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// [`serve_graph`] on a fresh loopback port, in the background.
pub async fn graph_stand_in<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_graph(listener, answer));
    addr
}

/// The stand-in answering every call with `reply`, status 200.
pub async fn fixed_upstream(reply: &'static [u8]) -> SocketAddr {
    graph_stand_in(move |_| async move { Reply::new(200, Bytes::from_static(reply)) }).await
}

/// Graph's answer to an accepted send.
pub fn ok_body(message_id: &str) -> Value {
    json!({"recipient_id": GRAPH_RECIPIENT, "message_id": message_id})
}

/// Graph's error envelope.
pub fn error_body(code: i64, subcode: Option<i64>, message: &str) -> Value {
    let mut error = json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AZtrace123"});
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    json!({ "error": error })
}

/// [`ok_body`] as a wiremock answer.
pub fn ok_reply() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(ok_body("aWdfbWlkLTE"))
}

/// [`error_body`] as a wiremock answer.
pub fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(error_body(code, subcode, message))
}

/// What a held Graph call carried.
#[derive(Clone, Debug)]
pub struct HeldCall {
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
struct HeldState {
    calls: Mutex<Vec<HeldCall>>,
    waiting: AtomicUsize,
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
        let state = Arc::new(HeldState::default());
        let released = tokio::sync::watch::Sender::new(false);
        let (shared, watch) = (state.clone(), released.subscribe());
        let addr = graph_stand_in(move |call: Call| {
            let (state, mut released) = (shared.clone(), watch.clone());
            async move {
                // Sends only: a token check is refused, not held.
                if call.method != hyper::Method::POST {
                    return Reply::new(405, "");
                }
                let n = {
                    let mut calls = state.calls.lock().unwrap();
                    calls.push(HeldCall {
                        path: call.path.clone(),
                        authorization: call.authorization.clone(),
                        body: call.json(),
                    });
                    calls.len()
                };
                // Counted while held, also when the gateway gives up the call.
                struct Held(Arc<HeldState>);
                impl Drop for Held {
                    fn drop(&mut self) {
                        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                state.waiting.fetch_add(1, Ordering::SeqCst);
                let _held = Held(state.clone());
                let _ = released.wait_for(|r| *r).await;
                Reply::json(200, &ok_body(&format!("mid.held.{n}")))
            }
        })
        .await;
        Self {
            url: format!("http://{addr}"),
            state,
            released,
        }
    }

    /// Sends that reached Graph and are held there now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
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

    /// Waits (at most a minute) until exactly `n` sends are held here.
    pub async fn until_waiting(&self, n: usize) {
        let started = Instant::now();
        loop {
            let held = self.waiting();
            if held == n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "sends held at Graph: {held} held, waiting for {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
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
    /// In `X-Business-Use-Case-Usage` (of `account`) rather than
    /// `X-App-Usage`.
    pub business_usage: Option<&'static str>,
}

impl MetaRateLimit {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            accepted: Arc::default(),
            texts: Arc::default(),
            refused: Arc::default(),
            usage_percent: Arc::default(),
            business_usage: None,
        }
    }

    /// The usage header this fake sends, and its value now.
    fn usage_header(&self) -> (&'static str, String) {
        let percent = *self.usage_percent.lock().unwrap();
        match self.business_usage {
            Some(account) => (
                "x-business-use-case-usage",
                format!(
                    r#"{{"{account}":[{{"type":"messenger","call_count":{percent},"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}}]}}"#
                ),
            ),
            None => (
                "x-app-usage",
                format!(r#"{{"call_count":{percent},"total_cputime":1,"total_time":1}}"#),
            ),
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
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
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
