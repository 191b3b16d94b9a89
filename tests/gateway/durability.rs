//! The real binary, killed with SIGKILL and restarted on the same data
//! directory, and its sandbox playing the Instagram user.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;

use crate::support::*;

struct Running {
    child: KillOnDrop,
    client: MessengerClient<tonic::transport::Channel>,
    sandbox_url: String,
}

async fn start_sandboxed(data_dir: &str) -> Running {
    let data = data_dir.to_owned();
    let child = gateway(
        &["serve", "--listen", "127.0.0.1:0", "--sandbox"],
        &[("MESSENGER_GATEWAY_DATA_DIR", &data)],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let (addr, banner) = listening_addr(&mut child);
    let graph = banner_value(&banner, "sandbox Graph API at ");
    let sandbox_url = graph.rsplit_once('/').unwrap().0.to_owned();
    let client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Running {
        child,
        client,
        sandbox_url,
    }
}

/// Has the sandbox deliver one signed webhook; answers the gateway's status.
async fn user_says(sandbox_url: &str, text: &str) -> u64 {
    let said: Value = reqwest::Client::new()
        .post(format!("{sandbox_url}/sandbox/inbound"))
        .json(&json!({"sender_id": "17841400000000000", "text": text}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    said["webhook_status"].as_u64().unwrap()
}

async fn subscribe_all(
    client: &mut MessengerClient<tonic::transport::Channel>,
    n: usize,
) -> Vec<pb::InboundEvent> {
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    crate::support::next_events(&mut stream, n).await
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_every_acknowledged_event_is_there_and_no_send_repeats() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut first = start_sandboxed(dir).await;

    // 40 deliveries at once, each acknowledged only once stored.
    let mut posts = Vec::new();
    for i in 0..40 {
        let url = first.sandbox_url.clone();
        posts.push(tokio::spawn(async move {
            user_says(&url, &format!("before the crash {i}")).await
        }));
    }
    for post in posts {
        assert_eq!(post.await.unwrap(), 200);
    }
    let request = pb::SendRequest {
        request_id: "crash-test-0001".into(),
        account_id: "shop".into(),
        ..text_to("17841400000000000", "exactly once")
    };
    let sent = first
        .client
        .send(request.clone())
        .await
        .unwrap()
        .into_inner();

    first.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.child.wait().unwrap();

    let mut second = start_sandboxed(dir).await;
    let events = subscribe_all(&mut second.client, 40).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    let again = second.client.send(request).await.unwrap().into_inner();
    assert_eq!(again, sent);
    // The new sandbox received nothing: the repeat never reached Graph.
    let log: Value = reqwest::get(format!("{}/sandbox/messages", second.sandbox_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["messages"], json!([]));
    sigterm(&second.child);
    assert!(wait_with_timeout(&mut second.child, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_plays_the_user_and_enforces_the_window() {
    let data = tempfile::tempdir().unwrap();
    let mut gw = start_sandboxed(data.path().to_str().unwrap()).await;
    let http = reqwest::Client::new();
    let say = |body: Value| {
        http.post(format!("{}/sandbox/inbound", gw.sandbox_url))
            .json(&body)
            .send()
    };
    let someone = "17841400000000123";

    // Never wrote: the sandbox refuses as Graph does.
    let refused = gw
        .client
        .send(from_account("shop", text_to(someone, "hello?")))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "OUTSIDE_MESSAGING_WINDOW");
    assert_eq!(error_info(&refused).1["graphCode"], "10");

    // They write: the event arrives on Subscribe, the window opens, a reply goes.
    let said: Value = say(json!({"sender_id": someone, "text": "Hi there"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(said["webhook_status"], 200);
    let events = subscribe_all(&mut gw.client, 1).await;
    let Some(pb::inbound_event::Event::Message(m)) = &events[0].event else {
        panic!("{events:?}")
    };
    assert_eq!(
        (events[0].sender_id.as_str(), m.text.as_str()),
        (someone, "Hi there")
    );
    let window = gw
        .client
        .get_window(pb::GetWindowRequest {
            recipient_id: someone.into(),
            account_id: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(window.state, pb::WindowState::Open as i32);
    gw.client
        .send(from_account("shop", text_to(someone, "Hello!")))
        .await
        .unwrap();
    // Their window is with the shop only: support may not write to them yet.
    let refused = gw
        .client
        .send(from_account(
            "support",
            text_to(someone, "Hello from support"),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "OUTSIDE_MESSAGING_WINDOW");
    // Until they write to support too, which lands under support.
    let said: Value = say(json!({"sender_id": someone, "text": "Support?", "account": "support"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(said["webhook_status"], 200);
    let events = subscribe_all(&mut gw.client, 2).await;
    assert_eq!(
        events[1].account_id,
        messenger_gateway::sandbox::SUPPORT_ACCOUNT_ID
    );
    gw.client
        .send(from_account(
            "support",
            text_to(someone, "Hello from support"),
        ))
        .await
        .unwrap();

    // Someone whose last message is 25 hours old: the gateway refuses itself.
    let late = "17841400000000456";
    let said = say(json!({"sender_id": late, "text": "old", "age": "25h"}))
        .await
        .unwrap();
    assert_eq!(said.status().as_u16(), 200);
    let refused = gw
        .client
        .send(from_account("shop", text_to(late, "sorry")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let (reason, metadata) = error_info(&refused);
    assert_eq!(reason, "OUTSIDE_MESSAGING_WINDOW");
    assert!(metadata.contains_key("windowClosedAt"), "{metadata:?}");
    assert!(!metadata.contains_key("graphCode"), "refused before Graph");
    // With the tag, within 7 days, it goes.
    let tagged = pb::SendRequest {
        tag: pb::MessageTag::HumanAgent as i32,
        account_id: "shop".into(),
        ..text_to(late, "a person replies")
    };
    gw.client.send(tagged).await.unwrap();

    let bad = say(json!({"sender_id": "jane.doe"})).await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    sigterm(&gw.child);
    assert!(wait_with_timeout(&mut gw.child, Duration::from_secs(10)).success());
}

/// One Graph call at a time, held at Graph: 40 sends under request ids, one
/// at Graph and 39 waiting for the call slot, when the gateway is killed.
/// After a restart every retry is sent exactly once, except the one whose
/// call had begun: its fate is unknown, and it is never sent again.
#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_a_send_whose_graph_call_never_began_is_sent_by_its_retry() {
    let held = HeldGraph::start().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let base = format!("{}/v25.0", held.url);
    let start = || {
        let child = gateway(
            &["serve", "--listen", "127.0.0.1:0", "--max-graph-calls", "1"],
            &[
                ("MESSENGER_GATEWAY_DATA_DIR", &dir),
                ("INSTAGRAM_GRAPH_API_URL", &base),
                ("INSTAGRAM_USER_ID", ACCOUNT),
                ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ],
        )
        .spawn()
        .unwrap();
        let mut child = KillOnDrop(child);
        let (addr, banner) = listening_addr(&mut child);
        let admin = banner_value(&banner, "admin at ");
        (child, addr, admin)
    };
    let send = |i: usize| {
        let mut request = tonic::Request::new(pb::SendRequest {
            request_id: format!("crash-{i:04}"),
            ..text_to(USER, &format!("message {i}"))
        });
        request.set_timeout(Duration::from_secs(120));
        request
    };
    let (mut first, addr, admin) = start();
    let client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for i in 0..40 {
        let mut client = client.clone();
        let request = send(i);
        tokio::spawn(async move { client.send(request).await });
    }
    held.until_waiting(1).await;
    eventually(Duration::from_secs(30), "40 sends under way", || async {
        metric_at(&admin, "messenger_gateway_sends_in_flight").await == 40.0
    })
    .await;
    let began = held.texts();
    assert_eq!(began.len(), 1, "one call at a time");
    first.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.wait().unwrap();

    held.release();
    let (mut second, addr, _) = start();
    let mut client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut unknown = Vec::new();
    for i in 0..40 {
        match client.send(send(i)).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(error_info(&status).0, "DELIVERY_UNKNOWN", "{i}: {status:?}");
                unknown.push(serde_json::json!(format!("message {i}")));
            }
        }
    }
    // Unknown only where a call had begun; every message reached Graph once.
    assert_eq!(unknown, began);
    let mut texts: Vec<String> = held
        .texts()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("message {i}")).collect();
    expected.sort();
    assert_eq!(texts, expected);
    sigterm(&second);
    assert!(wait_with_timeout(&mut second, Duration::from_secs(10)).success());
}
