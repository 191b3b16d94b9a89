//! Writes the send target's seeds: encoded `SendRequest`s of each kind
//! (the webhook target is seeded from tests/fixtures/webhooks).
use messenger_gateway::edge::grpc::pb;
use prost::Message;

fn main() {
    let dir = std::env::args().nth(1).expect("a directory");
    std::fs::create_dir_all(&dir).unwrap();
    let to = |text: &str| pb::SendRequest {
        recipient_id: "17841400000000001".into(),
        text: text.into(),
        ..Default::default()
    };
    let button = |r#type, payload: &str| pb::Button {
        r#type,
        title: "Open".into(),
        url: "https://example.com/p".into(),
        payload: payload.into(),
    };
    let seeds = [
        to("hello"),
        pb::SendRequest {
            request_id: "order-1".into(),
            account_id: "shop".into(),
            tag: 1,
            priority: 2,
            reply_to_message_id: "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAxOTQ3MzUyMzU5"
                .into(),
            ..to("with everything")
        },
        pb::SendRequest {
            quick_replies: vec![pb::QuickReply {
                title: "Yes".into(),
                payload: "YES".into(),
            }],
            ..to("pick one")
        },
        pb::SendRequest {
            attachments: vec![pb::Attachment {
                r#type: 1,
                source: Some(pb::attachment::Source::Url(
                    "https://example.com/a.png".into(),
                )),
            }],
            ..to("")
        },
        pb::SendRequest {
            attachments: vec![pb::Attachment {
                r#type: 2,
                source: Some(pb::attachment::Source::AttachmentId("1234".into())),
            }],
            ..to("")
        },
        pb::SendRequest {
            sticker: 1,
            ..to("")
        },
        pb::SendRequest {
            share_post_id: "17900000000000001".into(),
            ..to("")
        },
        pb::SendRequest {
            generic_template: Some(pb::GenericTemplate {
                elements: vec![pb::TemplateElement {
                    title: "A title".into(),
                    subtitle: "sub".into(),
                    image_url: "https://example.com/i.png".into(),
                    default_action_url: "https://example.com/".into(),
                    buttons: vec![button(1, ""), button(2, "BUY")],
                }],
            }),
            ..to("")
        },
        pb::SendRequest {
            recipient_id: String::new(),
            comment_id: "17858893269000001".into(),
            ..to("thanks for the comment")
        },
    ];
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(format!("{dir}/send-{i}.pb"), seed.encode_to_vec()).unwrap();
    }
}
