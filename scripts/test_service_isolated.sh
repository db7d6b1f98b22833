#!/usr/bin/env bash
# Run one service's tests in a venv that holds only crm-contracts, crm-platform,
# the service itself and the test tools, at the versions pinned in uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
svc=$1
uv=${UV:-.local/tools/bin/uv}
iso=.local/iso/$svc
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
# The service's own pinned dependency closure, workspace members as editable paths.
"$uv" export --frozen --quiet --package "$svc" --no-dev --no-hashes --no-header \
  --no-annotate > "$reqs"
# The test tools at their locked versions (the root dev group).
"$uv" export --frozen --quiet --only-group dev --no-hashes --no-header --no-annotate \
  | grep -E '^(pytest|pytest-asyncio|pytest-timeout|httpx|iniconfig|pluggy|packaging|pygments|anyio|sniffio|h11|httpcore|certifi|idna)==' >> "$reqs"
[[ -x $iso/bin/python ]] || "$uv" venv --quiet --python python3 "$iso"
VIRTUAL_ENV=$iso "$uv" pip install --quiet -r "$reqs"
# Anything in the venv beyond shared/ and this service would be a boundary leak.
others=$(VIRTUAL_ENV=$iso "$uv" pip list --format freeze 2>/dev/null \
  | grep -E '^(leads|sales|service-desk|analytics|gateway|console)==' | grep -v "^$svc==" || true)
[[ -z $others ]] || { echo "isolation broken: $others installed beside $svc"; exit 1; }
cd "services/$svc"
"../../$iso/bin/python" -m pytest -q -p no:cacheprovider
