use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::pgoutput::{Column, ReplicaIdentity};

const PERMITS: u32 = 16_400;
const OTHER: u32 = 16_500;

fn relation(id: u32, name: &str, identity: ReplicaIdentity, key_flags: [bool; 3]) -> Relation {
    let cols = [("id", 23), ("status", 25), ("notes", 25)];
    Relation {
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: identity,
        columns: cols
            .iter()
            .zip(key_flags)
            .map(|((n, oid), is_key)| Column {
                is_key,
                name: (*n).into(),
                type_oid: *oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn builder() -> ChangeBuilder {
    let captured = Some(TableName {
        schema: "public".into(),
        table: "permits".into(),
    });
    let mut b = ChangeBuilder::default();
    let kinds = vec![PgType::Int4, PgType::Text, PgType::Text];
    let rel = relation(
        PERMITS,
        "permits",
        ReplicaIdentity::Full,
        [true, true, true],
    );
    b.relation(
        PERMITS,
        RelationInfo::new(
            &rel,
            kinds.clone(),
            Vec::new(),
            &["id".to_string()],
            captured,
        ),
    );
    let rel = relation(
        OTHER,
        "other",
        ReplicaIdentity::Default,
        [true, false, false],
    );
    b.relation(OTHER, RelationInfo::new(&rel, kinds, Vec::new(), &[], None));
    b
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn tuple(d: Vec<Datum>) -> Tuple {
    Tuple(d)
}

#[test]
fn insert_carries_typed_values_key_and_position() {
    let mut b = builder();
    b.begin(0x1A2B3C4, 731, 0);
    let e = b
        .insert(
            PERMITS,
            &tuple(vec![text("42"), text("pending"), Datum::Null]),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("captured table"));
    assert_eq!(e.seq, 0);
    assert_eq!(e.event.id, EventId::from_position(Lsn(0x1A2B3C4), 0));
    assert_eq!(e.event.op, Op::Insert);
    assert_eq!(json!(e.event.key), json!({"id": 42}));
    assert_eq!(
        json!(e.event.new),
        json!({"id": 42, "status": "pending", "notes": null})
    );
    assert_eq!(e.event.old, None);
    assert_eq!(e.event.xid, Some(731));
    assert_eq!(
        e.event.commit_time.as_deref(),
        Some("2000-01-01T00:00:00.000000Z")
    );
}

#[test]
fn primary_key_wins_over_full_identity_flags_and_ordinals_count_up() {
    let mut b = builder();
    b.begin(0x100, 1, 0);
    let row = tuple(vec![text("7"), text("approved"), text("n")]);
    let old = OldTuple::Full(tuple(vec![text("7"), text("review"), text("n")]));
    let first = b.insert(PERMITS, &row).ok().flatten().map(|e| e.seq);
    let e = b
        .update(PERMITS, Some(&old), &row)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("update"));
    assert_eq!((first, e.seq), (Some(0), 1));
    assert_eq!(json!(e.event.key), json!({"id": 7}));
    assert_eq!(
        json!(e.event.old),
        json!({"id": 7, "status": "review", "notes": "n"})
    );
}

#[test]
fn unchanged_toast_is_listed_not_null() {
    let mut b = builder();
    b.begin(0x100, 1, 0);
    let e = b
        .update(
            PERMITS,
            None,
            &tuple(vec![text("7"), text("approved"), Datum::UnchangedToast]),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("update"));
    assert_eq!(json!(e.event.new), json!({"id": 7, "status": "approved"}));
    assert_eq!(e.event.unchanged_toast, ["notes"]);
    assert_eq!(e.event.old, None);
}

#[test]
fn delete_with_default_identity_has_key_only_old() {
    let captured = Some(TableName {
        schema: "public".into(),
        table: "permits".into(),
    });
    let mut b = ChangeBuilder::default();
    let rel = relation(
        PERMITS,
        "permits",
        ReplicaIdentity::Default,
        [true, false, false],
    );
    b.relation(
        PERMITS,
        RelationInfo::new(
            &rel,
            vec![PgType::Int4, PgType::Text, PgType::Text],
            Vec::new(),
            &["id".into()],
            captured,
        ),
    );
    b.begin(0x100, 1, 0);
    let e = b
        .delete(
            PERMITS,
            &OldTuple::Key(tuple(vec![text("9"), Datum::Null, Datum::Null])),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("delete"));
    assert_eq!(json!(e.event.key), json!({"id": 9}));
    assert_eq!(json!(e.event.old), json!({"id": 9}));
    assert_eq!(e.event.new, None);
}

#[test]
fn uncaptured_tables_are_skipped_but_keep_ordinals_stable() {
    let mut b = builder();
    b.begin(0x100, 1, 0);
    let row = tuple(vec![text("1"), text("x"), text("y")]);
    assert!(matches!(b.insert(OTHER, &row), Ok(None)));
    let e = b
        .insert(PERMITS, &row)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("insert"));
    assert_eq!(e.seq, 1);
    let t = b
        .truncate(PERMITS)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("truncate"));
    assert_eq!(
        (t.event.op, t.event.key.clone(), t.seq),
        (Op::Truncate, None, 2)
    );
}

#[test]
fn inconsistent_streams_are_errors() {
    let mut b = builder();
    let row = tuple(vec![text("1"), text("x"), text("y")]);
    assert!(matches!(
        b.insert(PERMITS, &row),
        Err(ChangeError::NoTransaction)
    ));
    b.begin(0x100, 1, 0);
    assert!(matches!(
        b.insert(999, &row),
        Err(ChangeError::UnknownRelation(999))
    ));
    assert!(matches!(
        b.insert(PERMITS, &tuple(vec![text("1")])),
        Err(ChangeError::ColumnCount {
            got: 1,
            want: 3,
            ..
        })
    ));
}

#[test]
fn a_renamed_relation_keeps_its_identity_and_carries_its_new_name() {
    let mut b = ChangeBuilder::default();
    let rel = relation(
        PERMITS,
        "permits_v2",
        ReplicaIdentity::Default,
        [true, false, false],
    );
    let identity = Some(TableName {
        schema: "public".into(),
        table: "permits".into(),
    });
    b.relation(
        PERMITS,
        RelationInfo::new(
            &rel,
            vec![PgType::Int4, PgType::Text, PgType::Text],
            Vec::new(),
            &["id".into()],
            identity,
        ),
    );
    b.begin(0x100, 1, 0);
    let e = b
        .insert(PERMITS, &tuple(vec![text("1"), text("x"), Datum::Null]))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("insert"));
    assert_eq!(
        (&*e.table, &*e.event.table),
        ("public.permits", "permits_v2")
    );
}

#[test]
fn each_change_carries_its_own_lsn_the_last_commit_and_what_postgres_sent() {
    let mut b = builder();
    b.begin(0x300, 1, 0);
    b.message_at(Lsn(0x210));
    let first = b
        .insert(PERMITS, &tuple(vec![text("1"), text("a"), Datum::Null]))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("insert"));
    // The session has seen no commit yet: Debezium's sequence[0] is null.
    assert_eq!(first.event.origin.change_lsn, Some(Lsn(0x210)));
    assert_eq!(first.event.origin.last_commit_lsn, None);
    assert_eq!(first.event.lsn, Lsn(0x300), "lsn stays the commit LSN");
    assert_eq!(
        first.event.origin.column_types[..],
        [("id", "int4"), ("status", "text"), ("notes", "text")]
            .map(|(c, t)| (c.to_string(), t.to_string()))
    );
    assert!(!first.event.origin.no_primary_key);
    b.commit(Lsn(0x308));

    b.begin(0x500, 2, 0);
    b.message_at(Lsn(0x400));
    let full = OldTuple::Full(tuple(vec![text("1"), text("a"), Datum::Null]));
    let upd = b
        .update(
            PERMITS,
            Some(&full),
            &tuple(vec![text("1"), text("b"), Datum::Null]),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("update"));
    assert_eq!(upd.event.origin.change_lsn, Some(Lsn(0x400)));
    assert_eq!(upd.event.origin.last_commit_lsn, Some(Lsn(0x308)));
    assert_eq!(upd.event.origin.old_sent, Some(OldSent::Full));
    b.message_at(Lsn(0x440));
    let plain = b
        .update(
            PERMITS,
            None,
            &tuple(vec![text("1"), text("c"), Datum::Null]),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("update"));
    assert_eq!(plain.event.origin.change_lsn, Some(Lsn(0x440)));
    assert_eq!(plain.event.origin.old_sent, None);
    b.message_at(Lsn(0x480));
    let del = b
        .delete(
            PERMITS,
            &OldTuple::Key(tuple(vec![text("1"), Datum::Null, Datum::Null])),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("delete"));
    assert_eq!(del.event.origin.old_sent, Some(OldSent::Key));
    assert_eq!(del.event.origin.change_lsn, Some(Lsn(0x480)));
}

#[test]
fn a_table_without_a_primary_key_is_marked() {
    let mut b = ChangeBuilder::default();
    let rel = relation(OTHER, "nopk", ReplicaIdentity::Full, [true, true, true]);
    let kinds = vec![PgType::Int4, PgType::Jsonb, PgType::Text];
    let captured = Some(TableName {
        schema: "public".into(),
        table: "nopk".into(),
    });
    b.relation(
        OTHER,
        RelationInfo::new(&rel, kinds, Vec::new(), &[], captured),
    );
    b.begin(0x100, 1, 0);
    let e = b
        .insert(
            OTHER,
            &tuple(vec![text("1"), text("{\"a\": 1}"), Datum::Null]),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("insert"));
    assert!(e.event.origin.no_primary_key);
    assert_eq!(
        e.event.origin.column_types[1],
        ("status".to_string(), "jsonb".to_string())
    );
}

#[test]
fn read_event_ids_keep_their_format() {
    use sha2::{Digest, Sha256};
    let table = TableName::parse("public.permits").unwrap_or_else(|e| panic!("{e}"));
    let mut key = Row::new();
    key.insert("id".into(), json!(42));
    // The id as first defined: ids already journaled must not change meaning.
    let hex = |key_json: &[u8]| -> String {
        let mut hash = Sha256::new();
        hash.update(b"public.permits\0");
        hash.update(key_json);
        hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let key_hex = hex(b"{\"id\":42}");
    assert_eq!(
        read_event_id(7, &EventTable::of(&table), &key).to_string(),
        format!("R00000007-{key_hex}")
    );
    // The prefix is `{id:08X}` for any id: wider ones, and negative ones as written.
    for id in [0, 0xABCDEF12, 0x1_0000_0000, i64::MAX, -1, i64::MIN] {
        assert_eq!(
            read_event_id(id, &EventTable::of(&table), &key).to_string(),
            format!("R{id:08X}-{key_hex}")
        );
    }
    // Keys packed from COPY text hash the JSON serde_json writes for them.
    use pgcdc_schema::event::Name;
    use pgcdc_schema::row::{Names, Packer};
    use pgcdc_schema::value::PgType;
    let names: Names = ["id", "region", "at", "doc", "n"]
        .into_iter()
        .map(Name::from)
        .collect();
    for (ty, text) in [
        (PgType::Int8, "-9223372036854775808"),
        (PgType::Text, "qu\"ote\\ \u{1} é"),
        (PgType::Numeric, "1.50"),
        (PgType::Jsonb, r#"{"b": [1.5e3, null], "a": "x"}"#),
        (PgType::Float8, "NaN"),
    ] {
        let mut p = Packer::new(names.clone(), 0);
        p.text(0, &PgType::Int4, "42");
        p.text(1, &ty, text);
        p.null(4);
        let key = p.finish();
        let key_hex = hex(&serde_json::to_vec(&key).unwrap_or_default());
        assert_eq!(
            read_event_id(7, &EventTable::of(&table), &key).to_string(),
            format!("R00000007-{key_hex}"),
            "{ty:?} {text}"
        );
    }
}
