//! The state tables and their versioned migrations. `schema_version` holds the
//! number of migrations applied; each start applies the missing ones under an
//! advisory lock (sessions opening together do not race), and refuses a schema
//! newer than this binary knows.

use super::{message, Pg, NOW_TEXT};
use crate::journal::{Access, JournalError};

/// Migrations, in order; `schema_version.version` counts the ones applied. Never
/// edit one that shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store holds, plus the byte count and the lease.
    "
CREATE TABLE events (
    pos bigint PRIMARY KEY,
    commit_lsn bigint NOT NULL,
    seq integer NOT NULL,
    commit_time_us bigint,
    tbl text NOT NULL,
    payload bytea NOT NULL,
    target text
);
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE cursors (
    sink text PRIMARY KEY,
    pos bigint NOT NULL,
    generation bigint NOT NULL DEFAULT 0,
    updated_at text NOT NULL DEFAULT {now}
);
CREATE TABLE dlq (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink text NOT NULL,
    delivery_id text NOT NULL,
    row_key text NOT NULL,
    pos bigint NOT NULL,
    item bytea NOT NULL,
    state text NOT NULL,
    error text,
    replay boolean NOT NULL DEFAULT false,
    created_at text NOT NULL DEFAULT {now}
);
CREATE INDEX dlq_sink_row ON dlq(sink, row_key, id);
CREATE TABLE row_state (
    tbl text NOT NULL,
    row_key text NOT NULL,
    cols text NOT NULL,
    PRIMARY KEY (tbl, row_key)
);
CREATE TABLE resyncs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    tbl text NOT NULL,
    sink text,
    where_sql text,
    state text NOT NULL,
    last_key text,
    rows bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    error text,
    created_at text NOT NULL DEFAULT {now},
    updated_at text NOT NULL DEFAULT {now}
);
CREATE INDEX resyncs_state ON resyncs(state, id);
CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL,
    sink text NOT NULL,
    attempt integer NOT NULL,
    at text NOT NULL,
    status integer,
    error text,
    latency_ms bigint NOT NULL,
    outcome text NOT NULL
);
CREATE INDEX audit_event ON audit(event_id);
CREATE INDEX audit_sink_at ON audit(sink, at);
CREATE TABLE stats (
    id integer PRIMARY KEY CHECK (id = 1),
    journal_bytes bigint NOT NULL
);
INSERT INTO stats VALUES (1, 0);
CREATE TABLE lease (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text,
    renewed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO lease(id, epoch) VALUES (1, 0);
INSERT INTO meta VALUES ('store_id', md5(random()::text || clock_timestamp()::text));
",
    // 2: who leads since when, and its lock session (high availability, `crate::ha`).
    "
ALTER TABLE lease ADD COLUMN since timestamptz, ADD COLUMN holder_pid integer;
",
    // 3: streamed transactions staged until they end (`journal::staging`).
    "
CREATE TABLE stream_staging (
    xid bigint NOT NULL,
    seq bigint NOT NULL,
    subxid bigint NOT NULL,
    lsn bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX stream_staging_sub ON stream_staging(xid, subxid);
",
    // 4: record v2 (`journal::record`): the relation versions its records name. The
    // v1 records (JSON) already in `events` stay and read as before.
    "
CREATE TABLE relations (
    id bigint PRIMARY KEY,
    body text NOT NULL
);
",
    // 5: one audit row per batch a sink settled as a whole (Kafka); `min_id` and
    // `max_id` bound its delivery ids in byte order ("C"), so a lookup by event
    // reads the blobs of few rows.
    "
CREATE TABLE audit_batch (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink text NOT NULL,
    attempt integer NOT NULL,
    at text NOT NULL,
    latency_ms bigint NOT NULL,
    outcome text NOT NULL,
    events integer NOT NULL,
    min_id text COLLATE \"C\" NOT NULL,
    max_id text COLLATE \"C\" NOT NULL,
    ids bytea NOT NULL
);
CREATE INDEX audit_batch_range ON audit_batch(max_id, min_id);
CREATE INDEX audit_batch_sink_at ON audit_batch(sink, at);
",
];

/// The schema version this binary writes.
pub(super) const LATEST: i32 = MIGRATIONS.len() as i32;

/// `name` as a quoted identifier (config validation allows only [a-z0-9_]).
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The applied version, or None when the schema has no store.
fn version(pg: &Pg, schema: &str) -> Result<Option<i32>, JournalError> {
    let found = pg.query_one(
        "SELECT to_regclass(quote_ident($1::text) || '.schema_version') IS NOT NULL",
        &[&schema],
    )?;
    if !pg.get::<bool>(&found, 0)? {
        return Ok(None);
    }
    let row = pg.query_opt("SELECT max(version) FROM schema_version", &[])?;
    Ok(match row {
        Some(row) => pg.get::<Option<i32>>(&row, 0)?,
        None => None,
    })
}

/// Makes the store usable: creates or migrates it (`Create`), or checks that it
/// exists (`Existing`); refuses one newer than this binary.
pub(super) fn prepare(pg: &Pg, schema: &str, access: Access) -> Result<(), JournalError> {
    let newer = |v: i32| {
        message(
            &pg.at,
            format!(
                "the state schema {schema} is at version {v}, but this pgcdc knows versions up to \
                 {LATEST}: a newer pgcdc wrote it. Run that release (or a later one), or point \
                 [state] schema at another schema"
            ),
        )
    };
    match version(pg, schema)? {
        Some(v) if v == LATEST => return Ok(()),
        Some(v) if v > LATEST => return Err(newer(v)),
        None if access == Access::Existing => {
            return Err(message(
                &pg.at,
                "no pgcdc state here yet; run `pgcdc run` first, or check [state] url and schema"
                    .into(),
            ))
        }
        _ => {}
    }
    pg.write(|pg| {
        // Sessions opening at the first start together: one migrates, the others
        // wait here and find it done.
        pg.query_one(
            "SELECT pg_advisory_xact_lock(hashtext('pgcdc state schema ' || $1::text))::text",
            &[&schema],
        )?;
        pg.batch(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)))?;
        // A primary key: a FOR ALL TABLES publication (refused later, by the preflight
        // check, with a clearer message) would otherwise fail the update below.
        pg.batch(
            "CREATE TABLE IF NOT EXISTS schema_version \
             (id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1), version integer NOT NULL)",
        )?;
        let from = version(pg, schema)?.unwrap_or(0);
        if from > LATEST {
            return Err(newer(from));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            pg.batch(&sql.replace("{now}", &format!("({NOW_TEXT})")))?;
            tracing::info!(schema, version = i + 1, "state schema migrated");
        }
        pg.batch(&format!(
            "INSERT INTO schema_version(id, version) VALUES (1, {LATEST}) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version"
        ))?;
        Ok(())
    })
}
