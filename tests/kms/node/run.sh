#!/bin/bash
# Installs the pinned @aws-sdk/client-kms (package-lock.json) into tests/kms/node/node_modules and
# runs fidelity.mjs against tests/kms/aws_kms_server.py. Exit 77 (ctest: Skipped, never Passed)
# when node or npm is missing or the npm registry cannot be reached, with the reason on stderr.
set -uo pipefail
cd "$(dirname "$0")"
. ../../npm_ci.sh
npm_ci_pinned @aws-sdk/client-kms

AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PROFILE= \
  exec node fidelity.mjs
