//! API keys: who gets in, what each key may do, and what a revoked key loses.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;

use messenger_gateway::edge::grpc::pb;

use crate::support::*;

const BILLING: &str = "mgw_billing_secret_0123456789abcdefghijklmnopqrst";
const SUPPORT: &str = "mgw_support_secret_0123456789abcdefghijklmnopqrst";
const READER: &str = "mgw_reader_secret_0123456789abcdefghijklmnopqrstu";
const OTHER_ACCOUNT: &str = "17841400000000999";

fn keys() -> String {
    key_entry(
        "billing",
        BILLING,
        &["*"],
        &["send", "send_action", "get_window", "subscribe"],
    ) + &key_entry("support", SUPPORT, &[ACCOUNT], &["send", "subscribe"])
        + &key_entry(
            "reader",
            READER,
            &[OTHER_ACCOUNT],
            &["send", "get_window", "subscribe"],
        )
}

async fn gateway() -> TestGateway {
    let gw = TestGateway::builder().keys(&keys()).start().await;
    gw.graph_answers(ok_reply()).await;
    gw
}

#[tokio::test]
async fn a_call_without_a_key_or_with_an_unknown_one_is_unauthenticated_and_sends_nothing() {
    let gw = gateway().await;
    let mut client = gw.client().await;
    for request in [
        tonic::Request::new(text_to(USER, "hi")),
        with_key(text_to(USER, "hi"), "mgw_not_a_key"),
        with_key(text_to(USER, "hi"), &BILLING[..BILLING.len() - 1]),
    ] {
        let status = client.send(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(error_info(&status).0, "API_KEY_INVALID");
    }
    let status = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(gw.graph_calls().await, 0);
    // Health needs no key.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let served = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(served.into_inner().status, 1);
}

#[tokio::test]
async fn a_key_is_held_to_its_operations_and_its_accounts() {
    let gw = gateway().await;
    let mut client = gw.client().await;
    let lacking = client
        .get_window(with_key(
            pb::GetWindowRequest {
                recipient_id: USER.into(),
                ..Default::default()
            },
            SUPPORT,
        ))
        .await
        .unwrap_err();
    assert_eq!(lacking.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&lacking);
    assert_eq!(reason, "OPERATION_NOT_ALLOWED");
    assert_eq!(metadata["keyId"], "support");
    assert_eq!(metadata["operation"], "get_window");

    let elsewhere = client
        .send(with_key(text_to(USER, "hi"), READER))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&elsewhere);
    assert_eq!(reason, "ACCOUNT_NOT_ALLOWED");
    assert_eq!(metadata["keyId"], "reader");
    assert!(
        !format!("{elsewhere:?}").contains(READER),
        "the secret is never echoed"
    );
    assert_eq!(
        gw.graph_calls().await,
        0,
        "nothing is sent for a refused call"
    );

    client
        .send(with_key(text_to(USER, "hi"), SUPPORT))
        .await
        .unwrap();
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn request_ids_are_scoped_per_key() {
    let gw = gateway().await;
    let mut client = gw.client().await;
    let send = |text: &str, secret: &str| {
        with_key(
            pb::SendRequest {
                request_id: "shared-id-1".into(),
                ..text_to(USER, text)
            },
            secret,
        )
    };
    // Different content under the same id: no conflict across keys.
    client.send(send("from billing", BILLING)).await.unwrap();
    client.send(send("from support", SUPPORT)).await.unwrap();
    assert_eq!(gw.graph_calls().await, 2);
    // Within one key the id still means "at most once".
    client.send(send("from billing", BILLING)).await.unwrap();
    assert_eq!(gw.graph_calls().await, 2);
    let conflict = client.send(send("changed", SUPPORT)).await.unwrap_err();
    assert_eq!(error_info(&conflict).0, "INVALID_REQUEST");
}

#[tokio::test]
async fn subscribe_streams_only_the_events_of_the_keys_accounts() {
    let gw = gateway().await;
    let mut client = gw.client().await;
    let mut mine = client
        .subscribe(with_key(
            pb::SubscribeRequest {
                after: 0,
                ..Default::default()
            },
            SUPPORT,
        ))
        .await
        .unwrap()
        .into_inner();
    let other = serde_json::to_vec(&serde_json::json!({"object":"instagram","entry":[
        {"id": OTHER_ACCOUNT, "time": T0, "messaging": [{"sender":{"id":USER},"recipient":{"id":OTHER_ACCOUNT},"timestamp":T0,"message":{"mid":"elsewhere","text":"not yours"}}]}]}))
    .unwrap();
    assert_eq!(gw.deliver(&other).await, 200);
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m-1", "yours", T0)]))
            .await,
        200
    );
    let first = tokio::time::timeout(Duration::from_secs(5), mine.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((first.seq, first.account_id.as_str()), (2, ACCOUNT));
    // The reader key sees the other account's event and not ours.
    let mut theirs = client
        .subscribe(with_key(
            pb::SubscribeRequest {
                after: 0,
                ..Default::default()
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = within("the next item of theirs", theirs.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.seq, seen.account_id.as_str()), (1, OTHER_ACCOUNT));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), theirs.next())
            .await
            .is_err(),
        "nothing more for the reader"
    );
}

#[tokio::test]
async fn a_reload_revokes_a_removed_key_and_ends_its_streams_but_a_bad_file_changes_nothing() {
    let gw = gateway().await;
    let mut client = gw.client().await;
    let mut stream = client
        .subscribe(with_key(
            pb::SubscribeRequest {
                after: 0,
                ..Default::default()
            },
            SUPPORT,
        ))
        .await
        .unwrap()
        .into_inner();

    // A broken file, one truncated to nothing (a write caught half done),
    // and one of comments only: each refused, the keys in force stay (and
    // the stream stays open: it ends below, when its key is revoked).
    for text in ["[[key]\nbroken", "", "# every key went\n"] {
        std::fs::write(&gw.keys_file, text).unwrap();
        let refused = gw.keys.reload().unwrap_err();
        if !text.contains("broken") {
            assert!(refused.to_string().contains("no [[key]]"), "{refused}");
        }
        client
            .send(with_key(text_to(USER, "still in"), SUPPORT))
            .await
            .unwrap();
    }

    std::fs::write(
        &gw.keys_file,
        key_entry("billing", BILLING, &["*"], &["send"]),
    )
    .unwrap();
    gw.keys.reload().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends at once")
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert_eq!(error_info(&ended).0, "API_KEY_INVALID");
    let refused = client
        .send(with_key(text_to(USER, "gone"), SUPPORT))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    client
        .send(with_key(text_to(USER, "kept"), BILLING))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_connection_with_no_authenticated_call_is_closed_in_time() {
    use messenger_gateway::edge::net::Limits;
    use messenger_gateway::edge::server::ServeOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = ServeOptions {
        limits: Limits {
            authenticate_within: Some(Duration::from_millis(300)),
            ..Limits::default()
        },
        ..ServeOptions::default()
    };
    let gw = TestGateway::builder()
        .keys(&keys())
        .serve(options)
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    // A well-behaved HTTP/2 client that never presents a key.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 256];
        // It answers pings; the gateway's SETTINGS come, then the close.
        while let Ok(n) = idle.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    closed.await.expect("the keyless connection was closed");
    // One that presents a key is served, and stays past the limit.
    let mut client = gw.client().await;
    client
        .send(with_key(text_to(USER, "hi"), BILLING))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .send(with_key(text_to(USER, "again"), BILLING))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_scoped_to_me_sees_the_events_of_the_account_configured_as_me() {
    use messenger_gateway::accounts::AccountSpec;
    use messenger_gateway::app::Upstream;
    use messenger_gateway::graph::{AccessToken, Account};
    const MINE: &str = "mgw_mine_secret_0123456789abcdefghijklmnopqrstuv";
    let gw = TestGateway::builder()
        .keys(&key_entry("mine", MINE, &["me"], &["subscribe"]))
        .configure(|s| {
            let me =
                Account::new("http://127.0.0.1:9/v25.0", "me", &AccessToken::new("t")).unwrap();
            s.upstream = Upstream::Graph(vec![AccountSpec::new(me)]);
        })
        .start()
        .await;
    // The webhooks carry the account's real id.
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    let mut client = gw.client().await;
    for account_ids in [vec![], vec!["me".to_owned()]] {
        let mut stream = client
            .subscribe(with_key(
                pb::SubscribeRequest {
                    after: 0,
                    account_ids,
                    ..Default::default()
                },
                MINE,
            ))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the key sees the event")
            .unwrap()
            .unwrap();
        assert_eq!((first.seq, first.account_id.as_str()), (1, ACCOUNT));
    }
}
