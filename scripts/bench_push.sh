#!/usr/bin/env bash
# Times pushes to a registry of our own on loopback: `dist push` from its
# store (each binary given) against `skopeo copy` from an OCI layout of the
# same image, interleaved, the target registry's storage emptied before
# each run. The images come from the peers harness registry
# (../shared/peers/start-registry.sh, 127.0.0.1:5000).
#
#   scripts/bench_push.sh [--runs N] [--images big:1g,bulk:8x64m] DIST...
#
# Prints one line per run: wall seconds, the target registry's CPU seconds
# (utime + stime from /proc), and the client's user and system CPU seconds
# and peak RSS (KiB) from GNU time.
set -euo pipefail

runs=3
images=big:1g,bulk:8x64m,debian:bookworm
dists=()
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    *) dists+=("$1"); shift ;;
    esac
done
[ ${#dists[@]} -gt 0 ] || { echo "usage: $0 [--runs N] [--images LIST] DIST..." >&2; exit 2; }
for tool in docker-registry skopeo python3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install ${tool/python3/python3})" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
source_registry=127.0.0.1:5000
curl -sf "http://$source_registry/v2/" >/dev/null ||
    { echo "no registry at $source_registry: run ../shared/peers/start-registry.sh" >&2; exit 1; }

work=$(mktemp -d /var/tmp/bench-push.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null; wait $registry_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

registry_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$registry_pid/stat"; }
timed() {
    local label=$1; shift
    rm -rf "$work/registry"
    local cpu0 t0 t1 cpu1
    cpu0=$(registry_cpu); t0=$(date +%s.%N)
    /usr/bin/time -o "$work/time" -f "%U %S %M" "$@" >/dev/null
    t1=$(date +%s.%N); cpu1=$(registry_cpu)
    read -r user sys rss <"$work/time"
    printf '%-28s wall %.2f s  registry %.2f s  client user %s s sys %s s  peak RSS %s KiB\n' \
        "$label" "$(echo "$t1 - $t0" | bc)" "$(echo "$cpu1 - $cpu0" | bc)" "$user" "$sys" "$rss"
}

store=$work/store
IFS=, read -r -a image_list <<<"$images"
for image in "${image_list[@]}"; do
    "${dists[0]}" --root "$store" -q fetch "$source_registry/$image"
    "${dists[0]}" --root "$store" -q export "$source_registry/$image" "$work/layout-${image%%:*}"
    for run in $(seq "$runs"); do
        for dist in "${dists[@]}"; do
            timed "$image $(basename "$dist")" \
                "$dist" --root "$store" -q push "127.0.0.1:$port/pushed:$run" "$source_registry/$image"
        done
        timed "$image skopeo" skopeo copy -q --dest-tls-verify=false \
            "oci:$work/layout-${image%%:*}" "docker://127.0.0.1:$port/copied:$run"
    done
done
