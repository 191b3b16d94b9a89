//! What the benches share: knobs, medians, a process's CPU time and the
//! baseline servers; the Graph stand-in ([`graph`]) and the process
//! launcher ([`process`]) are the tests' own, included by path. Each bench
//! uses some of it.
#![allow(dead_code)]

#[path = "../../tests/gateway/support/graph.rs"]
pub mod graph;
#[path = "../../tests/gateway/support/process.rs"]
pub mod process;

// Each bench uses some of these.
#[allow(unused_imports)]
pub use graph::{Call, Reply, fixed_upstream, graph_stand_in, serve_graph};
#[allow(unused_imports)]
pub use process::{BIN, GATEWAY_BANNER, Launched, cpu_of};

/// What a bench's own role process prints before the address it serves
/// on, for [`Launched::start_until`].
pub const LISTENING: &str = "listening on ";

use std::net::SocketAddr;
use std::time::Duration;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_server::Messenger;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// A numeric knob from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The account every bench gateway serves (but the accounts bench's).
pub const ACCOUNT: &str = "17841400000000001";

/// valgrind's callgrind, writing its profile to `out`: the prefix for
/// [`gateway_command`] that counts instructions.
pub fn callgrind(out: &std::path::Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// `program`, run by `wrapper` (a program and its arguments) when that is
/// not empty.
pub fn wrapped(program: &std::path::Path, wrapper: &[String]) -> std::process::Command {
    match wrapper.split_first() {
        Some((runner, args)) => {
            let mut c = std::process::Command::new(runner);
            c.args(args).arg(program);
            c
        }
        None => std::process::Command::new(program),
    }
}

/// The release gateway (run by `wrapper`, a program and its arguments, when
/// not empty) serving [`ACCOUNT`] with its Graph at `upstream`: `serve` on
/// loopback ports the system picks, a fresh data directory (returned, to
/// keep while it runs), none of the caller's `RUST_LOG` or store settings,
/// stdin and stderr closed. Each bench adds its own flags.
pub fn gateway_command(
    upstream: SocketAddr,
    wrapper: &[String],
) -> (std::process::Command, tempfile::TempDir) {
    use std::process::Stdio;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = wrapped(BIN.as_ref(), wrapper);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("MESSENGER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("INSTAGRAM_API_URL", format!("http://{upstream}/v25.0"))
        .env("INSTAGRAM_ACCOUNT_ID", ACCOUNT)
        .env("INSTAGRAM_ACCESS_TOKEN", "bench-token")
        .env_remove("RUST_LOG")
        .env_remove("MESSENGER_GATEWAY_STORE")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    (cmd, data)
}

/// `n` sends from `callers` callers over `channel`, taking turns; send `k`
/// is `request(k)`, and each must succeed.
pub async fn closed_loop<F, R>(
    channel: &tonic::transport::Channel,
    callers: usize,
    n: usize,
    request: F,
) where
    F: Fn(usize) -> R + Clone + Send + 'static,
    R: tonic::IntoRequest<pb::SendRequest> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut client = pb::messenger_client::MessengerClient::new(channel.clone());
        let (next, request) = (next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    break;
                }
                client.send(request(k)).await.expect("the send succeeds");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A tonic channel to `addr` (`host:port`), Nagle off as the gateway has it.
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// Whether valgrind is here, to count instructions with callgrind.
pub fn valgrind_available() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The instruction total callgrind wrote to `out` when its program ended.
pub fn callgrind_total(out: &std::path::Path) -> u64 {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("totals: "))
        .and_then(|t| t.trim().parse().ok())
        .expect("callgrind wrote its totals")
}

/// The baseline servers: with `post`, a minimal handler (it builds a
/// `serde_json::Value` and posts it with a default `reqwest::Client`);
/// without, a server that answers `Send` after `hold` (at once when zero).
pub struct Baseline {
    pub post: Option<(reqwest::Client, String)>,
    pub hold: Duration,
}

type Results<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Messenger for Baseline {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let request = request.into_inner();
        let Some((http, url)) = &self.post else {
            if !self.hold.is_zero() {
                tokio::time::sleep(self.hold).await;
            }
            return Ok(Response::new(pb::SendResponse {
                recipient_id: request.recipient_id,
                ..Default::default()
            }));
        };
        let body = serde_json::json!({
            "recipient": {"id": request.recipient_id},
            "message": {"text": request.text},
        });
        let reply: serde_json::Value = http
            .post(url)
            .bearer_auth("bench-token")
            .json(&body)
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .json()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        Ok(Response::new(pb::SendResponse {
            message_id: reply["message_id"].as_str().unwrap_or_default().to_owned(),
            recipient_id: reply["recipient_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            graph_calls: 1,
            ..Default::default()
        }))
    }

    type SendStreamStream = Results<pb::SendResult>;
    async fn send_stream(
        &self,
        _: Request<Streaming<pb::SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn send_action(
        &self,
        _: Request<pb::SendActionRequest>,
    ) -> Result<Response<pb::SendActionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn get_window(
        &self,
        _: Request<pb::GetWindowRequest>,
    ) -> Result<Response<pb::GetWindowResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type SubscribeStream = Results<pb::InboundEvent>;
    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn list_accounts(
        &self,
        _: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn get_send(
        &self,
        _: Request<pb::GetSendRequest>,
    ) -> Result<Response<pb::GetSendResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn get_message(
        &self,
        _: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

impl Baseline {
    /// Serves on a fresh loopback port, printing [`LISTENING`] and the
    /// address; ends on SIGTERM, so callgrind (when it runs the process)
    /// writes its totals.
    pub async fn serve(self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{LISTENING}{}", listener.local_addr().unwrap());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tonic::transport::Server::builder()
            .add_service(pb::messenger_server::MessengerServer::new(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    term.recv().await;
                },
            )
            .await
            .unwrap();
    }
}
