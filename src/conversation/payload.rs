//! Webhook delivery bodies parsed into events: every item becomes events
//! or one counted rejection, and nothing Meta sent is dropped.

use serde_json::Value;

use crate::clock::UnixMs;
use crate::model::event::*;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a webhook delivery: {0}")]
    Shape(&'static str),
}

/// What one delivery holds: its events, and the items refused.
#[derive(Debug, Default, PartialEq)]
pub struct Delivery {
    /// `object`, as sent (`instagram` when absent).
    pub object: String,
    pub events: Vec<InboundEvent>,
    pub rejected: Vec<Rejected>,
}

/// An item refused for its shape; the rest of its delivery is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The entry's id as sent (for the log: bound it before printing).
    pub account_id: String,
    /// A short label, as the metric counts it.
    pub reason: &'static str,
}

/// Parses one delivery body into its events, oldest first (Meta does not
/// promise order), and the items refused for their shape. Every item
/// becomes events or one rejection: unknown kinds are kept raw, and an
/// item with several event keys (say `message` and `reaction`) becomes one
/// event for each.
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(PayloadError::Shape("no entry array"))?;
    let object = match &root["object"] {
        Value::String(o) => o.clone(),
        Value::Null => "instagram".to_owned(),
        other => other.to_string(),
    };
    let mut delivery = Delivery {
        object,
        ..Delivery::default()
    };
    for entry in entries {
        parse_entry(&mut delivery, entry);
    }
    delivery.events.sort_by_key(|e| e.timestamp_ms);
    Ok(delivery)
}

fn parse_entry(delivery: &mut Delivery, entry: &Value) {
    let items = |key: &str| entry[key].as_array().map_or(0, Vec::len);
    let count = (items("messaging") + items("standby") + items("changes")).max(1);
    let account_id = match id_string(&entry["id"]) {
        Ok(id) if !id.is_empty() => id,
        Ok(_) | Err(_) => {
            let rejected = Rejected {
                account_id: raw_string(&entry["id"]),
                reason: "entry_id",
            };
            delivery
                .rejected
                .extend(std::iter::repeat_n(rejected, count));
            return;
        }
    };
    let entry_time = parse_time(&entry["time"]);
    let reject = |reason| Rejected {
        account_id: account_id.clone(),
        reason,
    };
    if delivery.object != "instagram" {
        // Another product's delivery (a Page's, say): kept whole, typed as
        // nothing, never opening an Instagram window.
        let mut event = InboundEvent::new(
            &account_id,
            "",
            &account_id,
            entry_time.unwrap_or(0),
            EventKind::Raw {
                field: "entry".to_owned(),
                json: entry.clone(),
            },
        );
        event.object = Some(delivery.object.clone());
        delivery.events.push(event);
        return;
    }
    for (key, standby) in [("messaging", false), ("standby", true)] {
        for item in entry[key].as_array().into_iter().flatten() {
            match parse_messaging(&account_id, entry_time, item, standby) {
                Ok(events) => delivery.events.extend(events),
                Err(reason) => delivery.rejected.push(reject(reason)),
            }
        }
    }
    for change in entry["changes"].as_array().into_iter().flatten() {
        match parse_change(&account_id, entry_time, change) {
            Ok(events) => delivery.events.extend(events),
            Err(reason) => delivery.rejected.push(reject(reason)),
        }
    }
    // Whatever else the entry carries (a key Meta adds, or an item list
    // that is not a list) is kept beside its id and time, never dropped.
    let modeled = |key: &str| match key {
        "id" | "time" => true,
        "messaging" | "standby" | "changes" => entry[key].is_array(),
        _ => false,
    };
    let Some(fields) = entry.as_object() else {
        return;
    };
    if fields.keys().any(|k| !modeled(k)) {
        let kept: serde_json::Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !modeled(k) || matches!(k.as_str(), "id" | "time"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        delivery.events.push(InboundEvent::new(
            &account_id,
            "",
            &account_id,
            entry_time.unwrap_or(0),
            EventKind::Raw {
                field: "entry".to_owned(),
                json: Value::Object(kept),
            },
        ));
    }
}

/// `changes[]`: comments, live comments, mentions and the like, kept raw
/// (their times are in seconds); the dashboard's test `messages`, typed.
fn parse_change(
    account_id: &str,
    entry_time: Option<UnixMs>,
    change: &Value,
) -> Result<Vec<InboundEvent>, &'static str> {
    if !change.is_object() {
        return Err("not_an_object");
    }
    let value = &change["value"];
    // Meta's dashboard test button sends a message inside `changes[]`:
    // typed like the real thing (and kept whole beside it).
    if change["field"] == "messages" && value.is_object() {
        let mut events = parse_messaging(account_id, entry_time, value, false)?;
        for e in &mut events {
            e.raw = Some(change.clone());
        }
        return Ok(events);
    }
    let sender = id_string(&value["from"]["id"])?;
    let field = match &change["field"] {
        Value::String(f) if f.len() <= MAX_ID_BYTES => f.clone(),
        Value::Null => "changes".to_owned(),
        _ => return Err("field"),
    };
    let (timestamp_ms, original) = event_time(&value["timestamp"], entry_time);
    let mut event = InboundEvent::new(
        account_id,
        &sender,
        account_id,
        timestamp_ms,
        EventKind::Raw {
            field,
            json: change.clone(),
        },
    );
    event.original_timestamp_ms = original;
    Ok(vec![event])
}

fn parse_messaging(
    account_id: &str,
    entry_time: Option<UnixMs>,
    item: &Value,
    standby: bool,
) -> Result<Vec<InboundEvent>, &'static str> {
    if !item.is_object() {
        return Err("not_an_object");
    }
    let sender = id_string(&item["sender"]["id"])?;
    let recipient = id_string(&item["recipient"]["id"])?;
    let (timestamp_ms, original) = event_time(&item["timestamp"], entry_time);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let object = |key: &str| item.get(key).filter(|v| v.is_object());
    let mut kinds = Vec::new();
    if let Some(m) = object("message") {
        let story = &m["reply_to"]["story"];
        let message = MessageEvent {
            mid: text(&m["mid"]),
            text: text(&m["text"]),
            attachments: m["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let payload = &a["payload"];
                    // A shared story (`ig_story`) names its link
                    // `story_media_url`.
                    let url = match payload["url"].as_str() {
                        Some(url) => url.to_owned(),
                        None => text(&payload["story_media_url"]),
                    };
                    Attachment {
                        kind: text(&a["type"]),
                        url,
                        title: text(&payload["title"]),
                        reel_video_id: id_string(&payload["reel_video_id"]).unwrap_or_default(),
                        ig_post_media_id: id_string(&payload["ig_post_media_id"])
                            .unwrap_or_default(),
                    }
                })
                .collect(),
            quick_reply_payload: text(&m["quick_reply"]["payload"]),
            reply_to_mid: text(&m["reply_to"]["mid"]),
            referral: m.get("referral").cloned(),
            deleted: m["is_deleted"].as_bool().unwrap_or(false),
            reply_to_story: story.is_object().then(|| StoryRef {
                id: id_string(&story["id"]).unwrap_or_default(),
                url: text(&story["url"]),
            }),
            unsupported: m["is_unsupported"].as_bool().unwrap_or(false),
        };
        kinds.push(if m["is_echo"].as_bool().unwrap_or(false) {
            EventKind::Echo(message)
        } else {
            EventKind::Message(message)
        });
    }
    if let Some(r) = object("reaction") {
        kinds.push(EventKind::Reaction {
            mid: text(&r["mid"]),
            action: text(&r["action"]),
            reaction: text(&r["reaction"]),
            emoji: text(&r["emoji"]),
        });
    }
    if let Some(p) = object("postback") {
        kinds.push(EventKind::Postback {
            mid: text(&p["mid"]),
            title: text(&p["title"]),
            payload: text(&p["payload"]),
        });
    }
    if let Some(r) = object("read") {
        kinds.push(EventKind::Read {
            mid: text(&r["mid"]),
        });
    }
    if let Some(r) = object("referral") {
        kinds.push(EventKind::Referral {
            referral: r.clone(),
        });
    }
    if let Some(e) = object("message_edit") {
        kinds.push(EventKind::Edit {
            mid: text(&e["mid"]),
            text: text(&e["text"]),
            // A number, or (Meta's examples, some captures) a string.
            num_edit: match &e["num_edit"] {
                Value::String(n) => n.trim().parse().unwrap_or_default(),
                n => n.as_i64().unwrap_or_default(),
            },
        });
    }
    if kinds.is_empty() {
        let field = if standby { "standby" } else { "messaging" };
        kinds.push(EventKind::Raw {
            field: field.to_owned(),
            json: item.clone(),
        });
    }
    for kind in &kinds {
        if !kind.mids().iter().all(|mid| mid_shaped(mid)) {
            return Err("mid");
        }
    }
    let raw_only = matches!(kinds.as_slice(), [EventKind::Raw { .. }]);
    Ok(kinds
        .into_iter()
        .map(|kind| {
            let mut event = InboundEvent::new(account_id, &sender, &recipient, timestamp_ms, kind);
            event.original_timestamp_ms = original;
            event.standby = standby;
            // A raw event is its item already.
            event.raw = (!raw_only).then(|| item.clone());
            event
        })
        .collect())
}

/// An event's time: its own if sane, else the entry's (when Meta sent
/// the delivery), else unknown (0: the inbox dates it on arrival). The
/// time as delivered is kept when it was a number that was not used.
fn event_time(delivered: &Value, entry_time: Option<UnixMs>) -> (UnixMs, Option<UnixMs>) {
    match parse_time(delivered) {
        Some(t) => (t, None),
        None => (entry_time.unwrap_or(0), delivered.as_i64()),
    }
}

/// A time as Meta sends one: milliseconds or seconds, as a number or a
/// numeric string, or an RFC 3339 string. `None` for anything else and
/// for times before 2010.
pub fn parse_time(v: &Value) -> Option<UnixMs> {
    let ms = match v {
        Value::Number(n) => seconds_or_ms(
            n.as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))?,
        ),
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(n) => seconds_or_ms(n),
                Err(_) => rfc3339_ms(s)?,
            }
        }
        _ => return None,
    };
    (ms >= EARLIEST_MS).then_some(ms)
}

/// `2021-08-11T04:06:17Z`, also with Graph's `+0000` or `+00:00`.
fn rfc3339_ms(s: &str) -> Option<UnixMs> {
    let utc = s
        .strip_suffix("+0000")
        .or_else(|| s.strip_suffix("+00:00"))
        .map(|t| format!("{t}Z"));
    let time = humantime::parse_rfc3339_weak(utc.as_deref().unwrap_or(s)).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// Ids arrive as strings, and sometimes as numbers; absent is empty. Any
/// other shape, or one that is not digits, is refused.
fn id_string(v: &Value) -> Result<String, &'static str> {
    let id = match v {
        Value::Null => return Ok(String::new()),
        Value::String(s) => s.as_str(),
        Value::Number(n) if n.is_u64() => return Ok(n.to_string()),
        _ => return Err("id"),
    };
    if id.is_empty() || (id.len() <= MAX_ID_BYTES && id.bytes().all(|b| b.is_ascii_digit())) {
        Ok(id.to_owned())
    } else {
        Err("id")
    }
}

/// What a refused id looked like, for the log (bounded there).
fn raw_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Printable ASCII (no spaces, no controls, no NUL), of a sane length.
fn mid_shaped(mid: &str) -> bool {
    mid.len() <= MAX_MID_BYTES && mid.bytes().all(|b| b.is_ascii_graphic())
}

/// Some payloads carry seconds, messaging carries milliseconds: anything
/// under 10^11 (March 1973 in milliseconds) is seconds.
fn seconds_or_ms(t: i64) -> i64 {
    // Saturating: a hostile value must not overflow.
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

    const ACCOUNT: &str = "17841400000000001";
    /// 2023-11-14T22:13:20Z.
    const T: i64 = 1_700_000_000_000;

    fn delivery(items: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "object": "instagram",
            "entry": [{"id": ACCOUNT, "time": T, "messaging": items}]
        }))
        .unwrap()
    }

    fn events(body: &[u8]) -> Vec<InboundEvent> {
        let parsed = parse_delivery(body).unwrap();
        assert_eq!(parsed.rejected, []);
        parsed.events
    }

    #[test]
    fn every_known_kind_parses_and_unknown_kinds_stay_raw() {
        let body = delivery(json!([
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+8,
             "message":{"mid":"m1","text":"hi","quick_reply":{"payload":"Q"},"reply_to":{"mid":"m0"},
                        "attachments":[{"type":"image","payload":{"url":"https://x/y.jpg"}}]}},
            {"sender":{"id":ACCOUNT},"recipient":{"id":"1"},"timestamp":T+7,
             "message":{"mid":"m2","text":"ours","is_echo":true}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+6,
             "reaction":{"mid":"m2","action":"react","reaction":"love","emoji":"❤"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+5,
             "postback":{"mid":"p1","title":"Yes","payload":"YES"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+4,"read":{"mid":"m2"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+3,"referral":{"ref":"ad","source":"ADS"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+2,
             "message_edit":{"mid":"m1","text":"hey","num_edit":1}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+1,"something_new":{"x":1}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+9,"message":{"mid":"m1","is_deleted":true}}
        ]));
        let events = events(&body);
        let stamps: Vec<i64> = events.iter().map(|e| e.timestamp_ms - T).collect();
        assert_eq!(stamps, [1, 2, 3, 4, 5, 6, 7, 8, 9], "sorted by timestamp");
        assert!(
            matches!(&events[0].kind, EventKind::Raw { field, json } if field == "messaging" && json["something_new"]["x"] == 1)
        );
        assert_eq!(events[0].raw, None, "a raw event is its item already");
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
        assert_eq!(events[7].raw.as_ref().unwrap()["message"]["mid"], "m1");
        assert!(matches!(&events[8].kind, EventKind::Message(m) if m.deleted));
    }

    #[test]
    fn only_user_initiated_events_open_the_window() {
        let body = delivery(json!([
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+1,"message":{"mid":"m1","text":"hi"}},
            {"sender":{"id":ACCOUNT},"recipient":{"id":"1"},"timestamp":T+2,"message":{"mid":"m2","text":"x","is_echo":true}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+3,"read":{"mid":"m2"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+4,"postback":{"mid":"p","payload":"P"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+5,"reaction":{"mid":"m2","action":"react"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+6,"referral":{"ref":"r"}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+7,"message":{"mid":"m1","is_deleted":true}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+8,"message_edit":{"mid":"m1","text":"y","num_edit":1}}
        ]));
        let opens: Vec<bool> = events(&body)
            .iter()
            .map(InboundEvent::opens_window)
            .collect();
        assert_eq!(opens, [true, false, false, true, true, true, false, false]);
    }

    #[test]
    fn redeliveries_share_a_key_even_with_keys_reordered() {
        let a = br#"{"entry":[{"id":"9","time":1700000000000,"messaging":[{"sender":{"id":"1"},"recipient":{"id":"9"},"timestamp":1700000000005,"read":{"mid":"m"}}]}]}"#;
        let b = br#"{"entry":[{"time":1700000000999,"id":"9","messaging":[{"read":{"mid":"m"},"timestamp":1700000000005,"recipient":{"id":"9"},"sender":{"id":"1"}}]}]}"#;
        let ka = events(a)[0].dedup_key();
        assert_eq!(ka, events(b)[0].dedup_key(), "entry.time is not the event");
        assert!(ka.starts_with("9:sha256:"));
        let m = delivery(
            json!([{"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T,"message":{"mid":"m1","text":"hi"}}]),
        );
        assert_eq!(events(&m)[0].dedup_key(), "17841400000000001:message:m1");
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
        assert_eq!(events(b"{\"entry\":[]}"), vec![]);
    }

    #[test]
    fn standby_items_are_events_marked_standby_that_open_the_window() {
        let body = serde_json::to_vec(
            &json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":T,
            "standby":[{"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T,
                        "message":{"mid":"s1","text":"while the inbox app held it"}},
                       {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+1,
                        "postback":{"mid":"s2","title":"Yes"}}]}]}),
        )
        .unwrap();
        let events = events(&body);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.standby && e.opens_window()));
        assert!(
            matches!(&events[0].kind, EventKind::Message(m) if m.text == "while the inbox app held it")
        );
    }

    #[test]
    fn an_item_with_several_event_keys_is_one_event_for_each() {
        let body = delivery(
            json!([{"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T,
            "message":{"mid":"m1","text":"hi"},
            "reaction":{"mid":"m0","action":"react","reaction":"love"},
            "read":{"mid":"m0"}}]),
        );
        let events = events(&body);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
        assert_eq!(kinds, ["message", "reaction", "read"]);
        let keys: std::collections::HashSet<String> =
            events.iter().map(InboundEvent::dedup_key).collect();
        assert_eq!(keys.len(), 3, "each is its own event, none a duplicate");
    }

    #[test]
    fn times_in_seconds_strings_and_absurd_values_never_date_an_event_1970() {
        let at = |item_time: Value, entry_time: Value| {
            let body = serde_json::to_vec(
                &json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":entry_time,
                "messaging":[{"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":item_time,
                              "message":{"mid":"m","text":"x"}}]}]}),
            )
            .unwrap();
            let e = events(&body).remove(0);
            (e.timestamp_ms, e.original_timestamp_ms)
        };
        assert_eq!(at(json!(T), json!(0)), (T, None));
        assert_eq!(
            at(json!("1628654377650"), json!(T)),
            (1_628_654_377_650, None)
        );
        assert_eq!(
            at(json!(1_628_654_377), json!(T)),
            (1_628_654_377_000, None),
            "seconds"
        );
        assert_eq!(
            at(json!("2021-08-11T04:06:17+0000"), json!(T)),
            (1_628_654_777_000, None)
        );
        assert_eq!(
            at(json!("2021-08-11T04:06:17Z"), json!(T)),
            (1_628_654_777_000, None)
        );
        // Meta's dashboard test: absurd; the entry's time stands in.
        assert_eq!(at(json!(233_445_667), json!(T)), (T, Some(233_445_667)));
        assert_eq!(
            at(json!("soon"), json!(T / 1000)),
            (T, None),
            "entry.time in seconds"
        );
        // Nothing sane at all: 0, which the inbox replaces by the arrival.
        assert_eq!(at(json!(-5), json!(233_445_667)), (0, Some(-5)));
        assert_eq!(at(json!(null), json!(null)), (0, None));
    }

    #[test]
    fn changes_are_dated_by_their_entry_time_in_seconds() {
        let body = br#"{"object":"instagram","entry":[{"id":"17841400000000001","time":1700000000,
            "changes":[{"field":"comments","value":{"id":"17865799348089039","text":"nice",
              "from":{"id":"1","username":"jane"},"media":{"id":"17887498072083520","media_product_type":"FEED"}}}]}]}"#;
        let e = events(body).remove(0);
        assert_eq!(e.timestamp_ms, T);
        assert!(
            matches!(&e.kind, EventKind::Raw { field, json } if field == "comments" && json["value"]["text"] == "nice")
        );
        assert_eq!(e.sender_id, "1");
    }

    #[test]
    fn reel_shares_story_replies_and_unsupported_messages_are_typed() {
        let body = delivery(json!([
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T,
             "message":{"mid":"m1","attachments":[{"type":"ig_reel","payload":{"url":"https://lookaside/r",
                "title":"A reel","reel_video_id":"18035285591123456"}},
                {"type":"ig_post","payload":{"url":"https://lookaside/p","title":"A post","ig_post_media_id":"17900000000000001"}}]}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+1,
             "message":{"mid":"m2","text":"lovely","reply_to":{"story":{"id":"18000000000000002","url":"https://cdn/story"}}}},
            {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T+2,
             "message":{"mid":"m3","is_unsupported":true}}
        ]));
        let events = events(&body);
        let EventKind::Message(reel) = &events[0].kind else {
            panic!()
        };
        assert_eq!(
            (
                reel.attachments[0].title.as_str(),
                reel.attachments[0].reel_video_id.as_str()
            ),
            ("A reel", "18035285591123456")
        );
        assert_eq!(reel.attachments[1].ig_post_media_id, "17900000000000001");
        let EventKind::Message(story) = &events[1].kind else {
            panic!()
        };
        assert_eq!(
            story.reply_to_story,
            Some(StoryRef {
                id: "18000000000000002".into(),
                url: "https://cdn/story".into()
            })
        );
        assert!(matches!(&events[2].kind, EventKind::Message(m) if m.unsupported));
    }

    #[test]
    fn another_object_is_kept_whole_named_and_never_opens_a_window() {
        let body = br#"{"object":"page","entry":[{"id":"106000000000001","time":1700000000000,
            "messaging":[{"sender":{"id":"1"},"recipient":{"id":"106000000000001"},"timestamp":1700000000000,"message":{"mid":"m.x","text":"hi"}}]}]}"#;
        let parsed = parse_delivery(body).unwrap();
        assert_eq!(parsed.object, "page");
        let e = &parsed.events[0];
        assert_eq!(e.object.as_deref(), Some("page"));
        assert!(
            matches!(&e.kind, EventKind::Raw { field, json } if field == "entry" && json["messaging"][0]["message"]["text"] == "hi")
        );
        assert!(!e.opens_window());
    }

    #[test]
    fn items_with_ids_that_are_not_ids_are_refused_and_the_rest_kept() {
        let good = json!({"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"timestamp":T,"message":{"mid":"ok","text":"x"}});
        let body = serde_json::to_vec(&json!({"object":"instagram","entry":[
            {"id":"shop","time":T,"messaging":[good.clone(), good.clone()]},
            {"id":"1".repeat(65),"time":T,"messaging":[good.clone()]},
            {"id":ACCOUNT,"time":T,"messaging":[
                good,
                {"sender":{"id":"1\u{0}"},"recipient":{"id":ACCOUNT},"message":{"mid":"m"}},
                {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"message":{"mid":"m\u{0}"}},
                {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"message":{"mid":"m".repeat(513)}},
                {"sender":{"id":"1"},"recipient":{"id":ACCOUNT},"read":{"mid":"a b"}},
                "not an object"
            ]}
        ]}))
        .unwrap();
        let parsed = parse_delivery(&body).unwrap();
        assert_eq!(parsed.events.len(), 1);
        let reasons: Vec<&str> = parsed.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                "entry_id",
                "entry_id",
                "entry_id",
                "id",
                "mid",
                "mid",
                "mid",
                "not_an_object"
            ]
        );
    }

    #[test]
    fn keys_of_an_entry_that_are_not_modeled_are_kept_beside_its_id() {
        let body = serde_json::to_vec(&json!({
            "object": "instagram",
            "entry": [
                {"id": ACCOUNT, "time": T, "hop_context": [{"app_id": 1}],
                 "messaging": [{"sender": {"id": "1"}, "recipient": {"id": ACCOUNT},
                                "timestamp": T, "message": {"mid": "m1", "text": "hi"}}]},
                {"id": ACCOUNT, "time": T, "messaging": {"not": "a list"}}
            ]
        }))
        .unwrap();
        let parsed = events(&body);
        let raw: Vec<&Value> = parsed
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Raw { field, json } if field == "entry" => Some(json),
                _ => None,
            })
            .collect();
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert_eq!(
            raw,
            [
                &json!({"id": ACCOUNT, "time": T, "hop_context": [{"app_id": 1}]}),
                &json!({"id": ACCOUNT, "time": T, "messaging": {"not": "a list"}})
            ]
        );
        // An entry with nothing beyond what is modeled adds no such event.
        assert_eq!(events(&delivery(json!([]))), []);
    }
}
