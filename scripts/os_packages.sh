#!/usr/bin/env bash
# What `make test` needs from the OS, installed with Debian's package manager when missing and
# we run as root (a fresh machine or a CI clone); without them make test fails and says how to
# get them (it never skips):
# - promtool (the `prometheus` package) runs the alert/recording rule unit tests;
# - Chromium drives the console's browser tests (Playwright's own download is not reachable
#   everywhere; crm_platform.devinfra.browser resolves the browser).
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [[ -z "${CRM_CHROMIUM_PATH:-}" ]] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
(( ${#missing[@]} )) || exit 0
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing ${missing[*]} with apt-get for make test (takes a minute or two, once)"
  apt-get update -qq
  for package in "${missing[@]}"; do
    flags=(-y -qq)
    # prometheus' recommends (exporters, a web UI) are not needed; Chromium's (fonts) are.
    [[ $package == prometheus ]] && flags+=(--no-install-recommends)
    DEBIAN_FRONTEND=noninteractive apt-get install "${flags[@]}" "$package" >/dev/null
  done
else
  echo "!! missing ${missing[*]} and not root with apt-get: the tests that need them will FAIL"
  echo "!! install them (Debian: sudo apt-get install prometheus chromium), or set CRM_CHROMIUM_PATH"
fi
