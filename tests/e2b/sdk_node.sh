#!/bin/sh
# Prints the node_modules folder of E2B's official JavaScript code-interpreter
# SDK, installing it from the npm registry under $CELLBOX_CACHE_DIR on first use
# (built aside and renamed into place). Used by runtime/tests/e2b_sdk.rs.
set -eu
SDK="@e2b/code-interpreter@2.8.0"
dir="${CELLBOX_CACHE_DIR:-$HOME/.cache/cellbox}/e2b-sdk/js-code-interpreter-2.8.0"
if [ ! -d "$dir/node_modules/@e2b/code-interpreter" ]; then
    echo "installing $SDK from npm into $dir (first run only)" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    (cd "$dir.partial" && npm install --silent --no-audit --no-fund "$SDK" >&2)
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
echo "$dir/node_modules"
