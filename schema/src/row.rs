//! [`Row`]: a row's column values by name, in table order.
//!
//! Every change carries up to three rows (key, old, new), built in the reader
//! and again when the journal is read. A `serde_json::Map` made each of them
//! an `IndexMap`: a hash table, a SipHash per column and an owned copy of
//! every column name. A row here is a vector of (name, value) pairs whose
//! names are shared with the relation they come from ([`Name`]: cloning one
//! is a reference count), looked up by a scan (rows are tens of columns).
//! It serialises as the JSON object the map did, in the same order.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{MapAccess, Visitor};
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::packed::{self, Bad, Next, Packed, Reader};
use crate::value::PgType;

/// A column name, shared by every row of a relation.
pub type Name = Arc<str>;

/// A relation's column names in table order, shared by its packed rows.
pub type Names = Arc<[Name]>;

/// Column values by column name, in table column order.
#[derive(Clone)]
pub struct Row {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// (name, value) pairs.
    Pairs(Vec<(Name, Value)>),
    /// Packed: what the reader builds and the journal gives back.
    Packed(PackedRow),
}

/// A row as packed bytes: `(column ref, value)*`, a ref being the column's index
/// in `names` plus one, or 0 followed by the name. The bytes were checked when
/// the row was made, so reading them cannot fail.
#[derive(Clone)]
struct PackedRow {
    names: Names,
    bytes: Vec<u8>,
    len: usize,
    /// The pairs, decoded on first need (a value looked up, a row iterated).
    pairs: OnceLock<Vec<(Name, Value)>>,
}

impl Default for Row {
    fn default() -> Row {
        Row {
            repr: Repr::Pairs(Vec::new()),
        }
    }
}

impl PackedRow {
    /// Each column's name and packed value, in order.
    fn entries(&self) -> impl Iterator<Item = Result<(Cow<'_, str>, Packed<'_>), Bad>> + '_ {
        let mut r = Reader::new(&self.bytes);
        (0..self.len).map(move |_| entry(&mut r, &self.names))
    }

    fn decode(&self) -> Vec<(Name, Value)> {
        let mut r = Reader::new(&self.bytes);
        let mut pairs = Vec::with_capacity(self.len);
        for _ in 0..self.len {
            let Ok(name) = column(&mut r, &self.names) else {
                break;
            };
            let Ok(value) = r.value_lossy() else {
                break;
            };
            pairs.push((name, value));
        }
        pairs
    }
}

impl PackedRow {
    /// [`Row::project`] in one pass, for the common case: `indexes` ascending
    /// and the row's columns in relation order (as the reader packs them); None
    /// otherwise, and the caller takes the general path.
    fn project_in_order(&self, indexes: &[usize]) -> Option<Row> {
        if indexes.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        let mut out = Packer::new(self.names.clone(), 4 * indexes.len() + 16);
        let mut wanted = indexes.iter().copied().peekable();
        let mut r = Reader::new(&self.bytes);
        let mut last = None;
        // Whether a wanted column was taken as missing: that holds only if the
        // rest of the row is in order too, so then the whole row is read.
        let mut nulled = false;
        for _ in 0..self.len {
            let Ref::At(i) = column_ref(&mut r, self.names.len()).ok()? else {
                return None;
            };
            if last.is_some_and(|l| l >= i) {
                return None;
            }
            last = Some(i);
            let from = r.at();
            r.skip_value().ok()?;
            // Columns the row lacks before this one are null.
            while let Some(&w) = wanted.peek().filter(|&&w| w < i) {
                out.null(w);
                nulled = true;
                wanted.next();
            }
            if wanted.peek() == Some(&i) {
                if out.column(i) {
                    out.bytes.extend_from_slice(&self.bytes[from..r.at()]);
                }
                wanted.next();
                // Every wanted column found where it is: the rest of the row (a
                // key is usually the first column of nine) is not read.
                if !nulled && wanted.peek().is_none() {
                    return Some(out.finish());
                }
            }
        }
        for w in wanted {
            out.null(w);
        }
        Some(out.finish())
    }
}

/// A row's value as [`Row::for_each_json_entry`] hands it.
pub(crate) enum JsonValue<'r, 'a> {
    /// Packed bytes: the reader is at the value and must be left past it.
    Packed(&'r mut Reader<'a>),
    /// A decoded value.
    Value(&'r Value),
}

/// A column ref of packed row bytes.
enum Ref<'a> {
    /// The column at this index of the row's names.
    At(usize),
    /// A column its relation does not list, named inline.
    Named(Cow<'a, str>),
}

/// Reads the next column ref, checking it against the `len` names of the row.
fn column_ref<'a>(r: &mut Reader<'a>, len: usize) -> Result<Ref<'a>, Bad> {
    match r.varint()? {
        0 => r.str_lossy().map(Ref::Named),
        i if i as usize <= len => Ok(Ref::At((i - 1) as usize)),
        i => Err(format!("column {i} is past the relation's {len}")),
    }
}

/// The next column ref as a shared name.
fn column(r: &mut Reader<'_>, names: &Names) -> Result<Name, Bad> {
    Ok(match column_ref(r, names.len())? {
        Ref::At(i) => names[i].clone(),
        Ref::Named(n) => Name::from(&*n),
    })
}

/// The next column ref as the column's name.
fn name<'a>(r: &mut Reader<'a>, names: &'a Names) -> Result<Cow<'a, str>, Bad> {
    Ok(match column_ref(r, names.len())? {
        Ref::At(i) => Cow::Borrowed(&*names[i]),
        Ref::Named(n) => n,
    })
}

/// The next (name, value) of packed row bytes.
fn entry<'a>(r: &mut Reader<'a>, names: &'a Names) -> Result<(Cow<'a, str>, Packed<'a>), Bad> {
    let name = name(r, names)?;
    let from = r.at();
    r.skip_value()?;
    Ok((name, Packed(r.since(from))))
}

/// Builds a packed row column by column (the reader's rows, a snapshot's).
pub struct Packer {
    names: Names,
    bytes: Vec<u8>,
    len: usize,
}

impl Packer {
    /// A row of the relation whose columns are `names`, with room for `capacity` bytes.
    pub fn new(names: Names, capacity: usize) -> Packer {
        Packer {
            names,
            bytes: Vec::with_capacity(capacity),
            len: 0,
        }
    }

    fn column(&mut self, column: usize) -> bool {
        if column >= self.names.len() {
            return false;
        }
        packed::put_varint(&mut self.bytes, column as u64 + 1);
        self.len += 1;
        true
    }

    /// Column `column` (an index in `names`; others are ignored) is null.
    pub fn null(&mut self, column: usize) {
        if self.column(column) {
            packed::put_null(&mut self.bytes);
        }
    }

    /// Column `column` holds the value of type `ty` whose text form is `text`
    /// (as `value::decode_text` decodes it).
    pub fn text(&mut self, column: usize, ty: &PgType, text: &str) {
        if self.column(column) {
            packed::pack_text(ty, text, &mut self.bytes);
        }
    }

    /// Column `column` holds `value`.
    pub fn value(&mut self, column: usize, value: &Value) {
        if self.column(column) {
            packed::put_value(&mut self.bytes, value);
        }
    }

    /// The row.
    pub fn finish(self) -> Row {
        Row::packed_unchecked(self.names, self.bytes, self.len)
    }
}

impl Row {
    /// An empty row.
    pub fn new() -> Row {
        Row::default()
    }

    /// An empty row with room for `n` columns.
    pub fn with_capacity(n: usize) -> Row {
        Row {
            repr: Repr::Pairs(Vec::with_capacity(n)),
        }
    }

    fn packed_unchecked(names: Names, bytes: Vec<u8>, len: usize) -> Row {
        Row {
            repr: Repr::Packed(PackedRow {
                names,
                bytes,
                len,
                pairs: OnceLock::new(),
            }),
        }
    }

    /// Reads `n` packed columns of the relation whose columns are `names` from `r`
    /// (a journal record), checking every byte.
    pub fn read_packed(r: &mut Reader<'_>, n: usize, names: &Names) -> Result<Row, Bad> {
        let from = r.at();
        for _ in 0..n {
            // A name read lossily (owned) was not UTF-8: the record is damaged.
            if let Ref::Named(Cow::Owned(_)) = column_ref(r, names.len())? {
                return Err("an inline column name is not UTF-8".into());
            }
            r.skip_value()?;
        }
        Ok(Row::packed_unchecked(
            names.clone(),
            r.since(from).to_vec(),
            n,
        ))
    }

    /// The packed form, when the row has one: its column names, its number of
    /// columns and its bytes (what [`Row::read_packed`] reads).
    pub fn packed(&self) -> Option<(&Names, usize, &[u8])> {
        match &self.repr {
            Repr::Packed(p) => Some((&p.names, p.len, &p.bytes)),
            Repr::Pairs(_) => None,
        }
    }

    /// The columns at `indexes` of a packed row's relation, in that order (null
    /// where the row lacks one). None for a row that is not packed.
    pub fn project(&self, indexes: &[usize]) -> Option<Row> {
        let Repr::Packed(p) = &self.repr else {
            return None;
        };
        p.project_in_order(indexes)
            .or_else(|| p.project_any(indexes))
    }
}

impl PackedRow {
    /// [`Row::project`] for any row and any order of `indexes`.
    fn project_any(&self, indexes: &[usize]) -> Option<Row> {
        let p = self;
        let mut at: Vec<Option<(usize, usize)>> = vec![None; p.names.len()];
        let mut r = Reader::new(&p.bytes);
        for _ in 0..p.len {
            let index = match column_ref(&mut r, p.names.len()).ok()? {
                Ref::At(i) => Some(i),
                Ref::Named(_) => None,
            };
            let from = r.at();
            r.skip_value().ok()?;
            if let Some(slot) = index.and_then(|i| at.get_mut(i)) {
                *slot = Some((from, r.at()));
            }
        }
        let mut out = Packer::new(p.names.clone(), 4 * indexes.len() + 16);
        for &i in indexes {
            if out.column(i) {
                match at.get(i).copied().flatten() {
                    Some((from, to)) => out.bytes.extend_from_slice(&p.bytes[from..to]),
                    None => packed::put_null(&mut out.bytes),
                }
            }
        }
        Some(out.finish())
    }
}

impl Row {
    /// Calls `f` with each column's name and value, in order, as `Serialize` walks
    /// them: a packed row hands its reader at each value (the bytes are walked once).
    pub(crate) fn for_each_json_entry(
        &self,
        mut f: impl FnMut(&str, JsonValue<'_, '_>) -> Result<(), Bad>,
    ) -> Result<(), Bad> {
        match &self.repr {
            Repr::Pairs(v) => v.iter().try_for_each(|(n, v)| f(n, JsonValue::Value(v))),
            Repr::Packed(p) => {
                let mut r = Reader::new(&p.bytes);
                for _ in 0..p.len {
                    let name = name(&mut r, &p.names).map_err(|e| format!("packed row: {e}"))?;
                    f(&name, JsonValue::Packed(&mut r))
                        .map_err(|e| format!("packed value: {e}"))?;
                }
                Ok(())
            }
        }
    }

    fn pairs(&self) -> &[(Name, Value)] {
        match &self.repr {
            Repr::Pairs(v) => v,
            Repr::Packed(p) => p.pairs.get_or_init(|| p.decode()),
        }
    }

    fn pairs_mut(&mut self) -> &mut Vec<(Name, Value)> {
        if let Repr::Packed(p) = &mut self.repr {
            let pairs = p.pairs.take().unwrap_or_else(|| p.decode());
            self.repr = Repr::Pairs(pairs);
        }
        match &mut self.repr {
            Repr::Pairs(v) => v,
            Repr::Packed(_) => unreachable!("made pairs above"),
        }
    }

    fn into_pairs(self) -> Vec<(Name, Value)> {
        match self.repr {
            Repr::Pairs(v) => v,
            Repr::Packed(mut p) => p.pairs.take().unwrap_or_else(|| p.decode()),
        }
    }

    /// Sets `name` to `value`: in place if the row has the column, else at the
    /// end. Returns the value it replaced.
    pub fn insert(&mut self, name: Name, value: Value) -> Option<Value> {
        let entries = self.pairs_mut();
        match entries.iter_mut().find(|(n, _)| **n == *name) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                entries.push((name, value));
                None
            }
        }
    }

    /// Sets `name` to `value` unless the row has the column.
    pub fn insert_if_absent(&mut self, name: Name, value: impl FnOnce() -> Value) {
        if !self.contains_key(&name) {
            self.pairs_mut().push((name, value()));
        }
    }

    /// Moves every column of `other` in (as [`Row::insert`] does each).
    pub fn append(&mut self, other: &mut Row) {
        for (n, v) in std::mem::take(other).into_pairs() {
            self.insert(n, v);
        }
    }

    /// Appends a column the caller knows the row does not have yet (a row being
    /// built from a relation's distinct columns).
    pub fn push(&mut self, name: Name, value: Value) {
        self.pairs_mut().push((name, value));
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.pairs()
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Whether the row has column `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        match &self.repr {
            Repr::Packed(p) if p.pairs.get().is_none() => {
                p.entries().any(|e| e.is_ok_and(|(n, _)| n == name))
            }
            _ => self.get(name).is_some(),
        }
    }

    /// Takes column `name` out, keeping the others' order.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let entries = self.pairs_mut();
        let at = entries.iter().position(|(n, _)| &**n == name)?;
        Some(entries.remove(at).1)
    }

    /// Keeps the columns for which `keep` says true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        self.pairs_mut().retain_mut(|(n, v)| keep(n, v));
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Pairs(v) => v.len(),
            Repr::Packed(p) => p.len,
        }
    }

    /// Whether the row has no column.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (name, value) in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Name, &Value)> + '_ {
        self.pairs().iter().map(|(n, v)| (n, v))
    }

    /// The column names in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Name> + '_ {
        self.pairs().iter().map(|(n, _)| n)
    }

    /// The row as a JSON object, taking its values.
    pub fn into_map(self) -> Map<String, Value> {
        self.into_pairs()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect()
    }

    /// About how many bytes the row holds on the heap (its share of a queue's
    /// budget): a packed row its bytes, a row of pairs each value's size.
    pub fn heap_bytes(&self) -> usize {
        const PAIR: usize = std::mem::size_of::<(Name, Value)>();
        let pairs = |v: &[(Name, Value)]| v.iter().map(|(_, v)| PAIR + value_bytes(v)).sum();
        match &self.repr {
            Repr::Pairs(v) => pairs(v),
            Repr::Packed(p) => p.bytes.len() + p.pairs.get().map_or(0, |v| pairs(v)),
        }
    }
}

/// Rough heap size of a JSON value: each node costs about its in-memory size.
fn value_bytes(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    NODE + match value {
        Value::String(s) => s.len(),
        // With arbitrary precision a number is its text, on the heap.
        Value::Number(n) => n.as_str().len(),
        Value::Array(items) => items.iter().map(value_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| 16 + k.len() + value_bytes(v)).sum(),
        Value::Null | Value::Bool(_) => 0,
    }
}

/// One column's value as a row holds it, for rendering without decoding a packed row.
#[derive(Clone, Copy)]
pub(crate) enum Cell<'a> {
    Value(&'a Value),
    Packed(Packed<'a>),
}

impl Cell<'_> {
    pub(crate) fn is_null(&self) -> bool {
        match self {
            Cell::Value(v) => v.is_null(),
            Cell::Packed(p) => p.is_null(),
        }
    }

    /// The value (decoded, for a packed one).
    fn to_value(self) -> Value {
        match self {
            Cell::Value(v) => v.clone(),
            Cell::Packed(p) => p.reader().value_lossy().unwrap_or(Value::Null),
        }
    }
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Value(v) => v.serialize(serializer),
            Cell::Packed(p) => p.serialize(serializer),
        }
    }
}

impl Row {
    /// Each column's name and value in order, read from the packed bytes of a
    /// packed row (nothing decoded).
    pub(crate) fn cells(&self) -> Result<Vec<(Cow<'_, str>, Cell<'_>)>, Bad> {
        match &self.repr {
            Repr::Pairs(v) => Ok(v
                .iter()
                .map(|(n, v)| (Cow::Borrowed(&**n), Cell::Value(v)))
                .collect()),
            Repr::Packed(p) => p
                .entries()
                .map(|e| e.map(|(n, v)| (n, Cell::Packed(v))))
                .collect(),
        }
    }

    /// Whether `other` holds each column of this row with an equal value; None
    /// when it lacks one. Packed rows are compared by their bytes, decoding only
    /// the values whose bytes differ.
    pub fn agrees_with(&self, other: &Row) -> Option<bool> {
        let (Ok(mine), Ok(theirs)) = (self.cells(), other.cells()) else {
            return None;
        };
        let mut all = true;
        for (name, cell) in mine {
            let (_, their) = theirs.iter().find(|(n, _)| *n == name)?;
            all &= match (cell, their) {
                (Cell::Packed(a), Cell::Packed(b)) if a.0 == b.0 => true,
                (Cell::Value(a), Cell::Value(b)) => a == *b,
                (a, b) => a.to_value() == b.to_value(),
            };
        }
        Some(all)
    }
}

/// Equal when they hold the same columns with the same values, in any order
/// (as `serde_json::Map` compares).
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        if let (Some((x, n, a)), Some((y, m, b))) = (self.packed(), other.packed()) {
            if n == m && a == b && (Arc::ptr_eq(x, y) || x == y) {
                return true;
            }
        }
        self.len() == other.len()
            && self
                .pairs()
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
        self.into_pairs().into_iter()
    }
}

impl<'a> IntoIterator for &'a Row {
    type Item = (&'a Name, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Name, Value)>,
        fn(&'a (Name, Value)) -> (&'a Name, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs().iter().map(|(n, v)| (n, v))
    }
}

impl From<Map<String, Value>> for Row {
    fn from(map: Map<String, Value>) -> Row {
        Row {
            repr: Repr::Pairs(map.into_iter().map(|(k, v)| (Name::from(k), v)).collect()),
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
        let mut map = serializer.serialize_map(Some(self.len()))?;
        match &self.repr {
            Repr::Pairs(v) => {
                for (n, v) in v {
                    map.serialize_entry(&**n, v)?;
                }
            }
            Repr::Packed(p) => {
                let mut r = Reader::new(&p.bytes);
                for _ in 0..p.len {
                    let name = name(&mut r, &p.names)
                        .map_err(|e| S::Error::custom(format!("packed row: {e}")))?;
                    map.serialize_entry(&*name, &Next::new(&mut r))?;
                }
            }
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
    use crate::packed::Reader;

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

    fn packed_row() -> Row {
        let names: Names = ["id", "status", "meta", "tags"]
            .into_iter()
            .map(Name::from)
            .collect();
        let mut p = Packer::new(names, 0);
        p.text(0, &PgType::Int8, "7");
        p.text(1, &PgType::Text, "appro\"ved");
        p.text(2, &PgType::Jsonb, r#"{"b": 1.50, "a": [null]}"#);
        p.null(3);
        p.null(9); // not a column of the relation: ignored
        p.finish()
    }

    /// The one-pass projection gives the general one's bytes wherever it applies,
    /// and leaves the rest to it.
    #[test]
    fn projections_in_order_match_the_general_path() {
        let names: Names = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(Name::from)
            .collect();
        // Rows missing columns (unchanged TOAST), and two out of order.
        let rows: Vec<Row> = [
            &[0, 1, 2, 3, 4][..],
            &[0, 2, 4],
            &[1, 3],
            &[],
            &[4],
            &[2, 0],
            // In order up to the first wanted column only.
            &[0, 3, 1],
        ]
        .iter()
        .map(|cols| {
            let mut p = Packer::new(names.clone(), 0);
            for &c in *cols {
                p.text(c, &PgType::Text, &format!("v{c}"));
            }
            p.finish()
        })
        .collect();
        let index_sets: [&[usize]; 8] =
            [&[0], &[1, 3], &[0, 4], &[2], &[3, 1], &[0, 0], &[4, 9], &[]];
        let mut fast_taken = 0;
        for row in &rows {
            let Repr::Packed(p) = &row.repr else {
                panic!("not packed");
            };
            for indexes in index_sets {
                let general = p
                    .project_any(indexes)
                    .map(|r| serde_json::to_string(&r).ok());
                let fast = p.project_in_order(indexes);
                fast_taken += usize::from(fast.is_some());
                if let Some(fast) = fast {
                    assert_eq!(
                        Some(serde_json::to_string(&fast).ok()),
                        general,
                        "{indexes:?}"
                    );
                    assert_eq!(fast.packed().map(|(_, n, b)| (n, b.to_vec())), {
                        let g = p.project_any(indexes).unwrap_or_default();
                        g.packed().map(|(_, n, b)| (n, b.to_vec()))
                    });
                }
                let projected = row.project(indexes).map(|r| serde_json::to_string(&r).ok());
                assert_eq!(projected, general, "{indexes:?}");
            }
        }
        assert!(fast_taken >= 30, "{fast_taken}");
    }

    #[test]
    fn a_packed_row_reads_and_serialises_as_its_pairs() {
        let row = packed_row();
        let pairs: Row = serde_json::from_str(
            r#"{"id": 7, "status": "appro\"ved", "meta": {"b": 1.50, "a": [null]}, "tags": null}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            serde_json::to_string(&row).unwrap_or_default(),
            serde_json::to_string(&pairs).unwrap_or_default()
        );
        assert_eq!(
            serde_json::to_string(&row).unwrap_or_default(),
            r#"{"id":7,"status":"appro\"ved","meta":{"b":1.50,"a":[null]},"tags":null}"#
        );
        assert_eq!(row.len(), 4);
        assert!(row.contains_key("meta") && !row.contains_key("x"));
        assert_eq!(row["status"], json!("appro\"ved"));
        assert_eq!(row, pairs);
        assert_eq!(serde_json::to_value(&row).ok(), Some(Value::from(pairs)));
    }

    #[test]
    fn a_packed_row_reads_back_projects_and_changes_as_pairs() {
        let row = packed_row();
        let (names, n, bytes) = row
            .packed()
            .map(|(a, n, b)| (a.clone(), n, b.to_vec()))
            .unwrap_or_default();
        let back = Row::read_packed(&mut Reader::new(&bytes), n, &names).unwrap_or_default();
        assert_eq!(back.packed().map(|(_, _, b)| b), Some(&bytes[..]));
        assert!(Row::read_packed(&mut Reader::new(&bytes[..bytes.len() - 1]), n, &names).is_err());
        let short: Names = names.iter().take(2).cloned().collect();
        assert!(
            Row::read_packed(&mut Reader::new(&bytes), n, &short).is_err(),
            "a column past the relation"
        );
        let renamed: Names = ["a", "b", "c", "d"].into_iter().map(Name::from).collect();
        let other = Row::read_packed(&mut Reader::new(&bytes), n, &renamed).unwrap_or_default();
        assert_ne!(other, row, "the same bytes under other names");

        let key = row.project(&[1, 0, 3]).unwrap_or_default();
        assert_eq!(
            serde_json::to_string(&key).unwrap_or_default(),
            r#"{"status":"appro\"ved","id":7,"tags":null}"#
        );
        assert!(
            Row::new().project(&[0]).is_none(),
            "only a packed row projects"
        );

        let mut changed = row.clone();
        assert_eq!(changed.remove("status"), Some(json!("appro\"ved")));
        changed.insert("x".into(), json!(1));
        assert!(changed.packed().is_none());
        assert_eq!(
            serde_json::to_string(&changed).unwrap_or_default(),
            r#"{"id":7,"meta":{"b":1.50,"a":[null]},"tags":null,"x":1}"#
        );
        assert!(packed_row().heap_bytes() < changed.heap_bytes());
    }
}
