//! What the gateway reports (inbound events, windows, accounts) as
//! protobuf messages.

use crate::accounts::{AccountEntry, TokenState};
use crate::clock::UnixMs;
use crate::model::error::Reason;
use crate::model::event::{EventKind, MessageEvent, SentMessage};
use crate::model::message::Priority;
use crate::model::window::{Window, WindowState};
use crate::send::guard::SendFate;
use crate::store::{MessageRecord, SendState, StoredEvent};

use super::{pb, status};

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
        send_id: m.send_id,
        confirmed_by_echo: m.confirmed_by_echo,
    }
}

/// What `GetSend` answers of a send's fate.
pub fn send_fate_to_pb(account_id: String, fate: SendFate) -> pb::GetSendResponse {
    let mut out = pb::GetSendResponse {
        account_id,
        ..Default::default()
    };
    let record = match fate {
        SendFate::Sent {
            sent,
            confirmed_by_echo,
            record,
        } => {
            out.state = pb::SendState::Sent as i32;
            out.message_id = sent.message_id.unwrap_or_default();
            out.recipient_id = sent.recipient_id;
            out.confirmed_by_echo = confirmed_by_echo;
            record
        }
        SendFate::Pending { record } => {
            out.state = pb::SendState::Pending as i32;
            record
        }
        SendFate::NotSeen { record } => {
            out.state = pb::SendState::NotSeen as i32;
            Some(record)
        }
        SendFate::Failed { record } => {
            out.state = pb::SendState::Failed as i32;
            Some(record)
        }
        SendFate::Unknown => {
            out.state = pb::SendState::Unknown as i32;
            None
        }
    };
    if let Some(record) = record {
        out.send_id = record.send_id;
        out.request_id = record.request_id;
        out.recipient_id = record.user;
        out.created_at = Some(timestamp(record.created_ms));
        match record.state {
            SendState::Sent { mid, at_ms } => {
                out.message_id = mid;
                out.resolved_at = Some(timestamp(at_ms));
            }
            SendState::NotSeen { at_ms } => out.resolved_at = Some(timestamp(at_ms)),
            // Not yet swept: it went unseen at its horizon.
            SendState::Pending if out.state == pb::SendState::NotSeen as i32 => {
                out.resolved_at = Some(timestamp(record.expires_ms));
            }
            SendState::Pending => {}
            SendState::Failed { reason, message } => {
                let code = Reason::named(&reason)
                    .map(|r| status::failure(r, "", Default::default(), None, &[]).code())
                    .unwrap_or(tonic::Code::Unknown);
                out.error = Some(tonic_types::pb::Status {
                    code: code as i32,
                    message: format!("{reason}: {message}"),
                    details: Vec::new(),
                });
            }
        }
    }
    out
}

/// What `GetMessage` answers of a message of the record.
pub fn message_record_to_pb(record: MessageRecord) -> pb::GetMessageResponse {
    let (direction, sent_by_gateway, request_id) = match &record.event.event.kind {
        EventKind::Sent(m) => (pb::Direction::Outbound, true, m.request_id.clone()),
        EventKind::Echo(_) => (pb::Direction::Outbound, false, String::new()),
        _ => (pb::Direction::Inbound, false, String::new()),
    };
    let status = match (direction, record.read_ms) {
        (pb::Direction::Inbound, _) => pb::MessageStatus::Received,
        (_, Some(_)) => pb::MessageStatus::Read,
        (_, None) => pb::MessageStatus::Sent,
    };
    pb::GetMessageResponse {
        direction: direction as i32,
        status: status as i32,
        event: Some(event_to_pb(record.event)),
        sent_by_gateway,
        echoed_at: record.echoed_ms.map(timestamp),
        read_at: record.read_ms.map(timestamp),
        reactions: record
            .reactions
            .into_iter()
            .map(|r| pb::MessageReaction {
                by: r.by,
                reaction: r.reaction,
                emoji: r.emoji,
            })
            .collect(),
        request_id,
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
