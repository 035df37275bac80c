//! `pgcdc check` for `source.streaming`: protocol v2 streaming needs PostgreSQL
//! 14+, and streams only transactions larger than `logical_decoding_work_mem`.

use tokio_postgres::Client;

use super::{fail, ok, sql_message, Check};

/// The first version that streams in-progress transactions to pgoutput.
pub(crate) const STREAMING_MAJOR: u32 = 14;

const NAME: &str = "source.streaming";

/// The check, for a source of `major` (asked only when `source.streaming = true`).
pub(crate) async fn check(client: &Client, major: u32) -> Check {
    if major < STREAMING_MAJOR {
        return too_old(major);
    }
    match client
        .query_one("SELECT current_setting('logical_decoding_work_mem')", &[])
        .await
    {
        Ok(row) => ok(
            NAME,
            format!(
                "protocol v2: a transaction whose changes exceed logical_decoding_work_mem ({}) \
                 comes in blocks before it commits, staged in the state store until then",
                row.get::<_, String>(0)
            ),
        ),
        Err(e) => fail(NAME, sql_message(&e), "check the source connection"),
    }
}

/// The failed check for a source older than [`STREAMING_MAJOR`].
pub(crate) fn too_old(major: u32) -> Check {
    fail(
        NAME,
        format!(
            "streaming in-progress transactions (pgoutput protocol v2) needs PostgreSQL \
             {STREAMING_MAJOR} or later; the source runs {major}"
        ),
        "set source.streaming = false (large transactions then come whole at commit, spilled to \
         the server's disk meanwhile), or upgrade the source",
    )
}
