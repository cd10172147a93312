#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: kafka_request (request frames
# through the Kafka front end's checks and decoders), record_batch
# (record batch validation), sasl_scram (the server side of a SCRAM
# exchange), credentials_file (the credentials file parser),
# stored_records (transaction-log, offsets-log and group records, and
# producer-state snapshots) or log_recovery (a segment and its index with
# arbitrary contents, through recovery).
#
#   scripts/fuzz.sh TARGET [SECONDS]    (default 60)
#
# Installs cargo-fuzz if it is missing. libFuzzer needs nightly compiler
# flags; RUSTC_BOOTSTRAP lets the installed stable toolchain take them.
# Findings land in fuzz/artifacts/TARGET/; the corpus in fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh kafka_request|record_batch|sasl_scram|credentials_file|stored_records|log_recovery [SECONDS]}
seconds=${2:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p "fuzz/corpus/$target"
cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096
