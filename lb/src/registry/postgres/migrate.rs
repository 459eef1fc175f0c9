//! Versioned schema migrations, applied at start. The whole run is one transaction holding a
//! transaction-scoped advisory lock, so LBs starting at once apply each migration exactly once (the
//! others wait, then find it applied); Postgres DDL is transactional, so a failed run leaves nothing
//! half-done. Migrations are append-only: a released one is never edited.

/// The advisory lock key of the migration run ("ferrofn" in ASCII).
pub const LOCK_KEY: i64 = 0x0066_6572_726f_666e;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number (1, 2, ...; applied in this order).
    pub version: i32,
    /// What it does.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "apps, fns, triggers and the registry version",
    // Names and ids compare bytewise (COLLATE "C"), as in SQLite, so that pages come in the same
    // order from both stores. Bodies are Fn's JSON, stored as text (kept byte for byte).
    sql: r#"
CREATE TABLE apps (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL CONSTRAINT apps_name UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE fns (
    id TEXT COLLATE "C" PRIMARY KEY,
    app_id TEXT COLLATE "C" NOT NULL CONSTRAINT fns_app REFERENCES apps (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL,
    CONSTRAINT fns_app_name UNIQUE (app_id, name),
    CONSTRAINT fns_app_id UNIQUE (app_id, id)
);
CREATE TABLE triggers (
    id TEXT COLLATE "C" PRIMARY KEY,
    app_id TEXT COLLATE "C" NOT NULL CONSTRAINT triggers_app REFERENCES apps (id) ON DELETE CASCADE,
    fn_id TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    type TEXT COLLATE "C" NOT NULL,
    source TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL,
    CONSTRAINT triggers_fn FOREIGN KEY (app_id, fn_id) REFERENCES fns (app_id, id) ON DELETE CASCADE,
    CONSTRAINT triggers_fn_name UNIQUE (app_id, fn_id, name),
    CONSTRAINT triggers_source UNIQUE (app_id, type, source)
);
CREATE INDEX fns_by_name ON fns (name, id);
CREATE INDEX triggers_by_name ON triggers (name, id);
CREATE INDEX triggers_by_fn ON triggers (fn_id);
-- One row: bumped by every write (which also takes its lock, serialising the writers), read by
-- the LBs' change feeds after a reconnect and as a cheap poll.
CREATE TABLE registry_version (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT NOT NULL
);
INSERT INTO registry_version (one, version) VALUES (TRUE, 0);
"#,
}];

/// What a run found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The schema version after the run.
    pub version: i32,
    /// The migrations this run applied (none when another LB had).
    pub applied: Vec<i32>,
}

/// Applies the missing migrations in one transaction under the advisory lock.
pub async fn run(client: &mut tokio_postgres::Client) -> Result<Report, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Another LB may hold the lock while it migrates: wait for it (the start bounds the whole run),
    // rather than give up at the session's statement timeout.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ferrofn_schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM ferrofn_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO ferrofn_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, "registry: migration applied");
        applied.push(m.version);
    }
    tx.commit().await?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let version = done
        .iter()
        .copied()
        .chain(applied.iter().copied())
        .max()
        .unwrap_or(0);
    if version > known {
        // A newer LB migrated the database (a rolling upgrade): this one keeps working as long as
        // the migrations stay additive, which is the rule for them.
        tracing::warn!(
            schema_version = version,
            known,
            "registry: the database schema is newer than this LB"
        );
    }
    Ok(Report { version, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
