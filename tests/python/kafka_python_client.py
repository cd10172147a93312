"""Checks of Ferry's Kafka listener with kafka-python, a pure-Python
Kafka protocol stack nobody here wrote: a consumer group of two that
splits the partitions, reads what is produced and commits, and a plain
consumer that reads everything from the start.

    kafka_python_client.py BOOTSTRAP
"""
import json
import sys
import time
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from checks import check, fail


def main():
    bs = sys.argv[1]
    topic = f"kp-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    check(topic in admin.list_topics(), "topic listed")

    # The group forms first, over an empty topic, so neither member reads
    # what the other is assigned later.
    group = f"kpg-{topic}"
    members = [KafkaConsumer(bootstrap_servers=bs, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=500)
               for _ in range(2)]
    for m in members:
        m.subscribe([topic])
    deadline = time.time() + 60
    while time.time() < deadline and not all(len(m.assignment()) == 2 for m in members):
        for m in members:
            m.poll(timeout_ms=200)
    assignments = [m.assignment() for m in members]
    check(all(len(a) == 2 for a in assignments), f"two partitions each: {assignments}")

    p = KafkaProducer(bootstrap_servers=bs, acks="all")
    for i in range(200):
        p.send(topic, key=f"k{i % 13}".encode(), value=f"v{i}".encode(), headers=[("n", str(i).encode())])
    p.flush(30)
    p.close()

    seen = []
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < 200:
        for m in members:
            for batch in m.poll(timeout_ms=300).values():
                seen.extend(r.value.decode() for r in batch)
    check(len(seen) == 200 and len(set(seen)) == 200, f"group read {len(seen)} ({len(set(seen))} distinct)")
    for m in members:
        m.commit()
    committed = {tp.partition: members[0].committed(TopicPartition(topic, tp.partition))
                 for a in assignments for tp in a}
    for m in members:
        m.close()
    check(sum(v or 0 for v in committed.values()) == 200, f"committed {committed}")

    c = KafkaConsumer(topic, bootstrap_servers=bs, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=5000)
    values = [m.value.decode() for m in c]
    c.close()
    check(sorted(values) == sorted(f"v{i}" for i in range(200)), f"plain consumer read {len(values)}")
    admin.delete_topics([topic])
    admin.close()
    print(json.dumps({"ok": True, "records": len(seen)}))


if __name__ == "__main__":
    main()
