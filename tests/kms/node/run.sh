#!/bin/bash
# Installs the pinned @aws-sdk/client-kms (package-lock.json) into tests/kms/node/node_modules and
# runs fidelity.mjs against tests/kms/aws_kms_server.py. Exit 77 (ctest: Skipped, never Passed)
# when node or npm is missing or the npm registry cannot be reached, with the reason on stderr.
set -uo pipefail
cd "$(dirname "$0")"
skip() { echo "SKIPPED: $*" >&2; exit 77; }

if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  # Debian 12: npm (and Node.js 18) from Debian; a NodeSource node already brings npm.
  echo "rekey: installing npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
    >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1)
fi
command -v node >/dev/null 2>&1 || skip "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || skip "npm is not installed (apt-get install npm)"

# Install iff node_modules was not installed from this very lock file (npm ci wipes node_modules
# and installs exactly what the lock file pins).
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
installed() { [ "$(cat node_modules/.rekey-lock-sha256 2>/dev/null)" = "$want" ]; }
if ! installed; then
  (flock 9; installed || { npm ci --no-audit --no-fund --loglevel=error >&2 &&
    echo "$want" >node_modules/.rekey-lock-sha256; }) 9>.install.lock ||
    skip "npm ci could not install @aws-sdk/client-kms (registry unreachable?)"
fi

AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PROFILE= \
  exec node fidelity.mjs
