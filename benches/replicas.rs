//! Replicas on PostgreSQL against one gateway on SQLite:
//! `cargo bench --bench replicas`.
//!
//! Starts a throwaway PostgreSQL of its own (Debian's binaries, fsync on,
//! as a production server) and the release binary, and measures in one run:
//! 1. single-event webhook deliveries per second, durably stored and all
//!    seen by one attached subscriber: one gateway on SQLite, one replica
//!    on PostgreSQL, and two replicas (posters alternate between them, the
//!    subscriber on one);
//! 2. the median latency a `request_id` adds to a send (the same send
//!    without one is the baseline), on SQLite and on PostgreSQL;
//! 3. how long a window opened through one replica takes to be known to
//!    the other (the aim is 100 ms).
//!
//! Knobs: `BENCH_SECONDS` (each throughput phase; default 5),
//! `BENCH_POSTERS` (default 32), `BENCH_SENDS` (sends per latency sample;
//! default 500).

#[allow(dead_code)]
#[path = "../tests/gateway/support/cluster.rs"]
mod cluster;
mod support;

use support::Launched;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::webhook;
use serde_json::json;
use tonic::transport::Channel;

const SECRET: &str = "bench-app-secret";
use support::ACCOUNT;

/// The release binary, pacing off, on `store` (`None`: SQLite in a fresh
/// directory), with its Graph at `upstream`.
fn start_gateway(store: Option<&str>, upstream: SocketAddr) -> Launched {
    let (mut cmd, data) = support::gateway_command(upstream, &[]);
    cmd.args(["--pace", "off", "--webhook-listen", "127.0.0.1:0"])
        .env("INSTAGRAM_APP_SECRET", SECRET)
        .env("INSTAGRAM_VERIFY_TOKEN", "bench")
        // The fixed-answer Graph cannot answer the token keeper's checks.
        .env("RUST_LOG", "error");
    if let Some(url) = store {
        cmd.env("MESSENGER_GATEWAY_STORE", url);
    }
    Launched::start(&mut cmd, data)
}

/// One message from `user` with a fresh mid, signed.
fn delivery(serial: &AtomicU64, user: &str) -> (Vec<u8>, String) {
    let i = serial.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let body = json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":now,"messaging":[
        {"sender":{"id":user},"recipient":{"id":ACCOUNT},"timestamp":now,
         "message":{"mid":format!("bench-mid-{i}"),"text":"Hello! Is this still available?"}}]}]});
    let body = serde_json::to_vec(&body).unwrap();
    let signature = webhook::sign(SECRET, &body);
    (body, signature)
}

/// Counts what a subscriber on `grpc` receives.
async fn subscriber(grpc: &str) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut client = MessengerClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut stream = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(_)) = stream.message().await {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    seen
}

/// The machine's busy and total CPU ticks so far (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().sum();
    (total - idle, total)
}

/// Single-event deliveries per second for `window`, posters alternating
/// over `urls`, counted once `seen` has them all; and how busy the
/// machine's CPUs were meanwhile (0–1).
async fn intake(
    urls: &[String],
    posters: usize,
    window: Duration,
    seen: &AtomicUsize,
) -> (f64, f64) {
    let ticks = machine_ticks();
    // Fresh mids across phases: a repeated one is a duplicate, not stored.
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let http = reqwest::Client::new();
    let before = seen.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for poster in 0..posters {
        let (http, url) = (http.clone(), urls[poster % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut taken = 0;
            while started.elapsed() < window {
                let (body, signature) = delivery(&SERIAL, "17841400000000000");
                let status = http
                    .post(&url)
                    .header(webhook::SIGNATURE_HEADER, signature)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 200 {
                    taken += 1;
                }
            }
            taken
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += t.await.unwrap();
    }
    while seen.load(Ordering::SeqCst) < before + taken {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let now = machine_ticks();
    let busy = (now.0 - ticks.0) as f64 / (now.1 - ticks.1).max(1) as f64;
    (taken as f64 / started.elapsed().as_secs_f64(), busy)
}

/// Median latency in ms of `n` sends one at a time, with a fresh
/// `request_id` each or none.
async fn send_latency(client: &mut MessengerClient<Channel>, n: usize, with_id: bool) -> f64 {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let request = pb::SendRequest {
            account_id: ACCOUNT.into(),
            recipient_id: "17841400000000000".into(),
            text: "Your order has shipped".into(),
            request_id: if with_id {
                format!("bench-{}", SERIAL.fetch_add(1, Ordering::Relaxed))
            } else {
                String::new()
            },
            ..Default::default()
        };
        let started = Instant::now();
        client.send(request).await.expect("sent");
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    support::median(took)
}

/// Added latency of a `request_id` (ms): the median of alternating rounds
/// with and without, so drift on a shared machine falls on both.
async fn added_by_request_id(grpc: &str, sends: usize) -> (f64, f64) {
    let mut client = MessengerClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    send_latency(&mut client, 50, true).await; // warm up
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(send_latency(&mut client, sends / 5, false).await);
        with.push(send_latency(&mut client, sends / 5, true).await);
    }
    (support::median(without), support::median(with))
}

/// Time from a delivery's 200 at `a` until `b` reports the window open,
/// for a person who never wrote before; median and max over `n`, in ms.
async fn window_reach(a: &Launched, b: &Launched, n: usize) -> (f64, f64) {
    let http = reqwest::Client::new();
    let mut client = MessengerClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();
    let serial = AtomicU64::new(1_000_000);
    let mut took = Vec::new();
    for i in 0..n {
        let user = format!("1784149{i:08}");
        let (body, signature) = delivery(&serial, &user);
        let status = http
            .post(&a.webhook_url)
            .header(webhook::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        let acked = Instant::now();
        loop {
            let window = client
                .get_window(pb::GetWindowRequest {
                    recipient_id: user.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if window.state == pb::WindowState::Open as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        took.push(acked.elapsed().as_secs_f64() * 1e3);
    }
    let max = took.iter().cloned().fold(0.0, f64::max);
    (support::median(took), max)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = support::env_or("BENCH_SECONDS", 5);
    let posters = support::env_or("BENCH_POSTERS", 32) as usize;
    let sends = support::env_or("BENCH_SENDS", 500) as usize;
    let window = Duration::from_secs(seconds);
    let Some(postgres) = cluster::Cluster::start(&[], &[]) else {
        println!("no PostgreSQL binaries (apt-get install postgresql): nothing measured");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = support::fixed_upstream(
            br#"{"recipient_id":"17841400000000000","message_id":"m_bench"}"#,
        )
        .await;
        let url = postgres.url();

        let sqlite = start_gateway(None, upstream);
        let seen = subscriber(&sqlite.addr).await;
        let (sqlite_rate, sqlite_busy) = intake(std::slice::from_ref(&sqlite.webhook_url), posters, window, &seen).await;
        let (sqlite_plain, sqlite_with_id) = added_by_request_id(&sqlite.addr, sends).await;
        drop(sqlite);

        let a = start_gateway(Some(&url), upstream);
        let seen = subscriber(&a.addr).await;
        let (pg_rate, pg_busy) = intake(std::slice::from_ref(&a.webhook_url), posters, window, &seen).await;
        let (pg_plain, pg_with_id) = added_by_request_id(&a.addr, sends).await;

        let b = start_gateway(Some(&url), upstream);
        let both = [a.webhook_url.clone(), b.webhook_url.clone()];
        let (two_rate, two_busy) = intake(&both, posters, window, &seen).await;
        let (reach_median, reach_max) = window_reach(&a, &b, 100).await;

        let (sqlite_added, pg_added) = (sqlite_with_id - sqlite_plain, pg_with_id - pg_plain);
        println!("## replicas benchmark ({posters} posters, {seconds} s per phase, 1 subscriber attached; PostgreSQL with fsync on, on this machine)\n");
        println!("| measure | result | ratio |");
        println!("|---|---|---|");
        println!("| single-event deliveries, durable, all seen: one gateway on SQLite (baseline) | {sqlite_rate:.0}/s (CPUs {:.0}% busy) | 1.00× |", sqlite_busy * 100.0);
        println!(
            "| the same, one replica on PostgreSQL | {pg_rate:.0}/s (CPUs {:.0}% busy) | {:.2}× SQLite |",
            pg_busy * 100.0,
            pg_rate / sqlite_rate
        );
        println!(
            "| the same, two replicas on PostgreSQL (posters alternate) | {two_rate:.0}/s (CPUs {:.0}% busy) | {:.2}× one replica |",
            two_busy * 100.0,
            two_rate / pg_rate
        );
        println!(
            "| median latency a request_id adds to a send: SQLite (baseline) | {sqlite_added:.3} ms (sends {sqlite_plain:.3} → {sqlite_with_id:.3} ms) | 1.00× |"
        );
        println!(
            "| the same on PostgreSQL | {pg_added:.3} ms (sends {pg_plain:.3} → {pg_with_id:.3} ms) | {:.2}× SQLite |",
            pg_added / sqlite_added
        );
        println!(
            "| a window opened through one replica, known to the other (100) | median {reach_median:.2} ms, max {reach_max:.2} ms | aim ≤ 100 ms |"
        );
        drop((a, b));
    });
}
