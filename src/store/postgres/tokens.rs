//! Refreshed tokens (and, when shared, refresh leases) on this backend.

use super::*;

#[async_trait::async_trait]
impl TokenStore for PgStore {
    async fn save_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        let mut client = self.shared.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO tokens (account, configured_sha256, sealed_token, expires_ms, refreshed_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account) DO UPDATE SET configured_sha256 = $2, sealed_token = $3,
                 expires_ms = $4, refreshed_ms = $5
             -- A refresh whose lease lapsed never puts an older token back.
             WHERE tokens.configured_sha256 <> $2 OR tokens.refreshed_ms <= $5",
            &[
                &record.account,
                &record.configured_sha256,
                &record.sealed_token,
                &record.expires_ms,
                &record.refreshed_ms,
            ],
        )
        .await?;
        // Every replica puts the new token in use.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&TOKENS_CHANNEL, &record.account],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.shared.pool.get().await?;
        let rows = client
            .query(
                "SELECT account, configured_sha256, sealed_token, expires_ms, refreshed_ms FROM tokens",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| TokenRecord {
                account: row.get(0),
                configured_sha256: row.get(1),
                sealed_token: row.get(2),
                expires_ms: row.get(3),
                refreshed_ms: row.get(4),
            })
            .collect())
    }

    fn token_updates(&self) -> watch::Receiver<u64> {
        self.shared.tokens.subscribe()
    }

    async fn lease_refresh(
        &self,
        account: &str,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let client = self.shared.pool.get().await?;
        // The database's clock decides, so replicas' clocks need not agree.
        let taken = client
            .execute(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms)
                 INSERT INTO refresh_leases (account, holder, until_ms)
                 SELECT $1, $2, ms + $3 FROM now
                 ON CONFLICT (account) DO UPDATE SET holder = $2, until_ms = excluded.until_ms
                 WHERE refresh_leases.until_ms < (SELECT ms FROM now)
                    OR refresh_leases.holder = $2",
                &[&account, &self.me, &(until - now).max(0)],
            )
            .await?;
        Ok(taken == 1)
    }

    async fn release_refresh(&self, account: &str) -> Result<(), StoreError> {
        let client = self.shared.pool.get().await?;
        client
            .execute(
                "DELETE FROM refresh_leases WHERE account = $1 AND holder = $2",
                &[&account, &self.me],
            )
            .await?;
        Ok(())
    }
}
