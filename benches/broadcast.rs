//! A broadcast over one `SendStream`, paced: `cargo bench --bench broadcast`.
//!
//! 100,000 messages (`BENCH_BROADCAST_MESSAGES`) go over a single stream to
//! the release gateway, paced at its default 300/s, against a Graph stand-in
//! that answers code 613 to any send beyond 300 in the last second for the
//! account (as Graph does). Reported: sends delivered, 613s seen, the rate,
//! and the gateway's memory sampled every 100 ms, against its own idle
//! memory before the stream opened (the aim: under 30 MB above idle
//! throughout, zero 613s, all delivered).

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use support::{Launched, Reply};
use tokio::sync::Mutex;

const USER: &str = "17841400000000000";
/// What Graph allows the account in any one second.
const LIMIT: usize = 300;
const OK: &[u8] = br#"{"recipient_id":"17841400000000000","message_id":"aWdfYnJvYWRjYXN0"}"#;
const RATE_LIMITED: &[u8] = br#"{"error":{"message":"Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613,"fbtrace_id":"Bench613"}}"#;

/// Counts what the stand-in answered.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    rate_limited: AtomicU64,
}

/// A Graph stand-in that allows `LIMIT` sends in any sliding second.
async fn strict_graph(seen: Arc<Seen>) -> SocketAddr {
    let recent = Arc::new(Mutex::new(VecDeque::<Instant>::new()));
    support::graph_stand_in(move |call: support::Call| {
        let (seen, recent) = (seen.clone(), recent.clone());
        async move {
            if !call.path.ends_with("/messages") {
                // The token check at start: not a send, not counted.
                return Reply::new(200, Bytes::from_static(br#"{"id":"17841400000000001"}"#));
            }
            let allowed = {
                let now = Instant::now();
                let mut recent = recent.lock().await;
                while recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    recent.pop_front();
                }
                let allowed = recent.len() < LIMIT;
                if allowed {
                    recent.push_back(now);
                }
                allowed
            };
            if allowed {
                seen.ok.fetch_add(1, Ordering::Relaxed);
                Reply::new(200, Bytes::from_static(OK))
            } else {
                seen.rate_limited.fetch_add(1, Ordering::Relaxed);
                Reply::new(400, Bytes::from_static(RATE_LIMITED))
            }
        }
    })
    .await
}

/// The release binary, its Graph at `upstream`.
fn start_gateway(upstream: SocketAddr) -> Launched {
    let (mut cmd, data) = support::gateway_command(upstream, &[]);
    cmd.env("RUST_LOG", "warn");
    Launched::start(&mut cmd, data)
}

fn main() {
    let messages = support::env_or("BENCH_BROADCAST_MESSAGES", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seen = Arc::new(Seen::default());
        let upstream = strict_graph(seen.clone()).await;
        let gateway = Arc::new(start_gateway(upstream));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = MessengerClient::new(channel);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = gateway.rss_kib();

        let peak = Arc::new(AtomicU64::new(idle));
        let sampler = {
            let (gateway, peak) = (gateway.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(gateway.rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let requests = tokio_stream::iter((0..messages).map(|i| pb::SendRequest {
            recipient_id: USER.into(),
            text: format!("Broadcast message {i}"),
            ..Default::default()
        }));
        let started = Instant::now();
        let mut results = client.send_stream(requests).await.unwrap().into_inner();
        let (mut delivered, mut failed) = (0u64, 0u64);
        let mut first_failure = None;
        while let Some(result) = results.message().await.unwrap() {
            match result.result {
                Some(pb::send_result::Result::Response(_)) => delivered += 1,
                other => {
                    failed += 1;
                    first_failure.get_or_insert(format!("{other:?}"));
                }
            }
            if (delivered + failed) % 10_000 == 0 {
                println!(
                    "   {} results after {:.0} s, peak {:.1} MiB above idle",
                    delivered + failed,
                    started.elapsed().as_secs_f64(),
                    peak.load(Ordering::Relaxed).saturating_sub(idle) as f64 / 1024.0
                );
            }
        }
        let took = started.elapsed();
        sampler.abort();
        let peak = peak.load(Ordering::Relaxed);
        println!(
            "| {messages} messages over one SendStream, paced (default 300/s), Graph allowing {LIMIT} per sliding second | {delivered} delivered, {failed} failed, Graph answered 613 {} times and OK {} times, {:.0} s ({:.1} sends/s) | gateway idle RSS {:.1} MiB, peak {:.1} MiB: **{:.1} MiB above idle** |",
            seen.rate_limited.load(Ordering::Relaxed),
            seen.ok.load(Ordering::Relaxed),
            took.as_secs_f64(),
            delivered as f64 / took.as_secs_f64(),
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(idle) as f64 / 1024.0
        );
        if let Some(f) = first_failure {
            println!("   first failure: {f}");
        }
    });
}
