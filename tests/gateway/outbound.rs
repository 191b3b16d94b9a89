//! The gateway's own sends in the record: every message (and reaction)
//! Graph accepted is an outbound event in the ordered stream, seen only by
//! subscribers that ask for outbound events.

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::inbound_event::Event;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::*;

const KEY: &str = "mgw_sender_secret_0123456789abcdefghijklmnopqrstu";

fn sent_of(event: &pb::InboundEvent) -> &pb::OutboundMessage {
    match &event.event {
        Some(Event::Sent(sent)) => sent,
        other => panic!("not a sent message: {other:?}"),
    }
}

#[tokio::test]
async fn a_message_graph_accepted_is_streamed_as_outbound_with_who_sent_it() {
    let gw = TestGateway::builder()
        .keys(&key_entry("crm", KEY, &["*"], &["send", "subscribe"]))
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    let mut live = gw.all_events_as(KEY).await;
    let answer = gw
        .client()
        .await
        .send(with_key(
            pb::SendRequest {
                request_id: "order-17".into(),
                priority: pb::Priority::Bulk as i32,
                ..text_to(USER, "Your order has shipped")
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();

    let event = next_events(&mut live, 1).await.remove(0);
    assert_eq!(event.account_id, ACCOUNT);
    assert_eq!(event.sender_id, ACCOUNT);
    assert_eq!(event.recipient_id, USER);
    let sent = sent_of(&event);
    assert_eq!(sent.mid, answer.message_id);
    assert_eq!(sent.request_id, "order-17");
    assert_eq!(sent.key_id, "crm");
    assert_eq!(sent.priority, pb::Priority::Bulk as i32);
    assert_eq!(sent.text, "Your order has shipped");
    // The body exactly as posted to Graph.
    let posted = gw.graph_bodies().await.remove(0);
    let recorded: serde_json::Value = serde_json::from_str(&sent.body_json).unwrap();
    assert_eq!(recorded, posted);
    assert!(!sent.body_json.contains(TOKEN));

    // A resume from 0 reads the same event from the store, same seq.
    let replayed = next_events(&mut gw.all_events_as(KEY).await, 1).await;
    assert_eq!(replayed[0], event);
}

#[tokio::test]
async fn a_subscriber_that_does_not_ask_sees_only_what_meta_delivered() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut plain = gw.events_after(0).await;
    let mut both = gw.all_events_after(0).await;
    gw.send_text().await.unwrap();
    let sent = next_events(&mut both, 1).await.remove(0);
    assert!(matches!(sent.event, Some(Event::Sent(_))));

    let body = messages_from_user(&[("mid.in.1", "thanks!", T0)]);
    assert_eq!(gw.deliver(&body).await, 200);
    let inbound = next_events(&mut plain, 1).await.remove(0);
    assert!(
        matches!(&inbound.event, Some(Event::Message(m)) if m.mid == "mid.in.1"),
        "{inbound:?}"
    );
    // After the outbound event in the one ordered stream.
    assert!(inbound.seq > sent.seq);
    assert_eq!(next_events(&mut both, 1).await[0], inbound);
    assert_quiet(&mut plain).await;
}

#[tokio::test]
async fn a_send_graph_refused_is_not_recorded() {
    let gw = TestGateway::start().await;
    gw.graph_answers(graph_error(
        400,
        551,
        Some(1545041),
        "(#551) This person isn't available right now.",
    ))
    .await;
    let mut both = gw.all_events_after(0).await;
    gw.send_text().await.unwrap_err();
    assert_quiet(&mut both).await;
}

#[tokio::test]
async fn a_reaction_sent_with_send_action_is_recorded_and_a_typing_indicator_is_not() {
    let gw = TestGateway::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"recipient_id": USER})))
        .mount(&gw.graph)
        .await;
    let mut both = gw.all_events_after(0).await;
    let mut client = gw.client().await;
    client
        .send_action(pb::SendActionRequest {
            recipient_id: USER.into(),
            action: pb::SenderAction::TypingOn as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .send_action(pb::SendActionRequest {
            recipient_id: USER.into(),
            action: pb::SenderAction::React as i32,
            message_id: "aWdfbWlk".into(),
            reaction: "love".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let event = next_events(&mut both, 1).await.remove(0);
    assert_eq!(event.recipient_id, USER);
    match event.event {
        Some(Event::SentReaction(r)) => {
            assert_eq!((r.mid.as_str(), r.action.as_str()), ("aWdfbWlk", "react"));
            assert_eq!(r.reaction, "love");
        }
        other => panic!("not a sent reaction: {other:?}"),
    }
    assert_quiet(&mut both).await;
}

#[tokio::test]
async fn with_recording_off_nothing_sent_is_recorded() {
    use messenger_gateway::send::guard::GuardPolicy;
    let gw = TestGateway::builder()
        .guard(GuardPolicy {
            record_sent: false,
            ..GuardPolicy::default()
        })
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    let mut both = gw.all_events_after(0).await;
    gw.send_text().await.unwrap();
    assert_quiet(&mut both).await;
}

#[tokio::test]
async fn a_key_scoped_to_another_account_sees_none_of_this_accounts_sends() {
    const OTHER: &str = "mgw_other_secret_0123456789abcdefghijklmnopqrstuv";
    let gw = TestGateway::builder()
        .keys(
            &(key_entry("crm", KEY, &["*"], &["send", "subscribe"])
                + &key_entry("other", OTHER, &["17841400000000999"], &["subscribe"])),
        )
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    let (mut mine, mut theirs) = (gw.all_events_as(KEY).await, gw.all_events_as(OTHER).await);
    gw.client()
        .await
        .send(with_key(text_to(USER, "for the crm only"), KEY))
        .await
        .unwrap();
    assert!(matches!(
        next_events(&mut mine, 1).await[0].event,
        Some(Event::Sent(_))
    ));
    assert_quiet(&mut theirs).await;
}
