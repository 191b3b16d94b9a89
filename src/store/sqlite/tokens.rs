//! Refreshed tokens (and, when shared, refresh leases) on this backend.

use super::*;

#[async_trait::async_trait]
impl TokenStore for SqliteStore {
    async fn save_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO tokens (account, configured_sha256, sealed_token, expires_ms, refreshed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account) DO UPDATE SET configured_sha256 = ?2, sealed_token = ?3,
                     expires_ms = ?4, refreshed_ms = ?5",
            )?
            .execute(params![
                record.account,
                record.configured_sha256,
                record.sealed_token,
                record.expires_ms,
                record.refreshed_ms
            ])?;
            Ok(())
        })
        .await?;
        // The page that held the token before is still in the database
        // file (the new one is in the journal): copied over, and the
        // journal emptied, now. Rare: a token is saved hourly at most.
        // The token is kept either way; only the clean-up may wait.
        let checkpoint = self
            .read(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                Ok(())
            })
            .await;
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "could not empty the journal after keeping a token; the next checkpoint will");
        }
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT account, configured_sha256, sealed_token, expires_ms, refreshed_ms FROM tokens",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(TokenRecord {
                    account: row.get(0)?,
                    configured_sha256: row.get(1)?,
                    sealed_token: row.get(2)?,
                    expires_ms: row.get(3)?,
                    refreshed_ms: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
