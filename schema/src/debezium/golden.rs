//! Golden test of the Debezium records of every supported column type, as the
//! reader builds them (packed rows): recorded once from the rendering path and
//! kept in `schema/golden/debezium_all_types.jsonl`. Any rework of the Debezium
//! rendering must give back these bytes, and a row of (name, value) pairs the
//! same bytes as its packed form. `PGCDC_BLESS=1` rewrites the file after an
//! intended change of the format (review the diff).

use std::path::PathBuf;

use super::*;
use crate::event::{OldSent, Origin, SnapshotMark};
use crate::row::{Name, Names, Packer};
use crate::value::PgType;
use crate::{EventId, Lsn};

/// (column, type, a value's text, another's: None for a null).
fn columns() -> Vec<(&'static str, PgType, &'static str, Option<&'static str>)> {
    let array = |t| PgType::Array(Box::new(t));
    vec![
        ("id", PgType::Int4, "1", Some("2")),
        (
            "n",
            PgType::Numeric,
            "NaN",
            Some("-0.000000000000000000001"),
        ),
        (
            "n_big",
            PgType::Numeric,
            "123456789012345678901234567890.0123456789",
            None,
        ),
        ("i2", PgType::Int2, "-32768", Some("32767")),
        (
            "i8",
            PgType::Int8,
            "-9223372036854775808",
            Some("9223372036854775807"),
        ),
        ("f4", PgType::Float4, "NaN", Some("-Infinity")),
        ("f8", PgType::Float8, "Infinity", Some("-0")),
        ("b", PgType::Bool, "t", Some("f")),
        (
            "t",
            PgType::Text,
            "line\nbreak \"quoted\" \\ tab\t é ✓ \u{1}",
            Some(""),
        ),
        (
            "ts",
            PgType::Timestamp,
            "2024-02-29 23:59:59.123456",
            Some("infinity"),
        ),
        (
            "tstz",
            PgType::TimestampTz,
            "2024-02-29 23:59:59.123456+05:30",
            Some("-infinity"),
        ),
        (
            "tstz_utc",
            PgType::TimestampTz,
            "2024-02-29 23:59:59+00",
            None,
        ),
        ("d", PgType::Date, "0001-01-01 BC", Some("infinity")),
        ("tm", PgType::Time, "24:00:00", Some("00:00:00")),
        (
            "tmtz",
            PgType::TimeTz,
            "13:45:00.5-03:30",
            Some("00:00:00+00"),
        ),
        (
            "iv",
            PgType::Interval,
            "1 year 2 mons -3 days 04:05:06.789",
            Some("00:00:00"),
        ),
        (
            "u",
            PgType::Uuid,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            None,
        ),
        ("ia", array(PgType::Int4), "{1,NULL,3}", Some("{}")),
        (
            "ta",
            array(PgType::Text),
            r#"{a,NULL,"b\"c","NULL",""}"#,
            Some(r#"{{a,b},{c,NULL}}"#),
        ),
        (
            "j",
            PgType::Json,
            r#"{"big": 123456789012345678901234567890, "f": 1.50, "s": "\u00e9", "a": [1, {"b": null}]}"#,
            Some(r#""just a string""#),
        ),
        (
            "jb",
            PgType::Jsonb,
            r#"{"f": 1.50, "s": "é\"\n", "big": 123456789012345678901234567890, "e": {}, "z": [], "t": true}"#,
            Some("[1, -2, 3.0e10, false, null]"),
        ),
        ("jb_deep", PgType::Jsonb, DEEP, Some("12")),
        ("by", PgType::Bytea, "\\x00ff10", Some("\\x")),
        ("mood", PgType::Other, "happy", None),
        ("m", PgType::Money, "$12.34", None),
        ("big", PgType::Text, "a long value", None),
    ]
}

/// A jsonb document deeper than pgcdc represents (kept as its text).
const DEEP: &str = concat!(
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
);

/// Packed rows of the columns (the first value's text, or the second's), leaving
/// out the columns `skip` names, as the reader builds them.
fn packed(second: bool, skip: &[&str]) -> Row {
    let cols = columns();
    let names: Names = cols.iter().map(|(n, ..)| Name::from(*n)).collect();
    let mut p = Packer::new(names, 256);
    for (i, (name, ty, first, other)) in cols.iter().enumerate() {
        if skip.contains(name) {
            continue;
        }
        match if second { *other } else { Some(*first) } {
            Some(text) => p.text(i, ty, text),
            None => p.null(i),
        }
    }
    p.finish()
}

/// The key row (`id`) of a packed row, as the reader projects it.
fn key_of(row: &Row) -> Row {
    row.project(&[0]).unwrap_or_default()
}

/// The same row as (name, value) pairs.
pub(crate) fn as_pairs(row: &Row) -> Row {
    row.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
}

fn event(op: Op, old: Option<Row>, new: Option<Row>, old_sent: Option<OldSent>) -> ChangeEvent {
    let key = new.as_ref().or(old.as_ref()).map(key_of);
    let types: Vec<(String, String)> = columns()
        .iter()
        .map(|(n, ty, ..)| (n.to_string(), ty.name()))
        .collect();
    ChangeEvent {
        id: EventId::from_position(Lsn(0x1000), 3),
        op,
        schema: "public".into(),
        table: "all_types".into(),
        key,
        old,
        new,
        trigger: None,
        lsn: Lsn(0x1000),
        xid: Some(777),
        commit_time: Some("2026-12-02T10:00:00.123456Z".into()),
        unchanged_toast: vec![],
        origin: Origin {
            change_lsn: Some(Lsn(0xff0)),
            last_commit_lsn: Some(Lsn(0xf00)),
            snapshot: None,
            old_sent,
            no_primary_key: false,
            column_types: types.into(),
        },
        columns: None,
        previous: None,
    }
}

/// The events: a snapshot row, an insert, updates under FULL and DEFAULT identity
/// (one with an unchanged TOAST value), a key change, deletes.
pub(crate) fn events() -> Vec<(&'static str, ChangeEvent)> {
    let mut read = event(Op::Read, None, Some(packed(false, &[])), None);
    read.origin.snapshot = Some(SnapshotMark::First);
    read.origin.change_lsn = None;
    let mut toast = event(Op::Update, None, Some(packed(true, &["big"])), None);
    toast.unchanged_toast = vec!["big".into()];
    let mut key_change = event(
        Op::Update,
        Some(packed(false, &[])),
        Some(packed(true, &[])),
        Some(OldSent::Full),
    );
    key_change.key = key_change.new.as_ref().map(key_of);
    let mut same_key_new = packed(true, &[]);
    same_key_new.insert("id".into(), serde_json::json!(1));
    let same_key_new = Some(same_key_new);
    vec![
        ("read", read),
        (
            "insert",
            event(Op::Insert, None, Some(packed(false, &[])), None),
        ),
        (
            "update full",
            event(
                Op::Update,
                Some(packed(false, &[])),
                Some(packed(true, &[])),
                Some(OldSent::Full),
            ),
        ),
        ("update full same key", {
            let mut e = event(
                Op::Update,
                Some(packed(false, &[])),
                same_key_new,
                Some(OldSent::Full),
            );
            e.key = e.old.as_ref().map(key_of);
            e
        }),
        ("update default, unchanged toast", toast),
        ("update full, key changed", key_change),
        (
            "delete full",
            event(
                Op::Delete,
                Some(packed(true, &[])),
                None,
                Some(OldSent::Full),
            ),
        ),
        (
            "delete key",
            event(
                Op::Delete,
                Some(key_of(&packed(true, &[]))),
                None,
                Some(OldSent::Key),
            ),
        ),
    ]
}

/// Every record of `event` under each option: name, key, value, one line each.
fn render(name: &str, event: &ChangeEvent, out: &mut Vec<String>) {
    let source = DebeziumSource {
        name: "portal".into(),
        db: "permits".into(),
        version: "test".into(),
    };
    let options = [
        ("postgres", DebeziumOptions::default()),
        (
            "known",
            DebeziumOptions {
                before: BeforeImage::Known,
                schemas: false,
            },
        ),
        (
            "schemas",
            DebeziumOptions {
                before: BeforeImage::Postgres,
                schemas: true,
            },
        ),
    ];
    let mut record = |label: String, e: &ChangeEvent, opts: DebeziumOptions| {
        let key = key(e, &source, opts).map(|k| k.to_string());
        // The bytes of the key as the Kafka sink writes them are the same.
        let written = key_to_vec(e, &source, opts).map(|k| k.unwrap_or_default());
        assert_eq!(
            written.map(|k| String::from_utf8_lossy(&k).into_owned()),
            key,
            "{label}"
        );
        let value = to_vec(e, &source, opts, 1_700_000_000_000).unwrap_or_default();
        out.push(format!("# {label}"));
        out.push(format!("key {}", key.as_deref().unwrap_or("null")));
        out.push(format!("value {}", String::from_utf8_lossy(&value)));
    };
    for (label, opts) in options {
        match key_change(event) {
            Some(split) => {
                record(format!("{name} / {label} / delete"), &split.delete, opts);
                record(format!("{name} / {label} / create"), &split.create, opts);
            }
            None => record(format!("{name} / {label}"), event, opts),
        }
    }
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/debezium_all_types.jsonl")
}

#[test]
fn debezium_records_of_every_type_match_the_golden_file() {
    let mut lines = Vec::new();
    for (name, event) in events() {
        render(name, &event, &mut lines);
    }
    check_golden(&golden_path(), &lines);
}

/// Asserts that `lines` are the golden file at `path`, line by line
/// (`PGCDC_BLESS=1` writes them there first).
pub(crate) fn check_golden(path: &std::path::Path, lines: &[String]) {
    let got = lines.join("\n") + "\n";
    if std::env::var_os("PGCDC_BLESS").is_some() {
        std::fs::write(path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (PGCDC_BLESS=1 records it)", path.display()));
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {} of {}", i + 1, path.display());
    }
    assert_eq!(got.lines().count(), want.lines().count());
}

#[test]
fn pairs_render_as_their_packed_rows() {
    for (name, event) in events() {
        let mut pairs = event.clone();
        for row in [&mut pairs.key, &mut pairs.old, &mut pairs.new]
            .into_iter()
            .flatten()
        {
            *row = as_pairs(row);
            assert!(row.packed().is_none());
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        render(name, &event, &mut a);
        render(name, &pairs, &mut b);
        assert_eq!(a, b, "{name}");
    }
}
