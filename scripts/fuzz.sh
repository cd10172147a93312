#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: kafka_request (request frames
# through the Kafka front end's checks and decoders), record_batch
# (record batch validation), sasl_scram (the server side of a SCRAM
# exchange), credentials_file (the credentials file parser),
# grpc_request (a protobuf body through a unary RPC's handler),
# stored_records (transaction-log, offsets-log and group records, and
# producer-state snapshots) or log_recovery (a segment and its index with
# arbitrary contents, through recovery).
#
#   scripts/fuzz.sh TARGET [SECONDS]    (default 60)
#   scripts/fuzz.sh all [SECONDS]       (each target in turn, SECONDS each)
#
# Installs cargo-fuzz if it is missing. libFuzzer needs nightly compiler
# flags; RUSTC_BOOTSTRAP lets the installed stable toolchain take them.
# Findings land in fuzz/artifacts/TARGET/; the corpus in fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(kafka_request record_batch sasl_scram credentials_file grpc_request stored_records log_recovery)
usage="usage: scripts/fuzz.sh all|$(IFS='|'; echo "${targets[*]}") [SECONDS]"
target=${1:?$usage}
seconds=${2:-60}
if [ "$target" != all ] && [[ ! " ${targets[*]} " == *" $target "* ]]; then
  echo "$usage" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
run() {
  mkdir -p "fuzz/corpus/$1"
  cargo fuzz run --fuzz-dir fuzz "$1" "fuzz/corpus/$1" -- -max_total_time="$seconds" -rss_limit_mb=4096
}
if [ "$target" = all ]; then
  # SECONDS per target, one after another.
  for t in "${targets[@]}"; do run "$t"; done
else
  run "$target"
fi
