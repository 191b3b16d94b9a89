//! The subscriber's promise, as a property: for random interleavings of
//! deliveries (new and returning senders, echoes, reads, reactions,
//! postbacks, redeliveries, several items and entries per delivery) posted
//! by several posters at once, and sends the gateway records meanwhile
//! (a subscriber that asks for outbound events), what a live subscriber got equals the
//! store's replay event for event (seq and content), the seqs run 1..N
//! with no gap, nothing acknowledged is missing, and a subscriber resuming
//! with `after = k` gets exactly the tail. On SQLite and on PostgreSQL.
//!
//! Seeded: a failure names its seed; `LIVE_STREAM_SEED=n` replays it.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::inbound_event::Event;

use crate::support::*;

/// A second account, not configured: its events are stored all the same.
const OTHER_ACCOUNT: &str = "17841400000000002";
const POSTERS: usize = 4;

/// What the generator has made so far, so later items can refer to it.
struct Model {
    rng: StdRng,
    next: u64,
    senders: Vec<String>,
    /// Mids of messages sent, to read and react to.
    mids: Vec<String>,
    /// Items made (each a new event), with the ids a subscriber will see.
    items: Vec<Value>,
    /// Bodies posted so far, to redeliver.
    bodies: Vec<Vec<u8>>,
    /// Times used so far: each item's is its own.
    times: HashSet<i64>,
}

impl Model {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            next: 0,
            senders: Vec::new(),
            mids: Vec::new(),
            items: Vec::new(),
            bodies: Vec::new(),
            times: HashSet::new(),
        }
    }

    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn sender(&mut self) -> String {
        if self.senders.is_empty() || self.rng.random_bool(0.3) {
            let id = format!("{}", 27_000_000_000_000_000u64 + self.fresh());
            self.senders.push(id.clone());
            id
        } else {
            let i = self.rng.random_range(0..self.senders.len());
            self.senders[i].clone()
        }
    }

    fn earlier_mid(&mut self) -> Option<String> {
        (!self.mids.is_empty()).then(|| {
            let i = self.rng.random_range(0..self.mids.len());
            self.mids[i].clone()
        })
    }

    /// One new messaging item for `account`: every one is a distinct event.
    fn item(&mut self, account: &str) -> Value {
        let n = self.fresh();
        let sender = self.sender();
        // Distinct times, all within the last hour of the test clock, and
        // not in order: Meta does not promise order.
        let timestamp = loop {
            let t = T0 - 3_600_000 + self.rng.random_range(0..3_000_000);
            if self.times.insert(t) {
                break t;
            }
        };
        let mid = format!("mid.{n}");
        let earlier = self.earlier_mid();
        let item = match (self.rng.random_range(0..10), earlier) {
            (0, Some(mid)) => json!({"sender":{"id":sender},"recipient":{"id":account},
                "timestamp":timestamp,"read":{"mid":mid}}),
            (1, Some(mid)) => json!({"sender":{"id":sender},"recipient":{"id":account},
                "timestamp":timestamp,"reaction":{"mid":mid,"action":"react","reaction":"love","emoji":"❤"}}),
            (2, _) => json!({"sender":{"id":sender},"recipient":{"id":account},
                "timestamp":timestamp,"postback":{"mid":format!("pb.{n}"),"title":"Yes","payload":"YES"}}),
            (3, _) => {
                self.mids.push(mid.clone());
                json!({"sender":{"id":account},"recipient":{"id":sender},
                "timestamp":timestamp,"message":{"mid":mid,"text":format!("echo {n}"),"is_echo":true}})
            }
            _ => {
                self.mids.push(mid.clone());
                json!({"sender":{"id":sender},"recipient":{"id":account},
                "timestamp":timestamp,"message":{"mid":mid,"text":format!("text {n}")}})
            }
        };
        self.items.push(item.clone());
        item
    }

    /// One delivery: a redelivery of an earlier body, or 1–3 entries of
    /// 1–3 items each (now and then with an earlier item redelivered
    /// beside the new ones).
    fn delivery(&mut self) -> Vec<u8> {
        if !self.bodies.is_empty() && self.rng.random_bool(0.15) {
            let i = self.rng.random_range(0..self.bodies.len());
            return self.bodies[i].clone();
        }
        let entries: Vec<Value> = (0..self.rng.random_range(1..=3))
            .map(|_| {
                let account = if self.rng.random_bool(0.8) {
                    ACCOUNT
                } else {
                    OTHER_ACCOUNT
                };
                let mut items: Vec<Value> = (0..self.rng.random_range(1..=3))
                    .map(|_| self.item(account))
                    .collect();
                // An item seen before, redelivered among new ones.
                if self.rng.random_bool(0.1) {
                    let old = self.items[self.rng.random_range(0..self.items.len())].clone();
                    if old["recipient"]["id"] == account || old["sender"]["id"] == account {
                        items.push(old);
                    }
                }
                json!({"id": account, "time": T0, "messaging": items})
            })
            .collect();
        let body = serde_json::to_vec(&json!({"object":"instagram","entry":entries})).unwrap();
        self.bodies.push(body.clone());
        body
    }
}

/// What identifies an event's content to the model: its mid, or for a
/// read or reaction the kind and the time.
fn identity(e: &pb::InboundEvent) -> String {
    let at = e
        .timestamp
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    match &e.event {
        Some(Event::Message(m)) | Some(Event::Echo(m)) => m.mid.clone(),
        Some(Event::Postback(p)) => p.mid.clone(),
        Some(Event::Read(_)) => format!("read@{at:?}"),
        Some(Event::Reaction(_)) => format!("reaction@{at:?}"),
        Some(Event::Sent(s)) => s.mid.clone(),
        other => format!("{other:?}"),
    }
}

fn model_identity(item: &Value) -> String {
    let at = item["timestamp"].as_i64();
    if let Some(mid) = item["message"]["mid"].as_str() {
        mid.to_owned()
    } else if let Some(mid) = item["postback"]["mid"].as_str() {
        mid.to_owned()
    } else if item.get("read").is_some() {
        format!("read@{at:?}")
    } else {
        format!("reaction@{at:?}")
    }
}

/// Posts every delivery, split over `POSTERS` posters at once; each must
/// be acknowledged with 200.
async fn post_concurrently(gw: &TestGateway, bodies: Vec<Vec<u8>>) {
    let mut lanes: Vec<Vec<Vec<u8>>> = vec![Vec::new(); POSTERS];
    for (i, body) in bodies.into_iter().enumerate() {
        lanes[i % POSTERS].push(body);
    }
    let url = gw.webhook_url.clone();
    let mut posters = tokio::task::JoinSet::new();
    for lane in lanes {
        let url = url.clone();
        posters.spawn(async move {
            let client = reqwest::Client::new();
            for body in lane {
                let signature = messenger_gateway::edge::webhook::sign(APP_SECRET, &body);
                let status = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        messenger_gateway::edge::webhook::SIGNATURE_HEADER,
                        signature,
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
            }
        });
    }
    while let Some(done) = posters.join_next().await {
        done.unwrap();
    }
}

/// Graph accepting every send under a mid of its own.
struct NumberedMids(std::sync::atomic::AtomicU64);

impl wiremock::Respond for NumberedMids {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        wiremock::ResponseTemplate::new(200).set_body_json(ok_body(&format!("mid.sent.{n}")))
    }
}

/// `n` sends, one after another, while the posters post.
async fn send_meanwhile(gw: &TestGateway, n: usize) {
    let mut client = gw.client().await;
    for i in 0..n {
        client
            .send(text_to(USER, &format!("sent {i}")))
            .await
            .unwrap();
    }
}

/// One run of the property with `seed`, on the gateway `gw` (fresh store).
async fn the_live_stream_is_the_store(gw: &TestGateway, seed: u64, deliveries: usize) {
    let mut model = Model::new(seed);
    let bodies: Vec<Vec<u8>> = (0..deliveries).map(|_| model.delivery()).collect();
    let sends = deliveries / 4;
    let mut expected: HashSet<String> = model.items.iter().map(model_identity).collect();
    expected.extend((1..=sends).map(|i| format!("mid.sent.{i}")));
    let n = model.items.len() + sends;
    assert_eq!(expected.len(), n, "seed {seed}: the model made a duplicate");
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(NumberedMids(Default::default()))
        .mount(&gw.graph)
        .await;

    let mut live = gw.all_events_after(0).await;
    tokio::join!(post_concurrently(gw, bodies), send_meanwhile(gw, sends));
    let got = next_events(&mut live, n).await;
    let mut replay = gw.all_events_after(0).await;
    let stored = next_events(&mut replay, n).await;
    crate::support::assert_quiet(&mut replay).await;
    crate::support::assert_quiet(&mut live).await;

    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "seed {seed}");
    for (i, (l, s)) in got.iter().zip(&stored).enumerate() {
        assert_eq!(l, s, "seed {seed}: live event {i} is not the stored one");
    }
    let identities: HashSet<String> = stored.iter().map(identity).collect();
    assert_eq!(identities, expected, "seed {seed}: not what was posted");

    // Resuming anywhere gives exactly the tail.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for _ in 0..3 {
        let k = rng.random_range(0..n);
        let mut resumed = gw.all_events_after(k as u64).await;
        let tail = next_events(&mut resumed, n - k).await;
        assert_eq!(tail, stored[k..], "seed {seed}: resumed after {k}");
        crate::support::assert_quiet(&mut resumed).await;
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("LIVE_STREAM_SEED") {
        Ok(seed) => vec![seed.parse().expect("LIVE_STREAM_SEED is a number")],
        Err(_) => (1..=4).map(|i| 0x9e37_79b9_u64 * i).collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_the_live_stream_equals_the_stores_replay_for_random_interleavings() {
    for seed in seeds() {
        let gw = TestGateway::start().await;
        the_live_stream_is_the_store(&gw, seed, 60).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_the_live_stream_equals_the_stores_replay_for_random_interleavings() {
    for seed in seeds() {
        let Some(url) = fresh_pg_database().await else {
            return;
        };
        let gw = TestGateway::builder()
            .configure(move |s| s.store = Some(url))
            .start()
            .await;
        the_live_stream_is_the_store(&gw, seed, 60).await;
    }
}

#[test]
fn the_generator_makes_every_kind_the_property_is_about() {
    let mut model = Model::new(7);
    let bodies: Vec<Vec<u8>> = (0..60).map(|_| model.delivery()).collect();
    let all: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let distinct: HashSet<&Vec<u8>> = bodies.iter().collect();
    assert!(distinct.len() < bodies.len(), "no redelivery");
    let entries = |v: &Value| v["entry"].as_array().unwrap().len();
    assert!(
        all.iter().any(|v| entries(v) > 1),
        "no delivery of several entries"
    );
    let text = String::from_utf8(bodies.concat()).unwrap();
    for kind in [
        "\"read\"",
        "\"reaction\"",
        "\"postback\"",
        "\"is_echo\"",
        OTHER_ACCOUNT,
    ] {
        assert!(text.contains(kind), "no {kind}");
    }
    let returning = model.senders.len() < model.items.len();
    assert!(returning, "no returning sender");
}
