#!/usr/bin/env python3
"""Reads a whole topic with confluent-kafka (its own librdkafka) and prints one
JSON line per record: partition, offset, key, op (Debezium `op` of the value,
or null for a tombstone), `after` of the value, and headers. An independent
view of what pgcdc wrote, as a consumer with ISOLATION (default read_committed,
librdkafka's default) sees it.

usage: kafka_consume.py BOOTSTRAP TOPIC [ISOLATION]
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition


def main() -> int:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    isolation = sys.argv[3] if len(sys.argv) > 3 else "read_committed"
    c = Consumer({
        "isolation.level": isolation,
        "bootstrap.servers": bootstrap,
        "group.id": "pgcdc-independent-check",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    if not parts:
        print(f"topic {topic} has no partitions", file=sys.stderr)
        return 1
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    open_parts = set(parts)
    out = []
    deadline = time.time() + 120
    while open_parts:
        if time.time() > deadline:
            print(f"partitions {open_parts} did not reach their end", file=sys.stderr)
            return 1
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                open_parts.discard(m.partition())
                continue
            print(m.error(), file=sys.stderr)
            return 1
        value = m.value()
        change = json.loads(value) if value is not None else {}
        out.append({
            "partition": m.partition(),
            "offset": m.offset(),
            "key": m.key().decode() if m.key() is not None else None,
            "op": change.get("op"),
            "after": change.get("after"),
            "headers": {k: v.decode() for k, v in (m.headers() or [])},
        })
    c.close()
    for rec in sorted(out, key=lambda r: (r["partition"], r["offset"])):
        print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
