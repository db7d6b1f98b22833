#!/usr/bin/env bash
# `make test`: lint, type check, contract gate, then every suite against one real
# broker and one real mongod (started here unless KAFKA_BOOTSTRAP_SERVERS and
# MONGODB_URI name existing ones). Each service's own suite also runs in a venv
# holding only shared/ and that service, to prove it builds and tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
BIN=$VENV/bin
START=$(date +%s)
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
# Each pytest run's output is kept so the closing line can total every suite.
suite() { "$@" 2>&1 | tee -a "$RESULTS"; }
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "lint (ruff)"
$BIN/ruff check .
$BIN/ruff format --check . >/dev/null || { $BIN/ruff format --check . ; exit 1; }

step "type check (mypy)"
$BIN/mypy

step "contracts: checked-in JSON Schemas and the AsyncAPI document are up to date"
$BIN/python -m crm_contracts.schemas
$BIN/python scripts/gen_asyncapi.py --check

step "contracts: releasable against the last release (tag v*/release-*, else main)"
$BIN/python -m crm_contracts.release_gate

step "OS packages the tests need (promtool, Chromium)"
bash scripts/os_packages.sh

export CRM_TEST_INFRA_HOME="$PWD/.local/test"
export CRM_TEST_KAFKA_PORT=${CRM_TEST_KAFKA_PORT:-19192}
export CRM_TEST_MONGO_PORT=${CRM_TEST_MONGO_PORT:-27217}
infra=(--home "$CRM_TEST_INFRA_HOME" --kafka-port "$CRM_TEST_KAFKA_PORT" --mongo-port "$CRM_TEST_MONGO_PORT")
started_here=0
isolated_env=()
if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && -n "${MONGODB_URI:-}" ]]; then
  step "using the broker and database named by KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI"
elif $BIN/python -c 'import sys; from crm_platform.devinfra.resolve import docker_available as d; sys.exit(0 if d() else 1)' 2>/dev/null; then
  step "Docker answers: each suite starts its own testcontainers broker and mongo"
else
  step "starting the embedded broker and mongod for this run (fresh data in .local/test)"
  $BIN/crm-infra stop "${infra[@]}" >/dev/null 2>&1 || true
  rm -rf "$CRM_TEST_INFRA_HOME"
  $BIN/crm-infra start "${infra[@]}"
  started_here=1
  # The root suite finds this embedded pair itself (and may restart the broker
  # for the outage tests); the isolated service venvs, which do not carry the
  # embedded binaries, are pointed at it explicitly.
  # They also get the empty-fetch pause the embedded broker needs (see pace_empty_fetches).
  isolated_env=($(eval "$($BIN/crm-infra env "${infra[@]}")"
                  echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS" "MONGODB_URI=$MONGODB_URI")
                "CRM_CONSUMER_IDLE_BACKOFF_MS=$($BIN/python -c \
                  'from crm_platform.testing import EMBEDDED_IDLE_BACKOFF_MS as ms; print(ms)')")
fi
cleanup() {
  rm -f "$RESULTS"
  if [[ $started_here == 1 ]]; then
    $BIN/crm-infra stop "${infra[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "platform, contracts, reliability and end-to-end suites"
suite $BIN/pytest -q -p no:cacheprovider tests shared

for svc in leads sales service-desk analytics gateway console; do
  step "services/$svc on its own (only shared/ and $svc installed)"
  suite env "${isolated_env[@]}" bash scripts/test_service_isolated.sh "$svc"
done

# grep exits 1 when a word never appears (no suite failed): count, never abort.
count() { { grep -oE "[0-9]+ $1" "$RESULTS" || true; } | awk '{s+=$1} END {print s+0}'; }
passed=$(count passed)
failed=$(count failed)
skipped=$(count skipped)
step "all green in $(( $(date +%s) - START ))s"
echo "tests: $passed passed, $failed failed, $skipped skipped"
