//! The built-in sandbox answers like Graph: it checks what Graph checks.

use std::net::SocketAddr;

use messenger_gateway::sandbox;
use serde_json::{Value, json};

async fn post(url: &str, token: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn start() -> (sandbox::RunningSandbox, String) {
    let running = sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), None)
        .await
        .unwrap();
    let url = running.accounts[0].account.messages_url().to_owned();
    (running, url)
}

#[tokio::test]
async fn the_sandbox_refuses_a_wrong_token_like_graph_does() {
    let (_running, url) = start().await;
    let (status, body) = post(
        &url,
        "not-the-token",
        r#"{"recipient":{"id":"1"},"message":{"text":"hi"}}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 190);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["fbtrace_id"].is_string());
}

#[tokio::test]
async fn the_sandbox_checks_shape_and_text_length_then_records_what_it_accepts() {
    use messenger_gateway::graph::GraphClient;
    use messenger_gateway::model::message::*;
    use messenger_gateway::send::delivery::{Deliverer, DeliveryPolicy};

    let (running, _) = start().await;
    let deliverer = Deliverer::new(
        GraphClient::new(std::time::Duration::from_secs(1)),
        running.accounts[0].account.clone(),
        DeliveryPolicy::default(),
    );
    let to = |text: &str| OutgoingMessage {
        recipient: Recipient::User(Igsid::parse(sandbox::DEMO_RECIPIENT).unwrap()),
        content: Content::Text {
            text: Text::parse(text).unwrap(),
            quick_replies: vec![],
        },
        reply_to: None,
        human_agent: false,
    };
    let message = to("hello sandbox");
    let body = messenger_gateway::graph::encode_message(&message);
    let sent = deliverer.send_message(&message, body, None).await.unwrap();
    assert!(
        sent.message_id.unwrap().starts_with("aWdf"),
        "Graph-shaped id"
    );

    // What the gateway would never send, the sandbox still refuses as Graph does.
    let client = GraphClient::new(std::time::Duration::from_secs(1));
    let long = json!({"recipient":{"id":"1"},"message":{"text":"a".repeat(1001)}});
    let refused = client
        .post_messages(
            &running.accounts[0].account,
            serde_json::to_vec(&long).unwrap().into(),
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    let error = refused.failure.graph_error().unwrap().clone();
    assert_eq!(error.code, Some(100));
    let no_recipient = client
        .post_messages(
            &running.accounts[0].account,
            br#"{"message":{"text":"hi"}}"#.to_vec().into(),
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert_eq!(no_recipient.failure.graph_error().unwrap().code, Some(100));
    let not_json = client
        .post_messages(
            &running.accounts[0].account,
            b"text=hi".to_vec().into(),
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert_eq!(not_json.failure.graph_error().unwrap().code, Some(100));

    let log: Value = reqwest::get(running.messages_log_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies: Vec<&Value> = log["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(
        bodies,
        [&json!({"recipient":{"id":sandbox::DEMO_RECIPIENT},"message":{"text":"hello sandbox"}})],
        "only the accepted message is kept"
    );
}

#[tokio::test]
async fn the_sandbox_plays_two_accounts_and_graphs_token_endpoints() {
    use messenger_gateway::graph::{AccessToken, GraphClient};
    use std::time::Duration;

    let (running, _) = start().await;
    let graph = GraphClient::new(Duration::from_secs(1));
    let timeout = Duration::from_secs(5);
    let [shop, support] = [&running.accounts[0], &running.accounts[1]];
    assert_eq!(
        (shop.name.as_deref(), support.name.as_deref()),
        (Some("shop"), Some("support"))
    );
    let me = graph.me(&support.account, timeout).await.unwrap();
    assert_eq!(me.user_id, sandbox::SUPPORT_ACCOUNT_ID);
    assert_eq!(me.username.as_deref(), Some("sandbox_support"));

    // A token sends only as its own account.
    let body = r#"{"recipient":{"id":"17841400000000000"},"message":{"text":"hi"}}"#;
    let support_token = support.account.token().expose_secret();
    let (status, _) = post(shop.account.messages_url(), support_token, body).await;
    assert_eq!(status, 400);
    let (status, _) = post(support.account.messages_url(), support_token, body).await;
    assert_eq!(status, 200);

    // A refresh gives a new token for the same account.
    let refreshed = graph.refresh(&support.account, timeout).await.unwrap();
    assert_eq!(refreshed.expires_in, Some(60 * 24 * 60 * 60));
    let new = support
        .account
        .with_token(&AccessToken::new(refreshed.access_token.clone()))
        .unwrap();
    assert_eq!(
        graph.me(&new, timeout).await.unwrap().user_id,
        sandbox::SUPPORT_ACCOUNT_ID
    );
    let (status, _) = post(new.messages_url(), &refreshed.access_token, body).await;
    assert_eq!(status, 200);
    let forged = shop
        .account
        .with_token(&AccessToken::new("sandbox-forged"))
        .unwrap();
    let refused = graph.refresh(&forged, timeout).await.unwrap_err();
    assert_eq!(refused.failure.graph_error().unwrap().code, Some(190));
}

/// Every failing recipient the sandbox offers answers as Graph does for
/// its case: the gateway's own client and classifier read each answer as
/// the scenario's `Reason`, and only the transient one as retryable.
#[tokio::test]
async fn every_sandbox_scenario_is_classified_as_the_reason_it_names() {
    use messenger_gateway::graph::GraphClient;
    use messenger_gateway::model::error::Reason;
    let (running, _) = start().await;
    let client = GraphClient::new(std::time::Duration::from_secs(1));
    for scenario in &sandbox::SCENARIOS {
        let body = json!({"recipient": {"id": scenario.recipient_id}, "message": {"text": "hi"}});
        let refused = client
            .post_messages(
                &running.accounts[0].account,
                serde_json::to_vec(&body).unwrap().into(),
                std::time::Duration::from_secs(5),
            )
            .await
            .expect_err("a scenario recipient fails");
        assert_eq!(
            refused.failure.reason(),
            scenario.outcome,
            "recipient {}: {:?}",
            scenario.recipient_id,
            refused.failure
        );
        assert_eq!(
            refused.failure.is_retryable(),
            scenario.outcome == Reason::UpstreamUnavailable,
            "{}",
            scenario.recipient_id
        );
    }
}
