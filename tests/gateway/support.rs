use std::net::SocketAddr;
use std::time::Duration;

use messenger_gateway::delivery::{Deliverer, DeliveryPolicy};
use messenger_gateway::graph::{AccessToken, Account, GraphClient};
use messenger_gateway::grpc::pb;
use messenger_gateway::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::server::{ServeError, ServeOptions, serve};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TOKEN: &str = "test-token-7f3a9c";
pub const ACCOUNT: &str = "17841400000000001";
pub const USER: &str = "17841400000000000";
pub const MESSAGES_PATH: &str = "/v25.0/17841400000000001/messages";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub graph: MockServer,
    stop: Option<oneshot::Sender<()>>,
    pub served: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Fast retries so the tests take milliseconds.
pub fn quick_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        upstream_timeout: Duration::from_secs(5),
        ..DeliveryPolicy::default()
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(quick_policy(), ServeOptions::default()).await
    }

    pub async fn start_with(policy: DeliveryPolicy, options: ServeOptions) -> Self {
        let graph = MockServer::start().await;
        let base = format!("{}/v25.0", graph.uri());
        Self::start_against(graph, &base, policy, options).await
    }

    pub async fn start_against(
        graph: MockServer,
        base_url: &str,
        policy: DeliveryPolicy,
        options: ServeOptions,
    ) -> Self {
        let account = Account::new(base_url, ACCOUNT, &AccessToken::new(TOKEN)).unwrap();
        let deliverer = Deliverer::new(GraphClient::new(Duration::from_secs(1)), account, policy);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let served = tokio::spawn(serve(listener, deliverer, options, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            graph,
            stop: Some(stop),
            served: Some(served),
        }
    }

    pub async fn client(&self) -> MessengerClient<Channel> {
        MessengerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// A plain text send to the demo user over a fresh client.
    pub async fn send_text(&self) -> Result<pb::SendResponse, tonic::Status> {
        self.client()
            .await
            .send(text_to(USER, "hi"))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Starts the shutdown sequence, as SIGTERM does.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The JSON bodies Graph received, in order.
    pub async fn graph_bodies(&self) -> Vec<Value> {
        self.graph
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    pub async fn graph_calls(&self) -> usize {
        self.graph
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }

    /// Graph answers every send with this.
    pub async fn graph_answers(&self, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(MESSAGES_PATH))
            .respond_with(response)
            .mount(&self.graph)
            .await;
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

pub fn text_to(recipient: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        recipient_id: recipient.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// The one ErrorInfo's reason and metadata.
pub fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("every failure carries an ErrorInfo");
    assert_eq!(info.domain, "messenger-gateway");
    (info.reason.clone(), info.metadata.clone())
}

pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// The token must never reach a caller.
pub fn assert_no_token(status: &tonic::Status) {
    let everything = format!("{status:?}{:?}", status.get_error_details());
    assert!(!everything.contains(TOKEN), "token leaked: {everything}");
}
