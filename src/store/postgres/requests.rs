//! `request_id` claims on this backend.

use super::*;

#[async_trait::async_trait]
impl RequestLog for PgStore {
    async fn claim_request(
        &self,
        id: &str,
        fingerprint: &str,
        now: UnixMs,
        take_over_before: UnixMs,
    ) -> Result<Claim, StoreError> {
        let mut client = self.shared.pool.get().await?;
        // Three tries at most: a claim released by another replica between our
        // insert and our read is gone, and the next insert takes it.
        let mut attempts = 0;
        let (tx, row) = loop {
            attempts += 1;
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO request_ids (id, fingerprint, claimed_ms, outcome)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    &[&id, &fingerprint, &now, &QUEUED],
                )
                .await?;
            if inserted == 1 {
                tx.commit().await?;
                return Ok(Claim::Claimed { token: now });
            }
            // Held by another claim: read it under a lock, so two replicas
            // reclaiming an expired id cannot both win.
            let row = tx
                .query_opt(
                    "SELECT fingerprint, claimed_ms, outcome FROM request_ids WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?;
            match row {
                Some(row) => break (tx, row),
                None if attempts < 3 => continue,
                None => {
                    return Err(StoreError::Backend(
                        "a request id kept changing hands".into(),
                    ));
                }
            }
        };
        let (fp, claimed, outcome): (String, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let live_since = now - REQUEST_ID_TTL.as_millis() as i64;
        // Expired, or never started (taken over, under a token of its own).
        let reclaim = if claimed < live_since {
            Some(now)
        } else if fp == fingerprint
            && outcome.as_deref() == Some(QUEUED)
            && claimed <= take_over_before
        {
            Some(now.max(claimed + 1))
        } else {
            None
        };
        if let Some(token) = reclaim {
            tx.execute(
                "UPDATE request_ids SET fingerprint = $2, claimed_ms = $3, outcome = $4
                 WHERE id = $1",
                &[&id, &fingerprint, &token, &QUEUED],
            )
            .await?;
            tx.commit().await?;
            return Ok(Claim::Claimed { token });
        }
        let claim = if fp != fingerprint {
            Claim::Conflict
        } else {
            match outcome {
                // Under way, or waiting for its call on another replica.
                None => Claim::Unsettled {
                    claimed_ms: claimed,
                },
                Some(q) if q == QUEUED => Claim::Unsettled {
                    claimed_ms: claimed,
                },
                Some(outcome) => Claim::Recorded(
                    serde_json::from_str(&outcome)
                        .map_err(|e| StoreError::Corrupt(format!("request id {id}: {e}")))?,
                ),
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn start_request(&self, id: &str, token: UnixMs) -> Result<bool, StoreError> {
        let client = self.shared.pool.get().await?;
        let started = client
            .execute(
                "UPDATE request_ids SET outcome = NULL
                 WHERE id = $1 AND claimed_ms = $2 AND outcome = $3",
                &[&id, &token, &QUEUED],
            )
            .await?;
        Ok(started == 1)
    }

    async fn request_state(&self, id: &str, now: UnixMs) -> Result<Option<Claim>, StoreError> {
        let client = self.shared.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT claimed_ms, outcome FROM request_ids WHERE id = $1",
                &[&id],
            )
            .await?;
        match row {
            Some(row) => super::super::request_state_of(id, row.get(0), row.get(1), now),
            None => Ok(None),
        }
    }

    async fn settle_request(
        &self,
        id: &str,
        token: UnixMs,
        outcome: Option<RecordedOutcome>,
    ) -> Result<(), StoreError> {
        let client = self.shared.pool.get().await?;
        match outcome {
            Some(outcome) => {
                let json = serde_json::to_string(&outcome)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                client
                    .execute(
                        "UPDATE request_ids SET outcome = $3 WHERE id = $1 AND claimed_ms = $2",
                        &[&id, &token, &json],
                    )
                    .await?;
            }
            None => {
                client
                    .execute(
                        "DELETE FROM request_ids WHERE id = $1 AND claimed_ms = $2",
                        &[&id, &token],
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
