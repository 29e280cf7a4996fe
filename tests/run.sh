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
    echo "== without root: as the user cellbox-rootless, after \`cellbox setup\`"
    user=cellbox-rootless
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    # (Shown through this shell's stderr, not `tee /dev/stderr`, which
    # reopens a log file that stderr goes to and truncates it.)
    said="$(cargo run -q -p cellbox -- setup --user "$user")"
    printf '%s\n' "$said" >&2
    layer="$(printf '%s\n' "$said" | sed -n "s/.*the guest's layer is shared in //p")"
    [ -n "$layer" ] || { echo "cellbox setup named no shared guest layer" >&2; exit 1; }
    as_user() {
        (cd / && runuser -u "$user" -- env -i HOME="/home/$user" PATH=/usr/bin:/bin LANG=C.UTF-8 \
            CELLBOX_GUEST_LAYER="$layer" "$@")
    }
    # The namespace backend's suite (every heavy behaviour) and the router's
    # (its heavy backend then the rootless sandbox), from where the user can
    # run them. Left out: what only root's launch has, which
    # tests/tests/namespace/rootless.rs checks for the user instead (host
    # ids, the loop disk) or which needs root (the microVM's image of the
    # root-owned tree).
    cargo test -q -p cellbox-tests --test namespace --test router --no-run --message-format=json |
        python3 -c 'import json, shutil, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message["target"]["name"] in ("namespace", "router"):
        shutil.copy(message["executable"], sys.argv[1] + "/" + message["target"]["name"] + "-suite")' "$work"
    chmod -R a+rX "$work"
    as_user "$work/namespace-suite" --skip the_sandbox_root_is_not_the_host_root \
        --skip a_full_disk_is_enospc_inside_and_costs_the_host_nothing_more \
        --skip the_same_guest_becomes_an_ext4_image
    as_user "$work/router-suite"
    # The Python package, its heavy sandboxes the namespace sandbox without root.
    as_user env CELLBOX_REQUIRE_HEAVY=1 "$work/venv/bin/python" -m pytest -v -p no:cacheprovider \
        "$work/tests"
fi
