use bytes::Bytes;

use super::reader::Reader;
use super::tests_encoder::{carries_xid_in_stream, encode, encode_in_stream};
use super::tests_generator::{mutate, XorShift};
use super::*;

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn permits_relation() -> Relation {
    Relation {
        id: 16_384,
        namespace: "public".into(),
        name: "permits".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                is_key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            Column {
                is_key: false,
                name: "status".into(),
                type_oid: 1043,
                type_modifier: 36,
            },
            Column {
                is_key: false,
                name: "notes".into(),
                type_oid: 25,
                type_modifier: -1,
            },
        ],
    }
}

/// One message of every kind and variant, every datum kind and every
/// replica identity.
fn samples() -> Vec<Message> {
    let row = Tuple(vec![text("42"), text("approved"), Datum::UnchangedToast]);
    let mut samples = vec![
        Message::Begin {
            final_lsn: 0x0000_0001_1A2B_3C4D,
            commit_time: 817_128_000_123_456,
            xid: 731,
        },
        Message::Commit {
            flags: 0,
            commit_lsn: 0x0000_0001_1A2B_3C4D,
            end_lsn: 0x0000_0001_1A2B_3C7E,
            commit_time: -5,
        },
        Message::Origin {
            commit_lsn: u64::MAX,
            name: "pg_16385".into(),
        },
        Message::Relation(permits_relation()),
        Message::Type {
            id: 16_400,
            namespace: "".into(),
            name: "permit_státus".into(),
        },
        Message::Insert {
            relation_id: 16_384,
            new: row.clone(),
        },
        Message::Insert {
            relation_id: 7,
            new: Tuple(vec![
                Datum::Null,
                Datum::Binary(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 42])),
                Datum::Text(Bytes::new()),
                Datum::Text(Bytes::from_static(b"a\0b")),
            ]),
        },
        Message::Insert {
            relation_id: 8,
            new: Tuple(vec![]),
        },
        Message::Update {
            relation_id: 16_384,
            old: None,
            new: row.clone(),
        },
        Message::Update {
            relation_id: 16_384,
            old: Some(OldTuple::Key(Tuple(vec![
                text("41"),
                Datum::Null,
                Datum::Null,
            ]))),
            new: row.clone(),
        },
        Message::Update {
            relation_id: 16_384,
            old: Some(OldTuple::Full(Tuple(vec![
                text("42"),
                text("pending"),
                Datum::Null,
            ]))),
            new: row.clone(),
        },
        Message::Delete {
            relation_id: 16_384,
            old: OldTuple::Key(Tuple(vec![text("42"), Datum::Null, Datum::Null])),
        },
        Message::Delete {
            relation_id: 16_384,
            old: OldTuple::Full(row),
        },
        Message::Truncate {
            options: 0,
            relation_ids: vec![16_384],
        },
        Message::Truncate {
            options: 3,
            relation_ids: vec![1, 2, u32::MAX],
        },
        Message::Message {
            transactional: true,
            lsn: 99,
            prefix: "pgcdc".into(),
            content: Bytes::from_static(b"{\"x\":1}"),
        },
        Message::Message {
            transactional: false,
            lsn: 100,
            prefix: "".into(),
            content: Bytes::new(),
        },
        Message::StreamStart {
            xid: 900,
            first_segment: true,
        },
        Message::StreamStart {
            xid: 900,
            first_segment: false,
        },
        Message::StreamStop,
        Message::StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: 0x0000_0002_0000_0010,
            end_lsn: 0x0000_0002_0000_0040,
            commit_time: 817_128_000_000_001,
        },
        Message::StreamAbort {
            xid: 900,
            subxid: 900,
        },
        Message::StreamAbort {
            xid: 900,
            subxid: 905,
        },
    ];
    for (i, identity) in [
        ReplicaIdentity::Nothing,
        ReplicaIdentity::Full,
        ReplicaIdentity::Index,
    ]
    .into_iter()
    .enumerate()
    {
        let mut relation = permits_relation();
        relation.id = 20_000 + u32::try_from(i).unwrap_or(0);
        relation.namespace = String::new();
        relation.replica_identity = identity;
        relation.columns.truncate(i);
        samples.push(Message::Relation(relation));
    }
    samples
}

#[test]
fn every_sample_round_trips() {
    for message in samples() {
        let bytes = encode(&message);
        assert_eq!(decode(&bytes), Ok(message.clone()), "{bytes:?}");
        assert_eq!(decode_bytes(&Bytes::from(bytes)), Ok(message));
    }
}

#[test]
fn every_sample_round_trips_inside_a_stream() {
    for message in samples() {
        let bytes = Bytes::from(encode_in_stream(77, &message));
        let carries_xid = carries_xid_in_stream(bytes[0]);
        assert_eq!(
            decode_stream_bytes(&bytes),
            Ok(StreamedMessage {
                xid: carries_xid.then_some(77),
                message: message.clone()
            }),
            "{bytes:?}"
        );
        if carries_xid {
            // Read as outside a stream, the xid shifts every field: never the same message.
            assert_ne!(decode_bytes(&bytes), Ok(message));
        }
    }
}

#[test]
fn stream_messages_from_literal_bytes() {
    // Stream Start: 'S', xid, first-segment flag.
    assert_eq!(
        decode(&[b'S', 0, 0, 0x03, 0x84, 1]),
        Ok(Message::StreamStart {
            xid: 900,
            first_segment: true
        })
    );
    assert_eq!(decode(b"E"), Ok(Message::StreamStop));
    // Stream Abort of subtransaction 905 of transaction 900.
    assert_eq!(
        decode(&[b'A', 0, 0, 0x03, 0x84, 0, 0, 0x03, 0x89]),
        Ok(Message::StreamAbort {
            xid: 900,
            subxid: 905
        })
    );
    // Stream Commit: 'c', xid, flags, commit LSN, end LSN, time.
    let mut bytes = vec![b'c', 0, 0, 0x03, 0x84, 0];
    bytes.extend(0x10_u64.to_be_bytes());
    bytes.extend(0x40_u64.to_be_bytes());
    bytes.extend(5_i64.to_be_bytes());
    assert_eq!(
        decode(&bytes),
        Ok(Message::StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: 0x10,
            end_lsn: 0x40,
            commit_time: 5
        })
    );
    // Inside a stream an Insert carries its (sub)transaction's xid before the OID.
    let bytes = Bytes::from_static(&[b'I', 0, 0, 0x03, 0x89, 0, 0, 0, 7, b'N', 0, 1, b'n']);
    assert_eq!(
        decode_stream_bytes(&bytes),
        Ok(StreamedMessage {
            xid: Some(905),
            message: Message::Insert {
                relation_id: 7,
                new: Tuple(vec![Datum::Null])
            }
        })
    );
    // A streamed message cut inside its xid names the field.
    assert!(matches!(
        decode_stream_bytes(&Bytes::from_static(&[b'R', 0, 0])),
        Err(DecodeError::Truncated {
            what: "streamed transaction id",
            ..
        })
    ));
    // Stream Stop has no fields.
    assert!(matches!(
        decode(b"E\0"),
        Err(DecodeError::TrailingBytes {
            message: "Stream Stop",
            ..
        })
    ));
}

#[test]
fn begin_from_literal_bytes() {
    let bytes = [
        b'B', 0, 0, 0, 1, 0x1A, 0x2B, 0x3C, 0x4D, // final LSN 1/1A2B3C4D
        0, 0, 0, 0, 0, 0, 0x01, 0x00, // commit time 256
        0, 0, 0x02, 0xDB, // xid 731
    ];
    assert_eq!(
        decode(&bytes),
        Ok(Message::Begin {
            final_lsn: 0x1_1A2B_3C4D,
            commit_time: 256,
            xid: 731
        })
    );
}

#[test]
fn insert_from_literal_bytes() {
    let mut bytes = vec![b'I', 0, 0, 0x40, 0x00, b'N', 0, 4];
    bytes.extend([b't', 0, 0, 0, 2, b'4', b'2']);
    bytes.push(b'n');
    bytes.push(b'u');
    bytes.extend([b'b', 0, 0, 0, 1, 0xFF]);
    assert_eq!(
        decode(&bytes),
        Ok(Message::Insert {
            relation_id: 16_384,
            new: Tuple(vec![
                text("42"),
                Datum::Null,
                Datum::UnchangedToast,
                Datum::Binary(Bytes::from_static(&[0xFF])),
            ]),
        })
    );
}

#[test]
fn relation_from_literal_bytes() {
    let mut bytes = vec![b'R', 0, 0, 0, 9];
    bytes.extend(b"public\0t\0");
    bytes.push(b'f');
    bytes.extend([0, 2]);
    // flags 3: only bit 1 means "key"; flags 2 alone must not.
    bytes.extend([3, b'a', 0, 0, 0, 0, 23, 0xFF, 0xFF, 0xFF, 0xFF]);
    bytes.extend([2, b'b', 0, 0, 0, 0, 25, 0, 0, 0, 8]);
    let Ok(Message::Relation(relation)) = decode(&bytes) else {
        panic!("not a relation: {:?}", decode(&bytes));
    };
    assert_eq!(relation.id, 9);
    assert_eq!(relation.namespace, "public");
    assert_eq!(relation.name, "t");
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        relation.columns,
        vec![
            Column {
                is_key: true,
                name: "a".into(),
                type_oid: 23,
                type_modifier: -1
            },
            Column {
                is_key: false,
                name: "b".into(),
                type_oid: 25,
                type_modifier: 8
            },
        ]
    );
}

#[test]
fn truncate_and_message_flags_from_literal_bytes() {
    let bytes = [b'T', 0, 0, 0, 2, 1, 0, 0, 0, 5, 0, 0, 0, 6];
    assert_eq!(
        decode(&bytes),
        Ok(Message::Truncate {
            options: 1,
            relation_ids: vec![5, 6]
        })
    );
    let mut bytes = vec![b'M', 0, 0, 0, 0, 0, 0, 0, 0, 7];
    bytes.extend(b"p\0");
    bytes.extend([0, 0, 0, 3, b'x', 0, b'y']);
    assert_eq!(
        decode(&bytes),
        Ok(Message::Message {
            transactional: false,
            lsn: 7,
            prefix: "p".into(),
            content: Bytes::from_static(b"x\0y"),
        })
    );
}

#[test]
fn decode_bytes_slices_payloads_without_copying() {
    let message = Message::Insert {
        relation_id: 1,
        new: Tuple(vec![text("payload")]),
    };
    let buf = Bytes::from(encode(&message));
    let Ok(Message::Insert { new, .. }) = decode_bytes(&buf) else {
        panic!("not an insert");
    };
    let Some(Datum::Text(payload)) = new.0.first() else {
        panic!("no text datum");
    };
    let range = buf.as_ptr_range();
    assert!(range.contains(&payload.as_ptr()), "payload was copied");
}

#[test]
fn every_prefix_of_every_sample_is_a_truncation_error() {
    for message in samples() {
        let bytes = encode(&message);
        for len in 0..bytes.len() {
            match decode(&bytes[..len]) {
                Err(DecodeError::Empty) => assert_eq!(len, 0),
                Err(DecodeError::Truncated { .. } | DecodeError::Unterminated { .. }) => {}
                other => panic!("prefix {len} of {message:?} gave {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for message in samples() {
        let mut bytes = encode(&message);
        let end = bytes.len();
        bytes.push(0);
        assert!(
            matches!(
                decode(&bytes),
                Err(DecodeError::TrailingBytes { offset, count: 1, .. }) if offset == end
            ),
            "{message:?}"
        );
        bytes.extend(b"garbage");
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::TrailingBytes { count: 8, .. })
        ));
    }
}

#[test]
fn later_protocol_and_unknown_tags_are_unsupported() {
    for tag in [b'b', b'P', b'K', b'r', b'p', b'w', b'k', b'Z', 0, 0xFF] {
        assert_eq!(
            decode(&[tag, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedMessage(tag))
        );
    }
    let text = DecodeError::UnsupportedMessage(b'P').to_string();
    assert!(text.contains("two-phase"), "{text}");
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn malformed_fields_name_the_problem() {
    // Relation name that is not UTF-8.
    let bytes = [b'R', 0, 0, 0, 1, 0, 0xC3, 0x28, 0, b'd', 0, 0];
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::InvalidUtf8 {
            what: "Relation name"
        })
    );
    // Unknown replica identity.
    let mut fixed = [b'R', 0, 0, 0, 1, 0, b't', 0, b'z', 0, 0];
    assert_eq!(
        decode(&fixed),
        Err(DecodeError::UnknownTag {
            what: "replica identity",
            tag: b'z',
            offset: 8
        })
    );
    fixed[8] = b'i';
    assert!(decode(&fixed).is_ok());
    // String running to the end of the message.
    assert!(matches!(
        decode(b"Oxxxxxxxxname"),
        Err(DecodeError::Unterminated {
            what: "Origin name",
            offset: 9
        })
    ));
    // Negative datum length.
    let bytes = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFE];
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::NegativeLength {
            what: "text datum",
            offset: 9,
            len: -2
        })
    );
    // Unknown datum kind.
    let bytes = [b'I', 0, 0, 0, 1, b'N', 0, 2, b'n', b'x'];
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnknownTag {
            what: "datum kind",
            tag: b'x',
            offset: 9
        })
    );
}

#[test]
fn tuple_markers_are_checked_per_message_kind() {
    let marker_err = |tag, offset| {
        Err(DecodeError::UnknownTag {
            what: "tuple marker",
            tag,
            offset,
        })
    };
    // Insert carries only a new tuple.
    assert_eq!(decode(&[b'I', 0, 0, 0, 1, b'K', 0, 0]), marker_err(b'K', 5));
    // Delete carries only an old tuple.
    assert_eq!(decode(&[b'D', 0, 0, 0, 1, b'N', 0, 0]), marker_err(b'N', 5));
    // Update: old tuple must be followed by 'N'.
    assert_eq!(
        decode(&[b'U', 0, 0, 0, 1, b'K', 0, 0, b'O', 0, 0]),
        marker_err(b'O', 8)
    );
    assert_eq!(
        decode(&[b'U', 0, 0, 0, 1, b'O', 0, 0, b'N', 0, 0]),
        Ok(Message::Update {
            relation_id: 1,
            old: Some(OldTuple::Full(Tuple(vec![]))),
            new: Tuple(vec![]),
        })
    );
}

#[test]
fn forged_counts_do_not_preallocate() {
    let buf = Bytes::from_static(&[0; 10]);
    let reader = Reader::new(&buf);
    let columns: Vec<Column> = reader.vec_for(usize::MAX, 10);
    assert!(columns.capacity() <= 1, "{}", columns.capacity());
    let datums: Vec<Datum> = reader.vec_for(65_535, 1);
    assert!(datums.capacity() <= 10);
    // A Truncate claiming 4 billion relations fails on the missing bytes.
    assert!(matches!(
        decode(&[b'T', 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 1]),
        Err(DecodeError::Truncated {
            what: "Truncate relation OID",
            ..
        })
    ));
    // A tuple claiming 65535 columns with 1 present.
    assert!(matches!(
        decode(&[b'I', 0, 0, 0, 1, b'N', 0xFF, 0xFF, b'n']),
        Err(DecodeError::Truncated {
            what: "datum kind",
            ..
        })
    ));
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    const TAGS: &[u8] = b"BCORYIUDTMSEcA";
    let valid: Vec<Vec<u8>> = samples().iter().map(encode).collect();
    let mut rng = XorShift::new(1);
    let (mut ok, mut err) = (0u32, 0u32);
    for i in 0..200_000 {
        let input = if i % 2 == 0 {
            let mut bytes = valid[rng.below(valid.len())].clone();
            mutate(&mut rng, &mut bytes);
            bytes
        } else {
            // Random bodies behind a real tag, so decoding gets past byte 0.
            let len = rng.below(48);
            let mut bytes = vec![TAGS[rng.below(TAGS.len())]];
            bytes.extend((0..len).map(|_| rng.byte()));
            bytes
        };
        let copied = decode(&input);
        assert_eq!(copied, decode_bytes(&Bytes::from(input.clone())));
        match copied {
            Ok(message) => {
                ok += 1;
                // Whatever decodes must mean the same after re-encoding.
                assert_eq!(decode(&encode(&message)), Ok(message), "{input:?}");
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Both paths must have been exercised for the test to mean anything.
    assert!(ok > 1_000 && err > 1_000, "ok={ok} err={err}");
}
