//! What the benches share: knobs, medians, a process's CPU time, the one
//! Graph stand-in (`serve_graph`), the gateway launcher (`Launched`) and
//! the baseline servers. Each bench uses some of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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

/// Process `pid`'s CPU time, user and system, as the scheduler counts it
/// to the nanosecond: `/proc/PID/stat`'s utime and stime are sampled at
/// each clock tick, a few per cent of noise over a round by themselves.
pub fn cpu_of(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both pointers are to live locals of the right types.
    unsafe {
        assert_eq!(libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock), 0);
        assert_eq!(libc::clock_gettime(clock, &mut now), 0);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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

/// One call as the bench Graph stand-in saw it (its body already read).
pub struct Call {
    pub path: String,
    pub query: String,
    /// The bearer token, if any.
    pub token: String,
}

/// The benches' one Graph stand-in: HTTP/1.1 on `listener`, on this
/// process's runtime; each call's body is read, then `answer` gives the
/// status and JSON body. Runs until the runtime ends.
pub async fn serve_graph<F, Fut>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (u16, Bytes)> + Send + 'static,
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
                    let call = Call {
                        path: req.uri().path().to_owned(),
                        query: req.uri().query().unwrap_or("").to_owned(),
                        token: req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or("")
                            .to_owned(),
                    };
                    let _ = req.into_body().collect().await;
                    let (status, body) = answer(call).await;
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .unwrap(),
                    )
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
    Fut: std::future::Future<Output = (u16, Bytes)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_graph(listener, answer));
    addr
}

/// The stand-in answering every call with `reply`.
pub async fn fixed_upstream(reply: &'static [u8]) -> SocketAddr {
    graph_stand_in(move |_| async move { (200, Bytes::from_static(reply)) }).await
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
}

/// A gateway process a bench started, once its banner named the gRPC
/// address; killed when dropped, and its data directory removed.
pub struct Launched {
    pub child: std::process::Child,
    /// `host:port`.
    pub grpc: String,
    /// From the banner's `webhooks at` line; empty without a webhook port.
    pub webhook_url: String,
    /// From the spawn to the banner's last line.
    pub started_in: Duration,
    _data: tempfile::TempDir,
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Launched {
    /// Spawns `cmd` (its stdout piped here) and reads its banner; what
    /// it prints afterwards is read and dropped, so the pipe never fills.
    pub fn start(cmd: &mut std::process::Command, data: tempfile::TempDir) -> Self {
        use std::io::{BufRead, BufReader};
        cmd.stdout(std::process::Stdio::piped());
        let spawned = std::time::Instant::now();
        let child = cmd.spawn().expect("the gateway starts");
        // Owned (and killed on drop) before anything can fail.
        let mut launched = Self {
            child,
            grpc: String::new(),
            webhook_url: String::new(),
            started_in: Duration::ZERO,
            _data: data,
        };
        let mut lines = BufReader::new(launched.child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("a banner").unwrap();
            if let Some(url) = line.strip_prefix("webhooks at ") {
                launched.webhook_url = url.trim().to_owned();
            }
            if let Some(rest) = line.strip_prefix("messenger-gateway listening on ") {
                launched.started_in = spawned.elapsed();
                launched.grpc = rest.split_whitespace().next().unwrap().to_owned();
                std::thread::spawn(move || for _ in lines {});
                return launched;
            }
        }
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}
