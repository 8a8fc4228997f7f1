#!/usr/bin/env bash
# Sets everything up and runs Waybill on the embedded store: fetches the
# embedded ClickHouse engine if missing, builds the release binary and starts
# `waybill serve`. Arguments are passed to waybill (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is needed: install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
command -v cc >/dev/null || { echo "a C compiler is needed by some crates: apt-get install gcc" >&2; exit 1; }
scripts/fetch-engine.sh
cargo build --release --locked --bin waybill
exec target/release/waybill "$@" serve
