#!/usr/bin/env bash
# Fetches the embedded ClickHouse engine (libchdb.so) from the npm registry
# package @chdb/lib-linux-x64-gnu at the version pinned in store/chdb.version.
# `npm pack` verifies the tarball against the registry's integrity hash.
# The library lands in ${WAYBILL_CACHE_DIR:-$HOME/.cache/waybill}/chdb/<version>/,
# the place the `waybill` binary looks by default. Safe to run again: a library
# already in place is kept.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(tr -d '[:space:]' < "$here/store/chdb.version")
cache=${WAYBILL_CACHE_DIR:-${HOME}/.cache/waybill}
dest="$cache/chdb/$version"
if [ -s "$dest/libchdb.so" ]; then
  echo "embedded engine: $dest/libchdb.so (already present)"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch the embedded engine: apt-get install npm" >&2; exit 1; }
mkdir -p "$dest"
work=$(mktemp -d "$cache/chdb/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetching @chdb/lib-linux-x64-gnu@$version (about 150 MB) ..."
(cd "$work" && npm pack --silent "@chdb/lib-linux-x64-gnu@$version" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/libchdb.so
mv "$work/package/libchdb.so" "$dest/libchdb.so.partial"
mv "$dest/libchdb.so.partial" "$dest/libchdb.so"
echo "embedded engine: $dest/libchdb.so"
