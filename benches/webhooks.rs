//! Webhook intake: `cargo bench --bench webhooks`.
//!
//! Runs the real gateway binary (release, its SQLite store in a fresh
//! directory, webhooks signed with a known app secret; nothing is sent) with
//! one `Subscribe` stream attached, and measures:
//! 1. the baseline: deliveries with a forged signature, which cross the same
//!    HTTP stack and HMAC check but are refused (401) before any parsing or
//!    storage;
//! 2. signed deliveries stored durably (fsync'd before each 200), one event
//!    per delivery and 50 per delivery, as events per second, counted only
//!    once the subscriber has received every one;
//! 3. the time from a delivery's 200 to its event reaching the subscriber,
//!    one delivery at a time.
//!
//! Knobs: `BENCH_SECONDS` (each throughput phase; default 5),
//! `BENCH_POSTERS` (concurrent posters; default 32).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::webhook;
use serde_json::json;
use support::Launched;

const SECRET: &str = "bench-app-secret";
use support::ACCOUNT;

fn start_gateway() -> Launched {
    // Sends are not measured here; the sandbox would sign with its own
    // secret, so a Graph URL that is never called stands in.
    let never_called = "127.0.0.1:9".parse().unwrap();
    let (mut cmd, data) = support::gateway_command(never_called, &[]);
    cmd.args(["--pace", "off", "--webhook-listen", "127.0.0.1:0"])
        .env("INSTAGRAM_APP_SECRET", SECRET)
        .env("INSTAGRAM_VERIFY_TOKEN", "bench")
        .env("RUST_LOG", "warn");
    Launched::start(&mut cmd, data)
}

/// A delivery of `n` messages with fresh mids, and the mids.
fn delivery(serial: &AtomicU64, n: usize) -> (Vec<u8>, Vec<String>) {
    let mut mids = Vec::with_capacity(n);
    let messaging: Vec<_> = (0..n)
        .map(|_| {
            let i = serial.fetch_add(1, Ordering::Relaxed);
            let mid = format!("bench-mid-{i}");
            mids.push(mid.clone());
            json!({"sender":{"id":"17841400000000000"},"recipient":{"id":ACCOUNT},
                   "timestamp": 1_795_737_600_000_i64 + i as i64,
                   "message":{"mid":mid,"text":"Hello! Is this still available?"}})
        })
        .collect();
    let body = json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":1_795_737_600_000_i64,"messaging":messaging}]});
    (serde_json::to_vec(&body).unwrap(), mids)
}

/// Arrival time of every event the subscriber has seen, by mid.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<String, Instant>>,
    count: AtomicUsize,
}

async fn subscribe(grpc: &str, seen: Arc<Seen>) {
    let mut client = MessengerClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let now = Instant::now();
            if let Some(pb::inbound_event::Event::Message(m)) = event.event {
                seen.at.lock().unwrap().insert(m.mid, now);
            }
            seen.count.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Posts one delivery signed with `key`; the HTTP status (0: no answer).
async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>, key: &str) -> u16 {
    let signature = webhook::sign(key, &body);
    http.post(url)
        .header(webhook::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `posters` concurrent posters for `window`; returns (deliveries answered
/// `expect`, events in them, elapsed until the subscriber saw them all).
async fn load(
    url: &str,
    posters: usize,
    per_delivery: usize,
    window: Duration,
    signed: bool,
    serial: Arc<AtomicU64>,
    seen: &Seen,
) -> (usize, usize, Duration) {
    let http = reqwest::Client::new();
    let seen_before = seen.count.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let (http, url, serial) = (http.clone(), url.to_owned(), serial.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut events) = (0, 0);
            while started.elapsed() < window {
                let (body, _) = delivery(&serial, per_delivery);
                let key = if signed { SECRET } else { "forged" };
                let status = post(&http, &url, body, key).await;
                if status == if signed { 200 } else { 401 } {
                    ok += 1;
                    events += per_delivery;
                }
            }
            (ok, events)
        }));
    }
    let (mut ok, mut events) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        events += e;
    }
    if signed {
        while seen.count.load(Ordering::SeqCst) < seen_before + events {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    (ok, events, started.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is none.
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let posters: usize = std::env::var("BENCH_POSTERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let window = Duration::from_secs(seconds);
    let gateway = start_gateway();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seen = Arc::new(Seen::default());
        subscribe(&gateway.addr, seen.clone()).await;
        let serial = Arc::new(AtomicU64::new(0));
        let url = gateway.webhook_url.clone();

        let (refused, _, took) =
            load(&url, posters, 1, window, false, serial.clone(), &seen).await;
        let baseline = refused as f64 / took.as_secs_f64();
        let (_, single, took) = load(&url, posters, 1, window, true, serial.clone(), &seen).await;
        let single_rate = single as f64 / took.as_secs_f64();
        let (_, batched, took) =
            load(&url, posters / 4, 50, window, true, serial.clone(), &seen).await;
        let batched_rate = batched as f64 / took.as_secs_f64();

        // One delivery at a time: from its 200 to the subscriber.
        let http = reqwest::Client::new();
        let mut gaps = Vec::new();
        for _ in 0..500 {
            let (body, mids) = delivery(&serial, 1);
            assert_eq!(post(&http, &url, body, SECRET).await, 200);
            let acked = Instant::now();
            let arrived = loop {
                if let Some(at) = seen.at.lock().unwrap().get(&mids[0]) {
                    break *at;
                }
                tokio::time::sleep(Duration::from_micros(50)).await;
            };
            // Negative: the subscriber had it before the poster read the 200.
            let gap = if arrived >= acked {
                (arrived - acked).as_secs_f64()
            } else {
                -(acked - arrived).as_secs_f64()
            };
            gaps.push(gap * 1e3);
        }
        gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());

        println!("## webhook intake benchmark ({posters} concurrent posters, {seconds} s per phase, 1 subscriber attached)\n");
        println!("| measure | result | ratio to the baseline |");
        println!("|---|---|---|");
        println!(
            "| baseline: forged deliveries refused (401) before parsing or storage | {baseline:.0} deliveries/s | 1.00× |"
        );
        println!(
            "| signed, 1 event per delivery, stored durably, all seen by the subscriber | {single_rate:.0} events/s | {:.2}× |",
            single_rate / baseline
        );
        println!(
            "| signed, 50 events per delivery ({} posters) | {batched_rate:.0} events/s | {:.2}× |",
            posters / 4,
            batched_rate / baseline
        );
        println!(
            "| from a delivery's 200 to its event at the subscriber, 1 at a time (500) | median {:.2} ms, p99 {:.2} ms, max {:.2} ms | — |",
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.99),
            gaps.last().unwrap()
        );
    });
    drop(gateway);
}
