//! Inbound events: what Instagram's webhook deliveries carry, as typed
//! values (parsed by `conversation::payload`). An event of a kind we do not
//! know is kept as raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::UnixMs;
use crate::model::message::Priority;

/// 2010-01-01T00:00:00Z. No event is dated before it (Instagram Direct
/// began in 2013): an earlier time is a test value or seconds read as
/// milliseconds, and is replaced.
pub const EARLIEST_MS: UnixMs = 1_262_304_000_000;

/// Instagram's ids (accounts, IGSIDs, comments, media) are digits, under
/// 20 of them today; longer is not an id.
pub const MAX_ID_BYTES: usize = 64;

/// Message ids are opaque printable ASCII, a few hundred bytes at most.
pub const MAX_MID_BYTES: usize = 512;

/// One event from a webhook delivery, with the account it arrived for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// `entry[].id`: the professional account the event belongs to.
    pub account_id: String,
    /// Who acted: the user's IGSID, or our account for an echo.
    pub sender_id: String,
    pub recipient_id: String,
    /// When it happened, by Instagram's clock; when that was missing or
    /// absurd, when Meta sent the delivery, else when it arrived (see
    /// `original_timestamp_ms`).
    pub timestamp_ms: UnixMs,
    pub kind: EventKind,
    /// The time as delivered, kept when it was replaced (before 2010, more
    /// than a day ahead, or beyond what a protobuf Timestamp holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp_ms: Option<UnixMs>,
    /// Sent while another app held the conversation (`entry[].standby[]`):
    /// stored and streamed, but this app may not be the one to answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
    /// The delivery's `object` when it is not `instagram` (say, `page`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The item exactly as Meta sent it, beside the typed fields: what the
    /// gateway does not model is never lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A message from the user (`deleted` when they unsent it).
    Message(MessageEvent),
    /// A copy of a message our account sent (by this gateway or elsewhere).
    Echo(MessageEvent),
    Reaction {
        mid: String,
        /// `react` or `unreact`.
        action: String,
        reaction: String,
        emoji: String,
    },
    Postback {
        mid: String,
        title: String,
        payload: String,
    },
    Read {
        mid: String,
    },
    Referral {
        /// The referral object as sent (`ref`, `source`, `type`, ad ids…).
        referral: Value,
    },
    Edit {
        mid: String,
        text: String,
        num_edit: i64,
    },
    /// A message this gateway sent and Graph accepted, recorded by the
    /// gateway itself (no webhook carries it): streamed only to subscribers
    /// that ask for outbound events.
    Sent(SentMessage),
    /// A reaction this gateway sent (`SendAction`), recorded likewise.
    SentReaction {
        /// The message reacted to.
        mid: String,
        /// `react` or `unreact`.
        action: String,
        reaction: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        key_id: String,
    },
    /// Anything else, exactly as delivered; `field` says where it came from
    /// (`messaging`, `standby`, a `changes[].field` such as `comments`, or
    /// `entry` for a delivery of another `object`).
    Raw {
        field: String,
        json: Value,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub mid: String,
    pub text: String,
    /// `[{type, payload:{url,…}}]` as sent.
    pub attachments: Vec<Attachment>,
    pub quick_reply_payload: String,
    pub reply_to_mid: String,
    pub referral: Option<Value>,
    pub deleted: bool,
    /// A reply to the account's story (`reply_to.story`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_story: Option<StoryRef>,
    /// Instagram could not pass the content on (`is_unsupported`), such as
    /// some stickers and GIFs: the message exists but has no content here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsupported: bool,
}

/// What the gateway sent: Graph's id for it, who asked, and the body
/// exactly as posted (never the token, which travels in a header).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    /// Graph's `message_id`.
    pub mid: String,
    /// The caller's `request_id`, if it gave one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The API key of the caller (empty when keys are off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    pub priority: Priority,
    /// The Graph request body as sent: `recipient`, `message`, any `tag`.
    pub body_json: String,
    /// The gateway's id for a send whose Graph answer was lost (see
    /// `store::SendRecord`); empty for a send Graph answered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub send_id: String,
    /// Graph's answer was lost, and Instagram's echo of the message told
    /// its `mid`: this event was recorded when the echo arrived.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmed_by_echo: bool,
}

impl MessageEvent {
    /// See [`crate::model::message::content_key`].
    pub fn content_key(&self) -> Option<String> {
        crate::model::message::content_key(
            &self.text,
            self.attachments.iter().map(|a| a.kind.as_str()),
        )
    }
}

/// A story a message answers: its id, and a URL that dies with the story.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoryRef {
    pub id: String,
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub kind: String,
    pub url: String,
    /// Shares of reels and posts (`ig_reel`, `reel`, `ig_post`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reel_video_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ig_post_media_id: String,
}

/// The dedup key of the `sent` event of message `mid`: how an echo finds
/// the send it copies.
pub fn sent_key(account: &str, mid: &str) -> String {
    format!("{account}:sent:{mid}")
}

/// The dedup key of the echo of message `mid`.
pub fn echo_key(account: &str, mid: &str) -> String {
    format!("{account}:echo:{mid}")
}

/// The dedup key of the person's message `mid`.
pub fn message_key(account: &str, mid: &str) -> String {
    format!("{account}:message:{mid}")
}

impl EventKind {
    /// A short name, as metrics label events.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Message(_) => "message",
            EventKind::Echo(_) => "echo",
            EventKind::Reaction { .. } => "reaction",
            EventKind::Postback { .. } => "postback",
            EventKind::Read { .. } => "read",
            EventKind::Referral { .. } => "referral",
            EventKind::Edit { .. } => "edit",
            EventKind::Raw { .. } => "raw",
            EventKind::Sent(_) => "sent",
            EventKind::SentReaction { .. } => "sent_reaction",
        }
    }

    /// Recorded by the gateway of its own sends, not delivered by Meta:
    /// streamed only to subscribers that ask for outbound events.
    pub fn is_outbound(&self) -> bool {
        matches!(self, EventKind::Sent(_) | EventKind::SentReaction { .. })
    }

    /// The message ids it names, to check their shape.
    pub fn mids(&self) -> Vec<&str> {
        match self {
            EventKind::Message(m) | EventKind::Echo(m) => vec![&m.mid, &m.reply_to_mid],
            EventKind::Reaction { mid, .. }
            | EventKind::Postback { mid, .. }
            | EventKind::Read { mid }
            | EventKind::Edit { mid, .. }
            | EventKind::SentReaction { mid, .. } => vec![mid],
            EventKind::Sent(m) => vec![&m.mid],
            EventKind::Referral { .. } | EventKind::Raw { .. } => vec![],
        }
    }
}

impl InboundEvent {
    /// An event with nothing but what every event has.
    pub fn new(
        account_id: &str,
        sender_id: &str,
        recipient_id: &str,
        timestamp_ms: UnixMs,
        kind: EventKind,
    ) -> Self {
        Self {
            account_id: account_id.to_owned(),
            sender_id: sender_id.to_owned(),
            recipient_id: recipient_id.to_owned(),
            timestamp_ms,
            kind,
            original_timestamp_ms: None,
            standby: false,
            object: None,
            raw: None,
        }
    }

    /// Whether this event opens (or renews) the user's messaging window:
    /// a message, a postback, a reaction or a referral from the user, in
    /// standby too (the person wrote to the business either way).
    pub fn opens_window(&self) -> bool {
        if self.object.is_some() {
            return false;
        }
        match &self.kind {
            EventKind::Message(m) => !m.deleted,
            EventKind::Postback { .. }
            | EventKind::Reaction { .. }
            | EventKind::Referral { .. } => true,
            _ => false,
        }
    }

    /// The user on the other side of the conversation.
    pub fn user_id(&self) -> &str {
        match self.kind {
            EventKind::Echo(_) | EventKind::Sent(_) | EventKind::SentReaction { .. } => {
                &self.recipient_id
            }
            _ => &self.sender_id,
        }
    }

    /// Meta redelivers; the same event always yields the same key. Events
    /// with their own message id use it, the rest a hash of the item as
    /// delivered (its kind too: one item may carry several events).
    pub fn dedup_key(&self) -> String {
        let a = &self.account_id;
        match &self.kind {
            EventKind::Message(m) if !m.mid.is_empty() => {
                if m.deleted {
                    format!("{a}:deleted:{}", m.mid)
                } else {
                    message_key(a, &m.mid)
                }
            }
            EventKind::Echo(m) if !m.mid.is_empty() => echo_key(a, &m.mid),
            EventKind::Sent(m) if !m.mid.is_empty() => sent_key(a, &m.mid),
            EventKind::Postback { mid, .. } if !mid.is_empty() => format!("{a}:postback:{mid}"),
            EventKind::Edit { mid, num_edit, .. } if !mid.is_empty() => {
                format!("{a}:edit:{mid}:{num_edit}")
            }
            kind => {
                // serde_json's map is sorted, so key order in the delivery
                // does not change the hash. The item as delivered, not the
                // times derived from it: a redelivery matches whatever
                // moment it arrives at.
                let canonical = match &self.raw {
                    Some(raw) => {
                        serde_json::to_vec(&(kind.name(), &self.object, self.standby, raw))
                    }
                    None => match self.original_timestamp_ms {
                        Some(original) => serde_json::to_vec(&InboundEvent {
                            timestamp_ms: original,
                            original_timestamp_ms: None,
                            ..self.clone()
                        }),
                        None => serde_json::to_vec(self),
                    },
                }
                .unwrap_or_default();
                let digest = Sha256::digest(&canonical);
                format!("{a}:sha256:{}", hex::encode(digest))
            }
        }
    }
}
