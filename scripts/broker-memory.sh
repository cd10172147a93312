#!/usr/bin/env bash
# Broker resident memory against log size, under a steady `ferry bench` load.
#
# Starts `ferry broker` on a fresh data dir, runs `ferry bench produce`
# against it until the log holds GIB GiB, and samples the broker's VmRSS,
# RssAnon and RssFile from /proc every 20 ms. Prints, for the window of
# +-256 MiB around 1 GiB and around each further GiB, the mean and the
# maximum of each (KiB). Only the log pages a reader touched are mapped
# into the broker, so RSS moves with reads; compare means and maxima, not
# single samples.
#
# usage: scripts/broker-memory.sh [FERRY_BINARY] [GIB] [RECORD_BYTES]
set -euo pipefail
ferry=${1:-target/release/ferry}
gib=${2:-10}
size=${3:-1024}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-memory.XXXXXX")
port=$((20000 + RANDOM % 20000))
"$ferry" broker --data-dir "$work/data" --listen "127.0.0.1:$port" --http-listen off --fsync never >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
records=$(( (gib * 1024 * 1024 * 1024 + 256 * 1024 * 1024) / (size + 8) ))
"$ferry" bench produce --broker "127.0.0.1:$port" --record-size "$size" \
    --records "$records" --no-baseline >"$work/bench.out" 2>&1 &
bench=$!
# The log size is the data dir's disk usage: segments are preallocated,
# so it runs ahead of the data by at most one segment (64 MiB).
: >"$work/samples"
n=0
log_kib=0
while kill -0 $bench 2>/dev/null; do
    if (( n % 10 == 0 )); then
        log_kib=$(du -sk "$work/data" | cut -f1)
    fi
    awk -v t="$n" -v lg="$log_kib" '/^VmRSS|^RssAnon|^RssFile/ {v[$1]=$2}
        END {print t, lg, v["VmRSS:"], v["RssAnon:"], v["RssFile:"]}' "/proc/$broker/status" >>"$work/samples"
    n=$((n + 1))
    sleep 0.02
done
tail -3 "$work/bench.out"
awk -v gib="$gib" 'BEGIN {
        printf "%8s %8s %10s %10s %10s %10s %10s %10s\n", "log GiB", "samples",
            "RSS mean", "RSS max", "anon mean", "anon max", "file mean", "file max"
    }
    {
        g = $2 / 1048576
        w = int(g + 0.5)
        if (w < 1 || w > gib || (g - w) * (g - w) > 0.0625) next
        c[w]++; r[w] += $3; a[w] += $4; f[w] += $5
        if ($3 > rm[w]) rm[w] = $3
        if ($4 > am[w]) am[w] = $4
        if ($5 > fm[w]) fm[w] = $5
    }
    END {
        for (w = 1; w <= gib; w++) if (c[w])
            printf "%8d %8d %10d %10d %10d %10d %10d %10d\n", w, c[w],
                r[w] / c[w], rm[w], a[w] / c[w], am[w], f[w] / c[w], fm[w]
    }' "$work/samples"
