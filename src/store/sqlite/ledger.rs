//! The thread record on this backend: what ingesting an event does beside
//! storing it (on the writer thread, inside the ingest's transaction), and
//! the `SendLedger` role.

use super::*;
use crate::model::event::{echo_key, message_key, sent_key};
use crate::store::record::{self, Effect, MessageRow};
use crate::store::{MessageRecord, SendLedger, SendRecord};

/// What to do with an event before the usual dedup-and-insert.
pub(super) enum Before {
    /// Store it (it may have become a pending send's `sent` event).
    Store { resolved: bool },
    /// Kept already.
    Duplicate,
    /// An echo joined to the gateway's own `sent` event: not stored.
    Joined,
}

fn known(conn: &Connection, key: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM dedup WHERE key = ?1")?
        .exists(params![key])?)
}

fn remember(conn: &Connection, key: &str, at: UnixMs) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO dedup (key, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
        .execute(params![key, at])?;
    Ok(())
}

fn mark_echoed(conn: &Connection, account: &str, mid: &str, at: UnixMs) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO message_state (account, mid, echoed_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (account, mid) DO UPDATE SET
           echoed_ms = COALESCE(echoed_ms, excluded.echoed_ms), updated_ms = excluded.updated_ms",
    )?
    .execute(params![account, mid, at])?;
    Ok(())
}

/// An echo is joined, settles a pending send, or is stored as it is.
pub(super) fn before_storing(
    conn: &Connection,
    event: &mut InboundEvent,
    received_ms: UnixMs,
) -> Result<Before, StoreError> {
    let Effect::Echo {
        mid,
        user,
        content_key,
    } = record::effect(event)
    else {
        return Ok(Before::Store { resolved: false });
    };
    let account = event.account_id.clone();
    let own = event.dedup_key();
    if known(conn, &own)? {
        return Ok(Before::Duplicate);
    }
    if known(conn, &sent_key(&account, &mid))? {
        remember(conn, &own, received_ms)?;
        mark_echoed(conn, &account, &mid, received_ms)?;
        return Ok(Before::Joined);
    }
    let Some(content_key) = content_key else {
        return Ok(Before::Store { resolved: false });
    };
    // The oldest pending send with this content: sends to one person are
    // echoed in the order they were made.
    let pending: Option<String> = conn
        .prepare_cached(
            "SELECT body FROM sends WHERE account = ?1 AND user = ?2 AND state = 'pending'
               AND content_key = ?3 AND expires_ms >= ?4
             ORDER BY created_ms LIMIT 1",
        )?
        .query_row(params![account, user, content_key, received_ms], |row| {
            row.get(0)
        })
        .optional()?;
    let Some(body) = pending else {
        return Ok(Before::Store { resolved: false });
    };
    let settled = record::settled(record::decode_send(&body)?, &mid, received_ms);
    conn.prepare_cached("UPDATE sends SET state = ?2, body = ?3 WHERE send_id = ?1")?
        .execute(params![
            settled.send_id,
            settled.state.name(),
            record::encode_send(&settled)?
        ])?;
    // A redelivery of this echo is a duplicate from now on.
    remember(conn, &own, received_ms)?;
    *event = record::confirmed(event.clone(), &settled, &mid);
    Ok(Before::Store { resolved: true })
}

/// The time of outbound message `mid`, if the record holds it.
fn outbound_time(
    conn: &Connection,
    account: &str,
    mid: &str,
) -> Result<Option<UnixMs>, StoreError> {
    let [sent, echo] = record::outbound_keys(account, mid);
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM events WHERE dedup_key IN (?1, ?2) LIMIT 1")?
        .query_row(params![sent, echo], |row| row.get(0))
        .optional()?;
    body.map(|b| decode_event(0, 0, &b).map(|e| e.event.timestamp_ms))
        .transpose()
}

/// What a stored event says of the messages before it: echoed, read,
/// reacted to.
pub(super) fn after_storing(
    conn: &Connection,
    event: &InboundEvent,
    received_ms: UnixMs,
) -> Result<(), StoreError> {
    let account = &event.account_id;
    match record::effect(event) {
        Effect::Sent { mid } => {
            // Its echo came before Graph's answer.
            if known(conn, &echo_key(account, &mid))? {
                mark_echoed(conn, account, &mid, received_ms)?;
            }
        }
        Effect::Read { user, mid } => {
            if let Some(through) = outbound_time(conn, account, &mid)? {
                conn.prepare_cached(
                    "INSERT INTO threads (account, user, read_through_ms, read_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account, user) DO UPDATE SET
                       read_at_ms = CASE WHEN excluded.read_through_ms >= COALESCE(read_through_ms, 0)
                                    THEN excluded.read_at_ms ELSE read_at_ms END,
                       read_through_ms = MAX(COALESCE(read_through_ms, 0), excluded.read_through_ms)",
                )?
                .execute(params![account, user, through, event.timestamp_ms])?;
            }
        }
        Effect::React { mid, by, reaction } => {
            let kept: Option<Option<String>> = conn
                .prepare_cached(
                    "SELECT reactions FROM message_state WHERE account = ?1 AND mid = ?2",
                )?
                .query_row(params![account, mid], |row| row.get(0))
                .optional()?;
            let marks = record::react(kept.flatten().as_deref(), &by, &reaction)?;
            conn.prepare_cached(
                "INSERT INTO message_state (account, mid, reactions, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account, mid) DO UPDATE SET
                   reactions = excluded.reactions, updated_ms = excluded.updated_ms",
            )?
            .execute(params![account, mid, marks, received_ms])?;
        }
        Effect::Echo { .. } | Effect::None => {}
    }
    Ok(())
}

/// Prunes the record with the events: what it says of a message is kept
/// as long as its events.
pub(super) fn prune(conn: &Connection, events_before: UnixMs) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM sends WHERE created_ms < ?1",
        params![events_before],
    )?;
    conn.execute(
        "DELETE FROM message_state WHERE updated_ms < ?1",
        params![events_before],
    )?;
    conn.execute(
        "DELETE FROM threads WHERE read_at_ms < ?1",
        params![events_before],
    )?;
    Ok(())
}

fn one_send(conn: &Connection, sql: &str, key: &str) -> Result<Option<SendRecord>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached(sql)?
        .query_row(params![key], |row| row.get(0))
        .optional()?;
    body.map(|b| record::decode_send(&b)).transpose()
}

#[async_trait::async_trait]
impl SendLedger for SqliteStore {
    async fn keep_send(&self, send: SendRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO sends (send_id, scope, account, user, content_key, state,
                                    created_ms, expires_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (send_id) DO UPDATE SET state = excluded.state, body = excluded.body",
            )?
            .execute(params![
                send.send_id,
                send.scope,
                send.account,
                send.user,
                send.content_key,
                send.state.name(),
                send.created_ms,
                send.expires_ms,
                record::encode_send(&send)?
            ])?;
            Ok(())
        })
        .await
    }

    async fn send_by_id(&self, send_id: &str) -> Result<Option<SendRecord>, StoreError> {
        let id = send_id.to_owned();
        self.read(move |conn| one_send(conn, "SELECT body FROM sends WHERE send_id = ?1", &id))
            .await
    }

    async fn send_by_request(&self, scope: &str) -> Result<Option<SendRecord>, StoreError> {
        let scope = scope.to_owned();
        self.read(move |conn| {
            one_send(
                conn,
                "SELECT body FROM sends WHERE scope = ?1 ORDER BY created_ms DESC LIMIT 1",
                &scope,
            )
        })
        .await
    }

    async fn expire_sends(&self, now: UnixMs) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let bodies: Vec<String> = conn
                .prepare_cached(
                    "SELECT body FROM sends WHERE state = 'pending' AND expires_ms < ?1",
                )?
                .query_map(params![now], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for body in &bodies {
                let gone = record::not_seen(record::decode_send(body)?, now);
                conn.prepare_cached("UPDATE sends SET state = ?2, body = ?3 WHERE send_id = ?1")?
                    .execute(params![
                        gone.send_id,
                        gone.state.name(),
                        record::encode_send(&gone)?
                    ])?;
            }
            Ok(bodies.len())
        })
        .await
    }

    async fn message(&self, account: &str, mid: &str) -> Result<Option<MessageRecord>, StoreError> {
        let (account, mid) = (account.to_owned(), mid.to_owned());
        self.read(move |conn| {
            let found: Option<(i64, i64, String)> = conn
                .prepare_cached(
                    // The gateway's own record of a send before an echo
                    // that beat Graph's answer.
                    "SELECT seq, received_ms, body FROM events WHERE dedup_key IN (?1, ?2, ?3)
                     ORDER BY dedup_key = ?1 DESC, seq LIMIT 1",
                )?
                .query_row(
                    params![
                        sent_key(&account, &mid),
                        message_key(&account, &mid),
                        echo_key(&account, &mid)
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((seq, received_ms, body)) = found else {
                return Ok(None);
            };
            let event = decode_event(seq, received_ms, &body)?;
            let (echoed_ms, reactions) = conn
                .prepare_cached(
                    "SELECT echoed_ms, reactions FROM message_state WHERE account = ?1 AND mid = ?2",
                )?
                .query_row(params![account, mid], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?
                .unwrap_or((None, None));
            let (read_through_ms, read_at_ms) = conn
                .prepare_cached(
                    "SELECT read_through_ms, read_at_ms FROM threads WHERE account = ?1 AND user = ?2",
                )?
                .query_row(params![account, event.event.user_id()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?
                .unwrap_or((None, None));
            record::message_record(MessageRow {
                event,
                echoed_ms,
                reactions,
                read_through_ms,
                read_at_ms,
            })
            .map(Some)
        })
        .await
    }
}
