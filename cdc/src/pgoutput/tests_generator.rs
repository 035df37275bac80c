//! Test-only, structure-aware generator: a deterministic random [`Message`] of
//! any kind (stream messages included) from a seed, and the mutations a corrupt
//! stream would make to its bytes. Shared by the unit tests and the bounded
//! fuzz run (`tests_fuzz`), so a failing seed reproduces exactly.

use bytes::Bytes;

use super::{Column, Datum, Message, OldTuple, Relation, ReplicaIdentity, Tuple};

/// Deterministic xorshift64: the same seed gives the same inputs everywhere.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value; zero is remapped, xorshift needs a set bit).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn u32(&mut self) -> u32 {
        // Edge values often: they are where length and sign bugs live.
        match self.below(8) {
            0 => 0,
            1 => u32::MAX,
            2 => 0x8000_0000,
            _ => u32::try_from(self.next() >> 32).unwrap_or(0),
        }
    }

    fn u64(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            _ => self.next(),
        }
    }

    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.u64().to_be_bytes())
    }

    fn bool(&mut self) -> bool {
        self.below(2) == 1
    }

    /// A string without NUL (pgoutput strings are NUL-terminated), sometimes
    /// multi-byte UTF-8.
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &["a", "Z", "_", "0", " ", "é", "ß", "永", "🐘", "\"", "\n"];
        (0..self.below(12))
            .map(|_| PIECES[self.below(PIECES.len())])
            .collect()
    }

    fn bytes(&mut self) -> Bytes {
        let len = match self.below(10) {
            0 => 0,
            1 => 200 + self.below(2_000),
            _ => self.below(24),
        };
        (0..len).map(|_| self.byte()).collect::<Vec<u8>>().into()
    }

    fn tuple(&mut self) -> Tuple {
        let count = if self.below(20) == 0 {
            300
        } else {
            self.below(8)
        };
        Tuple(
            (0..count)
                .map(|_| match self.below(4) {
                    0 => Datum::Null,
                    1 => Datum::UnchangedToast,
                    2 => Datum::Text(self.bytes()),
                    _ => Datum::Binary(self.bytes()),
                })
                .collect(),
        )
    }

    fn old_tuple(&mut self) -> OldTuple {
        if self.bool() {
            OldTuple::Key(self.tuple())
        } else {
            OldTuple::Full(self.tuple())
        }
    }

    fn relation(&mut self) -> Relation {
        let identity = [
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ][self.below(4)];
        Relation {
            id: self.u32(),
            namespace: self.string(),
            name: self.string(),
            replica_identity: identity,
            columns: (0..self.below(10))
                .map(|_| Column {
                    is_key: self.bool(),
                    name: self.string(),
                    type_oid: self.u32(),
                    type_modifier: i32::from_be_bytes(self.u32().to_be_bytes()),
                })
                .collect(),
        }
    }
}

/// Number of message kinds [`message`] draws from (its `kind` argument's range).
pub(crate) const KINDS: usize = 14;

/// A random message of kind `kind` (0..[`KINDS`]), every field drawn from `rng`.
pub(crate) fn message(rng: &mut XorShift, kind: usize) -> Message {
    match kind {
        0 => Message::Begin {
            final_lsn: rng.u64(),
            commit_time: rng.i64(),
            xid: rng.u32(),
        },
        1 => Message::Commit {
            flags: rng.byte(),
            commit_lsn: rng.u64(),
            end_lsn: rng.u64(),
            commit_time: rng.i64(),
        },
        2 => Message::Origin {
            commit_lsn: rng.u64(),
            name: rng.string(),
        },
        3 => Message::Relation(rng.relation()),
        4 => Message::Type {
            id: rng.u32(),
            namespace: rng.string(),
            name: rng.string(),
        },
        5 => Message::Insert {
            relation_id: rng.u32(),
            new: rng.tuple(),
        },
        6 => Message::Update {
            relation_id: rng.u32(),
            old: rng.bool().then(|| rng.old_tuple()),
            new: rng.tuple(),
        },
        7 => Message::Delete {
            relation_id: rng.u32(),
            old: rng.old_tuple(),
        },
        8 => Message::Truncate {
            options: rng.byte(),
            relation_ids: (0..rng.below(6)).map(|_| rng.u32()).collect(),
        },
        9 => Message::Message {
            transactional: rng.bool(),
            lsn: rng.u64(),
            prefix: rng.string(),
            content: rng.bytes(),
        },
        10 => Message::StreamStart {
            xid: rng.u32(),
            first_segment: rng.bool(),
        },
        11 => Message::StreamStop,
        12 => Message::StreamCommit {
            xid: rng.u32(),
            flags: rng.byte(),
            commit_lsn: rng.u64(),
            end_lsn: rng.u64(),
            commit_time: rng.i64(),
        },
        _ => {
            let xid = rng.u32();
            Message::StreamAbort {
                xid,
                // A whole-transaction abort names the top xid twice.
                subxid: if rng.bool() { xid } else { rng.u32() },
            }
        }
    }
}

/// Mutates valid message bytes the ways a corrupt stream would: flipped bytes,
/// extreme length fields, inserted, removed or cut bytes.
pub(crate) fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 if !bytes.is_empty() => bytes[at] = rng.byte(),
            1 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            2 => {
                let extreme = [0x00, 0xFF, 0x7F, 0x80][rng.below(4)];
                let end = (at + 4).min(bytes.len());
                bytes[at..end].fill(extreme);
            }
            3 => bytes.insert(at, rng.byte()),
            4 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
}
