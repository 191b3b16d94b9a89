//! What a send costs the gateway, against the least a gRPC-to-Graph hop can
//! cost: `cargo bench --bench efficiency`.
//!
//! Three servers take the same `Send` load (64 callers, a zero-latency Graph
//! stand-in), each in its own process, so each one's CPU time is its own:
//! 1. the gateway (release binary, metrics on, `--pace off`), and beside
//!    it the same with `--record-sent=false`, for what recording each send
//!    as an outbound event costs;
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

use support::{Baseline, LISTENING, Launched};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messenger_gateway::edge::grpc::pb;
use tonic::transport::Channel;

const ROLE: &str = "BENCH_EFFICIENCY_ROLE";
const UPSTREAM: &str = "BENCH_EFFICIENCY_UPSTREAM";
use support::ACCOUNT;
const USER: &str = "17841400000000000";
const CALLERS: usize = 64;
const REPLY: &[u8] = br#"{"recipient_id":"17841400000000000","message_id":"aWdfYmVuY2g"}"#;

/// The allocator of a role process: the system's (glibc), as a default
/// minimal handler has it, or, with `BENCH_MIMALLOC` in the environment,
/// mimalloc, as the gateway has it, so the handler can also be compared on
/// the same allocator. Chosen at the first allocation, from the environment
/// the process started with, and never changed: every block is freed by the
/// allocator that made it.
struct RoleAllocator;

static USE_MIMALLOC: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn mimalloc_chosen() -> bool {
    match USE_MIMALLOC.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name; it does not allocate.
            let chosen = unsafe { !libc::getenv(c"BENCH_MIMALLOC".as_ptr()).is_null() };
            USE_MIMALLOC.store(if chosen { 2 } else { 1 }, Ordering::Relaxed);
            chosen
        }
        1 => false,
        _ => true,
    }
}

// SAFETY: every call goes to one of two sound allocators, the same one for
// the whole life of the process.
unsafe impl std::alloc::GlobalAlloc for RoleAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if mimalloc_chosen() {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        } else {
            unsafe { std::alloc::System.alloc(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if mimalloc_chosen() {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        } else {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if mimalloc_chosen() {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        } else {
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if mimalloc_chosen() {
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        } else {
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: RoleAllocator = RoleAllocator;

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
        let post = role
            .starts_with("minimal")
            .then(|| (reqwest::Client::new(), url));
        let baseline = Baseline {
            post,
            hold: Duration::ZERO,
        };
        baseline.serve().await;
    });
}

/// A baseline role, past its banner.
fn start_role(mut cmd: Command) -> Launched {
    Launched::start_until(cmd.stderr(Stdio::null()), None, LISTENING, false)
}

fn role(name: &str, upstream: SocketAddr, callgrind_out: Option<&std::path::Path>) -> Command {
    let wrapper = callgrind_out.map(support::callgrind).unwrap_or_default();
    let mut cmd = support::wrapped(&std::env::current_exe().unwrap(), &wrapper);
    cmd.env(ROLE, name).env(UPSTREAM, upstream.to_string());
    if name.ends_with("mimalloc") {
        cmd.env("BENCH_MIMALLOC", "1");
    } else {
        cmd.env_remove("BENCH_MIMALLOC");
    }
    cmd
}

async fn sends(channel: &Channel, n: usize) {
    support::closed_loop(channel, CALLERS, n, |_| pb::SendRequest {
        recipient_id: USER.into(),
        text: "Hello from my app".into(),
        ..Default::default()
    })
    .await
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
        if std::env::var("BENCH_ONLY_INSTRUCTIONS").is_ok() {
            return instructions(upstream).await;
        }
        let servers = [
            (
                "gateway",
                {
                    let (mut cmd, data) = gateway(upstream, None);
                    Launched::start(cmd.stderr(Stdio::null()), data)
                },
            ),
            (
                "gateway, recording off",
                {
                    let (mut cmd, data) = gateway(upstream, None);
                    cmd.arg("--record-sent=false");
                    Launched::start(cmd.stderr(Stdio::null()), data)
                },
            ),
            (
                "minimal handler",
                start_role(role("minimal", upstream, None)),
            ),
            (
                "answer at once",
                start_role(role("answer", upstream, None)),
            ),
            (
                "minimal handler on mimalloc",
                start_role(role("minimal-mimalloc", upstream, None)),
            ),
        ];
        let mut poster_cmd = role("poster", upstream, None);
        poster_cmd.stdin(Stdio::piped());
        poster_cmd.stderr(Stdio::null());
        let mut poster = Launched::start_until(&mut poster_cmd, None, "ready", true);
        let mut poster_in = poster.child.stdin.take().unwrap();

        let channels = [
            support::channel(&servers[0].1.addr).await,
            support::channel(&servers[1].1.addr).await,
            support::channel(&servers[2].1.addr).await,
            support::channel(&servers[3].1.addr).await,
            support::channel(&servers[4].1.addr).await,
        ];
        for channel in &channels {
            sends(channel, 4000).await;
        }
        let total = support::env_or("BENCH_SENDS", 20_000) as usize;
        println!(
            "CPU per send, {CALLERS} callers, {total} sends per server a round, zero-latency Graph stand-in"
        );
        let mut per_send: [Vec<f64>; 6] = Default::default();
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
            let done = tokio::task::block_in_place(|| poster.next_line());
            assert_eq!(done.as_deref(), Some("done"));
            let us = (poster.cpu() - before).as_secs_f64() * 1e6 / total as f64;
            per_send[5].push(us);
            println!("{line} one reqwest POST {us:.1} µs");
        }
        let [gw, unrecorded, minimal, answer, minimal_mi, post] = per_send.map(support::median);
        let floor = answer + post;
        println!(
            "   medians: gateway {gw:.1} µs, minimal handler {minimal:.1} µs (on mimalloc {minimal_mi:.1} µs), answer at once {answer:.1} µs, one POST {post:.1} µs"
        );
        println!(
            "   gateway / minimal handler: {:.2} (aim: at most 1.0); / the same handler on the gateway's allocator: {:.2}",
            gw / minimal,
            gw / minimal_mi
        );
        println!(
            "   recording each send as an outbound event: gateway / the gateway with --record-sent=false: {:.2} ({unrecorded:.1} µs off; aim: within 1.10)",
            gw / unrecorded
        );
        println!(
            "   gateway / floor (answer at once + one POST = {floor:.1} µs): {:.2} (aim: at most 1.15)",
            gw / floor
        );
        drop(servers);
        drop(poster);
        if std::env::var("BENCH_SKIP_INSTRUCTIONS").is_err() {
            instructions(upstream).await;
        }
    });
}

/// The gateway (release binary, metrics on, pacing off) with its Graph at
/// `upstream`, and the data directory it keeps.
fn gateway(
    upstream: SocketAddr,
    callgrind_out: Option<&std::path::Path>,
) -> (Command, tempfile::TempDir) {
    let wrapper = callgrind_out.map(support::callgrind).unwrap_or_default();
    let (mut cmd, data) = support::gateway_command(upstream, &wrapper);
    cmd.args(["--pace", "off"]);
    // BENCH_GATEWAY_RUST_LOG=warn: the gateway without its line per send.
    if let Ok(level) = std::env::var("BENCH_GATEWAY_RUST_LOG") {
        cmd.env("RUST_LOG", level);
    }
    (cmd, data)
}

/// Instructions per send, which a busy machine does not disturb: each
/// server runs under callgrind twice, for a short and a long closed-loop
/// load, and the slope (Δinstructions ÷ Δsends) cancels start-up and
/// shutdown. `BENCH_CALLGRIND_KEEP=DIR` keeps the profiles there.
async fn instructions(upstream: SocketAddr) {
    if !support::valgrind_available() {
        println!("   (instructions per send: valgrind not installed, skipped)");
        return;
    }
    let (short, long) = (
        support::env_or("BENCH_CALLGRIND_SHORT", 300) as usize,
        support::env_or("BENCH_CALLGRIND_LONG", 900) as usize,
    );
    let keep = std::env::var("BENCH_CALLGRIND_KEEP").ok();
    let dir = tempfile::tempdir().unwrap();
    let dir = keep
        .as_deref()
        .map(std::path::Path::new)
        .unwrap_or(dir.path());
    let mut per_send = Vec::new();
    for name in [
        "gateway",
        "minimal",
        "answer",
        "minimal-mimalloc",
        "gateway-unrecorded",
    ] {
        let mut totals = Vec::new();
        for n in [short, long] {
            let out = dir.join(format!("callgrind.{name}.{n}"));
            let mut process = match name {
                "gateway" | "gateway-unrecorded" => {
                    let (mut cmd, data) = gateway(upstream, Some(&out));
                    if name == "gateway-unrecorded" {
                        cmd.arg("--record-sent=false");
                    }
                    Launched::start(cmd.stderr(Stdio::null()), data)
                }
                _ => start_role(role(name, upstream, Some(&out))),
            };
            let channel = support::channel(&process.addr).await;
            sends(&channel, n).await;
            drop(channel);
            // SIGTERM, so callgrind writes its totals on the way out.
            process.terminate(Duration::from_secs(600));
            totals.push(support::callgrind_total(&out));
        }
        let more = totals[1]
            .checked_sub(totals[0])
            .expect("the long run costs more than the short one");
        per_send.push(more as f64 / (long - short) as f64);
    }
    let [gw, minimal, answer, minimal_mi, unrecorded] = [
        per_send[0],
        per_send[1],
        per_send[2],
        per_send[3],
        per_send[4],
    ];
    println!(
        "   instructions per send (callgrind, slope of {short} to {long} sends): gateway {gw:.0}, minimal handler {minimal:.0} (on mimalloc {minimal_mi:.0}), answer at once {answer:.0}"
    );
    println!(
        "   gateway / minimal handler, instructions: {:.3} (aim: at most 1.0); / on the same allocator: {:.3}",
        gw / minimal,
        gw / minimal_mi
    );
    println!(
        "   recording each send as an outbound event, instructions: gateway / --record-sent=false ({unrecorded:.0}): {:.3} (aim: within 1.10)",
        gw / unrecorded
    );
}
