//! The command line: `messenger-gateway serve`, logging, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use crate::clock::SystemClock;
use crate::delivery::{Deliverer, DeliveryPolicy};
use crate::graph::{Account, GraphClient};
use crate::inbox::Inbox;
use crate::outbox::{Outbox, OutboxPolicy};
use crate::server::{ServeOptions, WebhookListener, serve};
use crate::store::SqliteStore;
use crate::webhook::{self, WebhookSecrets};
use crate::window::WindowPolicy;
use crate::{config, sandbox};

#[derive(Parser, Debug)]
#[command(
    name = "messenger-gateway",
    version,
    about = "A gRPC gateway for sending Instagram direct messages"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve messenger.v1.Messenger. Credentials come from the INSTAGRAM_*
    /// variables; with none set, the built-in sandbox stands in for Graph.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address for gRPC.
    #[arg(
        long,
        env = "MESSENGER_GATEWAY_LISTEN",
        default_value = "0.0.0.0:50051"
    )]
    listen: SocketAddr,
    /// Send to the built-in sandbox even if credentials are set.
    #[arg(long, conflicts_with = "no_sandbox")]
    sandbox: bool,
    /// Never fall back to the sandbox: without credentials, refuse to start.
    /// Use this in production.
    #[arg(long, env = "MESSENGER_GATEWAY_NO_SANDBOX")]
    no_sandbox: bool,
    /// Address of the sandbox's HTTP endpoint (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    sandbox_listen: SocketAddr,
    /// Graph calls per send, retries included (1 disables retries).
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    max_attempts: u32,
    /// The most Graph calls under way at once; further sends wait their turn
    /// (bounded by their deadline). Bounds sockets and memory when Graph is slow.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_GRAPH_CALLS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_graph_calls: u32,
    /// The longest one Graph call may take, such as 10s or 2500ms.
    #[arg(long, env = "MESSENGER_GATEWAY_UPSTREAM_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
    /// How long sends in flight may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "MESSENGER_GATEWAY_SHUTDOWN_GRACE", default_value = "15s",
          value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// HTTP address for Instagram's webhooks (path /webhook).
    #[arg(
        long,
        env = "MESSENGER_GATEWAY_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    webhook_listen: SocketAddr,
    /// Where events, windows and request ids are kept (created if missing).
    #[arg(long, env = "MESSENGER_GATEWAY_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Whether a person the gateway never heard from is sent to (lenient) or
    /// refused without calling Graph (strict).
    #[arg(long, env = "MESSENGER_GATEWAY_WINDOW_POLICY", value_enum, default_value_t = WindowPolicy::Lenient)]
    window_policy: WindowPolicy,
    /// Between 24 hours and 7 days after the person's last message, send
    /// with the HUMAN_AGENT tag instead of refusing (needs Meta's App Review).
    #[arg(long, env = "MESSENGER_GATEWAY_AUTO_HUMAN_AGENT")]
    auto_human_agent: bool,
    /// How long inbound events are kept for Subscribe, such as 7d or 36h.
    #[arg(long, env = "MESSENGER_GATEWAY_EVENT_RETENTION", default_value = "7d",
          value_parser = humantime::parse_duration)]
    event_retention: Duration,
    /// Log lines as text for people or JSON for machines.
    #[arg(long, env = "MESSENGER_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The binary's whole body: parse, set up, serve, and say why if it stops.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    // Held to the end so the last log lines are flushed.
    let _log_guard = init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("messenger-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// Log lines go to stderr from a background thread that batches writes, so a
/// send never waits on the terminal or a pipe. Not lossy: under a flood the
/// writer applies back-pressure rather than dropping a send's line.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

async fn run(args: ServeArgs) -> ExitCode {
    // Each send in flight holds a connection to Graph; the default soft limit
    // of open files would cap concurrency long before memory does.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let from_env = if args.sandbox {
        Ok(None)
    } else {
        config::account_from_env(|name| std::env::var(name).ok())
    };
    let secrets = match config::webhook_secrets_from_env(|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("messenger-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let uses_sandbox = matches!(from_env, Ok(None)) && !args.no_sandbox;
    // The sandbox signs its webhooks; it needs secrets even if none are set.
    let secrets = match secrets {
        None if uses_sandbox => Some(WebhookSecrets {
            app_secret: format!("sandbox-secret-{:032x}", rand::random::<u128>()),
            verify_token: format!("sandbox-verify-{:016x}", rand::random::<u64>()),
        }),
        other => other,
    };
    let webhook_listener = match &secrets {
        None => None,
        Some(_) => match TcpListener::bind(args.webhook_listen).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "messenger-gateway: cannot listen for webhooks on {}: {e}",
                    args.webhook_listen
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let webhook_url = webhook_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| {
            let host = if a.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                a.ip().to_string()
            };
            format!("http://{host}:{}{}", a.port(), webhook::PATH)
        });
    let (account, sandbox) = match from_env {
        Err(e) => {
            eprintln!("messenger-gateway: {e}");
            return ExitCode::from(2);
        }
        Ok(Some(account)) => (account, None),
        Ok(None) if args.no_sandbox => {
            eprintln!(
                "messenger-gateway: invalid configuration: no credentials: set INSTAGRAM_ACCESS_TOKEN and INSTAGRAM_ACCOUNT_ID or INSTAGRAM_USER_ID (--no-sandbox forbids the sandbox)"
            );
            return ExitCode::from(2);
        }
        Ok(None) => match sandbox::start(
            args.sandbox_listen,
            webhook_url
                .clone()
                .zip(secrets.as_ref().map(|s| s.app_secret.clone())),
        )
        .await
        {
            Ok(running) => (running.account.clone(), Some(running)),
            Err(e) => {
                eprintln!(
                    "messenger-gateway: cannot start the sandbox on {}: {e}",
                    args.sandbox_listen
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("messenger-gateway: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(args.listen);
    let store = match SqliteStore::open(&args.data_dir) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!(
                "messenger-gateway: cannot open the store in {}: {e}",
                args.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let inbox = match Inbox::new(store, Arc::new(SystemClock)).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("messenger-gateway: cannot read the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(
        inbox
            .clone()
            .prune_periodically(args.event_retention, Duration::from_secs(600)),
    );
    if secrets.is_none() {
        tracing::warn!(
            "INSTAGRAM_APP_SECRET and INSTAGRAM_VERIFY_TOKEN are not set: webhooks are off, so the gateway learns no windows and Subscribe stays empty"
        );
    }
    announce(local, webhook_url.as_deref(), &account, sandbox.as_ref());

    if args.shutdown_grace <= args.upstream_timeout {
        tracing::warn!(
            grace_ms = args.shutdown_grace.as_millis() as u64,
            upstream_timeout_ms = args.upstream_timeout.as_millis() as u64,
            "the shutdown grace period is not longer than one Graph call may take: a send in flight at shutdown may be abandoned unreported"
        );
    }
    let policy = DeliveryPolicy {
        max_concurrent_calls: args.max_graph_calls as usize,
        max_attempts: args.max_attempts,
        upstream_timeout: args.upstream_timeout,
        ..DeliveryPolicy::default()
    };
    let connect_timeout = args.upstream_timeout.min(Duration::from_secs(5));
    let deliverer = Deliverer::new(GraphClient::new(connect_timeout), account, policy);
    let outbox = Outbox::new(
        deliverer,
        inbox,
        OutboxPolicy {
            window: args.window_policy,
            auto_human_agent: args.auto_human_agent,
        },
    );
    let options = ServeOptions {
        shutdown_grace: args.shutdown_grace,
    };
    let webhooks = webhook_listener
        .zip(secrets)
        .map(|(listener, secrets)| WebhookListener { listener, secrets });
    match serve(listener, outbox, webhooks, options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("messenger-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a person needs to start using the gateway, on stdout.
fn announce(
    local: SocketAddr,
    webhook_url: Option<&str>,
    account: &Account,
    sandbox: Option<&sandbox::RunningSandbox>,
) {
    let target = if local.ip().is_unspecified() {
        format!("localhost:{}", local.port())
    } else {
        local.to_string()
    };
    match sandbox {
        Some(s) => {
            tracing::warn!(
                "no Instagram credentials: sending to the built-in sandbox, not to Instagram"
            );
            println!(
                "sandbox Graph API at {} (received messages: {})",
                s.base_url,
                s.messages_log_url()
            );
            println!(
                "try: grpcurl -plaintext -d '{{\"recipient_id\":\"{}\",\"text\":\"Hello from my app\"}}' {target} messenger.v1.Messenger/Send",
                sandbox::DEMO_RECIPIENT
            );
            println!(
                "play the Instagram user: curl -s -X POST {} -d '{{\"sender_id\":\"{}\",\"text\":\"Hi!\"}}'",
                s.inbound_url(),
                sandbox::DEMO_RECIPIENT
            );
            println!(
                "watch inbound events: grpcurl -plaintext -d '{{}}' {target} messenger.v1.Messenger/Subscribe"
            );
        }
        None => println!(
            "sending as account {} via {}",
            account.account_id, account.base_url
        ),
    }
    if let Some(url) = webhook_url {
        println!("webhooks at {url}");
    }
    // Last, so a script that waits for it knows the banner is complete.
    println!("messenger-gateway listening on {local} (gRPC)");
    tracing::info!(%local, graph = %account.base_url, account = %account.account_id, "ready");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be watched");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
