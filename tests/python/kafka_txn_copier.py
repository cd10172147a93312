"""A transactional read-process-write copier on confluent-kafka, the way
Kafka applications write one: read `in` (read_committed) in a consumer
group, write each record to `out` in a transaction together with the
consumer's offsets (send_offsets_to_transaction), commit; on an abortable
error abort and rewind to the committed offsets; on a retriable one,
retry. It runs until it has copied COUNT records and `out` holds them,
or DEADLINE seconds pass. Meant to run while the broker is killed with
`kill -9` and restarted; tests/kafka_clients.rs and docs/kafka.md use it.

    kafka_txn_copier.py produce BOOTSTRAP TOPIC COUNT [RATE]
    kafka_txn_copier.py copy BOOTSTRAP IN OUT COUNT DEADLINE
    kafka_txn_copier.py verify BOOTSTRAP OUT COUNT
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def produce(bs, topic, count, rate=None):
    """Produces 0..COUNT idempotently, at RATE records a second if given."""
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5,
                  "message.timeout.ms": 300000, "reconnect.backoff.max.ms": 500})
    failed = []
    started = time.time()
    for i in range(count):
        if rate:
            ahead = i / rate - (time.time() - started)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                p.produce(topic, key=str(i), value=str(i),
                          on_delivery=lambda err, _m: err and failed.append(str(err)))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(300)
    if left or failed:
        log(f"FAIL: {left} undelivered, {len(failed)} failed: {failed[:3]}")
        sys.exit(1)
    print(json.dumps({"ok": True, "produced": count}))


def rewind(c):
    """Seeks every assigned partition back to the group's committed offset."""
    parts = c.assignment()
    if not parts:
        return
    for tp in c.committed(parts, timeout=30):
        c.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))


def copy(bs, src, dst, count, deadline_s):
    group = f"copier-{src}"
    # librdkafka re-bootstraps when every broker of the cluster is down
    # (KIP-899), which a one-broker cluster is during a restart; its
    # coordinator cache can then keep the decommissioned broker handle, and
    # send_offsets_to_transaction waits on it forever. Reconnecting to the
    # same broker is what this test wants anyway.
    recovery = {"metadata.recovery.strategy": "none"}
    c = Consumer({**recovery, "bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
    import os
    extra = {"debug": os.environ["COPIER_DEBUG"]} if os.environ.get("COPIER_DEBUG") else {}
    p = Producer({**recovery, "bootstrap.servers": bs, "transactional.id": f"copier-{src}-{dst}",
                  "transaction.timeout.ms": 30000, "reconnect.backoff.max.ms": 500, **extra})
    c.subscribe([src])
    p.init_transactions(120)
    copied = 0
    aborts = 0
    deadline = time.time() + deadline_s
    while copied < count and time.time() < deadline:
        msgs = c.consume(num_messages=200, timeout=1.0)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        try:
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, key=m.key(), value=m.value())
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 15)
            while True:
                try:
                    p.commit_transaction(60)
                    break
                except KafkaException as e:
                    if e.args[0].retriable():
                        log("commit retriable:", e.args[0])
                        continue
                    raise
            copied += len(msgs)
            log(f"committed {len(msgs)}, {copied} in all")
        except KafkaException as e:
            err = e.args[0]
            if err.fatal():
                log(f"FAIL: fatal {err}")
                sys.exit(1)
            log("aborting after:", err)
            aborts += 1
            while True:
                try:
                    p.abort_transaction(60)
                    break
                except KafkaException as e2:
                    if e2.args[0].fatal():
                        log(f"FAIL: fatal on abort {e2.args[0]}")
                        sys.exit(1)
                    log("abort retried after:", e2.args[0])
                    time.sleep(0.5)
            rewind(c)
    c.close()
    print(json.dumps({"ok": True, "copied": copied, "aborts": aborts}))


def verify(bs, dst, count):
    c = Consumer({"bootstrap.servers": bs, "group.id": f"verify-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([dst])
    values = []
    deadline = time.time() + 90
    quiet_since = None
    while time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            if len(values) >= count:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since > 3:
                    break
            continue
        if m.error():
            continue
        quiet_since = None
        values.append(int(m.value()))
    c.close()
    dups = len(values) - len(set(values))
    missing = sorted(set(range(count)) - set(values))
    report = {"ok": dups == 0 and not missing, "records": len(values), "duplicates": dups,
              "missing": len(missing)}
    print(json.dumps(report))
    if not report["ok"]:
        log(f"FAIL: {dups} duplicates, {len(missing)} missing (first {missing[:5]})")
        sys.exit(1)


def main():
    cmd = sys.argv[1]
    if cmd == "produce":
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                float(sys.argv[5]) if len(sys.argv) > 5 else None)
    elif cmd == "copy":
        copy(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    elif cmd == "verify":
        verify(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        log(f"FAIL: unknown command {cmd}")
        sys.exit(1)


if __name__ == "__main__":
    main()
