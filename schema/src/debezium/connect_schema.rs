//! Kafka Connect schemas of Debezium's PostgreSQL records, as the JSON converter
//! writes them with `schemas.enable=true`: the key struct, the row struct
//! (`<server>.<schema>.<table>.Value`), `io.debezium.connector.postgresql.Source`
//! and the envelope.
//!
//! Column schemas describe the values pgcdc sends (see the module docs of
//! `debezium`): Debezium's names for `time.precision.mode=isostring`,
//! `decimal.handling.mode=string`, `interval.handling.mode=string` and
//! `binary.handling.mode=bytes`; json/jsonb are `io.debezium.data.Json`.
//! Postgres does not tell the replication stream which columns are NOT NULL, so
//! every column is optional except the key's.

use serde_json::{json, Value};

use super::DebeziumSource;
use crate::ChangeEvent;

/// Debezium's allowed `source.snapshot` values.
const SNAPSHOT_VALUES: &str =
    "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental";

/// `<server>.<schema>.<table>`, the prefix of the key, value and envelope schema names.
fn prefix(event: &ChangeEvent, source: &DebeziumSource) -> String {
    format!("{}.{}.{}", source.name, event.schema, event.table)
}

/// The Connect schema of a column of type `ty` (a `PgType::name`).
fn column(ty: &str, optional: bool) -> Value {
    if let Some(elem) = ty.strip_suffix("[]") {
        return json!({"type": "array", "items": column(elem, true), "optional": optional});
    }
    let (kind, name) = match ty {
        "bool" => ("boolean", None),
        "int2" => ("int16", None),
        "int4" => ("int32", None),
        "int8" | "oid" => ("int64", None),
        "float4" => ("float", None),
        "float8" => ("double", None),
        "bytea" => ("bytes", None),
        "uuid" => ("string", Some("io.debezium.data.Uuid")),
        "json" | "jsonb" => ("string", Some("io.debezium.data.Json")),
        "date" => ("string", Some("io.debezium.time.IsoDate")),
        "time" => ("string", Some("io.debezium.time.IsoTime")),
        "timetz" => ("string", Some("io.debezium.time.ZonedTime")),
        "timestamp" => ("string", Some("io.debezium.time.IsoTimestamp")),
        "timestamptz" => ("string", Some("io.debezium.time.ZonedTimestamp")),
        "interval" => ("string", Some("io.debezium.time.Interval")),
        // numeric and money as exact text (decimal.handling.mode=string), text-like
        // types, enums, and anything else as its text.
        _ => ("string", None),
    };
    let mut schema = json!({"type": kind, "optional": optional});
    if let Some(name) = name {
        schema["name"] = json!(name);
        schema["version"] = json!(1);
    }
    schema
}

/// The row struct's fields (every column, in table order).
fn row_fields(event: &ChangeEvent) -> Vec<Value> {
    let key = event.key.as_ref();
    event
        .origin
        .column_types
        .iter()
        .map(|(col, ty)| {
            let in_key = !event.origin.no_primary_key && key.is_some_and(|k| k.contains_key(col));
            let mut f = column(ty, !in_key);
            f["field"] = json!(col);
            f
        })
        .collect()
}

/// The key's schema: a struct of the primary key columns.
pub(super) fn key(event: &ChangeEvent, source: &DebeziumSource) -> Value {
    let key = event.key.as_ref();
    let fields: Vec<Value> = event
        .origin
        .column_types
        .iter()
        .filter(|(col, _)| key.is_some_and(|k| k.contains_key(col)))
        .map(|(col, ty)| {
            let mut f = column(ty, false);
            f["field"] = json!(col);
            f
        })
        .collect();
    json!({
        "type": "struct",
        "fields": fields,
        "optional": false,
        "name": format!("{}.Key", prefix(event, source)),
    })
}

fn field(kind: &str, optional: bool, name: &str) -> Value {
    json!({"type": kind, "optional": optional, "field": name})
}

/// `io.debezium.connector.postgresql.Source`.
fn source_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            field("string", false, "version"),
            field("string", false, "connector"),
            field("string", false, "name"),
            field("int64", false, "ts_ms"),
            {
                "type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
                "parameters": {"allowed": SNAPSHOT_VALUES}, "default": "false", "field": "snapshot"
            },
            field("string", false, "db"),
            field("string", true, "sequence"),
            field("int64", true, "ts_us"),
            field("int64", true, "ts_ns"),
            field("string", false, "schema"),
            field("string", false, "table"),
            field("int64", true, "txId"),
            field("int64", true, "lsn"),
            field("int64", true, "xmin"),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source",
    })
}

/// The envelope's schema: `before`, `after`, `source`, `op`, `ts_*`, `transaction`.
pub(super) fn envelope(event: &ChangeEvent, source: &DebeziumSource) -> Value {
    let prefix = prefix(event, source);
    let row = |field: &str| {
        json!({
            "type": "struct",
            "fields": row_fields(event),
            "optional": true,
            "name": format!("{prefix}.Value"),
            "field": field,
        })
    };
    json!({
        "type": "struct",
        "fields": [
            row("before"),
            row("after"),
            source_schema(),
            field("string", false, "op"),
            field("int64", true, "ts_ms"),
            field("int64", true, "ts_us"),
            field("int64", true, "ts_ns"),
            {
                "type": "struct",
                "fields": [
                    field("string", false, "id"),
                    field("int64", false, "total_order"),
                    field("int64", false, "data_collection_order"),
                ],
                "optional": true,
                "name": "event.block",
                "version": 1,
                "field": "transaction",
            },
        ],
        "optional": false,
        "name": format!("{prefix}.Envelope"),
        "version": 2,
    })
}
