//! The sandbox playing the Instagram user: `POST /sandbox/inbound` records
//! a message (opening the window as Graph would) and delivers it to the
//! gateway as a signed webhook.

use super::*;

#[derive(serde::Deserialize)]
struct InboundRequest {
    /// Who writes; the demo recipient by default.
    #[serde(default)]
    sender_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// Back-dates the message, such as "25h" or "8d".
    #[serde(default)]
    age: Option<String>,
    /// The account written to, by id or alias; `shop` by default.
    #[serde(default)]
    account: Option<String>,
}

/// Plays the Instagram user: records their message (opening their window as
/// Graph would) and delivers it to the gateway as a signed webhook.
pub(super) async fn inbound(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let request: InboundRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"sender_id\",\"text\",\"age\",\"account\"}}: {e}"),
            )
                .into_response();
        }
    };
    let sender = request
        .sender_id
        .unwrap_or_else(|| DEMO_RECIPIENT.to_owned());
    if sender.is_empty() || !sender.bytes().all(|b| b.is_ascii_digit()) {
        return (
            StatusCode::BAD_REQUEST,
            "sender_id must be digits (an IGSID)",
        )
            .into_response();
    }
    let age = match request.age.as_deref().map(humantime::parse_duration) {
        None => Duration::ZERO,
        Some(Ok(age)) => age,
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("age: {e}")).into_response();
        }
    };
    let given = request.account.as_deref().unwrap_or("shop");
    let Some((account_id, _)) = ACCOUNTS
        .iter()
        .find(|(id, name)| *id == given || *name == given)
    else {
        return (
            StatusCode::BAD_REQUEST,
            format!("account must be one of the sandbox's: {ACCOUNT_ID} (shop), {SUPPORT_ACCOUNT_ID} (support)"),
        )
            .into_response();
    };
    let timestamp = now_ms() - age.as_millis() as i64;
    let serial = sandbox.next_id.fetch_add(1, Ordering::Relaxed);
    let mid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "ig_message_item:1:IGMessageThread:{account_id}:{sender}:in{serial}"
    ));
    {
        let mut store = sandbox.store.lock().await;
        let last = store
            .last_inbound_ms
            .entry(((*account_id).to_owned(), sender.clone()))
            .or_insert(timestamp);
        *last = (*last).max(timestamp);
    }
    let delivery = json!({
        "object": "instagram",
        "entry": [{
            "id": account_id,
            "time": now_ms(),
            "messaging": [{
                "sender": {"id": sender},
                "recipient": {"id": account_id},
                "timestamp": timestamp,
                "message": {"mid": mid, "text": request.text.unwrap_or_else(|| "Hi!".to_owned())},
            }],
        }],
    });
    let Some(target) = &sandbox.webhook else {
        return (
            StatusCode::CONFLICT,
            "the gateway's webhooks are off, so the message was recorded but not delivered",
        )
            .into_response();
    };
    let body = serde_json::to_vec(&delivery).expect("JSON values serialize");
    let signature = crate::edge::webhook::sign(&target.app_secret, &body);
    let answer = sandbox
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .header(crate::edge::webhook::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            Json(json!({"mid": mid, "sender_id": sender, "account_id": account_id, "timestamp_ms": timestamp, "webhook_status": status}))
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("the webhook could not be delivered: {e}"),
        )
            .into_response(),
    }
}
