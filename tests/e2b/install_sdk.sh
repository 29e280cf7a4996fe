#!/bin/sh
# install_sdk.sh python|node|cli — installs E2B's official code-interpreter SDK
# for that language, or E2B's CLI, under $CELLBOX_CACHE_DIR on first use (from
# PyPI into a virtualenv, or from npm), then prints the Python to run, the
# node_modules folder, or the CLI's command. Built aside and renamed into place: an interrupted install is never
# used. Used by runtime/tests/e2b_sdk.rs and benches/benches/e2b_sdk.rs.
set -eu
case "${1:-}" in
    python) sdk="e2b-code-interpreter==2.11.5 e2b==2.63.0"; name="e2b-code-interpreter-2.11.5-e2b-2.63.0"; result="bin/python" ;;
    node) sdk="@e2b/code-interpreter@2.8.0"; name="js-code-interpreter-2.8.0"; result="node_modules" ;;
    cli) sdk="@e2b/cli@2.19.0"; name="e2b-cli-2.19.0"; result="node_modules/.bin/e2b" ;;
    *) echo "usage: install_sdk.sh python|node|cli" >&2; exit 2 ;;
esac
dir="${CELLBOX_CACHE_DIR:-$HOME/.cache/cellbox}/e2b-sdk/$name"
if [ ! -e "$dir/$result" ]; then
    echo "installing $sdk into $dir (first run only)" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    if [ "$1" = python ]; then
        python3 -m venv "$dir.partial" >&2 || {
            echo "python3 -m venv failed (Debian: apt install python3-venv)" >&2
            exit 1
        }
        "$dir.partial/bin/pip" install --quiet $sdk >&2
    else
        (cd "$dir.partial" && npm install --silent --no-audit --no-fund "$sdk" >&2)
    fi
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
echo "$dir/$result"
