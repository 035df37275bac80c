//! json/jsonb values as Debezium sends them (`io.debezium.data.Json`): the
//! document's text, as Postgres prints a jsonb (`{"a": 1, "b": [1, 2]}`).
//!
//! The values were parsed from Postgres' text with key order and every digit of
//! every number kept, so printing them with jsonb's separators gives back
//! Postgres' text of a jsonb value. (A `json` column's text is stored verbatim
//! by Postgres; its spacing is not kept, see README.)

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::json_write;
use crate::packed::{Bad, Item, Reader};
use crate::row::Cell;
use crate::value::UNREPRESENTABLE_KEY;

/// A column value of type `ty` as Debezium sends it: json/jsonb as text, any
/// other as it is.
#[derive(Clone, Copy)]
pub(super) struct Text<'a> {
    pub(super) cell: Cell<'a>,
    pub(super) ty: &'a str,
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !matches!(self.ty, "json" | "jsonb") || self.cell.is_null() {
            return self.cell.serialize(s);
        }
        let mut out = Vec::new();
        match self.cell {
            Cell::Value(v) => write_value(v, &mut out),
            Cell::Packed(p) => write_packed(&mut p.reader(), &mut out)
                .map_err(|e| serde::ser::Error::custom(format!("packed value: {e}")))?,
        }
        // Only JSON text and UTF-8 strings were written.
        s.serialize_str(&String::from_utf8_lossy(&out))
    }
}

impl Text<'_> {
    /// Appends the value as JSON (the bytes its `Serialize` writes).
    pub(super) fn write_json(&self, out: &mut Vec<u8>) -> Result<(), Bad> {
        if !matches!(self.ty, "json" | "jsonb") || self.cell.is_null() {
            return match self.cell {
                Cell::Value(v) => json_write::write_serde(out, v),
                Cell::Packed(p) => json_write::write_packed(&mut p.reader(), out),
            };
        }
        let mut text = Vec::new();
        match self.cell {
            Cell::Value(v) => write_value(v, &mut text),
            Cell::Packed(p) => write_packed(&mut p.reader(), &mut text)?,
        }
        json_write::write_text(out, &text);
        Ok(())
    }
}

/// The text of a document too deep to represent, which pgcdc kept as
/// `{"__pgcdc_unrepresentable": why, "text": the text}`.
fn unrepresentable(v: &Value) -> Option<&str> {
    v.get(UNREPRESENTABLE_KEY)
        .and(v.get("text"))
        .and_then(Value::as_str)
}

/// Writes `v` as Postgres' jsonb output does: `", "` between items, `": "` after keys.
fn write_value(v: &Value, out: &mut Vec<u8>) {
    if let Some(text) = unrepresentable(v) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    write(v, out);
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                string(k, out);
                out.extend_from_slice(b": ");
                write(item, out);
            }
            out.push(b'}');
        }
        // Scalars print as serde_json prints them: its string escapes are Postgres'
        // (\" \\ \b \f \n \r \t, other control characters as \u00xx), numbers keep
        // their digits.
        scalar => scalar_json(scalar, out),
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(s: &str, out: &mut Vec<u8>) {
    json_write::write_str(out, s)
}

fn scalar_json<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing to a Vec fails only for a value that cannot be JSON, which these are not.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Writes the packed document at `r` as [`write_value`] writes its value.
fn write_packed(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), Bad> {
    if let Some(text) = packed_unrepresentable(r.clone())? {
        out.extend_from_slice(text.as_bytes());
        r.skip_value()?;
        return Ok(());
    }
    json_write::write_packed_spaced(r, out, &json_write::JSONB)
}

/// [`unrepresentable`] of the packed value at `r`.
fn packed_unrepresentable(mut r: Reader<'_>) -> Result<Option<String>, Bad> {
    let Item::Object(n) = r.item()? else {
        return Ok(None);
    };
    let (mut marked, mut text) = (false, None);
    for _ in 0..n {
        let key = r.str_lossy()?;
        match (&*key, r.item()?) {
            (UNREPRESENTABLE_KEY, item) => {
                marked = true;
                skip_rest(&mut r, &item)?;
            }
            ("text", Item::String(t)) => text = Some(t.lossy().into_owned()),
            (_, item) => skip_rest(&mut r, &item)?,
        }
    }
    Ok(text.filter(|_| marked))
}

/// Steps over what follows `item` (an array's or object's contents).
fn skip_rest(r: &mut Reader<'_>, item: &Item<'_>) -> Result<(), Bad> {
    match *item {
        Item::Array(n) => (0..n).try_for_each(|_| r.skip_value()),
        Item::Object(n) => (0..n).try_for_each(|_| {
            r.str_lossy()?;
            r.skip_value()
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::{put_value, Packed};
    use serde_json::json;

    /// What `v` of type `ty` renders as, from its value and from its packed bytes
    /// (which must agree).
    fn value(v: &Value, ty: &str) -> Value {
        let from_value = serde_json::to_value(Text {
            cell: Cell::Value(v),
            ty,
        });
        let mut bytes = Vec::new();
        put_value(&mut bytes, v);
        let from_packed = serde_json::to_value(Text {
            cell: Cell::Packed(Packed(&bytes)),
            ty,
        });
        assert_eq!(from_value.as_ref().ok(), from_packed.as_ref().ok());
        from_value.unwrap_or_default()
    }

    #[test]
    fn jsonb_prints_as_postgres_prints_it() {
        let doc: Value = crate::event::from_stored_json(
            r#"{"a": 1, "tags": ["x", "y\n"], "n": 123456789012345678901234567890, "e": {}, "z": [], "f": -1.50}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            value(&doc, "jsonb"),
            json!(
                r#"{"a": 1, "tags": ["x", "y\n"], "n": 123456789012345678901234567890, "e": {}, "z": [], "f": -1.50}"#
            )
        );
        assert_eq!(value(&json!("plain"), "jsonb"), json!("\"plain\""));
        assert_eq!(value(&Value::Null, "json"), Value::Null);
        assert_eq!(value(&json!({"a": 1}), "text"), json!({"a": 1}));
        // A document pgcdc could not represent is sent as the text it kept.
        let kept = json!({UNREPRESENTABLE_KEY: "too deep", "text": "[[[1]]]"});
        assert_eq!(value(&kept, "jsonb"), json!("[[[1]]]"));
        let not_marked = json!({"why": "x", "text": "[[[1]]]"});
        assert_eq!(
            value(&not_marked, "jsonb"),
            json!(r#"{"why": "x", "text": "[[[1]]]"}"#)
        );
    }
}
