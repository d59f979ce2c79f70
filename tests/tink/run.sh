#!/bin/bash
# Installs the pinned tink-crypto (package-lock.json) into tests/tink/node_modules, then runs
# `node SCRIPT.mjs ARGS...` here (no script: install only). Exit 77 (ctest: Skipped, never Passed)
# when node or npm is missing or the npm registry cannot be reached, with the reason on stderr.
# Used by tests/tink_keyset_pg_test.cpp and to regenerate vectors.json (./run.sh make_vectors.mjs).
set -uo pipefail
cd "$(dirname "$0")"
. ../npm_ci.sh
npm_ci_pinned tink-crypto

[ $# -eq 0 ] && exit 0
exec node "$@"
