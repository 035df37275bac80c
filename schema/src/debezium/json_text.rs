//! json/jsonb values as Debezium sends them (`io.debezium.data.Json`): the
//! document's text, as Postgres prints a jsonb (`{"a": 1, "b": [1, 2]}`).
//!
//! The values were parsed from Postgres' text with key order and every digit of
//! every number kept, so printing them with jsonb's separators gives back
//! Postgres' text of a jsonb value. (A `json` column's text is stored verbatim
//! by Postgres; its spacing is not kept, see README.)

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::event::Row;

/// The value of a column of type `ty` as Debezium sends it.
pub(super) fn value<'a>(v: &'a Value, ty: &str) -> Cow<'a, Value> {
    if !matches!(ty, "json" | "jsonb") || v.is_null() {
        return Cow::Borrowed(v);
    }
    // A document too deep to represent: pgcdc kept its text.
    if let Some(text) = v
        .get(crate::value::UNREPRESENTABLE_KEY)
        .and(v.get("text"))
        .and_then(Value::as_str)
    {
        return Cow::Owned(Value::String(text.to_string()));
    }
    let mut out = String::new();
    write(v, &mut out);
    Cow::Owned(Value::String(out))
}

/// A row with its json/jsonb values as text.
pub(super) fn row(row: &Row, types: &[(String, String)]) -> Map<String, Value> {
    row.iter()
        .map(|(k, v)| {
            let ty = types
                .iter()
                .find(|(c, _)| **c == **k)
                .map_or("", |(_, t)| t.as_str());
            (k.to_string(), value(v, ty).into_owned())
        })
        .collect()
}

/// Writes `v` as Postgres' jsonb output does: `", "` between items, `": "` after keys.
fn write(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write(item, out);
            }
            out.push('}');
        }
        // Scalars print as serde_json prints them: its string escapes are Postgres'
        // (\" \\ \b \f \n \r \t, other control characters as \u00xx), numbers keep
        // their digits.
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonb_prints_as_postgres_prints_it() {
        let doc: Value = crate::event::from_stored_json(
            r#"{"a": 1, "tags": ["x", "y\n"], "n": 123456789012345678901234567890, "e": {}, "z": []}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            value(&doc, "jsonb").as_ref(),
            &json!(
                r#"{"a": 1, "tags": ["x", "y\n"], "n": 123456789012345678901234567890, "e": {}, "z": []}"#
            )
        );
        assert_eq!(
            value(&json!("plain"), "jsonb").as_ref(),
            &json!("\"plain\"")
        );
        assert_eq!(value(&Value::Null, "json").as_ref(), &Value::Null);
        assert_eq!(value(&json!({"a": 1}), "text").as_ref(), &json!({"a": 1}));
    }
}
