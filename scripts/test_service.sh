#!/usr/bin/env bash
# `make test-service S=<service>`: everything ONE department needs to release on its own,
# and nothing of the others: lint and type check of shared/ and that service, the
# contracts' freshness and release gate (its events must stay compatible with what is
# released), then its own suite in a venv holding only shared/ and that service (at the
# versions uv.lock pins for that package alone), against one real broker and mongod
# (started here unless KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI name existing ones).
set -euo pipefail
cd "$(dirname "$0")/.."
svc=${1:-}
if [[ -z $svc || ! -f services/$svc/pyproject.toml ]]; then
  echo "usage: make test-service S=<$(ls services | paste -sd '|')>" >&2
  exit 2
fi
BIN=.venv/bin
START=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "lint (ruff): shared/ and services/$svc"
$BIN/ruff check shared "services/$svc"
$BIN/ruff format --check shared "services/$svc" >/dev/null || { $BIN/ruff format --check shared "services/$svc"; exit 1; }

step "type check (mypy): shared/ and services/$svc"
$BIN/mypy shared/contracts/src shared/platform/src "services/$svc/src" "services/$svc/tests"

step "contracts: schemas up to date and releasable against the last release"
$BIN/python -m crm_contracts.schemas
$BIN/python -m crm_contracts.release_gate

infra=(--home "$PWD/.local/test-$svc" --kafka-port "${CRM_TEST_KAFKA_PORT:-19192}"
       --mongo-port "${CRM_TEST_MONGO_PORT:-27217}")
env_for_suite=()
started_here=0
if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && -n "${MONGODB_URI:-}" ]]; then
  step "using the broker and database named by KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI"
else
  step "starting the embedded broker and mongod for this run"
  $BIN/crm-infra stop "${infra[@]}" >/dev/null 2>&1 || true
  rm -rf "$PWD/.local/test-$svc"
  $BIN/crm-infra start "${infra[@]}"
  started_here=1
  env_for_suite=($(eval "$($BIN/crm-infra env "${infra[@]}")"
                   echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS" "MONGODB_URI=$MONGODB_URI")
                 "CRM_CONSUMER_IDLE_BACKOFF_MS=$($BIN/python -c \
                   'from crm_platform.testing import EMBEDDED_IDLE_BACKOFF_MS as ms; print(ms)')")
fi
cleanup() {
  if [[ $started_here == 1 ]]; then
    $BIN/crm-infra stop "${infra[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "services/$svc on its own (only shared/ and $svc installed)"
env "${env_for_suite[@]}" bash scripts/test_service_isolated.sh "$svc"
step "services/$svc: green in $(( $(date +%s) - START ))s"
