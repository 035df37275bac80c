//! One audit record for a batch a sink delivered as a whole (Kafka): its
//! delivery ids front-coded in one blob, instead of one row per record. The
//! store finds a batch by its id range and then looks inside the blob, so an
//! event's audit still answers for every record of it.

use super::{Attempt, AttemptOutcome, AttemptTime};

/// The delivery ids of a batch, front-coded: each id as (bytes it shares with the
/// previous id, varint)(length of the rest, varint)(the rest). Ids in journal order
/// share most of their digits, so a streamed id costs a few bytes, not 26.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryIds {
    bytes: Vec<u8>,
    count: usize,
    min: String,
    max: String,
    last: String,
}

/// Why a stored id blob cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a batch audit record's id list is damaged at byte {0}")]
pub struct CorruptIds(pub usize);

impl DeliveryIds {
    /// Appends one delivery id.
    pub fn push(&mut self, id: &str) {
        let shared = self
            .last
            .bytes()
            .zip(id.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        // Cut at a char boundary, so the rest is valid UTF-8 on its own.
        let shared = (0..=shared)
            .rev()
            .find(|&n| id.is_char_boundary(n))
            .unwrap_or(0);
        let rest = &id.as_bytes()[shared..];
        put_varint(&mut self.bytes, shared as u64);
        put_varint(&mut self.bytes, rest.len() as u64);
        self.bytes.extend_from_slice(rest);
        if self.count == 0 || id < self.min.as_str() {
            self.min = id.to_string();
        }
        if self.count == 0 || id > self.max.as_str() {
            self.max = id.to_string();
        }
        self.last.truncate(shared);
        self.last.push_str(&id[shared..]);
        self.count += 1;
    }

    /// How many ids.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest id (byte order; empty when there are none).
    pub fn min(&self) -> &str {
        &self.min
    }

    /// The largest id (byte order; empty when there are none).
    pub fn max(&self) -> &str {
        &self.max
    }

    /// The encoded blob, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every id of a stored blob, in the order pushed.
    pub fn decode(bytes: &[u8]) -> Result<Vec<String>, CorruptIds> {
        let mut out = Vec::new();
        let mut last = String::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let shared = varint(bytes, &mut at)? as usize;
            let len = varint(bytes, &mut at)? as usize;
            let end = at.checked_add(len).ok_or(CorruptIds(at))?;
            let rest = bytes.get(at..end).ok_or(CorruptIds(at))?;
            let rest = std::str::from_utf8(rest).map_err(|_| CorruptIds(at))?;
            if shared > last.len() || !last.is_char_boundary(shared) {
                return Err(CorruptIds(at));
            }
            last.truncate(shared);
            last.push_str(rest);
            out.push(last.clone());
            at = end;
        }
        Ok(out)
    }

    /// The ids of a stored blob that belong to `event_id`: the id itself and its
    /// transform outputs `event_id.N`.
    pub fn matching(bytes: &[u8], event_id: &str) -> Result<Vec<String>, CorruptIds> {
        Ok(Self::decode(bytes)?
            .into_iter()
            .filter(|id| belongs_to(id, event_id))
            .collect())
    }
}

/// `id` is the delivery id of `event_id` or of one of its later transform outputs.
fn belongs_to(id: &str, event_id: &str) -> bool {
    match id.strip_prefix(event_id) {
        Some("") => true,
        Some(rest) => rest.starts_with('.'),
        None => false,
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, CorruptIds> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(CorruptIds(*at))?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(CorruptIds(*at))
}

/// One attempt that settled a whole batch the same way (Kafka: the round that
/// delivered it). Records that failed or were retried keep their own [`Attempt`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAttempt {
    /// Sink name.
    pub sink: String,
    /// The round that settled the batch (1 for the first).
    pub attempt: u32,
    /// When it was recorded.
    pub at: AttemptTime,
    /// From the batch's start to its settlement, in ms.
    pub latency_ms: u64,
    /// How it ended, for every id in `ids`.
    pub outcome: AttemptOutcome,
    /// The delivery ids it settled.
    pub ids: DeliveryIds,
}

impl BatchAttempt {
    /// The per-record attempt of `id`, as a per-record audit would have stored it.
    pub fn attempt_of(&self, id: String) -> Attempt {
        Attempt {
            event_id: id,
            sink: self.sink.clone(),
            attempt: self.attempt,
            at: self.at,
            status: None,
            error: None,
            latency_ms: self.latency_ms,
            outcome: self.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_share_their_prefixes() {
        let ids = [
            "0000000001A2B3C8-00000000",
            "0000000001A2B3C8-00000001",
            "0000000001A2B3C8-00000001.1",
            "0000000001A2B400-00000000",
            "R00000003-0f3a9c",
            "ünïcødé-1",
            "ünïcødé-2",
            "",
            "0000000001A2B3C8-00000000",
        ];
        let mut enc = DeliveryIds::default();
        for id in ids {
            enc.push(id);
        }
        assert_eq!(enc.len(), ids.len());
        assert_eq!(enc.min(), "");
        assert_eq!(enc.max(), "ünïcødé-2");
        let decoded = DeliveryIds::decode(enc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, ids);
        // Mostly shared digits: well under the ids' own length.
        let mut streamed = DeliveryIds::default();
        for seq in 0..5_000u32 {
            streamed.push(&format!("0000000001A2B3C8-{seq:08X}"));
        }
        assert!(
            streamed.as_bytes().len() < 5_000 * 6,
            "{}",
            streamed.as_bytes().len()
        );
        let got = DeliveryIds::matching(enc.as_bytes(), "0000000001A2B3C8-00000001")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            ["0000000001A2B3C8-00000001", "0000000001A2B3C8-00000001.1"]
        );
        assert!(
            DeliveryIds::matching(enc.as_bytes(), "0000000001A2B3C8-0000000")
                .unwrap_or_default()
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_blob_is_an_error_not_a_panic() {
        let mut enc = DeliveryIds::default();
        enc.push("0000000001A2B3C8-00000000");
        enc.push("0000000001A2B3C8-00000001");
        let bytes = enc.as_bytes();
        for cut in 0..bytes.len() {
            let _ = DeliveryIds::decode(&bytes[..cut]);
        }
        assert!(DeliveryIds::decode(&[0x05, 0x01, b'a']).is_err());
        assert!(DeliveryIds::decode(&[0xff; 12]).is_err());
        assert!(DeliveryIds::decode(&[0x00, 0x02, 0xc3, 0x28]).is_err());
    }
}
