#!/bin/bash
# Runs every libFuzzer target of tests/fuzz for FUZZ_SECONDS each (default 60) over its committed
# corpus and regressions; fails on the first crash, leak, timeout or sanitizer report.
#
#   tests/fuzz/run.sh BUILD_DIR [TARGET...]     (make fuzz builds BUILD_DIR=build-fuzz first)
#
# New interesting inputs go to a scratch directory, not the source tree (see docs/testing.md for
# growing the committed corpus with -merge=1). A crash leaves its input in FUZZ_ARTIFACTS
# (default build-fuzz/artifacts): fix the bug, then copy the input into
# tests/fuzz/<target>/regressions/.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [TARGET...]}
shift
seconds=${FUZZ_SECONDS:-60}
artifacts=${FUZZ_ARTIFACTS:-$build/artifacts}
mkdir -p "$artifacts"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in tests/fuzz/*_fuzz.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/rekey-fuzz-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# ASan's default leak check and abort-on-error make every finding fatal.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in "${targets[@]}"; do
  dir=tests/fuzz/$t
  mkdir -p "$scratch/$t" "$dir/regressions"
  echo "== fuzz $t for ${seconds}s"
  # -timeout: one input taking 10s is a hang. -rss_limit_mb: a small input allocating 2 GB is a
  # bug too. Inputs up to 64 KiB: KMS replies and stored values are small.
  if ! "$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$artifacts/$t-" \
      "$scratch/$t" "$dir/corpus" "$dir/regressions" >"$scratch/$t.log" 2>&1; then
    tail -n 80 "$scratch/$t.log"
    echo "fuzz $t FAILED; the input is in $artifacts/ (fix the bug, then add it to $dir/regressions/)" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$scratch/$t.log" | tr '\n' ' ' ||
    true
  echo
done
echo "fuzz: ${#targets[@]} targets clean"
