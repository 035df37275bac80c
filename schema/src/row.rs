//! [`Row`]: a row's column values by name, in table order.
//!
//! Every change carries up to three rows (key, old, new), built in the reader
//! and again when the journal is read. A `serde_json::Map` made each of them
//! an `IndexMap`: a hash table, a SipHash per column and an owned copy of
//! every column name. A row here is a vector of (name, value) pairs whose
//! names are shared with the relation they come from ([`Name`]: cloning one
//! is a reference count), looked up by a scan (rows are tens of columns).
//! It serialises as the JSON object the map did, in the same order.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A column name, shared by every row of a relation.
pub type Name = Arc<str>;

/// Column values by column name, in table column order.
#[derive(Clone, Default)]
pub struct Row {
    entries: Vec<(Name, Value)>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Row {
        Row::default()
    }

    /// An empty row with room for `n` columns.
    pub fn with_capacity(n: usize) -> Row {
        Row {
            entries: Vec::with_capacity(n),
        }
    }

    /// Sets `name` to `value`: in place if the row has the column, else at the
    /// end. Returns the value it replaced.
    pub fn insert(&mut self, name: Name, value: Value) -> Option<Value> {
        match self.entries.iter_mut().find(|(n, _)| **n == *name) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.entries.push((name, value));
                None
            }
        }
    }

    /// Sets `name` to `value` unless the row has the column.
    pub fn insert_if_absent(&mut self, name: Name, value: impl FnOnce() -> Value) {
        if !self.contains_key(&name) {
            self.entries.push((name, value()));
        }
    }

    /// Moves every column of `other` in (as [`Row::insert`] does each).
    pub fn append(&mut self, other: &mut Row) {
        for (n, v) in std::mem::take(&mut other.entries) {
            self.insert(n, v);
        }
    }

    /// Appends a column the caller knows the row does not have yet (a row being
    /// built from a relation's distinct columns).
    pub fn push(&mut self, name: Name, value: Value) {
        self.entries.push((name, value));
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Whether the row has column `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Takes column `name` out, keeping the others' order.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let at = self.entries.iter().position(|(n, _)| &**n == name)?;
        Some(self.entries.remove(at).1)
    }

    /// Keeps the columns for which `keep` says true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        self.entries.retain_mut(|(n, v)| keep(n, v));
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the row has no column.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (name, value) in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Name, &Value)> + '_ {
        self.entries.iter().map(|(n, v)| (n, v))
    }

    /// The column names in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Name> + '_ {
        self.entries.iter().map(|(n, _)| n)
    }

    /// The row as a JSON object, taking its values.
    pub fn into_map(self) -> Map<String, Value> {
        self.entries
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect()
    }
}

/// Equal when they hold the same columns with the same values, in any order
/// (as `serde_json::Map` compares).
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .all(|(n, v)| other.get(n).is_some_and(|w| w == v))
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<Name>> FromIterator<(K, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Row {
        let mut row = Row::new();
        for (k, v) in iter {
            row.insert(k.into(), v);
        }
        row
    }
}

impl IntoIterator for Row {
    type Item = (Name, Value);
    type IntoIter = std::vec::IntoIter<(Name, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a Row {
    type Item = (&'a Name, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Name, Value)>,
        fn(&'a (Name, Value)) -> (&'a Name, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(n, v)| (n, v))
    }
}

impl From<Map<String, Value>> for Row {
    fn from(map: Map<String, Value>) -> Row {
        Row {
            entries: map.into_iter().map(|(k, v)| (Name::from(k), v)).collect(),
        }
    }
}

impl From<Row> for Value {
    fn from(row: Row) -> Value {
        Value::Object(row.into_map())
    }
}

impl std::ops::Index<&str> for Row {
    type Output = Value;
    /// The value of column `name`, or null (as `serde_json::Map`'s index does
    /// for a missing key through `Value`).
    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (n, v) in &self.entries {
            map.serialize_entry(&**n, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Row, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of column values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Row, A::Error> {
                let mut row = Row::with_capacity(access.size_hint().unwrap_or(0).min(1024));
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    row.insert(k.into(), v);
                }
                Ok(row)
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn serialises_like_the_map_it_replaces_in_order() {
        let mut row = Row::new();
        row.insert("b".into(), json!(1));
        row.insert("a".into(), json!("x"));
        row.insert("c".into(), Value::Null);
        let text = serde_json::to_string(&row).unwrap_or_default();
        assert_eq!(text, r#"{"b":1,"a":"x","c":null}"#);
        let map: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(serde_json::to_string(&map).unwrap_or_default(), text);
        let back: Row = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(
            back.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert_eq!(
            Value::from(back.clone()),
            serde_json::from_str::<Value>(&text).unwrap_or_default()
        );
    }

    #[test]
    fn insert_replaces_in_place_remove_keeps_order_equality_ignores_order() {
        let mut row: Row = [("a", json!(1)), ("b", json!(2)), ("c", json!(3))]
            .into_iter()
            .collect();
        assert_eq!(row.insert("b".into(), json!(20)), Some(json!(2)));
        assert_eq!(
            row.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(row.remove("a"), Some(json!(1)));
        assert_eq!(row.keys().map(|k| &**k).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(row["c"], json!(3));
        assert_eq!(row["zz"], Value::Null);
        let other: Row = [("c", json!(3)), ("b", json!(20))].into_iter().collect();
        assert_eq!(row, other);
        let different: Row = [("c", json!(3)), ("b", json!(2))].into_iter().collect();
        assert_ne!(row, different);
    }
}
