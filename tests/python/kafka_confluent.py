"""Checks of Ferry's Kafka listener with confluent-kafka (librdkafka 2.x),
a Kafka client nobody here wrote. Each subcommand asserts what it checks
and exits non-zero with the reason; tests/kafka_clients.rs runs them.

    kafka_confluent.py basic BOOTSTRAP
    kafka_confluent.py txn BOOTSTRAP
    kafka_confluent.py group BOOTSTRAP
    kafka_confluent.py compressed BOOTSTRAP
    kafka_confluent.py produce-idempotent BOOTSTRAP TOPIC COUNT
    kafka_confluent.py verify-once BOOTSTRAP TOPIC COUNT
    kafka_confluent.py produce-mixed BOOTSTRAP TOPIC
    kafka_confluent.py consume-mixed BOOTSTRAP TOPIC COUNT
    kafka_confluent.py sasl BOOTSTRAP USER PASSWORD
    kafka_confluent.py sasl-ssl BOOTSTRAP USER PASSWORD CA
    kafka_confluent.py mtls BOOTSTRAP CA CERT KEY ROGUE_CERT ROGUE_KEY
    kafka_confluent.py acls BOOTSTRAP ADMIN APP PASSWORD
    kafka_confluent.py describe-acls BOOTSTRAP USER PASSWORD
"""
import json
import sys
import time
import uuid

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                  AdminClient, ConfigResource, NewPartitions, NewTopic,
                                  ResourcePatternType, ResourceType)

from checks import check, fail


def consumer(bs, group, **extra):
    conf = {
        "bootstrap.servers": bs,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    conf.update(extra)
    return Consumer(conf)


def drain(c, want, timeout=30.0, idle=None):
    """Polls until `want` messages arrived (or, with `idle`, until nothing
    arrived for that long after the first one), or the timeout."""
    got = []
    deadline = time.time() + timeout
    last = time.time()
    while time.time() < deadline:
        if want is not None and len(got) >= want:
            break
        if idle is not None and got and time.time() - last > idle:
            break
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            fail(f"consume error: {m.error()}")
        got.append(m)
        last = time.time()
    return got


def create(admin, name, partitions):
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        f.result(15)


def basic(bs):
    admin = AdminClient({"bootstrap.servers": bs})
    topic = f"basic-{uuid.uuid4().hex[:8]}"
    create(admin, topic, 3)
    md = admin.list_topics(timeout=10)
    check(topic in md.topics, f"{topic} not listed: {list(md.topics)}")
    check(len(md.topics[topic].partitions) == 3, "three partitions")
    check(len(md.brokers) == 1, f"one broker: {md.brokers}")
    # Creating it again is TOPIC_ALREADY_EXISTS.
    try:
        create(admin, topic, 3)
        fail("a second create succeeded")
    except KafkaException as e:
        check(e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, f"second create: {e}")
    res = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    for f in res.values():
        configs = f.result(10)
        check("retention.ms" in configs and "cleanup.policy" in configs, f"configs: {list(configs)}")
        check(configs["cleanup.policy"].value == "delete", f"default policy: {configs['cleanup.policy']}")
    # Settings given at creation are the topic's own; a bad one creates nothing.
    table = f"table-{uuid.uuid4().hex[:8]}"
    fs = admin.create_topics([NewTopic(table, num_partitions=1, replication_factor=1,
                                       config={"cleanup.policy": "compact", "segment.bytes": "65536"})])
    for f in fs.values():
        f.result(15)
    for f in admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, table)]).values():
        configs = f.result(10)
        check(configs["cleanup.policy"].value == "compact", f"policy: {configs['cleanup.policy']}")
        check(configs["segment.bytes"].value == "65536", f"segment.bytes: {configs['segment.bytes']}")
    bad = f"bad-{uuid.uuid4().hex[:8]}"
    try:
        for f in admin.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1,
                                               config={"cleanup.policy": "sometimes"})]).values():
            f.result(15)
        fail("a topic with cleanup.policy=sometimes was created")
    except KafkaException as e:
        check(e.args[0].code() == KafkaError.INVALID_CONFIG, f"bad config: {e}")
    check(bad not in admin.list_topics(timeout=10).topics, f"{bad} exists")

    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5})
    sent = {}
    for i in range(300):
        key = f"k{i % 11}"
        value = f"v{i}"
        p.produce(topic, key=key, value=value, headers=[("h", b"1"), ("h", b"2")], timestamp=1_700_000_000_000 + i)
        sent[value] = key
    check(p.flush(20) == 0, "every record delivered")

    c = consumer(bs, f"g-{topic}")
    c.subscribe([topic])
    msgs = drain(c, 300)
    check(len(msgs) == 300, f"consumed {len(msgs)} of 300")
    seen = set()
    for m in msgs:
        v = m.value().decode()
        check(v not in seen, f"{v} twice")
        seen.add(v)
        check(m.key().decode() == sent[v], f"key of {v}")
        check(m.headers() == [("h", b"1"), ("h", b"2")], f"headers of {v}: {m.headers()}")
        check(m.timestamp()[1] == 1_700_000_000_000 + int(v[1:]), f"timestamp of {v}: {m.timestamp()}")
    # Per partition, keys map to one partition and offsets are dense.
    by_part = {}
    for m in msgs:
        by_part.setdefault(m.partition(), []).append(m.offset())
    for part, offs in by_part.items():
        check(offs == list(range(len(offs))), f"partition {part} offsets {offs[:5]}...")
    # ListOffsets by time names the first record at or after it, in the
    # middle of a batch too; past every record it is the end.
    stamps = {}
    for m in msgs:
        stamps.setdefault(m.partition(), []).append((m.offset(), m.timestamp()[1]))
    for t in (1_700_000_000_000 + 150, 1_700_000_000_000 + 10_000):
        found = c.offsets_for_times([TopicPartition(topic, part, t) for part in stamps], timeout=10)
        for tp in found:
            want = next((o for o, ts in sorted(stamps[tp.partition]) if ts >= t), len(stamps[tp.partition]))
            check(tp.error is None and tp.offset == want,
                  f"offsets_for_times({t}) partition {tp.partition}: {tp.offset}, want {want}")
    c.commit(asynchronous=False)
    committed = c.committed([TopicPartition(topic, i) for i in range(3)], timeout=10)
    for tp in committed:
        check(tp.offset == len(by_part.get(tp.partition, [])) or (tp.offset < 0 and tp.partition not in by_part),
              f"committed {tp}")
    c.close()

    groups = admin.list_consumer_groups().result(10)
    check(any(g.group_id == f"g-{topic}" for g in groups.valid), f"group listed: {groups.valid}")
    desc = admin.describe_consumer_groups([f"g-{topic}"])
    for f in desc.values():
        d = f.result(10)
        check(str(d.state).endswith("EMPTY"), f"group state after close: {d.state}")
    for f in admin.delete_consumer_groups([f"g-{topic}"]).values():
        f.result(10)
    for f in admin.create_partitions([NewPartitions(topic, 5)]).values():
        f.result(10)
    md = admin.list_topics(topic=topic, timeout=10)
    check(len(md.topics[topic].partitions) == 5, f"five partitions after create_partitions: {md.topics[topic].partitions}")
    try:
        for f in admin.create_partitions([NewPartitions(topic, 2)]).values():
            f.result(10)
        fail("shrinking a topic succeeded")
    except KafkaException as e:
        check(e.args[0].code() == KafkaError.INVALID_PARTITIONS, f"shrink: {e}")
    for f in admin.delete_topics([topic]).values():
        f.result(10)
    md = admin.list_topics(timeout=10)
    check(topic not in md.topics, "deleted topic gone")
    print(json.dumps({"ok": True, "records": len(msgs)}))


def txn(bs):
    admin = AdminClient({"bootstrap.servers": bs})
    src = f"txn-in-{uuid.uuid4().hex[:8]}"
    out = f"txn-out-{uuid.uuid4().hex[:8]}"
    create(admin, src, 2)
    create(admin, out, 2)
    tid = f"tid-{uuid.uuid4().hex[:8]}"
    tp = Producer({"bootstrap.servers": bs, "transactional.id": tid})
    tp.init_transactions(15)
    tp.begin_transaction()
    for i in range(10):
        tp.produce(src, key=str(i), value=f"committed-{i}")
    tp.commit_transaction(15)
    tp.begin_transaction()
    for i in range(10):
        tp.produce(src, key=str(i), value=f"aborted-{i}")
    # Flushed first, so the aborted records reach the log (an abort
    # purges what the client has not sent yet).
    check(tp.flush(15) == 0, "aborted records sent")
    tp.abort_transaction(15)
    tp.begin_transaction()
    for i in range(10, 20):
        tp.produce(src, key=str(i), value=f"committed-{i}")
    tp.commit_transaction(15)

    rc = consumer(bs, f"rc-{src}", **{"isolation.level": "read_committed"})
    rc.subscribe([src])
    got = [m.value().decode() for m in drain(rc, None, timeout=20, idle=3)]
    rc.close()
    check(sorted(got) == sorted(f"committed-{i}" for i in range(20)), f"read_committed saw {sorted(got)}")
    ru = consumer(bs, f"ru-{src}", **{"isolation.level": "read_uncommitted"})
    ru.subscribe([src])
    raw = [m.value().decode() for m in drain(ru, 30, timeout=20)]
    ru.close()
    check(len(raw) == 30 and sum(v.startswith("aborted") for v in raw) == 10, f"read_uncommitted saw {len(raw)}")

    # Read-process-write: consume src, write out, commit offsets in the
    # transaction with the consumer's group metadata (KIP-447).
    group = f"copier-{src}"
    c = consumer(bs, group, **{"isolation.level": "read_committed"})
    c.subscribe([src])
    copier = Producer({"bootstrap.servers": bs, "transactional.id": f"{tid}-copier"})
    copier.init_transactions(15)
    msgs = drain(c, 20, timeout=30)
    check(len(msgs) == 20, f"copier read {len(msgs)}")
    copier.begin_transaction()
    for m in msgs:
        copier.produce(out, key=m.key(), value=m.value())
    positions = c.position(c.assignment())
    copier.send_offsets_to_transaction(positions, c.consumer_group_metadata(), 15)
    copier.commit_transaction(15)
    c.close()
    check_c = consumer(bs, group)
    committed = check_c.committed([TopicPartition(src, i) for i in range(2)], timeout=10)
    check_c.close()
    total = sum(max(tp.offset, 0) for tp in committed)
    # 20 committed records + 2 control markers per committed/aborted transaction per partition touched.
    check(total >= 20, f"transactional offsets committed: {committed}")
    oc = consumer(bs, f"out-{out}", **{"isolation.level": "read_committed"})
    oc.subscribe([out])
    copied = sorted(m.value().decode() for m in drain(oc, None, timeout=20, idle=3))
    oc.close()
    check(copied == sorted(f"committed-{i}" for i in range(20)), f"copied {copied}")

    # A zombie: a second producer with the same transactional id fences
    # the first, whose commit then fails.
    zombie = Producer({"bootstrap.servers": bs, "transactional.id": f"{tid}-z"})
    zombie.init_transactions(15)
    zombie.begin_transaction()
    zombie.produce(out, value="zombie")
    zombie.flush(10)
    fresh = Producer({"bootstrap.servers": bs, "transactional.id": f"{tid}-z"})
    fresh.init_transactions(15)
    try:
        zombie.commit_transaction(15)
        fail("the fenced producer committed")
    except KafkaException as e:
        err = e.args[0]
        check(err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH),
              f"zombie commit error: {err}")
    fresh.begin_transaction()
    fresh.produce(out, value="fresh")
    fresh.commit_transaction(15)
    oc = consumer(bs, f"out2-{out}", **{"isolation.level": "read_committed"})
    oc.subscribe([out])
    final = [m.value().decode() for m in drain(oc, None, timeout=20, idle=3)]
    oc.close()
    check("zombie" not in final and "fresh" in final, f"after fencing: {final[-3:]}")
    print(json.dumps({"ok": True}))


def group(bs):
    admin = AdminClient({"bootstrap.servers": bs})
    topic = f"group-{uuid.uuid4().hex[:8]}"
    create(admin, topic, 6)
    gid = f"g3-{topic}"
    members = [consumer(bs, gid, **{"partition.assignment.strategy": "range"}) for _ in range(3)]
    assigned = [set() for _ in members]

    def on_assign(i):
        def cb(c, parts):
            assigned[i] = {p.partition for p in parts}
        return cb

    for i, m in enumerate(members):
        m.subscribe([topic], on_assign=on_assign(i))
    deadline = time.time() + 40
    while time.time() < deadline:
        for m in members:
            m.poll(0.2)
        if sum(len(a) for a in assigned) == 6 and all(len(a) == 2 for a in assigned):
            break
    check(all(len(a) == 2 for a in assigned), f"three members with two partitions each: {assigned}")
    check(set().union(*assigned) == set(range(6)), f"every partition once: {assigned}")
    members[2].close()
    deadline = time.time() + 40
    while time.time() < deadline:
        for m in members[:2]:
            m.poll(0.2)
        if len(assigned[0]) + len(assigned[1]) == 6 and not (assigned[0] & assigned[1]):
            break
    check(assigned[0] | assigned[1] == set(range(6)) and not (assigned[0] & assigned[1]),
          f"two members cover all six after one leaves: {assigned[:2]}")
    for m in members[:2]:
        m.close()
    print(json.dumps({"ok": True}))


def produce_idempotent(bs, topic, count):
    p = Producer({
        "bootstrap.servers": bs,
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": 120000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
    })
    failed = []

    def report(err, msg):
        if err is not None:
            failed.append(str(err))

    for i in range(count):
        while True:
            try:
                p.produce(topic, value=str(i), on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        if i % 100 == 0:
            p.poll(0)
        if i % 1000 == 0:
            time.sleep(0.05)
    left = p.flush(150)
    check(left == 0, f"{left} records undelivered")
    check(not failed, f"{len(failed)} deliveries failed: {failed[:3]}")
    print(json.dumps({"ok": True, "produced": count}))


def verify_once(bs, topic, count):
    c = consumer(bs, f"verify-{uuid.uuid4().hex[:8]}")
    c.subscribe([topic])
    msgs = drain(c, count, timeout=60)
    # Nothing more may follow.
    extra = drain(c, None, timeout=4)
    c.close()
    values = [int(m.value()) for m in msgs + extra]
    dups = len(values) - len(set(values))
    missing = sorted(set(range(count)) - set(values))
    check(dups == 0, f"{dups} duplicates")
    check(not missing, f"{len(missing)} missing, first {missing[:5]}")
    check(len(values) == count, f"{len(values)} records")
    print(json.dumps({"ok": True, "records": len(values)}))


def compressed(bs):
    """Batches librdkafka compresses with each codec are stored and read
    back, by librdkafka and (the caller checks) by Ferry."""
    admin = AdminClient({"bootstrap.servers": bs})
    topic = f"codecs-{uuid.uuid4().hex[:8]}"
    create(admin, topic, 1)
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    for codec in codecs:
        p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "compression.type": codec,
                      "linger.ms": 20})
        for i in range(50):
            p.produce(topic, key=codec, value=f"{codec}-{i}-" + "x" * 200)
        check(p.flush(15) == 0, f"{codec} delivered")
    c = consumer(bs, f"codecs-{topic}")
    c.subscribe([topic])
    got = [m.value().decode() for m in drain(c, 200, timeout=30)]
    c.close()
    want = [f"{codec}-{i}-" + "x" * 200 for codec in codecs for i in range(50)]
    check(got == want, f"read back {len(got)} of 200 in order")
    print(json.dumps({"ok": True, "topic": topic}))


def produce_mixed(bs, topic):
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True})
    for i in range(5):
        p.produce(topic, key=f"ck{i}", value=f"cv{i}", headers=[("source", b"confluent"), ("n", str(i).encode())],
                  timestamp=1_600_000_000_000 + i)
    check(p.flush(15) == 0, "delivered")
    print(json.dumps({"ok": True}))


def consume_mixed(bs, topic, count):
    c = consumer(bs, f"mixed-{uuid.uuid4().hex[:8]}")
    c.subscribe([topic])
    msgs = drain(c, count, timeout=30)
    c.close()
    out = [{
        "key": m.key().decode() if m.key() is not None else None,
        "value": m.value().decode(),
        "headers": [[k, v.decode()] for k, v in (m.headers() or [])],
        "timestamp": m.timestamp()[1],
    } for m in msgs]
    print(json.dumps({"ok": True, "records": out}))


def tls_conf(ca, cert=None, key=None):
    """Kafka's SSL settings: trust CA; present CERT and KEY (mutual TLS)."""
    conf = {"security.protocol": "SSL", "ssl.ca.location": ca}
    if cert:
        conf["ssl.certificate.location"] = cert
        conf["ssl.key.location"] = key
    return conf


def sasl_conf(mechanism, user, password, ca=None):
    """SASL settings, over TLS that trusts CA when one is given."""
    conf = dict(tls_conf(ca), **{"security.protocol": "SASL_SSL"}) if ca else {
        "security.protocol": "SASL_PLAINTEXT"}
    conf.update({
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    })
    return conf


def client_errors(conf, seconds):
    """The errors librdkafka reports, by callback or exception, for a
    client with `conf` that tries to fetch metadata for up to `seconds`;
    empty if it succeeded."""
    errors = []
    p = Producer(dict(conf, **{"error_cb": errors.append}))
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            p.list_topics(timeout=1.0)
            return []
        except KafkaException as e:
            errors.append(e.args[0])
        p.poll(0.2)
        if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
            break
    return errors


def refused_authentication(conf):
    errors = client_errors(conf, 20.0)
    return any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def round_trip(bs, conf, topic, label):
    """Creates TOPIC, produces ten records idempotently and reads them back
    with a group, all with client settings CONF."""
    admin = AdminClient(dict(conf, **{"bootstrap.servers": bs}))
    create(admin, topic, 1)
    p = Producer(dict(conf, **{"bootstrap.servers": bs, "enable.idempotence": True}))
    delivered = []
    for i in range(10):
        p.produce(topic, value=f"{label}-{i}".encode(),
                  on_delivery=lambda err, m: delivered.append(err))
    check(p.flush(20) == 0, f"{label}: records still queued")
    check(delivered == [None] * 10, f"{label}: deliveries {delivered}")
    c = consumer(bs, "g-" + topic, **conf)
    c.subscribe([topic])
    got = drain(c, 10)
    c.close()
    check([m.value().decode() for m in got] == [f"{label}-{i}" for i in range(10)],
          f"{label}: read {[m.value() for m in got]}")


def sasl(bs, user, password, ca=None):
    """Each mechanism authenticates USER and moves records both ways; a
    wrong password and a client without SASL are refused. With CA, all of
    it runs over TLS (SASL_SSL)."""
    suffix = "-tls" if ca else ""
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]:
        round_trip(bs, sasl_conf(mechanism, user, password, ca),
                   "sasl-" + mechanism.lower() + suffix, mechanism)
    wrong, errors = refused_authentication(
        dict(sasl_conf("SCRAM-SHA-256", user, password + "x", ca), **{"bootstrap.servers": bs}))
    check(wrong, f"a wrong password gave {errors}")
    unknown, errors = refused_authentication(
        dict(sasl_conf("SCRAM-SHA-512", "nobody", password, ca), **{"bootstrap.servers": bs}))
    check(unknown, f"an unknown user gave {errors}")
    wrong_plain, errors = refused_authentication(
        dict(sasl_conf("PLAIN", user, password + "x", ca), **{"bootstrap.servers": bs}))
    check(wrong_plain, f"a wrong PLAIN password gave {errors}")
    without = dict(tls_conf(ca), **{"bootstrap.servers": bs}) if ca else {"bootstrap.servers": bs}
    check(client_errors(without, 6.0) != [], "a client without SASL was served")
    print(json.dumps({"ok": True}))


def mtls(bs, ca, cert, key, rogue_cert, rogue_key):
    """A client with a certificate the broker's CA signed moves records both
    ways with no other credential; a client without one, with one from
    another CA, or without TLS at all is refused."""
    round_trip(bs, tls_conf(ca, cert, key), "mtls", "mtls")
    for label, conf in [
        ("no certificate", tls_conf(ca)),
        ("another CA's certificate", tls_conf(ca, rogue_cert, rogue_key)),
        ("plaintext", {}),
    ]:
        errors = client_errors(dict(conf, **{"bootstrap.servers": bs}), 6.0)
        check(errors != [], f"a client with {label} was served")
    print(json.dumps({"ok": True}))


def kafka_code(exc):
    """The Kafka error code a confluent-kafka exception carries."""
    err = exc.args[0]
    return err.code() if isinstance(err, KafkaError) else None


def acls(bs, admin_user, app_user, password):
    """ADMIN (a super user) grants APP, through CreateAcls, write on one
    topic, read on topics by prefix, read on one group and one
    transactional id. APP may then do exactly that: anything else fails
    with the authorization error of the resource it lacks. DescribeAcls
    lists the grants, DeleteAcls removes one and its right goes with it."""
    as_admin = dict(sasl_conf("SCRAM-SHA-256", admin_user, password), **{"bootstrap.servers": bs})
    as_app = dict(sasl_conf("SCRAM-SHA-256", app_user, password), **{"bootstrap.servers": bs})
    admin = AdminClient(as_admin)
    for name in ["orders", "secret"]:
        create(admin, name, 1)
    principal = f"User:{app_user}"
    grants = [
        AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, principal, "*",
                   AclOperation.WRITE, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TOPIC, "ord", ResourcePatternType.PREFIXED, principal, "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.GROUP, "g-app", ResourcePatternType.LITERAL, principal, "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TRANSACTIONAL_ID, "tx-app", ResourcePatternType.LITERAL, principal,
                   "*", AclOperation.WRITE, AclPermissionType.ALLOW),
    ]
    for f in admin.create_acls(grants).values():
        f.result(15)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    listed = admin.describe_acls(everything).result(15)
    check(sorted(map(str, listed)) == sorted(map(str, grants)), f"DescribeAcls listed {listed}")

    # Allowed: an idempotent produce to orders (write on a topic makes an
    # idempotent producer), and reading it back in group g-app.
    p = Producer(dict(as_app, **{"enable.idempotence": True}))
    delivered = []
    for i in range(5):
        p.produce("orders", value=f"o-{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
    check(p.flush(20) == 0 and delivered == [None] * 5, f"app's produce to orders: {delivered}")
    c = consumer(bs, "g-app", **sasl_conf("SCRAM-SHA-256", app_user, password))
    c.subscribe(["orders"])
    got = drain(c, 5)
    c.commit(asynchronous=False)
    c.close()
    check([m.value() for m in got] == [f"o-{i}".encode() for i in range(5)], f"app read {got}")

    # Metadata shows app only what it may describe.
    seen = set(AdminClient(as_app).list_topics(timeout=10).topics)
    check("orders" in seen and "secret" not in seen, f"app's metadata listed {seen}")

    # Refused: a produce to another topic.
    refused = []
    p = Producer(dict(as_app, **{"message.timeout.ms": 10000}))
    p.produce("secret", value=b"x", on_delivery=lambda e, m: refused.append(e))
    p.flush(20)
    check([e.code() for e in refused if e] == [KafkaError.TOPIC_AUTHORIZATION_FAILED],
          f"app's produce to secret: {refused}")

    # Refused: another group.
    c = consumer(bs, "g-other", **sasl_conf("SCRAM-SHA-256", app_user, password))
    c.subscribe(["orders"])
    errors = []
    deadline = time.time() + 20
    while time.time() < deadline and not errors:
        m = c.poll(0.5)
        if m is not None and m.error():
            errors.append(m.error().code())
        elif m is not None:
            fail("app consumed in a group it has no right to")
    c.close()
    check(errors == [KafkaError.GROUP_AUTHORIZATION_FAILED], f"app in g-other: {errors}")

    # Transactions: tx-app works, another transactional id does not.
    tp = Producer(dict(as_app, **{"transactional.id": "tx-app"}))
    tp.init_transactions(15)
    tp.begin_transaction()
    tp.produce("orders", value=b"in-txn")
    tp.commit_transaction(15)
    try:
        Producer(dict(as_app, **{"transactional.id": "tx-other"})).init_transactions(15)
        fail("app initialized a transactional id it has no right to")
    except KafkaException as e:
        check(kafka_code(e) == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, f"tx-other: {e}")

    # Deleting a topic needs delete on it. (librdkafka drops DescribeAcls'
    # error code; kafka_python_acls.py checks that app may not list ACLs.)
    app_admin = AdminClient(as_app)
    try:
        app_admin.delete_topics(["orders"])["orders"].result(15)
        fail("app deleted a topic")
    except KafkaException as e:
        check(kafka_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED, f"app's DeleteTopics: {e}")

    # DeleteAcls takes the write grant away, and the write with it.
    write_filter = AclBindingFilter(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL,
                                    principal, None, AclOperation.WRITE, AclPermissionType.ALLOW)
    removed = [r for f in admin.delete_acls([write_filter]).values() for r in f.result(15)]
    check(list(map(str, removed)) == [str(grants[0])], f"DeleteAcls removed {removed}")
    refused = []
    p = Producer(dict(as_app, **{"message.timeout.ms": 10000}))
    p.produce("orders", value=b"y", on_delivery=lambda e, m: refused.append(e))
    p.flush(20)
    check([e.code() for e in refused if e] == [KafkaError.TOPIC_AUTHORIZATION_FAILED],
          f"app's produce after DeleteAcls: {refused}")
    print(json.dumps({"ok": True, "acls": len(listed), "removed": len(removed)}))


def describe_acls(bs, user, password):
    """Prints how many ACLs DescribeAcls lists."""
    admin = AdminClient(dict(sasl_conf("SCRAM-SHA-256", user, password), **{"bootstrap.servers": bs}))
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    print(json.dumps({"acls": len(admin.describe_acls(everything).result(15))}))


def read_all(bs, topic, isolation="read_committed"):
    """Every record of partition 0 from the start, read without a group."""
    c = Consumer({"bootstrap.servers": bs, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": isolation})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.time() + 20
    while time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            fail(f"consume error: {m.error()}")
        got.append(m)
    c.close()
    return got


def compacted(bs):
    """A compacted topic made through AdminClient: after the broker's
    cleaner has run, a consumer reads only the latest value per key (and
    the tombstone of a deleted key), never an aborted value, each at the
    offset it was produced at."""
    admin = AdminClient({"bootstrap.servers": bs})
    topic = f"compacted-{uuid.uuid4().hex[:8]}"
    fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config={
        "cleanup.policy": "compact", "segment.bytes": "16384",
        "min.cleanable.dirty.ratio": "0.01"})])
    for f in fs.values():
        f.result(15)
    keys = 20
    # Batches stay below the segment size, which bounds a batch.
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 2,
                  "batch.size": 8192})
    offsets = {}

    def delivered(err, msg):
        check(err is None, f"delivery: {err}")
        offsets[msg.value()] = msg.offset()

    latest = {}
    for i in range(3000):
        key = f"k{i % keys}"
        value = f"{key}-v{i}-" + "x" * 40
        p.produce(topic, key=key, value=value, on_delivery=delivered)
        latest[key] = value
    # k0 is deleted, and an aborted transaction overwrites k1.
    p.produce(topic, key="k0", value=None, on_delivery=lambda err, msg: check(err is None, f"{err}"))
    del latest["k0"]
    check(p.flush(30) == 0, "every record delivered")
    t = Producer({"bootstrap.servers": bs, "transactional.id": f"tx-{topic}"})
    t.init_transactions(15)
    t.begin_transaction()
    t.produce(topic, key="k1", value="aborted")
    t.flush(15)
    t.abort_transaction(15)
    # More writes roll the segments the cleaner may take.
    for i in range(200):
        key = f"filler{i % 5}"
        p.produce(topic, key=key, value="f" * 60)
        latest[key] = "f" * 60
    check(p.flush(30) == 0, "filler delivered")
    # A record without a key cannot be compacted: refused, as Kafka does.
    errors = []
    plain = Producer({"bootstrap.servers": bs, "enable.idempotence": False, "retries": 0})
    plain.produce(topic, value="no key", on_delivery=lambda err, msg: errors.append(err))
    plain.flush(15)
    check(len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD,
          f"a keyless record: {errors}")

    deadline = time.time() + 60
    while True:
        msgs = read_all(bs, topic)
        table = {}
        for m in msgs:
            k = m.key().decode()
            if m.value() is None:
                table.pop(k, None)
            else:
                table[k] = m.value().decode()
        if len(msgs) < 600 and table == latest:
            break
        check(time.time() < deadline, f"not compacted in 60 s: {len(msgs)} records, table ok: {table == latest}")
        time.sleep(0.5)
    values = [m.value() for m in msgs]
    check(b"aborted" not in values, "an aborted value is visible")
    check(any(m.key() == b"k0" and m.value() is None for m in msgs), "the tombstone of k0 is kept")
    for m in msgs:
        if m.value() in offsets:
            check(m.offset() == offsets[m.value()], f"{m.value()} moved from {offsets[m.value()]} to {m.offset()}")
    check(msgs[-1].offset() > 3000, "offsets are kept: the log has gaps, not renumbering")
    print(json.dumps({"compacted_records": len(msgs), "produced": 3201}))


def main():
    cmd, bs = sys.argv[1], sys.argv[2]
    if cmd == "basic":
        basic(bs)
    elif cmd == "txn":
        txn(bs)
    elif cmd == "group":
        group(bs)
    elif cmd == "compressed":
        compressed(bs)
    elif cmd == "compacted":
        compacted(bs)
    elif cmd == "produce-idempotent":
        produce_idempotent(bs, sys.argv[3], int(sys.argv[4]))
    elif cmd == "verify-once":
        verify_once(bs, sys.argv[3], int(sys.argv[4]))
    elif cmd == "produce-mixed":
        produce_mixed(bs, sys.argv[3])
    elif cmd == "consume-mixed":
        consume_mixed(bs, sys.argv[3], int(sys.argv[4]))
    elif cmd == "sasl":
        sasl(bs, sys.argv[3], sys.argv[4])
    elif cmd == "sasl-ssl":
        sasl(bs, sys.argv[3], sys.argv[4], ca=sys.argv[5])
    elif cmd == "mtls":
        mtls(bs, *sys.argv[3:8])
    elif cmd == "acls":
        acls(bs, *sys.argv[3:6])
    elif cmd == "describe-acls":
        describe_acls(bs, *sys.argv[3:5])
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
