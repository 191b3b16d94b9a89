//! What a send costs the gateway, against the least a gRPC-to-Graph hop can
//! cost: `cargo bench --bench efficiency`.
//!
//! Three servers take the same `Send` load (64 callers, a zero-latency Graph
//! stand-in), each in its own process, so each one's CPU time is its own:
//! 1. the gateway (release binary, metrics on, `--pace off`);
//! 2. a minimal handler: a tonic `Send` that builds a `serde_json::Value`
//!    and posts it with a default `reqwest::Client`;
//! 3. a server that answers `Send` at once (the gRPC hop alone).
//!
//! A fourth process posts the same JSON straight to the stand-in with
//! reqwest (the cost of one POST), so the floor is (3) + (4). Each figure is
//! CPU time (user+system, from the scheduler's clock) per send, and the
//! servers take turns in rounds so they see the same machine.
//! Knobs: `BENCH_SENDS` (per server a round; default 20000), `BENCH_ROUNDS`
//! (default 3), `BENCH_GATEWAY_RUST_LOG` (the gateway's log level).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messenger_gateway::grpc::pb;
use messenger_gateway::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::grpc::pb::messenger_server::{Messenger, MessengerServer};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

const BIN: &str = env!("CARGO_BIN_EXE_messenger-gateway");
const ROLE: &str = "BENCH_EFFICIENCY_ROLE";
const UPSTREAM: &str = "BENCH_EFFICIENCY_UPSTREAM";
const ACCOUNT: &str = "17841400000000001";
const USER: &str = "17841400000000000";
const CALLERS: usize = 64;
const REPLY: &[u8] = br#"{"recipient_id":"17841400000000000","message_id":"aWdfYmVuY2g"}"#;

/// The two baseline servers: `post` set, the minimal handler; else the
/// server that answers at once.
struct Baseline {
    post: Option<(reqwest::Client, String)>,
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
}

/// Runs this binary as a baseline server or the direct poster.
fn run_role(role: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = std::env::var(UPSTREAM).unwrap();
        let url = format!("http://{upstream}/v25.0/{ACCOUNT}/messages");
        if role == "poster" {
            // Posts on every line read from stdin: "N" means N posts.
            let http = reqwest::Client::new();
            let mut lines = BufReader::new(std::io::stdin()).lines();
            println!("ready");
            while let Some(Ok(line)) = lines.next() {
                let n: usize = line.trim().parse().unwrap();
                let next = Arc::new(AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for _ in 0..CALLERS {
                    let (http, url, next) = (http.clone(), url.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        while next.fetch_add(1, Ordering::Relaxed) < n {
                            let body = serde_json::json!({"recipient": {"id": USER}, "message": {"text": "Hello from my app"}});
                            let _: serde_json::Value = http.post(&url).bearer_auth("bench-token").json(&body).send().await.unwrap().json().await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                println!("done");
            }
            return;
        }
        let post = (role == "minimal").then(|| (reqwest::Client::new(), url));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        tonic::transport::Server::builder()
            .add_service(MessengerServer::new(Baseline { post }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
}

struct Process {
    child: Child,
    addr: String,
    /// What the process prints after its banner, when kept.
    lines: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
    _data: Option<tempfile::TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(mut cmd: Command, data: Option<tempfile::TempDir>, marker: &str) -> Self {
        let mut process = Self::start_keeping(cmd_with_pipes(&mut cmd), data, marker);
        let lines = process.lines.take().unwrap();
        std::thread::spawn(move || for _ in lines {});
        process
    }

    /// As `start`, keeping what it prints next for the caller to read.
    fn start_keeping(cmd: &mut Command, data: Option<tempfile::TempDir>, marker: &str) -> Self {
        let child = cmd.spawn().unwrap();
        let mut process = Process {
            child,
            addr: String::new(),
            lines: None,
            _data: data,
        };
        let mut lines = BufReader::new(process.child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("a banner").unwrap();
            if let Some(rest) = line.strip_prefix(marker) {
                process.addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                process.lines = Some(lines);
                return process;
            }
        }
    }

    fn cpu(&self) -> Duration {
        support::cpu_of(self.child.id())
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap()
    }
}

fn cmd_with_pipes(cmd: &mut Command) -> &mut Command {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null())
}

fn role(name: &str, upstream: SocketAddr) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, name).env(UPSTREAM, upstream.to_string());
    cmd
}

async fn sends(channel: &Channel, n: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let mut client = MessengerClient::new(channel.clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let request = pb::SendRequest {
                    recipient_id: USER.into(),
                    text: "Hello from my app".into(),
                    ..Default::default()
                };
                client.send(request).await.expect("the send succeeds");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    if let Ok(r) = std::env::var(ROLE) {
        return run_role(&r);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = support::fixed_upstream(REPLY).await;
        let data = tempfile::tempdir().unwrap();
        let mut gateway = Command::new(BIN);
        gateway
            .args(["serve", "--listen", "127.0.0.1:0", "--pace", "off"])
            .arg("--data-dir")
            .arg(data.path())
            .env("MESSENGER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("INSTAGRAM_API_URL", format!("http://{upstream}/v25.0"))
            .env("INSTAGRAM_ACCOUNT_ID", ACCOUNT)
            .env("INSTAGRAM_ACCESS_TOKEN", "bench-token")
            .env_remove("RUST_LOG");
        // BENCH_GATEWAY_RUST_LOG=warn: the gateway without its line per send.
        if let Ok(level) = std::env::var("BENCH_GATEWAY_RUST_LOG") {
            gateway.env("RUST_LOG", level);
        }
        let servers = [
            (
                "gateway",
                Process::start(gateway, Some(data), "messenger-gateway listening on "),
            ),
            (
                "minimal handler",
                Process::start(role("minimal", upstream), None, "listening on "),
            ),
            (
                "answer at once",
                Process::start(role("answer", upstream), None, "listening on "),
            ),
        ];
        let mut poster_cmd = role("poster", upstream);
        poster_cmd.stdin(Stdio::piped());
        let mut poster = Process::start_keeping(cmd_with_pipes(&mut poster_cmd), None, "ready");
        let mut poster_in = poster.child.stdin.take().unwrap();
        let mut poster_out = poster.lines.take().unwrap();

        let channels = [
            servers[0].1.channel().await,
            servers[1].1.channel().await,
            servers[2].1.channel().await,
        ];
        for channel in &channels {
            sends(channel, 4000).await;
        }
        let total = support::env_or("BENCH_SENDS", 20_000) as usize;
        println!(
            "CPU per send, {CALLERS} callers, {total} sends per server a round, zero-latency Graph stand-in"
        );
        let mut per_send: [Vec<f64>; 4] = Default::default();
        for round in 1..=support::env_or("BENCH_ROUNDS", 3) {
            let mut line = format!("   round {round}:");
            for (i, ((name, process), channel)) in servers.iter().zip(&channels).enumerate() {
                let before = process.cpu();
                sends(channel, total).await;
                let us = (process.cpu() - before).as_secs_f64() * 1e6 / total as f64;
                per_send[i].push(us);
                line += &format!(" {name} {us:.1} µs,");
            }
            // The poster: one POST per send, its own CPU.
            use std::io::Write;
            let before = poster.cpu();
            writeln!(poster_in, "{total}").unwrap();
            poster_in.flush().unwrap();
            let done = tokio::task::block_in_place(|| poster_out.next());
            assert_eq!(done.unwrap().unwrap(), "done");
            let us = (poster.cpu() - before).as_secs_f64() * 1e6 / total as f64;
            per_send[3].push(us);
            println!("{line} one reqwest POST {us:.1} µs");
        }
        let [gw, minimal, answer, post] = per_send.map(support::median);
        let floor = answer + post;
        println!(
            "   medians: gateway {gw:.1} µs, minimal handler {minimal:.1} µs, answer at once {answer:.1} µs, one POST {post:.1} µs"
        );
        println!(
            "   gateway / minimal handler: {:.2} (aim: at most 1.0)",
            gw / minimal
        );
        println!(
            "   gateway / floor (answer at once + one POST = {floor:.1} µs): {:.2} (aim: at most 1.15)",
            gw / floor
        );
        drop(servers);
        drop(poster);
    });
}
