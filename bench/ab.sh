#!/bin/bash
# A/B of one lever: the same bench command for two builds, alternating A, B, A, B, ... so the
# machine's load drifts across both sides alike. Each run writes its own JSON; compare medians of
# the per-run figures (server CPU and WAL per row are the ones load does not move).
#
#   bench/ab.sh <A build dir> <B build dir> [rounds, default 2] [out dir, default /tmp/rekey-ab]
#
# The bench's own environment variables pass through; the defaults below are the lever A/Bs' of
# bench/README.md (200,000 rows, 2 processes x 1, A2 beside every rotation).
set -u
a=$1 b=$2 rounds=${3:-2} out=${4:-/tmp/rekey-ab}
mkdir -p "$out"
export BENCH_ROWS=${BENCH_ROWS:-200000} BENCH_RUNS=${BENCH_RUNS:-3} BENCH_ANCHORS=${BENCH_ANCHORS:-A2}
export BENCH_CONFIGS=${BENCH_CONFIGS:-2x1}
export BENCH_SKIP=${BENCH_SKIP:-"scaling staged gentle sizes codecs micro partitioned full walcap lockwait"}
cd "$(dirname "$0")/.."
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    dir=$a; [ "$side" = B ] && dir=$b
    start=$(date +%s)
    BENCH_OUT="$out/ab-$side-$round.json" python3 bench/run_bench.py "$dir" >"$out/ab-$side-$round.log" 2>&1
    echo "$side $round rc=$? $(($(date +%s) - start)) s" | tee -a "$out/summary"
  done
done
