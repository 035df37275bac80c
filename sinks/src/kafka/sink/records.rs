//! Rendering: the Kafka records of one item (topic, key, value, identity).

use std::fmt::Write as _;
use std::ops::Range;

use pgcdc_schema::debezium::{self, BeforeImage, DebeziumOptions};
use pgcdc_schema::{ChangeEvent, Op};

use super::KafkaSink;
use crate::kafka::config::{Before, Format};
use crate::kafka::progress::RecordId;
use crate::Outgoing;

/// The Kafka records of a batch. Their bytes lie back to back in two buffers
/// kept from batch to batch, and each record names its parts as ranges of them:
/// a batch of 5,000 records takes no allocation of its own per record (it took
/// six: topic, key, value, position, table and identity).
#[derive(Default)]
pub(super) struct Recs {
    /// Keys, values and extra header values.
    bytes: Vec<u8>,
    /// Topics, positions and table names.
    text: String,
    list: Vec<Rec>,
}

/// One Kafka record to write for an item: where its parts lie in [`Recs`].
struct Rec {
    item: usize,
    /// Its identity for the read-back: the item's delivery id (with
    /// [`OLD_KEY_SUFFIX`] on the delete of the old key that a primary key change
    /// writes first), and whether it is a tombstone.
    id: Range<usize>,
    tombstone: bool,
    topic: Range<usize>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    lsn: Range<usize>,
    table: Range<usize>,
    op: &'static str,
    /// One more header: Debezium's `__debezium.newkey`/`__debezium.oldkey` on the
    /// records of a primary key change.
    header: Option<(&'static str, Range<usize>)>,
}

/// One record's parts, borrowed from its batch.
pub(super) struct RecView<'a> {
    pub(super) id: &'a str,
    pub(super) topic: &'a str,
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    pub(super) lsn: &'a str,
    pub(super) table: &'a str,
    pub(super) op: &'static str,
    pub(super) header: Option<(&'static str, &'a [u8])>,
}

/// The kept buffers are dropped beyond this: a batch of unusually wide rows
/// does not pin its memory for the batches after it.
const KEEP_BYTES: usize = 16 << 20;

impl Recs {
    /// How many records.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The index of the item record `i` belongs to.
    pub(super) fn item(&self, i: usize) -> usize {
        self.list[i].item
    }

    /// Record `i`'s identity for the read-back (its `pgcdc-event-id` header and
    /// whether it is a tombstone).
    pub(super) fn id(&self, i: usize) -> RecordId {
        let r = &self.list[i];
        (self.text[r.id.clone()].to_string(), r.tombstone)
    }

    /// Record `i`'s topic.
    pub(super) fn topic(&self, i: usize) -> &str {
        &self.text[self.list[i].topic.clone()]
    }

    /// Record `i`'s parts.
    pub(super) fn view(&self, i: usize) -> RecView<'_> {
        let r = &self.list[i];
        let bytes = |span: &Range<usize>| &self.bytes[span.clone()];
        RecView {
            id: &self.text[r.id.clone()],
            topic: &self.text[r.topic.clone()],
            key: r.key.as_ref().map(bytes),
            value: r.value.as_ref().map(bytes),
            lsn: &self.text[r.lsn.clone()],
            table: &self.text[r.table.clone()],
            op: r.op,
            header: r.header.as_ref().map(|(k, span)| (*k, bytes(span))),
        }
    }

    /// The buffers emptied for the next batch; None when they grew past
    /// [`KEEP_BYTES`].
    pub(super) fn recycle(mut self) -> Option<Recs> {
        if self.bytes.capacity() + self.text.capacity() > KEEP_BYTES {
            return None;
        }
        self.bytes.clear();
        self.text.clear();
        self.list.clear();
        Some(self)
    }

    /// Appends `f`'s bytes; their range, or None when `f` wrote nothing (a null key).
    fn put_bytes<E>(
        &mut self,
        f: impl FnOnce(&mut Vec<u8>) -> Option<Result<(), E>>,
    ) -> Result<Option<Range<usize>>, E> {
        let from = self.bytes.len();
        match f(&mut self.bytes) {
            None => Ok(None),
            Some(r) => r.map(|()| Some(from..self.bytes.len())),
        }
    }

    /// Appends `s`; its range.
    fn put_text(&mut self, s: std::fmt::Arguments<'_>) -> Range<usize> {
        let from = self.text.len();
        // Writing to a String cannot fail.
        let _ = self.text.write_fmt(s);
        from..self.text.len()
    }

    /// The marks to go back to when an item's rendering fails part-way.
    fn marks(&self) -> (usize, usize, usize) {
        (self.bytes.len(), self.text.len(), self.list.len())
    }

    fn truncate(&mut self, (bytes, text, list): (usize, usize, usize)) {
        self.bytes.truncate(bytes);
        self.text.truncate(text);
        self.list.truncate(list);
    }
}

/// Suffix of the delivery id of the delete record a primary key change writes
/// before its create record (which keeps the plain id), so the read-back tells them apart.
const OLD_KEY_SUFFIX: &str = "/old-key";

/// The identity, topic, position, table and operation the records of one item share.
struct Common {
    id: Range<usize>,
    topic: Range<usize>,
    lsn: Range<usize>,
    table: Range<usize>,
    op: &'static str,
}

impl Common {
    fn rec(&self, item: usize, key: &Option<Range<usize>>) -> Rec {
        Rec {
            item,
            id: self.id.clone(),
            tombstone: false,
            topic: self.topic.clone(),
            key: key.clone(),
            value: None,
            lsn: self.lsn.clone(),
            table: self.table.clone(),
            op: self.op,
            header: None,
        }
    }
}

impl KafkaSink {
    /// How the Debezium envelope is rendered, when the sink writes it (a Debezium
    /// format and no `transform`).
    fn debezium(&self) -> Option<DebeziumOptions> {
        (!self.transformed && self.config.format.is_debezium()).then(|| DebeziumOptions {
            before: match self.config.before {
                Before::Postgres => BeforeImage::Postgres,
                Before::Known => BeforeImage::Known,
            },
            schemas: self.config.format == Format::DebeziumSchema,
        })
    }

    /// Appends the Debezium key of `event`: its range, None for a null key.
    fn put_debezium_key(
        &self,
        out: &mut Recs,
        event: &ChangeEvent,
        options: DebeziumOptions,
    ) -> Result<Option<Range<usize>>, String> {
        out.put_bytes(|b| debezium::write_key(event, &self.source, options, b))
            .map_err(|e| e.to_string())
    }

    /// Appends the Debezium value of `event`: its range.
    fn put_debezium_value(
        &self,
        out: &mut Recs,
        event: &ChangeEvent,
        options: DebeziumOptions,
    ) -> Result<Option<Range<usize>>, String> {
        let now_ms = self.batch_started_ms;
        out.put_bytes(|b| {
            Some(debezium::write_value(
                event,
                &self.source,
                options,
                now_ms,
                b,
            ))
        })
        .map_err(|e| e.to_string())
    }

    /// Appends the records of one item to `out` (its tombstone too, after a
    /// delete when configured); none for a truncate the Debezium formats skip.
    /// On `Err` nothing of the item is left in `out`.
    pub(super) fn records(
        &self,
        index: usize,
        item: &Outgoing,
        out: &mut Recs,
    ) -> Result<(), String> {
        let marks = out.marks();
        let r = self.write_records(index, item, out);
        if r.is_err() {
            out.truncate(marks);
        }
        r
    }

    fn write_records(&self, index: usize, item: &Outgoing, out: &mut Recs) -> Result<(), String> {
        let event = &item.event;
        let debezium = self.debezium();
        if debezium.is_some() && event.op == Op::Truncate && !self.config.truncates {
            // Debezium's default `skipped.operations = t`: delivered by writing nothing.
            tracing::debug!(sink = %self.name, table = %event.qualified_table(), "truncate skipped (truncates = false)");
            return Ok(());
        }
        let topic = out.text.len();
        self.topic.render_into(
            &event.schema,
            &event.table,
            event.trigger.as_deref(),
            &mut out.text,
        );
        let topic = topic..out.text.len();
        crate::kafka::config::check_topic_name(&out.text[topic.clone()])?;
        let common = Common {
            id: out.put_text(format_args!("{}", item.delivery())),
            topic,
            lsn: out.put_text(format_args!("{}", event.lsn)),
            table: out.put_text(format_args!("{}.{}", event.schema, event.table)),
            op: event.op.as_str(),
        };
        if let (None, Some(options)) = (&self.key, debezium) {
            if let Some(split) = debezium::key_change(event) {
                return self.key_change_records(index, item, &common, options, &split, out);
            }
        }
        let key = match (&self.key, debezium) {
            (None, Some(options)) => self.put_debezium_key(out, event, options)?,
            (None, None) => out
                .put_bytes(|b| event.key.as_ref().map(|k| serde_json::to_writer(b, k)))
                .map_err(|e| e.to_string())?,
            (Some(program), _) => {
                let input = serde_json::to_value(&**event).map_err(|e| e.to_string())?;
                // jq may block up to `[jq] timeout_ms` (it runs in pgcdc's sandbox).
                let out_values = off_executor(|| program.run(&input)).map_err(|e| e.to_string())?;
                let first = out_values
                    .into_iter()
                    .next()
                    .ok_or("the key program yielded nothing")?;
                out.put_bytes(|b| Some(serde_json::to_writer(b, &first)))
                    .map_err(|e| e.to_string())?
            }
        };
        let value = match debezium {
            Some(options) => self.put_debezium_value(out, event, options),
            None if self.transformed => out
                .put_bytes(|b| Some(serde_json::to_writer(b, &item.body)))
                .map_err(|e| e.to_string()),
            None => out
                .put_bytes(|b| Some(pgcdc_schema::json_write::write_event(event, b)))
                .map_err(|e| e.to_string()),
        }?;
        out.list.push(Rec {
            value,
            ..common.rec(index, &key)
        });
        let tombstones = self.config.tombstones.unwrap_or(debezium.is_some());
        if tombstones && event.op == Op::Delete && key.is_some() {
            out.list.push(Rec {
                tombstone: true,
                ..common.rec(index, &key)
            });
        }
        Ok(())
    }

    /// Debezium's records of an update that changed the primary key: a delete of the
    /// old key (header `__debezium.newkey`), its tombstone, and a create of the new
    /// key (header `__debezium.oldkey`).
    fn key_change_records(
        &self,
        index: usize,
        item: &Outgoing,
        common: &Common,
        options: DebeziumOptions,
        split: &debezium::KeyChange,
        out: &mut Recs,
    ) -> Result<(), String> {
        let old_key = self.put_debezium_key(out, &split.delete, options)?;
        let new_key = self.put_debezium_key(out, &split.create, options)?;
        let delete = self.put_debezium_value(out, &split.delete, options)?;
        let create = self.put_debezium_value(out, &split.create, options)?;
        let old_id = out.put_text(format_args!("{}{OLD_KEY_SUFFIX}", item.delivery()));
        out.list.push(Rec {
            id: old_id.clone(),
            value: delete,
            header: new_key.clone().map(|k| ("__debezium.newkey", k)),
            ..common.rec(index, &old_key)
        });
        if self.config.tombstones.unwrap_or(true) && old_key.is_some() {
            out.list.push(Rec {
                id: old_id,
                tombstone: true,
                ..common.rec(index, &old_key)
            });
        }
        out.list.push(Rec {
            value: create,
            header: old_key.map(|k| ("__debezium.oldkey", k)),
            ..common.rec(index, &new_key)
        });
        Ok(())
    }
}

/// Runs `f` (a jq evaluation) without holding up the executor thread's other tasks.
fn off_executor<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::KafkaSinkContext;
    use super::*;
    use crate::kafka::KafkaSinkConfig;
    use crate::{AuditLog, Sink};
    use pgcdc_schema::{ChangeEvent, EventId, Lsn};
    use serde_json::json;
    use std::sync::Arc;

    fn sink(extra: &str, transformed: bool) -> KafkaSink {
        let text = format!("brokers = \"127.0.0.1:1\"\n{extra}");
        let value: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Boolean(false));
        let config: KafkaSinkConfig =
            serde::Deserialize::deserialize(value).unwrap_or_else(|e| panic!("{e}"));
        let ctx = KafkaSinkContext {
            db: "portal".into(),
            version: "test".into(),
            transformed,
            audit: AuditLog::disabled(),
        };
        KafkaSink::new("k", &config, "sink[0]", ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    fn row(v: serde_json::Value) -> Option<pgcdc_schema::event::Row> {
        v.as_object().cloned().map(pgcdc_schema::event::Row::from)
    }

    fn item(op: Op, body: serde_json::Value) -> Outgoing {
        let event = ChangeEvent {
            id: EventId::from_position(Lsn(0x10), 2),
            op,
            schema: "public".into(),
            table: "permits".into(),
            key: row(json!({"id": 7})),
            old: row(json!({"id": 7})),
            new: (op != Op::Delete)
                .then(|| row(json!({"id": 7, "status": "approved"})))
                .flatten(),
            trigger: Some("permitApproved".into()),
            lsn: Lsn(0x10),
            xid: Some(5),
            commit_time: Some("2026-11-26T10:00:00Z".into()),
            unchanged_toast: vec![],
            columns: None,
            previous: None,
            origin: Default::default(),
        };
        Outgoing {
            event: Arc::new(event),
            body,
            part: 0,
            row: "public.permits{\"id\":7}".into(),
        }
    }

    /// One rendered record, owned (what `Recs::view` shows of it).
    struct R {
        id: RecordId,
        topic: String,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        header: Option<(&'static str, Vec<u8>)>,
    }

    impl Recs {
        fn owned(&self, from: usize) -> Vec<R> {
            (from..self.len())
                .map(|i| {
                    let v = self.view(i);
                    assert_eq!(v.id, self.id(i).0);
                    R {
                        id: self.id(i),
                        topic: v.topic.to_string(),
                        key: v.key.map(<[u8]>::to_vec),
                        value: v.value.map(<[u8]>::to_vec),
                        header: v.header.map(|(k, h)| (k, h.to_vec())),
                    }
                })
                .collect()
        }
    }

    impl KafkaSink {
        /// The records of one item rendered alone.
        fn rendered(&self, index: usize, item: &Outgoing) -> Result<Vec<R>, String> {
            let mut out = Recs::default();
            self.records(index, item, &mut out)?;
            Ok(out.owned(0))
        }
    }

    fn text(b: &Option<Vec<u8>>) -> String {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    }

    #[test]
    fn default_record_is_debezium_keyed_by_primary_key() {
        let s = sink("topic = \"portal.{schema}.{table}\"\n", false);
        let recs = s
            .rendered(0, &item(Op::Update, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].topic, "portal.public.permits");
        assert_eq!(text(&recs[0].key), "{\"id\":7}");
        let v: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(v["op"], "u");
        assert_eq!(v["source"]["db"], "portal");
        assert_eq!(recs[0].id, ("0000000000000010-00000002".to_string(), false));
    }

    #[test]
    fn key_program_trigger_topic_and_tombstone() {
        let s = sink(
            "topic = \"permits.{trigger}\"\nkey = '.new.status // .key.id'\ntombstones = true\n",
            false,
        );
        let recs = s
            .rendered(0, &item(Op::Update, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs[0].topic, "permits.permitApproved");
        assert_eq!(text(&recs[0].key), "\"approved\"");
        let recs = s
            .rendered(0, &item(Op::Delete, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 2, "a delete is followed by a tombstone");
        assert_eq!(text(&recs[1].key), "7");
        assert!(recs[1].value.is_none());
        assert!(recs[1].id.1);
    }

    #[test]
    fn debezium_defaults_skip_truncates_and_follow_deletes_with_tombstones() {
        let s = sink("", false);
        let recs = s
            .rendered(0, &item(Op::Truncate, serde_json::Value::Null))
            .unwrap_or_default();
        assert!(recs.is_empty(), "a truncate is skipped by default");
        let recs = s
            .rendered(0, &item(Op::Delete, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(
            recs.len(),
            2,
            "a delete is followed by a tombstone by default"
        );
        assert!(recs[1].value.is_none());
        assert_eq!(text(&recs[1].key), "{\"id\":7}");

        let s = sink("truncates = true\ntombstones = false\n", false);
        let recs = s
            .rendered(0, &item(Op::Truncate, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1, "truncates = true writes them");
        assert!(recs[0].key.is_none());
        let v: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(v["op"], "t");
        let recs = s
            .rendered(0, &item(Op::Delete, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1, "tombstones = false: no tombstone");
        // Native and transformed records keep their old defaults: truncates, no tombstones.
        let n = sink("format = \"native\"\n", false);
        assert_eq!(
            n.rendered(0, &item(Op::Truncate, json!({})))
                .unwrap_or_default()
                .len(),
            1
        );
        assert_eq!(
            n.rendered(0, &item(Op::Delete, json!({})))
                .unwrap_or_default()
                .len(),
            1
        );
    }

    #[test]
    fn debezium_key_is_null_without_a_primary_key_and_schemas_wrap_both() {
        let s = sink("", false);
        let mut it = item(Op::Insert, serde_json::Value::Null);
        let mut ev = (*it.event).clone();
        ev.origin.no_primary_key = true;
        it.event = Arc::new(ev.clone());
        let recs = s.rendered(0, &it).unwrap_or_default();
        assert!(recs[0].key.is_none(), "no primary key: a null key");

        let s = sink("format = \"debezium-schema\"\n", false);
        ev.origin.no_primary_key = false;
        ev.origin.column_types = vec![
            ("id".into(), "int4".into()),
            ("status".into(), "text".into()),
        ]
        .into();
        it.event = Arc::new(ev);
        let recs = s.rendered(0, &it).unwrap_or_default();
        let k: serde_json::Value = serde_json::from_str(&text(&recs[0].key)).unwrap_or_default();
        assert_eq!(k["payload"], json!({"id": 7}));
        assert_eq!(k["schema"]["name"], "pgcdc.public.permits.Key");
        let v: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(v["schema"]["name"], "pgcdc.public.permits.Envelope");
        assert_eq!(v["payload"]["op"], "c");
        assert!(!s.wants_native_body());
    }

    #[test]
    fn a_primary_key_change_is_a_delete_a_tombstone_and_a_create() {
        let s = sink("", false);
        let mut it = item(Op::Update, serde_json::Value::Null);
        let mut ev = (*it.event).clone();
        ev.key = row(json!({"id": 8}));
        ev.new = row(json!({"id": 8, "status": "approved"}));
        ev.old = row(json!({"id": 7}));
        ev.origin.old_sent = Some(pgcdc_schema::OldSent::Key);
        it.event = Arc::new(ev);
        let recs = s.rendered(0, &it).unwrap_or_default();
        assert_eq!(recs.len(), 3);
        let v0: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(
            (v0["op"].as_str(), text(&recs[0].key).as_str()),
            (Some("d"), "{\"id\":7}")
        );
        assert_eq!(
            recs[0].header,
            Some(("__debezium.newkey", b"{\"id\":8}".to_vec()))
        );
        assert!(
            recs[1].value.is_none() && recs[1].id.1,
            "the tombstone of the old key"
        );
        assert_eq!(text(&recs[1].key), "{\"id\":7}");
        let v2: serde_json::Value = serde_json::from_str(&text(&recs[2].value)).unwrap_or_default();
        assert_eq!(
            (v2["op"].as_str(), text(&recs[2].key).as_str()),
            (Some("c"), "{\"id\":8}")
        );
        assert_eq!(
            recs[2].header,
            Some(("__debezium.oldkey", b"{\"id\":7}".to_vec()))
        );
        // Distinct identities for the read-back; the create keeps the delivery id.
        assert_eq!(recs[2].id, ("0000000000000010-00000002".to_string(), false));
        assert_eq!(
            recs[0].id,
            ("0000000000000010-00000002/old-key".to_string(), false)
        );
    }

    #[test]
    fn a_batch_shares_its_buffers_and_a_failed_item_leaves_nothing_in_them() {
        let s = sink("topic = \"{trigger}\"\n", false);
        let ok = |op| item(op, serde_json::Value::Null);
        let mut failing = ok(Op::Update);
        let mut ev = (*failing.event).clone();
        ev.trigger = Some("a/b".into()); // a topic Kafka refuses, found once rendered
        failing.event = Arc::new(ev);
        let mut changed = ok(Op::Update);
        let mut ev = (*changed.event).clone();
        ev.key = row(json!({"id": 8}));
        ev.origin.old_sent = Some(pgcdc_schema::OldSent::Key);
        changed.event = Arc::new(ev);
        let batch = [ok(Op::Insert), failing, ok(Op::Delete), changed];

        let mut out = Recs::default();
        let mut alone = Vec::new();
        for (i, it) in batch.iter().enumerate() {
            let from = out.len();
            let r = s.records(i, it, &mut out);
            assert_eq!(r.is_err(), i == 1, "item {i}: {r:?}");
            assert_eq!(r.is_err(), out.len() == from);
            if r.is_ok() {
                alone.extend(s.rendered(i, it).unwrap_or_default());
            }
        }
        let mut fresh = Recs::default();
        for (i, it) in batch.iter().enumerate().filter(|(i, _)| *i != 1) {
            let _ = s.records(i, it, &mut fresh);
        }
        assert_eq!(out.text, fresh.text, "the failed item left nothing behind");
        assert!(
            out.bytes == fresh.bytes,
            "the failed item left bytes behind"
        );
        let shared = out.owned(0);
        // insert; delete + tombstone; key change: delete, tombstone, create.
        assert_eq!(shared.len(), 6);
        assert_eq!(
            (0..out.len()).map(|i| out.item(i)).collect::<Vec<_>>(),
            [0, 2, 2, 3, 3, 3]
        );
        for (a, b) in shared.iter().zip(&alone) {
            assert_eq!((&a.id, &a.topic, &a.key), (&b.id, &b.topic, &b.key));
            assert_eq!((text(&a.value), &a.header), (text(&b.value), &b.header));
        }
        assert_eq!(shared[1].topic, "permitApproved");
        assert!(shared[4].id.0.ends_with(OLD_KEY_SUFFIX) && shared[4].id.1);

        // The buffers are kept, emptied, unless they grew past the bound.
        let kept = out
            .recycle()
            .map(|r| (r.len(), r.bytes.len(), r.text.len()));
        assert_eq!(kept, Some((0, 0, 0)));
        let mut big = Recs::default();
        big.bytes.reserve(KEEP_BYTES + 1);
        assert!(big.recycle().is_none());
    }

    #[test]
    fn debezium_only_keys_are_refused_with_native() {
        for extra in ["truncates = true\n", "before = \"known\"\n"] {
            let text = format!("brokers = \"b:9092\"\nformat = \"native\"\n{extra}");
            let value: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Boolean(false));
            let config: KafkaSinkConfig =
                serde::Deserialize::deserialize(value).unwrap_or_else(|e| panic!("{e}"));
            let e = config
                .validate("sink[0]", false)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("applies to the Debezium formats only"), "{e}");
        }
    }

    #[test]
    fn native_format_is_the_event_and_transform_output_is_sent_as_given() {
        let s = sink("format = \"native\"\n", false);
        // The body is left null by the runner: the record is rendered from the event.
        let it = item(Op::Update, serde_json::Value::Null);
        let recs = s.rendered(0, &it).unwrap_or_default();
        assert_eq!(
            text(&recs[0].value),
            serde_json::to_string(&*it.event).unwrap_or_default()
        );
        assert!(
            text(&recs[0].value).starts_with(r#"{"id":"0000000000000010-00000002","op":"update""#)
        );
        assert!(!s.wants_native_body());
        let t = sink("", true);
        assert!(!t.wants_native_body());
        let recs = t
            .rendered(0, &item(Op::Update, json!({"registryId": 7})))
            .unwrap_or_default();
        assert_eq!(text(&recs[0].value), "{\"registryId\":7}");
    }
}
