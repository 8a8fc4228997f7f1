#!/usr/bin/env bash
# Runs the whole test suite: fetches the embedded ClickHouse engine if
# missing (the store tests run against it), installs Prometheus,
# Alertmanager and headless Chromium (as root) and
# the OpenTelemetry Python SDK the OTLP tests send with (a venv in
# target/python), then runs every
# crate's unit and integration tests and checks that the benchmarks build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-engine.sh
# A real Prometheus server scrapes /metrics, a real Alertmanager receives
# alerts, and headless Chromium loads every page in the tests (Debian
# packages prometheus, prometheus-alertmanager, chromium).
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null || missing+=(chromium fonts-liberation)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} (Debian packages) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "the tests need: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
if [ ! -x target/python/bin/python ] || ! cmp -s tests/python/requirements.txt target/python/requirements.txt; then
  echo "installing the OpenTelemetry Python SDK into target/python ..."
  python3 -m venv target/python
  target/python/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt target/python/requirements.txt
fi
# Test data (engine directories, work dirs) from earlier runs.
rm -rf target/tmp
export OTLP_TEST_PYTHON="$PWD/target/python/bin/python"
cargo check --locked --workspace --benches --quiet
cargo test --locked --workspace "$@"
