use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, ResponseTemplate};

use messenger_gateway::edge::grpc::pb;

use crate::support::*;

#[tokio::test]
async fn send_posts_the_starter_kit_request_and_returns_the_graph_ids() {
    let gw = TestGateway::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "recipient": {"id": "17841400000000000"},
            "message": {"text": "Hello from my app"}
        })))
        .respond_with(ok_reply())
        .expect(1)
        .mount(&gw.graph)
        .await;

    let reply = gw
        .client()
        .await
        .send(text_to("17841400000000000", "Hello from my app"))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reply.message_id, "aWdfbWlkLTE");
    assert_eq!(reply.recipient_id, USER);
    assert_eq!(reply.graph_calls, 1);
    let requests = gw.graph.received_requests().await.unwrap();
    assert_eq!(requests[0].url.query(), None, "no token in the URL");
    gw.graph.verify().await;
}

#[tokio::test]
async fn rich_messages_reach_graph_in_its_own_shape() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut client = gw.client().await;
    let image = |url: &str| pb::Attachment {
        r#type: pb::AttachmentType::Image as i32,
        source: Some(pb::attachment::Source::Url(url.into())),
    };
    client
        .send(pb::SendRequest {
            recipient_id: USER.into(),
            attachments: vec![
                image("https://cdn.test/a.png"),
                image("https://cdn.test/b.png"),
            ],
            reply_to_message_id: "aWdfcmVwbHk".into(),
            tag: pb::MessageTag::HumanAgent as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .send(pb::SendRequest {
            recipient_id: USER.into(),
            generic_template: Some(pb::GenericTemplate {
                elements: vec![pb::TemplateElement {
                    title: "Spring sale".into(),
                    buttons: vec![pb::Button {
                        r#type: pb::ButtonType::WebUrl as i32,
                        title: "Shop".into(),
                        url: "https://shop.test".into(),
                        payload: String::new(),
                    }],
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .send(pb::SendRequest {
            comment_id: "17900000000000001".into(),
            text: "Thanks! Details in your DMs".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let bodies = gw.graph_bodies().await;
    assert_eq!(
        bodies[0],
        json!({"recipient":{"id":USER},"messaging_type":"MESSAGE_TAG","tag":"HUMAN_AGENT",
               "message":{"attachments":[
                   {"type":"image","payload":{"url":"https://cdn.test/a.png"}},
                   {"type":"image","payload":{"url":"https://cdn.test/b.png"}}]},
               "reply_to":{"mid":"aWdfcmVwbHk"}})
    );
    assert_eq!(
        bodies[1],
        json!({"recipient":{"id":USER},"message":{"attachment":{"type":"template","payload":{
            "template_type":"generic","elements":[{"title":"Spring sale","buttons":[
                {"type":"web_url","title":"Shop","url":"https://shop.test"}]}]}}}})
    );
    assert_eq!(
        bodies[2],
        json!({"recipient":{"comment_id":"17900000000000001"},"message":{"text":"Thanks! Details in your DMs"}})
    );
}

#[tokio::test]
async fn send_action_posts_a_reaction_and_reports_the_recipient() {
    let gw = TestGateway::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(body_json(
            json!({"recipient":{"id":USER},"sender_action":"react",
                              "payload":{"message_id":"aWdfbWlk","reaction":"love"}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"recipient_id": USER})))
        .expect(1)
        .mount(&gw.graph)
        .await;
    let reply = gw
        .client()
        .await
        .send_action(pb::SendActionRequest {
            recipient_id: USER.into(),
            action: pb::SenderAction::React as i32,
            message_id: "aWdfbWlk".into(),
            reaction: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.recipient_id, USER);
    assert_eq!(reply.graph_calls, 1);
    gw.graph.verify().await;
}

#[tokio::test]
async fn invalid_requests_name_each_bad_field_and_make_no_graph_call() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut client = gw.client().await;

    let cases: Vec<(pb::SendRequest, Vec<&str>)> = vec![
        (text_to("", "hi"), vec!["recipient_id"]),
        (text_to("jane.doe", "hi"), vec!["recipient_id"]),
        (text_to(USER, &"€".repeat(334)), vec!["text"]),
        (text_to(USER, ""), vec!["text"]),
        (
            pb::SendRequest {
                recipient_id: USER.into(),
                comment_id: "1".into(),
                text: "x".into(),
                sticker: pb::Sticker::LikeHeart as i32,
                ..Default::default()
            },
            vec!["recipient_id", "comment_id", "text", "sticker"],
        ),
        (
            pb::SendRequest {
                recipient_id: USER.into(),
                text: "pick".into(),
                quick_replies: (0..14)
                    .map(|i| pb::QuickReply {
                        title: format!("q{i}"),
                        payload: String::new(),
                    })
                    .collect(),
                ..Default::default()
            },
            vec!["quick_replies"],
        ),
    ];
    for (request, want) in cases {
        let status = client.send(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let (reason, _) = error_info(&status);
        assert_eq!(reason, "INVALID_REQUEST");
        let details = status.get_error_details();
        let got: Vec<_> = details
            .bad_request()
            .expect("BadRequest")
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(got, want);
    }
    let status = client
        .send_action(pb::SendActionRequest {
            recipient_id: USER.into(),
            action: pb::SenderAction::React as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(gw.graph_calls().await, 0, "nothing invalid reaches Graph");
}
