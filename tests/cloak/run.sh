#!/bin/bash
# Installs the pinned @47ng/cloak (package-lock.json) into tests/cloak/node_modules, then runs
# `node SCRIPT.mjs ARGS...` here (no script: install only). Exit 77 (ctest: Skipped, never Passed)
# when node or npm is missing or the npm registry cannot be reached, with the reason on stderr.
# Used by tests/cloak_pg_test.cpp and to regenerate the vectors of src/crypto/cloak_test.cpp
# (./run.sh make_vectors.mjs).
set -uo pipefail
cd "$(dirname "$0")"
. ../npm_ci.sh
npm_ci_pinned @47ng/cloak

[ $# -eq 0 ] && exit 0
exec node "$@"
