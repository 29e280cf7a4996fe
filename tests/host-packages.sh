#!/usr/bin/env bash
# Installs the Debian packages that the test suite needs and a fresh
# Debian 12 machine lacks (as root; as another user it says what to install).
# The WebAssembly interpreter is linked with Debian's clang/lld and wasi-libc.
# The namespace sandbox's root file system is built with mmdebstrap; its ext4
# image with e2fsprogs; sandboxes that ask for network get it from slirp4netns
# with nftables rules, microVMs from passt (the network tests add addresses
# with iproute2's ip). Sandboxes of an ordinary user map their ids with uidmap's
# newuidmap and newgidmap. The guest kernel from linux-source-6.1 with the usual
# kernel build tools. The SDK tests and the Python package's tests make
# virtualenvs; a user builds the WebAssembly interpreter with Debian's pip.
# libnss-myhostname resolves names under localhost (8000-<id>.localhost, where
# `cellbox serve` reaches servers in sandboxes) without systemd's resolver.
# The microVM suite runs in the emulated-KVM machine (QEMU,
# busybox and Debian's kernel with its modules; tests/emulated-kvm/) where the
# host's KVM cannot run Linux. (Each build script also installs what it lacks.)
set -euo pipefail
APT_PACKAGES=(
    clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32
    mmdebstrap e2fsprogs slirp4netns nftables iproute2 passt uidmap
    linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils
    python3 python3-venv python3-pip libnss-myhostname
    qemu-system-x86 busybox-static kmod
)
if dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "the tests need Debian packages this machine lacks; as root run:" >&2
    echo "  apt-get install ${APT_PACKAGES[*]}" >&2
    exit 1
fi
echo "installing the Debian packages the tests need"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${APT_PACKAGES[@]}"
