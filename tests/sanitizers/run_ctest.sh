#!/bin/bash
# Runs ctest in a sanitizer build directory (make test-asan, make test-tsan) and fails if any
# process wrote a sanitizer report: a test executable, or a child it started -- the rekey
# binary is built with the same sanitizers, and a child's report must not go unnoticed just
# because its test expected a non-zero exit or killed it afterwards.
#
# Every report goes to a file under <build>/sanitizer-logs (log_path; the harness captures a
# child's stderr into a string only its test sees), so besides the ctest result this script
# fails whenever that directory holds a report, and prints the reports.
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

# A child the test SIGKILLed on purpose (listed by the harness in sigkilled.pids) may die while
# LeakSanitizer checks it at its exit; the check's tracer then writes only "Unable to get
# registers from thread N" into that child's report. Such a report is an interrupted check, not a
# finding: it is set aside with a note. Any other line, or any other process, stays a failure.
killed=$logs/sigkilled.pids
reports=""
for f in $(find "$logs" -type f -name 'report.*' -size +0 | sort); do
  pid=${f##*.}
  if [ -f "$killed" ] && grep -qx "$pid" "$killed" &&
    ! grep -qvE '^(==[0-9]+==Unable to get registers from thread [0-9]+\.)?$' "$f"; then
    echo "rekey: $f: leak check interrupted by the test's SIGKILL of pid $pid (not a finding)" >&2
    continue
  fi
  reports="$reports $f"
done
if [ -n "$reports" ]; then
  echo "rekey: sanitizer reports ($kind) -- each is a failure, even if its test passed:" >&2
  for f in $reports; do
    echo "===== $f" >&2
    cat "$f" >&2
  done
  rc=1
fi
exit $rc
