#!/usr/bin/env bash
# A confluent-kafka transactional read-process-write copier against a
# ferry broker that is killed with kill -9 and restarted while it runs.
# Afterwards the output topic must hold every input record exactly once
# (read_committed).
#
#   scripts/kafka-txn-copier-kill9.sh [FERRY] [PYTHON] [SECONDS] [RECORDS] [KILLS]
#
# FERRY defaults to target/release/ferry, PYTHON to a python3 with
# confluent-kafka (tests/python/requirements.txt), SECONDS to 60,
# RECORDS to 30000, KILLS to 2 (spread over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${1:-target/release/ferry}
PYTHON=${2:-python3}
SECONDS_TOTAL=${3:-60}
RECORDS=${4:-30000}
KILLS=${5:-2}
COPIER=tests/python/kafka_txn_copier.py
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
echo "work dir: $work" >&2

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=127.0.0.1:$(port)
KAFKA=127.0.0.1:$(port)

start_broker() {
  "$FERRY" broker --data-dir "$work/data" --listen "$GRPC" --kafka-listen "$KAFKA" --http-listen off \
    --group-initial-rebalance-delay-ms 0 >>"$work/broker.log" 2>&1 &
  BROKER=$!
  for _ in $(seq 100); do
    grep -q "serving Kafka clients" "$work/broker.log" 2>/dev/null && return
    sleep 0.1
  done
  echo "broker did not start" >&2; exit 1
}

start_broker
"$FERRY" topic create in --partitions 3 --broker "$GRPC" >/dev/null
"$FERRY" topic create out --partitions 3 --broker "$GRPC" >/dev/null

# The input arrives over the whole run, so the kills land mid-copy.
"$PYTHON" "$COPIER" produce "$KAFKA" in "$RECORDS" "$((RECORDS / SECONDS_TOTAL))" >"$work/produce.out" 2>"$work/produce.err" &
PRODUCER=$!
"$PYTHON" "$COPIER" copy "$KAFKA" in out "$RECORDS" "$((SECONDS_TOTAL + 60))" >"$work/copy.out" 2>"$work/copy.err" &
COPY=$!

step=$((SECONDS_TOTAL / (KILLS + 1)))
for k in $(seq "$KILLS"); do
  sleep "$step"
  kill -9 "$BROKER"; wait "$BROKER" 2>/dev/null || true
  sleep 1
  echo "kill -9 #$k at $((k * step)) s" >&2
  start_broker
done

wait "$PRODUCER" || { echo "producer failed:"; cat "$work/produce.err"; exit 1; }
wait "$COPY" || { echo "copier failed:"; tail -20 "$work/copy.err"; exit 1; }
echo "producer: $(cat "$work/produce.out")"
echo "copier:   $(cat "$work/copy.out")"
echo "copier log lines (aborts and retries): $(wc -l <"$work/copy.err")"
"$PYTHON" "$COPIER" verify "$KAFKA" out "$RECORDS"
