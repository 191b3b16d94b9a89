//! The composition root: [`Application::build`] turns [`Settings`] into a
//! gateway with its ports bound and its store open, in named steps. `main`
//! (in `cli`) and the integration tests both go through here, so there is
//! one wiring and the tests exercise it.

pub mod background;
pub mod banner;
pub mod reload;
pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use settings::*;

use crate::accounts::apps::WebhookSecrets;
use crate::accounts::tokens::{Sealer, TokenKeeper};
use crate::accounts::{AccountSpec, Registry};
use crate::conversation::inbox::Inbox;
use crate::edge::auth::Keys;
use crate::edge::server::{self, Gateway, Listener, ServeError, ServeOptions, WebhookListener};
use crate::edge::tls::{ReloadableTls, TlsFiles};
use crate::edge::webhook;
use crate::graph::GraphClient;
use crate::metrics::Metrics;
use crate::sandbox::{self, RunningSandbox};
use crate::send::guard::Guard;
use crate::store::{PgStore, SqliteStore, Store};
use background::{count_stored_events, share_the_pace};
use banner::reachable;
use reload::{AccountsFile, Reloader};

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

/// The webhook routes: `/webhook` for the main app's secrets, and
/// `/webhook/{name}` for each further app.
type Routes = Vec<(Option<String>, WebhookSecrets)>;

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let keys = load_keys(&settings)?;
        let grpc_tls = load_tls(&settings.tls, &[b"h2"])?;
        let webhook_tls = load_tls(&settings.webhook_tls, &[b"http/1.1"])?;
        let listen = grpc_address(&settings, &keys, grpc_tls.as_ref())?;
        let (secrets, routes) = webhook_routes(&settings);
        let webhook_listener = match routes.is_empty() {
            true => None,
            false => Some(bind(settings.webhook_listen).await?),
        };
        let webhook_url = webhook_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| webhook_url(a, settings.webhook_tls.is_some(), &routes));
        let app_secret = secrets.as_ref().map(|s| s.app_secret.clone());
        let (specs, sandbox) =
            start_upstream(&settings, webhook_url.clone().zip(app_secret)).await?;
        let grpc = bind(listen).await?;
        let grpc_addr = grpc.local_addr().unwrap_or(listen);
        let metrics = Arc::new(Metrics::new());
        let store = open_store(&settings, &metrics).await?;
        let inbox = open_inbox(&settings, store.clone()).await?;
        let graph = GraphClient::new(
            settings
                .delivery
                .upstream_timeout
                .min(settings::MAX_CONNECT_TIMEOUT),
        );
        let accounts = Registry::observed(
            graph.clone(),
            settings.delivery.clone(),
            specs,
            metrics.clone(),
        );
        spawn_background(&store, &accounts, &metrics);
        let admin = match settings.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let keeper = keep_tokens(&settings, &accounts, graph, &store).await;
        let guard = Guard::new(
            store.clone(),
            inbox.clone(),
            settings.guard,
            accounts.min_send_budget(),
            metrics.clone(),
        );
        tokio::spawn(guard.clone().settle_expired_periodically());
        let reloader = Arc::new(Reloader {
            keys: keys.clone(),
            certificates: grpc_tls.iter().chain(&webhook_tls).cloned().collect(),
            accounts: settings.accounts_file.map(|file| AccountsFile {
                file,
                allow_insecure_graph: settings.allow_insecure_graph,
                registry: accounts.clone(),
            }),
        });
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
                guard,
                inbox,
                keys: keys.clone(),
            },
            accounts_registry: accounts,
            admin_addr,
            keeper,
            serve: settings.serve,
            keys,
            reloader,
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            grpc_tls: grpc_tls.is_some(),
            grpc: Listener {
                listener: grpc,
                tls: grpc_tls,
            },
        })
    }

    /// Serves until `shutdown` resolves, then drains (see [`server::serve`]).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        // Kept alive for as long as the gateway sends to it.
        let _sandbox = self.sandbox;
        #[cfg(unix)]
        let reloader = tokio::spawn(reload::reload_on_sighup(self.hangup, self.reloader));
        #[cfg(not(unix))]
        let reloader = tokio::spawn(async {});
        let served =
            server::serve(self.grpc, self.gateway, self.webhooks, self.serve, shutdown).await;
        reloader.abort();
        served
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// The API keys file, or no authentication.
fn load_keys(settings: &Settings) -> Result<Arc<Keys>, StartError> {
    match &settings.api_keys {
        Some(file) => Keys::from_file(file.clone()).map_err(|e| StartError::Config(e.to_string())),
        None => Ok(Keys::open()),
    }
}

fn load_tls(
    files: &Option<TlsFiles>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<ReloadableTls>>, StartError> {
    files
        .clone()
        .map(|f| ReloadableTls::load(f, alpn))
        .transpose()
        .map_err(|e| StartError::Config(e.to_string()))
}

/// Where gRPC listens: as given, else all interfaces with keys and
/// loopback without. Refuses to serve other machines without keys unless
/// told to.
fn grpc_address(
    settings: &Settings,
    keys: &Keys,
    tls: Option<&Arc<ReloadableTls>>,
) -> Result<SocketAddr, StartError> {
    if keys.is_open() && tls.is_some_and(|t| t.requires_client_certs()) {
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
    Ok(listen)
}

/// The main app's secrets (the sandbox signs the webhooks it makes up
/// with a secret of its own, never with a real app secret), and every
/// route.
fn webhook_routes(settings: &Settings) -> (Option<WebhookSecrets>, Routes) {
    let secrets = match settings.upstream {
        Upstream::Sandbox { .. } => Some(WebhookSecrets::random()),
        Upstream::Graph(_) => settings.webhook_secrets.clone(),
    };
    let routes = secrets
        .iter()
        .map(|s| (None, s.clone()))
        .chain(
            settings
                .webhook_apps
                .iter()
                .map(|a| (Some(a.name.clone()), a.secrets.clone())),
        )
        .collect();
    (secrets, routes)
}

/// Where Meta (or the sandbox) posts: the first route.
fn webhook_url(addr: SocketAddr, tls: bool, routes: &Routes) -> String {
    let scheme = if tls { "https" } else { "http" };
    let path = match &routes[0].0 {
        None => webhook::PATH.to_owned(),
        Some(name) => format!("{}/{name}", webhook::PATH),
    };
    format!("{scheme}://{}{path}", reachable(addr))
}

/// The accounts to send as: those configured, or the sandbox's, started
/// here with where to post its webhooks and the secret to sign them with.
async fn start_upstream(
    settings: &Settings,
    webhooks: Option<(String, String)>,
) -> Result<(Vec<AccountSpec>, Option<RunningSandbox>), StartError> {
    match &settings.upstream {
        Upstream::Graph(accounts) => Ok((accounts.clone(), None)),
        Upstream::Sandbox { listen } => {
            let listen = *listen;
            // It accepts any message with its own token: never a port
            // another machine can reach.
            if !listen.ip().is_loopback() {
                return Err(StartError::Config(format!(
                    "the sandbox listens on loopback only (got --sandbox-listen {listen})"
                )));
            }
            let running =
                sandbox::start(listen, webhooks)
                    .await
                    .map_err(|source| StartError::Sandbox {
                        addr: listen,
                        source,
                    })?;
            Ok((running.accounts.clone(), Some(running)))
        }
    }
}

/// PostgreSQL when a URL is given, else SQLite in the data directory; its
/// commit times counted.
async fn open_store(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Store>, StartError> {
    let commits = metrics.clone();
    let observe = move |seconds| commits.store_committed(seconds);
    Ok(match &settings.store {
        Some(url) => {
            let postgres = PgStore::connect(url)
                .await
                .map_err(|e| store_failed(settings, e))?;
            postgres.observe_commits(observe);
            Arc::new(postgres)
        }
        None => {
            let sqlite =
                SqliteStore::open(&settings.data_dir).map_err(|e| store_failed(settings, e))?;
            sqlite.observe_commits(observe);
            Arc::new(sqlite)
        }
    })
}

fn store_failed(settings: &Settings, detail: impl std::fmt::Display) -> StartError {
    StartError::Store {
        place: match &settings.store {
            // Never the URL itself: it may carry a password.
            Some(_) => "PostgreSQL, --store".to_owned(),
            None => settings.data_dir.display().to_string(),
        },
        detail: detail.to_string(),
    }
}

/// The inbox over the store, pruned in the background.
async fn open_inbox(settings: &Settings, store: Arc<dyn Store>) -> Result<Arc<Inbox>, StartError> {
    let inbox = Inbox::new(
        store,
        settings.clock.clone(),
        settings.max_subscribers,
        settings.subscriber_stall_timeout,
    )
    .await
    .map_err(|e| store_failed(settings, e))?;
    tokio::spawn(
        inbox
            .clone()
            .prune_periodically(settings.event_retention, PRUNE_EVERY),
    );
    Ok(inbox)
}

/// Counting stored events; on a shared store, sharing the pace.
fn spawn_background(store: &Arc<dyn Store>, accounts: &Arc<Registry>, metrics: &Arc<Metrics>) {
    tokio::spawn(count_stored_events(
        store.clone(),
        accounts.clone(),
        metrics.clone(),
    ));
    if store.is_shared() {
        tokio::spawn(share_the_pace(store.clone(), accounts.clone()));
    }
}

/// The token keeper, when tokens are looked after: tokens kept from an
/// earlier run are restored before any send.
async fn keep_tokens(
    settings: &Settings,
    accounts: &Arc<Registry>,
    graph: GraphClient,
    store: &Arc<dyn Store>,
) -> Option<Arc<TokenKeeper>> {
    let keeper = TokenKeeper::new(
        accounts.clone(),
        graph,
        store.clone(),
        settings.clock.clone(),
        settings.tokens.clone()?,
        Sealer::new(settings.store_key.as_deref()),
    );
    keeper.restore().await;
    tokio::spawn(keeper.clone().run());
    tokio::spawn(keeper.clone().follow_store());
    Some(keeper)
}
