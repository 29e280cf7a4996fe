#!/bin/sh
# Prints the path of a Python that has E2B's official code-interpreter SDK,
# installing it from PyPI into a virtualenv under $CELLBOX_CACHE_DIR on first
# use (built aside and renamed into place: an interrupted install is never used).
# Used by the SDK test (runtime/tests/e2b_sdk.rs) and benchmark (benches/).
set -eu
SDK="e2b-code-interpreter==2.11.5"
venv="${CELLBOX_CACHE_DIR:-$HOME/.cache/cellbox}/e2b-sdk/e2b-code-interpreter-2.11.5"
if [ ! -x "$venv/bin/python" ]; then
    echo "installing $SDK from PyPI into $venv (first run only)" >&2
    rm -rf "$venv.partial"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv.partial" >&2; then
        echo "python3 -m venv failed (Debian: apt install python3-venv)" >&2
        exit 1
    fi
    "$venv.partial/bin/pip" install --quiet "$SDK" >&2
    rm -rf "$venv"
    mv "$venv.partial" "$venv"
fi
echo "$venv/bin/python"
