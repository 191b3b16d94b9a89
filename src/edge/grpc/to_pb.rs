//! What the gateway reports (inbound events, windows, accounts) as
//! protobuf messages.

use crate::accounts::{AccountEntry, TokenState};
use crate::clock::UnixMs;
use crate::model::event::{EventKind, MessageEvent, SentMessage};
use crate::model::message::Priority;
use crate::model::window::{Window, WindowState};
use crate::store::StoredEvent;

use super::pb;

pub fn timestamp(ms: UnixMs) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn window_to_pb(account_id: String, recipient_id: String, w: &Window) -> pb::GetWindowResponse {
    let state = match w.state {
        WindowState::Open => pb::WindowState::Open,
        WindowState::HumanAgentOnly => pb::WindowState::HumanAgentOnly,
        WindowState::Closed => pb::WindowState::Closed,
        WindowState::Unknown => pb::WindowState::Unknown,
    };
    pb::GetWindowResponse {
        recipient_id,
        state: state as i32,
        last_inbound_at: w.last_inbound_ms.map(timestamp),
        standard_closes_at: w.standard_closes_ms.map(timestamp),
        human_agent_closes_at: w.human_agent_closes_ms.map(timestamp),
        account_id,
    }
}

pub fn account_to_pb(account: &AccountEntry) -> pb::AccountStatus {
    let status = account.status();
    let token_state = match status.state {
        TokenState::Unchecked => pb::TokenState::Unchecked,
        TokenState::Valid => pb::TokenState::Valid,
        TokenState::Expiring => pb::TokenState::Expiring,
        TokenState::Invalid => pb::TokenState::Invalid,
    };
    let calls = account.calls_under_way();
    pb::AccountStatus {
        id: account.id.clone(),
        name: account.name.clone().unwrap_or_default(),
        username: status.username.unwrap_or_default(),
        token_state: token_state as i32,
        token_expires_at: status.expires_at_ms.map(timestamp),
        last_refresh_at: status.last_refresh_ms.map(timestamp),
        last_graph_error: status.last_error.unwrap_or_default(),
        sends_in_flight: calls as u32,
        sends_queued: account.in_flight().saturating_sub(calls) as u32,
        api_url: account.account().base_url.clone(),
    }
}

fn message_to_pb(m: MessageEvent) -> pb::InboundMessage {
    pb::InboundMessage {
        mid: m.mid,
        text: m.text,
        attachments: m
            .attachments
            .into_iter()
            .map(|a| pb::InboundAttachment {
                r#type: a.kind,
                url: a.url,
                title: a.title,
                reel_video_id: a.reel_video_id,
                ig_post_media_id: a.ig_post_media_id,
            })
            .collect(),
        quick_reply_payload: m.quick_reply_payload,
        reply_to_mid: m.reply_to_mid,
        referral_json: m.referral.map(|r| r.to_string()).unwrap_or_default(),
        deleted: m.deleted,
        reply_to_story: m.reply_to_story.map(|s| pb::StoryReply {
            id: s.id,
            url: s.url,
        }),
        unsupported: m.unsupported,
    }
}

fn sent_to_pb(m: SentMessage) -> pb::OutboundMessage {
    let priority = match m.priority {
        Priority::Bulk => pb::Priority::Bulk,
        Priority::Interactive => pb::Priority::Interactive,
    };
    // The text is read back from the body: parsed here, for a subscriber
    // that asked, not on the send path.
    let text = serde_json::from_str::<serde_json::Value>(&m.body_json)
        .ok()
        .and_then(|b| b["message"]["text"].as_str().map(str::to_owned))
        .unwrap_or_default();
    pb::OutboundMessage {
        mid: m.mid,
        request_id: m.request_id,
        key_id: m.key_id,
        priority: priority as i32,
        text,
        body_json: m.body_json,
    }
}

pub fn event_to_pb(stored: StoredEvent) -> pb::InboundEvent {
    use pb::inbound_event::Event;
    let e = stored.event;
    let field = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let event = match e.kind {
        EventKind::Message(m) => Event::Message(message_to_pb(m)),
        EventKind::Echo(m) => Event::Echo(message_to_pb(m)),
        EventKind::Reaction {
            mid,
            action,
            reaction,
            emoji,
        } => Event::Reaction(pb::Reaction {
            mid,
            action,
            reaction,
            emoji,
        }),
        EventKind::Postback {
            mid,
            title,
            payload,
        } => Event::Postback(pb::Postback {
            mid,
            title,
            payload,
        }),
        EventKind::Read { mid } => Event::Read(pb::Read { mid }),
        EventKind::Referral { referral } => Event::Referral(pb::Referral {
            r#ref: field(&referral, "ref"),
            source: field(&referral, "source"),
            r#type: field(&referral, "type"),
            json: referral.to_string(),
        }),
        EventKind::Edit {
            mid,
            text,
            num_edit,
        } => Event::Edit(pb::MessageEdit {
            mid,
            text,
            num_edit,
        }),
        EventKind::Raw { field, json } => Event::Raw(pb::RawEvent {
            field,
            json: json.to_string(),
        }),
        EventKind::Sent(m) => Event::Sent(sent_to_pb(m)),
        EventKind::SentReaction {
            mid,
            action,
            reaction,
            key_id,
        } => Event::SentReaction(pb::OutboundReaction {
            mid,
            action,
            reaction,
            key_id,
        }),
    };
    pb::InboundEvent {
        seq: stored.seq,
        account_id: e.account_id,
        sender_id: e.sender_id,
        recipient_id: e.recipient_id,
        timestamp: Some(timestamp(e.timestamp_ms)),
        received_at: Some(timestamp(stored.received_ms)),
        raw_json: e.raw.map(|r| r.to_string()).unwrap_or_default(),
        standby: e.standby,
        object: e.object.unwrap_or_default(),
        original_timestamp_ms: e.original_timestamp_ms.unwrap_or_default(),
        event: Some(event),
    }
}
