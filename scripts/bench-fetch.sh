#!/usr/bin/env bash
# A quick fetch measurement (not the peers harness): `dist fetch` of a 512 MiB
# single-layer image from the real registry on loopback, three cold stores,
# beside curl of the same blob. Needs docker-registry and curl; builds dist.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ocidist-target}"
cargo build --release --example dist
dist="$CARGO_TARGET_DIR/release/examples/dist"
work=$(mktemp -d /var/tmp/ocidist-bench-fetch.XXXXXX)
port=$(shuf -i 20000-60999 -n 1)
cat > "$work/registry.yml" <<CFG
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
CFG
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
host=127.0.0.1:$port
export OCIDIST_ROOT=$work/builder
head -c $((512<<20)) /dev/urandom > $work/layer
d="sha256:$(sha256sum $work/layer | cut -d' ' -f1)"; s=$(stat -c %s $work/layer)
$dist ingest l --expected-digest $d --expected-size $s < $work/layer
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$d" > $work/config
cd_=$(sha256sum $work/config | cut -d' ' -f1); cs=$(stat -c %s $work/config)
$dist ingest c --expected-digest sha256:$cd_ --expected-size $cs < $work/config
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' $cd_ $cs $d $s > $work/manifest
md=$(sha256sum $work/manifest | cut -d' ' -f1); ms=$(stat -c %s $work/manifest)
$dist ingest m --expected-digest sha256:$md --expected-size $ms < $work/manifest
$dist push $host/bench/big:1 sha256:$md >/dev/null
rm -f $work/layer
# warm the registry's blob into page cache
curl -s -o /dev/null http://$host/v2/bench/big/blobs/$d
for i in 1 2 3; do
  rm -rf $work/store; sync
  /usr/bin/time -f "dist fetch: %e s, max RSS %M KiB" $dist --root $work/store fetch -q $host/bench/big:1
done
for i in 1 2 3; do
  /usr/bin/time -f "curl blob -> /dev/null: %e s" curl -s -o /dev/null http://$host/v2/bench/big/blobs/$d
done
for i in 1 2 3; do
  rm -f $work/curl.out; sync
  /usr/bin/time -f "curl blob -> file + sha256sum: %e s" sh -c "curl -s -o $work/curl.out http://$host/v2/bench/big/blobs/$d && sha256sum $work/curl.out >/dev/null"
done
