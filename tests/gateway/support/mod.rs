//! What the tests share, and nothing else: no test file imports another.
//! `TestGateway` (a gateway built in-process on loopback ports), request
//! and key builders, `eventually`/`within`; [`graph`]: Graph stand-ins;
//! [`process`]: the real binary as a child; [`stream`]: reading
//! `Subscribe`; [`cluster`]: a PostgreSQL of a test's own; [`invariants`]:
//! the parsers' promises (also checked by the fuzz targets).

pub mod cluster;
pub mod graph;
pub mod invariants;
pub mod process;
pub mod stream;

pub use graph::*;
pub use process::*;
pub use stream::*;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use messenger_gateway::accounts::AccountSpec;
use messenger_gateway::accounts::apps::WebhookSecrets;
use messenger_gateway::accounts::file;
use messenger_gateway::accounts::tokens::TokenKeeper;
use messenger_gateway::app::reload::Reloader;
use messenger_gateway::app::{Application, Settings, Upstream};
use messenger_gateway::clock::ManualClock;
use messenger_gateway::edge::auth::Keys;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::server::{ServeError, ServeOptions};
use messenger_gateway::edge::webhook;
use messenger_gateway::graph::{AccessToken, Account};
use messenger_gateway::send::delivery::DeliveryPolicy;
use messenger_gateway::send::guard::GuardPolicy;
use messenger_gateway::send::pacing::PaceLimits;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TOKEN: &str = "test-token-7f3a9c";
pub const ACCOUNT: &str = "17841400000000001";
/// The person every test writes to, whom the Graph stand-in names in each success.
pub const USER: &str = GRAPH_RECIPIENT;
pub const MESSAGES_PATH: &str = "/v25.0/17841400000000001/messages";

pub const APP_SECRET: &str = "test-app-secret-5d1e";
pub const VERIFY_TOKEN: &str = "test-verify-token-c4";
/// Where the test clock starts: 2026-11-27T00:00:00Z.
pub const T0: i64 = 1_795_737_600_000;

pub struct TestGateway {
    pub addr: SocketAddr,
    /// The keys in force, to reload after rewriting `keys_file`.
    pub keys: Arc<Keys>,
    pub keys_file: std::path::PathBuf,
    /// What SIGHUP does.
    pub reloader: Arc<Reloader>,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub admin: SocketAddr,
    /// Looks after tokens, when the builder turned that on.
    pub keeper: Option<Arc<TokenKeeper>>,
    /// Where `Builder::accounts_file` wrote the accounts.
    pub accounts_file: std::path::PathBuf,
    pub webhook_url: String,
    pub graph: MockServer,
    pub clock: ManualClock,
    /// Kept alive as long as the gateway uses it.
    _data: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    pub served: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Fast retries so the tests take milliseconds.
pub fn quick_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        upstream_timeout: Duration::from_secs(5),
        ..DeliveryPolicy::default()
    }
}

type Configure = Box<dyn FnOnce(&mut Settings)>;

/// How a test gateway is built: anything not set is the test default.
pub struct Builder {
    graph: Option<(MockServer, String)>,
    /// Sends go here instead, when set.
    held: Option<String>,
    delivery: DeliveryPolicy,
    serve: ServeOptions,
    guard: GuardPolicy,
    data: Option<Arc<tempfile::TempDir>>,
    keys: Option<String>,
    /// Besides the default account: these, in order.
    accounts: Vec<AccountSpec>,
    /// Instead of the default account: this accounts file.
    accounts_file: Option<String>,
    configure: Vec<Configure>,
}

impl Builder {
    /// Sends go to `graph`, under `base_url` (which may differ from its URI).
    pub fn graph(mut self, graph: MockServer, base_url: &str) -> Self {
        self.graph = Some((graph, base_url.to_owned()));
        self
    }

    /// Sends go to `held`, which holds each until the test releases it.
    pub fn held_graph(mut self, held: &HeldGraph) -> Self {
        self.held = Some(format!("{}/v25.0", held.url));
        self
    }

    pub fn delivery(mut self, policy: DeliveryPolicy) -> Self {
        self.delivery = policy;
        self
    }

    pub fn serve(mut self, options: ServeOptions) -> Self {
        self.serve = options;
        self
    }

    pub fn guard(mut self, policy: GuardPolicy) -> Self {
        self.guard = policy;
        self
    }

    /// Turns on API keys, with this keys file.
    pub fn keys(mut self, toml: &str) -> Self {
        self.keys = Some(toml.to_owned());
        self
    }

    /// Sends also go out as this account.
    pub fn account(mut self, spec: AccountSpec) -> Self {
        self.accounts.push(spec);
        self
    }

    /// The accounts come from this accounts file (written to the data
    /// directory), as with `--accounts`; the default account is not used.
    pub fn accounts_file(mut self, toml: &str) -> Self {
        self.accounts_file = Some(toml.to_owned());
        self
    }

    /// Any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Reuse one data directory to see what survives a restart.
    pub fn data(mut self, data: Arc<tempfile::TempDir>) -> Self {
        self.data = Some(data);
        self
    }

    /// Builds through the same composition root as the binary.
    pub async fn start(self) -> TestGateway {
        let held = self.held.is_some();
        let (graph, base_url) = match self.graph {
            Some(g) => g,
            None => {
                let graph = MockServer::start().await;
                let base = self
                    .held
                    .unwrap_or_else(|| format!("{}/v25.0", graph.uri()));
                (graph, base)
            }
        };
        let data = self
            .data
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        let account = Account::new(&base_url, ACCOUNT, &AccessToken::new(TOKEN)).unwrap();
        let clock = ManualClock::at(T0);
        let mut accounts = vec![AccountSpec::new(account)];
        accounts.extend(self.accounts);
        let accounts_file = data.path().join("accounts.toml");
        if let Some(text) = &self.accounts_file {
            std::fs::write(&accounts_file, text).unwrap();
            accounts = file::read_accounts_file(&accounts_file, |_| None, false)
                .unwrap()
                .accounts;
        }
        let mut settings = Settings::local(Upstream::Graph(accounts), data.path().to_owned());
        settings.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        if self.accounts_file.is_some() {
            settings.accounts_file = Some(accounts_file.clone());
        }
        settings.webhook_secrets = Some(WebhookSecrets {
            app_secret: APP_SECRET.into(),
            verify_token: VERIFY_TOKEN.into(),
        });
        settings.delivery = self.delivery;
        if held {
            settings.delivery.upstream_timeout = HeldGraph::UPSTREAM_TIMEOUT;
        }
        settings.guard = self.guard;
        settings.serve = self.serve;
        settings.clock = Arc::new(clock.clone());
        let keys_file = data.path().join("keys.toml");
        if let Some(keys) = &self.keys {
            std::fs::write(&keys_file, keys).unwrap();
            settings.api_keys = Some(keys_file.clone());
        }
        for configure in self.configure {
            configure(&mut settings);
        }
        let app = Application::build(settings).await.unwrap();
        let keys = app.keys().clone();
        let reloader = app.reloader().clone();
        let keeper = app.token_keeper().cloned();
        let admin = app.admin_addr().expect("the admin port is on");
        let addr = app.grpc_addr();
        let webhook_url = app.webhook_url().unwrap().to_owned();
        let (stop, stopped) = oneshot::channel();
        let served = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            keys,
            keys_file,
            reloader,
            admin,
            keeper,
            accounts_file,
            webhook_url,
            graph,
            clock,
            _data: data,
            stop: Some(stop),
            served: Some(served),
        }
    }
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder {
            graph: None,
            held: None,
            delivery: quick_policy(),
            serve: ServeOptions::default(),
            guard: GuardPolicy::default(),
            data: None,
            keys: None,
            accounts: Vec::new(),
            accounts_file: None,
            configure: Vec::new(),
        }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// Posts a delivery signed as Meta signs it; answers the HTTP status.
    pub async fn deliver(&self, body: &[u8]) -> u16 {
        let signature = webhook::sign(APP_SECRET, body);
        self.deliver_signed(body, Some(&signature)).await
    }

    pub async fn deliver_signed(&self, body: &[u8], signature: Option<&str>) -> u16 {
        let mut request = reqwest::Client::new()
            .post(&self.webhook_url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            request = request.header(webhook::SIGNATURE_HEADER, s);
        }
        request.send().await.unwrap().status().as_u16()
    }

    pub async fn client(&self) -> MessengerClient<Channel> {
        MessengerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Every event after `after`, then new ones, over a fresh client.
    pub async fn events_after(&self, after: u64) -> tonic::Streaming<pb::InboundEvent> {
        self.subscribe(
            pb::SubscribeRequest {
                after,
                ..Default::default()
            },
            None,
        )
        .await
    }

    /// As `events_after`, the gateway's own sends too.
    pub async fn all_events_after(&self, after: u64) -> tonic::Streaming<pb::InboundEvent> {
        self.subscribe(
            pb::SubscribeRequest {
                after,
                include_outbound: true,
                ..Default::default()
            },
            None,
        )
        .await
    }

    /// Every event the holder of API key `secret` may see, the gateway's
    /// own sends too.
    pub async fn all_events_as(&self, secret: &str) -> tonic::Streaming<pb::InboundEvent> {
        let request = pb::SubscribeRequest {
            include_outbound: true,
            ..Default::default()
        };
        self.subscribe(request, Some(secret)).await
    }

    async fn subscribe(
        &self,
        request: pb::SubscribeRequest,
        key: Option<&str>,
    ) -> tonic::Streaming<pb::InboundEvent> {
        let request = match key {
            Some(secret) => with_key(request, secret),
            None => tonic::Request::new(request),
        };
        self.client()
            .await
            .subscribe(request)
            .await
            .unwrap()
            .into_inner()
    }

    /// A plain text send to the demo user over a fresh client.
    pub async fn send_text(&self) -> Result<pb::SendResponse, tonic::Status> {
        self.client()
            .await
            .send(text_to(USER, "hi"))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Starts the shutdown sequence, as SIGTERM does.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The JSON bodies Graph received, in order.
    pub async fn graph_bodies(&self) -> Vec<Value> {
        self.graph
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// What `GetWindow` says of `user` (the default account).
    pub async fn window_with(&self, user: &str) -> pb::GetWindowResponse {
        self.client()
            .await
            .get_window(pb::GetWindowRequest {
                recipient_id: user.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The status of a GET on the admin port.
    pub async fn admin_status(&self, path: &str) -> u16 {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits until Graph has received at least `n` calls.
    pub async fn until_graph_received(&self, n: usize) {
        eventually(Duration::from_secs(30), "Graph's calls", || async {
            match self.graph_calls().await {
                got if got >= n => Ok(()),
                got => Err(format!("{got} of {n}")),
            }
        })
        .await
    }

    /// Waits until exactly `n` sends wait for a Graph call slot or the
    /// pace, over every account.
    pub async fn until_queued(&self, n: u32) {
        let client = self.client().await;
        eventually(Duration::from_secs(30), "sends queued", || {
            let mut client = client.clone();
            async move {
                let listed = list_accounts(&mut client).await;
                match listed.accounts.iter().map(|a| a.sends_queued).sum::<u32>() {
                    got if got == n => Ok(()),
                    got => Err(format!("{got} queued, waiting for {n}")),
                }
            }
        })
        .await
    }

    /// Waits until exactly `n` sends are under way or waiting, over every
    /// account (read on the admin port: it needs no API key).
    pub async fn until_sends(&self, n: usize) {
        eventually(
            Duration::from_secs(30),
            "sends under way or waiting",
            || async {
                match self.metric("messenger_gateway_sends_in_flight").await as usize {
                    got if got == n => Ok(()),
                    got => Err(format!("{got}, waiting for {n}")),
                }
            },
        )
        .await
    }

    /// The sum of a counter or gauge's samples on `/metrics`, labels aside.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&format!("http://{}", self.admin), name).await
    }

    /// One series of `name`: the sum of those whose labels include `label`
    /// (such as `outcome="sent"`).
    pub async fn metric_with(&self, name: &str, label: &str) -> f64 {
        metric_at_with(&format!("http://{}", self.admin), name, label).await
    }

    pub async fn graph_calls(&self) -> usize {
        self.graph
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }

    /// Graph answers every send with this.
    pub async fn graph_answers(&self, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(MESSAGES_PATH))
            .respond_with(response)
            .mount(&self.graph)
            .await;
    }
}

/// The sum of a counter or gauge's samples on the `/metrics` of the admin
/// port at `admin` (`http://host:port`), labels aside.
pub async fn metric_at(admin: &str, name: &str) -> f64 {
    metric_at_with(admin, name, "").await
}

/// The sum of `name`'s series whose labels include `label`.
pub async fn metric_at_with(admin: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What ListAccounts answers now.
pub async fn list_accounts(client: &mut MessengerClient<Channel>) -> pb::ListAccountsResponse {
    client
        .list_accounts(pb::ListAccountsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// One look at what a test waits for: done (with what was found), or
/// what was seen instead, for the failure message.
pub trait Look {
    type Found;
    fn look(self) -> Result<Self::Found, String>;
}

impl Look for bool {
    type Found = ();
    fn look(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet".into()) }
    }
}

impl<T, E: std::fmt::Debug> Look for Result<T, E> {
    type Found = T;
    fn look(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// Looks every 10 ms until `probe` finds what the test waits for, and
/// answers it; after `limit`, fails naming `what` and the last thing seen.
/// Every wait in the tests goes through here, so none can hang.
pub async fn eventually<L: Look, F: Future<Output = L>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> L::Found {
    let started = std::time::Instant::now();
    loop {
        match probe().await.look() {
            Ok(found) => return found,
            Err(seen) if started.elapsed() >= limit => {
                panic!("{what}: not within {limit:?}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `f`'s output, within 30 s: a test never waits forever for a stream's
/// next item or an answer; it fails, saying what it waited for.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 30 s"))
}

/// `request`, sent as `account` (an id or alias).
pub fn from_account(account: &str, request: pb::SendRequest) -> pb::SendRequest {
    pb::SendRequest {
        account_id: account.into(),
        ..request
    }
}

pub fn text_to(recipient: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        recipient_id: recipient.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// The one ErrorInfo's reason and metadata.
pub fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("every failure carries an ErrorInfo");
    assert_eq!(info.domain, "messenger-gateway");
    (info.reason.clone(), info.metadata.clone())
}

pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// The token must never reach a caller.
pub fn assert_no_token(status: &tonic::Status) {
    let everything = format!("{status:?}{:?}", status.get_error_details());
    assert!(!everything.contains(TOKEN), "token leaked: {everything}");
}

/// A webhook delivery of text messages from `USER`, each `(mid, text, timestamp_ms)`.
pub fn messages_from_user(items: &[(&str, &str, i64)]) -> Vec<u8> {
    let messaging: Vec<Value> = items
        .iter()
        .map(|(mid, text, ts)| {
            json!({"sender":{"id":USER},"recipient":{"id":ACCOUNT},"timestamp":ts,
                   "message":{"mid":mid,"text":text}})
        })
        .collect();
    serde_json::to_vec(
        &json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":T0,"messaging":messaging}]}),
    )
    .unwrap()
}

/// Writes a secret file (a token file) as the gateway requires it: the
/// owner's alone.
pub fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A keys-file entry admitting `secret`.
pub fn key_entry(id: &str, secret: &str, accounts: &[&str], allow: &[&str]) -> String {
    use sha2::Digest;
    let quote = |items: &[&str]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[key]]\nid = {id:?}\nsha256 = \"{}\"\naccounts = [{}]\nallow = [{}]\n\n",
        hex::encode(sha2::Sha256::digest(secret.as_bytes())),
        quote(accounts),
        quote(allow)
    )
}

/// `request` as sent with `authorization: Bearer <secret>`.
pub fn with_key<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// A fresh database on the PostgreSQL the test command started
/// (`MESSENGER_GATEWAY_TEST_PG`), as a URL; `None` when it started none
/// (CI always does: there, a missing one fails the test).
/// Waits until the `n` replicas on the store at `url` have each counted
/// all `n`: each said it was alive after the last of them first did, so
/// each keeps to its share of an account's pace.
pub async fn until_replicas_share(url: &str, n: usize) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let seen = || async {
        let rows = client
            .query("SELECT seen_ms FROM replicas", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>()
    };
    let all_there = eventually(Duration::from_secs(60), "replicas alive", || async {
        match seen().await {
            rows if rows.len() == n => Ok(rows.into_iter().max().unwrap()),
            rows => Err(rows),
        }
    })
    .await;
    eventually(Duration::from_secs(60), "each counted them all", || async {
        match seen().await {
            rows if rows.iter().all(|&t| t > all_there) => Ok(()),
            rows => Err(rows),
        }
    })
    .await;
}

pub async fn fresh_pg_database() -> Option<String> {
    let admin = match std::env::var("MESSENGER_GATEWAY_TEST_PG") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the PostgreSQL tests: scripts/test starts a server")
        }
        Err(_) => {
            eprintln!("no PostgreSQL from the test command: skipped");
            return None;
        }
    };
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(connection);
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "gateway_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.rsplit_once('/').expect("a URL with a database").0;
    Some(format!("{base}/{name}"))
}

pub fn bulk(text: &str) -> pb::SendRequest {
    pb::SendRequest {
        priority: pb::Priority::Bulk as i32,
        ..text_to(USER, text)
    }
}

pub fn paced(limits: PaceLimits) -> DeliveryPolicy {
    DeliveryPolicy {
        pace: Some(limits),
        max_queued_sends: 100_000,
        ..quick_policy()
    }
}
