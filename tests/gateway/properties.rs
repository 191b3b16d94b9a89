//! The parsers' invariants (`invariants.rs`) over generated input: webhook
//! bodies shaped like Meta's, with every field drawn from the sane, the odd
//! and the hostile; the real payloads in `tests/fixtures/webhooks`, whole and
//! with bytes changed; and `SendRequest`s, decoded and as raw wire bytes.
//! The fuzz targets in `fuzz/` check the same invariants for longer.

use crate::support::invariants;
use messenger_gateway::edge::grpc::pb;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

/// An id: digits as Meta sends them, a number, or something else.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[0-9]{1,20}".prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => "[0-9]{60,70}".prop_map(Value::from),
        1 => ".{0,8}".prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

/// A time: milliseconds, seconds, strings of either, ISO, absurd.
fn time() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (1_500_000_000_000i64..1_900_000_000_000).prop_map(Value::from),
        2 => (1_500_000_000i64..1_900_000_000).prop_map(Value::from),
        1 => (0i64..1_000_000_000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => (1_500_000_000_000i64..1_900_000_000_000).prop_map(|t| Value::from(t.to_string())),
        1 => Just(Value::from("2024-03-01T12:00:00+00:00")),
        1 => ".{0,12}".prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

/// A message id: Meta's shape, or one with control characters or too long.
fn mid() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "(mid|aWdf)[A-Za-z0-9._=-]{4,40}".prop_map(Value::from),
        1 => ".{0,6}".prop_map(Value::from),
        1 => (500usize..530).prop_map(|n| Value::from("m".repeat(n))),
        1 => Just(Value::Null),
    ]
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,40}".prop_map(Value::from),
        Just(Value::Null),
        any::<i32>().prop_map(Value::from)
    ]
}

/// Any JSON a little way deep, for keys the gateway does not model.
fn anything() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One `messaging[]` or `standby[]` item: some of the keys Meta sends.
fn item() -> impl Strategy<Value = Value> {
    let message = (mid(), text(), vec((".{0,8}", ".{0,30}", text()), 0..3), any::<[bool; 3]>(), mid())
        .prop_map(|(mid, text, attachments, [echo, deleted, unsupported], reply)| {
            let attachments: Vec<Value> = attachments
                .into_iter()
                .map(|(kind, url, title)| json!({"type": kind, "payload": {"url": url, "title": title, "reel_video_id": "17999"}}))
                .collect();
            json!({"mid": mid, "text": text, "attachments": attachments, "is_echo": echo,
                   "is_deleted": deleted, "is_unsupported": unsupported,
                   "reply_to": {"mid": reply, "story": {"id": "1", "url": "https://x/s"}}})
        });
    let fields = (
        id(),
        id(),
        time(),
        proptest::option::of(message),
        proptest::option::of((mid(), text())),
        proptest::option::of((mid(), text(), text())),
        proptest::option::of(mid()),
        proptest::option::of((
            mid(),
            text(),
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                ".{0,3}".prop_map(Value::from)
            ],
        )),
        proptest::option::of(anything()),
    );
    prop_oneof![
        8 => fields.prop_map(|(sender, recipient, timestamp, message, reaction, postback, read, edit, other)| {
            let mut item = json!({"sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": timestamp});
            let put = |item: &mut Value, key: &str, value: Value| {
                item.as_object_mut().unwrap().insert(key.to_owned(), value);
            };
            if let Some(m) = message { put(&mut item, "message", m) }
            if let Some((mid, emoji)) = reaction {
                put(&mut item, "reaction", json!({"mid": mid, "action": "react", "emoji": emoji}))
            }
            if let Some((mid, title, payload)) = postback {
                put(&mut item, "postback", json!({"mid": mid, "title": title, "payload": payload}))
            }
            if let Some(mid) = read { put(&mut item, "read", json!({"mid": mid})) }
            if let Some((mid, text, num)) = edit {
                put(&mut item, "message_edit", json!({"mid": mid, "text": text, "num_edit": num}))
            }
            if let Some(other) = other { put(&mut item, "something_new", other) }
            item
        }),
        1 => anything(),
    ]
}

/// One `changes[]` item.
fn change() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("comments".to_owned()),
            Just("messages".to_owned()),
            Just("mentions".to_owned()),
            Just("live_comments".to_owned()),
            "[a-z_]{0,10}",
        ],
        prop_oneof![item(), anything()],
    )
        .prop_map(|(field, value)| json!({"field": field, "value": value}))
}

fn entry() -> impl Strategy<Value = Value> {
    (
        id(),
        time(),
        vec(item(), 0..4),
        vec(item(), 0..2),
        vec(change(), 0..3),
        proptest::option::of(anything()),
    )
        .prop_map(|(id, time, messaging, standby, changes, other)| {
            let mut entry = json!({"id": id, "time": time});
            let map = entry.as_object_mut().unwrap();
            for (key, items) in [
                ("messaging", messaging),
                ("standby", standby),
                ("changes", changes),
            ] {
                if !items.is_empty() {
                    map.insert(key.to_owned(), Value::from(items));
                }
            }
            if let Some(other) = other {
                map.insert("hop_context".to_owned(), other);
            }
            entry
        })
}

fn delivery() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            6 => Just(Value::from("instagram")),
            1 => Just(Value::from("page")),
            1 => Just(Value::Null),
            1 => any::<i32>().prop_map(Value::from),
        ],
        vec(entry(), 0..4),
    )
        .prop_map(|(object, entries)| json!({"object": object, "entry": entries}))
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    bodies.sort();
    bodies
}

#[test]
fn every_real_payload_keeps_the_parsers_promises() {
    let bodies = fixtures();
    assert!(bodies.len() >= 40, "{} fixtures", bodies.len());
    for body in &bodies {
        invariants::webhook_body(body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn a_generated_delivery_keeps_the_parsers_promises(delivery in delivery()) {
        invariants::webhook_body(&serde_json::to_vec(&delivery).unwrap());
    }

    #[test]
    fn a_real_payload_with_bytes_changed_keeps_the_parsers_promises(
        which in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let bodies = fixtures();
        let mut body = which.get(&bodies).clone();
        for (at, byte, how) in edits {
            let i = at.index(body.len().max(1));
            match how {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i.min(body.len()), byte),
                _ if i < body.len() => drop(body.remove(i)),
                _ => {}
            }
        }
        invariants::webhook_body(&body);
    }
}

fn string(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(valid.to_owned()),
        2 => ".{0,12}",
        1 => "[0-9]{30,70}",
        1 => Just(String::new()),
    ]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("https://example.com/a.png".to_owned()),
        "https://example.com/[a-z\n ]{0,10}",
        ".{0,20}",
        (2_000usize..2_100).prop_map(|n| format!("https://example.com/{}", "a".repeat(n))),
    ]
}

fn send_request() -> impl Strategy<Value = pb::SendRequest> {
    let attachment = (
        0i32..6,
        prop_oneof![
            url().prop_map(pb::attachment::Source::Url),
            string("123").prop_map(pb::attachment::Source::AttachmentId)
        ],
    )
        .prop_map(|(r#type, source)| pb::Attachment {
            r#type,
            source: Some(source),
        });
    let button = (0i32..4, string("Open"), url(), string("BUY")).prop_map(
        |(r#type, title, url, payload)| pb::Button {
            r#type,
            title,
            url,
            payload,
        },
    );
    let element = (
        string("A title"),
        string(""),
        url(),
        url(),
        vec(button, 0..5),
    )
        .prop_map(
            |(title, subtitle, image_url, default_action_url, buttons)| pb::TemplateElement {
                title,
                subtitle,
                image_url,
                default_action_url,
                buttons,
            },
        );
    let quick_reply = (string("Yes"), string("YES"))
        .prop_map(|(title, payload)| pb::QuickReply { title, payload });
    let text = prop_oneof![
        3 => Just(String::new()),
        3 => ".{1,40}",
        1 => (499usize..502).prop_map(|n| "é".repeat(n)),
        1 => (990usize..1010).prop_map(|n| "x".repeat(n)),
    ];
    (
        (
            string("17841400000000001"),
            text,
            string(""),
            vec(attachment, 0..3),
            0i32..3,
            string(""),
        ),
        (
            proptest::option::of(
                vec(element, 0..12).prop_map(|elements| pb::GenericTemplate { elements }),
            ),
            vec(quick_reply, 0..15),
            string(""),
            -1i32..3,
            string("order-1"),
            string(""),
            -1i32..4,
        ),
    )
        .prop_map(
            |(
                (recipient_id, text, comment_id, attachments, sticker, share_post_id),
                (
                    generic_template,
                    quick_replies,
                    reply_to_message_id,
                    tag,
                    request_id,
                    account_id,
                    priority,
                ),
            )| pb::SendRequest {
                recipient_id,
                text,
                comment_id,
                attachments,
                sticker,
                share_post_id,
                generic_template,
                quick_replies,
                reply_to_message_id,
                tag,
                request_id,
                account_id,
                priority,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_generated_send_becomes_a_graph_body_or_at_most_twenty_named_violations(
        request in send_request(),
    ) {
        invariants::send_request(&request);
        invariants::send_request_wire(&request.encode_to_vec());
    }

    #[test]
    fn any_bytes_as_a_send_keep_the_conversions_promises(
        request in send_request(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        noise in vec(any::<u8>(), 0..64),
    ) {
        let mut wire = request.encode_to_vec();
        for (at, byte) in edits {
            let i = at.index(wire.len().max(1));
            if i < wire.len() { wire[i] = byte }
        }
        wire.extend(noise);
        invariants::send_request_wire(&wire);
    }
}
