#!/bin/bash
# Validates the Kubernetes manifests and the Prometheus rules in DIR (default: jobs/):
#   * every *.yaml with a `kind` against the Kubernetes API schemas (npm kubernetes-models, installed
#     on first use into $REKEY_K8S_TOOLS, default build/k8s-tools; needs only the npm registry),
#     plus rekey's contract for its pods (tests/k8s/validate.mjs);
#   * alerts.yaml with `promtool check rules`, and alerts_test.yaml with `promtool test rules`;
#   * the Dockerfile: multi-stage, Debian 12, not root, runtime packages present in the archive.
# Exit 0 iff everything passes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/jobs}
tools=${REKEY_K8S_TOOLS:-$root/build/k8s-tools}

command -v promtool >/dev/null || "$root/scripts/install-deps.sh" prometheus
command -v npm >/dev/null || "$root/scripts/install-deps.sh" nodejs npm
if [ ! -f "$tools/node_modules/kubernetes-models/package.json" ] ||
   ! cmp -s "$root/tests/k8s/package.json" "$tools/package.json"; then
  mkdir -p "$tools"
  cp "$root/tests/k8s/package.json" "$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
# Bare imports resolve from the importing file's directory: run the validator from $tools.
cp "$root/tests/k8s/validate.mjs" "$tools/validate.mjs"

status=0
manifests=()
for f in "$dir"/*.yaml; do
  case "$(basename "$f")" in alerts.yaml | alerts_test.yaml) continue ;; esac
  manifests+=("$f")
done
node "$tools/validate.mjs" "${manifests[@]}" || status=1

if [ -f "$dir/alerts.yaml" ]; then
  promtool check rules "$dir/alerts.yaml" || status=1
  if [ -f "$dir/alerts_test.yaml" ]; then
    (cd "$dir" && promtool test rules alerts_test.yaml) || status=1
  fi
fi

if [ -f "$dir/Dockerfile" ]; then
  df="$dir/Dockerfile"
  froms=$(grep -cE '^FROM ' "$df")
  if [ "$froms" -lt 2 ]; then echo "FAIL: Dockerfile: not multi-stage"; status=1; fi
  if grep -E '^FROM ' "$df" | grep -vqE '^FROM debian:12(-slim)?( |$)'; then
    echo "FAIL: Dockerfile: every stage must be Debian 12"; status=1
  fi
  if ! grep -qE '^USER [1-9]' "$df"; then echo "FAIL: Dockerfile: must not run as root"; status=1; fi
  # The runtime stage's packages must exist in Debian 12 (apt-cache reads the local lists).
  runtime=$(awk '/^FROM .* AS runtime/{r=1} r' "$df" | tr -d '\\' | awk '/install -y/{p=1} p' |
            sed -n '1,/rm -rf/p' | tr ' ' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
            grep -vE '^(install|apt-get|rm|DEBIAN_FRONTEND.*|no-install-recommends|y)$' || true)
  for p in $runtime; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      echo "FAIL: Dockerfile: runtime package $p is not in the Debian archive"; status=1
    fi
  done
  [ $status -eq 0 ] && echo "ok: Dockerfile ($froms stages; runtime: $(echo $runtime))"
fi
exit $status
