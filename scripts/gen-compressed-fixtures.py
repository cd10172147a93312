#!/usr/bin/env python3
"""Writes compressed RecordBatch v2 fixtures with kafka-python's own batch
builder, for ferry-proto's interop tests (proto/tests/compressed_batches.rs).

Each fixture is one batch, as kafka-python's producer would send it,
holding the records `records()` below describes; the Rust test rebuilds
the same list and compares field by field, so the two must stay in step.
The fixtures are committed: the tests never run Python.

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install kafka-python cramjam python-snappy lz4 zstandard
    /tmp/fixture-venv/bin/python scripts/gen-compressed-fixtures.py

Files (under proto/tests/fixtures/):
    kafka-python-gzip.bin        gzip stream
    kafka-python-snappy.bin      xerial "snappy-java" framing (the Java client's)
    kafka-python-snappy-raw.bin  raw snappy (what librdkafka writes)
    kafka-python-lz4.bin         LZ4 frame, independent blocks
    kafka-python-zstd.bin        zstd frame
"""

import importlib.metadata
import os
import sys

from kafka import codec
from kafka.record import default_records
from kafka.record.default_records import DefaultRecordBatchBuilder

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto", "tests", "fixtures")

BASE_TIMESTAMP = 1_700_000_000_000
PRODUCER_ID = 42
PRODUCER_EPOCH = 1
BASE_SEQUENCE = 100
# Enough records (about 110 KB before compression) to span several xerial
# chunks (32 KiB) and LZ4 blocks (64 KiB).
RECORD_COUNT = 300


def records():
    """(timestamp, key, value, headers) of record i; mirrored in Rust."""
    out = []
    for i in range(RECORD_COUNT):
        key = None if i % 7 == 3 else ("key-%d" % i).encode()
        value = None if i % 11 == 5 else (("value-%d-" % i) * (i % 50 + 1)).encode()
        headers = [("h", ("%d" % i).encode())]
        if i % 5 == 0:
            headers.append(("null", None))
        out.append((BASE_TIMESTAMP + (i * 37) % 1000, key, value, headers))
    return out


def build(codec_id):
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec_id,
        is_transactional=False,
        producer_id=PRODUCER_ID,
        producer_epoch=PRODUCER_EPOCH,
        base_sequence=BASE_SEQUENCE,
        batch_size=1 << 24,
    )
    for offset, (ts, key, value, headers) in enumerate(records()):
        if b.append(offset, ts, key, value, headers) is None:
            sys.exit("record %d did not fit" % offset)
    batch = bytes(b.build())
    attributes = int.from_bytes(batch[21:23], "big")
    # kafka-python sends a batch uncompressed when compressing does not
    # pay; the fixtures must really be compressed.
    if attributes & 0x7 != codec_id:
        sys.exit("codec %d: batch written with attributes %#x" % (codec_id, attributes))
    return batch


def main():
    os.makedirs(OUT, exist_ok=True)
    fixtures = {
        "gzip": DefaultRecordBatchBuilder.CODEC_GZIP,
        "snappy": DefaultRecordBatchBuilder.CODEC_SNAPPY,
        "lz4": DefaultRecordBatchBuilder.CODEC_LZ4,
        "zstd": DefaultRecordBatchBuilder.CODEC_ZSTD,
    }
    for name, codec_id in fixtures.items():
        write(name, build(codec_id))
    # librdkafka writes raw snappy, without the xerial framing.
    xerial = default_records.snappy_encode
    default_records.snappy_encode = lambda data: codec.snappy_encode(data, xerial_compatible=False)
    try:
        raw = build(DefaultRecordBatchBuilder.CODEC_SNAPPY)
    finally:
        default_records.snappy_encode = xerial
    if raw[61:69] == b"\x82SNAPPY\x00":
        sys.exit("raw snappy fixture came out xerial-framed")
    write("snappy-raw", raw)
    versions = ", ".join(
        "%s %s" % (p, importlib.metadata.version(p))
        for p in ["kafka-python", "python-snappy", "cramjam", "lz4", "zstandard"]
    )
    print("generated with", versions)


def write(name, batch):
    path = os.path.join(OUT, "kafka-python-%s.bin" % name)
    with open(path, "wb") as f:
        f.write(batch)
    print("%s: %d bytes" % (os.path.relpath(path), len(batch)))


if __name__ == "__main__":
    main()
