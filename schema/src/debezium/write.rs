//! The record value written as JSON straight into a buffer: the bytes
//! `serde_json` writes for [`Envelope`] (the golden test holds both to
//! `schema/golden/debezium_all_types.jsonl`), without serde's machinery per
//! value. The `schemas` form keeps going through `serde_json::Value`.

use super::{Envelope, Image};
use crate::json_write::{write_i64, write_str, write_u64};
use crate::packed::Bad;

impl Envelope<'_> {
    /// Appends the envelope as JSON.
    pub(super) fn write_json(&self, out: &mut Vec<u8>) -> Result<(), Bad> {
        out.extend_from_slice(b"{\"before\":");
        write_image(out, self.before.as_ref())?;
        out.extend_from_slice(b",\"after\":");
        write_image(out, self.after.as_ref())?;
        let s = &self.source;
        out.extend_from_slice(b",\"source\":{\"version\":");
        write_str(out, s.version);
        out.extend_from_slice(b",\"connector\":");
        write_str(out, s.connector);
        out.extend_from_slice(b",\"name\":");
        write_str(out, s.name);
        out.extend_from_slice(b",\"ts_ms\":");
        write_opt_i64(out, s.ts_ms);
        out.extend_from_slice(b",\"snapshot\":");
        write_str(out, s.snapshot);
        out.extend_from_slice(b",\"db\":");
        write_str(out, s.db);
        out.extend_from_slice(b",\"sequence\":");
        write_str(out, &s.sequence);
        out.extend_from_slice(b",\"ts_us\":");
        write_opt_i64(out, s.ts_us);
        out.extend_from_slice(b",\"ts_ns\":");
        write_opt_i64(out, s.ts_ns);
        out.extend_from_slice(b",\"schema\":");
        write_str(out, s.schema);
        out.extend_from_slice(b",\"table\":");
        write_str(out, s.table);
        out.extend_from_slice(b",\"txId\":");
        write_opt_i64(out, s.tx_id.map(i64::from));
        out.extend_from_slice(b",\"lsn\":");
        write_u64(out, s.lsn);
        out.extend_from_slice(b",\"xmin\":null},\"op\":");
        write_str(out, self.op);
        out.extend_from_slice(b",\"ts_ms\":");
        write_i64(out, self.ts_ms);
        out.extend_from_slice(b",\"ts_us\":");
        write_i64(out, self.ts_us);
        out.extend_from_slice(b",\"ts_ns\":");
        write_i64(out, self.ts_ns);
        out.extend_from_slice(b",\"transaction\":null}");
        Ok(())
    }
}

fn write_image(out: &mut Vec<u8>, image: Option<&Image<'_>>) -> Result<(), Bad> {
    match image {
        Some(image) => image.write_json(out),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn write_opt_i64(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => write_i64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}
