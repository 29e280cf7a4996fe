#!/usr/bin/env bash
# Builds the `cellbox` wheel into OUT_DIR (default: target/wheels), with the
# guest layer (a static guest-init and the kernel drivers) inside it, so that
# the heavy backends run where cellbox's sources are not.
#   runtime/python/build-wheel.sh [--release] [OUT_DIR]
# Needs maturin (pip install maturin) and cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
profile=()
if [ "${1:-}" = "--release" ]; then
    profile=(--release)
    shift
fi
out="$(realpath -m "${1:-../../target/wheels}")"
guest=python/cellbox/guest
echo "== the guest layer (guest-init, static)"
rm -rf "$guest"
cargo run -q -p cellbox -- guest-layer "$guest"
echo "== the wheel"
maturin build "${profile[@]}" --compatibility manylinux_2_34 -o "$out"
rm -rf "$guest"
