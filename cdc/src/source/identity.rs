//! Which source table each `source.tables` name captures, by identity (OID), so a
//! table renamed or moved to another schema stays captured.
//!
//! ```text
//!  source.tables name N ──▶ OID ── remembered in the journal (meta table_oid:N)
//!        │                   │
//!        │                   └─▶ reader: Relation message OID ─▶ captured as N
//!        └─▶ sinks' and triggers' `tables` route by N (the journal's `tbl` column)
//! ```
//!
//! Resolution of a configured name N, with M the OID remembered for N and X the OID
//! of the table now named N:
//! - M still exists and is in the publication: M (a rename when its name is not N:
//!   warned, and events carry the new name);
//! - else X when it exists (the first start, or N now names another table: warned);
//! - else missing (preflight says so).
//!
//! Tables of the publication that are not captured (a publication made by the user
//! can hold more) are skipped, and listed in a warning at start. A relation the
//! stream describes that is neither captured nor known to be skipped stops the
//! reader (see `ingest::reader`): it may be a captured table pgcdc cannot place,
//! and skipping it would confirm its changes to the slot without journaling them.

use std::collections::{HashMap, HashSet};

use pgcdc_schema::TableName;
use tokio_postgres::Client;

use crate::config::Config;
use crate::journal::{Access, JournalError, JournalWriter, MetaKey, Store};

/// A configured table resolved to the source table it captures.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedTable {
    /// The name in `source.tables`.
    pub(crate) configured: TableName,
    /// The table's OID.
    pub(crate) oid: u32,
    /// Its name now (differs from `configured` after a rename).
    pub(crate) current: TableName,
    /// Whether it is partitioned (its leaf partitions carry its changes).
    pub(crate) partitioned: bool,
}

impl ResolvedTable {
    /// Whether the table now has another name than the configured one.
    pub(crate) fn renamed(&self) -> bool {
        self.current != self.configured
    }
}

/// OIDs remembered in the journal for configured names.
pub(crate) type Remembered = HashMap<TableName, u32>;

fn parse_remembered(entries: Vec<(String, String)>) -> Remembered {
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let name = TableName::parse(&k).ok()?;
            Some((name, v.parse().ok()?))
        })
        .collect()
}

/// The OIDs remembered in the journal open for writing.
pub(crate) fn remembered(writer: &dyn JournalWriter) -> Result<Remembered, JournalError> {
    Ok(parse_remembered(writer.table_oids()?))
}

/// The OIDs remembered in the journal of `dir`, if there is one (for `pgcdc check`).
pub(crate) fn remembered_in(store: &Store) -> Remembered {
    if !store.exists() {
        return Remembered::new();
    }
    match store.open(Access::Existing).and_then(|r| r.table_oids()) {
        Ok(entries) => parse_remembered(entries),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the table identities remembered in the journal; tables are looked up by name");
            Remembered::new()
        }
    }
}

/// Records the OID each configured name captures.
pub(crate) fn remember(
    writer: &mut dyn JournalWriter,
    tables: &[ResolvedTable],
) -> Result<(), JournalError> {
    for t in tables {
        writer.set_meta(
            &MetaKey::TableOid(t.configured.to_string()),
            &t.oid.to_string(),
        )?;
    }
    Ok(())
}

/// The tables of the publication by OID, with their current names; None when the
/// publication does not exist. Holds the tables named in the publication (partitioned
/// roots included) and those it publishes (`pg_publication_tables`: leaf partitions,
/// FOR ALL TABLES, FOR TABLES IN SCHEMA).
pub(crate) async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<HashMap<u32, TableName>>, tokio_postgres::Error> {
    if client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid IN ( \
               SELECT pr.prrelid FROM pg_publication_rel pr \
               JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 \
               UNION \
               SELECT c2.oid FROM pg_publication_tables pt \
               JOIN pg_namespace n2 ON n2.nspname = pt.schemaname \
               JOIN pg_class c2 ON c2.relnamespace = n2.oid AND c2.relname = pt.tablename \
               WHERE pt.pubname = $1)",
            &[&publication],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, u32>(0),
                    TableName {
                        schema: r.get(1),
                        table: r.get(2),
                    },
                )
            })
            .collect(),
    ))
}

/// (name, partitioned) of the table with this OID, if it is a table.
async fn table_by_oid(
    client: &Client,
    oid: u32,
) -> Result<Option<(TableName, bool)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relkind = 'p' \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
            &[&oid],
        )
        .await?;
    Ok(row.map(|r| {
        (
            TableName {
                schema: r.get(0),
                table: r.get(1),
            },
            r.get(2),
        )
    }))
}

/// (OID, partitioned) of the table now named `name`, if any.
async fn table_by_name(
    client: &Client,
    name: &TableName,
) -> Result<Option<(u32, bool)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.schema, &name.table],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Resolves one configured name (see the module's rules). `publication`: the
/// publication's tables, None while it does not exist yet.
pub(crate) async fn resolve(
    client: &Client,
    configured: &TableName,
    remembered: Option<u32>,
    publication: Option<&HashMap<u32, TableName>>,
) -> Result<Option<ResolvedTable>, tokio_postgres::Error> {
    if let Some(oid) = remembered {
        let published = publication.is_some_and(|p| p.contains_key(&oid));
        if let (true, Some((current, partitioned))) = (published, table_by_oid(client, oid).await?)
        {
            return Ok(Some(ResolvedTable {
                configured: configured.clone(),
                oid,
                current,
                partitioned,
            }));
        }
    }
    let Some((oid, partitioned)) = table_by_name(client, configured).await? else {
        return Ok(None);
    };
    if remembered.is_some_and(|m| m != oid) {
        tracing::warn!(table = %configured, oid, previous_oid = remembered.unwrap_or_default(),
            "the table captured under this name is gone (or left the publication); the table now named so is captured");
    }
    Ok(Some(ResolvedTable {
        configured: configured.clone(),
        oid,
        current: configured.clone(),
        partitioned,
    }))
}

/// What the reader captures, by relation OID.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    /// Captured relation OID -> the configured name its changes belong to (leaf
    /// partitions of a captured partitioned table map to it).
    pub(crate) tables: HashMap<u32, TableName>,
    /// Captured relation OID -> its name as last seen (to notice renames).
    pub(crate) names: HashMap<u32, TableName>,
    /// Tables of the publication, at start, that are not captured: skipped.
    pub(crate) skipped: HashSet<u32>,
}

/// At start, after the publication exists: resolves every configured table, records
/// the OIDs in the journal, warns about renames and about the publication's other
/// tables, and returns what the reader captures. Errors name the table and the fix.
pub(crate) async fn capture(
    config: &Config,
    client: &Client,
    writer: &mut dyn JournalWriter,
) -> anyhow::Result<Capture> {
    let publication = &config.source.publication;
    let remembered = remembered(writer)?;
    let published = publication_tables(client, publication)
        .await?
        .ok_or_else(|| anyhow::anyhow!("publication {publication} does not exist"))?;
    let mut resolved = Vec::new();
    let mut capture = Capture::default();
    for name in config.tables() {
        let table = resolve(client, name, remembered.get(name).copied(), Some(&published))
            .await?
            .filter(|t| published.contains_key(&t.oid))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "table {name} is not in publication {publication} (nor a table pgcdc captured under this name) — fix: ALTER PUBLICATION {} ADD TABLE {};",
                    pgcdc_schema::quote_ident(publication),
                    name.quoted()
                )
            })?;
        if table.renamed() {
            tracing::warn!(table = %name, now = %table.current, oid = table.oid,
                "captured table was renamed: it stays captured (matched by OID), its events carry the new name and reach the same sinks and triggers; update source.tables (and sinks' and triggers' table names) to the new name");
        }
        capture.tables.insert(table.oid, name.clone());
        capture.names.insert(table.oid, table.current.clone());
        if table.partitioned {
            let leaves = client
                .query(
                    "SELECT t.relid::oid, n.nspname::text, c.relname::text \
                     FROM pg_partition_tree($1::oid::regclass) t \
                     JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE t.relid::oid <> $1::oid",
                    &[&table.oid],
                )
                .await?;
            for r in leaves {
                let oid: u32 = r.get(0);
                capture.tables.insert(oid, name.clone());
                capture.names.insert(
                    oid,
                    TableName {
                        schema: r.get(1),
                        table: r.get(2),
                    },
                );
            }
        }
        resolved.push(table);
    }
    remember(writer, &resolved)?;
    let mut others: Vec<String> = Vec::new();
    for (oid, name) in &published {
        if !capture.tables.contains_key(oid) {
            capture.skipped.insert(*oid);
            others.push(name.to_string());
        }
    }
    if !others.is_empty() {
        others.sort();
        tracing::warn!(publication = %publication, tables = %others.join(", "),
            "the publication also publishes tables that are not in source.tables: their changes are skipped");
    }
    Ok(capture)
}
