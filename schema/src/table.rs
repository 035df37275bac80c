//! SQL names: [`TableName`] (parsed once, from the config) and the one pair of
//! quoting helpers every SQL or replication command pgcdc builds goes through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema (default `public`).
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(s: &str) -> Result<TableName, String> {
        let (schema, table) = TableName::split(s).ok_or_else(|| {
            format!("{s:?} is not a table name: expected \"schema.table\", e.g. \"public.permits\"")
        })?;
        Ok(TableName {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// What [`TableName::parse`] reads, as borrowed schema and table (None where
    /// it fails): for a hot path that only compares names.
    pub fn split(s: &str) -> Option<(&str, &str)> {
        let (schema, table) = s.split_once('.').unwrap_or(("public", s));
        let bad = schema.is_empty() || table.is_empty() || table.contains('.') || s.contains('"');
        (!bad).then_some((schema, table))
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableName::parse(s)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Reads a config string (`"public.permits"`); a bad one fails with
/// [`TableName::parse`]'s message at the key's path.
impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TableName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Quotes an SQL identifier (`a"b` -> `"a""b"`).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is always on since PG 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_quotes() {
        let t = TableName::parse("permits").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "public.permits");
        assert_eq!(t.quoted(), "\"public\".\"permits\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".t").is_err());
        assert!(TableName::parse("a.\"b\"").is_err());
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
