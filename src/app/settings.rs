//! What the gateway is built from: [`Settings`], filled by `cli` from flags
//! and the environment (over [`Settings::local`]'s defaults), or by tests
//! directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::AccountSpec;
use crate::accounts::apps::{WebhookApp, WebhookSecrets};
use crate::accounts::tokens::TokenPolicy;
use crate::clock::{Clock, SystemClock};
use crate::conversation::inbox::Inbox;
use crate::edge::server::ServeOptions;
use crate::edge::tls::TlsFiles;
use crate::send::delivery::DeliveryPolicy;
use crate::send::guard::GuardPolicy;

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
    pub guard: GuardPolicy,
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
            guard: GuardPolicy::default(),
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
