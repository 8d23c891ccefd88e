#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite (all four workflows) against both assemblies, each
# open (auth.mode none) and with token auth on (`<assembly>-auth`: the suite logs in as the bootstrap
# admin through OCI_USERNAME / OCI_PASSWORD). Usage: conformance.sh [embedded|distributed[-auth] ...]
# Reports go to reports/conformance/<run>/ (git-ignored). Fails on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${HANZO_INFRA_STATE:-$HOME/.cache/hanzo-registry/infra/run}
set -a; source "$state/tools.env"; set +a
assemblies=${*:-embedded distributed embedded-auth distributed-auth}
run_suite() {
  local assembly=$1 dir=reports/conformance/$1
  rm -rf "$dir"; mkdir -p "$dir"
  OCI_CONFIGURATION=scripts/conformance.yaml OCI_REGISTRY=$REGISTRY_ADDR OCI_TLS=disabled \
  OCI_REPO1=conformance/repo-a OCI_REPO2=conformance/repo-b OCI_RESULTS_DIR=$dir \
  OCI_USERNAME=${REGISTRY_USERNAME:-${OCI_USERNAME:-}} OCI_PASSWORD=${REGISTRY_PASSWORD:-${OCI_PASSWORD:-}} \
    "${HANZO_CONFORMANCE_BINARY:-$HANZO_TOOL_CONFORMANCE_TEST}" >"$dir/output.txt" 2>&1 || { grep -E ": Fail|level=(WARN|ERROR)" "$dir/output.txt" | head -60; return 1; }
  grep -E "^(OCI Conformance Test|  (Pass|Fail|Skip|Disabled)\.+)" "$dir/output.txt" | head -6
}
export -f run_suite
for a in $assemblies; do
  echo "== OCI conformance: $a"
  bash scripts/with_registry.sh "$a" bash -c "run_suite $a"
done
