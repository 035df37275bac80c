//! The state store's contract, run against both implementations: the SQLite
//! store in a temporary directory and the Postgres store in a throwaway
//! cluster. Then what only the Postgres store has: migrations, the fencing
//! hook, a password that never shows.

use std::time::Duration;

use pgcdc::journal::{
    Access, AppendOutcome, JournalEntry, JournalError, JournalHead, JournalWriter, ResetError,
    ResetTarget, StateStore, Store, StoredEvent, Tracked,
};
use pgcdc_schema::event::Row;
use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use pgcdc_tests::PgCluster;

/// A Postgres store in `schema` of the cluster's `postgres` database.
fn pg_store(pg: &PgCluster, schema: &str) -> anyhow::Result<Store> {
    Ok(Store::postgres(pg.url().parse()?, schema))
}

/// Runs a contract test against each store.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                let dir = tempfile::tempdir()?;
                super::$name(&pgcdc::journal::Store::sqlite(dir.path()))
            }

            #[tokio::test]
            async fn postgres() -> anyhow::Result<()> {
                let pg = pgcdc_tests::PgCluster::new().await?;
                super::$name(&super::pg_store(&pg, "pgcdc")?)
            }
        }
    )*};
}

both!(
    appends_are_durable_and_replays_are_skipped,
    cursors_only_move_forward,
    old_is_filled_from_the_last_seen_row,
    prune_keeps_what_a_cursor_still_needs,
    checkpoint_resets_move_one_cursor_and_respect_retention,
    entries_keep_the_captured_tables_name_beside_the_events_name,
    read_batch_stops_at_its_byte_budget_but_returns_one_event,
    the_audit_log_does_not_count_against_the_journal,
    a_batch_audit_row_answers_for_each_of_its_events,
    a_missing_store_says_what_to_do,
    dlq_items_replay_in_row_order,
    resyncs_queue_once_per_table,
    staged_messages_read_back_in_order_and_discard_exactly,
    the_writer_says_where_each_appended_entry_went_as_stored,
);

fn append(
    w: &mut dyn JournalWriter,
    entries: &[JournalEntry],
    confirm: Option<Lsn>,
) -> Result<AppendOutcome, JournalError> {
    let all: Vec<(&JournalEntry, Option<&str>)> = entries.iter().map(|e| (e, None)).collect();
    w.append(&all, confirm, &[])
}

/// Makes the writer fill in `status` of `public.permits` rows from their last seen values.
fn track_status(w: &mut dyn JournalWriter) {
    w.set_old_tracking(
        [(
            "public.permits".to_string(),
            Tracked::Columns(vec!["status".into()]),
        )]
        .into(),
    );
}

/// Advances a cursor the way a sink runner does: a batch commit at its generation.
fn advance(r: &mut dyn StateStore, sink: &str, pos: i64) -> Result<(), JournalError> {
    let generation = r.cursor_state(sink)?.generation;
    r.commit_batch(sink, pos, generation, &[], &Default::default())
}

fn entry(lsn: u64, seq: u32) -> JournalEntry {
    JournalEntry {
        table: "public.permits".into(),
        seq,
        commit_time_unix_us: Some(1_700_000_000_000_000 + lsn as i64),
        event: ChangeEvent {
            id: EventId::from_position(Lsn(lsn), seq),
            op: Op::Insert,
            schema: "public".into(),
            table: "permits".into(),
            key: Some(Row::new()),
            old: None,
            new: Some(Row::new()),
            trigger: None,
            lsn: Lsn(lsn),
            xid: Some(7),
            commit_time: None,
            unchanged_toast: vec![],
            columns: None,
            previous: None,
            origin: Default::default(),
        },
    }
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id.to_string()).collect()
}

fn change(
    lsn: u64,
    op: Op,
    key: i64,
    new: Option<serde_json::Value>,
    old: Option<serde_json::Value>,
) -> JournalEntry {
    let mut e = entry(lsn, 0);
    e.event.op = op;
    e.event.key = serde_json::json!({ "id": key })
        .as_object()
        .cloned()
        .map(Row::from);
    e.event.new = new.and_then(|v| v.as_object().cloned().map(Row::from));
    e.event.old = old.and_then(|v| v.as_object().cloned().map(Row::from));
    e
}

fn appends_are_durable_and_replays_are_skipped(store: &Store) -> anyhow::Result<()> {
    {
        let mut w = store.writer()?;
        let out = append(&mut *w, &[entry(100, 0), entry(100, 1)], None)?;
        assert_eq!(
            out,
            AppendOutcome {
                appended: 2,
                skipped: 0
            }
        );
        // A partial transaction: its commit has not been confirmed.
        append(&mut *w, &[entry(200, 0)], Some(Lsn(150)))?;
        assert_eq!(
            w.head(),
            JournalHead {
                pos: 3,
                confirmed_lsn: Lsn(150)
            }
        );
    }
    // Restart: the slot replays transaction 200 whole, then more.
    let mut w = store.writer()?;
    assert_eq!(
        w.head(),
        JournalHead {
            pos: 3,
            confirmed_lsn: Lsn(150)
        }
    );
    let out = append(
        &mut *w,
        &[entry(200, 0), entry(200, 1), entry(300, 0)],
        Some(Lsn(310)),
    )?;
    assert_eq!(
        out,
        AppendOutcome {
            appended: 2,
            skipped: 1
        }
    );
    // Confirmed LSN never moves back.
    append(&mut *w, &[], Some(Lsn(5)))?;
    assert_eq!(w.head().confirmed_lsn, Lsn(310));

    let r = store.open(Access::Existing)?;
    let all = r.read_after(0, 100)?;
    assert_eq!(
        ids(&all),
        [
            EventId::from_position(Lsn(100), 0).to_string(),
            EventId::from_position(Lsn(100), 1).to_string(),
            EventId::from_position(Lsn(200), 0).to_string(),
            EventId::from_position(Lsn(200), 1).to_string(),
            EventId::from_position(Lsn(300), 0).to_string(),
        ]
    );
    assert_eq!(
        all.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        ids(&r.read_after(3, 1)?),
        [EventId::from_position(Lsn(200), 1).to_string()]
    );
    Ok(())
}

fn cursors_only_move_forward(store: &Store) -> anyhow::Result<()> {
    let mut w = store.writer()?;
    append(&mut *w, &[entry(1, 0), entry(2, 0), entry(3, 0)], None)?;
    let mut r = store.open(Access::Existing)?;
    assert_eq!(r.cursor("a")?, 0);
    advance(&mut *r, "a", 2)?;
    advance(&mut *r, "a", 1)?;
    assert_eq!(r.cursor("a")?, 2);
    assert_eq!(r.cursor("b")?, 0);
    let cursors = r.cursors()?;
    assert_eq!(cursors.len(), 2);
    assert_eq!(cursors[0].lag_events, 1);
    assert_eq!(
        cursors[0].oldest_pending_unix_us,
        Some(1_700_000_000_000_003)
    );
    assert_eq!(cursors[1].lag_events, 3);
    Ok(())
}

fn old_is_filled_from_the_last_seen_row(store: &Store) -> anyhow::Result<()> {
    use serde_json::json;
    let mut w = store.writer()?;
    track_status(&mut *w);
    append(
        &mut *w,
        &[
            change(
                1,
                Op::Insert,
                1,
                Some(json!({"id": 1, "status": "pending", "fee": 3})),
                None,
            ),
            change(
                2,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "review", "fee": 3})),
                None,
            ),
            // First sight of row 2: nothing to fill from.
            change(
                3,
                Op::Update,
                2,
                Some(json!({"id": 2, "status": "approved"})),
                None,
            ),
            change(
                4,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "approved", "fee": 4})),
                None,
            ),
            change(5, Op::Delete, 1, None, Some(json!({"id": 1}))),
            change(
                6,
                Op::Update,
                1,
                Some(json!({"id": 1, "status": "x"})),
                None,
            ),
        ],
        None,
    )?;
    let r = store.open(Access::Existing)?;
    let olds: Vec<serde_json::Value> = r
        .read_after(0, 10)?
        .iter()
        .map(|e| json!(e.event.old))
        .collect();
    assert_eq!(
        olds,
        [
            json!(null),
            json!({"id": 1, "status": "pending"}),
            json!(null),
            json!({"id": 1, "status": "review"}),
            json!({"id": 1, "status": "approved"}),
            // The delete forgot row 1.
            json!(null),
        ]
    );
    Ok(())
}

fn prune_keeps_what_a_cursor_still_needs(store: &Store) -> anyhow::Result<()> {
    let mut w = store.writer()?;
    append(
        &mut *w,
        &[entry(1, 0), entry(2, 0), entry(3, 0), entry(4, 0)],
        None,
    )?;
    let mut r = store.open(Access::Existing)?;
    advance(&mut *r, "fast", 4)?;
    advance(&mut *r, "slow", 2)?;
    // Entries 1..=3 are older than the cutoff, but "slow" has not passed 3.
    assert_eq!(w.prune(1_700_000_000_000_004, 100)?, 2);
    assert_eq!(
        r.read_after(0, 10)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // The newest entry stays even when every cursor passed it: positions continue from it.
    advance(&mut *r, "slow", 4)?;
    assert_eq!(w.prune(i64::MAX, 100)?, 1);
    append(&mut *w, &[entry(5, 0)], None)?;
    assert_eq!(
        r.read_after(0, 10)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [4, 5]
    );
    Ok(())
}

fn checkpoint_resets_move_one_cursor_and_respect_retention(store: &Store) -> anyhow::Result<()> {
    let mut w = store.writer()?;
    // Transactions at LSN 10 (2 changes), 20 and 30; commit times follow the LSN.
    append(
        &mut *w,
        &[entry(10, 0), entry(10, 1), entry(20, 0), entry(30, 0)],
        None,
    )?;
    let mut r = store.open(Access::Existing)?;
    advance(&mut *r, "a", 4)?;
    advance(&mut *r, "b", 4)?;
    let g0 = r.cursor_state("a")?.generation;
    // Back to the transaction at LSN 20: it and everything after is delivered again.
    let s = r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?;
    assert_eq!((s.pos, s.generation), (2, g0 + 1));
    assert_eq!(r.cursor_state("b")?.pos, 4, "other sinks are untouched");
    // By time: entry(lsn) commits at 1_700_000_000_000_000 + lsn µs.
    assert_eq!(
        r.reset_cursor("a", ResetTarget::Time(1_700_000_000_000_030))?
            .pos,
        3
    );
    assert_eq!(r.reset_cursor("a", ResetTarget::Lsn(Lsn(1)))?.pos, 0);
    assert_eq!(r.reset_cursor("a", ResetTarget::Latest)?.pos, 4);
    // A stale runner's commit (old generation) no longer moves the reset cursor.
    r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?;
    let mut r2 = store.open(Access::Existing)?;
    r2.commit_batch("a", 4, g0, &[], &Default::default())?;
    assert_eq!(r.cursor_state("a")?.pos, 2);

    // Prune the first transaction: a target before what is left is refused.
    advance(&mut *r, "b", 4)?;
    r.reset_cursor("a", ResetTarget::Latest)?;
    assert_eq!(w.prune(i64::MAX, 2)?, 2);
    match r.reset_cursor("a", ResetTarget::Lsn(Lsn(10))) {
        Err(ResetError::BeyondRetention { .. }) => {}
        other => panic!("expected a retention error, got {other:?}"),
    }
    let e = r
        .reset_cursor("a", ResetTarget::Time(1_700_000_000_000_000))
        .err();
    assert!(e.is_some_and(|e| e.to_string().contains("resync")));
    assert_eq!(r.reset_cursor("a", ResetTarget::Lsn(Lsn(20)))?.pos, 2);
    Ok(())
}

fn entries_keep_the_captured_tables_name_beside_the_events_name(
    store: &Store,
) -> anyhow::Result<()> {
    let mut w = store.writer()?;
    let mut e = entry(0x10, 0);
    e.event.table = "permits_v2".into();
    append(&mut *w, &[e], None)?;
    let r = store.open(Access::Existing)?;
    let got = r.read_after(0, 10)?;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (&*got[0].table, &*got[0].event.table),
        ("public.permits", "permits_v2")
    );
    Ok(())
}

fn read_batch_stops_at_its_byte_budget_but_returns_one_event(store: &Store) -> anyhow::Result<()> {
    let big = |seq: u32| {
        let mut e = entry(100, seq);
        let mut row = serde_json::Map::new();
        row.insert("v".into(), serde_json::Value::String("x".repeat(10_000)));
        e.event.new = Some(row.into());
        e
    };
    let mut w = store.writer()?;
    append(&mut *w, &[big(0), big(1), big(2), big(3)], None)?;
    let r = store.open(Access::Existing)?;
    // Each event's JSON is a little over 10 kB: two fit in 25 kB, a third does not.
    assert_eq!(r.read_batch(0, 100, 25_000)?.len(), 2);
    assert_eq!(
        r.read_batch(2, 100, 25_000)?
            .iter()
            .map(|e| e.pos)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // One event larger than the whole budget still comes, alone.
    assert_eq!(r.read_batch(0, 100, 1)?.len(), 1);
    // The count limit still applies.
    assert_eq!(r.read_batch(0, 3, usize::MAX)?.len(), 3);
    assert_eq!(r.read_after(0, 100)?.len(), 4);
    Ok(())
}

fn attempt(n: u32) -> pgcdc_sinks::Attempt {
    pgcdc_sinks::Attempt {
        event_id: format!("ev-{n}"),
        sink: "hook".into(),
        attempt: n,
        at: "2026-01-01T00:00:00.000000Z".parse().expect("a valid time"),
        status: Some(503),
        error: Some("x".repeat(500)),
        latency_ms: 3,
        outcome: pgcdc_sinks::AttemptOutcome::Retrying,
    }
}

fn the_audit_log_does_not_count_against_the_journal(store: &Store) -> anyhow::Result<()> {
    let mut w = store.writer()?;
    append(&mut *w, &[entry(1, 0)], None)?;
    let mut r = store.open(Access::Existing)?;
    let before = (w.used_bytes()?, r.used_bytes()?);
    for chunk in 0..20 {
        let attempts: Vec<_> = (0..100).map(|n| attempt(chunk * 100 + n)).collect();
        r.audit_insert(&attempts)?;
    }
    assert_eq!(
        r.audit_by_sink("hook", "2000-01-01T00:00:00Z", 5000)?.len(),
        2000
    );
    assert_eq!((w.used_bytes()?, r.used_bytes()?), before);
    Ok(())
}
/// A batch a sink settled as a whole is one row, found by every one of its
/// delivery ids (and only by those), beside single attempts of the same events.
fn a_batch_audit_row_answers_for_each_of_its_events(store: &Store) -> anyhow::Result<()> {
    use pgcdc_sinks::{AttemptOutcome, BatchAttempt, DeliveryIds};
    let mut r = store.open(Access::Create)?;
    let id = |lsn: u64, seq: u32| EventId::from_position(Lsn(lsn), seq).as_str().to_string();
    let batch = |from: u64, at: &str, extra: &[String]| -> anyhow::Result<BatchAttempt> {
        let mut ids = DeliveryIds::default();
        for lsn in from..from + 1_000 {
            ids.push(&id(lsn, 0));
        }
        for e in extra {
            ids.push(e);
        }
        Ok(BatchAttempt {
            sink: "kafka".into(),
            attempt: 1,
            at: at.parse()?,
            latency_ms: 12,
            outcome: AttemptOutcome::Delivered,
            ids,
        })
    };
    let resync_row = "R00000001-00112233445566778899aabbccddeeff".to_string();
    let first = batch(100, "2026-01-01T00:00:01Z", &[format!("{}.1", id(100, 0))])?;
    let second = batch(
        1_100,
        "2026-01-01T00:00:02Z",
        std::slice::from_ref(&resync_row),
    )?;
    r.audit_insert_batches(&[first, second])?;
    // A retry of an event before the round that delivered it, as a single attempt.
    let retry = pgcdc_sinks::Attempt {
        event_id: id(150, 0),
        sink: "kafka".into(),
        attempt: 1,
        at: "2026-01-01T00:00:00.5Z".parse()?,
        status: None,
        error: Some("broker down".into()),
        latency_ms: 3,
        outcome: AttemptOutcome::Retrying,
    };
    r.audit_insert(&[retry])?;

    type Outcomes = anyhow::Result<Vec<(String, AttemptOutcome)>>;
    let outcomes = |r: &dyn StateStore, event: &str| -> Outcomes {
        Ok(r.audit_by_event(event)?
            .into_iter()
            .map(|a| (a.event_id, a.outcome))
            .collect())
    };
    assert_eq!(
        outcomes(&*r, &id(150, 0))?,
        [
            (id(150, 0), AttemptOutcome::Retrying),
            (id(150, 0), AttemptOutcome::Delivered)
        ]
    );
    assert_eq!(
        outcomes(&*r, &id(100, 0))?,
        [
            (id(100, 0), AttemptOutcome::Delivered),
            (format!("{}.1", id(100, 0)), AttemptOutcome::Delivered)
        ]
    );
    for lsn in [101, 1_099, 1_100, 2_099] {
        let got = r.audit_by_event(&id(lsn, 0))?;
        assert_eq!(got.len(), 1, "{lsn}: {got:?}");
        assert_eq!((got[0].sink.as_str(), got[0].latency_ms), ("kafka", 12));
    }
    assert_eq!(outcomes(&*r, &resync_row)?.len(), 1);
    // Inside a batch's id range but not in it; and outside every range.
    for absent in [id(150, 1), id(99, 0), id(2_100, 0), "R00000001-00".into()] {
        assert!(outcomes(&*r, &absent)?.is_empty(), "{absent}");
    }
    let all = r.audit_by_sink("kafka", "2000-01-01T00:00:00Z", 10_000)?;
    assert_eq!(all.len(), 2_003);
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(all[0].outcome, AttemptOutcome::Retrying);
    assert_eq!(
        r.audit_by_sink("kafka", "2000-01-01T00:00:00Z", 10)?.len(),
        10
    );
    assert_eq!(
        r.audit_by_sink("kafka", "2026-01-01T00:00:02.000000Z", 10_000)?
            .len(),
        1_001
    );
    // Pruning removes whole batches by time.
    assert_eq!(r.audit_prune("2026-01-01T00:00:01.500000Z")?, 2);
    assert!(outcomes(&*r, &id(150, 0))?.is_empty());
    assert_eq!(outcomes(&*r, &id(1_500, 0))?.len(), 1);
    Ok(())
}

fn a_missing_store_says_what_to_do(store: &Store) -> anyhow::Result<()> {
    assert!(!store.exists());
    match store.open(Access::Existing) {
        Err(e) => assert!(e.to_string().contains("pgcdc run"), "{e}"),
        Ok(_) => panic!("opened a store that does not exist"),
    }
    Ok(())
}

fn dlq_record(pos: i64, row: &str, state: pgcdc::journal::DlqState) -> pgcdc::journal::DlqRecord {
    let mut event = entry(pos as u64, 0).event;
    event.id = EventId::from_position(Lsn(pos as u64), 0);
    pgcdc::journal::DlqRecord {
        item: pgcdc_sinks::Outgoing {
            event: std::sync::Arc::new(event),
            body: serde_json::Value::Null,
            part: 0,
            row: row.to_string(),
        },
        pos,
        state,
        error: Some("HTTP 400".into()),
    }
}

fn dlq_items_replay_in_row_order(store: &Store) -> anyhow::Result<()> {
    use pgcdc::journal::{DlqError, DlqSelector, DlqState};
    let mut w = store.writer()?;
    append(&mut *w, &[entry(1, 0), entry(2, 0), entry(3, 0)], None)?;
    let mut r = store.open(Access::Existing)?;
    let g = r.cursor_state("hook")?.generation;
    let records = [
        dlq_record(1, "row-a", DlqState::Dead),
        dlq_record(2, "row-a", DlqState::Parked),
        dlq_record(3, "row-b", DlqState::Dead),
    ];
    r.commit_batch("hook", 3, g, &records, &Default::default())?;
    assert_eq!(r.cursor("hook")?, 3);
    assert_eq!(r.dlq_count("hook")?, 3);
    let list = r.dlq_list("hook")?;
    let (all, replaying) = r.dlq_rows("hook")?;
    assert_eq!((all.len(), replaying.len()), (2, 0));
    // The parked item cannot jump the dead one ahead of it.
    match r.dlq_request_replay("hook", &DlqSelector::One(list[1].delivery_id.clone())) {
        Err(DlqError::ParkedBehind { head, .. }) => assert_eq!(head, list[0].delivery_id),
        other => panic!("expected ParkedBehind, got {other:?}"),
    }
    assert_eq!(
        r.dlq_request_replay("hook", &DlqSelector::One(list[0].delivery_id.clone()))?,
        2
    );
    let batch = r.dlq_replay_batch("hook", 10)?;
    assert_eq!(batch.len(), 2);
    // The first delivers, the second fails again: it stays, dead, not replaying.
    r.dlq_settle(
        "hook",
        &[batch[0].id],
        &[(
            batch[1].id,
            "row-a".into(),
            DlqState::Dead,
            Some("again".into()),
        )],
    )?;
    let left = r.dlq_list("hook")?;
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].error.as_deref(), Some("again"));
    assert!(!left[0].replay);
    assert_eq!(r.dlq_drop("hook", &DlqSelector::All)?, 2);
    assert!(matches!(
        r.dlq_drop("hook", &DlqSelector::One("nope".into())),
        Err(DlqError::NotFound { .. })
    ));
    let dropped = r.drop_cursor("hook")?.map(|d| d.cursor);
    assert_eq!(dropped, Some(3));
    Ok(())
}

fn resyncs_queue_once_per_table(store: &Store) -> anyhow::Result<()> {
    use pgcdc::journal::{ResyncKind, ResyncProgress, ResyncRequestError};
    let mut w = store.writer()?;
    let mut r = store.open(Access::Create)?;
    let first = r.request_resync(ResyncKind::Resync, "public.permits", Some("hook"), None)?;
    assert_eq!(first.state, "pending");
    assert!(matches!(
        r.request_resync(ResyncKind::Resync, "public.permits", Some("hook"), None),
        Err(ResyncRequestError::AlreadyActive { .. })
    ));
    // Another target of the same table is another resync.
    let other = r.request_resync(ResyncKind::Resync, "public.permits", None, Some("id > 3"))?;
    assert_eq!(r.next_resync()?.map(|i| i.id), Some(first.id));
    // A chunk's progress commits with its events.
    let progress = ResyncProgress {
        id: first.id,
        last_key: Some("{\"id\":9}".into()),
        rows: 2,
        done: true,
    };
    let e = entry(50, 0);
    w.append(&[(&e, Some("hook"))], None, &[progress])?;
    let done = r.resync(first.id)?.map(|i| (i.state, i.rows, i.chunks));
    assert_eq!(done, Some(("done".to_string(), 2, 1)));
    assert_eq!(r.read_after(0, 10)?[0].target.as_deref(), Some("hook"));
    assert_eq!(r.cancel_resync("public.permits", None)?, vec![other.id]);
    let second = r.request_resync(ResyncKind::Snapshot, "public.permits", None, None)?;
    r.fail_resync(second.id, "boom")?;
    let listed: Vec<(i64, String)> = r
        .resyncs(10)?
        .into_iter()
        .map(|i| (i.id, i.state))
        .collect();
    assert_eq!(
        listed,
        vec![
            (second.id, "failed".to_string()),
            (other.id, "cancelled".to_string()),
            (first.id, "done".to_string()),
        ]
    );
    Ok(())
}

// --- the Postgres store only ---

fn staged_put(xid: u32, subxid: u32, seq: i64, body: &[u8]) -> pgcdc::journal::StagingOp {
    pgcdc::journal::StagingOp::Put(pgcdc::journal::StagedMessage {
        xid,
        subxid,
        seq,
        lsn: Lsn(0x1000 + seq as u64),
        body: body.to_vec(),
    })
}

/// Streamed transactions' staging: read back by transaction in `seq` order and in
/// pages bounded by count and bytes; a subtransaction's abort discards exactly its rows,
/// a transaction's all of its own, a clear everything.
fn staged_messages_read_back_in_order_and_discard_exactly(store: &Store) -> anyhow::Result<()> {
    use pgcdc::journal::StagingOp;
    let mut w = store.writer()?;
    let r = store.open(Access::Create)?;
    w.stage(&[
        staged_put(7, 7, 0, b"a"),
        staged_put(8, 8, 1, b"other"),
        staged_put(7, 9, 2, b"sub"),
        staged_put(7, 7, 3, &[0u8, 255, 10]),
    ])?;
    let bodies = |xid| -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(r.staged(xid, -1, 100, usize::MAX)?
            .into_iter()
            .map(|m| m.body)
            .collect())
    };
    assert_eq!(
        bodies(7)?,
        [b"a".to_vec(), b"sub".to_vec(), vec![0, 255, 10]]
    );
    let page = r.staged(7, 0, 1, usize::MAX)?;
    assert_eq!((page.len(), page[0].seq, page[0].subxid), (1, 2, 9));
    assert_eq!(page[0].lsn, Lsn(0x1002));
    // One message over the byte budget still comes alone.
    assert_eq!(r.staged(7, -1, 100, 0)?.len(), 1);
    w.stage(&[StagingOp::Discard {
        xid: 7,
        subxid: Some(9),
    }])?;
    assert_eq!(bodies(7)?, [b"a".to_vec(), vec![0, 255, 10]]);
    // In order inside one call: discarded, then staged anew.
    w.stage(&[
        StagingOp::Discard {
            xid: 7,
            subxid: None,
        },
        staged_put(7, 7, 0, b"again"),
    ])?;
    assert_eq!(bodies(7)?, [b"again".to_vec()]);
    assert_eq!(bodies(8)?, [b"other".to_vec()]);
    // Stale staging is refused, not overwritten.
    assert!(w.stage(&[staged_put(8, 8, 1, b"stale")]).is_err());
    w.stage(&[StagingOp::Clear])?;
    assert!(bodies(7)?.is_empty() && bodies(8)?.is_empty());
    Ok(())
}

async fn sql(pg: &PgCluster, statement: &str) -> anyhow::Result<()> {
    pg.client().await?.batch_execute(statement).await?;
    Ok(())
}

/// A write under a fence commits only while the lease is at this process's epoch;
/// a stale epoch writes nothing and says so, distinctly.
#[tokio::test]
async fn fenced_writes_fail_once_the_epoch_moves_on() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let store = pg_store(&pg, "pgcdc")?;
    let mut w = store.writer()?;
    let mut r = store.open(Access::Existing)?;
    append(&mut *w, &[entry(1, 0)], Some(Lsn(1)))?;

    sql(&pg, "UPDATE pgcdc.lease SET epoch = 7, holder = 'me'").await?;
    store.set_fence(Some(7))?;
    append(&mut *w, &[entry(2, 0)], Some(Lsn(2)))?;
    advance(&mut *r, "hook", 2)?;

    // Another process took over.
    sql(&pg, "UPDATE pgcdc.lease SET epoch = 8, holder = 'other'").await?;
    let fenced = |e: &JournalError| {
        matches!(
            e,
            JournalError::Fenced {
                epoch: 7,
                current: Some(8)
            }
        )
    };
    match append(&mut *w, &[entry(3, 0)], Some(Lsn(3))) {
        Err(e) => {
            assert!(fenced(&e), "{e:?}");
            assert!(e.to_string().contains("lost leadership"), "{e}");
        }
        Ok(o) => panic!("a stale writer appended {o:?}"),
    }
    let errs = [
        advance(&mut *r, "hook", 3).err(),
        r.audit_insert(&[attempt(1)]).err(),
        r.delete_meta(&pgcdc::journal::MetaKey::Slot).err(),
        w.set_meta(&pgcdc::journal::MetaKey::Slot, "x").err(),
        w.prune(i64::MAX, 10).err(),
    ];
    for e in errs {
        assert!(e.as_ref().is_some_and(fenced), "{e:?}");
    }
    // Nothing of the stale writer's reached the store.
    let fresh = store.open(Access::Existing)?;
    assert_eq!(
        fresh.head()?,
        JournalHead {
            pos: 2,
            confirmed_lsn: Lsn(2)
        }
    );
    assert_eq!(fresh.read_after(0, 10)?.len(), 2);
    assert!(fresh.audit_by_event("ev-1")?.is_empty());

    // Without a fence (or with the current epoch) writes go through again.
    store.set_fence(Some(8))?;
    append(&mut *w, &[entry(3, 0)], Some(Lsn(3)))?;
    store.set_fence(None)?;
    advance(&mut *r, "hook", 3)?;
    assert_eq!(fresh.head()?.pos, 3);
    Ok(())
}

/// An epoch bump waits for a fenced write in flight (the lease row is share-locked
/// by it), so no write of the old epoch commits after the bump.
#[tokio::test]
async fn an_epoch_bump_waits_for_writes_in_flight() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let store = pg_store(&pg, "pgcdc")?;
    drop(store.writer()?);
    sql(&pg, "UPDATE pgcdc.lease SET epoch = 1").await?;
    store.set_fence(Some(1))?;
    // Hold the lease row the way a fenced write does, then bump from elsewhere.
    let holder = pg.client().await?;
    holder
        .batch_execute("BEGIN; SELECT epoch FROM pgcdc.lease FOR SHARE")
        .await?;
    let bump = tokio::spawn({
        let client = pg.client().await?;
        async move {
            client
                .batch_execute("UPDATE pgcdc.lease SET epoch = 2")
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bump.is_finished(), "the bump must wait for the share lock");
    holder.batch_execute("COMMIT").await?;
    tokio::time::timeout(Duration::from_secs(10), bump).await???;
    let mut r = store.open(Access::Existing)?;
    assert!(matches!(
        r.cursor("hook"),
        Err(JournalError::Fenced {
            current: Some(2),
            ..
        })
    ));
    Ok(())
}

/// A schema written by a newer pgcdc is refused with both versions named; an older
/// one is migrated.
#[tokio::test]
async fn a_newer_schema_is_refused_with_both_versions() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let store = pg_store(&pg, "state")?;
    drop(store.writer()?);
    sql(&pg, "UPDATE state.schema_version SET version = 99").await?;
    for e in [store.writer().err(), store.open(Access::Create).err()] {
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("version 99") && e.contains("up to 5"), "{e}");
    }
    // Version 0 (an empty schema_version): the migrations run again from the start.
    let other = pg_store(&pg, "other")?;
    sql(
        &pg,
        "CREATE SCHEMA other; CREATE TABLE other.schema_version \
         (id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1), version integer NOT NULL)",
    )
    .await?;
    let mut w = other.writer()?;
    append(&mut *w, &[entry(1, 0)], None)?;
    assert_eq!(other.open(Access::Existing)?.head()?.pos, 1);
    Ok(())
}

/// A store at version 4 (before per-batch audit rows) gets the batch table on
/// the next start; its per-event audit rows still answer.
#[tokio::test]
async fn a_store_before_batch_audit_rows_migrates_to_them() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let store = pg_store(&pg, "pgcdc")?;
    store.open(Access::Create)?.audit_insert(&[attempt(1)])?;
    sql(
        &pg,
        "DROP TABLE pgcdc.audit_batch; UPDATE pgcdc.schema_version SET version = 4",
    )
    .await?;
    let mut r = store.open(Access::Create)?;
    assert_eq!(r.audit_by_event("ev-1")?.len(), 1);
    let mut ids = pgcdc_sinks::DeliveryIds::default();
    ids.push("ev-2");
    r.audit_insert_batches(&[pgcdc_sinks::BatchAttempt {
        sink: "kafka".into(),
        attempt: 1,
        at: "2026-01-01T00:00:00Z".parse()?,
        latency_ms: 1,
        outcome: pgcdc_sinks::AttemptOutcome::Delivered,
        ids,
    }])?;
    assert_eq!(r.audit_by_event("ev-2")?.len(), 1);
    let v = pg
        .client()
        .await?
        .query_one("SELECT version FROM pgcdc.schema_version", &[])
        .await?;
    assert_eq!(v.get::<_, i32>(0), 5);
    Ok(())
}

/// The state url's password shows in no error and no description.
#[tokio::test]
async fn the_password_never_shows() -> anyhow::Result<()> {
    let secret = "hunter2-very-secret";
    let port = pgcdc_tests::free_port()?;
    let url = format!("postgres://pgcdc:{secret}@127.0.0.1:{port}/db?sslmode=disable");
    let store = Store::postgres(url.parse()?, "pgcdc");
    let shown = [
        store.describe(),
        format!("{store:?}"),
        store
            .open(Access::Create)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        store
            .writer()
            .err()
            .map(|e| format!("{e} {e:?}"))
            .unwrap_or_default(),
    ];
    for s in shown {
        assert!(!s.contains(secret), "{s}");
        assert!(!s.is_empty());
    }
    Ok(())
}

/// What the journal thread keeps in memory for the sink runners: every entry the
/// append stored, at its position, as stored (old values filled in), and
/// nothing it skipped; the same events a read of the store gives.
fn the_writer_says_where_each_appended_entry_went_as_stored(store: &Store) -> anyhow::Result<()> {
    use serde_json::json;
    let mut w = store.writer()?;
    track_status(&mut *w);
    let first = [change(
        1,
        Op::Insert,
        1,
        Some(json!({"id": 1, "status": "pending"})),
        None,
    )];
    append(&mut *w, &first, None)?;
    let appended = w.take_appended();
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.index, a.pos))
            .collect::<Vec<_>>(),
        [(0, 1)]
    );
    assert!(w.take_appended().is_empty(), "taken once");
    // A replayed entry (skipped), then an update whose old row is filled in.
    let second = [
        first[0].clone(),
        change(
            2,
            Op::Update,
            1,
            Some(json!({"id": 1, "status": "approved"})),
            None,
        ),
    ];
    let out = append(&mut *w, &second, None)?;
    assert_eq!((out.appended, out.skipped), (1, 1));
    let appended = w.take_appended();
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.index, a.pos))
            .collect::<Vec<_>>(),
        [(1, 2)]
    );
    let filled = appended[0].filled.as_ref().map(|e| json!(e.old));
    assert_eq!(filled, Some(json!({"id": 1, "status": "pending"})));
    let stored = store.open(Access::Existing)?.read_after(1, 10)?;
    assert_eq!(Some(&stored[0].event), appended[0].filled.as_deref());
    Ok(())
}
