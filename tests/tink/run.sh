#!/bin/bash
# Installs the pinned tink-crypto (package-lock.json) into tests/tink/node_modules, then runs
# `node SCRIPT.mjs ARGS...` here (no script: install only). Exit 77 (ctest: Skipped, never Passed)
# when node or npm is missing or the npm registry cannot be reached, with the reason on stderr.
# Used by tests/tink_keyset_pg_test.cpp and to regenerate vectors.json (./run.sh make_vectors.mjs).
set -uo pipefail
cd "$(dirname "$0")"
skip() { echo "SKIPPED: $*" >&2; exit 77; }

if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "rekey: installing npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
    >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1)
fi
command -v node >/dev/null 2>&1 || skip "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || skip "npm is not installed (apt-get install npm)"

# Install iff node_modules was not installed from this very lock file (npm ci wipes node_modules
# and installs exactly what the lock file pins); concurrent runs wait for one installer.
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
installed() { [ "$(cat node_modules/.rekey-lock-sha256 2>/dev/null)" = "$want" ]; }
if ! installed; then
  (flock 9; installed || { npm ci --no-audit --no-fund --loglevel=error >&2 &&
    echo "$want" >node_modules/.rekey-lock-sha256; }) 9>.install.lock ||
    skip "npm ci could not install tink-crypto (registry unreachable?)"
fi

[ $# -eq 0 ] && exit 0
exec node "$@"
