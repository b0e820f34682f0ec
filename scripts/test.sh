#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need on a
# fresh Debian machine, then runs the format, lint, doc and test checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use. A missing tool is a failure, never a skip, so
# install them here rather than let a test find them absent.
#   docker-registry: the real CNCF distribution registry the remotes tests run.
#   skopeo, umoci: the interop tests build, copy and unpack images with them.
#   jq: the end-to-end test runs containerd's fetch-object | jq | xargs pipeline.
#   openssl: a TLS test makes an X.509 version 1 certificate with it.
#   e2fsprogs: snapshot tests make a small ext4 of their own (its link limit).
APT_PACKAGES=(docker-registry skopeo umoci jq openssl e2fsprogs)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Keep the packages' own services (a registry on :5000) from starting:
    # the tests start their own, on loopback, and stop them.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        added_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi
fi

# Reuse one target directory outside the clone, so repeated runs are fast.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ocidist-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps
echo "== cargo test"
cargo test --workspace --all-features
# The unit tests inside the dist example (plain `cargo test` only builds it,
# which is what the end-to-end tests above run).
cargo test --example dist
