#!/usr/bin/env bash
# The main job, end to end on the content store: an interrupted ingest that
# resumes, a wrong digest that commits nothing, and the store listed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ocidist-target}"

cargo build --release --example dist
dist="$CARGO_TARGET_DIR/release/examples/dist"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OCIDIST_ROOT="$work/store"

head -c $((8 << 20)) /dev/urandom > "$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
size=$(stat -c %s "$work/blob")
echo "blob: $digest ($size bytes)"

echo; echo "\$ head -c 3MiB blob | dist ingest demo-ref ...   # the stream breaks off"
head -c $((3 << 20)) "$work/blob" |
    "$dist" ingest demo-ref --expected-digest "$digest" --expected-size "$size" || true

echo; echo "\$ dist active   # the partial ingest is kept"
"$dist" active

echo; echo "\$ dist ingest demo-ref ... < blob   # resumes at 3 MiB"
"$dist" ingest demo-ref --expected-digest "$digest" --expected-size "$size" < "$work/blob"

echo; echo "\$ dist ingest other-ref --expected-digest <wrong> ...   # refused, nothing committed"
wrong="sha256:$(printf 'not it' | sha256sum | cut -d' ' -f1)"
"$dist" ingest other-ref --expected-digest "$wrong" --expected-size "$size" < "$work/blob" || true

echo; echo "\$ dist list"
"$dist" list
echo; echo "\$ dist path $digest"
"$dist" path "$digest"
echo; echo "\$ dist get $digest | sha256sum"
"$dist" get "$digest" | sha256sum
