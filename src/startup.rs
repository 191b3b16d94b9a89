//! The composition root: [`Application::build`] turns [`Settings`] into a
//! running gateway. `main` and the integration tests both go through here,
//! so there is one wiring and the tests exercise it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;

use crate::cli::{Cli, Command, KeysCommand, NewKeyArgs};
use crate::metrics::Metrics;
use crate::telemetry;
use crate::tokens::{Sealer, TokenKeeper, TokenPolicy};

use crate::accounts::{AccountSpec, Registry};
use crate::auth::Keys;
use crate::clock::{Clock, SystemClock};
use crate::config::WebhookApp;
use crate::delivery::DeliveryPolicy;
use crate::graph::GraphClient;
use crate::inbox::Inbox;
use crate::outbox::{Outbox, OutboxPolicy};
use crate::sandbox::{self, RunningSandbox};
use crate::server::{self, Gateway, Listener, ServeError, ServeOptions, WebhookListener};
use crate::store::{PgStore, SqliteStore, Store};
use crate::tls::{ReloadableTls, TlsFiles};
use crate::webhook::{self, WebhookSecrets};

/// How long inbound events are kept for `Subscribe` by default.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How often old events, windows and request ids are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);
/// The longest a connection to Graph may take to open: beyond this a host is
/// not coming, whatever the upstream timeout allows.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where sends go.
pub enum Upstream {
    /// A real (or fake) Graph API, as these accounts (at least one).
    Graph(Vec<AccountSpec>),
    /// The built-in sandbox, started on this (loopback) address.
    Sandbox { listen: SocketAddr },
}

/// Everything the gateway is built from. `cli` fills it from arguments and
/// the environment; tests fill it directly.
pub struct Settings {
    /// `None`: 127.0.0.1:50051 without authentication, else all interfaces.
    pub listen: Option<SocketAddr>,
    pub webhook_listen: SocketAddr,
    pub upstream: Upstream,
    /// `None`: no webhooks at `/webhook` (the sandbox makes its own).
    pub webhook_secrets: Option<WebhookSecrets>,
    /// More Meta apps, each with webhooks at `/webhook/{name}`.
    pub webhook_apps: Vec<WebhookApp>,
    pub data_dir: PathBuf,
    /// A PostgreSQL URL: the store replicas share; `None`: SQLite in
    /// `data_dir`.
    pub store: Option<String>,
    pub delivery: DeliveryPolicy,
    pub outbox: OutboxPolicy,
    pub serve: ServeOptions,
    pub event_retention: Duration,
    pub clock: Arc<dyn Clock>,
    /// The API keys file; `None` with no client CA: no authentication.
    pub api_keys: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address.
    pub allow_unauthenticated: bool,
    pub tls: Option<TlsFiles>,
    pub webhook_tls: Option<TlsFiles>,
    pub max_subscribers: usize,
    /// How long a `Subscribe` stream may take no event while its queue is
    /// full before it is ended as too slow.
    pub subscriber_stall_timeout: Duration,
    /// The admin port (`/metrics`, `/livez`, `/readyz`); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// Check and refresh the accounts' tokens; `None`: never (tests that
    /// count every Graph call).
    pub tokens: Option<TokenPolicy>,
    /// Encrypts refreshed tokens in the store (`MESSENGER_GATEWAY_STORE_KEY`).
    pub store_key: Option<String>,
    /// The accounts file `upstream`'s accounts came from: SIGHUP re-reads it.
    pub accounts_file: Option<PathBuf>,
    /// Accept an `http://` Graph URL off this machine (in the accounts file
    /// too).
    pub allow_insecure_graph: bool,
}

/// The gRPC port when none is given.
pub const DEFAULT_PORT: u16 = 50051;

impl Settings {
    /// Loopback ports picked by the OS, the defaults for everything else.
    pub fn local(upstream: Upstream, data_dir: PathBuf) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            listen: Some(any_port),
            webhook_listen: any_port,
            upstream,
            webhook_secrets: None,
            webhook_apps: Vec::new(),
            data_dir,
            store: None,
            delivery: DeliveryPolicy::default(),
            outbox: OutboxPolicy::default(),
            serve: ServeOptions::default(),
            event_retention: DEFAULT_EVENT_RETENTION,
            clock: Arc::new(SystemClock),
            api_keys: None,
            allow_unauthenticated: false,
            tls: None,
            webhook_tls: None,
            max_subscribers: Inbox::DEFAULT_MAX_SUBSCRIBERS,
            subscriber_stall_timeout: Inbox::DEFAULT_STALL_TIMEOUT,
            accounts_file: None,
            allow_insecure_graph: false,
            tokens: None,
            store_key: None,
            admin_listen: None,
        }
    }
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong: the operator must fix it (exit 2).
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the sandbox on {addr}: {source}")]
    Sandbox {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the store ({place}): {detail}")]
    Store { place: String, detail: String },
}

/// A built gateway: its ports are bound, its store is open, nothing is
/// served until [`Application::run_until`].
pub struct Application {
    grpc: Listener,
    grpc_addr: SocketAddr,
    webhooks: Option<WebhookListener>,
    webhook_url: Option<String>,
    sandbox: Option<RunningSandbox>,
    accounts_registry: Arc<Registry>,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    admin_addr: Option<SocketAddr>,
    keeper: Option<Arc<TokenKeeper>>,
    gateway: Gateway,
    serve: ServeOptions,
    keys: Arc<Keys>,
    /// What SIGHUP re-reads.
    reloader: Arc<Reloader>,
    /// Watched from the start, so an early SIGHUP reloads rather than kills.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    grpc_tls: bool,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let keys = match &settings.api_keys {
            Some(file) => {
                Keys::from_file(file.clone()).map_err(|e| StartError::Config(e.to_string()))?
            }
            None => Keys::open(),
        };
        let load_tls = |files: &Option<TlsFiles>, alpn: &[&[u8]]| {
            files
                .clone()
                .map(|f| ReloadableTls::load(f, alpn))
                .transpose()
                .map_err(|e| StartError::Config(e.to_string()))
        };
        let grpc_tls = load_tls(&settings.tls, &[b"h2"])?;
        let webhook_tls = load_tls(&settings.webhook_tls, &[b"http/1.1"])?;
        let mutual = grpc_tls.as_ref().is_some_and(|t| t.requires_client_certs());
        if keys.is_open() && mutual {
            return Err(StartError::Config(
                "--tls-client-ca needs --api-keys: client certificates are matched to key entries (client_cert = \"...\")".into(),
            ));
        }
        let authenticated = !keys.is_open();
        let listen = settings.listen.unwrap_or_else(|| {
            let ip = if authenticated {
                [0, 0, 0, 0]
            } else {
                [127, 0, 0, 1]
            };
            SocketAddr::from((ip, DEFAULT_PORT))
        });
        if !authenticated && !listen.ip().is_loopback() && !settings.allow_unauthenticated {
            return Err(StartError::Config(format!(
                "refusing to serve {listen} without authentication: anyone who reaches it could send as the business and read its messages. Create a key with `messenger-gateway keys new --id my-service`, put its block in a file and pass --api-keys FILE (or listen on 127.0.0.1, or pass --allow-unauthenticated)"
            )));
        }
        let uses_sandbox = matches!(settings.upstream, Upstream::Sandbox { .. });
        // The sandbox signs the webhooks it makes up with a secret of its own,
        // never with a real app secret.
        let secrets = if uses_sandbox {
            Some(WebhookSecrets::random())
        } else {
            settings.webhook_secrets
        };
        let routes: Vec<(Option<String>, WebhookSecrets)> = secrets
            .iter()
            .map(|s| (None, s.clone()))
            .chain(
                settings
                    .webhook_apps
                    .iter()
                    .map(|a| (Some(a.name.clone()), a.secrets.clone())),
            )
            .collect();
        let webhook_listener = match routes.is_empty() {
            true => None,
            false => Some(bind(settings.webhook_listen).await?),
        };
        let webhook_url = webhook_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| {
                let scheme = if settings.webhook_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let path = match &routes[0].0 {
                    None => webhook::PATH.to_owned(),
                    Some(name) => format!("{}/{name}", webhook::PATH),
                };
                format!("{scheme}://{}{path}", reachable(a))
            });
        let (account, sandbox) = match settings.upstream {
            Upstream::Graph(accounts) => (accounts, None),
            Upstream::Sandbox { listen } => {
                // It accepts any message with its own token: never a port
                // another machine can reach.
                if !listen.ip().is_loopback() {
                    return Err(StartError::Config(format!(
                        "the sandbox listens on loopback only (got --sandbox-listen {listen})"
                    )));
                }
                let target = webhook_url
                    .clone()
                    .zip(secrets.as_ref().map(|s| s.app_secret.clone()));
                let running =
                    sandbox::start(listen, target)
                        .await
                        .map_err(|source| StartError::Sandbox {
                            addr: listen,
                            source,
                        })?;
                (running.accounts.clone(), Some(running))
            }
        };
        let grpc = bind(listen).await?;
        let grpc_addr = grpc.local_addr().unwrap_or(listen);

        let store_failed = |detail: String| StartError::Store {
            place: match &settings.store {
                // Never the URL itself: it may carry a password.
                Some(_) => "PostgreSQL, --store".to_owned(),
                None => settings.data_dir.display().to_string(),
            },
            detail,
        };
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = match &settings.store {
            Some(url) => {
                let postgres = PgStore::connect(url)
                    .await
                    .map_err(|e| store_failed(e.to_string()))?;
                let commits = metrics.clone();
                postgres.observe_commits(move |seconds| commits.store_committed(seconds));
                Arc::new(postgres)
            }
            None => {
                let sqlite = SqliteStore::open(&settings.data_dir)
                    .map_err(|e| store_failed(e.to_string()))?;
                let commits = metrics.clone();
                sqlite.observe_commits(move |seconds| commits.store_committed(seconds));
                Arc::new(sqlite)
            }
        };
        let inbox = Inbox::new(
            store,
            settings.clock.clone(),
            settings.max_subscribers,
            settings.subscriber_stall_timeout,
        )
        .await
        .map_err(|e| store_failed(e.to_string()))?;
        tokio::spawn(
            inbox
                .clone()
                .prune_periodically(settings.event_retention, PRUNE_EVERY),
        );

        let connect_timeout = settings.delivery.upstream_timeout.min(MAX_CONNECT_TIMEOUT);
        let graph = GraphClient::new(connect_timeout);
        let accounts =
            Registry::observed(graph.clone(), settings.delivery, account, metrics.clone());
        tokio::spawn(count_stored_events(
            inbox.clone(),
            accounts.clone(),
            metrics.clone(),
        ));
        if inbox.store().is_shared() {
            tokio::spawn(share_the_pace(inbox.store().clone(), accounts.clone()));
        }
        let admin = match settings.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let keeper = settings.tokens.map(|policy| {
            TokenKeeper::new(
                accounts.clone(),
                graph,
                inbox.store().clone(),
                settings.clock.clone(),
                policy,
                Sealer::new(settings.store_key.as_deref()),
            )
        });
        if let Some(keeper) = &keeper {
            // Before any send: a refreshed token kept from an earlier run
            // is the one in use.
            keeper.restore().await;
            tokio::spawn(keeper.clone().run());
            tokio::spawn(keeper.clone().follow_store());
        }
        let outbox = Outbox::new(accounts.clone(), inbox.clone(), settings.outbox);
        let certificates = grpc_tls.iter().chain(&webhook_tls).cloned().collect();
        let gateway_keys = keys.clone();
        let webhooks = webhook_listener.map(|listener| WebhookListener {
            listener: Listener {
                listener,
                tls: webhook_tls,
            },
            routes,
        });
        Ok(Self {
            grpc_addr,
            webhooks,
            webhook_url,
            sandbox,
            gateway: Gateway {
                accounts: accounts.clone(),
                metrics,
                admin,
                outbox,
                inbox,
                keys: keys.clone(),
            },
            accounts_registry: accounts.clone(),
            admin_addr,
            keeper,
            serve: settings.serve,
            keys,
            reloader: Arc::new(Reloader {
                keys: gateway_keys,
                certificates,
                accounts: settings.accounts_file.map(|file| AccountsFile {
                    file,
                    allow_insecure_graph: settings.allow_insecure_graph,
                    registry: accounts.clone(),
                }),
            }),
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            grpc_tls: grpc_tls.is_some(),
            grpc: Listener {
                listener: grpc,
                tls: grpc_tls,
            },
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where Meta (or the sandbox) posts webhooks; `None` when they are off.
    pub fn webhook_url(&self) -> Option<&str> {
        self.webhook_url.as_deref()
    }

    pub fn sandbox(&self) -> Option<&RunningSandbox> {
        self.sandbox.as_ref()
    }

    /// The accounts sends go out as.
    pub fn accounts(&self) -> &Arc<Registry> {
        &self.accounts_registry
    }

    /// Serves until `shutdown` resolves, then drains (see [`server::serve`]).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        // Kept alive for as long as the gateway sends to it.
        let _sandbox = self.sandbox;
        #[cfg(unix)]
        let reloader = tokio::spawn(reload_on_sighup(self.hangup, self.reloader));
        #[cfg(not(unix))]
        let reloader = tokio::spawn(async {});
        let served =
            server::serve(self.grpc, self.gateway, self.webhooks, self.serve, shutdown).await;
        reloader.abort();
        served
    }

    /// How callers are let in, for the banner.
    pub fn mode(&self) -> String {
        let transport = if self.grpc_tls { "TLS" } else { "plaintext" };
        match (self.keys.is_open(), self.grpc_tls) {
            (true, _) => format!(
                "{transport}, no authentication: every caller that reaches the port is trusted"
            ),
            (false, true) => format!("{transport}, API keys required"),
            (false, false) if self.grpc_addr.ip().is_loopback() => {
                format!("{transport}, API keys required")
            }
            (false, false) => format!(
                "{transport}, API keys required; WARNING: keys cross the network in clear text, add --tls-cert/--tls-key or put TLS in front"
            ),
        }
    }

    /// The keys in force, for tests that reload them.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The token keeper, when tokens are looked after.
    pub fn token_keeper(&self) -> Option<&Arc<TokenKeeper>> {
        self.keeper.as_ref()
    }

    /// What SIGHUP does, for tests.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }
}

/// How often a replica on a shared store says it is alive and counts the
/// others.
const REPLICA_HEARTBEAT: Duration = Duration::from_secs(1);

/// On a shared store: every second, says this replica is alive and splits
/// each account's pace among the replicas alive, so that together they
/// keep to the account's one budget. A replica that dies stops saying so,
/// and within a few seconds the others take its share.
async fn share_the_pace(store: Arc<dyn Store>, accounts: Arc<Registry>) {
    let me = format!("{:016x}", rand::random::<u64>());
    let mut tick = tokio::time::interval(REPLICA_HEARTBEAT);
    loop {
        tick.tick().await;
        // Wall time, not the settings' clock: other processes read it.
        let now = SystemClock.now_ms();
        match store.replicas_alive(&me, now).await {
            Ok(replicas) => {
                for path in accounts.paths() {
                    if let Some(pacer) = path.deliverer.pacer() {
                        pacer.set_share(replicas);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count the replicas alive"),
        }
    }
}

/// Counts each event as it is committed, by account and kind; events for
/// accounts not configured share one label, so a payload cannot mint
/// series. A burst this task falls behind on is skipped, not counted twice.
async fn count_stored_events(inbox: Arc<Inbox>, accounts: Arc<Registry>, metrics: Arc<Metrics>) {
    let mut feed = inbox.store().committed();
    loop {
        match feed.recv().await {
            Ok(e) => {
                let account = match accounts.by_id(&e.event.account_id) {
                    Some(_) => e.event.account_id.as_str(),
                    None => "unconfigured",
                };
                metrics.event_stored(account, e.event.kind.name())
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// SIGHUP re-reads the keys file, the certificates and the accounts file.
/// A bad file is logged and what is in force stays.
#[cfg(unix)]
async fn reload_on_sighup(hangup: Option<tokio::signal::unix::Signal>, reloader: Arc<Reloader>) {
    let Some(mut hangup) = hangup else {
        tracing::warn!("cannot watch SIGHUP: keys, certificates and accounts will not reload");
        return;
    };
    while hangup.recv().await.is_some() {
        reloader.reload();
    }
}

/// What SIGHUP re-reads.
pub struct Reloader {
    keys: Arc<Keys>,
    certificates: Vec<Arc<ReloadableTls>>,
    accounts: Option<AccountsFile>,
}

struct AccountsFile {
    file: PathBuf,
    allow_insecure_graph: bool,
    registry: Arc<Registry>,
}

impl Reloader {
    /// Reloads keys, certificates and accounts, as SIGHUP does. Each part
    /// that fails to load is logged and keeps what is in force.
    pub fn reload(&self) {
        match self.keys.reload() {
            Ok(n) if !self.keys.is_open() => tracing::info!(keys = n, "API keys reloaded"),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "API keys not reloaded: the previous keys stay in force")
            }
        }
        for tls in &self.certificates {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificates not reloaded: the previous ones stay in force")
                }
            }
        }
        if let Some(accounts) = &self.accounts {
            accounts.reload();
        }
    }
}

impl AccountsFile {
    fn reload(&self) {
        let read = crate::config::read_accounts_file(
            &self.file,
            |name| std::env::var(name).ok(),
            self.allow_insecure_graph,
        );
        match read {
            Ok(specs) => {
                let done = self.registry.reload(specs.accounts);
                tracing::info!(
                    accounts = self.registry.len(),
                    added = ?done.added,
                    removed = ?done.removed,
                    new_token_or_url = ?done.changed,
                    "accounts reloaded"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "accounts not reloaded: the previous accounts stay in force")
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// An address a local client can dial: the unspecified address is not one.
pub fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
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
    match crate::auth::new_key(&args.id, &args.accounts, &args.allow) {
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

/// What a person needs to start using the gateway, on stdout.
fn announce(app: &Application) {
    let local = app.grpc_addr();
    let target = reachable(local).replace("127.0.0.1", "localhost");
    match app.sandbox() {
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
                "it plays two accounts, shop ({}) and support ({}); try a send as each:",
                sandbox::ACCOUNT_ID,
                sandbox::SUPPORT_ACCOUNT_ID
            );
            for (_, name) in sandbox::ACCOUNTS {
                println!(
                    "  grpcurl -plaintext -d '{{\"account_id\":\"{name}\",\"recipient_id\":\"{}\",\"text\":\"Hello from my app\"}}' {target} messenger.v1.Messenger/Send",
                    sandbox::DEMO_RECIPIENT
                );
            }
            println!(
                "play the Instagram user: curl -s -X POST {} -d '{{\"account\":\"support\",\"sender_id\":\"{}\",\"text\":\"Hi!\"}}'",
                s.inbound_url(),
                sandbox::DEMO_RECIPIENT
            );
            println!(
                "watch inbound events: grpcurl -plaintext -d '{{}}' {target} messenger.v1.Messenger/Subscribe"
            );
        }
        None => {
            for path in app.accounts().paths() {
                let account = path.deliverer.account();
                match &path.name {
                    Some(name) => println!(
                        "sending as account {} ({name}) via {}",
                        path.id, account.base_url
                    ),
                    None => println!("sending as account {} via {}", path.id, account.base_url),
                }
            }
        }
    }
    if let Some(url) = app.webhook_url() {
        println!("webhooks at {url}");
    }
    if let Some(admin) = app.admin_addr() {
        println!(
            "admin at http://{} (/metrics, /livez, /readyz)",
            reachable(admin)
        );
    }
    println!("callers: {}", app.mode());
    // Last, so a script that waits for it knows the banner is complete.
    println!("messenger-gateway listening on {local} (gRPC)");
    tracing::info!(%local, accounts = app.accounts().len(), "ready");
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
