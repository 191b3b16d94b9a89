//! Load generator and fast fake Graph upstream: `cargo bench --bench gateway`.
//!
//! Every figure is a ratio to a baseline measured in the same run, because
//! these machines are shared and noisy:
//! 1. added median latency at 1 caller: gRPC through the gateway vs. a direct
//!    HTTP client posting the same JSON to the same upstream;
//! 2. throughput with 64 concurrent callers, same two paths, zero-latency
//!    upstream, and of the gRPC hop alone (calls rejected before any upstream
//!    call), which bounds what the gateway path can reach;
//! 3. 10,000 sends in flight against an upstream answering in 200 ms: errors,
//!    the peak concurrency the upstream saw, and the gateway's peak memory
//!    against its own idle memory.
//!
//! The gateway under test is the real binary in its own process, so its
//! memory is its own. Knobs, for experiments:
//! - `BENCH_SECONDS`: the throughput window (default 5);
//! - `BENCH_SKIP_IN_FLIGHT`: stop after the throughput phase;
//! - `BENCH_GATEWAY_ARGS`: more flags for the gateway (such as
//!   `--record-sent=false`);
//! - `BENCH_GATEWAY_RUST_LOG`, `BENCH_GATEWAY_WORKERS`: the gateway's
//!   `RUST_LOG` and `TOKIO_WORKER_THREADS` (default: its own defaults).

mod support;

use support::{LISTENING, Launched};

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use tonic::transport::Channel;

/// The gateway's allocator, for the bare tonic server and the load alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
/// Set (to a delay in ms) when this binary runs as the upstream.
const UPSTREAM_ROLE: &str = "BENCH_UPSTREAM_DELAY_MS";
/// Set (to a hold in ms) when this binary runs as the bare tonic server.
const HOLD_ROLE: &str = "BENCH_HOLD_SERVER";
use support::ACCOUNT;
const TOKEN: &str = "bench-token";
const RECIPIENT: &str = "17841400000000000";
const TEXT: &str = "Hello from my app";
const REPLY: &[u8] = br#"{"recipient_id":"17841400000000000","message_id":"aWdfYmVuY2g"}"#;

/// Counts requests in flight at the upstream, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// A minimal HTTP/1.1 Graph stand-in: reads the body, waits `delay`,
/// answers a fixed success. `GET /peak` answers the most calls it held at once.
async fn serve_upstream(delay: Duration) {
    // A deep accept queue: 10,000 connections arrive at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16_384).unwrap();
    println!("{LISTENING}{}", listener.local_addr().unwrap());
    let gauge = Arc::new(Gauge::default());
    support::serve_graph(listener, move |call: support::Call| {
        let g = gauge.clone();
        async move {
            if call.path == "/peak" {
                let peak = g.peak.load(Ordering::SeqCst).to_string();
                return support::Reply::new(200, peak);
            }
            let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
            g.peak.fetch_max(n, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            g.now.fetch_sub(1, Ordering::SeqCst);
            support::Reply::new(200, Bytes::from_static(REPLY))
        }
    })
    .await
}

/// The upstream runs in its own process, as Graph would: sharing the load
/// generator's runtime would let the direct baseline skip a process hop.
struct Upstream {
    /// Kept for its life: dropping it ends the process.
    _process: Launched,
    addr: SocketAddr,
}

impl Upstream {
    fn start(delay: Duration) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(UPSTREAM_ROLE, delay.as_millis().to_string())
            .stdin(Stdio::null());
        let process = Launched::start_until(&mut cmd, None, LISTENING, false);
        let addr = process
            .addr
            .parse()
            .expect("the upstream names its address");
        Self {
            _process: process,
            addr,
        }
    }

    async fn peak(&self) -> String {
        let url = format!("http://{}/peak", self.addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

struct Gateway {
    process: Launched,
}

impl Gateway {
    /// Not the gateway: this binary as a bare tonic server that answers
    /// every `Send` after `hold`, on the gateway's allocator.
    fn hold(hold: Duration) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(HOLD_ROLE, hold.as_millis().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        Self {
            process: Launched::start_until(&mut cmd, None, LISTENING, false),
        }
    }

    fn start(upstream: SocketAddr) -> Self {
        let wrapper: Vec<String> = std::env::var("BENCH_GATEWAY_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        // Default logging stays on, as in production; it costs what it costs.
        let (mut cmd, data) = support::gateway_command(upstream, &wrapper);
        cmd.args(["--pace", "off"])
            .args(
                std::env::var("BENCH_GATEWAY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .envs(std::env::var("BENCH_GATEWAY_RUST_LOG").map(|v| ("RUST_LOG", v)))
            .envs(std::env::var("BENCH_GATEWAY_WORKERS").map(|v| ("TOKIO_WORKER_THREADS", v)));
        Self {
            process: Launched::start(&mut cmd, data),
        }
    }

    async fn channel(&self) -> Channel {
        support::channel(&self.process.addr).await
    }

    /// (VmRSS, VmHWM) in KiB, from /proc.
    fn memory_kib(&self) -> (u64, u64) {
        (
            self.process.status_figure("VmRSS:"),
            self.process.status_figure("VmHWM:"),
        )
    }
}

impl Drop for Gateway {
    /// SIGTERM first, as an operator would (a wrapper such as valgrind then
    /// writes its report).
    fn drop(&mut self) {
        self.process.terminate(Duration::from_secs(30));
    }
}

fn request() -> pb::SendRequest {
    pb::SendRequest {
        recipient_id: RECIPIENT.into(),
        text: TEXT.into(),
        ..Default::default()
    }
}

#[derive(Clone)]
struct Direct {
    http: reqwest::Client,
    url: String,
    body: Bytes,
}

impl Direct {
    fn new(upstream: SocketAddr) -> Self {
        let body = serde_json::to_vec(&serde_json::json!({
            "recipient": {"id": RECIPIENT}, "message": {"text": TEXT}
        }))
        .unwrap();
        Self {
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap(),
            url: format!("http://{upstream}/v25.0/{ACCOUNT}/messages"),
            body: Bytes::from(body),
        }
    }

    async fn send(&self) -> bool {
        match self
            .http
            .post(&self.url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(self.body.clone())
            .send()
            .await
        {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn latency_direct(d: &Direct, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert!(d.send().await);
        samples.push(t.elapsed());
    }
    median(samples)
}

async fn latency_gateway(c: &mut MessengerClient<Channel>, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.send(request()).await.expect("send succeeds");
        samples.push(t.elapsed());
    }
    median(samples)
}

/// Sends per second from `callers` loops over `window`, and the errors.
async fn throughput<F, Fut>(callers: usize, window: Duration, call: F) -> (f64, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + window;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (ok, failed, call) = (ok.clone(), failed.clone(), call.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    if call().await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    (
        ok.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    )
}

fn main() {
    if let Ok(ms) = std::env::var(HOLD_ROLE) {
        let baseline = support::Baseline {
            post: None,
            hold: Duration::from_millis(ms.parse().unwrap()),
        };
        return runtime(true).block_on(baseline.serve());
    }
    if let Ok(ms) = std::env::var(UPSTREAM_ROLE) {
        let delay = Duration::from_millis(ms.parse().unwrap());
        return runtime(true).block_on(serve_upstream(delay));
    }
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-file limit: {e}");
    }
    let window = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    if std::env::var("BENCH_ONLY_IN_FLIGHT").is_ok() {
        return in_flight();
    }
    let fast = Upstream::start(Duration::ZERO);
    let gateway = Gateway::start(fast.addr);

    // 1. Latency at one caller. One caller needs one thread: a
    // single-threaded client keeps the load generator's own cross-thread
    // wake-ups out of both paths' figures.
    let (d_lat, g_lat, hop) = runtime(false).block_on(async {
        let direct = Direct::new(fast.addr);
        let mut client = MessengerClient::new(gateway.channel().await);
        // Warm up both paths (connections, pools, caches).
        latency_direct(&direct, 500).await;
        latency_gateway(&mut client, 500).await;
        // Interleaved in rounds so drift hits both.
        let (mut d_all, mut g_all) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            d_all.push(latency_direct(&direct, 1000).await);
            g_all.push(latency_gateway(&mut client, 1000).await);
        }
        // The gRPC round trip alone: a request rejected before any upstream call.
        let mut hop = Vec::new();
        for _ in 0..3000 {
            let t = Instant::now();
            let _ = client.send(pb::SendRequest::default()).await;
            hop.push(t.elapsed());
        }
        (median(d_all), median(g_all), median(hop))
    });
    let added = g_lat.saturating_sub(d_lat);

    // 2. Throughput at 64 callers.
    let rt = runtime(true);
    let ((d_rps, d_err), (g_rps, g_err), hop_rps) = rt.block_on(async {
        let d = Direct::new(fast.addr);
        let direct = throughput(64, window, move || {
            let d = d.clone();
            async move { d.send().await }
        })
        .await;
        let ch = gateway.channel().await;
        let through = throughput(64, window, move || {
            let mut c = MessengerClient::new(ch.clone());
            async move { c.send(request()).await.is_ok() }
        })
        .await;
        // The gRPC hop alone: requests the gateway rejects before any
        // upstream call. A send through the gateway costs this hop plus the
        // direct path, which bounds the ratio near 1 / (1 + direct / hop).
        let ch = gateway.channel().await;
        let (hop_rps, _) = throughput(64, window, move || {
            let mut c = MessengerClient::new(ch.clone());
            async move {
                c.send(pb::SendRequest::default()).await.unwrap_err().code()
                    == tonic::Code::InvalidArgument
            }
        })
        .await;
        (direct, through, hop_rps)
    });
    drop(gateway);
    drop(fast);

    println!("## messenger-gateway benchmark\n");
    println!("| measure | direct HTTP (baseline) | through the gateway | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| median latency, 1 caller | {:.1} µs | {:.1} µs | added {:.1} µs ({:.2}×) |",
        micros(d_lat),
        micros(g_lat),
        micros(added),
        g_lat.as_secs_f64() / d_lat.as_secs_f64()
    );
    println!(
        "| median latency of a gRPC call rejected before any upstream call | — | {:.1} µs | {:.2}× the direct call |",
        micros(hop),
        hop.as_secs_f64() / d_lat.as_secs_f64()
    );
    println!(
        "| throughput, 64 callers, {} s | {:.0} sends/s ({} errors) | {:.0} sends/s ({} errors) | {:.2}× |",
        window.as_secs(),
        d_rps,
        d_err,
        g_rps,
        g_err,
        g_rps / d_rps
    );
    println!(
        "| throughput of gRPC calls rejected before any upstream call, 64 callers | — | {:.0} calls/s | bound on the ratio: 1 / (1 + direct / hop) = {:.2}× |",
        hop_rps,
        1.0 / (1.0 + d_rps / hop_rps)
    );

    if std::env::var("BENCH_SKIP_IN_FLIGHT").is_ok() {
        return;
    }
    in_flight();
}

/// Phase 3: 10,000 in flight against a 200 ms upstream, on a fresh gateway;
/// and the same load on a bare tonic server that answers each call after
/// 200 ms (same runtime, allocator and HTTP/2 stack, nothing else): what any
/// tonic server pays per call in flight, the bound under the gateway's figure.
fn in_flight() {
    let rt = runtime(true);
    let n = std::env::var("BENCH_IN_FLIGHT").map_or(10_000, |v| v.parse().unwrap());
    let hold = Gateway::hold(Duration::from_millis(200));
    let (hold_idle, hold_peak, hold_errors, hold_took) = rt.block_on(load_in_flight(&hold, n));
    drop(hold);
    let slow = Upstream::start(Duration::from_millis(200));
    let gateway = Gateway::start(slow.addr);
    let (idle, peak, errors, took) = rt.block_on(load_in_flight(&gateway, n));
    let per_call = |idle: u64, peak: u64| peak.saturating_sub(idle) as f64 / n as f64;
    println!(
        "| {n} sends in flight, 200 ms upstream | bare tonic server holding each call 200 ms: idle RSS {:.1} MiB, peak {:.1} MiB ({hold_errors} errors, {:.2} s), {:.1} KiB per call | gateway: idle RSS {:.1} MiB, peak {:.1} MiB, {errors} errors, upstream saw {} at once, all done in {:.2} s, {:.1} KiB per send | {:.2}× the bare server's memory per call in flight |",
        mib(hold_idle),
        mib(hold_peak),
        hold_took.as_secs_f64(),
        per_call(hold_idle, hold_peak),
        mib(idle),
        mib(peak),
        rt.block_on(slow.peak()),
        took.as_secs_f64(),
        per_call(idle, peak),
        per_call(idle, peak) / per_call(hold_idle, hold_peak).max(0.001)
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Idle and peak RSS (KiB), errors and time for `n` sends at once to
/// `target`, over 50 connections.
async fn load_in_flight(target: &Gateway, n: usize) -> (u64, u64, usize, Duration) {
    let first = target.channel().await;
    let mut warm = MessengerClient::new(first);
    latency_gateway(&mut warm, 20).await;
    let (idle, _) = target.memory_kib();
    let mut channels = Vec::new();
    for _ in 0..50 {
        channels.push(target.channel().await);
    }
    let started = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let mut c = MessengerClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move { c.send(request()).await.is_ok() })
        })
        .collect();
    let mut errors = 0;
    for c in calls {
        if !c.await.unwrap() {
            errors += 1;
        }
    }
    let took = started.elapsed();
    let (_, peak) = target.memory_kib();
    (idle, peak, errors, took)
}

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().unwrap()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
