//! `source.ddl_capture`: an event trigger that writes each `ALTER TABLE`'s resulting
//! columns into the WAL as a transactional logical message, so a schema change is
//! reported when its DDL commits, not only at the table's next write (Postgres
//! describes a table to logical decoding only before a change). The reader feeds the
//! message to the same shape comparison as a Relation message, so the later Relation
//! message finds the shape already known.
//!
//! The message describes the columns as the Relation message would: in column
//! order, without dropped or generated ones, `key` marking the primary key (else the
//! replica identity: every column under FULL, the index's under USING INDEX).

/// Logical message prefix of the trigger's messages.
pub(crate) const PREFIX: &str = "pgcdc.ddl";

/// The function's and the trigger's name for `slot` (one per pgcdc source).
pub(crate) fn name(slot: &str) -> String {
    format!("pgcdc_ddl_{slot}")
}

/// Creates (or replaces) the function and the event trigger. Needs a superuser.
pub(crate) fn install_sql(slot: &str) -> String {
    let name = pgcdc_schema::quote_ident(&name(slot));
    let prefix = pgcdc_schema::quote_literal(PREFIX);
    format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS event_trigger LANGUAGE plpgsql AS $pgcdc$
         DECLARE r record;
         BEGIN
           FOR r IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
                    WHERE c.classid = 'pg_class'::regclass AND c.object_type = 'table' LOOP
             PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
               'oid', r.objid::int8,
               'schema', (SELECT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = r.objid),
               'table', (SELECT k.relname FROM pg_class k WHERE k.oid = r.objid),
               'columns', (
                 SELECT json_agg(json_build_object('name', a.attname, 'type', t.typname,
                   'key', CASE WHEN pk.indkey IS NOT NULL THEN a.attnum = ANY(pk.indkey::int2[])
                               WHEN k.relreplident = 'f' THEN true
                               WHEN k.relreplident = 'i' THEN COALESCE(a.attnum = ANY(ri.indkey::int2[]), false)
                               ELSE false END) ORDER BY a.attnum)
                 FROM pg_attribute a
                 JOIN pg_type t ON t.oid = a.atttypid
                 JOIN pg_class k ON k.oid = a.attrelid
                 LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
                 LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident
                 WHERE a.attrelid = r.objid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''))::text);
           END LOOP;
         END $pgcdc$;
         DROP EVENT TRIGGER IF EXISTS {name};
         CREATE EVENT TRIGGER {name} ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
           EXECUTE FUNCTION {name}();"
    )
}

/// Drops the event trigger and its function (`teardown`).
pub(crate) fn drop_sql(slot: &str) -> String {
    let name = pgcdc_schema::quote_ident(&name(slot));
    format!("DROP EVENT TRIGGER IF EXISTS {name}; DROP FUNCTION IF EXISTS {name}();")
}

/// Whether the trigger exists.
pub(crate) async fn installed(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) > 0 FROM pg_event_trigger WHERE evtname = $1",
            &[&name(slot)],
        )
        .await?;
    row.try_get(0)
}

/// One message of the trigger, as the reader reads it.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct DdlMessage {
    /// The altered table's OID.
    pub(crate) oid: u32,
    /// Its schema and name after the DDL.
    pub(crate) schema: String,
    /// Its name after the DDL.
    pub(crate) table: String,
    /// Its columns after the DDL.
    pub(crate) columns: Vec<pgcdc_schema::event::Column>,
}
