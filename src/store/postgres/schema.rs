//! The shared database's tables, and bringing them up to date at start.

use deadpool_postgres::Client;

use crate::store::StoreError;

/// Every schema change, in order; each runs once, in its own transaction.
/// Append only: a replica of an older build must keep working on the
/// tables a newer one has migrated.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    received_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_received ON events (received_ms);
CREATE TABLE windows (
    account TEXT NOT NULL,
    \"user\" TEXT NOT NULL,
    last_inbound_ms BIGINT,
    standard_refused_ms BIGINT,
    human_agent_refused_ms BIGINT,
    PRIMARY KEY (account, \"user\")
);
CREATE INDEX windows_user ON windows (\"user\");
CREATE TABLE request_ids (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    claimed_ms BIGINT NOT NULL,
    outcome TEXT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('head', 0), ('pruned_through', 0);
CREATE TABLE dedup (key TEXT PRIMARY KEY, seen_ms BIGINT NOT NULL);
CREATE INDEX dedup_seen ON dedup (seen_ms);
CREATE TABLE tokens (
    account TEXT PRIMARY KEY,
    configured_sha256 TEXT NOT NULL,
    sealed_token TEXT NOT NULL,
    expires_ms BIGINT,
    refreshed_ms BIGINT NOT NULL
);
",
    ),
    (
        2,
        "
CREATE TABLE replicas (id TEXT PRIMARY KEY, seen_ms BIGINT NOT NULL);
",
    ),
    (
        3,
        "
CREATE SEQUENCE window_versions;
ALTER TABLE windows ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
CREATE TABLE refresh_leases (
    account TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
",
    ),
    (
        4,
        // A batch of events in one round trip: each is deduplicated, given
        // the next seq (the counter row stays locked to commit), stored,
        // and (when `opened` is set) opens its window; the window rows and
        // the new events are announced at commit. One row per event: its seq (NULL: a duplicate)
        // and the window row as it now is.
        "
CREATE FUNCTION ingest_events(keys TEXT[], bodies TEXT[], received BIGINT[],
                              accounts TEXT[], users TEXT[], opened BIGINT[])
RETURNS TABLE (o_seq BIGINT, o_account TEXT, o_user TEXT, o_version BIGINT,
               o_inbound BIGINT, o_standard BIGINT, o_human_agent BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    stored BOOLEAN := FALSE;
BEGIN
    -- The counter first: batches take turns whole, so two replicas given
    -- overlapping deliveries never hold each other's dedup keys.
    PERFORM 1 FROM meta WHERE key = 'head' FOR UPDATE;
    FOR k IN 1 .. COALESCE(array_length(keys, 1), 0) LOOP
        o_seq := NULL; o_account := NULL; o_user := NULL; o_version := NULL;
        o_inbound := NULL; o_standard := NULL; o_human_agent := NULL;
        INSERT INTO dedup (key, seen_ms) VALUES (keys[k], received[k]) ON CONFLICT DO NOTHING;
        IF FOUND THEN
            UPDATE meta SET value = value + 1 WHERE key = 'head' RETURNING value INTO o_seq;
            INSERT INTO events (seq, dedup_key, received_ms, body)
                VALUES (o_seq, keys[k], received[k], bodies[k]);
            IF opened[k] IS NOT NULL THEN
                INSERT INTO windows AS w (account, \"user\", last_inbound_ms, version)
                    VALUES (accounts[k], users[k], opened[k], nextval('window_versions'))
                ON CONFLICT (account, \"user\") DO UPDATE SET
                    last_inbound_ms = GREATEST(COALESCE(w.last_inbound_ms, 0), excluded.last_inbound_ms),
                    standard_refused_ms = NULL, human_agent_refused_ms = NULL,
                    version = nextval('window_versions')
                RETURNING w.account, w.\"user\", w.version, w.last_inbound_ms,
                          w.standard_refused_ms, w.human_agent_refused_ms
                INTO o_account, o_user, o_version, o_inbound, o_standard, o_human_agent;
                PERFORM pg_notify('messenger_gateway_windows', json_build_object(
                    'a', o_account, 'u', o_user, 'v', o_version, 'i', o_inbound,
                    's', o_standard, 'h', o_human_agent)::text);
            END IF;
            stored := TRUE;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF stored THEN
        PERFORM pg_notify('messenger_gateway_events', '');
    END IF;
END
$$;
",
    ),
    (
        5,
        // The thread record beside the events (see `store::record`).
        "
CREATE TABLE message_state (
    account TEXT NOT NULL,
    mid TEXT NOT NULL,
    echoed_ms BIGINT,
    reactions TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (account, mid)
);
CREATE INDEX message_state_updated ON message_state (updated_ms);
CREATE TABLE threads (
    account TEXT NOT NULL,
    \"user\" TEXT NOT NULL,
    read_through_ms BIGINT,
    read_at_ms BIGINT,
    PRIMARY KEY (account, \"user\")
);
CREATE TABLE sends (
    send_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    account TEXT NOT NULL,
    \"user\" TEXT NOT NULL,
    content_key TEXT,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX sends_scope ON sends (scope, created_ms);
CREATE INDEX sends_pending ON sends (account, \"user\", state, content_key);
CREATE INDEX sends_expiring ON sends (state, expires_ms);
",
    ),
];

/// The advisory lock migrations run under (any fixed number; this one
/// spells "msgw").
const MIGRATION_LOCK: i64 = 0x6d73_6777;

/// Applies the migrations this database has not had yet. Replicas starting
/// together queue on the advisory lock, and each finds the work done by the
/// first.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn apply(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied a store migration");
    }
    Ok(())
}
