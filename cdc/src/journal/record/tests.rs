use pgcdc_schema::event::pg_micros_to_rfc3339;
use serde_json::{json, Value};

use super::*;

fn row(v: Value) -> Option<Row> {
    match v {
        Value::Object(m) => Some(m.into()),
        _ => None,
    }
}

fn types() -> Vec<(String, String)> {
    [
        ("id", "int4"),
        ("n", "numeric"),
        ("doc", "jsonb"),
        ("tags", "text[]"),
        ("notes", "text"),
    ]
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .to_vec()
}

/// The README's sample: an update under FULL identity with an unchanged TOAST value.
fn sample() -> ChangeEvent {
    ChangeEvent {
        id: EventId::from_position(Lsn(0x1A2B3C4), 3),
        op: Op::Update,
        schema: "public".into(),
        table: "permits".into(),
        key: row(json!({"id": 42})),
        old: row(
            json!({"id": 42, "n": 1.50, "doc": {"a": [1, null]}, "tags": ["x", null], "notes": "x"}),
        ),
        new: row(json!({"id": 42, "n": 123456789012345678901234567890.5, "doc": null, "tags": []})),
        trigger: None,
        lsn: Lsn(0x1A2B3C4),
        xid: Some(731),
        commit_time: Some(pg_micros_to_rfc3339(848_000_000_123_456).into()),
        unchanged_toast: vec!["notes".into()],
        columns: None,
        previous: None,
        origin: Origin {
            change_lsn: Some(Lsn(0x1A2B000)),
            last_commit_lsn: Some(Lsn(0x1A00000)),
            snapshot: None,
            old_sent: Some(OldSent::Full),
            no_primary_key: false,
            column_types: types().into(),
        },
    }
}

fn encode(enc: &mut Encoder, event: &ChangeEvent) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encode(event, &mut out);
    out
}

/// Decodes with the relation versions `enc` made.
fn decode(enc: &Encoder, bytes: &[u8]) -> ChangeEvent {
    let stored: HashMap<i64, String> = enc
        .by_table
        .values()
        .flatten()
        .map(|(r, id)| (*id, r.to_stored()))
        .collect();
    Decoder::default()
        .decode(bytes, |id| Ok(stored.get(&id).cloned()))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_event_reads_back_equal_and_renders_the_same_bytes() {
    let mut enc = Encoder::new(Vec::new());
    let mut variants = vec![sample()];
    let mut e = sample();
    e.op = Op::Read;
    e.id = EventId::from_string("R0000002A-0000000000000001".into());
    e.xid = None;
    e.commit_time = None;
    e.origin.change_lsn = None;
    e.origin.snapshot = Some(SnapshotMark::LastInDataCollection);
    e.origin.old_sent = None;
    e.origin.no_primary_key = true;
    // A column the relation does not list, and a row out of table order.
    e.new = row(json!({"tags": null, "extra": "x", "id": -9223372036854775807i64}));
    e.old = None;
    e.trigger = Some("approved".into());
    variants.push(e);
    let mut t = sample();
    t.op = Op::Truncate;
    (t.key, t.old, t.new) = (None, None, None);
    t.unchanged_toast.clear();
    t.commit_time = Some("2026-11-26T10:00:00.123Z".into()); // not pgcdc's form: kept as text
    t.origin.change_lsn = Some(Lsn(u64::MAX)); // after the commit LSN: wraps
    variants.push(t);
    let mut s = sample();
    s.op = Op::Schema;
    (s.key, s.old, s.new) = (None, None, None);
    s.columns = Some(vec![Column {
        name: "id".into(),
        type_name: "int4".into(),
        key: true,
    }]);
    s.previous = Some(Vec::new());
    s.origin = Origin::default();
    variants.push(s);
    for event in &variants {
        let bytes = encode(&mut enc, event);
        let back = decode(&enc, &bytes);
        assert_eq!(&back, event);
        assert_eq!(
            serde_json::to_string(&back).unwrap_or_default(),
            serde_json::to_string(event).unwrap_or_default()
        );
        assert_eq!(encode_v1(&back), encode_v1(event));
    }
}

#[test]
fn a_v2_record_is_a_fraction_of_the_v1_json() {
    let mut enc = Encoder::new(Vec::new());
    let event = sample();
    let _first = encode(&mut enc, &event);
    let v2 = encode(&mut enc, &event);
    let v1 = encode_v1(&event);
    assert!(
        v2.len() * 3 < v1.len(),
        "v2 {} bytes, v1 {} bytes",
        v2.len(),
        v1.len()
    );
}

#[test]
fn relation_versions_are_made_once_and_kept_only_when_stored() {
    let mut enc = Encoder::new(Vec::new());
    let event = sample();
    encode(&mut enc, &event);
    encode(&mut enc, &event);
    assert_eq!(enc.fresh().count(), 1);
    // The batch failed: the version is made again, with the same id.
    enc.settle(false);
    encode(&mut enc, &event);
    let fresh: Vec<i64> = enc.fresh().map(|(id, _)| id).collect();
    assert_eq!(fresh, [1]);
    enc.settle(true);
    let mut altered = event.clone();
    let mut columns = altered.origin.column_types.to_vec();
    columns.push(("added".into(), "text".into()));
    altered.origin.column_types = columns.into();
    encode(&mut enc, &altered);
    encode(&mut enc, &event);
    let fresh: Vec<i64> = enc.fresh().map(|(id, _)| id).collect();
    assert_eq!(fresh, [2], "a new column makes one new version");
    // A writer opened later knows both.
    let stored = enc
        .fresh()
        .map(|(id, r)| (id, r.clone()))
        .chain([(1, Relation::of(&event))])
        .collect();
    let mut later = Encoder::new(stored);
    encode(&mut later, &altered);
    assert_eq!(later.fresh().count(), 0);
    assert_eq!(later.next_id, 3);
}

#[test]
fn v1_records_still_read_and_unknown_formats_are_refused() {
    let event = sample();
    let v1 = encode_v1(&event);
    let mut dec = Decoder::default();
    let back = dec
        .decode(v1.as_bytes(), |_| Ok(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, event);
    let err = dec
        .decode(&[9, 1, 2], |_| Ok(None))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        err.as_ref().is_err_and(|e| e.contains("newer release")),
        "{err:?}"
    );
    // A v2 record whose relation version is missing says so.
    let mut enc = Encoder::new(Vec::new());
    let bytes = encode(&mut enc, &event);
    let err = dec
        .decode(&bytes, |_| Ok(None))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        err.as_ref()
            .is_err_and(|e| e.contains("relation version 1")),
        "{err:?}"
    );
    // Truncated anywhere: an error, never a panic.
    for len in 0..bytes.len() {
        assert!(Decoder::default()
            .decode(&bytes[..len], |_| Ok(Some(
                Relation::of(&event).to_stored()
            )))
            .is_err());
    }
}

/// The rows of `scripts/bench-stream` (9 columns, REPLICA IDENTITY FULL): an
/// insert and an update with the whole old row.
fn bench_stream_events() -> [ChangeEvent; 2] {
    let types = [
        ("id", "int8"),
        ("status", "text"),
        ("fee", "numeric"),
        ("issued", "date"),
        ("decided_at", "timestamptz"),
        ("meta", "jsonb"),
        ("tags", "text[]"),
        ("kind", "permit_kind"),
        ("notes", "text"),
    ]
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .to_vec();
    let row_of = |status: &str, fee: &str| {
        row(
            json!({"id": 123456, "status": status, "fee": fee, "issued": "2026-05-04",
            "decided_at": "2026-12-02T04:30:10.123456Z",
            "meta": {"applicant": "user123456", "floors": 2}, "tags": ["a", "b123456"],
            "kind": "building", "notes": "notes for permit 123456"}),
        )
    };
    let insert = ChangeEvent {
        id: EventId::from_position(Lsn(0x2_1534_44B0), 455),
        op: Op::Insert,
        schema: "public".into(),
        table: "permits".into(),
        key: row(json!({"id": 123456})),
        old: None,
        new: row_of("submitted", "456.25"),
        trigger: None,
        lsn: Lsn(0x2_1534_44B0),
        xid: Some(1_234_567),
        commit_time: Some("2026-12-02T04:30:10.154484Z".into()),
        unchanged_toast: Vec::new(),
        columns: None,
        previous: None,
        origin: Origin {
            change_lsn: Some(Lsn(0x2_1533_0000)),
            last_commit_lsn: Some(Lsn(0x2_1520_0000)),
            column_types: types.into(),
            ..Origin::default()
        },
    };
    let mut update = insert.clone();
    update.op = Op::Update;
    update.old = row_of("submitted", "456.25");
    update.new = row_of("approved", "457.25");
    update.origin.old_sent = Some(OldSent::Full);
    [insert, update]
}

/// The README's native event sample (`permits`: id, status, fee).
fn readme_event() -> ChangeEvent {
    ChangeEvent {
        id: EventId::from_position(Lsn(0x15344B0), 2),
        op: Op::Update,
        schema: "public".into(),
        table: "permits".into(),
        key: row(json!({"id": 42})),
        old: None,
        new: row(json!({"id": 42, "status": "approved", "fee": "125.50"})),
        trigger: None,
        lsn: Lsn(0x15344B0),
        xid: Some(726),
        commit_time: Some("2026-11-26T17:09:36.154484Z".into()),
        unchanged_toast: Vec::new(),
        columns: None,
        previous: None,
        origin: Origin {
            change_lsn: Some(Lsn(0x1534000)),
            last_commit_lsn: Some(Lsn(0x1520000)),
            column_types: [("id", "int4"), ("status", "text"), ("fee", "numeric")]
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .to_vec()
                .into(),
            ..Origin::default()
        },
    }
}

/// Bytes per record, v1 and v2 (docs/benchmarks.md quotes these: run with
/// `--nocapture`). v2 takes well under half.
#[test]
fn record_sizes_of_the_documented_events() {
    let [insert, update] = bench_stream_events();
    for (name, event) in [
        ("README sample", readme_event()),
        ("bench-stream insert", insert),
        ("bench-stream FULL update", update),
    ] {
        let mut enc = Encoder::new(Vec::new());
        let _first = encode(&mut enc, &event);
        let v2 = encode(&mut enc, &event);
        let v1 = encode_v1(&event);
        eprintln!("{name}: v1 {} bytes, v2 {} bytes", v1.len(), v2.len());
        assert_eq!(decode(&enc, &v2), event);
        assert!(
            2 * v2.len() < v1.len(),
            "{name}: v1 {} v2 {}",
            v1.len(),
            v2.len()
        );
    }
}
