#!/usr/bin/env bash
# Runs the whole test suite: fetches the embedded ClickHouse engine if
# missing (the store tests run against it), then every crate's unit and
# integration tests, and checks that the benchmarks still build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-engine.sh
cargo check --locked --workspace --benches --quiet
cargo test --locked --workspace "$@"
