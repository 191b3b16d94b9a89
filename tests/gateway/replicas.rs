//! Replicas on one PostgreSQL store: what one takes in, every one knows.

use std::time::Duration;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::model::window::WindowPolicy;
use messenger_gateway::send::guard::GuardPolicy;

use crate::support::*;

/// A gateway on the shared store at `url`, refusing people who never wrote
/// (so a window it did not open itself shows).
async fn replica(url: &str) -> TestGateway {
    let url = url.to_owned();
    let gw = TestGateway::builder()
        .guard(GuardPolicy {
            window: WindowPolicy::Strict,
            ..GuardPolicy::default()
        })
        .configure(move |s| s.store = Some(url))
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    gw
}

#[tokio::test]
async fn a_message_taken_in_by_one_replica_reaches_the_others_subscribers_and_opens_its_window() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let (a, b) = (replica(&url).await, replica(&url).await);
    let refused = b.send_text().await.unwrap_err();
    assert_eq!(error_info(&refused).0, "OUTSIDE_MESSAGING_WINDOW");

    let mut events = b.events_after(0).await;
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the other replica's subscriber hears of it")
        .unwrap()
        .unwrap();
    assert_eq!(event.seq, 1);

    b.send_text()
        .await
        .expect("the window a opened is open on b");
    assert_eq!(b.graph_calls().await, 1);
}

#[tokio::test]
async fn a_request_id_settled_through_one_replica_holds_on_another() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let (a, b) = (replica(&url).await, replica(&url).await);
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    let request = || pb::SendRequest {
        request_id: "order-42-shipped".into(),
        ..text_to(USER, "Your order has shipped")
    };
    let first = a.client().await.send(request()).await.unwrap().into_inner();
    let again = b.client().await.send(request()).await.unwrap().into_inner();
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(a.graph_calls().await, 1);
    assert_eq!(
        b.graph_calls().await,
        0,
        "b answered from the shared record"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_id_sent_to_three_replicas_at_once_makes_one_graph_call() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let replicas = [
        replica(&url).await,
        replica(&url).await,
        replica(&url).await,
    ];
    assert_eq!(
        replicas[0]
            .deliver(&messages_from_user(&[("m1", "hi", T0)]))
            .await,
        200
    );
    // Slow answers, so all three are under way together.
    for r in &replicas {
        r.graph.reset().await;
        r.graph_answers(ok_reply().set_delay(Duration::from_millis(300)))
            .await;
    }
    let request = pb::SendRequest {
        request_id: "order-43-shipped".into(),
        ..text_to(USER, "Your order has shipped")
    };
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(r.client().await);
    }
    let answers =
        futures_util::future::join_all(clients.iter_mut().map(|c| c.send(request.clone()))).await;
    let ids: Vec<String> = answers
        .into_iter()
        .map(|a| {
            a.expect("every caller gets the answer")
                .into_inner()
                .message_id
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let mut calls = 0;
    for r in &replicas {
        calls += r.graph_calls().await;
    }
    assert_eq!(calls, 1, "one Graph call among the three replicas");
}

/// Two replicas, each taking a broadcast for the same account, against a
/// Graph that answers 613 beyond 40 sends a second: together they keep to
/// the one budget.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_split_an_accounts_budget_between_them() {
    use messenger_gateway::send::pacing::{PaceLimits, Rate};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer};

    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let graph = MockServer::start().await;
    let meta = MetaRateLimit::new(40);
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(meta.clone())
        .mount(&graph)
        .await;
    let base = format!("{}/v25.0", graph.uri());
    let limits = PaceLimits {
        standard: Rate::per_second(40),
        ..PaceLimits::default()
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        // Both send to the one Graph stand-in (each builder is given a
        // stand-in of its own, which goes unused).
        let replica = TestGateway::builder()
            .graph(MockServer::start().await, &base)
            .delivery(paced(limits))
            .configure(move |s| s.store = Some(url))
            .start()
            .await;
        replicas.push(replica);
    }
    // Each has said it is alive and seen the other.
    until_replicas_share(&url, 2).await;

    let mut senders = tokio::task::JoinSet::new();
    for r in &replicas {
        for _ in 0..20 {
            let mut client = r.client().await;
            senders.spawn(async move {
                for _ in 0..3 {
                    client
                        .send(bulk("spring sale"))
                        .await
                        .expect("every message is delivered");
                }
            });
        }
    }
    while senders.join_next().await.is_some() {}
    assert_eq!(meta.refused(), 0, "Graph refused sends as over its limit");
    let accepted = meta.accepted();
    assert_eq!(accepted.len(), 120);
    assert!(
        busiest_second(&accepted) <= 40,
        "{}",
        busiest_second(&accepted)
    );
}

/// A TCP relay to PostgreSQL that can be cut (every connection dropped,
/// new ones refused) or stalled (connections stay open, but no byte
/// crosses until it is restored: a silent network drop).
struct Relay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: tokio::sync::watch::Sender<bool>,
    carried: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Copies `from` to `to`, holding what it read while the relay is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled = tokio::sync::watch::Sender::new(false);
        let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, all, stall) = (cut.clone(), carried.clone(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let stall = stall.clone();
                let carry = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, stall.subscribe()),
                            pump(out_read, in_write, stall.subscribe())
                        );
                    }
                });
                all.lock().unwrap().push(carry);
            }
        });
        Self {
            addr,
            cut,
            stalled,
            carried,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for carry in self.carried.lock().unwrap().drain(..) {
            carry.abort();
        }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}

/// Replicas reaching `url` through a new relay.
async fn through_relay(url: &str) -> (Relay, String) {
    // postgres://user@127.0.0.1:PORT/db
    let (head, database) = url.rsplit_once('/').unwrap();
    let (user, target) = head.rsplit_once('@').unwrap();
    let relay = Relay::start(target.parse().unwrap()).await;
    let through = format!("{user}@{}/{database}", relay.addr);
    (relay, through)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_silently_stops_answering_is_noticed_and_its_return_too() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let (relay, through) = through_relay(&url).await;
    let a = replica(&through).await;
    assert_eq!(
        a.deliver(&messages_from_user(&[("m0", "hi", T0)])).await,
        200
    );
    relay.stall();
    eventually(
        Duration::from_secs(8),
        "not ready while nothing answers",
        || async { a.admin_status("/readyz").await == 503 },
    )
    .await;
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        503,
        "nothing acknowledged that was not committed"
    );
    relay.restore();
    let redelivered = messages_from_user(&[("m1", "hi", T0)]);
    eventually(Duration::from_secs(30), "webhooks taken again", || async {
        a.deliver(&redelivered).await == 200
    })
    .await;
    eventually(Duration::from_secs(10), "ready again", || async {
        a.admin_status("/readyz").await == 200
    })
    .await;
    let mut events = a.events_after(0).await;
    let seqs: Vec<u64> = next_events(&mut events, 2)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_opened_through_one_replica_is_known_to_another_at_once() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let (a, b) = (replica(&url).await, replica(&url).await);
    assert_eq!(
        b.window_with(USER).await.state,
        pb::WindowState::Unknown as i32
    );
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    // The aim is 100 ms (announced at commit); the limit here allows a
    // loaded test machine. The bench measures the figure.
    let took = eventually(Duration::from_secs(2), "b knows the window", || async {
        b.window_with(USER).await.state == pb::WindowState::Open as i32
    })
    .await;
    eprintln!("the window reached the other replica in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgres_is_unreachable_nothing_is_acknowledged_and_after_it_returns_all_is_fed() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let (relay, through) = through_relay(&url).await;
    let (a, b) = (replica(&through).await, replica(&through).await);
    let mut events = b.events_after(0).await;
    assert_eq!(
        a.deliver(&messages_from_user(&[("m0", "hi", T0)])).await,
        200
    );
    eventually(Duration::from_secs(5), "b knows the window", || async {
        b.window_with(USER).await.state == pb::WindowState::Open as i32
    })
    .await;
    assert_eq!(
        within("the next item of events", events.message())
            .await
            .unwrap()
            .unwrap()
            .seq,
        1
    );
    eventually(Duration::from_secs(5), "b is ready", || async {
        b.admin_status("/readyz").await == 200
    })
    .await;

    relay.cut();
    eventually(
        Duration::from_secs(5),
        "b reports itself not ready",
        || async { b.admin_status("/readyz").await == 503 },
    )
    .await;
    assert_eq!(b.admin_status("/livez").await, 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the subscription ends")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        503,
        "Meta is told to deliver again"
    );
    let refused = a
        .client()
        .await
        .send(pb::SendRequest {
            request_id: "during-the-outage".into(),
            ..text_to(USER, "hello")
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "STORE_UNAVAILABLE");
    assert!(retry_delay(&refused).is_some());
    assert_eq!(a.graph_calls().await, 0, "nothing sent without its claim");
    b.send_text()
        .await
        .expect("a send without a request_id goes on, on the window b knew");
    assert_eq!(b.graph_calls().await, 1);

    relay.restore();
    eventually(Duration::from_secs(10), "b is ready again", || async {
        b.admin_status("/readyz").await == 200
    })
    .await;
    let redelivered = messages_from_user(&[("m1", "hi", T0)]);
    eventually(
        Duration::from_secs(10),
        "a takes webhooks again",
        || async { a.deliver(&redelivered).await == 200 },
    )
    .await;
    // The other replica's subscriber is fed once the store is back.
    let mut events = b.events_after(1).await;
    assert_eq!(next_events(&mut events, 1).await[0].seq, 2);
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM: (CA, cert, key).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_asked_for_with_sslmode_require_is_reached_over_tls_and_its_certificate_checked() {
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    // The server takes TLS connections only.
    let Some(cluster) = crate::support::cluster::Cluster::start(
        &[
            ("server.crt", cert.as_bytes()),
            ("server.key", key.as_bytes()),
            (
                "hba.conf",
                b"local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            ),
        ],
        &[
            "ssl = on".into(),
            "ssl_cert_file = '{dir}/server.crt'".into(),
            "ssl_key_file = '{dir}/server.key'".into(),
            "hba_file = '{dir}/hba.conf'".into(),
        ],
    ) else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let (ours, theirs) = (files.path().join("ca.pem"), files.path().join("other.pem"));
    std::fs::write(&ours, &ca).unwrap();
    std::fs::write(&theirs, &other_ca).unwrap();
    let url = cluster.url();
    let with = |query: &str| format!("{url}?{query}");

    let plain = messenger_gateway::store::PgStore::connect(&url)
        .await
        .err()
        .expect("the server refuses connections without TLS");
    assert!(plain.to_string().contains("no encryption"), "{plain}");
    let unknown = messenger_gateway::store::PgStore::connect(&with(&format!(
        "sslmode=require&sslrootcert={}",
        theirs.display()
    )))
    .await
    .err()
    .expect("a server certificate from another CA is refused");
    assert!(unknown.to_string().contains("certificate"), "{unknown}");
    let system_roots = messenger_gateway::store::PgStore::connect(&with("sslmode=require"))
        .await
        .err()
        .expect("a private CA is not trusted unless named");
    assert!(
        system_roots.to_string().contains("certificate"),
        "{system_roots}"
    );

    let a = replica(&with(&format!(
        "sslmode=require&sslrootcert={}",
        ours.display()
    )))
    .await;
    let b = replica(&with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ours.display()
    )))
    .await;
    let mut events = b.events_after(0).await;
    assert_eq!(
        a.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("fed over the encrypted connection")
        .unwrap()
        .unwrap();
    assert_eq!(event.seq, 1);
}

/// A store that answers but refuses every write (as on a full disk): each
/// webhook is a 503, and /readyz says not ready until a write goes through.
#[tokio::test]
async fn a_store_that_cannot_write_makes_the_gateway_not_ready() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let gw = TestGateway::builder()
        .configure({
            let url = url.clone();
            move |s| s.store = Some(url)
        })
        .start()
        .await;
    assert_eq!(gw.admin_status("/readyz").await, 200);
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute(
        "CREATE FUNCTION disk_full() RETURNS trigger AS $$
           BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$
         LANGUAGE plpgsql;
         CREATE TRIGGER disk_full BEFORE INSERT ON events
           FOR EACH ROW EXECUTE FUNCTION disk_full();",
    )
    .await
    .unwrap();
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        503
    );
    assert_eq!(gw.admin_status("/readyz").await, 503);
    db.batch_execute("DROP TRIGGER disk_full ON events;")
        .await
        .unwrap();
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    assert_eq!(gw.admin_status("/readyz").await, 200);
}
