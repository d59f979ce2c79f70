#!/bin/bash
# Regenerates sql/schema.sql, the reviewed snapshot of the rekey schema (sql/README.md): builds
# the snapshot test, which migrates a fresh database and writes its pg_dump when
# REKEY_UPDATE_SCHEMA_SNAPSHOT is set. Run from the repository root after changing migrations/
# or sql/schema/, then review `git diff sql/schema.sql`.
#   scripts/schema-snapshot.sh [build-dir]   (default: build)
set -euo pipefail
build=${1:-build}
cmake --build "$build" --target schema_upgrade_pg_test
REKEY_UPDATE_SCHEMA_SNAPSHOT=1 "$build/schema_upgrade_pg_test" \
  --gtest_filter='*SnapshotMatchesAFreshlyMigratedDatabase*'
git --no-pager diff --stat -- sql/schema.sql
