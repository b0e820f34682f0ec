#!/usr/bin/env bash
# The main job on a machine without internet: a real registry on loopback, an
# image of two layers built here and pushed to it, then pulled (fetched and
# unpacked into snapshots) into a fresh store with progress, listed, checked and
# mounted as a root filesystem; containerd's fetch-object | ingest pipeline;
# and an interrupted ingest that resumes. On a machine with internet, try:
#   cargo run --release --example dist -- pull docker.io/library/redis:latest
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ocidist-target}"

# The real CNCF distribution registry, and jq for the pipeline.
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    policy=/usr/sbin/policy-rc.d; added_policy=""
    if [ ! -e "$policy" ]; then  # keep the package's own registry service from starting
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; added_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi
fi

cargo build --release --example dist
dist="$CARGO_TARGET_DIR/release/examples/dist"
work=$(mktemp -d)
registry_pid=""
cleanup() {
    if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
    # A step that failed between `rootfs` and `--unmount` leaves the rootfs
    # mounted: taken off first, so removing $work never reaches into it.
    if mountpoint -q "$work/mnt" 2>/dev/null; then umount -l "$work/mnt" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Start the registry on a free loopback port; it is ours, stopped by PID on exit.
for attempt in 1 2 3 4 5; do
    port=$(shuf -i 20000-60999 -n 1)
    cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
EOF
    docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break 2; fi
        kill -0 "$registry_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$registry_pid" 2>/dev/null || true; registry_pid=""
done
[ -n "$registry_pid" ] || { echo "the registry did not start:"; cat "$work/registry.log"; exit 1; }
host="127.0.0.1:$port"
echo "registry: $host (pid $registry_pid)"

# Build a small image by hand into a first store: two layers (the second
# changes a file and deletes one with a whiteout), config, manifest.
export OCIDIST_ROOT="$work/builder"
mkdir -p "$work/rootfs/etc" && echo "hello from layer 1" > "$work/rootfs/etc/motd"
head -c $((4 << 20)) /dev/urandom > "$work/rootfs/etc/random.bin"
tar -C "$work/rootfs" -cf "$work/layer.tar" . && gzip -kn "$work/layer.tar"
mkdir -p "$work/rootfs2/etc" && echo "hello from ocidist (layer 2)" > "$work/rootfs2/etc/motd"
touch "$work/rootfs2/etc/.wh.random.bin"
tar -C "$work/rootfs2" -cf "$work/layer2.tar" . && gzip -kn "$work/layer2.tar"
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
ingest() {  # FILE MEDIA-TYPE -> prints a descriptor as JSON
    local digest size
    digest="sha256:$(sha256sum "$1" | cut -d' ' -f1)"; size=$(stat -c %s "$1")
    "$dist" ingest "build-$digest" --expected-digest "$digest" --expected-size "$size" < "$1"
    printf '{"mediaType":"%s","digest":"%s","size":%s}' "$2" "$digest" "$size"
}
layer=$(ingest "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
layer2=$(ingest "$work/layer2.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
diff_id2="sha256:$(sha256sum "$work/layer2.tar" | cut -d' ' -f1)"
printf '{"architecture":"%s","os":"linux","rootfs":{"type":"layers","diff_ids":["%s","%s"]},"config":{"Cmd":["cat","/etc/motd"]}}' \
    "$arch" "$diff_id" "$diff_id2" > "$work/config.json"
config=$(ingest "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s,%s]}' \
    "$config" "$layer" "$layer2" > "$work/manifest.json"
manifest_digest=$(ingest "$work/manifest.json" application/vnd.oci.image.manifest.v1+json | jq -r .digest)

echo; echo "\$ dist push $host/demo/hello:1 $manifest_digest"
"$dist" push "$host/demo/hello:1" "$manifest_digest"

# A fresh store pulls it: fetch and unpack overlapped, with progress.
export OCIDIST_ROOT="$work/store"
echo; echo "\$ dist pull $host/demo/hello:1"
"$dist" pull "$host/demo/hello:1"
echo; echo "\$ dist images"
"$dist" images
echo; echo "\$ dist images check"
"$dist" images check

# The image's root filesystem: a writable snapshot mounted (as root), or a copy.
if [ "$(id -u)" -eq 0 ]; then
    echo; echo "\$ dist rootfs $host/demo/hello:1 \$work/mnt && cat \$work/mnt/etc/motd && ls \$work/mnt/etc"
    "$dist" rootfs "$host/demo/hello:1" "$work/mnt"
    cat "$work/mnt/etc/motd"; ls "$work/mnt/etc"
    echo "\$ dist rootfs --unmount \$work/mnt"
    "$dist" rootfs --unmount "$work/mnt"
else
    echo; echo "\$ dist rootfs --copy $host/demo/hello:1 \$work/copy && cat \$work/copy/etc/motd"
    "$dist" rootfs --copy "$host/demo/hello:1" "$work/copy"
    cat "$work/copy/etc/motd"; ls "$work/copy/etc"
fi

echo; echo "\$ dist fetch-object $host/demo/hello 1 | sha256sum   # equals the digest above"
"$dist" fetch-object "$host/demo/hello" 1 | sha256sum

# containerd's original pipeline: every layer fetched and ingested in parallel,
# keyed by digest, so concurrent downloads of the same content are harmless.
export OCIDIST_ROOT="$work/pipeline"
echo; echo "\$ dist fetch-object $host/demo/hello 1 | jq -r '.layers[] | \"\\(.digest) \\(.size)\"' | xargs -P10 -n2 sh -c 'dist fetch-object ... \"\$0\" | dist ingest --expected-digest \"\$0\" --expected-size \"\$1\" layer-\$0'"
"$dist" fetch-object "$host/demo/hello" 1 | jq -r '.layers[] | "\(.digest) \(.size)"' |
    xargs -P10 -n2 sh -c '"$0" fetch-object "$1/demo/hello" "$2" | "$0" ingest --expected-digest "$2" --expected-size "$3" "layer-$2"' "$dist" "$host"
"$dist" list

# An interrupted ingest resumes; a wrong digest commits nothing.
blob_digest=$(jq -r .digest <<<"$layer"); blob_size=$(jq -r .size <<<"$layer")
export OCIDIST_ROOT="$work/resume"
echo; echo "\$ head -c 1MiB layer.tar.gz | dist ingest demo-ref ...   # the stream breaks off"
head -c $((1 << 20)) "$work/layer.tar.gz" |
    "$dist" ingest demo-ref --expected-digest "$blob_digest" --expected-size "$blob_size" || true
echo; echo "\$ dist active"
"$dist" active
echo; echo "\$ dist ingest demo-ref ... < layer.tar.gz   # resumes at 1 MiB"
"$dist" ingest demo-ref --expected-digest "$blob_digest" --expected-size "$blob_size" < "$work/layer.tar.gz"
"$dist" list
echo; echo "\$ dist ingest other-ref --expected-digest <wrong> ...   # refused"
wrong="sha256:$(printf 'not it' | sha256sum | cut -d' ' -f1)"
"$dist" ingest other-ref --expected-digest "$wrong" < "$work/layer.tar.gz" || true
