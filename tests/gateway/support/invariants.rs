//! What must hold for any input to the webhook parser and to the
//! conversion of a `Send`: checked on generated input by `properties.rs`
//! and on coverage-guided input by the fuzz targets in `fuzz/`, which
//! include this file. Each check panics on a broken promise.

use messenger_gateway::model::event::{EARLIEST_MS, EventKind};

use messenger_gateway::conversation::payload::parse_delivery;
use messenger_gateway::edge::grpc::{from_pb, pb, status::MAX_VIOLATIONS};
use messenger_gateway::graph::encode_message;
use prost::Message;
use serde_json::Value;

/// Any body, signed or not: no panic. A body that parses accounts for
/// every item it holds (an event that carries the item as sent, or a
/// counted rejection), dates nothing before 2010 (0 means "on arrival"),
/// and names only well-shaped accounts.
pub fn webhook_body(body: &[u8]) {
    let Ok(delivery) = parse_delivery(body) else {
        return;
    };
    let root: Value = serde_json::from_slice(body).expect("a parsed body is JSON");
    let entries = root["entry"].as_array().expect("a parsed body has entries");
    let instagram = delivery.object == "instagram";
    // Every item, as sent, must be found in an event: as its `raw`, or as
    // the JSON of a raw event. What is not found was rejected.
    let mut unaccounted = 0;
    for entry in entries {
        if !instagram {
            unaccounted += 1;
            continue;
        }
        for key in ["messaging", "standby", "changes"] {
            for item in entry[key].as_array().into_iter().flatten() {
                let kept = delivery.events.iter().any(|e| {
                    e.raw.as_ref() == Some(item)
                        || matches!(&e.kind, EventKind::Raw { json, .. } if json == item)
                });
                if !kept {
                    unaccounted += 1;
                }
            }
        }
    }
    if instagram {
        assert!(
            unaccounted <= delivery.rejected.len(),
            "{unaccounted} items neither kept nor rejected ({} rejected)",
            delivery.rejected.len()
        );
    } else {
        assert!(delivery.events.len() + delivery.rejected.len() >= unaccounted);
    }
    for event in &delivery.events {
        assert!(
            event.timestamp_ms == 0 || event.timestamp_ms >= EARLIEST_MS,
            "dated {}",
            event.timestamp_ms
        );
        let id = &event.account_id;
        assert!(
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_digit()),
            "account {id:?}"
        );
        // What the store is handed must serialise, and redeliveries must
        // have a key.
        assert!(!event.dedup_key().is_empty());
        serde_json::to_vec(event).expect("an event serialises");
    }
}

/// Any bytes a caller may send as a `SendRequest`: no panic; refused by
/// the wire count, not decodable (tonic answers that), or converted to a
/// Graph body or to at most 20 named violations.
pub fn send_request_wire(wire: &[u8]) {
    if let Err(violations) = from_pb::prescan_send_request(wire) {
        check_violations(&violations);
        return;
    }
    if let Ok(request) = pb::SendRequest::decode(wire) {
        send_request(&request);
    }
}

/// A decoded `SendRequest`: a Graph body with a recipient and a message,
/// or at most 20 violations, each naming a field.
pub fn send_request(request: &pb::SendRequest) {
    match from_pb::message_from_pb(request) {
        Ok((message, _)) => {
            let body: Value =
                serde_json::from_slice(&encode_message(&message)).expect("the body is JSON");
            assert!(body["recipient"].is_object(), "{body}");
            assert!(body["message"].is_object(), "{body}");
        }
        Err(violations) => check_violations(&violations),
    }
}

fn check_violations(violations: &[messenger_gateway::model::error::FieldViolation]) {
    assert!(!violations.is_empty(), "refused without a reason");
    assert!(violations.len() <= MAX_VIOLATIONS, "{}", violations.len());
    for v in violations {
        assert!(!v.field.is_empty(), "{v:?}");
        // A description says what is wrong, not the value back in full.
        assert!(v.description.len() <= 512, "{} bytes", v.description.len());
    }
}
