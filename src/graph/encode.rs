//! The JSON bodies posted to Graph's send endpoint: borrowed views of a
//! validated message, in the Messenger-style shape Instagram takes.

use bytes::Bytes;
use serde::Serialize;

use crate::model::message::{
    AttachmentKind, Button, Content, MediaSource, OutgoingAction, OutgoingMessage, Recipient,
    SenderAction, TemplateElement,
};

#[derive(Serialize)]
struct WireRecipient<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireSend<'a> {
    recipient: WireRecipient<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messaging_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'static str>,
    message: WireMessage<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<WireMid<'a>>,
}

#[derive(Serialize)]
struct WireMid<'a> {
    mid: &'a str,
}

#[derive(Serialize, Default)]
struct WireMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    quick_replies: Vec<WireQuickReply<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment: Option<WireAttachment<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<WireAttachment<'a>>,
}

#[derive(Serialize)]
struct WireQuickReply<'a> {
    content_type: &'static str,
    title: &'a str,
    payload: &'a str,
}

#[derive(Serialize)]
struct WireAttachment<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<WirePayload<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WirePayload<'a> {
    Url {
        url: &'a str,
    },
    AttachmentId {
        attachment_id: &'a str,
    },
    Post {
        id: &'a str,
    },
    Template {
        template_type: &'static str,
        elements: Vec<WireElement<'a>>,
    },
}

#[derive(Serialize)]
struct WireElement<'a> {
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_action: Option<WireDefaultAction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    buttons: Vec<WireButton<'a>>,
}

#[derive(Serialize)]
struct WireDefaultAction<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    url: &'a str,
}

#[derive(Serialize)]
struct WireButton<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
}

#[derive(Serialize)]
struct WireAction<'a> {
    recipient: WireRecipient<'a>,
    sender_action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<WireReaction<'a>>,
}

#[derive(Serialize)]
struct WireReaction<'a> {
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reaction: Option<&'a str>,
}

fn attachment_kind(kind: AttachmentKind) -> &'static str {
    match kind {
        AttachmentKind::Image => "image",
        AttachmentKind::Video => "video",
        AttachmentKind::Audio => "audio",
        AttachmentKind::File => "file",
    }
}

fn element(e: &TemplateElement) -> WireElement<'_> {
    WireElement {
        title: e.title.as_str(),
        subtitle: e.subtitle.as_ref().map(|s| s.as_str()),
        image_url: e.image_url.as_ref().map(|u| u.as_str()),
        default_action: e.default_action_url.as_ref().map(|u| WireDefaultAction {
            kind: "web_url",
            url: u.as_str(),
        }),
        buttons: e
            .buttons
            .iter()
            .map(|b| match b {
                Button::WebUrl { title, url } => WireButton {
                    kind: "web_url",
                    title: title.as_str(),
                    url: Some(url.as_str()),
                    payload: None,
                },
                Button::Postback { title, payload } => WireButton {
                    kind: "postback",
                    title: title.as_str(),
                    url: None,
                    payload: Some(payload.as_str()),
                },
            })
            .collect(),
    }
}

/// The JSON body Graph expects for a message.
pub fn encode_message(m: &OutgoingMessage) -> Bytes {
    let recipient = match &m.recipient {
        Recipient::User(id) => WireRecipient {
            id: Some(id.as_str()),
            comment_id: None,
        },
        Recipient::Comment(id) => WireRecipient {
            id: None,
            comment_id: Some(id.as_str()),
        },
    };
    let mut message = WireMessage::default();
    let mut messaging_type = None;
    match &m.content {
        Content::Text {
            text,
            quick_replies,
        } => {
            message.text = Some(text.as_str());
            if !quick_replies.is_empty() {
                messaging_type = Some("RESPONSE");
            }
            message.quick_replies = quick_replies
                .iter()
                .map(|q| WireQuickReply {
                    content_type: "text",
                    title: q.title.as_str(),
                    payload: q.payload.as_str(),
                })
                .collect();
        }
        Content::Attachments(list) => {
            let mut wire: Vec<_> = list
                .iter()
                .map(|a| WireAttachment {
                    kind: attachment_kind(a.kind),
                    payload: Some(match &a.source {
                        MediaSource::Url(u) => WirePayload::Url { url: u.as_str() },
                        MediaSource::Id(id) => WirePayload::AttachmentId {
                            attachment_id: id.as_str(),
                        },
                    }),
                })
                .collect();
            // One attachment goes as `attachment`; several images as `attachments`.
            if wire.len() == 1 {
                message.attachment = wire.pop();
            } else {
                message.attachments = wire;
            }
        }
        Content::LikeHeartSticker => {
            message.attachment = Some(WireAttachment {
                kind: "like_heart",
                payload: None,
            });
        }
        Content::MediaShare { post_id } => {
            message.attachment = Some(WireAttachment {
                kind: "MEDIA_SHARE",
                payload: Some(WirePayload::Post {
                    id: post_id.as_str(),
                }),
            });
        }
        Content::GenericTemplate(elements) => {
            message.attachment = Some(WireAttachment {
                kind: "template",
                payload: Some(WirePayload::Template {
                    template_type: "generic",
                    elements: elements.iter().map(element).collect(),
                }),
            });
        }
    }
    let tag = m.human_agent.then_some("HUMAN_AGENT");
    if tag.is_some() {
        messaging_type = Some("MESSAGE_TAG");
    }
    let body = WireSend {
        recipient,
        messaging_type,
        tag,
        message,
        reply_to: m.reply_to.as_ref().map(|id| WireMid { mid: id.as_str() }),
    };
    Bytes::from(serde_json::to_vec(&body).expect("borrowed strings always serialize"))
}

/// The JSON body Graph expects for a sender action.
pub fn encode_action(a: &OutgoingAction) -> Bytes {
    let (sender_action, payload) = match &a.action {
        SenderAction::TypingOn => ("typing_on", None),
        SenderAction::TypingOff => ("typing_off", None),
        SenderAction::MarkSeen => ("mark_seen", None),
        SenderAction::React {
            message_id,
            reaction,
        } => (
            "react",
            Some(WireReaction {
                message_id: message_id.as_str(),
                reaction: Some(reaction.as_str()),
            }),
        ),
        SenderAction::Unreact { message_id } => (
            "unreact",
            Some(WireReaction {
                message_id: message_id.as_str(),
                reaction: None,
            }),
        ),
    };
    let body = WireAction {
        recipient: WireRecipient {
            id: Some(a.recipient.as_str()),
            comment_id: None,
        },
        sender_action,
        payload,
    };
    Bytes::from(serde_json::to_vec(&body).expect("borrowed strings always serialize"))
}
