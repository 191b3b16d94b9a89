//! The messaging window, checked before Graph is called, on a clock the
//! tests control.

use tonic::Code;

use messenger_gateway::clock::rfc3339;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::model::window::{HUMAN_AGENT_MS, STANDARD_MS, WindowPolicy};
use messenger_gateway::send::guard::GuardPolicy;

use crate::support::*;

async fn start_with(policy: GuardPolicy) -> TestGateway {
    TestGateway::builder().guard(policy).start().await
}

/// The user wrote at T0.
async fn after_user_wrote(gw: &TestGateway) {
    gw.graph_answers(ok_reply()).await;
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
}

fn tagged(text: &str) -> pb::SendRequest {
    pb::SendRequest {
        tag: pb::MessageTag::HumanAgent as i32,
        ..text_to(USER, text)
    }
}

#[tokio::test]
async fn a_reply_is_sent_until_exactly_24_hours_then_refused_without_a_graph_call() {
    let gw = start_with(GuardPolicy::default()).await;
    after_user_wrote(&gw).await;
    gw.clock.set(T0 + STANDARD_MS - 1);
    assert!(gw.send_text().await.is_ok());
    assert_eq!(
        gw.window_with(USER).await.state,
        pb::WindowState::Open as i32
    );

    gw.clock.set(T0 + STANDARD_MS);
    let refused = gw.send_text().await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let (reason, metadata) = error_info(&refused);
    assert_eq!(reason, "OUTSIDE_MESSAGING_WINDOW");
    assert_eq!(metadata["windowClosedAt"], rfc3339(T0 + STANDARD_MS));
    assert_eq!(metadata["windowClosedAt"], "2026-11-28T00:00:00.000Z");
    assert_eq!(
        gw.graph_calls().await,
        1,
        "the refused send never reached Graph"
    );
    assert_eq!(
        gw.window_with(USER).await.state,
        pb::WindowState::HumanAgentOnly as i32
    );
}

#[tokio::test]
async fn the_human_agent_tag_reaches_until_exactly_7_days() {
    let gw = start_with(GuardPolicy::default()).await;
    after_user_wrote(&gw).await;
    gw.clock.set(T0 + HUMAN_AGENT_MS - 1);
    let mut client = gw.client().await;
    assert!(client.send(tagged("late but human")).await.is_ok());
    gw.clock.set(T0 + HUMAN_AGENT_MS);
    let refused = client.send(tagged("too late")).await.unwrap_err();
    let (reason, metadata) = error_info(&refused);
    assert_eq!(reason, "OUTSIDE_MESSAGING_WINDOW");
    assert_eq!(metadata["windowClosedAt"], rfc3339(T0 + HUMAN_AGENT_MS));
    assert_eq!(gw.graph_calls().await, 1);
    let window = gw.window_with(USER).await;
    assert_eq!(window.state, pb::WindowState::Closed as i32);
    assert_eq!(window.last_inbound_at.unwrap().seconds, T0 / 1000);
    assert_eq!(
        window.standard_closes_at.unwrap().seconds,
        (T0 + STANDARD_MS) / 1000
    );
    assert_eq!(
        window.human_agent_closes_at.unwrap().seconds,
        (T0 + HUMAN_AGENT_MS) / 1000
    );
}

#[tokio::test]
async fn auto_human_agent_tags_replies_between_24_hours_and_7_days() {
    let gw = start_with(GuardPolicy {
        auto_human_agent: true,
        ..GuardPolicy::default()
    })
    .await;
    after_user_wrote(&gw).await;
    gw.clock.set(T0 + STANDARD_MS - 1);
    gw.send_text().await.unwrap();
    gw.clock.set(T0 + STANDARD_MS + 1);
    gw.send_text().await.unwrap();
    let bodies = gw.graph_bodies().await;
    assert!(bodies[0].get("tag").is_none());
    assert_eq!(bodies[1]["tag"], "HUMAN_AGENT");
    assert_eq!(bodies[1]["messaging_type"], "MESSAGE_TAG");
}

#[tokio::test]
async fn strangers_are_sent_through_unless_the_policy_is_strict() {
    let lenient = start_with(GuardPolicy::default()).await;
    lenient.graph_answers(ok_reply()).await;
    assert!(lenient.send_text().await.is_ok());
    assert_eq!(
        lenient.window_with(USER).await.state,
        pb::WindowState::Unknown as i32
    );

    let strict = start_with(GuardPolicy {
        window: WindowPolicy::Strict,
        ..GuardPolicy::default()
    })
    .await;
    strict.graph_answers(ok_reply()).await;
    let refused = strict.send_text().await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let (reason, metadata) = error_info(&refused);
    assert_eq!(reason, "OUTSIDE_MESSAGING_WINDOW");
    assert!(!metadata.contains_key("windowClosedAt"));
    assert_eq!(strict.graph_calls().await, 0);
    after_user_wrote(&strict).await;
    assert!(strict.send_text().await.is_ok());
}

#[tokio::test]
async fn a_window_refusal_from_graph_is_remembered_until_the_user_writes_again() {
    let gw = start_with(GuardPolicy::default()).await;
    gw.graph_answers(graph_error(
        400,
        10,
        Some(2534022),
        "(#10) This message is sent outside of allowed window.",
    ))
    .await;
    let first = gw.send_text().await.unwrap_err();
    assert_eq!(error_info(&first).0, "OUTSIDE_MESSAGING_WINDOW");
    assert_eq!(gw.graph_calls().await, 1);
    gw.clock.advance_ms(1);
    let second = gw.send_text().await.unwrap_err();
    let (reason, metadata) = error_info(&second);
    assert_eq!(reason, "OUTSIDE_MESSAGING_WINDOW");
    assert_eq!(metadata["windowClosedAt"], rfc3339(T0));
    assert_eq!(
        gw.graph_calls().await,
        1,
        "known closed: Graph not called again"
    );
    assert_eq!(
        gw.window_with(USER).await.state,
        pb::WindowState::Closed as i32
    );

    // The user writes: the window opens again.
    gw.graph.reset().await;
    gw.clock.advance_ms(1000);
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m9", "back", T0 + 500)]))
            .await,
        200
    );
    gw.graph_answers(ok_reply()).await;
    assert!(gw.send_text().await.is_ok());
}

#[tokio::test]
async fn echoes_and_reads_never_open_a_window() {
    let gw = start_with(GuardPolicy {
        window: WindowPolicy::Strict,
        ..GuardPolicy::default()
    })
    .await;
    let body = serde_json::to_vec(&serde_json::json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":T0,"messaging":[
        {"sender":{"id":ACCOUNT},"recipient":{"id":USER},"timestamp":T0,"message":{"mid":"e1","text":"ours","is_echo":true}},
        {"sender":{"id":USER},"recipient":{"id":ACCOUNT},"timestamp":T0,"read":{"mid":"e1"}}
    ]}]}))
    .unwrap();
    assert_eq!(gw.deliver(&body).await, 200);
    assert_eq!(
        gw.window_with(USER).await.state,
        pb::WindowState::Unknown as i32
    );
    assert!(gw.send_text().await.is_err());
}

#[tokio::test]
async fn get_window_rejects_a_recipient_that_is_not_an_igsid() {
    let gw = start_with(GuardPolicy::default()).await;
    let refused = gw
        .client()
        .await
        .get_window(pb::GetWindowRequest {
            recipient_id: "jane.doe".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(error_info(&refused).0, "INVALID_REQUEST");
}
