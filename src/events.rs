//! Inbound events: what Instagram's webhook deliveries carry, parsed into
//! typed values. An event of a kind we do not know is kept as raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Unix time in milliseconds, as Instagram's webhooks give it.
pub type UnixMs = i64;

/// One event from a webhook delivery, with the account it arrived for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// `entry[].id`: the professional account the event belongs to.
    pub account_id: String,
    /// Who acted: the user's IGSID, or our account for an echo.
    pub sender_id: String,
    pub recipient_id: String,
    /// When it happened, by Instagram's clock (or, if that was absurd, when
    /// it arrived: see `original_timestamp_ms`).
    pub timestamp_ms: UnixMs,
    pub kind: EventKind,
    /// The time as delivered, kept when it was replaced by the arrival time
    /// (more than a day ahead, or beyond what a protobuf Timestamp holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp_ms: Option<UnixMs>,
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
    /// Anything else, exactly as delivered; `field` says where it came from
    /// (`messaging` or a `changes[].field` such as `comments`).
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub kind: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a webhook delivery: {0}")]
    Shape(&'static str),
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
        }
    }
}

impl InboundEvent {
    /// Whether this event opens (or renews) the user's messaging window:
    /// a message, a postback, a reaction or a referral from the user.
    pub fn opens_window(&self) -> bool {
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
            EventKind::Echo(_) => &self.recipient_id,
            _ => &self.sender_id,
        }
    }

    /// Meta redelivers; the same event always yields the same key. Events
    /// with their own message id use it, the rest a hash of their content.
    pub fn dedup_key(&self) -> String {
        let a = &self.account_id;
        match &self.kind {
            EventKind::Message(m) if !m.mid.is_empty() => {
                let tag = if m.deleted { "deleted" } else { "message" };
                format!("{a}:{tag}:{}", m.mid)
            }
            EventKind::Echo(m) if !m.mid.is_empty() => format!("{a}:echo:{}", m.mid),
            EventKind::Postback { mid, .. } if !mid.is_empty() => format!("{a}:postback:{mid}"),
            EventKind::Edit { mid, num_edit, .. } if !mid.is_empty() => {
                format!("{a}:edit:{mid}:{num_edit}")
            }
            _ => {
                // serde_json's map is sorted, so key order in the delivery
                // does not change the hash; and the time is the one
                // delivered, so a redelivery capped at another moment
                // still matches.
                let canonical = match self.original_timestamp_ms {
                    Some(original) => serde_json::to_vec(&InboundEvent {
                        timestamp_ms: original,
                        original_timestamp_ms: None,
                        ..self.clone()
                    }),
                    None => serde_json::to_vec(self),
                }
                .unwrap_or_default();
                let digest = Sha256::digest(&canonical);
                format!("{a}:sha256:{}", hex::encode(digest))
            }
        }
    }
}

/// Parses one delivery body into its events, oldest first (Meta does not
/// promise order). Entries and items that are not objects are skipped; items
/// of unknown kinds are kept raw.
pub fn parse_delivery(body: &[u8]) -> Result<Vec<InboundEvent>, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(PayloadError::Shape("no entry array"))?;
    let mut events = Vec::new();
    for entry in entries {
        let account_id = id_string(&entry["id"]);
        let entry_time = entry["time"].as_i64().unwrap_or_default();
        for item in entry["messaging"].as_array().into_iter().flatten() {
            if item.is_object() {
                events.push(parse_messaging(&account_id, entry_time, item));
            }
        }
        for change in entry["changes"].as_array().into_iter().flatten() {
            let value = &change["value"];
            events.push(InboundEvent {
                account_id: account_id.clone(),
                sender_id: id_string(&value["from"]["id"]),
                recipient_id: account_id.clone(),
                timestamp_ms: value["timestamp"]
                    .as_i64()
                    .map(seconds_or_ms)
                    .unwrap_or(entry_time),
                original_timestamp_ms: None,
                kind: EventKind::Raw {
                    field: change["field"].as_str().unwrap_or("changes").to_owned(),
                    json: change.clone(),
                },
            });
        }
    }
    events.sort_by_key(|e| e.timestamp_ms);
    Ok(events)
}

fn parse_messaging(account_id: &str, entry_time: UnixMs, item: &Value) -> InboundEvent {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let kind = if let Some(m) = item.get("message").filter(|m| m.is_object()) {
        let message = MessageEvent {
            mid: text(&m["mid"]),
            text: text(&m["text"]),
            attachments: m["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| Attachment {
                    kind: text(&a["type"]),
                    url: text(&a["payload"]["url"]),
                })
                .collect(),
            quick_reply_payload: text(&m["quick_reply"]["payload"]),
            reply_to_mid: text(&m["reply_to"]["mid"]),
            referral: m.get("referral").cloned(),
            deleted: m["is_deleted"].as_bool().unwrap_or(false),
        };
        if m["is_echo"].as_bool().unwrap_or(false) {
            EventKind::Echo(message)
        } else {
            EventKind::Message(message)
        }
    } else if let Some(r) = item.get("reaction").filter(|r| r.is_object()) {
        EventKind::Reaction {
            mid: text(&r["mid"]),
            action: text(&r["action"]),
            reaction: text(&r["reaction"]),
            emoji: text(&r["emoji"]),
        }
    } else if let Some(p) = item.get("postback").filter(|p| p.is_object()) {
        EventKind::Postback {
            mid: text(&p["mid"]),
            title: text(&p["title"]),
            payload: text(&p["payload"]),
        }
    } else if let Some(r) = item.get("read").filter(|r| r.is_object()) {
        EventKind::Read {
            mid: text(&r["mid"]),
        }
    } else if let Some(r) = item.get("referral").filter(|r| r.is_object()) {
        EventKind::Referral {
            referral: r.clone(),
        }
    } else if let Some(e) = item.get("message_edit").filter(|e| e.is_object()) {
        EventKind::Edit {
            mid: text(&e["mid"]),
            text: text(&e["text"]),
            num_edit: e["num_edit"].as_i64().unwrap_or_default(),
        }
    } else {
        EventKind::Raw {
            field: "messaging".to_owned(),
            json: item.clone(),
        }
    };
    InboundEvent {
        account_id: account_id.to_owned(),
        sender_id: id_string(&item["sender"]["id"]),
        recipient_id: id_string(&item["recipient"]["id"]),
        timestamp_ms: item["timestamp"].as_i64().unwrap_or(entry_time),
        kind,
        original_timestamp_ms: None,
    }
}

/// Ids arrive as strings, and sometimes as numbers.
fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Some change payloads carry seconds; messaging carries milliseconds.
fn seconds_or_ms(t: i64) -> i64 {
    // Saturating: a hostile value must not overflow (the inbox caps it).
    if t < 100_000_000_000 {
        t.saturating_mul(1000)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(items: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "object": "instagram",
            "entry": [{"id": "17841400000000001", "time": 1_700_000_000_000_i64, "messaging": items}]
        }))
        .unwrap()
    }

    #[test]
    fn every_known_kind_parses_and_unknown_kinds_stay_raw() {
        let body = delivery(json!([
            {"sender":{"id":"1"},"recipient":{"id":"17841400000000001"},"timestamp":8,
             "message":{"mid":"m1","text":"hi","quick_reply":{"payload":"Q"},"reply_to":{"mid":"m0"},
                        "attachments":[{"type":"image","payload":{"url":"https://x/y.jpg"}}]}},
            {"sender":{"id":"17841400000000001"},"recipient":{"id":"1"},"timestamp":7,
             "message":{"mid":"m2","text":"ours","is_echo":true}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":6,
             "reaction":{"mid":"m2","action":"react","reaction":"love","emoji":"❤"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":5,
             "postback":{"mid":"p1","title":"Yes","payload":"YES"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":4,"read":{"mid":"m2"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":3,"referral":{"ref":"ad","source":"ADS"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":2,
             "message_edit":{"mid":"m1","text":"hey","num_edit":1}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":1,"something_new":{"x":1}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":9,"message":{"mid":"m1","is_deleted":true}}
        ]));
        let events = parse_delivery(&body).unwrap();
        let stamps: Vec<i64> = events.iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(stamps, [1, 2, 3, 4, 5, 6, 7, 8, 9], "sorted by timestamp");
        assert!(
            matches!(&events[0].kind, EventKind::Raw { field, json } if field == "messaging" && json["something_new"]["x"] == 1)
        );
        assert!(
            matches!(&events[1].kind, EventKind::Edit { mid, text, num_edit: 1 } if mid == "m1" && text == "hey")
        );
        assert!(
            matches!(&events[2].kind, EventKind::Referral { referral } if referral["ref"] == "ad")
        );
        assert!(matches!(&events[3].kind, EventKind::Read { mid } if mid == "m2"));
        assert!(matches!(&events[4].kind, EventKind::Postback { payload, .. } if payload == "YES"));
        assert!(
            matches!(&events[5].kind, EventKind::Reaction { action, emoji, .. } if action == "react" && emoji == "❤")
        );
        let EventKind::Echo(echo) = &events[6].kind else {
            panic!("{:?}", events[6])
        };
        assert_eq!(echo.text, "ours");
        assert_eq!(events[6].user_id(), "1");
        let EventKind::Message(m) = &events[7].kind else {
            panic!()
        };
        assert_eq!(
            (
                m.text.as_str(),
                m.quick_reply_payload.as_str(),
                m.reply_to_mid.as_str()
            ),
            ("hi", "Q", "m0")
        );
        assert_eq!(m.attachments[0].url, "https://x/y.jpg");
        assert!(matches!(&events[8].kind, EventKind::Message(m) if m.deleted));
    }

    #[test]
    fn only_user_initiated_events_open_the_window() {
        let body = delivery(json!([
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":1,"message":{"mid":"m1","text":"hi"}},
            {"sender":{"id":"a"},"recipient":{"id":"1"},"timestamp":2,"message":{"mid":"m2","text":"x","is_echo":true}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":3,"read":{"mid":"m2"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":4,"postback":{"mid":"p","payload":"P"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":5,"reaction":{"mid":"m2","action":"react"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":6,"referral":{"ref":"r"}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":7,"message":{"mid":"m1","is_deleted":true}},
            {"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":8,"message_edit":{"mid":"m1","text":"y","num_edit":1}}
        ]));
        let opens: Vec<bool> = parse_delivery(&body)
            .unwrap()
            .iter()
            .map(InboundEvent::opens_window)
            .collect();
        assert_eq!(opens, [true, false, false, true, true, true, false, false]);
    }

    #[test]
    fn redeliveries_share_a_key_even_with_keys_reordered() {
        let a = br#"{"entry":[{"id":"9","time":1,"messaging":[{"sender":{"id":"1"},"recipient":{"id":"9"},"timestamp":5,"read":{"mid":"m"}}]}]}"#;
        let b = br#"{"entry":[{"time":1,"id":"9","messaging":[{"read":{"mid":"m"},"timestamp":5,"recipient":{"id":"9"},"sender":{"id":"1"}}]}]}"#;
        let ka = parse_delivery(a).unwrap()[0].dedup_key();
        assert_eq!(ka, parse_delivery(b).unwrap()[0].dedup_key());
        assert!(ka.starts_with("9:sha256:"));
        let m = delivery(
            json!([{"sender":{"id":"1"},"recipient":{"id":"a"},"timestamp":1,"message":{"mid":"m1","text":"hi"}}]),
        );
        assert_eq!(
            parse_delivery(&m).unwrap()[0].dedup_key(),
            "17841400000000001:message:m1"
        );
    }

    #[test]
    fn bodies_that_are_not_deliveries_are_refused() {
        assert!(matches!(
            parse_delivery(b"not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            parse_delivery(b"{\"object\":\"instagram\"}"),
            Err(PayloadError::Shape("no entry array"))
        );
        assert_eq!(parse_delivery(b"{\"entry\":[]}"), Ok(vec![]));
    }
}
