//! Replicas as operators run them: several gateway processes (the real
//! binary) on one PostgreSQL, behind no load balancer but the tests'
//! round robin, with one fake Graph in this process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::webhook;
use serde_json::json;
use tonic::transport::Channel;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

/// One gateway process on the shared store.
struct Replica {
    child: KillOnDrop,
    grpc: String,
    webhook: String,
    admin: String,
}

impl Replica {
    fn start(store: &str, graph: &MockServer) -> Self {
        let base = format!("{}/v25.0", graph.uri());
        let env = [
            ("MESSENGER_GATEWAY_STORE", store),
            ("INSTAGRAM_GRAPH_API_URL", base.as_str()),
            ("INSTAGRAM_USER_ID", ACCOUNT),
            ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ("INSTAGRAM_APP_SECRET", APP_SECRET),
            ("INSTAGRAM_VERIFY_TOKEN", VERIFY_TOKEN),
            // Sends to people who never wrote are refused, so a window
            // opened through another replica shows.
            ("MESSENGER_GATEWAY_WINDOW_POLICY", "strict"),
        ];
        let mut child = KillOnDrop(
            gateway(&["serve", "--listen", "127.0.0.1:0"], &env)
                .spawn()
                .unwrap(),
        );
        let (grpc, banner) = listening_addr(&mut child);
        let after = |prefix: &str| {
            banner
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {prefix:?} in {banner:?}"))
                .to_owned()
        };
        Self {
            webhook: after("webhooks at "),
            admin: after("admin at "),
            grpc: format!("http://{grpc}"),
            child,
        }
    }

    async fn client(&self) -> MessengerClient<Channel> {
        MessengerClient::connect(self.grpc.clone()).await.unwrap()
    }

    async fn ready(&self) -> bool {
        match reqwest::get(format!("{}/readyz", self.admin)).await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    }

    fn kill_9(&mut self) {
        let ok = std::process::Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let _ = self.child.wait();
    }
}

/// A Graph stand-in: `/me` and refreshes for the token keeper, and sends
/// accepted after `delay`, each body kept.
async fn graph(delay: Duration) -> MockServer {
    let graph = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"user_id": ACCOUNT, "username": "shop", "id": "9"})),
        )
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 5_184_000}),
        ))
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(ok_reply().set_delay(delay))
        .mount(&graph)
        .await;
    graph
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Delivers `body` as Meta does: to the next replica in turn, again and
/// again until one answers 200 (Meta redelivers what was not taken).
async fn deliver_until_taken(http: &reqwest::Client, urls: &[String], first: usize, body: Vec<u8>) {
    let signature = webhook::sign(APP_SECRET, &body);
    let started = Instant::now();
    for attempt in 0.. {
        let url = &urls[(first + attempt) % urls.len()];
        let taken = http
            .post(url)
            .header("content-type", "application/json")
            .header(webhook::SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if taken {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `posters` tasks deliver `count` messages between them (mids `m0`…),
/// round robin over `urls`; answers once every one was taken.
async fn post_messages(
    urls: Vec<String>,
    posters: usize,
    count: usize,
    paused_after: Option<(usize, tokio::sync::oneshot::Sender<()>)>,
) {
    let http = reqwest::Client::new();
    let urls = Arc::new(urls);
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let signal = Arc::new(Mutex::new(paused_after));
    let mut tasks = tokio::task::JoinSet::new();
    for poster in 0..posters {
        let (http, urls, taken, signal) =
            (http.clone(), urls.clone(), taken.clone(), signal.clone());
        tasks.spawn(async move {
            for i in (poster..count).step_by(posters) {
                let body = messages_from_user(&[(&format!("m{i}"), "hi", now_ms())]);
                deliver_until_taken(&http, &urls, i, body).await;
                let n = taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let mut signal = signal.lock().unwrap();
                if signal.as_ref().is_some_and(|(at, _)| n >= *at) {
                    let (_, tx) = signal.take().unwrap();
                    let _ = tx.send(());
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Reads events from the replicas in turn, resuming with `after` whenever
/// a stream ends (as a client does on UNAVAILABLE), until `count` arrived;
/// checks they came once each, in seq order with no gap; answers the mids.
async fn subscribe_until(replicas: Vec<String>, count: usize) -> Vec<String> {
    let mut mids = Vec::new();
    let mut last = 0u64;
    let started = Instant::now();
    let mut turn = 0;
    while mids.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of {count} events arrived",
            mids.len()
        );
        let url = &replicas[turn % replicas.len()];
        turn += 1;
        let Ok(mut client) = MessengerClient::connect(url.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(stream) = client
            .subscribe(pb::SubscribeRequest {
                after: last,
                // Everything, so the seqs have no gap.
                include_outbound: true,
                ..Default::default()
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while mids.len() < count {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(event))) => {
                    assert_eq!(event.seq, last + 1, "seq order with no gap");
                    last = event.seq;
                    if let Some(pb::inbound_event::Event::Sent(_)) = event.event {
                        continue;
                    }
                    let Some(pb::inbound_event::Event::Message(m)) = event.event else {
                        panic!("not a message: {event:?}");
                    };
                    mids.push(m.mid);
                }
                // Ended (say, the store went away): resume elsewhere.
                Ok(_) => break,
                Err(_) => panic!("no event for 30 s; {} of {count} arrived", mids.len()),
            }
        }
    }
    let unique: HashSet<&String> = mids.iter().collect();
    assert_eq!(unique.len(), mids.len(), "every event once");
    mids
}

/// What the subscriber task gathered (it checks each event came once, in
/// order), waiting at most `limit` for it to have them all.
async fn gathered(
    subscriber: tokio::task::JoinHandle<Vec<String>>,
    limit: Duration,
) -> HashSet<String> {
    tokio::time::timeout(limit, subscriber)
        .await
        .expect("every acknowledged event reaches the subscriber")
        .unwrap()
        .into_iter()
        .collect()
}

fn expected_mids(count: usize) -> HashSet<String> {
    (0..count).map(|i| format!("m{i}")).collect()
}

/// Texts Graph was asked to send, with how often each.
async fn sent_texts(graph: &MockServer) -> HashMap<String, usize> {
    let mut texts = HashMap::new();
    for request in graph.received_requests().await.unwrap() {
        if request.url.path() == MESSAGES_PATH {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let text = body["message"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *texts.entry(text).or_default() += 1;
        }
    }
    texts
}

fn send(text: &str, request_id: &str) -> pb::SendRequest {
    pb::SendRequest {
        request_id: request_id.into(),
        ..text_to(USER, text)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replica_processes_behave_as_one_gateway() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let graph = graph(Duration::from_millis(200)).await;
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&url, &graph)).collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);

    // Nobody wrote yet: every replica refuses a send to this person.
    let refused = b
        .client()
        .await
        .send(text_to(USER, "too early"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "OUTSIDE_MESSAGING_WINDOW");

    // 8 posters, round robin to a and b; a subscriber on c.
    const COUNT: usize = 400;
    let subscriber = tokio::spawn(subscribe_until(vec![c.grpc.clone()], COUNT));
    post_messages(vec![a.webhook.clone(), b.webhook.clone()], 8, COUNT, None).await;
    // c's subscriber hears every event.
    assert_eq!(
        gathered(subscriber, Duration::from_secs(60)).await,
        expected_mids(COUNT)
    );

    // The window the posts opened (through a and b) holds on c.
    c.client()
        .await
        .send(text_to(USER, "welcome"))
        .await
        .expect("the window is open on c");

    // The same request_id to all three at once: one Graph call, one answer.
    let calls = (0..3).map(|i| {
        let grpc = replicas[i].grpc.clone();
        async move {
            let mut client = MessengerClient::connect(grpc).await.unwrap();
            client.send(send("only once", "same-id-everywhere")).await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let ids: HashSet<String> = answers
        .into_iter()
        .map(|a| {
            a.expect("every caller gets the answer")
                .into_inner()
                .message_id
        })
        .collect();
    assert_eq!(ids.len(), 1, "all three callers get the same answer");
    assert_eq!(sent_texts(&graph).await["only once"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replica_processes_keep_to_the_accounts_300_per_second_between_them() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let graph = graph(Duration::ZERO).await;
    let meta = MetaRateLimit::new(300);
    // Ahead of the stand-in's own answer for sends.
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(meta.clone())
        .with_priority(1)
        .mount(&graph)
        .await;
    let replicas: Vec<Replica> = (0..2).map(|_| Replica::start(&url, &graph)).collect();
    // A person who wrote, so the broadcast is inside the window.
    post_messages(vec![replicas[0].webhook.clone()], 1, 1, None).await;
    // Each has said it is alive and seen the other.
    until_replicas_share(&url, 2).await;

    const EACH: usize = 1500;
    let mut senders = tokio::task::JoinSet::new();
    for r in &replicas {
        for caller in 0..30 {
            let mut client = r.client().await;
            senders.spawn(async move {
                for i in 0..EACH / 30 {
                    let request = pb::SendRequest {
                        request_id: format!("{caller}-{i}-{}", rand_suffix()),
                        ..text_to(USER, "spring sale")
                    };
                    client
                        .send(request)
                        .await
                        .expect("every message is delivered");
                }
            });
        }
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
    assert_eq!(meta.refused(), 0, "Graph refused sends as over its limit");
    let accepted = meta.accepted();
    assert_eq!(accepted.len(), 2 * EACH);
    let busiest = busiest_second(&accepted);
    eprintln!("busiest second at Graph: {busiest}");
    assert!(busiest <= 300, "{busiest} in one second");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_load_loses_nothing_acknowledged_and_sends_nothing_twice() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let graph = graph(Duration::from_millis(100)).await;
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&url, &graph)).collect();
    post_messages(vec![replicas[0].webhook.clone()], 1, 1, None).await;
    const COUNT: usize = 600;
    let subscriber = tokio::spawn(subscribe_until(vec![replicas[2].grpc.clone()], COUNT + 1));
    let (killing, kill_now) = tokio::sync::oneshot::channel();
    // Posts m1.. (m0 opened the window above).
    let posting = tokio::spawn(post_messages(
        vec![replicas[0].webhook.clone(), replicas[1].webhook.clone()],
        8,
        COUNT + 1,
        Some((COUNT / 3, killing)),
    ));
    // Sends with request_ids, to b first and to a when b fails, as a
    // caller retries: acknowledged ones reached Graph exactly once.
    let (a_grpc, b_grpc) = (replicas[0].grpc.clone(), replicas[1].grpc.clone());
    let sending = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..8 {
            let (a_grpc, b_grpc) = (a_grpc.clone(), b_grpc.clone());
            tasks.spawn(async move {
                let mut ok = Vec::new();
                for i in 0..30 {
                    let text = format!("send-{caller}-{i}");
                    for target in [&b_grpc, &a_grpc, &a_grpc] {
                        let Ok(mut client) = MessengerClient::connect(target.clone()).await else {
                            continue;
                        };
                        let mut request = tonic::Request::new(send(&text, &text));
                        request.set_timeout(Duration::from_secs(3));
                        if client.send(request).await.is_ok() {
                            ok.push(text.clone());
                            break;
                        }
                    }
                }
                ok
            });
        }
        while let Some(done) = tasks.join_next().await {
            acknowledged.extend(done.unwrap());
        }
        acknowledged
    });
    kill_now.await.unwrap();
    replicas[1].kill_9();
    posting.await.unwrap();
    // m0 was posted twice (before and in the load): one event.
    assert_eq!(
        gathered(subscriber, Duration::from_secs(90)).await,
        expected_mids(COUNT + 1)
    );

    let acknowledged = sending.await.unwrap();
    let texts = sent_texts(&graph).await;
    for (text, times) in &texts {
        assert!(*times <= 1, "{text} was sent {times} times");
    }
    for text in &acknowledged {
        assert_eq!(
            texts.get(text),
            Some(&1),
            "{text} acknowledged but not sent"
        );
    }
    eprintln!(
        "{} of 240 sends acknowledged; {} reached Graph",
        acknowledged.len(),
        texts.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_and_started_mid_load_loses_nothing_and_needs_no_restart() {
    let Some(cluster) = crate::support::cluster::Cluster::start(&[], &[]) else {
        return;
    };
    let url = cluster.url();
    let graph = graph(Duration::ZERO).await;
    let replicas: Vec<Replica> = (0..2).map(|_| Replica::start(&url, &graph)).collect();
    const COUNT: usize = 300;
    let grpcs: Vec<String> = replicas.iter().map(|r| r.grpc.clone()).collect();
    let subscriber = tokio::spawn(subscribe_until(grpcs, COUNT));
    let (stopping, stop_now) = tokio::sync::oneshot::channel();
    let posting = tokio::spawn(post_messages(
        replicas.iter().map(|r| r.webhook.clone()).collect(),
        8,
        COUNT,
        Some((COUNT / 3, stopping)),
    ));
    stop_now.await.unwrap();
    tokio::task::block_in_place(|| cluster.stop());
    eventually(
        Duration::from_secs(5),
        "not ready while the store is away",
        || async { !replicas[0].ready().await && !replicas[1].ready().await },
    )
    .await;
    // Sends without a request_id go on, on the windows each replica knew.
    replicas[0]
        .client()
        .await
        .send(text_to(USER, "while the database is away"))
        .await
        .expect("sent on the cached window");
    let refused = replicas[1]
        .client()
        .await
        .send(send("needs the store", "an-id"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "STORE_UNAVAILABLE");
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| cluster.start_again());
    posting.await.unwrap();
    assert_eq!(
        gathered(subscriber, Duration::from_secs(90)).await,
        expected_mids(COUNT)
    );
    for r in &replicas {
        eventually(Duration::from_secs(10), "ready again", || r.ready()).await;
    }
    let texts = sent_texts(&graph).await;
    assert_eq!(texts.get("needs the store"), None);
}
