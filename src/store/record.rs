//! What an event does to the thread record beyond being stored, written
//! once for both backends: each backend asks [`effect`] what an event
//! means, runs the lookups and writes it names in its own SQL, and builds
//! what it answers with the helpers here.

use super::{MessageRecord, ReactionMark, SendRecord, SendState, StoreError, StoredEvent};
use crate::clock::UnixMs;
use crate::model::event::{EventKind, InboundEvent, SentMessage, echo_key, sent_key};

/// What ingesting one event does besides storing it.
#[derive(Debug, PartialEq)]
pub(super) enum Effect {
    /// An echo of `mid`, sent to `user`: joined to this gateway's `sent`
    /// event of `mid` if there is one (then not stored), else it may
    /// settle a pending send with the same content (then stored as that
    /// send's `sent` event), else stored as an echo of a message sent
    /// elsewhere.
    Echo {
        mid: String,
        user: String,
        content_key: Option<String>,
    },
    /// This gateway's message `mid`: already echoed if its echo came first.
    Sent {
        mid: String,
    },
    /// The person read the thread up to `mid`.
    Read {
        user: String,
        mid: String,
    },
    /// A reaction to `mid` by `by`; `None` takes it back.
    React {
        mid: String,
        by: String,
        reaction: Option<(String, String)>,
    },
    None,
}

pub(super) fn effect(event: &InboundEvent) -> Effect {
    if event.object.is_some() {
        return Effect::None;
    }
    match &event.kind {
        EventKind::Echo(m) if !m.mid.is_empty() && !m.deleted => Effect::Echo {
            mid: m.mid.clone(),
            user: event.recipient_id.clone(),
            content_key: m.content_key(),
        },
        EventKind::Sent(m) if !m.mid.is_empty() => Effect::Sent { mid: m.mid.clone() },
        EventKind::Read { mid } if !mid.is_empty() => Effect::Read {
            user: event.sender_id.clone(),
            mid: mid.clone(),
        },
        EventKind::Reaction {
            mid,
            action,
            reaction,
            emoji,
        } if !mid.is_empty() => Effect::React {
            mid: mid.clone(),
            by: event.sender_id.clone(),
            reaction: (action != "unreact").then(|| (reaction.clone(), emoji.clone())),
        },
        EventKind::SentReaction {
            mid,
            action,
            reaction,
            ..
        } if !mid.is_empty() => Effect::React {
            mid: mid.clone(),
            by: event.account_id.clone(),
            reaction: (action != "unreact").then(|| (reaction.clone(), String::new())),
        },
        _ => Effect::None,
    }
}

/// The keys under which an outbound message `mid` may be stored: the
/// gateway's `sent` event first, else an echo.
pub(super) fn outbound_keys(account: &str, mid: &str) -> [String; 2] {
    [sent_key(account, mid), echo_key(account, mid)]
}

/// The `sent` event an echo stands for once it settled `record`: the send
/// as the gateway posted it, with the `mid` and time the echo told, and
/// the echo item as Meta sent it.
pub(super) fn confirmed(echo: InboundEvent, record: &SendRecord, mid: &str) -> InboundEvent {
    InboundEvent {
        kind: EventKind::Sent(SentMessage {
            mid: mid.to_owned(),
            request_id: record.request_id.clone(),
            key_id: record.key_id.clone(),
            priority: record.priority,
            body_json: record.body_json.clone(),
            send_id: record.send_id.clone(),
            confirmed_by_echo: true,
        }),
        ..echo
    }
}

/// The record of a pending send once its echo told `mid`.
pub(super) fn settled(mut record: SendRecord, mid: &str, at_ms: UnixMs) -> SendRecord {
    record.state = SendState::Sent {
        mid: mid.to_owned(),
        at_ms,
    };
    record
}

/// The record of a pending send past its horizon.
pub(super) fn not_seen(mut record: SendRecord, at_ms: UnixMs) -> SendRecord {
    record.state = SendState::NotSeen { at_ms };
    record
}

pub(super) fn encode_send(record: &SendRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn decode_send(body: &str) -> Result<SendRecord, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("send record: {e}")))
}

/// A message's reactions (as kept) after one party's change: each party
/// has at most one reaction to a message.
pub(super) fn react(
    kept: Option<&str>,
    by: &str,
    reaction: &Option<(String, String)>,
) -> Result<String, StoreError> {
    let mut marks = reactions(kept)?;
    marks.retain(|m| m.by != by);
    if let Some((reaction, emoji)) = reaction {
        marks.push(ReactionMark {
            by: by.to_owned(),
            reaction: reaction.clone(),
            emoji: emoji.clone(),
        });
    }
    serde_json::to_string(&marks).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn reactions(kept: Option<&str>) -> Result<Vec<ReactionMark>, StoreError> {
    match kept {
        None | Some("") => Ok(Vec::new()),
        Some(json) => {
            serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("reactions: {e}")))
        }
    }
}

/// What the backends read of a message, assembled.
pub(super) struct MessageRow {
    pub event: StoredEvent,
    pub echoed_ms: Option<UnixMs>,
    pub reactions: Option<String>,
    /// The thread's read mark: the time of the last message read, and when.
    pub read_through_ms: Option<UnixMs>,
    pub read_at_ms: Option<UnixMs>,
}

pub(super) fn message_record(row: MessageRow) -> Result<MessageRecord, StoreError> {
    let outbound = matches!(
        row.event.event.kind,
        EventKind::Sent(_) | EventKind::Echo(_)
    );
    let read = outbound
        && row
            .read_through_ms
            .is_some_and(|through| row.event.event.timestamp_ms <= through);
    Ok(MessageRecord {
        echoed_ms: row.echoed_ms,
        read_ms: if read { row.read_at_ms } else { None },
        reactions: reactions(row.reactions.as_deref())?,
        event: row.event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::MessageEvent;

    #[test]
    fn a_reaction_replaces_the_same_partys_earlier_one_and_unreact_removes_it() {
        let love = Some(("love".to_owned(), "❤".to_owned()));
        let one = react(None, "U", &love).unwrap();
        let two = react(Some(&one), "A", &Some(("like".into(), String::new()))).unwrap();
        let again = react(Some(&two), "U", &Some(("wow".into(), String::new()))).unwrap();
        let by: Vec<_> = reactions(Some(&again))
            .unwrap()
            .into_iter()
            .map(|m| (m.by, m.reaction))
            .collect();
        assert_eq!(
            by,
            [("A".into(), "like".into()), ("U".into(), "wow".into())]
        );
        let gone = react(Some(&again), "U", &None).unwrap();
        assert_eq!(reactions(Some(&gone)).unwrap().len(), 1);
    }

    #[test]
    fn an_unsent_echo_and_a_delivery_of_another_object_change_nothing() {
        let mut echo = InboundEvent::new(
            "A",
            "A",
            "U",
            1,
            EventKind::Echo(MessageEvent {
                mid: "m".into(),
                deleted: true,
                ..Default::default()
            }),
        );
        assert_eq!(effect(&echo), Effect::None);
        echo.kind = EventKind::Echo(MessageEvent {
            mid: "m".into(),
            ..Default::default()
        });
        echo.object = Some("page".into());
        assert_eq!(effect(&echo), Effect::None);
    }
}
