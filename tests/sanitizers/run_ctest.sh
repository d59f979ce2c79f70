#!/bin/bash
# Runs ctest in a sanitizer build directory (make test-asan, make test-tsan) and fails if any
# process wrote a sanitizer report: a test executable, or a child it started -- the rekey
# binary is built with the same sanitizers, and a child's report must not go unnoticed just
# because its test expected a non-zero exit or killed it afterwards.
#
# Every report goes to a file under <build>/sanitizer-logs (log_path; the harness captures a
# child's stderr into a string only its test sees), so besides the ctest result this script
# fails whenever that directory is not empty, and prints the reports.
# A finding also ends its process with exit code 86 (sanitizers) -- no rekey command exits 86.
#
# Usage: tests/sanitizers/run_ctest.sh asan|tsan <build dir> [ctest arguments...]
set -euo pipefail
kind=$1
build=$(cd "$2" && pwd)
shift 2
supp=$(cd "$(dirname "$0")" && pwd)
logs=$build/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"

common="halt_on_error=1:exitcode=86:print_stacktrace=1:log_path=$logs/report"
case $kind in
  asan)
    export ASAN_OPTIONS="$common:detect_leaks=1:check_initialization_order=1:strict_init_order=1"
    export UBSAN_OPTIONS="$common:suppressions=$supp/ubsan.supp"
    export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
    ;;
  tsan)
    export TSAN_OPTIONS="$common:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
    ;;
  *)
    echo "usage: $0 asan|tsan <build dir> [ctest arguments...]" >&2
    exit 2
    ;;
esac

rc=0
(cd "$build" && ctest --output-on-failure "$@") || rc=$?

reports=$(find "$logs" -type f -size +0 | sort)
if [ -n "$reports" ]; then
  echo "rekey: sanitizer reports ($kind) -- each is a failure, even if its test passed:" >&2
  for f in $reports; do
    echo "===== $f" >&2
    cat "$f" >&2
  done
  rc=1
fi
exit $rc
