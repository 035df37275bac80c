//! `source.tables`: each entry a name (`"public.permits"`) or a table
//! (`{ name = "public.permits", where = "status <> 'draft'", columns = [...] }`)
//! whose row filter and column list go into the publication (PostgreSQL 15+),
//! so filtered rows and columns never leave the server.

use std::collections::HashSet;
use std::fmt;

use pgcdc_schema::TableName;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{key_err, ConfigError};

/// Longest row filter accepted: a publication's filter is a short predicate.
const MAX_FILTER_LEN: usize = 4_096;

/// `source.tables`, parsed.
#[derive(Debug, Default)]
pub(crate) struct SourceTables {
    names: Vec<TableName>,
    entries: Vec<TableEntry>,
}

/// One `source.tables` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableEntry {
    /// The table.
    pub(crate) name: TableName,
    /// Publication row filter (`where`), as written.
    pub(crate) row_filter: Option<String>,
    /// Publication column list (`columns`), as written.
    pub(crate) columns: Option<Vec<String>>,
}

impl TableEntry {
    /// Whether the entry asks for a row filter or a column list.
    pub(crate) fn is_filtered(&self) -> bool {
        self.row_filter.is_some() || self.columns.is_some()
    }

    /// The table as written in CREATE / ALTER PUBLICATION: name, column list, filter.
    pub(crate) fn publication_sql(&self) -> String {
        let mut sql = self.name.quoted();
        if let Some(columns) = &self.columns {
            let list: Vec<String> = columns
                .iter()
                .map(|c| pgcdc_schema::quote_ident(c))
                .collect();
            sql.push_str(&format!(" ({})", list.join(", ")));
        }
        if let Some(filter) = &self.row_filter {
            sql.push_str(&format!(" WHERE ({filter})"));
        }
        sql
    }
}

impl SourceTables {
    /// The tables' names, in config order.
    pub(crate) fn names(&self) -> &[TableName] {
        &self.names
    }

    /// The entries, with their filters, in config order.
    pub(crate) fn entries(&self) -> &[TableEntry] {
        &self.entries
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if !seen.insert(&entry.name) {
                return Err(key_err(
                    format!("source.tables[{i}]"),
                    format!("table {} is listed twice; list it once", entry.name),
                ));
            }
            if let Some(filter) = &entry.row_filter {
                if filter.trim().is_empty()
                    || filter.len() > MAX_FILTER_LEN
                    || filter.contains('\0')
                {
                    return Err(key_err(
                        format!("source.tables[{i}].where"),
                        format!("a row filter is a non-empty SQL condition of at most {MAX_FILTER_LEN} characters, e.g. where = \"status <> 'draft'\"; leave `where` out to publish every row"),
                    ));
                }
            }
            if let Some(columns) = &entry.columns {
                let mut names = HashSet::new();
                if columns.is_empty() {
                    return Err(key_err(
                        format!("source.tables[{i}].columns"),
                        "list the columns to publish (the replica identity's among them), or leave `columns` out to publish all",
                    ));
                }
                for (j, c) in columns.iter().enumerate() {
                    if c.is_empty() || c.len() > 63 || c.contains('\0') || !names.insert(c) {
                        return Err(key_err(
                            format!("source.tables[{i}].columns[{j}]"),
                            format!(
                                "{c:?} is not a column name (1-63 characters, each listed once)"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for SourceTables {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<TableEntry>::deserialize(d)?;
        Ok(SourceTables {
            names: entries.iter().map(|e| e.name.clone()).collect(),
            entries,
        })
    }
}

/// The table form of an entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    name: TableName,
    #[serde(default, rename = "where")]
    row_filter: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for TableEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = TableEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table name (\"public.permits\") or a table ({ name = \"public.permits\", where = \"...\", columns = [...] })",
                )
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<TableEntry, E> {
                Ok(TableEntry {
                    name: TableName::parse(s).map_err(E::custom)?,
                    row_filter: None,
                    columns: None,
                })
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TableEntry, M::Error> {
                let spec = TableSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TableEntry {
                    name: spec.name,
                    row_filter: spec.row_filter,
                    columns: spec.columns,
                })
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}
