//! When the state store lives in the source database, its tables must stay out
//! of the publication: their writes would be decoded into events (pgcdc would
//! feed itself) and every state commit would reach the sinks.

use tokio_postgres::Client;

use super::{fail, ok, sql_message, Check};
use crate::config::Config;
use pgcdc_schema::quote_ident;

/// Checks that the publication does not (and cannot) publish the state schema of
/// this database. None when the state is not in Postgres.
pub(super) async fn check(config: &Config, client: &Client) -> Option<Check> {
    let state_url = config.state.url().ok().flatten()?;
    let schema = &config.state.schema;
    let publication = &config.source.publication;
    let name = format!("state schema {schema}");
    let row = match client
        .query_one(
            "SELECT to_regnamespace($1::text) IS NOT NULL, \
             COALESCE((SELECT puballtables FROM pg_publication WHERE pubname = $2), false), \
             (SELECT COUNT(*) FROM pg_publication_tables WHERE pubname = $2 AND schemaname = $1)",
            &[schema, publication],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => return Some(fail(name, sql_message(&e), "check the source connection")),
    };
    let (present, all_tables, published): (bool, bool, i64) = (row.get(0), row.get(1), row.get(2));
    // Before the first run the schema is not there yet: the same server and database
    // in both URLs say it will be.
    let source_url = config.source_url().ok();
    let same_db = present
        || source_url.is_some_and(|s| {
            s.host == state_url.host && s.port == state_url.port && s.dbname == state_url.dbname
        });
    if !same_db {
        return Some(ok(name, "in another database than the source"));
    }
    if config.tables().iter().any(|t| &t.schema == schema) {
        return Some(fail(
            name,
            format!(
                "source.tables names a table in schema {schema}, where pgcdc keeps its own state"
            ),
            "capture tables of other schemas, or set [state] schema to a schema of its own",
        ));
    }
    if all_tables {
        return Some(fail(
            name,
            format!(
                "publication {publication} is FOR ALL TABLES: it would publish pgcdc's own state \
                 tables (schema {schema} of this database), and pgcdc would stream its own writes"
            ),
            format!(
                "DROP PUBLICATION {}; (pgcdc then creates one FOR TABLE the configured tables), \
                 or keep the state in another database ([state] url)",
                quote_ident(publication)
            ),
        ));
    }
    if published > 0 {
        return Some(fail(
            name,
            format!(
                "publication {publication} includes tables of schema {schema}, pgcdc's own state"
            ),
            format!(
                "ALTER PUBLICATION {} DROP TABLES IN SCHEMA {};",
                quote_ident(publication),
                quote_ident(schema)
            ),
        ));
    }
    Some(ok(
        name,
        format!("in the source database, not in publication {publication}"),
    ))
}
