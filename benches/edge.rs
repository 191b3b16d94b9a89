//! What the safe edge costs: `cargo bench --bench edge`.
//!
//! Every figure is a ratio to a baseline measured in the same run (these
//! machines are shared and noisy); the gateway is the real binary in its
//! own process, so its CPU time and memory are its own.
//! 1. CPU time per send (the gateway process's user+system time over the
//!    sends) with a valid API key, against the same gateway with
//!    authentication off: a fresh pair of processes each round, taking turns
//!    every 500 sends; the median ratio over the rounds is reported.
//! 2. 10,000 open `Subscribe` streams receiving events one at a time: the
//!    gateway's peak memory and threads against its idle figures, and the
//!    delay from a delivery's 200 to its arrival at the last subscriber.
//! 3. 1,000 stalled webhook connections held open while 32 posters send
//!    valid (durably stored) deliveries: deliveries per second against the
//!    same posters with no stalled connections, before and after.
//!
//! Knobs: `BENCH_SECONDS` (each delivery window; default 5),
//! `BENCH_SENDS` (sends per CPU round; default 20000),
//! `BENCH_SUBSCRIBERS` (default 10000); for checking the CPU method,
//! `BENCH_AA` (both gateways without keys: the method's own bias) and
//! `BENCH_HEADER_BOTH` (both get the header: carrying it vs checking it),
//! `BENCH_ROUNDS` (CPU rounds; default 9) and `BENCH_ONLY_CPU` (stop after
//! the CPU rounds).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::webhook;
use sha2::Digest;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use support::ACCOUNT;
const USER: &str = "17841400000000000";
const SECRET: &str = "bench-app-secret";
const KEY: &str = "mgw_bench_key_0123456789abcdefghijklmnopqrstuvwxyz0";
const REPLY: &[u8] = br#"{"recipient_id":"17841400000000000","message_id":"aWdfYmVuY2g"}"#;

/// The release binary, started and read by the benches' one launcher.
struct Gateway {
    process: support::Launched,
}

impl Gateway {
    /// The release binary with a Graph at `upstream`, webhooks on, and
    /// API keys when `keys` is set.
    fn start(upstream: SocketAddr, keys: bool, extra: &[&str]) -> Self {
        Self::start_under(upstream, keys, extra, None)
    }

    /// As `start`, under callgrind writing to `callgrind_out` when given.
    fn start_under(
        upstream: SocketAddr,
        keys: bool,
        extra: &[&str],
        callgrind_out: Option<&std::path::Path>,
    ) -> Self {
        let wrapper = callgrind_out.map(support::callgrind).unwrap_or_default();
        let (mut cmd, data) = support::gateway_command(upstream, &wrapper);
        cmd.args(["--webhook-listen", "127.0.0.1:0", "--pace", "off"])
            .args(extra)
            .env("INSTAGRAM_APP_SECRET", SECRET)
            .env("INSTAGRAM_VERIFY_TOKEN", "bench");
        if keys {
            let file = data.path().join("keys.toml");
            let mut f = std::fs::File::create(&file).unwrap();
            write!(
                f,
                "[[key]]\nid = \"bench\"\nsha256 = \"{}\"\naccounts = [\"*\"]\nallow = [\"send\", \"subscribe\"]\n",
                hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
            )
            .unwrap();
            cmd.arg("--api-keys").arg(file);
        }
        Gateway {
            process: support::Launched::start(&mut cmd, data),
        }
    }

    async fn channel(&self) -> Channel {
        support::channel(&self.process.addr).await
    }

    fn status_field(&self, name: &str) -> u64 {
        self.process.status_figure(name)
    }

    /// The process's CPU time, user and system, as the scheduler counts
    /// it to the nanosecond: `/proc/PID/stat`'s utime and stime are sampled
    /// at each clock tick, which over a round of ~1 s of CPU is ~100
    /// samples and a few per cent of noise by itself.
    fn cpu(&self) -> Duration {
        self.process.cpu()
    }
}

fn send_request(keyed: bool) -> tonic::Request<pb::SendRequest> {
    let mut request = tonic::Request::new(pb::SendRequest {
        recipient_id: USER.into(),
        text: "Hello from my app".into(),
        ..Default::default()
    });
    if keyed {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    }
    request
}

/// `n` sends from 16 callers.
async fn sends(channel: &Channel, keyed: bool, n: usize) {
    support::closed_loop(channel, 16, n, move |_| send_request(keyed)).await
}

fn delivery(serial: &AtomicU64) -> Vec<u8> {
    let n = serial.fetch_add(1, Ordering::SeqCst);
    serde_json::to_vec(
        &serde_json::json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":1,
        "messaging":[{"sender":{"id":USER},"recipient":{"id":ACCOUNT},"timestamp":1,
        "message":{"mid":format!("bench-{n}"),"text":"hi"}}]}]}),
    )
    .unwrap()
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> u16 {
    let signature = webhook::sign(SECRET, &body);
    match http
        .post(url)
        .header(webhook::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Deliveries per second from `posters` concurrent posters over `window`.
async fn deliveries_per_second(url: &str, posters: usize, window: Duration) -> f64 {
    let serial = Arc::new(AtomicU64::new(rand_start()));
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let (url, serial, done) = (url.to_owned(), serial.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < until {
                if post(&http, &url, delivery(&serial)).await == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
}

fn rand_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Instructions the gateway executes (callgrind's total) for `n` sends,
/// start-up and shutdown included, and of those the ones in SHA-256's block
/// function (which valgrind runs in software: it hides SHA-NI).
async fn callgrind_total(upstream: SocketAddr, keyed: bool, n: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("callgrind.out");
    let mut gateway = Gateway::start_under(upstream, keyed, &[], Some(&out));
    let channel = gateway.channel().await;
    sends(&channel, keyed, n).await;
    drop(channel);
    // SIGTERM, so callgrind writes its totals on the way out.
    Command::new("kill")
        .args(["-TERM", &gateway.process.child.id().to_string()])
        .status()
        .unwrap();
    gateway.process.child.wait().unwrap();
    let total = support::callgrind_total(&out);
    let annotated = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg(&out)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let sha = annotated
        .lines()
        .filter(|l| l.contains("sha256::compress256"))
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        })
        .sum();
    (total, sha)
}

/// The same comparison counted in instructions, which a busy machine does
/// not disturb: the slope between two runs of different lengths.
async fn auth_instructions(upstream: SocketAddr) {
    if !support::valgrind_available() {
        println!("   (instructions per send: valgrind not installed, skipped)");
        return;
    }
    let (short, long) = (300, 900);
    let mut per_send = Vec::new();
    let mut sha_per_send = 0.0;
    for keyed in [false, true] {
        let (a, sha_a) = callgrind_total(upstream, keyed, short).await;
        let (b, sha_b) = callgrind_total(upstream, keyed, long).await;
        per_send.push((b - a) as f64 / (long - short) as f64);
        sha_per_send = (sha_b - sha_a) as f64 / (long - short) as f64;
    }
    let (off, on) = (per_send[0], per_send[1]);
    println!(
        "   instructions per send (callgrind, slope of {short} to {long} sends): off {off:.0}, with key {on:.0}, ratio {:.3}",
        on / off
    );
    println!(
        "   of which SHA-256 in software (valgrind hides SHA-NI): {sha_per_send:.0}; without it: ratio {:.3}",
        (on - sha_per_send) / off
    );
}

async fn auth_cost(upstream: SocketAddr) {
    let total = support::env_or("BENCH_SENDS", 20_000) as usize;
    const CHUNK: usize = 500;
    println!(
        "\n1. CPU per send, API key checked vs authentication off ({total} sends each a round, 16 callers;\n   a fresh pair of gateways each round, taking turns every {CHUNK} sends so both see the same machine)"
    );
    // BENCH_AA=1: both gateways without keys, to see the two processes'
    // own difference (an A/A test of the method).
    let aa = std::env::var("BENCH_AA").is_ok();
    // BENCH_HEADER_BOTH=1: the gateway without keys gets the header too, to
    // tell the cost of carrying it from the cost of checking it.
    let header_both = std::env::var("BENCH_HEADER_BOTH").is_ok();
    let mut ratios = Vec::new();
    for round in 1..=support::env_or("BENCH_ROUNDS", 9) {
        // A fresh pair of processes each round, started in turns: one
        // process's luck of layout (where its code, heap and stacks fall in
        // the caches) made two gateways without keys differ by up to 5 % for
        // as long as they ran, which a pair kept for every round repeats.
        let (off, on) = if round % 2 == 0 {
            let off = Gateway::start(upstream, false, &[]);
            (off, Gateway::start(upstream, !aa, &[]))
        } else {
            let on = Gateway::start(upstream, !aa, &[]);
            (Gateway::start(upstream, false, &[]), on)
        };
        let (off_channel, on_channel) = (off.channel().await, on.channel().await);
        // Warm up, taking turns as the rounds do: connections, caches, the
        // allocator's arenas. (With 2,000 sends each, the first rounds still
        // ran up to 25 % apart, then settled.)
        for _ in 0..10 {
            sends(&off_channel, header_both, 2000).await;
            sends(&on_channel, !aa, 2000).await;
        }
        // Each process's whole CPU time over the round, its quiet turns
        // included: the work a burst of sends leaves behind (log lines
        // written, connections tidied, workers winding down) runs after its
        // last answer, and a reading taken at each turn's end would miss it.
        let (off_start, on_start) = (off.cpu(), on.cpu());
        for chunk in 0..total / CHUNK {
            // Each goes first half the time.
            for second in [chunk % 2 == 0, chunk % 2 == 1] {
                let channel = if second { &on_channel } else { &off_channel };
                sends(channel, (second && !aa) || header_both, CHUNK).await;
            }
        }
        let (off_cpu, on_cpu) = (off.cpu() - off_start, on.cpu() - on_start);
        let (off_us, on_us) = (
            off_cpu.as_secs_f64() * 1e6 / total as f64,
            on_cpu.as_secs_f64() * 1e6 / total as f64,
        );
        let ratio = on_us / off_us;
        ratios.push(ratio);
        println!(
            "   round {round}: off {off_us:.2} µs/send, with key {on_us:.2} µs/send, ratio {ratio:.3}"
        );
    }
    println!(
        "   median ratio with key / off: {:.3} (aim: within 1.03)",
        support::median(ratios)
    );
    // The check itself, in this process: what the key adds at most, beside
    // the noise of the end-to-end rounds.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[key]]\nid = \"bench\"\nsha256 = \"{}\"\naccounts = [\"*\"]\nallow = [\"send\"]\n",
            hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
        ),
    )
    .unwrap();
    let keys = messenger_gateway::edge::auth::Keys::from_file(file).unwrap();
    let open = messenger_gateway::edge::auth::Keys::open();
    let time = |keys: &messenger_gateway::edge::auth::Keys, bearer: Option<&str>| {
        let n = 1_000_000;
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                keys.authenticate(std::hint::black_box(bearer), &[])
                    .unwrap(),
            );
        }
        started.elapsed() / n
    };
    let checked = time(&keys, Some(KEY));
    let off = time(&open, None);
    println!(
        "   the check alone: {} ns with a key, {} ns with authentication off",
        checked.as_nanos(),
        off.as_nanos()
    );
}

async fn many_subscribers(upstream: SocketAddr) {
    let n = support::env_or("BENCH_SUBSCRIBERS", 10_000) as usize;
    println!("\n2. {n} Subscribe streams receiving events");
    let gateway = Gateway::start(upstream, false, &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, idle_threads) = (
        gateway.status_field("VmRSS:"),
        gateway.status_field("Threads:"),
    );
    const EVENTS: usize = 20;
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..=EVENTS).map(|_| AtomicUsize::new(0)).collect());
    let opened = Arc::new(AtomicUsize::new(0));
    let per_connection = 100;
    for _ in 0..n.div_ceil(per_connection) {
        let channel = gateway.channel().await;
        for _ in 0..per_connection {
            let (received, opened) = (received.clone(), opened.clone());
            let mut client = MessengerClient::new(channel.clone());
            tokio::spawn(async move {
                let mut stream = client
                    .subscribe(pb::SubscribeRequest {
                        after: 0,
                        ..Default::default()
                    })
                    .await
                    .expect("subscribed")
                    .into_inner();
                opened.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(event)) = stream.next().await {
                    if let Some(c) = received.get(event.seq as usize) {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    }
    while opened.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut peak_threads = gateway.status_field("Threads:");
    let http = reqwest::Client::new();
    let serial = AtomicU64::new(1);
    let (mut delays, mut from_post) = (Vec::new(), Vec::new());
    for seq in 1..=EVENTS {
        let posted = Instant::now();
        assert_eq!(
            post(&http, &gateway.process.webhook_url, delivery(&serial)).await,
            200
        );
        let acknowledged = Instant::now();
        while received[seq].load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
            peak_threads = peak_threads.max(gateway.status_field("Threads:"));
        }
        delays.push(acknowledged.elapsed().as_secs_f64() * 1e3);
        from_post.push(posted.elapsed().as_secs_f64() * 1e3);
    }
    let peak_rss = gateway.status_field("VmHWM:");
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let (sorted, from_post) = (sorted(delays), sorted(from_post));
    println!(
        "   gateway memory: idle {:.1} MiB, peak {:.1} MiB ({:.1} MB; aim under 150 MB), {:.1}x idle",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        peak_rss as f64 * 1024.0 / 1e6,
        peak_rss as f64 / idle_rss as f64
    );
    println!("   gateway threads: idle {idle_threads}, peak {peak_threads} (aim under 40)");
    println!(
        "   200 to last of {n} subscribers: median {:.1} ms, max {:.1} ms over {EVENTS} events",
        sorted[EVENTS / 2],
        sorted[EVENTS - 1]
    );
    println!(
        "   (from the POST's start to the last subscriber: median {:.1} ms, max {:.1} ms; the\n   200 follows the commit that publishes the event, so most subscribers have it by then)",
        from_post[EVENTS / 2],
        from_post[EVENTS - 1]
    );
}

async fn stalled_connections(upstream: SocketAddr) {
    let window = Duration::from_secs(support::env_or("BENCH_SECONDS", 5));
    println!(
        "\n3. 32 posters of valid deliveries, with and without 1,000 stalled webhook connections"
    );
    // The stalled connections all come from this one address here; in the
    // field they come from many, so the per-address cap is lifted.
    let gateway = Gateway::start(upstream, false, &["--max-connections-per-ip", "4096"]);
    let url = gateway.process.webhook_url.clone();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches(webhook::PATH)
        .to_owned();
    let clean_before = deliveries_per_second(&url, 32, window).await;
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Half of them send half a request; the other half nothing at all.
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            s.write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    let with_stalled = deliveries_per_second(&url, 32, window).await;
    drop(stalled);
    let clean_after = deliveries_per_second(&url, 32, window).await;
    let baseline = (clean_before + clean_after) / 2.0;
    println!(
        "   without: {clean_before:.0} then {clean_after:.0} deliveries/s; with 1,000 stalled: {with_stalled:.0} deliveries/s"
    );
    println!(
        "   ratio with / without: {:.2} (aim: at least 0.8)",
        with_stalled / baseline
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = support::fixed_upstream(REPLY).await;
        auth_cost(upstream).await;
        if std::env::var("BENCH_ONLY_CPU").is_ok() {
            return;
        }
        auth_instructions(upstream).await;
        many_subscribers(upstream).await;
        stalled_connections(upstream).await;
    });
}
