//! The command line: arguments and the environment, parsed into
//! [`Settings`]. Nothing is started here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use humantime::Duration;

use crate::clock::SystemClock;
use crate::config::{self, ConfigError};
use crate::delivery::DeliveryPolicy;
use crate::outbox::OutboxPolicy;
use crate::server::ServeOptions;
use crate::startup::{DEFAULT_EVENT_RETENTION, Settings, Upstream};
use crate::telemetry::LogFormat;
use crate::window::WindowPolicy;

#[derive(Parser, Debug)]
#[command(
    name = "messenger-gateway",
    version,
    about = "A gRPC gateway for sending Instagram direct messages"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve messenger.v1.Messenger. Credentials come from the INSTAGRAM_*
    /// variables; with none set, the built-in sandbox stands in for Graph.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
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
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_ATTEMPTS", default_value_t = DeliveryPolicy::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    max_attempts: u32,
    /// The most Graph calls under way at once; further sends wait their turn
    /// (bounded by their deadline). Bounds sockets and memory when Graph is slow.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_GRAPH_CALLS",
          default_value_t = DeliveryPolicy::DEFAULT_MAX_CONCURRENT_CALLS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_graph_calls: u32,
    /// The longest one Graph call may take, such as 10s or 2500ms.
    #[arg(long, env = "MESSENGER_GATEWAY_UPSTREAM_TIMEOUT",
          default_value_t = DeliveryPolicy::DEFAULT_UPSTREAM_TIMEOUT.into())]
    upstream_timeout: Duration,
    /// How long sends in flight may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "MESSENGER_GATEWAY_SHUTDOWN_GRACE",
          default_value_t = ServeOptions::DEFAULT_SHUTDOWN_GRACE.into())]
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
    #[arg(long, env = "MESSENGER_GATEWAY_EVENT_RETENTION",
          default_value_t = DEFAULT_EVENT_RETENTION.into())]
    event_retention: Duration,
    /// Log lines as text for people or JSON for machines.
    #[arg(long, env = "MESSENGER_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The settings these arguments and `env` describe. Every problem with
    /// the environment is named at once.
    pub fn into_settings(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let account = if self.sandbox {
            None
        } else {
            config::account_from_env(&env)?
        };
        let webhook_secrets = config::webhook_secrets_from_env(&env)?;
        let upstream = match account {
            Some(account) => Upstream::Graph(account),
            None if self.no_sandbox => {
                return Err(ConfigError {
                    problems: vec!["no credentials: set INSTAGRAM_ACCESS_TOKEN and INSTAGRAM_ACCOUNT_ID or INSTAGRAM_USER_ID (--no-sandbox forbids the sandbox)".into()],
                });
            }
            None => Upstream::Sandbox {
                listen: self.sandbox_listen,
            },
        };
        Ok(Settings {
            listen: self.listen,
            webhook_listen: self.webhook_listen,
            upstream,
            webhook_secrets,
            data_dir: self.data_dir,
            delivery: DeliveryPolicy {
                max_concurrent_calls: self.max_graph_calls as usize,
                max_attempts: self.max_attempts,
                upstream_timeout: self.upstream_timeout.into(),
                ..DeliveryPolicy::default()
            },
            outbox: OutboxPolicy {
                window: self.window_policy,
                auto_human_agent: self.auto_human_agent,
            },
            serve: ServeOptions {
                shutdown_grace: self.shutdown_grace.into(),
            },
            event_retention: self.event_retention.into(),
            clock: Arc::new(SystemClock),
        })
    }
}
