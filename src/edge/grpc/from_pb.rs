//! Requests from the wire into validated core values. Every problem is
//! collected, named by its field path in the proto, so a caller can fix all of
//! them at once.

use crate::model::error::FieldViolation;
use crate::model::message::{
    Attachment, AttachmentKind, Button, CommentId, Content, GraphId, HttpUrl, Igsid, Invalid,
    Label, MediaSource, OutgoingAction, OutgoingMessage, Payload, QuickReply, REACTIONS, Recipient,
    RequestId, SenderAction, TemplateElement, Text, limits,
};

use super::pb;
use super::status::MAX_VIOLATIONS;

/// Collects violations while converting, up to what a BadRequest carries.
#[derive(Default)]
struct Checker(Vec<FieldViolation>);

impl Checker {
    fn check<T>(&mut self, field: impl Into<String>, result: Result<T, Invalid>) -> Option<T> {
        result.map_err(|e| self.fail(field, e)).ok()
    }

    /// Past the limit the request is known to be bad; more detail would
    /// only make the answer (and the work) bigger.
    fn fail(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(FieldViolation::new(field, description));
        }
    }

    /// A list over its limit is refused whole: its elements are not
    /// checked one by one (`false`).
    fn at_most(&mut self, field: &str, len: usize, max: usize) -> bool {
        if len > max {
            self.fail(field, format!("at most {max} allowed, got {len}"));
            return false;
        }
        true
    }

    /// An optional string: empty means absent.
    fn optional<T>(
        &mut self,
        field: impl Into<String>,
        s: &str,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        if s.is_empty() {
            None
        } else {
            self.check(field, parse(s))
        }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldViolation>> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(self.0),
        }
    }
}

fn recipient(c: &mut Checker, recipient_id: &str, comment_id: &str) -> Option<Recipient> {
    match (recipient_id.is_empty(), comment_id.is_empty()) {
        (false, false) => {
            let both = "set recipient_id or comment_id, not both";
            c.fail("recipient_id", both);
            c.fail("comment_id", both);
            None
        }
        (true, true) => {
            c.fail(
                "recipient_id",
                "required: the IGSID to message (or set comment_id for a private reply)",
            );
            None
        }
        (false, true) => c
            .check("recipient_id", Igsid::parse(recipient_id))
            .map(Recipient::User),
        (true, false) => c
            .check("comment_id", CommentId::parse(comment_id))
            .map(Recipient::Comment),
    }
}

fn attachment(c: &mut Checker, i: usize, a: &pb::Attachment) -> Option<Attachment> {
    use pb::AttachmentType as T;
    let kind = match T::try_from(a.r#type) {
        Ok(T::Image) => Some(AttachmentKind::Image),
        Ok(T::Video) => Some(AttachmentKind::Video),
        Ok(T::Audio) => Some(AttachmentKind::Audio),
        Ok(T::File) => Some(AttachmentKind::File),
        _ => {
            c.fail(
                format!("attachments[{i}].type"),
                "required: ATTACHMENT_TYPE_IMAGE, _VIDEO, _AUDIO or _FILE",
            );
            None
        }
    };
    let source = match &a.source {
        Some(pb::attachment::Source::Url(u)) => c
            .check(format!("attachments[{i}].url"), HttpUrl::parse(u))
            .map(MediaSource::Url),
        Some(pb::attachment::Source::AttachmentId(id)) => c
            .check(
                format!("attachments[{i}].attachment_id"),
                GraphId::parse(id),
            )
            .map(MediaSource::Id),
        None => {
            c.fail(
                format!("attachments[{i}].url"),
                "required: set url or attachment_id",
            );
            None
        }
    };
    Some(Attachment {
        kind: kind?,
        source: source?,
    })
}

fn attachments(c: &mut Checker, list: &[pb::Attachment]) -> Vec<Attachment> {
    if !c.at_most("attachments", list.len(), limits::ATTACHMENTS) {
        return Vec::new();
    }
    let parsed: Vec<_> = list
        .iter()
        .enumerate()
        .filter_map(|(i, a)| attachment(c, i, a))
        .collect();
    if parsed.len() > 1 {
        for (i, a) in parsed.iter().enumerate() {
            if a.kind != AttachmentKind::Image {
                c.fail(
                    format!("attachments[{i}].type"),
                    "several attachments in one message must all be images",
                );
            }
        }
    }
    parsed
}

fn quick_replies(c: &mut Checker, list: &[pb::QuickReply]) -> Vec<QuickReply> {
    if !c.at_most("quick_replies", list.len(), limits::QUICK_REPLIES) {
        return Vec::new();
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, q)| {
            let title = c.check(
                format!("quick_replies[{i}].title"),
                Label::parse(&q.title, limits::QUICK_REPLY_TITLE_CHARS),
            );
            // The title doubles as the payload, as most callers want.
            let raw = if q.payload.is_empty() {
                &q.title
            } else {
                &q.payload
            };
            let payload = c.check(format!("quick_replies[{i}].payload"), Payload::parse(raw));
            Some(QuickReply {
                title: title?,
                payload: payload?,
            })
        })
        .collect()
}

fn button(c: &mut Checker, at: &str, b: &pb::Button) -> Option<Button> {
    use pb::ButtonType as T;
    let title = c.check(
        format!("{at}.title"),
        Label::parse(&b.title, limits::TITLE_CHARS),
    );
    match T::try_from(b.r#type) {
        Ok(T::WebUrl) => {
            let url = c.check(format!("{at}.url"), HttpUrl::parse(&b.url));
            Some(Button::WebUrl {
                title: title?,
                url: url?,
            })
        }
        Ok(T::Postback) => {
            let payload = c.check(format!("{at}.payload"), Payload::parse(&b.payload));
            Some(Button::Postback {
                title: title?,
                payload: payload?,
            })
        }
        _ => {
            c.fail(
                format!("{at}.type"),
                "required: BUTTON_TYPE_WEB_URL or BUTTON_TYPE_POSTBACK",
            );
            None
        }
    }
}

fn template(c: &mut Checker, t: &pb::GenericTemplate) -> Vec<TemplateElement> {
    let field = "generic_template.elements";
    if t.elements.is_empty() {
        c.fail(field, "at least one element is required");
    }
    if !c.at_most(field, t.elements.len(), limits::TEMPLATE_ELEMENTS) {
        return Vec::new();
    }
    t.elements
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let at = format!("{field}[{i}]");
            let title = c.check(
                format!("{at}.title"),
                Label::parse(&e.title, limits::TITLE_CHARS),
            );
            let subtitle = c.optional(format!("{at}.subtitle"), &e.subtitle, |s| {
                Label::parse(s, limits::TITLE_CHARS)
            });
            let image_url = c.optional(format!("{at}.image_url"), &e.image_url, HttpUrl::parse);
            let default_action_url = c.optional(
                format!("{at}.default_action_url"),
                &e.default_action_url,
                HttpUrl::parse,
            );
            let buttons: Vec<_> =
                if c.at_most(&format!("{at}.buttons"), e.buttons.len(), limits::BUTTONS) {
                    e.buttons
                        .iter()
                        .enumerate()
                        .filter_map(|(j, b)| button(c, &format!("{at}.buttons[{j}]"), b))
                        .collect()
                } else {
                    Vec::new()
                };
            Some(TemplateElement {
                title: title?,
                subtitle,
                image_url,
                default_action_url,
                buttons,
            })
        })
        .collect()
}

/// The fields that each make a kind of content, as named in the proto.
fn content_fields(r: &pb::SendRequest) -> Vec<&'static str> {
    let mut set = Vec::new();
    if !r.text.is_empty() {
        set.push("text");
    }
    if !r.attachments.is_empty() {
        set.push("attachments");
    }
    if r.sticker != 0 {
        set.push("sticker");
    }
    if !r.share_post_id.is_empty() {
        set.push("share_post_id");
    }
    if r.generic_template.is_some() {
        set.push("generic_template");
    }
    set
}

fn content(c: &mut Checker, r: &pb::SendRequest) -> Option<Content> {
    let kinds = content_fields(r);
    if !r.quick_replies.is_empty() && (r.text.is_empty() || kinds.len() > 1) {
        c.fail("quick_replies", "quick replies go only with text");
    }
    match kinds.as_slice() {
        [] => {
            c.fail(
                "text",
                "the message has no content: set text, attachments, sticker, share_post_id or generic_template",
            );
            None
        }
        ["text"] => {
            let text = c.check("text", Text::parse(&r.text));
            let quick_replies = quick_replies(c, &r.quick_replies);
            Some(Content::Text {
                text: text?,
                quick_replies,
            })
        }
        ["attachments"] => Some(Content::Attachments(attachments(c, &r.attachments))),
        ["sticker"] => match pb::Sticker::try_from(r.sticker) {
            Ok(pb::Sticker::LikeHeart) => Some(Content::LikeHeartSticker),
            _ => {
                c.fail(
                    "sticker",
                    "unknown sticker: the one Instagram offers is STICKER_LIKE_HEART",
                );
                None
            }
        },
        ["share_post_id"] => c
            .check("share_post_id", GraphId::parse(&r.share_post_id))
            .map(|post_id| Content::MediaShare { post_id }),
        ["generic_template"] => r
            .generic_template
            .as_ref()
            .map(|t| Content::GenericTemplate(template(c, t))),
        several => {
            let list = several.join(", ");
            for field in several {
                c.fail(
                    *field,
                    format!("a message carries one kind of content; this one sets {list}"),
                );
            }
            None
        }
    }
}

/// A validated `Send`: the message, and its idempotency key if given.
pub type SendCall = (OutgoingMessage, Option<RequestId>);

/// Counts the lists of an encoded `SendRequest` (attachments, quick
/// replies, template elements and their buttons) before it is decoded, and
/// refuses one over its limit as validation would: decoding allocates for
/// every element, so 100,000 empty buttons in 200 KB would cost megabytes
/// before any check ran. Wire faults are left to the decoder.
pub fn prescan_send_request(wire: &[u8]) -> Result<(), Vec<FieldViolation>> {
    let mut c = Checker::default();
    let (mut attachments, mut quick_replies, mut elements) = (0, 0, Vec::new());
    for (field, value) in wire_fields(wire) {
        match field {
            4 => attachments += 1,
            8 => quick_replies += 1,
            7 => {
                for (field, element) in wire_fields(value.unwrap_or_default()) {
                    if field == 1 {
                        let buttons = wire_fields(element.unwrap_or_default())
                            .filter(|&(f, _)| f == 5)
                            .count();
                        elements.push(buttons);
                    }
                }
            }
            _ => {}
        }
    }
    c.at_most("attachments", attachments, limits::ATTACHMENTS);
    c.at_most("quick_replies", quick_replies, limits::QUICK_REPLIES);
    let field = "generic_template.elements";
    if c.at_most(field, elements.len(), limits::TEMPLATE_ELEMENTS) {
        for (i, &buttons) in elements.iter().enumerate() {
            c.at_most(&format!("{field}[{i}].buttons"), buttons, limits::BUTTONS);
        }
    }
    c.finish(Some(()))
}

/// The fields of an encoded message in order: number, and the bytes of a
/// length-delimited one. Ends quietly at the first fault.
fn wire_fields(mut wire: &[u8]) -> impl Iterator<Item = (u64, Option<&[u8]>)> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    std::iter::from_fn(move || {
        let (field, wire_type) = decode_key(&mut wire).ok()?;
        let value = match wire_type {
            WireType::Varint => {
                decode_varint(&mut wire).ok()?;
                None
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                wire = wire.get(n..)?;
                None
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut wire).ok()?).ok()?;
                let (value, rest) = (wire.get(..len)?, wire.get(len..)?);
                wire = rest;
                Some(value)
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        Some((u64::from(field), value))
    })
}

pub fn message_from_pb(r: &pb::SendRequest) -> Result<SendCall, Vec<FieldViolation>> {
    let mut c = Checker::default();
    let request_id = c.optional("request_id", &r.request_id, RequestId::parse);
    let recipient = recipient(&mut c, &r.recipient_id, &r.comment_id);
    let content = content(&mut c, r);
    let reply_to = c.optional(
        "reply_to_message_id",
        &r.reply_to_message_id,
        GraphId::parse,
    );
    let human_agent = match pb::MessageTag::try_from(r.tag) {
        Ok(pb::MessageTag::Unspecified) => false,
        Ok(pb::MessageTag::HumanAgent) => true,
        Err(_) => {
            c.fail(
                "tag",
                "unknown tag: the one Instagram allows is MESSAGE_TAG_HUMAN_AGENT",
            );
            false
        }
    };
    let message = match (recipient, content) {
        (Some(recipient), Some(content)) => Some(OutgoingMessage {
            recipient,
            content,
            reply_to,
            human_agent,
        }),
        _ => None,
    };
    c.finish(message.map(|m| (m, request_id)))
}

pub fn action_from_pb(r: &pb::SendActionRequest) -> Result<OutgoingAction, Vec<FieldViolation>> {
    use pb::SenderAction as A;
    let mut c = Checker::default();
    let recipient = if r.recipient_id.is_empty() {
        c.fail("recipient_id", "required: the IGSID of the conversation");
        None
    } else {
        c.check("recipient_id", Igsid::parse(&r.recipient_id))
    };
    let kind = A::try_from(r.action).unwrap_or(A::Unspecified);
    let wants_message = matches!(kind, A::React | A::Unreact);
    if !wants_message && !r.message_id.is_empty() {
        c.fail(
            "message_id",
            "only with SENDER_ACTION_REACT or SENDER_ACTION_UNREACT",
        );
    }
    if kind != A::React && !r.reaction.is_empty() {
        c.fail("reaction", "only with SENDER_ACTION_REACT");
    }
    let message_id = if wants_message {
        c.check("message_id", GraphId::parse(&r.message_id))
    } else {
        None
    };
    let action = match kind {
        A::TypingOn => Some(SenderAction::TypingOn),
        A::TypingOff => Some(SenderAction::TypingOff),
        A::MarkSeen => Some(SenderAction::MarkSeen),
        A::React => {
            let reaction = if r.reaction.is_empty() {
                "love"
            } else {
                &r.reaction
            };
            let reaction = c.check(
                "reaction",
                if REACTIONS.contains(&reaction) {
                    Payload::parse(reaction)
                } else {
                    Err(format!(
                        "must be one Instagram documents: {}",
                        REACTIONS.join(", ")
                    ))
                },
            );
            message_id
                .zip(reaction)
                .map(|(message_id, reaction)| SenderAction::React {
                    message_id,
                    reaction: reaction.as_str().to_owned(),
                })
        }
        A::Unreact => message_id.map(|message_id| SenderAction::Unreact { message_id }),
        A::Unspecified => {
            c.fail(
                "action",
                "required: SENDER_ACTION_TYPING_ON, _TYPING_OFF, _MARK_SEEN, _REACT or _UNREACT",
            );
            None
        }
    };
    let value = recipient
        .zip(action)
        .map(|(recipient, action)| OutgoingAction { recipient, action });
    c.finish(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> pb::SendRequest {
        pb::SendRequest {
            recipient_id: "17841400000000000".into(),
            text: t.into(),
            ..Default::default()
        }
    }

    fn fields(r: &pb::SendRequest) -> Vec<String> {
        message_from_pb(r)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_plain_text_message_is_valid() {
        let (m, request_id) = message_from_pb(&text("Hello from my app")).unwrap();
        assert_eq!(m.recipient.as_str(), "17841400000000000");
        assert!(matches!(m.content, Content::Text { .. }));
        assert_eq!(request_id, None);
    }

    #[test]
    fn request_ids_are_at_most_36_printable_ascii_characters() {
        let mut r = text("hi");
        r.request_id = "3f2a6c1e-9b7d-4e8a-a1c2-0d5e6f7a8b9c".into();
        let (_, id) = message_from_pb(&r).unwrap();
        assert_eq!(id.unwrap().as_str(), r.request_id);
        for bad in ["x".repeat(37), "has space".into(), "é".into()] {
            r.request_id = bad;
            assert_eq!(fields(&r), ["request_id"], "{:?}", r.request_id);
        }
    }

    #[test]
    fn recipients_are_required_numeric_and_exclusive() {
        let mut r = text("hi");
        r.recipient_id.clear();
        assert_eq!(fields(&r), ["recipient_id"]);
        r.recipient_id = "jane.doe".into();
        assert_eq!(fields(&r), ["recipient_id"]);
        r.recipient_id = "17841400000000000".into();
        r.comment_id = "17900000000000001".into();
        assert_eq!(fields(&r), ["recipient_id", "comment_id"]);
        r.recipient_id.clear();
        assert!(message_from_pb(&r).is_ok());
    }

    #[test]
    fn text_over_1000_bytes_is_rejected_even_under_1000_characters() {
        assert!(message_from_pb(&text(&"€".repeat(333))).is_ok());
        let violations = message_from_pb(&text(&"€".repeat(334))).unwrap_err();
        assert_eq!(violations[0].field, "text");
        assert!(violations[0].description.contains("1002"));
    }

    #[test]
    fn a_message_needs_exactly_one_kind_of_content() {
        assert_eq!(fields(&text("")), ["text"]);
        let mut r = text("hi");
        r.sticker = pb::Sticker::LikeHeart as i32;
        r.share_post_id = "1".into();
        assert_eq!(fields(&r), ["text", "sticker", "share_post_id"]);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let r = pb::SendRequest {
            recipient_id: "abc".into(),
            text: "x".repeat(1001),
            reply_to_message_id: "\u{7}".into(),
            ..Default::default()
        };
        assert_eq!(fields(&r), ["recipient_id", "text", "reply_to_message_id"]);
    }

    #[test]
    fn quick_replies_are_limited_in_number_and_title_length() {
        let q = |t: &str| pb::QuickReply {
            title: t.into(),
            payload: String::new(),
        };
        let mut r = text("pick");
        r.quick_replies = (0..13).map(|i| q(&format!("option {i}"))).collect();
        assert!(message_from_pb(&r).is_ok());
        r.quick_replies.push(q("one too many"));
        assert_eq!(fields(&r), ["quick_replies"]);
        r.quick_replies = vec![q(&"x".repeat(21))];
        assert_eq!(fields(&r), ["quick_replies[0].title"]);
        let mut r = pb::SendRequest {
            recipient_id: "1".into(),
            sticker: 1,
            ..Default::default()
        };
        r.quick_replies = vec![q("a")];
        assert_eq!(fields(&r), ["quick_replies"]);
    }

    fn image(url: &str) -> pb::Attachment {
        pb::Attachment {
            r#type: pb::AttachmentType::Image as i32,
            source: Some(pb::attachment::Source::Url(url.into())),
        }
    }

    fn with_attachments(list: Vec<pb::Attachment>) -> pb::SendRequest {
        pb::SendRequest {
            recipient_id: "1".into(),
            attachments: list,
            ..Default::default()
        }
    }

    #[test]
    fn attachments_are_limited_to_ten_and_several_must_be_images() {
        let ten = (0..10)
            .map(|i| image(&format!("https://x.test/{i}.png")))
            .collect();
        assert!(message_from_pb(&with_attachments(ten)).is_ok());
        let eleven = (0..11)
            .map(|i| image(&format!("https://x.test/{i}.png")))
            .collect();
        assert_eq!(fields(&with_attachments(eleven)), ["attachments"]);
        let mut video = image("https://x.test/v.mp4");
        video.r#type = pb::AttachmentType::Video as i32;
        assert!(message_from_pb(&with_attachments(vec![video.clone()])).is_ok());
        assert_eq!(
            fields(&with_attachments(vec![
                image("https://x.test/a.png"),
                video
            ])),
            ["attachments[1].type"]
        );
    }

    #[test]
    fn attachments_need_a_type_and_an_http_url_or_an_id() {
        let bad = vec![
            image("ftp://x.test/a.png"),
            pb::Attachment {
                r#type: 0,
                source: Some(pb::attachment::Source::AttachmentId("123".into())),
            },
            pb::Attachment {
                r#type: 1,
                source: None,
            },
        ];
        assert_eq!(
            fields(&with_attachments(bad)),
            [
                "attachments[0].url",
                "attachments[1].type",
                "attachments[2].url"
            ]
        );
    }

    fn element(title: &str, buttons: usize) -> pb::TemplateElement {
        pb::TemplateElement {
            title: title.into(),
            buttons: (0..buttons)
                .map(|i| pb::Button {
                    r#type: pb::ButtonType::Postback as i32,
                    title: format!("b{i}"),
                    payload: "P".into(),
                    url: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn with_template(elements: Vec<pb::TemplateElement>) -> pb::SendRequest {
        pb::SendRequest {
            recipient_id: "1".into(),
            generic_template: Some(pb::GenericTemplate { elements }),
            ..Default::default()
        }
    }

    #[test]
    fn templates_are_limited_in_elements_titles_and_buttons() {
        assert!(message_from_pb(&with_template(vec![element("a", 3); 10])).is_ok());
        assert_eq!(
            fields(&with_template(vec![element("a", 0); 11])),
            ["generic_template.elements"]
        );
        assert_eq!(
            fields(&with_template(vec![])),
            ["generic_template.elements"]
        );
        assert_eq!(
            fields(&with_template(vec![element(&"t".repeat(81), 4)])),
            [
                "generic_template.elements[0].title",
                "generic_template.elements[0].buttons"
            ]
        );
        let mut e = element("a", 0);
        e.subtitle = "s".repeat(81);
        e.image_url = "file:///etc/passwd".into();
        e.buttons = vec![pb::Button {
            r#type: pb::ButtonType::WebUrl as i32,
            title: "Go".into(),
            url: "mailto:a@b.c".into(),
            payload: String::new(),
        }];
        assert_eq!(
            fields(&with_template(vec![e])),
            [
                "generic_template.elements[0].subtitle",
                "generic_template.elements[0].image_url",
                "generic_template.elements[0].buttons[0].url"
            ]
        );
    }

    #[test]
    fn actions_are_checked_for_their_arguments() {
        let a =
            |action: pb::SenderAction, message_id: &str, reaction: &str| pb::SendActionRequest {
                recipient_id: "17841400000000000".into(),
                action: action as i32,
                message_id: message_id.into(),
                reaction: reaction.into(),
                ..Default::default()
            };
        assert!(action_from_pb(&a(pb::SenderAction::TypingOn, "", "")).is_ok());
        let react = action_from_pb(&a(pb::SenderAction::React, "mid", "")).unwrap();
        assert_eq!(
            react.action,
            SenderAction::React {
                message_id: GraphId::parse("mid").unwrap(),
                reaction: "love".into()
            }
        );
        let bad = action_from_pb(&a(pb::SenderAction::React, "", "")).unwrap_err();
        assert_eq!(bad[0].field, "message_id");
        let bad = action_from_pb(&a(pb::SenderAction::MarkSeen, "mid", "love")).unwrap_err();
        let names: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(names, ["message_id", "reaction"]);
        let bad = action_from_pb(&a(pb::SenderAction::Unspecified, "", "")).unwrap_err();
        assert_eq!(bad[0].field, "action");
    }

    #[test]
    fn conversion_stops_collecting_at_the_violation_limit() {
        let element = pb::TemplateElement {
            buttons: vec![pb::Button::default(); 3],
            ..Default::default()
        };
        let request = pb::SendRequest {
            recipient_id: "not an igsid".into(),
            generic_template: Some(pb::GenericTemplate {
                elements: vec![element; 10],
            }),
            ..Default::default()
        };
        let violations = message_from_pb(&request).unwrap_err();
        assert_eq!(violations.len(), MAX_VIOLATIONS);
    }
}

#[cfg(test)]
mod largest {
    use super::*;
    use crate::model::message::limits;

    /// Every field at its limit, in characters of 4 UTF-8 bytes where the
    /// limit counts characters.
    fn largest_valid_requests() -> Vec<(&'static str, pb::SendRequest)> {
        let wide = |chars: usize| "𝄞".repeat(chars);
        let url = |n: usize| format!("https://example.com/{}", "a".repeat(n - 20));
        let base = pb::SendRequest {
            recipient_id: "9".repeat(limits::ID_CHARS),
            reply_to_message_id: "m".repeat(limits::ID_CHARS),
            request_id: "r".repeat(36),
            account_id: "a".repeat(64),
            ..Default::default()
        };
        let button = pb::Button {
            r#type: pb::ButtonType::WebUrl as i32,
            title: wide(limits::TITLE_CHARS),
            url: url(limits::URL_BYTES),
            payload: String::new(),
        };
        let element = pb::TemplateElement {
            title: wide(limits::TITLE_CHARS),
            subtitle: wide(limits::TITLE_CHARS),
            image_url: url(limits::URL_BYTES),
            default_action_url: url(limits::URL_BYTES),
            buttons: vec![button; limits::BUTTONS],
        };
        vec![
            (
                "text",
                pb::SendRequest {
                    text: "t".repeat(limits::TEXT_BYTES),
                    // Quick replies go only with text.
                    quick_replies: (0..limits::QUICK_REPLIES)
                        .map(|_| pb::QuickReply {
                            title: wide(limits::QUICK_REPLY_TITLE_CHARS),
                            payload: "p".repeat(limits::PAYLOAD_BYTES),
                        })
                        .collect(),
                    ..base.clone()
                },
            ),
            (
                "template",
                pb::SendRequest {
                    generic_template: Some(pb::GenericTemplate {
                        elements: vec![element; limits::TEMPLATE_ELEMENTS],
                    }),
                    ..base.clone()
                },
            ),
            (
                "attachments",
                pb::SendRequest {
                    attachments: (0..limits::ATTACHMENTS)
                        .map(|_| pb::Attachment {
                            r#type: pb::AttachmentType::Image as i32,
                            source: Some(pb::attachment::Source::Url(url(limits::URL_BYTES))),
                        })
                        .collect(),
                    ..base.clone()
                },
            ),
        ]
    }

    #[test]
    fn the_largest_valid_requests_fit_under_the_request_limit_and_it_is_close() {
        let mut largest = 0;
        for (name, r) in largest_valid_requests() {
            message_from_pb(&r).unwrap_or_else(|v| panic!("{name}: {v:?}"));
            let size = prost::Message::encoded_len(&r);
            assert!(size <= super::super::MAX_REQUEST_BYTES, "{name}: {size}");
            largest = largest.max(size);
        }
        // Any larger limit would only let junk in.
        assert!(
            super::super::MAX_REQUEST_BYTES < largest * 5 / 4,
            "{largest}"
        );
    }

    #[test]
    fn the_prescan_counts_lists_as_validation_does_before_anything_is_decoded() {
        for (name, r) in largest_valid_requests() {
            let wire = prost::Message::encode_to_vec(&r);
            assert_eq!(prescan_send_request(&wire), Ok(()), "{name}");
        }
        let template = |elements: usize, buttons: usize| pb::SendRequest {
            generic_template: Some(pb::GenericTemplate {
                elements: vec![
                    pb::TemplateElement {
                        buttons: vec![pb::Button::default(); buttons],
                        ..Default::default()
                    };
                    elements
                ],
            }),
            ..Default::default()
        };
        let over = [
            (
                pb::SendRequest {
                    text: "pick one".into(),
                    quick_replies: vec![pb::QuickReply::default(); 14],
                    ..Default::default()
                },
                "quick_replies",
            ),
            (
                pb::SendRequest {
                    attachments: vec![pb::Attachment::default(); 11],
                    ..Default::default()
                },
                "attachments",
            ),
            (template(11, 0), "generic_template.elements"),
            (template(2, 4), "generic_template.elements[0].buttons"),
        ];
        for (r, field) in over {
            let wire = prost::Message::encode_to_vec(&r);
            let violations = prescan_send_request(&wire).unwrap_err();
            assert_eq!(violations[0].field, field);
            // Validation says the same of the decoded request.
            let validated = message_from_pb(&r).unwrap_err();
            assert!(validated.contains(&violations[0]), "{field}: {validated:?}");
        }
        // A template sent in two parts is one (protobuf merges them).
        let mut wire = prost::Message::encode_to_vec(&template(6, 0));
        wire.extend(prost::Message::encode_to_vec(&template(6, 0)));
        let violations = prescan_send_request(&wire).unwrap_err();
        assert_eq!(violations[0].field, "generic_template.elements");
        // Junk is left to the decoder.
        assert_eq!(prescan_send_request(&[0xff, 0xff, 0xff]), Ok(()));
    }
}

/// How `GetSend` names a send.
#[derive(Debug, PartialEq)]
pub enum SendLookup {
    Request(RequestId),
    Send(String),
}

/// The send a `GetSendRequest` names: exactly one of its two ids.
pub fn send_lookup_from_pb(r: &pb::GetSendRequest) -> Result<SendLookup, Vec<FieldViolation>> {
    match (r.request_id.is_empty(), r.send_id.is_empty()) {
        (false, true) => RequestId::parse(&r.request_id)
            .map(SendLookup::Request)
            .map_err(|e| vec![FieldViolation::new("request_id", e)]),
        // The gateway's send ids are hex; anything else names no send.
        (true, false)
            if r.send_id.len() <= 64 && r.send_id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(SendLookup::Send(r.send_id.clone()))
        }
        (true, false) => Err(vec![FieldViolation::new(
            "send_id",
            "must be a send id as a DELIVERY_UNKNOWN answer gave it (hex, at most 64 characters)",
        )]),
        _ => Err(vec![
            FieldViolation::new("request_id", "set exactly one of request_id and send_id"),
            FieldViolation::new("send_id", "set exactly one of request_id and send_id"),
        ]),
    }
}

/// A message id as `GetMessage` takes it: printable ASCII, as webhooks'
/// mids are checked.
pub fn mid_from_pb(mid: &str) -> Result<String, Vec<FieldViolation>> {
    if mid.is_empty()
        || mid.len() > crate::model::event::MAX_MID_BYTES
        || !mid.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(vec![FieldViolation::new(
            "message_id",
            format!(
                "must be a message id: 1 to {} printable ASCII characters",
                crate::model::event::MAX_MID_BYTES
            ),
        )]);
    }
    Ok(mid.to_owned())
}
