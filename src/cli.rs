//! The command line: arguments and the environment, parsed into
//! [`Settings`]. Nothing is started here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use humantime::Duration;

use crate::accounts::AccountSpec;
use crate::accounts::env::{self, ConfigError};
use crate::accounts::file;
use crate::accounts::tokens::TokenPolicy;
use crate::app::banner::announce;
use crate::app::{Application, DEFAULT_EVENT_RETENTION, Settings, StartError, Upstream};
use crate::conversation::inbox::Inbox;
use crate::edge::net::Limits;
use crate::edge::server::ServeOptions;
use crate::edge::tls::TlsFiles;
use crate::model::window::WindowPolicy;
use crate::send::delivery::DeliveryPolicy;
use crate::send::guard::GuardPolicy;
use crate::send::pacing::{PaceLimits, Rate};
use crate::telemetry::{self, LogFormat};

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
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a fresh secret (once) and the keys-file block that admits it.
    New(NewKeyArgs),
}

#[derive(clap::Args, Debug)]
pub struct NewKeyArgs {
    /// The key's name in logs and errors, such as billing-service.
    #[arg(long)]
    pub id: String,
    /// Instagram account ids the key may act for; "*" is all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub accounts: Vec<String>,
    /// Operations it may call.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "send,send_action,get_window,subscribe"
    )]
    pub allow: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address for gRPC [default: 127.0.0.1:50051 without authentication,
    /// 0.0.0.0:50051 with it].
    #[arg(long, env = "MESSENGER_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// The API keys file (TOML, `[[key]]` entries holding SHA-256 hashes).
    /// Reloaded on SIGHUP.
    #[arg(long, env = "MESSENGER_GATEWAY_API_KEYS")]
    api_keys: Option<PathBuf>,
    /// Accept an http:// Graph URL to a host other than this machine.
    #[arg(long, env = "MESSENGER_GATEWAY_ALLOW_INSECURE_GRAPH")]
    allow_insecure_graph: bool,
    /// Serve a non-loopback address with no authentication at all.
    #[arg(long, env = "MESSENGER_GATEWAY_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Serve gRPC over TLS with this certificate chain (PEM).
    #[arg(long, env = "MESSENGER_GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MESSENGER_GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the gRPC port.
    #[arg(long, env = "MESSENGER_GATEWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve webhooks over TLS with this certificate chain (PEM).
    #[arg(
        long,
        env = "MESSENGER_GATEWAY_WEBHOOK_TLS_CERT",
        requires = "webhook_tls_key"
    )]
    webhook_tls_cert: Option<PathBuf>,
    /// The private key of --webhook-tls-cert (PEM).
    #[arg(
        long,
        env = "MESSENGER_GATEWAY_WEBHOOK_TLS_KEY",
        requires = "webhook_tls_cert"
    )]
    webhook_tls_key: Option<PathBuf>,
    /// Serve gRPC reflection (on) or not (off).
    #[arg(long, env = "MESSENGER_GATEWAY_REFLECTION", default_value = "on",
          action = clap::ArgAction::Set, value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    reflection: bool,
    /// The deadline of a send whose caller sets none.
    #[arg(long, env = "MESSENGER_GATEWAY_DEFAULT_TIMEOUT",
          default_value_t = ServeOptions::DEFAULT_TIMEOUT.into())]
    default_timeout: Duration,
    /// Sends that may wait for a Graph call slot; beyond, OVERLOADED.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_QUEUED_SENDS",
          default_value_t = DeliveryPolicy::DEFAULT_MAX_QUEUED_SENDS)]
    max_queued_sends: usize,
    /// A send with less of its deadline left is not started.
    #[arg(long, env = "MESSENGER_GATEWAY_MIN_SEND_BUDGET",
          default_value_t = DeliveryPolicy::DEFAULT_MIN_SEND_BUDGET.into())]
    min_send_budget: Duration,
    /// Subscribe streams open at once; beyond, OVERLOADED.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_SUBSCRIBERS",
          default_value_t = Inbox::DEFAULT_MAX_SUBSCRIBERS)]
    max_subscribers: usize,
    /// A Subscribe stream that takes no event for this long, with 64 waiting
    /// for it, is ended (SUBSCRIBER_TOO_SLOW, with its last seq to resume).
    #[arg(long, env = "MESSENGER_GATEWAY_SUBSCRIBER_STALL_TIMEOUT",
          default_value_t = Inbox::DEFAULT_STALL_TIMEOUT.into())]
    subscriber_stall_timeout: Duration,
    /// Connections open at once, per port.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_CONNECTIONS",
          default_value_t = Limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections open at once from one IP address, per port.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_CONNECTIONS_PER_IP",
          default_value_t = Limits::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Calls under way at once on one gRPC connection.
    #[arg(long, env = "MESSENGER_GATEWAY_MAX_CONCURRENT_STREAMS",
          default_value_t = ServeOptions::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,
    /// A TOML file of the Instagram accounts to send as, one `[[account]]`
    /// each (id, optional name, token_env or token_file, optional api_url).
    /// Without it the INSTAGRAM_* variables configure one account.
    #[arg(long, env = "MESSENGER_GATEWAY_ACCOUNTS")]
    accounts: Option<PathBuf>,
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
    /// A PostgreSQL store shared by replicas (`postgres://…`; also read
    /// from DATABASE_URL); without it, SQLite in --data-dir.
    #[arg(long, env = "MESSENGER_GATEWAY_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Whether a person the gateway never heard from is sent to (lenient) or
    /// refused without calling Graph (strict).
    #[arg(long, env = "MESSENGER_GATEWAY_WINDOW_POLICY", value_enum, default_value_t = WindowPolicy::Lenient)]
    window_policy: WindowPolicy,
    /// Between 24 hours and 7 days after the person's last message, send
    /// with the HUMAN_AGENT tag instead of refusing (needs Meta's App Review).
    #[arg(long, env = "MESSENGER_GATEWAY_AUTO_HUMAN_AGENT")]
    auto_human_agent: bool,
    /// Record each message and reaction Graph accepted as an outbound event
    /// (streamed to subscribers that ask for outbound events).
    #[arg(long, env = "MESSENGER_GATEWAY_RECORD_SENT", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    record_sent: bool,
    /// How long a send whose Graph answer was lost (DELIVERY_UNKNOWN) waits
    /// for Instagram's echo of it before it is resolved as not seen.
    #[arg(long, env = "MESSENGER_GATEWAY_ECHO_HORIZON", default_value = "10m")]
    echo_horizon: Duration,
    /// How long inbound events are kept for Subscribe, such as 7d or 36h.
    #[arg(long, env = "MESSENGER_GATEWAY_EVENT_RETENTION",
          default_value_t = DEFAULT_EVENT_RETENTION.into())]
    event_retention: Duration,
    /// Where to serve /metrics (Prometheus), /livez and /readyz; `off`
    /// serves none.
    #[arg(long, env = "MESSENGER_GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9464",
          value_parser = parse_admin_listen, value_name = "ADDR|off")]
    admin_listen: AdminListen,
    /// Pace each account's sends under Meta's limits (`off`: as fast as
    /// callers ask, for benchmarks).
    #[arg(long, env = "MESSENGER_GATEWAY_PACE", default_value = "on",
          action = clap::ArgAction::Set, value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    pace: bool,
    /// Each account's budget for text-like sends (text, templates,
    /// stickers, shares, reactions, sender actions, images).
    #[arg(long, env = "MESSENGER_GATEWAY_PACE_STANDARD", value_parser = Rate::parse,
          default_value_t = PaceLimits::default().standard)]
    pace_standard: Rate,
    /// Each account's budget for audio and video.
    #[arg(long, env = "MESSENGER_GATEWAY_PACE_MEDIA", value_parser = Rate::parse,
          default_value_t = PaceLimits::default().media)]
    pace_media: Rate,
    /// Each account's budget for private replies to comments.
    #[arg(long, env = "MESSENGER_GATEWAY_PACE_PRIVATE_REPLIES", value_parser = Rate::parse,
          default_value_t = PaceLimits::default().private_replies)]
    pace_private_replies: Rate,
    /// At least this long between two sends to one person, such as 1s
    /// (Meta may throttle a thread that receives too much); 0s: off.
    #[arg(
        long,
        env = "MESSENGER_GATEWAY_MIN_INTERVAL_PER_RECIPIENT",
        default_value = "0s"
    )]
    min_interval_per_recipient: Duration,
    /// Refresh an Instagram-Login token (at least a day old) this long
    /// before it expires, such as 10d.
    #[arg(long, env = "MESSENGER_GATEWAY_REFRESH_BEFORE",
          default_value_t = TokenPolicy::DEFAULT_REFRESH_BEFORE.into())]
    refresh_before: Duration,
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
        let mut webhook_apps = Vec::new();
        let account =
            if self.sandbox {
                None
            } else if let Some(file) = &self.accounts {
                let set: Vec<&str> = env::VARIABLES
                    .into_iter()
                    .filter(|name| env(name).is_some_and(|v| !v.is_empty()))
                    .collect();
                if !set.is_empty() {
                    return Err(ConfigError {
                        problems: vec![format!(
                            "--accounts {} and {} are both set: configure accounts in one place",
                            file.display(),
                            set.join(", ")
                        )],
                    });
                }
                let config = file::read_accounts_file(file, &env, self.allow_insecure_graph)
                    .map_err(|e| ConfigError {
                        problems: vec![e.to_string()],
                    })?;
                webhook_apps = config.apps;
                Some(config.accounts)
            } else {
                env::account_from_env(&env, self.allow_insecure_graph)?
                    .map(|a| vec![AccountSpec::new(a)])
            };
        let webhook_secrets = env::webhook_secrets_from_env(&env)?;
        if account.is_none() && !self.sandbox && webhook_secrets.is_some() {
            return Err(ConfigError {
                problems: vec!["INSTAGRAM_APP_SECRET and INSTAGRAM_VERIFY_TOKEN are set but no account is: set INSTAGRAM_ACCESS_TOKEN and INSTAGRAM_ACCOUNT_ID or INSTAGRAM_USER_ID (the sandbox is used only when no INSTAGRAM_* variable is set, or with --sandbox)".into()],
            });
        }
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
        let store = match self.store.or_else(|| env("DATABASE_URL")) {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(url)
            }
            // Never echoed: a URL may carry a password.
            Some(_) => {
                return Err(ConfigError {
                    problems: vec!["--store (MESSENGER_GATEWAY_STORE or DATABASE_URL) must be a postgres:// URL; leave it unset for SQLite in --data-dir".into()],
                });
            }
        };
        // Every field a flag sets; the rest are `Settings::local`'s defaults.
        Ok(Settings {
            listen: self.listen,
            webhook_listen: self.webhook_listen,
            store,
            webhook_secrets,
            webhook_apps,
            delivery: DeliveryPolicy {
                max_concurrent_calls: self.max_graph_calls as usize,
                max_attempts: self.max_attempts,
                upstream_timeout: self.upstream_timeout.into(),
                max_queued_sends: self.max_queued_sends,
                min_send_budget: self.min_send_budget.into(),
                pace: self.pace.then_some(PaceLimits {
                    standard: self.pace_standard,
                    media: self.pace_media,
                    private_replies: self.pace_private_replies,
                    per_recipient: Some(self.min_interval_per_recipient.into())
                        .filter(|d: &std::time::Duration| !d.is_zero()),
                }),
                ..DeliveryPolicy::default()
            },
            guard: GuardPolicy {
                window: self.window_policy,
                auto_human_agent: self.auto_human_agent,
                record_sent: self.record_sent,
                echo_horizon: self.echo_horizon.into(),
            },
            serve: ServeOptions {
                shutdown_grace: self.shutdown_grace.into(),
                default_timeout: self.default_timeout.into(),
                reflection: self.reflection,
                limits: Limits {
                    max_connections: self.max_connections,
                    max_connections_per_ip: self.max_connections_per_ip,
                    ..Limits::default()
                },
                max_concurrent_streams: self.max_concurrent_streams,
            },
            event_retention: self.event_retention.into(),
            api_keys: self.api_keys,
            accounts_file: if self.sandbox { None } else { self.accounts },
            allow_insecure_graph: self.allow_insecure_graph,
            admin_listen: self.admin_listen.0,
            tokens: Some(TokenPolicy {
                refresh_before: self.refresh_before.into(),
                ..TokenPolicy::default()
            }),
            store_key: env("MESSENGER_GATEWAY_STORE_KEY").filter(|k| !k.is_empty()),
            allow_unauthenticated: self.allow_unauthenticated,
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            webhook_tls: self
                .webhook_tls_cert
                .zip(self.webhook_tls_key)
                .map(|(cert, key)| TlsFiles {
                    cert,
                    key,
                    client_ca: None,
                }),
            max_subscribers: self.max_subscribers,
            subscriber_stall_timeout: self.subscriber_stall_timeout.into(),
            ..Settings::local(upstream, self.data_dir)
        })
    }
}

/// The admin address, or none.
#[derive(Debug, Clone, Copy)]
pub struct AdminListen(Option<SocketAddr>);

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| format!("expected an address such as 127.0.0.1:9464, or off (got {s:?})"))
}

/// The binary's whole body: parse, set up, serve, and say why if it stops.
/// Exit 2 is a configuration fault; 1 a failure to start or serve.
pub fn main() -> ExitCode {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Keys(KeysCommand::New(new)) => return new_key(&new),
    };
    // Held to the end so the last log lines are flushed.
    let _log_guard = telemetry::init(args.log_format);
    let settings = match args.into_settings(|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("messenger-gateway: {e}");
            return ExitCode::from(2);
        }
    };
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
    runtime.block_on(async {
        // Each send in flight holds a connection to Graph; the default soft
        // limit of open files would cap concurrency long before memory does.
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
        let warn_on_grace = settings.serve.shutdown_grace <= settings.delivery.upstream_timeout;
        let webhooks_off =
            settings.webhook_secrets.is_none() && settings.webhook_apps.is_empty() && matches!(settings.upstream, Upstream::Graph(_));
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("messenger-gateway: {e}");
                return match e {
                    StartError::Config(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        if webhooks_off {
            tracing::warn!(
                "INSTAGRAM_APP_SECRET and INSTAGRAM_VERIFY_TOKEN are not set: webhooks are off, so the gateway learns no windows and Subscribe stays empty"
            );
        }
        if warn_on_grace {
            tracing::warn!(
                "the shutdown grace period is not longer than one Graph call may take: a send in flight at shutdown may be abandoned unreported"
            );
        }
        let shutdown = shutdown_signal();
        announce(&app);
        match app.run_until(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("messenger-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `keys new`: the secret once on stdout, with the block to paste.
fn new_key(args: &NewKeyArgs) -> ExitCode {
    match crate::edge::auth::new_key(&args.id, &args.accounts, &args.allow) {
        Ok((secret, block)) => {
            println!("{secret}");
            println!();
            println!("# Add to the --api-keys file; the secret above is shown only now.");
            print!("{block}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("messenger-gateway: {e}");
            ExitCode::from(2)
        }
    }
}

/// SIGTERM or SIGINT. The handlers are installed at once, before the
/// banner, so a signal sent as soon as the banner appears is not fatal.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be watched");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT can be watched");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
