#!/usr/bin/env bash
# The whole test suite, the README's test command (.ci/run calls it): installs
# what a fresh Debian 12 machine lacks, runs `cargo test --workspace` (the
# microVM suite included), then builds the Python wheel, installs it in a
# clean virtualenv and runs its pytest suite against it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

echo "== host packages"
bash tests/host-packages.sh

# Guest artefacts are cached outside the checkout, keyed by their inputs.
export CELLBOX_CACHE_DIR="${CELLBOX_CACHE_DIR:-$HOME/.cache/cellbox}"

echo "== cargo test --workspace"
cargo test --workspace

echo "== the Python package: its wheel in a clean virtualenv, then pytest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# maturin, kept with the cache's other tools.
tools="$CELLBOX_CACHE_DIR/tools/python"
if [ ! -x "$tools/bin/maturin" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q "maturin==1.16.0"
fi
PATH="$tools/bin:$PATH" bash runtime/python/build-wheel.sh "$work/wheels"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/wheels/cellbox-*.whl "pytest==9.2.0" "pytest-asyncio==1.5.0"
# As root the heavy backend must run here: a skipped heavy test is a failure.
require_heavy=0
[ "$(id -u)" = 0 ] && require_heavy=1
# From outside the checkout, so that `import cellbox` is the installed wheel.
(cd "$work" && CELLBOX_REQUIRE_HEAVY=$require_heavy "$work/venv/bin/python" -m pytest -v \
    -p no:cacheprovider "$repo/runtime/python/tests")
