//! What many accounts cost: `cargo bench --bench accounts`.
//!
//! Every figure is a ratio to a baseline measured in the same run; the
//! gateway is the release binary in its own process.
//! 1. CPU per send (the process's user+system time over the sends) with 100
//!    accounts configured and 64 callers spreading their sends over them,
//!    against the same gateway with one account: a fresh pair each round,
//!    taking turns, the median ratio over the rounds.
//! 2. 1,000 accounts configured: start-up time (from spawn to the banner's
//!    last line) and idle memory, against one account.
//!
//! The upstream answers like Graph for each account's token (`/me`, the
//! token refresh and sends), so the gateway's token checks succeed.
//! Knobs: `BENCH_SENDS` (sends per round; default 20000), `BENCH_ROUNDS`
//! (default 7), `BENCH_STARTS` (start-ups measured; default 5).

mod support;

use support::BIN;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use support::Launched;
use tonic::transport::Channel;

const USER: &str = "17841400000000000";
const FIRST_ID: u64 = 17_841_400_000_000_000;
const CALLERS: usize = 64;

/// Account `i`'s id and token.
fn account(i: usize) -> (String, String) {
    let id = (FIRST_ID + 1 + i as u64).to_string();
    let token = format!("tok-{id}");
    (id, token)
}

/// A Graph stand-in: `/me` answers the token's account, a refresh gives
/// the same token back for 60 days, and every send succeeds.
async fn upstream() -> SocketAddr {
    support::graph_stand_in(|call: support::Call| async move {
        let body = if call.path.ends_with("/me") {
            let id = call.token().strip_prefix("tok-").unwrap_or("");
            format!(r#"{{"user_id":"{id}","username":"u{id}"}}"#)
        } else if call.path == "/refresh_access_token" {
            let token = call
                .query
                .split('&')
                .find_map(|p| p.strip_prefix("access_token="))
                .unwrap_or("");
            format!(r#"{{"access_token":"{token}","token_type":"bearer","expires_in":5184000}}"#)
        } else {
            format!(r#"{{"recipient_id":"{USER}","message_id":"aWdfYmVuY2g"}}"#)
        };
        support::Reply::new(200, body)
    })
    .await
}

/// The gateway process, and what the bench asks of it.
struct Gateway {
    process: Launched,
}

impl Gateway {
    /// The release binary with `accounts` accounts (aliases `a0`, `a1`, …)
    /// in an accounts file, tokens in the environment.
    fn start(upstream: SocketAddr, accounts: usize) -> Self {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("accounts.toml");
        let mut text = String::new();
        let mut cmd = Command::new(BIN);
        for i in 0..accounts {
            let (id, token) = account(i);
            writeln!(
                text,
                "[[account]]\nid = \"{id}\"\nname = \"a{i}\"\ntoken_env = \"BENCH_TOKEN_{i}\"\napi_url = \"http://{upstream}/v25.0\"\n"
            )
            .unwrap();
            cmd.env(format!("BENCH_TOKEN_{i}"), token);
        }
        std::fs::write(&file, text).unwrap();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--pace", "off"])
            .env("MESSENGER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path())
            .arg("--accounts")
            .arg(&file);
        for name in messenger_gateway::accounts::env::VARIABLES {
            cmd.env_remove(name);
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        Self {
            process: Launched::start(&mut cmd, data),
        }
    }

    async fn channel(&self) -> Channel {
        support::channel(&self.process.addr).await
    }

    /// The process's user+system CPU time, from the scheduler's clock.
    fn cpu(&self) -> Duration {
        self.process.cpu()
    }

    /// Waits until every account's token has been checked: the keeper's
    /// start-up round is not part of what is measured.
    async fn settle(&self, accounts: usize) {
        let mut client = MessengerClient::new(self.channel().await);
        for _ in 0..600 {
            let listed = client
                .list_accounts(pb::ListAccountsRequest {})
                .await
                .unwrap()
                .into_inner();
            let valid = listed
                .accounts
                .iter()
                .filter(|a| a.token_state == pb::TokenState::Valid as i32)
                .count();
            if valid == accounts {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the tokens were never all checked");
    }
}

/// `n` sends from `CALLERS` callers; send `k` goes out as account
/// `k % accounts`.
async fn sends(channel: &Channel, accounts: usize, n: usize) {
    support::closed_loop(channel, CALLERS, n, move |k| pb::SendRequest {
        account_id: format!("a{}", k % accounts),
        recipient_id: USER.into(),
        text: "Hello from my app".into(),
        ..Default::default()
    })
    .await
}

async fn cpu_per_send(upstream: SocketAddr) {
    let total = support::env_or("BENCH_SENDS", 20_000) as usize;
    const CHUNK: usize = 500;
    const MANY: usize = 100;
    println!(
        "1. CPU per send, {MANY} accounts vs one ({total} sends a round, {CALLERS} callers spreading them over the accounts;\n   a fresh pair of gateways each round, taking turns every {CHUNK} sends)"
    );
    let mut ratios = Vec::new();
    for round in 1..=support::env_or("BENCH_ROUNDS", 7) {
        let (one, many) = if round % 2 == 0 {
            let one = Gateway::start(upstream, 1);
            (one, Gateway::start(upstream, MANY))
        } else {
            let many = Gateway::start(upstream, MANY);
            (Gateway::start(upstream, 1), many)
        };
        one.settle(1).await;
        many.settle(MANY).await;
        let (one_channel, many_channel) = (one.channel().await, many.channel().await);
        for _ in 0..5 {
            sends(&one_channel, 1, 2000).await;
            sends(&many_channel, MANY, 2000).await;
        }
        let (one_start, many_start) = (one.cpu(), many.cpu());
        for chunk in 0..total / CHUNK {
            for second in [chunk % 2 == 0, chunk % 2 == 1] {
                if second {
                    sends(&many_channel, MANY, CHUNK).await;
                } else {
                    sends(&one_channel, 1, CHUNK).await;
                }
            }
        }
        let per_send = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
        let (one_us, many_us) = (
            per_send(one.cpu() - one_start),
            per_send(many.cpu() - many_start),
        );
        let ratio = many_us / one_us;
        ratios.push(ratio);
        println!(
            "   round {round}: one account {one_us:.2} µs/send, {MANY} accounts {many_us:.2} µs/send, ratio {ratio:.3}"
        );
    }
    println!(
        "   median ratio {MANY} accounts / one: {:.3} (aim: within 1.1)",
        support::median(ratios)
    );
}

async fn start_up(upstream: SocketAddr) {
    const MANY: usize = 1000;
    println!("\n2. {MANY} accounts configured vs one: start-up time and idle memory");
    let (mut times, mut memory) = (Vec::new(), Vec::new());
    for _ in 0..support::env_or("BENCH_STARTS", 5) {
        let one = Gateway::start(upstream, 1);
        let many = Gateway::start(upstream, MANY);
        one.settle(1).await;
        many.settle(MANY).await;
        // Idle: the start-up checks done, nothing sent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (one_rss, many_rss) = (one.process.rss_kib(), many.process.rss_kib());
        println!(
            "   started in {:.0} ms vs {:.0} ms; idle {:.1} MiB vs {:.1} MiB",
            many.process.started_in.as_secs_f64() * 1e3,
            one.process.started_in.as_secs_f64() * 1e3,
            many_rss as f64 / 1024.0,
            one_rss as f64 / 1024.0,
        );
        times.push((
            many.process.started_in.as_secs_f64(),
            one.process.started_in.as_secs_f64(),
        ));
        memory.push(many_rss as f64 - one_rss as f64);
    }
    let many_time = support::median(times.iter().map(|t| t.0).collect());
    let one_time = support::median(times.iter().map(|t| t.1).collect());
    println!(
        "   median start-up {:.0} ms with {MANY} accounts, {:.0} ms with one ({:.1}x; aim: under 1 s)",
        many_time * 1e3,
        one_time * 1e3,
        many_time / one_time
    );
    println!(
        "   median idle memory {:.1} MiB more with {MANY} accounts (aim: under 20 MB more)",
        support::median(memory) / 1024.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = upstream().await;
        cpu_per_send(upstream).await;
        start_up(upstream).await;
    });
}
