use std::path::Path;

use pgcdc_schema::{EventId, Lsn, Op};
use serde_json::json;

use super::*;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "postgres://u@localhost/db"
tables = ["public.permits", "public.other"]

[[trigger]]
name = "permitApproved"
table = "public.permits"
when = '.old.status != "approved" and .new.status == "approved"'

[[trigger]]
name = "permitRevoked"
table = "public.permits"
when = '.new.status == "revoked"'
{extra}
"#
    );
    Config::parse(&text, Path::new("t.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn event(
    table: &str,
    op: Op,
    old: Option<serde_json::Value>,
    new: serde_json::Value,
) -> ChangeEvent {
    ChangeEvent {
        id: EventId::from_position(Lsn(0x100), 0),
        op,
        schema: "public".into(),
        table: table.into(),
        key: json!({"id": 1})
            .as_object()
            .cloned()
            .map(pgcdc_schema::event::Row::from),
        old: old.and_then(|o| o.as_object().cloned().map(pgcdc_schema::event::Row::from)),
        new: new.as_object().cloned().map(pgcdc_schema::event::Row::from),
        trigger: None,
        lsn: Lsn(0x100),
        xid: Some(1),
        commit_time: None,
        unchanged_toast: vec![],
        columns: None,
        previous: None,
        origin: Default::default(),
    }
}

fn plan(c: &Config, i: usize) -> SinkPlan {
    SinkPlan::new(&c.sink[i], &triggers(c))
}

fn bodies(m: Mapped) -> Vec<serde_json::Value> {
    match m {
        Mapped::Items(items) => items.into_iter().map(|i| i.body).collect(),
        Mapped::Skipped(_) => vec![json!("skipped")],
        Mapped::NotSelected => vec![],
    }
}

#[test]
fn triggers_select_transitions_and_set_the_trigger_name() {
    let c = config(
        r#"
[[sink]]
name = "registry"
type = "stdout"
events = ["permitApproved"]
transform = '{registryId: .new.id, event: .trigger}'
"#,
    );
    let p = plan(&c, 0);
    let approve = event(
        "permits",
        Op::Update,
        Some(json!({"id": 1, "status": "review"})),
        json!({"id": 1, "status": "approved"}),
    );
    assert_eq!(
        bodies(p.map(approve).unwrap_or_else(|e| panic!("{e}"))),
        [json!({"registryId": 1, "event": "permitApproved"})]
    );
    // Another column of an approved permit changes: nothing fires.
    let touch = event(
        "permits",
        Op::Update,
        Some(json!({"id": 1, "status": "approved"})),
        json!({"id": 1, "status": "approved"}),
    );
    assert!(matches!(p.map(touch), Ok(Mapped::NotSelected)));
    // Another table: not selected.
    let other = event(
        "other",
        Op::Insert,
        None,
        json!({"id": 1, "status": "approved"}),
    );
    assert!(matches!(p.map(other), Ok(Mapped::NotSelected)));
}

#[test]
fn tables_filter_and_multi_output_transforms() {
    let c = config(
        r#"
[[sink]]
name = "all"
type = "stdout"

[[sink]]
name = "gis"
type = "stdout"
tables = ["public.permits"]
filter = '.op != "delete"'
transform = '.new.id, .new.status'

[[sink]]
name = "none"
type = "stdout"
tables = ["public.permits"]
transform = 'empty'
"#,
    );
    let ins = || {
        event(
            "permits",
            Op::Insert,
            None,
            json!({"id": 1, "status": "pending"}),
        )
    };
    let all = bodies(plan(&c, 0).map(ins()).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["op"], "insert");
    assert_eq!(all[0]["trigger"], json!(null));
    let gis = plan(&c, 1);
    match gis.map(ins()) {
        Ok(Mapped::Items(items)) => {
            assert_eq!(
                items.iter().map(|i| i.body.clone()).collect::<Vec<_>>(),
                [json!(1), json!("pending")]
            );
            assert_eq!(items[1].delivery_id(), format!("{}.1", items[1].event.id));
            assert_eq!(items[0].row, "public.permits{\"id\":1}");
        }
        other => panic!("{other:?}"),
    }
    let del = event("permits", Op::Delete, Some(json!({"id": 1})), json!(null));
    assert!(matches!(gis.map(del), Ok(Mapped::NotSelected)));
    assert!(matches!(plan(&c, 2).map(ins()), Ok(Mapped::Skipped(_))));
}

#[test]
fn runtime_jq_errors_are_reported_and_old_columns_are_tracked() {
    let c = config(
        r#"
[[sink]]
name = "bad"
type = "stdout"
transform = '.new.status + 1'
"#,
    );
    let err = plan(&c, 0).map(event(
        "permits",
        Op::Insert,
        None,
        json!({"id": 1, "status": "x"}),
    ));
    match err {
        Err(e) => assert!(e.to_string().contains("sink[0].transform"), "{e}"),
        Ok(m) => panic!("expected an error, got {m:?}"),
    }
    let tracking = old_tracking(&triggers(&c));
    assert_eq!(
        tracking.get("public.permits"),
        Some(&Tracked::Columns(vec!["status".into()]))
    );
    assert_eq!(tracking.get("public.other"), None);
}

#[test]
fn a_batch_maps_like_event_by_event_and_reports_each_failure_on_its_event() {
    let c = config(
        r#"
[[sink]]
name = "registry"
type = "stdout"
events = ["permitApproved", "permitRevoked"]
filter = '.new.id != 3'
transform = 'if .new.id == 5 then error("five") else {id: .new.id, t: .trigger} end'
"#,
    );
    let p = plan(&c, 0);
    let update = |id: i64, old: &str, new: &str| {
        let mut e = event(
            "permits",
            Op::Update,
            Some(json!({"id": id, "status": old})),
            json!({"id": id, "status": new}),
        );
        e.key = json!({"id": id})
            .as_object()
            .cloned()
            .map(pgcdc_schema::event::Row::from);
        e
    };
    let batch = vec![
        update(1, "review", "approved"),
        update(2, "approved", "revoked"),
        update(3, "review", "approved"),
        update(4, "approved", "approved"),
        update(5, "review", "approved"),
        update(6, "review", "approved"),
    ];
    let one_by_one: Vec<String> = batch
        .iter()
        .map(|e| format!("{:?}", p.map(e.clone()).map(bodies)))
        .collect();
    let batched: Vec<String> = p
        .map_batch(batch)
        .into_iter()
        .map(|r| format!("{:?}", r.map(bodies)))
        .collect();
    assert_eq!(batched, one_by_one);
    assert!(batched[0].contains("permitApproved"), "{}", batched[0]);
    assert!(batched[1].contains("permitRevoked"), "{}", batched[1]);
    assert_eq!(batched[2], "Ok([])", "filtered out");
    assert_eq!(batched[3], "Ok([])", "no trigger fired");
    assert!(
        batched[4].contains("sink[0].transform") && batched[4].contains("five"),
        "{}",
        batched[4]
    );
    assert!(batched[5].contains("\"id\": Number(6)"), "{}", batched[5]);
}

/// Events per second mapped through a trigger and a transform, in this
/// process and then through the sandbox's worker process (`PGCDC_BIN`,
/// default `target/release/pgcdc`): the sandbox's cost per event.
#[test]
#[ignore = "benchmark: cargo build --release -p pgcdc && \
            cargo test -p pgcdc --release --lib sandbox_overhead -- --ignored --nocapture"]
fn sandbox_overhead() {
    let c = config(
        r#"
[[sink]]
name = "registry"
type = "stdout"
events = ["permitApproved"]
transform = '{registryId: .new.id, validUntil: .new.expiry_date}'

[[sink]]
name = "copy"
type = "stdout"
tables = ["public.permits"]
transform = '{id: .new.id, status: .new.status}'
"#,
    );
    let events: Vec<ChangeEvent> = (0..100_000i64)
        .map(|i| {
            let mut e = event(
                "permits",
                Op::Update,
                Some(json!({"id": i, "status": "review", "expiry_date": "2027-01-31"})),
                json!({"id": i, "status": if i % 2 == 0 { "approved" } else { "review" },
                       "expiry_date": "2027-01-31"}),
            );
            e.key = json!({"id": i})
                .as_object()
                .cloned()
                .map(pgcdc_schema::event::Row::from);
            e
        })
        .collect();
    let measure = |what: &str| {
        for (name, p) in [
            ("trigger+transform", plan(&c, 0)),
            ("transform", plan(&c, 1)),
        ] {
            let start = std::time::Instant::now();
            let mut items = 0usize;
            for batch in events.chunks(1000) {
                for m in p.map_batch(batch.to_vec()) {
                    if let Ok(Mapped::Items(i)) = m {
                        items += i.len();
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{what:>10} {name:>17}: {:>8.0} events/s ({items} items, {:.2} µs/event)",
                events.len() as f64 / secs,
                secs * 1e6 / events.len() as f64
            );
        }
    };
    measure("in-process");
    let bin = std::env::var("PGCDC_BIN")
        .unwrap_or_else(|_| format!("{}/../target/release/pgcdc", env!("CARGO_MANIFEST_DIR")));
    let limits = pgcdc_schema::mapping::Limits::DEFAULT;
    let args = vec![
        sandbox::WORKER_ARG.into(),
        serde_json::to_string(&limits)
            .unwrap_or_else(|e| panic!("{e}"))
            .into(),
    ];
    let installed = pgcdc_schema::mapping::sandbox::install(
        pgcdc_schema::mapping::sandbox::Sandbox::new(bin, args, limits)
            .with_env("MIMALLOC_ARENA_RESERVE", "16MiB"),
    );
    assert!(installed);
    measure("sandbox");
}

#[test]
fn a_renamed_tables_events_route_by_the_configured_name() {
    let c = config(
        r#"
[[sink]]
name = "registry"
type = "stdout"
events = ["permitApproved"]
transform = '{id: .new.id, table: .table, event: .trigger}'

[[sink]]
name = "all"
type = "stdout"
tables = ["public.permits"]
transform = '.table'
"#,
    );
    let approve = event(
        "permits_v2",
        Op::Update,
        Some(json!({"id": 1, "status": "review"})),
        json!({"id": 1, "status": "approved"}),
    );
    let m = plan(&c, 0)
        .map_as(approve.clone(), "public.permits")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bodies(m),
        [json!({"id": 1, "table": "permits_v2", "event": "permitApproved"})]
    );
    let m = plan(&c, 1)
        .map_as(approve.clone(), "public.permits")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bodies(m), [json!("permits_v2")]);
    // Without the identity, the new name matches nothing configured.
    let m = plan(&c, 1).map(approve).unwrap_or_else(|e| panic!("{e}"));
    assert!(bodies(m).is_empty());
}
