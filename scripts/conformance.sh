#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite (all four workflows) against both assemblies.
# Reports go to reports/conformance/<assembly>/ (git-ignored). Fails on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${HANZO_INFRA_STATE:-$HOME/.cache/hanzo-registry/infra/run}
set -a; source "$state/tools.env"; set +a
assemblies=${*:-embedded distributed}
run_suite() {
  local assembly=$1 dir=reports/conformance/$1
  rm -rf "$dir"; mkdir -p "$dir"
  OCI_ROOT_URL=http://$REGISTRY_ADDR OCI_NAMESPACE=conformance/repo-a OCI_CROSSMOUNT_NAMESPACE=conformance/repo-b \
  OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1 \
  OCI_HIDE_SKIPPED_WORKFLOWS=0 OCI_DEBUG=0 OCI_REPORT_DIR=$dir \
    "$HANZO_TOOL_CONFORMANCE_TEST" >"$dir/output.txt" 2>&1 || { tail -60 "$dir/output.txt"; return 1; }
  grep -E "Ran [0-9]+ of|Passed|FAIL" "$dir/output.txt" | tail -3
}
export -f run_suite
for a in $assemblies; do
  echo "== OCI conformance: $a"
  bash scripts/with_registry.sh "$a" bash -c "run_suite $a"
done
