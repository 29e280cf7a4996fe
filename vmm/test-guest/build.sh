#!/usr/bin/env bash
# Builds the freestanding test guest into one ELF: build.sh OUT_ELF
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_ELF" >&2
    exit 2
fi
out="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cc="${CC:-gcc}"

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "test-guest/build.sh: C compiler '$cc' not found (install gcc, e.g. apt-get install gcc)" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
# No SSE (-mgeneral-regs-only), no libc, no red zone (no IDT anyway), no
# unwind tables; -fno-tree-loop-distribute-patterns keeps gcc from turning
# the loops in lib.c into calls to themselves.
"$cc" -m64 -O2 -std=gnu11 -Wall -Wextra \
    -ffreestanding -fno-pic -no-pie -fno-stack-protector -fcf-protection=none \
    -mgeneral-regs-only -mno-red-zone \
    -fno-asynchronous-unwind-tables -fno-unwind-tables \
    -fno-tree-loop-distribute-patterns \
    -nostdlib -static \
    -Wl,-T,"$here/guest.ld" -Wl,--build-id=none \
    -o "$out" \
    "$here/start.S" "$here"/*.c
