//! The publication pgcdc reads: created for `source.tables` when missing, and
//! checked when it exists.
//!
//! Created `FOR TABLE` the configured tables, each with its row filter and
//! column list (PostgreSQL 15+), `WITH (publish = source.publish,
//! publish_via_partition_root = true)`: a partitioned table's changes come
//! under the root's OID and name, and partitions attached later flow with no
//! action from pgcdc (harmless for plain tables). `publish_generated_columns =
//! stored` is added when `source.publish_generated_columns` asks (18+).
//!
//! Postgres makes UPDATE and DELETE on a table FAIL when a published row filter
//! uses columns outside its replica identity, or a column list leaves one out.
//! pgcdc must never do that to the application, so preflight computes both sides
//! from the catalog (the filter as Postgres parsed it, in a publication created
//! and rolled back) and refuses such a filter, configured or found, while the
//! publication publishes updates or deletes.

use std::collections::BTreeSet;

use pgcdc_schema::{quote_ident, quote_literal, TableName};
use tokio_postgres::Client;

use super::{fail, ok, sql_message, Check};
use crate::config::{Config, TableEntry};

/// First major with publication row filters and column lists.
const FILTERS_MAJOR: u32 = 15;
/// First major with `publish_generated_columns`.
const GENERATED_MAJOR: u32 = 18;
/// Name of the publication created (and rolled back) to let Postgres parse a filter.
const PROBE: &str = "pgcdc_preflight_probe";

/// The publication's `WITH (...)` options pgcdc creates it with.
fn options(config: &Config) -> String {
    let mut options = format!(
        "publish = {}, publish_via_partition_root = true",
        quote_literal(&config.source.publish)
    );
    if config.source.publish_generated_columns {
        options.push_str(", publish_generated_columns = stored");
    }
    options
}

/// `FOR TABLE ...` of the configured tables, with filters and column lists.
fn table_list<'a>(entries: impl IntoIterator<Item = &'a TableEntry>) -> String {
    entries
        .into_iter()
        .map(TableEntry::publication_sql)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement that creates the publication as configured.
pub(crate) fn create_sql(config: &Config) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH ({})",
        quote_ident(&config.source.publication),
        table_list(config.source.tables.entries()),
        options(config)
    )
}

/// Creates the publication when missing. Returns whether pgcdc created it.
pub(crate) async fn ensure(
    config: &Config,
    client: &Client,
) -> Result<bool, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.source.publication],
        )
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    // One statement over the extended protocol: a filter cannot smuggle in another.
    client.execute(create_sql(config).as_str(), &[]).await?;
    tracing::info!(publication = %config.source.publication, "created publication");
    Ok(true)
}

/// A row filter and column list as the catalog holds them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Published {
    /// The filter as Postgres prints it (`pg_get_expr`).
    filter: Option<String>,
    /// Columns the filter reads.
    filter_columns: BTreeSet<String>,
    /// The column list (None: every column).
    columns: Option<BTreeSet<String>>,
}

/// Reads `table`'s filter and column list in `publication` (None: not in it by name).
async fn published(
    client: &Client,
    publication: &str,
    oid: u32,
) -> Result<Option<Published>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT pg_get_expr(pr.prqual, pr.prrelid), pr.prqual::text, \
             (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
              WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)) \
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid = $2",
            &[&publication, &oid],
        )
        .await?
    else {
        return Ok(None);
    };
    let filter: Option<String> = row.get(0);
    let tree: Option<String> = row.get(1);
    let columns: Option<Vec<String>> = row.get(2);
    let attnums = tree.as_deref().map(var_attnums).unwrap_or_default();
    let filter_columns = if attnums.is_empty() {
        BTreeSet::new()
    } else {
        let rows = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum = ANY ($2)",
                &[&oid, &attnums],
            )
            .await?;
        rows.iter().map(|r| r.get(0)).collect()
    };
    Ok(Some(Published {
        filter,
        filter_columns,
        columns: columns.map(|c| c.into_iter().collect()),
    }))
}

/// Attribute numbers of the Vars in a filter's node tree (`{VAR ... :varattno 3 ...}`):
/// a publication filter reads only its own table's columns.
fn var_attnums(tree: &str) -> Vec<i16> {
    let mut found = BTreeSet::new();
    for piece in tree.split(":varattno ").skip(1) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<i16>() {
            if n > 0 {
                found.insert(n);
            }
        }
    }
    found.into_iter().collect()
}

/// How Postgres parses `entry`'s filter and column list: a publication with just
/// that table is created and rolled back. Err: Postgres refused it (the message);
/// Ok(None): the role may not create publications here, so nothing was learned.
async fn probe(client: &Client, entry: &TableEntry, oid: u32) -> Result<Option<Published>, String> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| sql_message(&e))?;
    let sql = format!(
        "CREATE PUBLICATION {PROBE} FOR TABLE {}",
        entry.publication_sql()
    );
    let result = match client.execute(sql.as_str(), &[]).await {
        Ok(_) => published(client, PROBE, oid)
            .await
            .map_err(|e| sql_message(&e))
            .map(|p| Some(p.unwrap_or_default())),
        // No CREATE on the database: the filter is compared as written instead.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(None)
        }
        Err(e) => Err(sql_message(&e)),
    };
    // Always rolled back: the probe must leave nothing behind.
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

/// The table's replica identity: its kind ('d', 'i', 'f', 'n'), the identity's columns,
/// and every stored column (a FULL identity's column list must hold them all).
async fn replica_identity(
    client: &Client,
    oid: u32,
) -> Result<(String, BTreeSet<String>, BTreeSet<String>), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT c.relreplident::text, \
             COALESCE((SELECT array_agg(a.attname::text) FROM pg_index i \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
               WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) \
                 OR (c.relreplident = 'i' AND i.indisreplident))), '{}'), \
             COALESCE((SELECT array_agg(a.attname::text) FROM pg_attribute a \
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}') \
             FROM pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    let key: Vec<String> = row.get(1);
    let all: Vec<String> = row.get(2);
    Ok((
        row.get(0),
        key.into_iter().collect(),
        all.into_iter().collect(),
    ))
}

/// Why `published` would make UPDATE / DELETE on the table fail, if it would.
async fn identity_problem(
    client: &Client,
    oid: u32,
    published: &Published,
) -> Result<Option<String>, tokio_postgres::Error> {
    let (kind, key, all) = replica_identity(client, oid).await?;
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    if kind != "f" {
        let outside: BTreeSet<String> =
            published.filter_columns.difference(&key).cloned().collect();
        if !outside.is_empty() {
            return Ok(Some(format!(
                "its row filter reads {} outside the replica identity ({})",
                list(&outside),
                if key.is_empty() {
                    "none".to_string()
                } else {
                    list(&key)
                }
            )));
        }
    }
    if let Some(columns) = &published.columns {
        let needed = if kind == "f" { &all } else { &key };
        let missing: BTreeSet<String> = needed.difference(columns).cloned().collect();
        if !missing.is_empty() {
            return Ok(Some(format!(
                "its column list leaves out {} of the replica identity{}",
                list(&missing),
                if kind == "f" {
                    " (FULL: every column)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(None)
}

/// What preflight knows of the publication before these checks.
struct Found<'a> {
    /// The publication exists.
    exists: bool,
    /// It publishes updates or deletes (or will, when created as configured).
    updates_or_deletes: bool,
    /// The role may create it (owns every table, or is superuser).
    can_create: bool,
    /// Each configured table's OID, when found.
    resolved: &'a [(TableName, Option<u32>)],
}

/// Checks row filters, column lists and generated columns against the server and,
/// when the publication exists, against it. `resolved`: each configured table's OID.
pub(crate) async fn checks(
    config: &Config,
    client: &Client,
    major: u32,
    can_create: bool,
    resolved: &[(TableName, Option<u32>)],
) -> Vec<Check> {
    let publication = &config.source.publication;
    let row = client
        .query_opt(
            "SELECT pubupdate OR pubdelete FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await;
    let found = match row {
        Ok(row) => Found {
            exists: row.is_some(),
            updates_or_deletes: row.map_or_else(
                || {
                    config
                        .source
                        .published_operations()
                        .iter()
                        .any(|o| *o == "update" || *o == "delete")
                },
                |r| r.get(0),
            ),
            can_create,
            resolved,
        },
        Err(e) => {
            return vec![fail(
                format!("publication {publication} filters"),
                sql_message(&e),
                "check the source connection",
            )]
        }
    };
    let mut checks = Vec::new();
    if config.source.publish_generated_columns {
        checks.push(generated_columns(config, client, major, found.exists).await);
    }
    let entries = config.source.tables.entries();
    if major < FILTERS_MAJOR {
        for entry in entries.iter().filter(|e| e.is_filtered()) {
            checks.push(fail(
                format!("table {} filter", entry.name),
                format!(
                    "source.tables gives {} a row filter or column list, which publications have only from PostgreSQL {FILTERS_MAJOR}; the source runs {major}",
                    entry.name
                ),
                "remove `where` and `columns` from its entry (a sink's `filter` can drop events instead, after they leave the server), or upgrade the source to PostgreSQL 15+",
            ));
        }
        return checks;
    }
    let set_table = format!(
        "ALTER PUBLICATION {} SET TABLE {};",
        quote_ident(publication),
        table_list(entries)
    );
    for (entry, (_, oid)) in entries.iter().zip(found.resolved) {
        let Some(oid) = *oid else { continue };
        let name = format!("table {} filter", entry.name);
        let existing = if found.exists {
            match published(client, publication, oid).await {
                Ok(p) => p,
                Err(e) => {
                    checks.push(fail(name, sql_message(&e), "check the source connection"));
                    continue;
                }
            }
        } else {
            None
        };
        let wanted = if !entry.is_filtered() {
            Some(Published::default())
        } else if found.can_create {
            match probe(client, entry, oid).await {
                Ok(p) => p,
                Err(message) => {
                    checks.push(fail(
                        name,
                        format!("Postgres refuses the row filter or column list of {} in source.tables: {message}", entry.name),
                        "correct `where` / `columns`: a publication row filter may read only the table's own columns with built-in immutable functions and operators (no subqueries, no user-defined functions)",
                    ));
                    continue;
                }
            }
        } else {
            None
        };
        // What will be in force: the publication's, when it exists.
        let in_force = match (&existing, &wanted) {
            (Some(existing), Some(wanted)) if existing != wanted => {
                checks.push(fail(
                    name,
                    format!(
                        "publication {publication} publishes {} with {}, but source.tables asks for {}",
                        entry.name,
                        describe(existing),
                        describe(wanted)
                    ),
                    format!("make the publication match the config: {set_table}"),
                ));
                continue;
            }
            (Some(existing), None) => {
                // Not the owner, so no probe: compare as written.
                let loose = |s: Option<&str>| {
                    s.map(|s| s.replace(|c: char| c.is_whitespace() || c == '(' || c == ')', ""))
                };
                let same_filter =
                    loose(existing.filter.as_deref()) == loose(entry.row_filter.as_deref());
                let same_columns =
                    existing.columns == entry.columns.as_ref().map(|c| c.iter().cloned().collect());
                if !(same_filter && same_columns) {
                    checks.push(fail(
                        name,
                        format!(
                            "publication {publication} publishes {} with {}, which does not look like source.tables' where = {:?}, columns = {:?}",
                            entry.name,
                            describe(existing),
                            entry.row_filter,
                            entry.columns
                        ),
                        format!("as the table's owner make the publication match the config: {set_table} (or, if they mean the same, write `where` exactly as Postgres prints it)"),
                    ));
                    continue;
                }
                existing
            }
            (Some(existing), Some(_)) => existing,
            (None, Some(wanted)) => wanted,
            (None, None) => continue,
        };
        if in_force == &Published::default() {
            continue;
        }
        if found.updates_or_deletes {
            match identity_problem(client, oid, in_force).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    checks.push(fail(
                        name,
                        format!(
                            "{} is published with updates or deletes, but {why}: Postgres would then make every UPDATE and DELETE on {} fail",
                            entry.name, entry.name
                        ),
                        format!(
                            "widen the replica identity (ALTER TABLE {} REPLICA IDENTITY FULL, or USING INDEX over the columns used), or publish inserts only: source.publish = \"insert\"{}",
                            entry.name.quoted(),
                            if found.exists {
                                format!(" and ALTER PUBLICATION {} SET (publish = 'insert');", quote_ident(publication))
                            } else {
                                String::new()
                            }
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    checks.push(fail(name, sql_message(&e), "check the source connection"));
                    continue;
                }
            }
        }
        checks.push(ok(name, describe(in_force)));
    }
    checks
}

fn describe(p: &Published) -> String {
    let filter = p
        .filter
        .as_deref()
        .map_or("no row filter".to_string(), |f| format!("row filter {f}"));
    let columns = p.columns.as_ref().map_or("every column".to_string(), |c| {
        format!(
            "columns ({})",
            c.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    });
    format!("{filter}, {columns}")
}

/// `source.publish_generated_columns`: needs 18+, and an existing publication set so.
async fn generated_columns(config: &Config, client: &Client, major: u32, exists: bool) -> Check {
    let name = "publish_generated_columns";
    if major < GENERATED_MAJOR {
        return fail(
            name,
            format!("source.publish_generated_columns needs PostgreSQL {GENERATED_MAJOR}+; the source runs {major}"),
            "remove source.publish_generated_columns (a sink's transform can compute the value instead), or upgrade the source",
        );
    }
    if !exists {
        return ok(
            name,
            "the publication will be created with publish_generated_columns = stored",
        );
    }
    let row = client
        .query_one(
            "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
            &[&config.source.publication],
        )
        .await;
    match row {
        Ok(row) if row.get::<_, String>(0) == "s" => {
            ok(name, "stored generated columns are published")
        }
        Ok(_) => fail(
            name,
            format!(
                "publication {} does not publish generated columns",
                config.source.publication
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish_generated_columns = stored);",
                quote_ident(&config.source.publication)
            ),
        ),
        Err(e) => fail(name, sql_message(&e), "check the source connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::var_attnums;

    #[test]
    fn filter_columns_come_from_the_node_tree() {
        let tree = "{OPEXPR :opno 531 :args ({VAR :varno 1 :varattno 2 :vartype 25} \
                    {VAR :varno 1 :varattno 12 :vartype 23} {CONST :consttype 25})}";
        assert_eq!(var_attnums(tree), vec![2, 12]);
        assert!(var_attnums("{CONST :consttype 16}").is_empty());
    }
}
