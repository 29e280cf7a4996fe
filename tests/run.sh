#!/usr/bin/env bash
# The whole test suite, the README's test command (.ci/run calls it): installs
# what a fresh Debian 12 machine lacks, runs `cargo test --workspace` (the
# microVM suite included), then builds the Python wheel, installs it in a
# clean virtualenv and runs its pytest suite against it: as root, then (when
# run as root) as an ordinary user set up with `cellbox setup --user`.
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
# Debian's Python where there is one: another user can run it (see below).
python=/usr/bin/python3
[ -x "$python" ] || python=python3
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/wheels/cellbox-*.whl "pytest==9.2.0" "pytest-asyncio==1.5.0"
# The tests with their pytest settings, where any user can read them.
cp -r runtime/python/tests runtime/python/pyproject.toml "$work/"
# As root the heavy backend must run here: a skipped heavy test is a failure.
require_heavy=0
[ "$(id -u)" = 0 ] && require_heavy=1
# From outside the checkout, so that `import cellbox` is the installed wheel.
(cd "$work" && CELLBOX_REQUIRE_HEAVY=$require_heavy "$work/venv/bin/python" -m pytest -v \
    -p no:cacheprovider "$work/tests")

if [ "$(id -u)" = 0 ]; then
    echo "== the Python package without root: as the user cellbox-rootless, after \`cellbox setup\`"
    user=cellbox-rootless
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    cargo run -q -p cellbox -- setup --user "$user"
    chmod -R a+rX "$work"
    # Its heavy sandboxes are the namespace sandbox without root.
    (cd / && runuser -u "$user" -- env -i HOME="/home/$user" PATH=/usr/bin:/bin LANG=C.UTF-8 \
        CELLBOX_REQUIRE_HEAVY=1 "$work/venv/bin/python" -m pytest -v -p no:cacheprovider "$work/tests")
fi
