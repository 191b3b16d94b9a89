//! Serving: the Messenger service beside health and reflection on the gRPC
//! port, webhooks on their own port, both under connection limits and
//! optionally TLS, and a shutdown that drains sends under way within a
//! grace period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::accounts::Registry;
use crate::accounts::apps::WebhookSecrets;
use crate::conversation::inbox::Inbox;
use crate::edge::admin::{self, Admin};
use crate::edge::auth::Keys;
use crate::edge::grpc::deadline::RefuseHopelessLayer;
use crate::edge::grpc::{MessengerServer, MessengerService, pb};
use crate::edge::net::{self, Limits};
use crate::edge::tls::ReloadableTls;
use crate::edge::webhook;
use crate::metrics::Metrics;
use crate::send::guard::Guard;

/// The core parts the servers adapt, each handed only to what uses it.
pub struct Gateway {
    /// The accounts sends go out as, each with its own delivery path.
    pub accounts: Arc<Registry>,
    pub guard: Arc<Guard>,
    pub inbox: Arc<Inbox>,
    pub keys: Arc<Keys>,
    pub metrics: Arc<Metrics>,
    /// Where `/metrics`, `/livez` and `/readyz` are served, if anywhere.
    pub admin: Option<TcpListener>,
}

/// HTTP/2 flow-control windows on the gRPC port: a stream may have 64 KiB
/// (HTTP/2's own default) on its way to the gateway unread, a connection
/// 1 MiB.
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// The service name health reports on, besides "" for the whole server.
const SERVICE_NAME: &str = <MessengerServer<MessengerService> as tonic::server::NamedService>::NAME;
/// Pings find callers that vanished without closing (a NAT timeout, a
/// killed pod) or stopped answering, so their connections do not linger.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long webhook connections may take to close at shutdown: Meta
/// redelivers whatever was cut off, so a stalled client never holds it up.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight sends may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// The deadline of a send whose caller set none.
    pub default_timeout: Duration,
    /// Serve gRPC reflection (the contract is public; off hides it).
    pub reflection: bool,
    /// Connections per port, and how soon a new one must speak.
    pub limits: Limits,
    /// Calls under way at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl ServeOptions {
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            default_timeout: Self::DEFAULT_TIMEOUT,
            reflection: true,
            limits: Limits::default(),
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// A bound port, served in plain text or TLS.
pub struct Listener {
    pub listener: TcpListener,
    pub tls: Option<Arc<ReloadableTls>>,
}

/// Where and with which secrets to take Instagram's webhooks: one path per
/// Meta app.
pub struct WebhookListener {
    pub listener: Listener,
    /// `None`: `/webhook`; `Some(name)`: `/webhook/{name}`.
    pub routes: Vec<(Option<String>, WebhookSecrets)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection could not load the descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The webhook listener stops taking deliveries at shutdown; Meta retries
/// whatever it could not deliver.
fn serve_webhooks(
    webhooks: WebhookListener,
    inbox: Arc<Inbox>,
    accounts: Arc<Registry>,
    metrics: Arc<Metrics>,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = webhook::router(
        inbox,
        accounts,
        webhooks.routes,
        limits.body_read_timeout,
        metrics,
    );
    serve_http(webhooks.listener, app, limits, Some(stop))
}

/// Serves `app` over HTTP/1.1 under `limits` (connections, per address,
/// the time to read headers) until `stop` (if any), then lets requests
/// under way finish for a moment.
fn serve_http(
    listener: Listener,
    app: axum::Router,
    limits: Limits,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> tokio::task::JoinHandle<()> {
    let mut stop = stop;
    tokio::spawn(async move {
        let mut conns = net::incoming(listener.listener, listener.tls, limits);
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        loop {
            let stopped = async {
                match &mut stop {
                    Some(stop) => drop(stop.wait_for(|s| *s).await),
                    None => std::future::pending().await,
                }
            };
            let conn = tokio::select! {
                conn = conns.next() => conn,
                () = stopped => break,
            };
            let Some(Ok(conn)) = conn else { break };
            let service = TowerToHyperService::new(app.clone());
            let connection = http.serve_connection(TokioIo::new(conn), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                // Errors here are a client's (reset, timeout); the refusal
                // itself was logged where it happened.
                let _ = connection.await;
            });
        }
        drop(conns);
        let _ = tokio::time::timeout(WEBHOOK_DRAIN, graceful.shutdown()).await;
    })
}

/// `/metrics`, `/livez` and `/readyz` on their own port (see
/// [`admin::router`]). Runs until the process ends, so a scrape during the
/// drain still sees it.
fn serve_admin(listener: TcpListener, admin: Admin, limits: Limits) -> tokio::task::JoinHandle<()> {
    let app = admin::router(admin);
    // The webhook port's read timeouts, fewer connections; never stopped.
    let limits = Limits {
        max_connections: limits.max_connections.min(admin::MAX_CONNECTIONS),
        max_connections_per_ip: limits.max_connections_per_ip.min(admin::MAX_CONNECTIONS),
        ..limits
    };
    serve_http(
        Listener {
            listener,
            tls: None,
        },
        app,
        limits,
        None,
    )
}

/// Serves until `shutdown` resolves, then: health goes NOT_SERVING, sends under
/// way stop retrying, new calls are refused, and the call returns once the
/// sends in flight finish or the grace period ends.
pub async fn serve(
    grpc: Listener,
    gateway: Gateway,
    webhooks: Option<WebhookListener>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Gateway {
        accounts,
        guard,
        inbox,
        keys,
        metrics,
        admin,
    } = gateway;
    // Ready once the store is open (it is, to get here) and the gRPC port
    // serves; not ready while the store cannot be reached, nor once
    // draining starts.
    let ready = Arc::new(AtomicBool::new(false));
    let _admin = admin.map(|listener| {
        serve_admin(
            listener,
            Admin {
                metrics: metrics.clone(),
                accounts: accounts.clone(),
                inbox: inbox.clone(),
                ready: ready.clone(),
            },
            options.limits,
        )
    });
    let (stop_hooks, hooks_stopped) = tokio::sync::watch::channel(false);
    let hooks = webhooks.map(|w| {
        serve_webhooks(
            w,
            inbox.clone(),
            accounts.clone(),
            metrics.clone(),
            options.limits,
            hooks_stopped,
        )
    });
    let (mut health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;

    // The google.rpc types are registered so grpcurl can decode error details.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = if options.reflection {
        (
            Some(reflection().build_v1()?),
            Some(reflection().build_v1alpha()?),
        )
    } else {
        (None, None)
    };

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = net::incoming(
        grpc.listener,
        grpc.tls,
        Limits {
            opening_bytes: Limits::HTTP2_PREFACE_BYTES,
            authenticate_within: (!keys.is_open()).then(|| {
                options
                    .limits
                    .authenticate_within
                    .unwrap_or(Limits::DEFAULT_AUTHENTICATE_WITHIN)
            }),
            ..options.limits
        },
    );
    let messenger = MessengerService::new(
        guard,
        inbox.clone(),
        keys,
        accounts.clone(),
        options.default_timeout,
    );
    let router = Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            crate::edge::grpc::status::explain_codec_errors,
        ))
        .layer(RefuseHopelessLayer {
            min_send_budget: accounts.min_send_budget(),
        })
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(options.max_concurrent_streams))
        // What a caller may have in flight to the gateway before it reads:
        // small, so a SendStream broadcast waits in its caller, not here.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(messenger.into_server());
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    ready.store(true, Ordering::SeqCst);
    tokio::select! {
        result = &mut server => return flatten(result),
        () = shutdown => {}
    }

    tracing::info!(
        in_flight = accounts.in_flight(),
        "shutting down: draining sends in flight"
    );
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
        // Ends open Watch streams, which would otherwise hold the drain open.
        health.clear_service_status(name).await;
    }
    ready.store(false, Ordering::SeqCst);
    accounts.start_draining();
    // Subscriptions never end by themselves: end them so the drain can.
    inbox.close();
    stop_hooks.send_replace(true);
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        let result = (&mut server).await;
        if let Some(hooks) = hooks {
            let _ = hooks.await;
        }
        result
    });
    match drained.await {
        Ok(result) => {
            tracing::info!("shut down cleanly");
            flatten(result)
        }
        Err(_) => {
            tracing::error!(
                in_flight = accounts.in_flight(),
                grace_ms = options.shutdown_grace.as_millis() as u64,
                "grace period over: abandoning sends still in flight"
            );
            server.abort();
            Ok(())
        }
    }
}

fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => Ok(result?),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
