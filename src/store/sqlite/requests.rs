//! `request_id` claims on this backend.

use super::*;

#[async_trait::async_trait]
impl RequestLog for SqliteStore {
    async fn claim_request(
        &self,
        id: &str,
        fingerprint: &str,
        now: UnixMs,
        take_over_before: UnixMs,
    ) -> Result<Claim, StoreError> {
        let (id, fingerprint) = (id.to_owned(), fingerprint.to_owned());
        self.write(move |conn| {
            let existing = conn
                .prepare_cached(
                    "SELECT fingerprint, claimed_ms, outcome FROM request_ids WHERE id = ?1",
                )?
                .query_row(params![id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                    ))
                })
                .optional()?;
            let live_since = now - REQUEST_ID_TTL.as_millis() as i64;
            let mut token = now;
            match existing {
                Some((fp, claimed, _)) if claimed >= live_since && fp != fingerprint => {
                    return Ok(Claim::Conflict);
                }
                // Never started: taken over, under a token of its own.
                Some((_, claimed, Some(q)))
                    if claimed >= live_since && q == QUEUED && claimed <= take_over_before =>
                {
                    token = now.max(claimed + 1);
                }
                Some((_, claimed, Some(q))) if claimed >= live_since && q == QUEUED => {
                    return Ok(Claim::Unsettled {
                        claimed_ms: claimed,
                    });
                }
                Some((_, claimed, None)) if claimed >= live_since => {
                    return Ok(Claim::Unsettled {
                        claimed_ms: claimed,
                    });
                }
                Some((_, claimed, Some(outcome))) if claimed >= live_since => {
                    let outcome: RecordedOutcome = serde_json::from_str(&outcome)
                        .map_err(|e| StoreError::Corrupt(format!("request id {id}: {e}")))?;
                    return Ok(Claim::Recorded(outcome));
                }
                _ => {}
            }
            conn.prepare_cached(
                "INSERT INTO request_ids (id, fingerprint, claimed_ms, outcome) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint,
                   claimed_ms = excluded.claimed_ms, outcome = excluded.outcome",
            )?
            .execute(params![id, fingerprint, token, QUEUED])?;
            Ok(Claim::Claimed { token })
        })
        .await
    }

    async fn start_request(&self, id: &str, token: UnixMs) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let started = conn
                .prepare_cached(
                    "UPDATE request_ids SET outcome = NULL
                     WHERE id = ?1 AND claimed_ms = ?2 AND outcome = ?3",
                )?
                .execute(params![id, token, QUEUED])?;
            Ok(started == 1)
        })
        .await
    }

    async fn request_state(&self, id: &str, now: UnixMs) -> Result<Option<Claim>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let row: Option<(i64, Option<String>)> = conn
                .prepare_cached("SELECT claimed_ms, outcome FROM request_ids WHERE id = ?1")?
                .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            match row {
                Some((claimed, outcome)) => {
                    super::super::request_state_of(&id, claimed, outcome, now)
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn settle_request(
        &self,
        id: &str,
        token: UnixMs,
        outcome: Option<RecordedOutcome>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            match outcome {
                Some(outcome) => {
                    let json = serde_json::to_string(&outcome)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    conn.prepare_cached(
                        "UPDATE request_ids SET outcome = ?3 WHERE id = ?1 AND claimed_ms = ?2",
                    )?
                    .execute(params![id, token, json])?;
                }
                None => {
                    conn.prepare_cached(
                        "DELETE FROM request_ids WHERE id = ?1 AND claimed_ms = ?2",
                    )?
                    .execute(params![id, token])?;
                }
            }
            Ok(())
        })
        .await
    }
}
