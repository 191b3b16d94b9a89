//! The thread record on this backend: what ingesting a batch does beside
//! storing it (inside the writer's transaction, under the counter lock, so
//! every replica's batches see each other's whole), and the `SendLedger`
//! role.

use std::collections::HashSet;

use deadpool_postgres::Transaction;

use super::*;
use crate::model::event::{echo_key, message_key, sent_key};
use crate::store::record::{self, Effect, MessageRow};
use crate::store::{MessageRecord, SendLedger, SendRecord};

/// What becomes of one event of a batch.
pub(super) enum Slot {
    /// Handed to `ingest_events` (which may still find it a duplicate).
    Stored,
    Duplicate,
    /// An echo joined to the gateway's own `sent` event: not stored.
    Joined,
}

/// Which of `keys` the dedup table holds.
async fn known(tx: &Transaction<'_>, keys: Vec<String>) -> Result<HashSet<String>, StoreError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = tx
        .query("SELECT key FROM dedup WHERE key = ANY($1)", &[&keys])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn mark_echoed(
    tx: &Transaction<'_>,
    account: &str,
    mid: &str,
    at: UnixMs,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO message_state (account, mid, echoed_ms, updated_ms) VALUES ($1, $2, $3, $3)
         ON CONFLICT (account, mid) DO UPDATE SET
           echoed_ms = COALESCE(message_state.echoed_ms, excluded.echoed_ms),
           updated_ms = excluded.updated_ms",
        &[&account, &mid, &at],
    )
    .await?;
    Ok(())
}

/// Decides each echo of the batch before `ingest_events` sees it: joined
/// to a `sent` event (stored before, or earlier in this batch), settling a
/// pending send (then rewritten as its `sent` event), or stored as it is.
/// Answers one slot per event, and how many pending sends were settled.
pub(super) async fn before_storing(
    tx: &Transaction<'_>,
    events: &mut [InboundEvent],
    received_ms: UnixMs,
    batch_keys: &mut HashSet<String>,
) -> Result<(Vec<Slot>, usize), StoreError> {
    let mut lookups = Vec::new();
    for event in events.iter() {
        if let Effect::Echo { mid, .. } = record::effect(event) {
            lookups.push(event.dedup_key());
            lookups.push(sent_key(&event.account_id, &mid));
        }
    }
    let kept = known(tx, lookups).await?;
    let mut slots = Vec::with_capacity(events.len());
    let mut resolved = 0;
    for event in events.iter_mut() {
        let Effect::Echo {
            mid,
            user,
            content_key,
        } = record::effect(event)
        else {
            batch_keys.insert(event.dedup_key());
            slots.push(Slot::Stored);
            continue;
        };
        let account = event.account_id.clone();
        let own = event.dedup_key();
        let seen = |key: &str| kept.contains(key) || batch_keys.contains(key);
        if seen(&own) {
            slots.push(Slot::Duplicate);
            continue;
        }
        if seen(&sent_key(&account, &mid)) {
            tx.execute(
                "INSERT INTO dedup (key, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&own, &received_ms],
            )
            .await?;
            batch_keys.insert(own);
            mark_echoed(tx, &account, &mid, received_ms).await?;
            slots.push(Slot::Joined);
            continue;
        }
        let pending = match &content_key {
            None => None,
            // The oldest pending send with this content: sends to one
            // person are echoed in the order they were made.
            Some(content_key) => tx
                .query_opt(
                    "SELECT body FROM sends WHERE account = $1 AND \"user\" = $2
                       AND state = 'pending' AND content_key = $3 AND expires_ms >= $4
                     ORDER BY created_ms LIMIT 1",
                    &[&account, &user, content_key, &received_ms],
                )
                .await?
                .map(|row| row.get::<_, String>(0)),
        };
        if let Some(body) = pending {
            let settled = record::settled(record::decode_send(&body)?, &mid, received_ms);
            tx.execute(
                "UPDATE sends SET state = $2, body = $3 WHERE send_id = $1",
                &[
                    &settled.send_id,
                    &settled.state.name(),
                    &record::encode_send(&settled)?,
                ],
            )
            .await?;
            // A redelivery of this echo is a duplicate from now on.
            tx.execute(
                "INSERT INTO dedup (key, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&own, &received_ms],
            )
            .await?;
            batch_keys.insert(own);
            *event = record::confirmed(event.clone(), &settled, &mid);
            resolved += 1;
        }
        batch_keys.insert(event.dedup_key());
        slots.push(Slot::Stored);
    }
    Ok((slots, resolved))
}

/// The time of outbound message `mid`, if the record holds it.
async fn outbound_time(
    tx: &Transaction<'_>,
    account: &str,
    mid: &str,
) -> Result<Option<UnixMs>, StoreError> {
    let keys = record::outbound_keys(account, mid).to_vec();
    let row = tx
        .query_opt(
            "SELECT body FROM events WHERE dedup_key = ANY($1) LIMIT 1",
            &[&keys],
        )
        .await?;
    row.map(|r| {
        serde_json::from_str::<InboundEvent>(r.get::<_, &str>(0))
            .map(|e| e.timestamp_ms)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    })
    .transpose()
}

/// What the batch's new events say of the messages before them: echoed,
/// read, reacted to. Runs after `ingest_events`, in the same transaction.
pub(super) async fn after_storing(
    tx: &Transaction<'_>,
    stored: &[(&InboundEvent, UnixMs)],
) -> Result<(), StoreError> {
    // Sends whose echo came before Graph's answer, in one lookup.
    let mut echoes = Vec::new();
    for (event, _) in stored {
        if let Effect::Sent { mid } = record::effect(event) {
            echoes.push(echo_key(&event.account_id, &mid));
        }
    }
    let echoed = known(tx, echoes).await?;
    for &(event, received_ms) in stored {
        let account = &event.account_id;
        match record::effect(event) {
            Effect::Sent { mid } if echoed.contains(&echo_key(account, &mid)) => {
                mark_echoed(tx, account, &mid, received_ms).await?;
            }
            Effect::Read { user, mid } => {
                if let Some(through) = outbound_time(tx, account, &mid).await? {
                    tx.execute(
                        "INSERT INTO threads AS t (account, \"user\", read_through_ms, read_at_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (account, \"user\") DO UPDATE SET
                           read_at_ms = CASE WHEN excluded.read_through_ms >= COALESCE(t.read_through_ms, 0)
                                        THEN excluded.read_at_ms ELSE t.read_at_ms END,
                           read_through_ms = GREATEST(COALESCE(t.read_through_ms, 0), excluded.read_through_ms)",
                        &[account, &user, &through, &event.timestamp_ms],
                    )
                    .await?;
                }
            }
            Effect::React { mid, by, reaction } => {
                let kept: Option<String> = tx
                    .query_opt(
                        "SELECT reactions FROM message_state WHERE account = $1 AND mid = $2",
                        &[account, &mid],
                    )
                    .await?
                    .and_then(|row| row.get(0));
                let marks = record::react(kept.as_deref(), &by, &reaction)?;
                tx.execute(
                    "INSERT INTO message_state (account, mid, reactions, updated_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (account, mid) DO UPDATE SET
                       reactions = excluded.reactions, updated_ms = excluded.updated_ms",
                    &[account, &mid, &marks, &received_ms],
                )
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Prunes the record with the events.
pub(super) async fn prune(tx: &Transaction<'_>, events_before: UnixMs) -> Result<(), StoreError> {
    tx.execute("DELETE FROM sends WHERE created_ms < $1", &[&events_before])
        .await?;
    tx.execute(
        "DELETE FROM message_state WHERE updated_ms < $1",
        &[&events_before],
    )
    .await?;
    tx.execute(
        "DELETE FROM threads WHERE read_at_ms < $1",
        &[&events_before],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl SendLedger for PgStore {
    async fn keep_send(&self, send: SendRecord) -> Result<(), StoreError> {
        let client = self.shared.pool.get().await?;
        client
            .execute(
                "INSERT INTO sends (send_id, scope, account, \"user\", content_key, state,
                                    created_ms, expires_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (send_id) DO UPDATE SET state = excluded.state, body = excluded.body",
                &[
                    &send.send_id,
                    &send.scope,
                    &send.account,
                    &send.user,
                    &send.content_key,
                    &send.state.name(),
                    &send.created_ms,
                    &send.expires_ms,
                    &record::encode_send(&send)?,
                ],
            )
            .await?;
        Ok(())
    }

    async fn send_by_id(&self, send_id: &str) -> Result<Option<SendRecord>, StoreError> {
        let client = self.shared.pool.get().await?;
        let row = client
            .query_opt("SELECT body FROM sends WHERE send_id = $1", &[&send_id])
            .await?;
        row.map(|r| record::decode_send(r.get(0))).transpose()
    }

    async fn send_by_request(&self, scope: &str) -> Result<Option<SendRecord>, StoreError> {
        let client = self.shared.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT body FROM sends WHERE scope = $1 ORDER BY created_ms DESC LIMIT 1",
                &[&scope],
            )
            .await?;
        row.map(|r| record::decode_send(r.get(0))).transpose()
    }

    async fn expire_sends(&self, now: UnixMs) -> Result<usize, StoreError> {
        let mut client = self.shared.pool.get().await?;
        let tx = client.transaction().await?;
        // Locked, so a replica settling one of them by its echo meanwhile
        // waits, and then finds it no longer pending.
        let rows = tx
            .query(
                "SELECT body FROM sends WHERE state = 'pending' AND expires_ms < $1 FOR UPDATE",
                &[&now],
            )
            .await?;
        for row in &rows {
            let gone = record::not_seen(record::decode_send(row.get(0))?, now);
            tx.execute(
                "UPDATE sends SET state = $2, body = $3 WHERE send_id = $1",
                &[
                    &gone.send_id,
                    &gone.state.name(),
                    &record::encode_send(&gone)?,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn message(&self, account: &str, mid: &str) -> Result<Option<MessageRecord>, StoreError> {
        let client = self.shared.pool.get().await?;
        let keys = vec![
            sent_key(account, mid),
            message_key(account, mid),
            echo_key(account, mid),
        ];
        let Some(row) = client
            .query_opt(
                // The gateway's own record of a send before an echo that
                // beat Graph's answer.
                "SELECT seq, received_ms, body FROM events WHERE dedup_key = ANY($1)
                 ORDER BY dedup_key = $2 DESC, seq LIMIT 1",
                &[&keys, &keys[0]],
            )
            .await?
        else {
            return Ok(None);
        };
        let seq: i64 = row.get(0);
        let event: InboundEvent = serde_json::from_str(row.get::<_, &str>(2))
            .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
        let event = StoredEvent {
            seq: seq as u64,
            received_ms: row.get(1),
            event,
        };
        let (echoed_ms, reactions) = client
            .query_opt(
                "SELECT echoed_ms, reactions FROM message_state WHERE account = $1 AND mid = $2",
                &[&account, &mid],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((None, None));
        let (read_through_ms, read_at_ms) = client
            .query_opt(
                "SELECT read_through_ms, read_at_ms FROM threads WHERE account = $1 AND \"user\" = $2",
                &[&account, &event.event.user_id()],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((None, None));
        record::message_record(MessageRow {
            event,
            echoed_ms,
            reactions,
            read_through_ms,
            read_at_ms,
        })
        .map(Some)
    }
}
