//! Rendering: the Kafka records of one item (topic, key, value, identity).

use pgcdc_schema::debezium::{self, BeforeImage, DebeziumOptions};
use pgcdc_schema::Op;

use super::KafkaSink;
use crate::kafka::config::{Before, Format};
use crate::kafka::progress::RecordId;
use crate::Outgoing;

/// One Kafka record to write for an item.
pub(super) struct Rec {
    pub(super) item: usize,
    pub(super) id: RecordId,
    pub(super) topic: String,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) lsn: String,
    pub(super) table: String,
    pub(super) op: &'static str,
    /// One more header: Debezium's `__debezium.newkey`/`__debezium.oldkey` on the
    /// records of a primary key change.
    pub(super) header: Option<(&'static str, Vec<u8>)>,
}

/// Suffix of the delivery id of the delete record a primary key change writes
/// before its create record (which keeps the plain id), so the read-back tells them apart.
const OLD_KEY_SUFFIX: &str = "/old-key";

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

    /// The records of one item (its tombstone too, after a delete when configured);
    /// none for a truncate the Debezium formats skip.
    pub(super) fn records(&self, index: usize, item: &Outgoing) -> Result<Vec<Rec>, String> {
        let event = &item.event;
        let debezium = self.debezium();
        if debezium.is_some() && event.op == Op::Truncate && !self.config.truncates {
            // Debezium's default `skipped.operations = t`: delivered by writing nothing.
            tracing::debug!(sink = %self.name, table = %event.qualified_table(), "truncate skipped (truncates = false)");
            return Ok(Vec::new());
        }
        let topic = self
            .topic
            .render(&event.schema, &event.table, event.trigger.as_deref());
        crate::kafka::config::check_topic_name(&topic)?;
        if let (None, Some(options)) = (&self.key, debezium) {
            if let Some(split) = debezium::key_change(event) {
                return self.key_change_records(index, item, &topic, options, &split);
            }
        }
        let key = match (&self.key, debezium) {
            (None, Some(options)) => debezium::key_to_vec(event, &self.source, options)
                .transpose()
                .map_err(|e| e.to_string())?,
            (None, None) => event
                .key
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|e| e.to_string())?,
            (Some(program), _) => {
                let input = serde_json::to_value(&**event).map_err(|e| e.to_string())?;
                // jq may block up to `[jq] timeout_ms` (it runs in pgcdc's sandbox).
                let out = off_executor(|| program.run(&input)).map_err(|e| e.to_string())?;
                let first = out
                    .into_iter()
                    .next()
                    .ok_or("the key program yielded nothing")?;
                Some(serde_json::to_vec(&first).map_err(|e| e.to_string())?)
            }
        };
        let value = match debezium {
            Some(options) => debezium::to_vec(event, &self.source, options, self.batch_started_ms)
                .map_err(|e| e.to_string()),
            None if self.transformed => serde_json::to_vec(&item.body).map_err(|e| e.to_string()),
            None => pgcdc_schema::json_write::to_vec(event),
        }?;
        let id = item.delivery_id();
        let mut recs = vec![Rec {
            item: index,
            id: (id.clone(), false),
            topic: topic.clone(),
            key: key.clone(),
            value: Some(value),
            lsn: event.lsn.to_string(),
            table: event.qualified_table(),
            op: event.op.as_str(),
            header: None,
        }];
        let tombstones = self.config.tombstones.unwrap_or(debezium.is_some());
        if tombstones && event.op == Op::Delete && key.is_some() {
            recs.push(Rec {
                item: index,
                id: (id, true),
                topic,
                key,
                value: None,
                lsn: event.lsn.to_string(),
                table: event.qualified_table(),
                op: event.op.as_str(),
                header: None,
            });
        }
        Ok(recs)
    }

    /// Debezium's records of an update that changed the primary key: a delete of the
    /// old key (header `__debezium.newkey`), its tombstone, and a create of the new
    /// key (header `__debezium.oldkey`).
    fn key_change_records(
        &self,
        index: usize,
        item: &Outgoing,
        topic: &str,
        options: DebeziumOptions,
        split: &debezium::KeyChange,
    ) -> Result<Vec<Rec>, String> {
        let event = &item.event;
        let key = |e| {
            debezium::key_to_vec(e, &self.source, options)
                .transpose()
                .map_err(|e| e.to_string())
        };
        let old_key = key(&split.delete)?;
        let new_key = key(&split.create)?;
        let render = |e| {
            debezium::to_vec(e, &self.source, options, self.batch_started_ms)
                .map_err(|e| e.to_string())
        };
        let id = item.delivery_id();
        let old_id = format!("{id}{OLD_KEY_SUFFIX}");
        let rec = |id: (String, bool), key: &Option<Vec<u8>>, value, header| Rec {
            item: index,
            id,
            topic: topic.to_string(),
            key: key.clone(),
            value,
            lsn: event.lsn.to_string(),
            table: event.qualified_table(),
            op: event.op.as_str(),
            header,
        };
        let mut recs = vec![rec(
            (old_id.clone(), false),
            &old_key,
            Some(render(&split.delete)?),
            new_key.clone().map(|k| ("__debezium.newkey", k)),
        )];
        if self.config.tombstones.unwrap_or(true) && old_key.is_some() {
            recs.push(rec((old_id, true), &old_key, None, None));
        }
        recs.push(rec(
            (id, false),
            &new_key,
            Some(render(&split.create)?),
            old_key.clone().map(|k| ("__debezium.oldkey", k)),
        ));
        Ok(recs)
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

    fn item(op: Op, body: serde_json::Value) -> Outgoing {
        let row = |v: serde_json::Value| v.as_object().cloned().map(pgcdc_schema::event::Row::from);
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

    fn text(b: &Option<Vec<u8>>) -> String {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    }

    #[test]
    fn default_record_is_debezium_keyed_by_primary_key() {
        let s = sink("topic = \"portal.{schema}.{table}\"\n", false);
        let recs = s
            .records(0, &item(Op::Update, serde_json::Value::Null))
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
            .records(0, &item(Op::Update, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs[0].topic, "permits.permitApproved");
        assert_eq!(text(&recs[0].key), "\"approved\"");
        let recs = s
            .records(0, &item(Op::Delete, serde_json::Value::Null))
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
            .records(0, &item(Op::Truncate, serde_json::Value::Null))
            .unwrap_or_default();
        assert!(recs.is_empty(), "a truncate is skipped by default");
        let recs = s
            .records(0, &item(Op::Delete, serde_json::Value::Null))
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
            .records(0, &item(Op::Truncate, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1, "truncates = true writes them");
        assert!(recs[0].key.is_none());
        let v: serde_json::Value = serde_json::from_str(&text(&recs[0].value)).unwrap_or_default();
        assert_eq!(v["op"], "t");
        let recs = s
            .records(0, &item(Op::Delete, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1, "tombstones = false: no tombstone");
        // Native and transformed records keep their old defaults: truncates, no tombstones.
        let n = sink("format = \"native\"\n", false);
        assert_eq!(
            n.records(0, &item(Op::Truncate, json!({})))
                .unwrap_or_default()
                .len(),
            1
        );
        assert_eq!(
            n.records(0, &item(Op::Delete, json!({})))
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
        let recs = s.records(0, &it).unwrap_or_default();
        assert!(recs[0].key.is_none(), "no primary key: a null key");

        let s = sink("format = \"debezium-schema\"\n", false);
        ev.origin.no_primary_key = false;
        ev.origin.column_types = vec![
            ("id".into(), "int4".into()),
            ("status".into(), "text".into()),
        ]
        .into();
        it.event = Arc::new(ev);
        let recs = s.records(0, &it).unwrap_or_default();
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
        ev.key = json!({"id": 8})
            .as_object()
            .cloned()
            .map(pgcdc_schema::event::Row::from);
        ev.new = json!({"id": 8, "status": "approved"})
            .as_object()
            .cloned()
            .map(pgcdc_schema::event::Row::from);
        ev.old = json!({"id": 7})
            .as_object()
            .cloned()
            .map(pgcdc_schema::event::Row::from);
        ev.origin.old_sent = Some(pgcdc_schema::OldSent::Key);
        it.event = Arc::new(ev);
        let recs = s.records(0, &it).unwrap_or_default();
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
        let recs = s.records(0, &it).unwrap_or_default();
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
            .records(0, &item(Op::Update, json!({"registryId": 7})))
            .unwrap_or_default();
        assert_eq!(text(&recs[0].value), "{\"registryId\":7}");
    }
}
