#!/usr/bin/env python3
"""An independent downstream reader of CAP's changelog topics.

Reads every partition of each given topic from the earliest offset to its high watermark
with Python confluent-kafka (its own bundled librdkafka, not the engine's), folds the
messages as Kafka log compaction would (the last value per key wins; a tombstone deletes
the key), and compares the result with the snapshot file the job's file sink wrote for the
same table (`<dir>/<table>.jsonl`). It also checks the changelog contract's headers: per
partition, (cap.epoch, cap.seq) strictly increases in offset order.

Usage: read_topics.py --brokers HOST:PORT [--prefix PREFIX] --files DIR
                     [--property KEY=VALUE]... TABLE...

Prints one JSON line per table ({"table", "messages", "tombstones", "rows"}) and exits 0
when every table matches; otherwise prints what differs to stderr and exits 1. Exits 2
when confluent-kafka is missing or the broker cannot be read.
"""

import argparse
import json
import sys
import time

try:
    from confluent_kafka import Consumer, KafkaException, TopicPartition, OFFSET_BEGINNING
except ImportError as e:  # the test command installs it; say so instead of a traceback
    print(f"read_topics.py: confluent-kafka is not installed ({e}); "
          "run tests/run-all.sh or `python3 -m pip install confluent-kafka`", file=sys.stderr)
    sys.exit(2)

EPOCH_HEADER = "cap.epoch"
SEQ_HEADER = "cap.seq"


def canonical(text):
    """A JSON document as comparable text: parsed, keys sorted, no spaces."""
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def read_topic(brokers, topic, timeout_s, properties):
    """Every message of `topic` as (partition, offset, key, value, headers), per partition
    in offset order. One partition at a time: tansu 0.6 answers a fetch of several
    partitions from one of them only."""
    consumer = Consumer({
        **properties,
        "bootstrap.servers": brokers,
        "group.id": "cap-read-topics",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise RuntimeError(f"topic {topic}: {info.error if info else 'not found'}")
        messages = []
        for p in sorted(info.partitions):
            low, end = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if end <= low:
                continue
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            next_offset = low
            deadline = time.monotonic() + timeout_s
            while next_offset < end:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {topic} partition {p}: at offset {next_offset} "
                                       f"of {end} after {timeout_s} s")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                off = msg.offset()
                next_offset = off + 1
                if off < end:
                    headers = {k: v for k, v in (msg.headers() or [])}
                    messages.append((p, off, msg.key(), msg.value(), headers))
        return messages
    finally:
        consumer.close()


def check_table(brokers, prefix, files, table, timeout_s, properties):
    """Returns (summary, problems) for one table."""
    topic = prefix + table
    messages = read_topic(brokers, topic, timeout_s, properties)
    problems = []
    last = {}
    rows = {}
    partition_of = {}
    tombstones = 0
    for p, off, key, value, headers in sorted(messages, key=lambda m: (m[0], m[1])):
        try:
            stamp = (int(headers[EPOCH_HEADER]), int(headers[SEQ_HEADER]))
        except (KeyError, TypeError, ValueError):
            problems.append(f"{topic}/{p}@{off}: missing or bad {EPOCH_HEADER}/{SEQ_HEADER} headers {headers}")
            continue
        if p in last and not last[p] < stamp:
            problems.append(f"{topic}/{p}@{off}: (epoch, seq) {last[p]} then {stamp}")
        last[p] = stamp
        if key is None:
            problems.append(f"{topic}/{p}@{off}: a message without a key")
            continue
        k = canonical(key)
        if partition_of.setdefault(k, p) != p:
            problems.append(f"{topic}: key {k} on partitions {partition_of[k]} and {p}")
        if value is None:
            tombstones += 1
            rows.pop(k, None)
        else:
            rows[k] = canonical(value)
    compacted = set(rows.values())
    with open(f"{files}/{table}.jsonl", encoding="utf-8") as f:
        snapshot = {canonical(line) for line in f if line.strip()}
    if compacted != snapshot:
        only_topic = sorted(compacted - snapshot)[:3]
        only_file = sorted(snapshot - compacted)[:3]
        problems.append(f"{topic}: compacted topic ({len(compacted)} rows) differs from "
                        f"{table}.jsonl ({len(snapshot)} rows); only in the topic: {only_topic}; "
                        f"only in the file: {only_file}")
    summary = {"table": table, "messages": len(messages), "tombstones": tombstones,
               "rows": len(compacted)}
    return summary, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,...]")
    parser.add_argument("--prefix", default="", help="the sink's topic_prefix")
    parser.add_argument("--files", required=True, help="the file sink's output directory")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per topic")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka property, e.g. security.protocol=SASL_SSL")
    parser.add_argument("tables", nargs="+", help="table names (topic = prefix + table)")
    args = parser.parse_args()
    properties = {}
    for kv in args.property:
        key, sep, value = kv.partition("=")
        if not sep:
            parser.error(f"--property {kv!r}: expected KEY=VALUE")
        properties[key] = value
    failed = False
    for table in args.tables:
        try:
            summary, problems = check_table(args.brokers, args.prefix, args.files, table, args.timeout,
                                             properties)
        except (KafkaException, RuntimeError, OSError) as e:
            print(f"read_topics.py: {table}: {e}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps(summary), flush=True)
        for problem in problems:
            print(problem, file=sys.stderr)
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
