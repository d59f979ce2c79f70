# Sourced by the scripts that prove rekey against npm packages (tests/kms/node/run.sh,
# tests/tink/run.sh), from the folder whose package-lock.json pins them:
#   npm_ci_pinned "<what, for the skip message>"
# installs node and npm from Debian when missing (as root), then exactly what the lock file pins
# into ./node_modules -- only if it was not installed from this very lock file already (npm ci
# wipes node_modules), concurrent runs waiting for one installer. Exits 77 (ctest: Skipped, never
# Passed) with the reason on stderr when node, npm or the npm registry is unavailable.

npm_ci_skip() { echo "SKIPPED: $*" >&2; exit 77; }

npm_ci_pinned() {
  local what=$1
  if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # Debian 12: npm (and Node.js 18) from Debian; a NodeSource node already brings npm.
    echo "rekey: installing npm" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
      >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1)
  fi
  command -v node >/dev/null 2>&1 || npm_ci_skip "node is not installed (apt-get install nodejs npm)"
  command -v npm >/dev/null 2>&1 || npm_ci_skip "npm is not installed (apt-get install npm)"

  local want
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  installed() { [ "$(cat node_modules/.rekey-lock-sha256 2>/dev/null)" = "$want" ]; }
  if ! installed; then
    (flock 9; installed || { npm ci --no-audit --no-fund --loglevel=error >&2 &&
      echo "$want" >node_modules/.rekey-lock-sha256; }) 9>.install.lock ||
      npm_ci_skip "npm ci could not install $what (registry unreachable?)"
  fi
}
