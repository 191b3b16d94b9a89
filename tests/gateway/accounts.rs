//! Several accounts in one gateway: each send goes out as its own account,
//! with its own token to its own Graph; webhooks land under the account
//! they are for; keys, request ids and windows are per account.

use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer};

use messenger_gateway::accounts::AccountSpec;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::graph::{AccessToken, Account};
use messenger_gateway::send::delivery::DeliveryPolicy;

use crate::support::*;

const SUPPORT_ID: &str = "17841400000000002";
const SUPPORT_TOKEN: &str = "support-token-91be";
const SUPPORT_PATH: &str = "/v25.0/17841400000000002/messages";
const KEY: &str = "mgw_support_desk_0123456789abcdefghijklmnopqrstu";

/// The default account, plus "support" on a Graph of its own.
async fn two_accounts(keys: Option<String>) -> (TestGateway, MockServer) {
    let support_graph = MockServer::start().await;
    let base = format!("{}/v25.0", support_graph.uri());
    let account = Account::new(&base, SUPPORT_ID, &AccessToken::new(SUPPORT_TOKEN)).unwrap();
    let mut builder = TestGateway::builder().account(AccountSpec::new(account).named("support"));
    if let Some(keys) = keys {
        builder = builder.keys(&keys);
    }
    let gw = builder.start().await;
    gw.graph_answers(ok_reply()).await;
    Mock::given(method("POST"))
        .and(path(SUPPORT_PATH))
        .respond_with(ok_reply())
        .mount(&support_graph)
        .await;
    (gw, support_graph)
}

fn as_account(account: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        account_id: account.into(),
        ..text_to(USER, text)
    }
}

#[tokio::test]
async fn each_send_goes_out_as_its_account_with_its_token_to_its_graph() {
    let (gw, support_graph) = two_accounts(None).await;
    let mut client = gw.client().await;
    let first = client
        .send(as_account(ACCOUNT, "from the shop"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.account_id, ACCOUNT);
    for given in [SUPPORT_ID, "support"] {
        let sent = client
            .send(as_account(given, "from support"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sent.account_id, SUPPORT_ID);
    }

    let shop_calls = gw.graph.received_requests().await.unwrap();
    assert_eq!(shop_calls.len(), 1);
    assert_eq!(shop_calls[0].url.path(), MESSAGES_PATH);
    assert_eq!(
        shop_calls[0].headers.get("authorization").unwrap(),
        &format!("Bearer {TOKEN}")
    );
    let support_calls = support_graph.received_requests().await.unwrap();
    assert_eq!(support_calls.len(), 2);
    for call in &support_calls {
        assert_eq!(call.url.path(), SUPPORT_PATH);
        assert_eq!(
            call.headers.get("authorization").unwrap(),
            &format!("Bearer {SUPPORT_TOKEN}")
        );
    }
}

#[tokio::test]
async fn with_several_accounts_a_call_must_name_one_that_exists() {
    let (gw, support_graph) = two_accounts(None).await;
    let mut client = gw.client().await;

    let status = client.send(text_to(USER, "which?")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).0, "INVALID_REQUEST");
    let details = status.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .expect("a BadRequest names the field")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["account_id"]);

    let status = client
        .send(as_account("17841400000000777", "nobody"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "ACCOUNT_NOT_FOUND");
    assert_eq!(metadata["account"], "17841400000000777");

    // Over any real id's length, or no id or alias at all: refused for
    // its shape before any lookup, naming the field and the length only.
    for given in [
        "1".repeat(65),
        "shop one".to_string(),
        "a\u{1b}[2J".to_string(),
    ] {
        let status = client.send(as_account(&given, "shape")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{given:?}");
        let details = status.get_error_details();
        let violation = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations[0];
        assert_eq!(violation.field, "account_id");
        assert!(!violation.description.contains(&given), "{violation:?}");
    }

    let status = client
        .get_window(pb::GetWindowRequest {
            recipient_id: USER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(gw.graph_calls().await, 0);
    assert!(support_graph.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_key_acts_only_for_its_accounts_named_by_id_or_alias() {
    let keys = key_entry("desk", KEY, &["support"], &["send", "subscribe"]);
    let (gw, support_graph) = two_accounts(Some(keys)).await;
    let mut client = gw.client().await;
    for given in ["support", SUPPORT_ID] {
        client
            .send(with_key(as_account(given, "hello"), KEY))
            .await
            .unwrap();
    }
    let status = client
        .send(with_key(as_account(ACCOUNT, "not mine"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_info(&status).0, "ACCOUNT_NOT_ALLOWED");
    assert_eq!(gw.graph_calls().await, 0);
    assert_eq!(support_graph.received_requests().await.unwrap().len(), 2);

    // A Subscribe naming an account outside the key is refused too.
    let status = client
        .subscribe(with_key(
            pb::SubscribeRequest {
                after: 0,
                account_ids: vec![ACCOUNT.into()],
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn one_delivery_for_two_accounts_lands_under_each_and_subscribers_can_filter() {
    let (gw, _support_graph) = two_accounts(None).await;
    let delivery = json!({"object":"instagram","entry":[
        {"id":ACCOUNT,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":ACCOUNT},
            "timestamp":T0,"message":{"mid":"m-shop","text":"to the shop"}}]},
        {"id":SUPPORT_ID,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":SUPPORT_ID},
            "timestamp":T0,"message":{"mid":"m-support","text":"to support"}}]},
    ]});
    assert_eq!(
        gw.deliver(&serde_json::to_vec(&delivery).unwrap()).await,
        200
    );

    let mut client = gw.client().await;
    let mut all = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = within("the next item of all", all.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(e.account_id);
    }
    assert_eq!(seen, [ACCOUNT, SUPPORT_ID]);

    let mut only_support = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            account_ids: vec!["support".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = within("the next item of only_support", only_support.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.account_id, SUPPORT_ID);
    match e.event {
        Some(pb::inbound_event::Event::Message(m)) => assert_eq!(m.mid, "m-support"),
        other => panic!("expected the support message, got {other:?}"),
    }

    // Each account's window is its own: someone who wrote only to the
    // shop is unknown to support.
    const ONLY_SHOP: &str = "17841400000000077";
    let to_shop = json!({"object":"instagram","entry":[
        {"id":ACCOUNT,"time":T0,"messaging":[{"sender":{"id":ONLY_SHOP},"recipient":{"id":ACCOUNT},
            "timestamp":T0,"message":{"mid":"m-only-shop","text":"shop only"}}]},
    ]});
    assert_eq!(
        gw.deliver(&serde_json::to_vec(&to_shop).unwrap()).await,
        200
    );
    for (account, state) in [
        (ACCOUNT, pb::WindowState::Open),
        ("support", pb::WindowState::Unknown),
    ] {
        let w = client
            .get_window(pb::GetWindowRequest {
                recipient_id: ONLY_SHOP.into(),
                account_id: account.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(w.state, state as i32, "{account}");
    }
    for (account, open) in [(ACCOUNT, true), ("support", true)] {
        let w = client
            .get_window(pb::GetWindowRequest {
                recipient_id: USER.into(),
                account_id: account.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(w.state == pb::WindowState::Open as i32, open, "{account}");
    }
}

#[tokio::test]
async fn the_same_request_id_on_two_accounts_is_two_sends() {
    let (gw, support_graph) = two_accounts(None).await;
    let mut client = gw.client().await;
    for account in [ACCOUNT, "support", ACCOUNT, "support"] {
        client
            .send(pb::SendRequest {
                request_id: "order-1".into(),
                ..as_account(account, "your order shipped")
            })
            .await
            .unwrap();
    }
    assert_eq!(gw.graph_calls().await, 1);
    assert_eq!(support_graph.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_refused_token_marks_its_account_invalid_until_a_send_works_again() {
    let gw = TestGateway::start().await;
    let mut client = gw.client().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(graph_error(
            401,
            190,
            None,
            "Error validating access token: Session has expired",
        ))
        .up_to_n_times(1)
        .mount(&gw.graph)
        .await;
    gw.graph_answers(ok_reply()).await;

    let state = |r: pb::ListAccountsResponse| {
        let a = &r.accounts[0];
        (a.id.clone(), a.token_state, a.last_graph_error.clone())
    };
    let listed = client
        .list_accounts(pb::ListAccountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(listed).1, pb::TokenState::Unchecked as i32);

    let status = client.send(text_to(USER, "hi")).await.unwrap_err();
    assert_eq!(error_info(&status).0, "ACCESS_TOKEN_INVALID");
    let (id, token_state, error) = state(
        client
            .list_accounts(pb::ListAccountsRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(id, ACCOUNT);
    assert_eq!(token_state, pb::TokenState::Invalid as i32);
    assert!(error.contains("Session has expired"), "{error}");
    assert!(!error.contains(TOKEN));

    client.send(text_to(USER, "again")).await.unwrap();
    let (_, token_state, _) = state(
        client
            .list_accounts(pb::ListAccountsRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(token_state, pb::TokenState::Valid as i32);
}

#[tokio::test]
async fn listing_accounts_needs_the_admin_operation() {
    const ADMIN: &str = "mgw_admin_console_0123456789abcdefghijklmnopqrs";
    let keys = key_entry("desk", KEY, &["*"], &["send", "subscribe"])
        + &key_entry("ops", ADMIN, &["*"], &["admin"]);
    let (gw, _support_graph) = two_accounts(Some(keys)).await;
    let mut client = gw.client().await;
    let status = client
        .list_accounts(with_key(pb::ListAccountsRequest {}, KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_info(&status).0, "OPERATION_NOT_ALLOWED");

    let listed = client
        .list_accounts(with_key(pb::ListAccountsRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(&str, &str)> = listed
        .accounts
        .iter()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    assert_eq!(names, [(ACCOUNT, ""), (SUPPORT_ID, "support")]);
    assert!(listed.accounts[1].api_url.starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn events_for_an_account_not_configured_are_still_stored_and_streamed() {
    let gw = TestGateway::start().await;
    let stranger = "17841400000000555";
    let delivery = json!({"object":"instagram","entry":[
        {"id":stranger,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":stranger},
            "timestamp":T0,"message":{"mid":"m-stranger","text":"hello?"}}]},
    ]});
    let body = serde_json::to_vec(&delivery).unwrap();
    assert_eq!(gw.deliver(&body).await, 200);
    assert_eq!(gw.deliver(&body).await, 200);
    let mut events = gw.events_after(0).await;
    let e = within("the next item of events", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.seq, e.account_id.as_str()), (1, stranger));
}

/// An accounts file whose tokens live in files under `dir`.
fn accounts_toml(dir: &std::path::Path, entries: &[(&str, &str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(id, name, token, base)| {
            let token_file = dir.join(format!("token-{id}"));
            write_secret(&token_file, token);
            format!(
                "[[account]]\nid = {id:?}\nname = {name:?}\ntoken_file = {token_file:?}\napi_url = {base:?}\n\n"
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reload_under_load_adds_removes_and_rotates_without_failing_a_send() {
    const SHOP_ID: &str = "17841400000000001";
    const NEW_ID: &str = "17841400000000003";
    // Graph holds every send until released: all 200 are under way at the
    // reload by construction, however slow this machine is.
    let graph = HeldGraph::start().await;
    let base = format!("{}/v25.0", graph.url);
    let secrets = tempfile::tempdir().unwrap();
    let before = accounts_toml(
        secrets.path(),
        &[
            (SHOP_ID, "shop", "shop-token-old", &base),
            (SUPPORT_ID, "support", SUPPORT_TOKEN, &base),
        ],
    );
    let gw = TestGateway::builder()
        .accounts_file(&before)
        .delivery(DeliveryPolicy {
            upstream_timeout: HeldGraph::UPSTREAM_TIMEOUT,
            ..quick_policy()
        })
        .start()
        .await;

    // 200 sends in flight, half as each account, while the file changes.
    // Every client connects before the first send starts.
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(gw.client().await);
    }
    let mut sends = tokio::task::JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let account = if i % 2 == 0 { "shop" } else { "support" };
        // Far past the test: held as long as it takes, however slow.
        let mut request = tonic::Request::new(as_account(account, "hello"));
        request.set_timeout(HeldGraph::UPSTREAM_TIMEOUT);
        sends.spawn(async move { client.send(request).await });
    }
    graph.until_waiting(200).await;
    let listed = list_accounts(&mut gw.client().await).await;
    let busy: u32 = listed.accounts.iter().map(|a| a.sends_in_flight).sum();
    assert_eq!(busy, 200, "{listed:?}");
    let after = accounts_toml(
        secrets.path(),
        &[
            (SHOP_ID, "shop", "shop-token-new", &base),
            (NEW_ID, "new", "new-token", &base),
        ],
    );
    std::fs::write(&gw.accounts_file, after).unwrap();
    gw.reloader.reload();
    graph.release();
    let mut failed = Vec::new();
    while let Some(result) = sends.join_next().await {
        if let Err(status) = result.unwrap() {
            failed.push(status);
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    // Meta keeps an old token working for a while after a new one is made.
    let allowed = |path: &str| -> &[&str] {
        match path {
            p if p.contains(SHOP_ID) => &["Bearer shop-token-old", "Bearer shop-token-new"],
            p if p.contains(SUPPORT_ID) => &["Bearer support-token-91be"],
            p if p.contains(NEW_ID) => &["Bearer new-token"],
            _ => &[],
        }
    };
    for call in graph.calls() {
        assert!(
            allowed(&call.path).contains(&call.authorization.as_str()),
            "{} sent with a token not its own",
            call.path
        );
    }

    let mut client = gw.client().await;
    client.send(as_account("new", "welcome")).await.unwrap();
    client.send(as_account("shop", "rotated")).await.unwrap();
    let status = client
        .send(as_account("support", "gone"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let calls = graph.calls();
    let last_shop = calls
        .iter()
        .rev()
        .find(|c| c.path.contains(SHOP_ID))
        .unwrap();
    assert_eq!(last_shop.authorization, "Bearer shop-token-new");

    // A broken file keeps what is in force.
    std::fs::write(&gw.accounts_file, "[[account]]\nid = \"x\"\n").unwrap();
    gw.reloader.reload();
    client.send(as_account("new", "still here")).await.unwrap();
}

#[tokio::test]
async fn each_meta_app_has_its_own_webhook_path_and_secret() {
    use messenger_gateway::accounts::apps::WebhookApp;
    use messenger_gateway::accounts::apps::WebhookSecrets;
    use messenger_gateway::edge::webhook;

    // Support is tied to brand-b: only brand-b's webhooks carry its events.
    let support = Account::new(
        "http://127.0.0.1:9/v25.0",
        SUPPORT_ID,
        &AccessToken::new(SUPPORT_TOKEN),
    )
    .unwrap();
    let mut support = AccountSpec::new(support).named("support");
    support.app = Some("brand-b".into());
    let gw = TestGateway::builder()
        .account(support)
        .configure(|s| {
            s.webhook_apps = vec![WebhookApp {
                name: "brand-b".into(),
                secrets: WebhookSecrets {
                    app_secret: "brand-b-secret".into(),
                    verify_token: "brand-b-verify".into(),
                },
            }];
        })
        .start()
        .await;
    let url = format!("{}/brand-b", gw.webhook_url);
    let http = reqwest::Client::new();
    let body = messages_from_user(&[("m-b", "via app b", T0)]);
    let post = |signature: String| {
        http.post(&url)
            .header("content-type", "application/json")
            .header(webhook::SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
    };
    // The other app's secret does not open this path, nor this one /webhook.
    let wrong = post(webhook::sign(APP_SECRET, &body)).await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(
        gw.deliver_signed(&body, Some(&webhook::sign("brand-b-secret", &body)))
            .await,
        401
    );
    let right = post(webhook::sign("brand-b-secret", &body)).await.unwrap();
    assert_eq!(right.status().as_u16(), 200);

    let handshake = http
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=brand-b-verify&hub.challenge=1158201444"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.text().await.unwrap(), "1158201444");

    let mut events = gw.events_after(0).await;
    let e = within("the next item of events", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.account_id, ACCOUNT);

    // An entry for support arriving with the main app's secret is dropped;
    // the same through brand-b's path is taken.
    let for_support = |mid: &str| {
        serde_json::to_vec(&json!({"object":"instagram","entry":[
            {"id":SUPPORT_ID,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":SUPPORT_ID},
                "timestamp":T0,"message":{"mid":mid,"text":"hi support"}}]},
        ]}))
        .unwrap()
    };
    assert_eq!(gw.deliver(&for_support("m-forged")).await, 200);
    let genuine = for_support("m-genuine");
    let taken = http
        .post(&url)
        .header("content-type", "application/json")
        .header(
            webhook::SIGNATURE_HEADER,
            webhook::sign("brand-b-secret", &genuine),
        )
        .body(genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status().as_u16(), 200);
    let e = within("the next item of events", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.account_id, SUPPORT_ID);
    match e.event {
        Some(pb::inbound_event::Event::Message(m)) => assert_eq!(m.mid, "m-genuine"),
        other => panic!("expected the genuine message, got {other:?}"),
    }
}

#[tokio::test]
async fn at_shutdown_every_accounts_sends_under_way_finish() {
    let support_graph = MockServer::start().await;
    let base = format!("{}/v25.0", support_graph.uri());
    let account = Account::new(&base, SUPPORT_ID, &AccessToken::new(SUPPORT_TOKEN)).unwrap();
    let mut gw = TestGateway::builder()
        .account(AccountSpec::new(account).named("support"))
        .start()
        .await;
    let slow = || ok_reply().set_delay(std::time::Duration::from_millis(600));
    gw.graph_answers(slow()).await;
    Mock::given(method("POST"))
        .and(path(SUPPORT_PATH))
        .respond_with(slow())
        .mount(&support_graph)
        .await;
    let mut sends = Vec::new();
    for account in [ACCOUNT, "support"] {
        let mut client = gw.client().await;
        sends.push(tokio::spawn(async move {
            client.send(as_account(account, "before SIGTERM")).await
        }));
    }
    gw.until_graph_received(1).await;
    eventually(
        std::time::Duration::from_secs(30),
        "support's send at Graph",
        || async { support_graph.received_requests().await.unwrap().len() == 1 },
    )
    .await;
    gw.begin_shutdown();
    for send in sends {
        send.await.unwrap().expect("a send under way finishes");
    }
    gw.served.take().unwrap().await.unwrap().unwrap();
    assert_eq!(gw.graph_calls().await, 1);
    assert_eq!(support_graph.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_limited_to_some_accounts_learns_nothing_of_the_others() {
    const ADMIN: &str = "mgw_support_admin_0123456789abcdefghijklmnopq";
    let keys = key_entry("desk", KEY, &["support"], &["send", "subscribe"])
        + &key_entry("support-admin", ADMIN, &["support"], &["admin"]);
    let (gw, _support_graph) = two_accounts(Some(keys)).await;
    let mut client = gw.client().await;

    // An account it may not name is refused alike, configured or not.
    for other in [ACCOUNT, "17841400000000777"] {
        let status = client
            .send(with_key(as_account(other, "hi"), KEY))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{other}");
        assert_eq!(error_info(&status).0, "ACCOUNT_NOT_ALLOWED");
    }
    // Its ListAccounts shows its own accounts only.
    let listed = client
        .list_accounts(with_key(pb::ListAccountsRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [SUPPORT_ID]);

    // Its Subscribe stream carries only its account's events, though the
    // key names the account by alias and events carry the id.
    let delivery = json!({"object":"instagram","entry":[
        {"id":ACCOUNT,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":ACCOUNT},
            "timestamp":T0,"message":{"mid":"m-shop","text":"to the shop"}}]},
        {"id":SUPPORT_ID,"time":T0,"messaging":[{"sender":{"id":USER},"recipient":{"id":SUPPORT_ID},
            "timestamp":T0,"message":{"mid":"m-support","text":"to support"}}]},
    ]});
    assert_eq!(
        gw.deliver(&serde_json::to_vec(&delivery).unwrap()).await,
        200
    );
    let mut events = client
        .subscribe(with_key(
            pb::SubscribeRequest {
                after: 0,
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = within("the next item of events", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.seq, first.account_id.as_str()), (2, SUPPORT_ID));
    let nothing_more =
        tokio::time::timeout(std::time::Duration::from_millis(300), events.next()).await;
    assert!(nothing_more.is_err(), "{nothing_more:?}");
}

#[tokio::test]
async fn one_accounts_full_queue_does_not_refuse_anothers_sends() {
    use messenger_gateway::send::delivery::DeliveryPolicy;

    let support_graph = MockServer::start().await;
    let base = format!("{}/v25.0", support_graph.uri());
    let account = Account::new(&base, SUPPORT_ID, &AccessToken::new(SUPPORT_TOKEN)).unwrap();
    let gw = TestGateway::builder()
        .account(AccountSpec::new(account).named("support"))
        .delivery(DeliveryPolicy {
            max_concurrent_calls: 1,
            max_queued_sends: 1,
            ..quick_policy()
        })
        .start()
        .await;
    // The shop's Graph is stuck: one call under way, one queued.
    gw.graph_answers(ok_reply().set_delay(std::time::Duration::from_secs(5)))
        .await;
    Mock::given(method("POST"))
        .and(path(SUPPORT_PATH))
        .respond_with(ok_reply())
        .mount(&support_graph)
        .await;
    for _ in 0..2 {
        let mut client = gw.client().await;
        tokio::spawn(async move { client.send(as_account(ACCOUNT, "stuck")).await });
    }
    let mut client = gw.client().await;
    gw.until_graph_received(1).await;
    gw.until_queued(1).await;
    let status = client
        .send(as_account(ACCOUNT, "one too many"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).0, "OVERLOADED", "{status:?}");
    // Support has its own slots and queue.
    for _ in 0..3 {
        client
            .send(as_account("support", "still fine"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn what_a_send_under_way_learns_of_its_token_outlives_a_reload() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(
            graph_error(401, 190, Some(463), "Session has expired")
                .set_delay(std::time::Duration::from_millis(400)),
        )
        .mount(&graph)
        .await;
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str| accounts_toml(secrets.path(), &[(ACCOUNT, name, TOKEN, &base)]);
    let gw = TestGateway::builder()
        .graph(graph, &base)
        .accounts_file(&file("shop"))
        .start()
        .await;
    let mut client = gw.client().await;
    let send = tokio::spawn(async move { client.send(as_account("shop", "hi")).await });
    gw.until_graph_received(1).await;
    // Renamed while the send is under way: a new path, the same account.
    std::fs::write(&gw.accounts_file, file("store")).unwrap();
    gw.reloader.reload();
    let status = send.await.unwrap().unwrap_err();
    assert_eq!(error_info(&status).0, "ACCESS_TOKEN_INVALID");
    let listed = list_accounts(&mut gw.client().await).await;
    assert_eq!(listed.accounts[0].name, "store");
    assert_eq!(
        listed.accounts[0].token_state,
        pb::TokenState::Invalid as i32
    );
}
