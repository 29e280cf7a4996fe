#!/usr/bin/env bash
# Builds the cellbox guest kernel: Linux 6.1 from Debian's linux-source-6.1
# package, configured as `make tinyconfig` plus config.fragment (beside this
# script), everything built in, no modules.
#
#   build.sh OUT_DIR
#
# Output in OUT_DIR:
#   vmlinux  the uncompressed ELF kernel, with the PVH entry note (what a
#            microVM's ELF loader and QEMU's -kernel can start directly)
#   bzImage  the compressed, self-decompressing kernel (any bootloader or VMM)
#   config   the final .config the kernel was built with
#   version  the Debian version of linux-source-6.1 it was built from
# plus .cellbox-guest-kernel, a marker that lets a later run replace OUT_DIR
# and records what it was built from: a run whose source package version,
# config.fragment options and build.sh are unchanged finds OUT_DIR up to date
# and does nothing.
#
# Needs: apt-get (Debian or Ubuntu host), about 3 GiB free beside OUT_DIR (for
# the unpacked source and the objects, removed after a successful build), and
# root only when packages have to be installed: linux-source-6.1 and the build
# dependencies are installed with apt-get when missing. Takes about 10 minutes
# on 2 cores. Environment: JOBS (default: nproc) for make -j.
#
# The source is unpacked and built in OUT_DIR.work; the results are collected
# in OUT_DIR.tmp, which is moved to OUT_DIR only when complete, so an
# interrupted build never leaves a half-built OUT_DIR. A failed build keeps
# OUT_DIR.work (with build.log) for inspection; the next run removes it.
set -Eeuo pipefail

SOURCE_PACKAGE=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
PACKAGES=(
    "$SOURCE_PACKAGE"
    build-essential # gcc, make, binutils, libc headers
    bc bison flex   # timeconst.bc, the Kconfig parser
    libelf-dev      # objtool (x86_64 always builds it)
    libssl-dev      # certificate tools, built whenever their options are on
    cpio xz-utils   # xz-utils for the source tarball and the XZ-compressed bzImage
)
ARCH=x86_64
MIN_FREE_BYTES=$((3 * 1024 * 1024 * 1024))
MARKER=.cellbox-guest-kernel
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/config.fragment"
# How often (seconds) a line is printed while make runs.
PROGRESS_EVERY=30

STEPS=8
step() { echo "[guest-kernel $1/$STEPS] $2"; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }
elapsed() { printf '%dm%02ds' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)); }

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: build.sh OUT_DIR" >&2; exit 2; }
OUT="$(realpath -m -- "$1")"
TMP="$OUT.tmp"
WORK="$OUT.work"
LOG="$WORK/build.log"
START=$SECONDS
MAKE_PID=

# A directory may be replaced only when it is empty or was made by this script.
ours_or_empty() {
    [[ ! -e "$1" ]] || [[ -f "$1/$MARKER" ]] || [[ -d "$1" && -z "$(ls -A -- "$1")" ]]
}

on_error() {
    local rc=$?
    # errtrace makes subshells inherit the trap; report once, from the main shell.
    [[ $BASHPID -eq $$ ]] || return "$rc"
    local where=""
    [[ -e "$WORK" ]] && where="; the partial build is in $WORK"
    echo "guest-kernel: error: the build failed at: $BASH_COMMAND (exit status $rc)$where" >&2
}
trap on_error ERR
# make runs in the background (so progress can be printed); never leave it
# behind. On SIGTERM make passes the signal on to its sub-makes and compilers.
on_exit() {
    if [[ -n "$MAKE_PID" ]] && kill -0 "$MAKE_PID" 2>/dev/null; then
        kill -TERM "$MAKE_PID" 2>/dev/null || true
        wait "$MAKE_PID" 2>/dev/null || true
    fi
}
on_signal() {
    local where=""
    [[ -e "$WORK" ]] && where="; the partial build is in $WORK"
    echo "guest-kernel: error: interrupted$where" >&2
    exit "$1"
}
trap on_exit EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

free_bytes() { df -B1 --output=avail -- "$1" | tail -n 1 | tr -d ' '; }

# ---------------------------------------------------------------------------
step 1 "checking the build host"
[[ $(uname -m) == x86_64 ]] || die "this script builds an x86_64 kernel natively; the host is $(uname -m)"
command -v apt-get >/dev/null || die "apt-get not found; this script needs a Debian or Ubuntu build host"
[[ -r "$FRAGMENT" ]] || die "the config fragment $FRAGMENT is missing"
for d in "$OUT" "$TMP" "$WORK"; do
    ours_or_empty "$d" || die "$d exists and was not made by this script; remove it or choose another OUT_DIR"
done

# ---------------------------------------------------------------------------
step 2 "checking for $SOURCE_PACKAGE and the build dependencies"
missing=()
for p in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] \
        || die "missing packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or run this script as root"
    echo "installing with apt-get: ${missing[*]} (linux-source-6.1 is a 140 MB download)"
    apt-get update -q >/dev/null 2>&1 || die "apt-get update failed; check the network and /etc/apt/sources.list"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
VERSION="$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE")"
[[ -r "$TARBALL" ]] || die "$SOURCE_PACKAGE $VERSION is installed but $TARBALL is missing; reinstall it (apt-get install --reinstall $SOURCE_PACKAGE)"
echo "using $SOURCE_PACKAGE $VERSION, $(gcc --version | sed -n 1p)"
# The fragment's option lines only: editing a comment does not force a rebuild.
options_hash="$(grep -E '^(# )?CONFIG_' "$FRAGMENT" | sha256sum | cut -c1-16)"
BUILT_FROM="$SOURCE_PACKAGE $VERSION, fragment options $options_hash, build.sh $(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)"
if [[ "$(cat -- "$OUT/$MARKER" 2>/dev/null)" == "$BUILT_FROM" ]] \
    && [[ -f "$OUT/vmlinux" && -f "$OUT/bzImage" && -f "$OUT/config" && -f "$OUT/version" ]]; then
    echo "$OUT is up to date ($BUILT_FROM); nothing to do (remove it to force a rebuild)"
    exit 0
fi

# ---------------------------------------------------------------------------
step 3 "unpacking $TARBALL (without other architectures, Documentation and tools/{perf,testing})"
# The nearest existing ancestor of OUT_DIR tells which filesystem the build lands on.
probe="$(dirname -- "$OUT")"
while [[ ! -d "$probe" ]]; do probe="$(dirname -- "$probe")"; done
# Leftovers of an interrupted or failed run are removed first; count their space as free.
if [[ -e "$TMP" || -e "$WORK" ]]; then
    echo "removing the leftovers of an earlier run: $TMP $WORK"
    rm -rf --one-file-system -- "$TMP" "$WORK"
fi
free=$(free_bytes "$probe")
((free >= MIN_FREE_BYTES)) \
    || die "only $((free / 1024 / 1024)) MiB free in the filesystem of $probe; the build needs at least $((MIN_FREE_BYTES / 1024 / 1024)) MiB"
mkdir -p -- "$WORK"
touch -- "$WORK/$MARKER"
: >"$LOG"
# A third of the tarball's 84,000 files are never read by an x86 build, and
# creating and deleting files is most of the unpack and clean-up time. The
# second pass restores every Kconfig file (Kconfig sources some from other
# architectures and Documentation/), so configuring sees the whole tree.
skip=(Documentation tools/perf tools/testing)
for a in alpha arc arm arm64 csky hexagon ia64 loongarch m68k microblaze mips nios2 \
    openrisc parisc powerpc riscv s390 sh sparc um xtensa; do
    skip+=("arch/$a")
done
top="$(basename -- "$TARBALL" .tar.xz)" # the tarball's one top directory
excludes=()
for d in "${skip[@]}"; do excludes+=(--exclude="$top/$d"); done
{ tar -xJf "$TARBALL" -C "$WORK" --anchored "${excludes[@]}" \
    && tar -xJf "$TARBALL" -C "$WORK" --skip-old-files --wildcards '*/Kconfig*'; } \
    || die "could not unpack $TARBALL (disk full?)"
tops=("$WORK"/*/)
if ((${#tops[@]} != 1)) || [[ ! -f "${tops[0]}Makefile" ]]; then
    die "$TARBALL does not hold one kernel source directory"
fi
SRC="${tops[0]%/}"
KERNEL_VERSION="$(make -s --no-print-directory -C "$SRC" kernelversion)"
echo "Linux $KERNEL_VERSION in $SRC"

# Same banner for the same source and fragment: "cellbox@cellbox", "#1", and
# the date of the source package instead of the build date. (An array, not a
# function, so that a backgrounded make is make itself and can be stopped.)
KMAKE=(make -C "$SRC" ARCH="$ARCH"
    KBUILD_BUILD_USER=cellbox KBUILD_BUILD_HOST=cellbox KBUILD_BUILD_VERSION=1
    KBUILD_BUILD_TIMESTAMP="$(date -u -R -r "$TARBALL")")

# ---------------------------------------------------------------------------
step 4 "configuring: tinyconfig + $(basename -- "$FRAGMENT")"
# -m: only merge (merge_config.sh would otherwise run alldefconfig over the
# result, undoing tinyconfig); olddefconfig then resolves the dependencies.
configure() {
    echo "### make tinyconfig"
    "${KMAKE[@]}" tinyconfig || return
    echo "### merge_config.sh -m .config $FRAGMENT"
    (cd "$SRC" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") || return
    echo "### make olddefconfig"
    "${KMAKE[@]}" olddefconfig
}
configure >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "configuring failed (log above; full log: $LOG)"; }

# ---------------------------------------------------------------------------
step 5 "checking that every option of the fragment holds in the final .config"
# Lines of the fragment are "CONFIG_X=value" or "# CONFIG_X is not set"; other
# comments and blank lines are ignored. olddefconfig silently drops an option
# whose dependencies are not met and forces on one that another option
# selects: this is where that is caught.
wanted=0
failed=()
while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%"${line##*[![:space:]]}"}" # trailing blanks
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        name="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        name="${BASH_REMATCH[1]}" value=n
    elif [[ -z "$line" || "$line" == \#* ]]; then
        continue
    else
        die "$FRAGMENT: cannot read this line: $line"
    fi
    wanted=$((wanted + 1))
    got="$(grep -E "^(# )?${name}[= ]" "$SRC/.config" || true)"
    if [[ "$got" == "$name="* ]]; then got="${got#"$name="}"
    elif [[ "$got" == "# $name is not set" || -z "$got" ]]; then got=n
    fi
    if [[ "$got" != "$value" ]]; then
        sym="${name#CONFIG_}"
        where="$(grep -rn --include='Kconfig*' -x "\(menu\)\?config $sym" "$SRC" | sed "s,^$SRC/,,;s,:.*,," | head -n 3 | tr '\n' ' ')"
        # The options in this .config that select (force on) this one.
        by=()
        # shellcheck disable=SC2016 # $1, $2 are awk's
        while read -r selector; do
            grep -q "^CONFIG_$selector=[ym]" "$SRC/.config" && by+=("CONFIG_$selector")
        done < <(grep -rlw --include='Kconfig*' "select $sym" "$SRC" \
            | xargs -r awk -v t="$sym" '$1 == "config" || $1 == "menuconfig" { c = $2 } $1 == "select" && $2 == t { print c }' | sort -u)
        failed+=("$name: wanted $value, got $got${where:+ (defined in ${where% })}${by[*]:+; selected by ${by[*]}}")
    fi
done <"$FRAGMENT"
if ((${#failed[@]})); then
    printf '  %s\n' "${failed[@]}" >&2
    die "${#failed[@]} of $wanted options of the fragment did not stick (above): an option is dropped when one of its 'depends on' is not met, forced on when an enabled option selects it, and reset when its value is outside its range; change $FRAGMENT accordingly (the final config is $SRC/.config)"
fi
echo "all $wanted options hold"

# ---------------------------------------------------------------------------
JOBS="${JOBS:-$(nproc)}"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive number, not '$JOBS'"
step 6 "building vmlinux and bzImage with make -j$JOBS (takes 5-10 minutes on 2 cores; full log: $LOG)"
echo "### make -j$JOBS vmlinux bzImage" >>"$LOG"
"${KMAKE[@]}" -j"$JOBS" vmlinux bzImage >>"$LOG" 2>&1 &
MAKE_PID=$!
last=$SECONDS
while kill -0 "$MAKE_PID" 2>/dev/null; do
    sleep 2
    if ((SECONDS - last >= PROGRESS_EVERY)); then
        last=$SECONDS
        compiled=$(grep -c -E '^  (CC|AS) ' "$LOG" || true)
        now="$(grep -E '^  [A-Z]+ ' "$LOG" | tail -n 1 | tr -s ' ' | sed 's/^ //' || true)"
        echo "  $(elapsed): $compiled files compiled${now:+; now: $now}"
    fi
done
if ! wait "$MAKE_PID"; then
    MAKE_PID=
    echo "--- last lines of $LOG:" >&2
    sed -n '/^### make -j/,$p' "$LOG" | grep -v -E '^  [A-Z0-9_]+ ' | tail -n 25 >&2
    free=$(free_bytes "$WORK")
    ((free >= 100 * 1024 * 1024)) || die "the kernel build failed: the disk is full ($((free / 1024 / 1024)) MiB free)"
    die "the kernel build failed (last lines above; full log: $LOG)"
fi
MAKE_PID=
echo "  $(elapsed): $(grep -c -E '^  (CC|AS) ' "$LOG" || true) files compiled, done"

# ---------------------------------------------------------------------------
step 7 "checking the kernel images"
VMLINUX="$SRC/vmlinux"
BZIMAGE="$SRC/arch/x86/boot/bzImage"
[[ -f "$VMLINUX" && -f "$BZIMAGE" ]] || die "make succeeded but $VMLINUX or $BZIMAGE is missing"
# ELF magic, class 2 (64-bit), machine 62 (x86-64).
[[ "$(od -An -tx1 -N5 "$VMLINUX" | tr -d ' ')" == 7f454c4602 ]] || die "$VMLINUX is not a 64-bit ELF file"
[[ "$(od -An -tu2 -j18 -N2 "$VMLINUX" | tr -d ' ')" == 62 ]] || die "$VMLINUX is not an x86-64 ELF file"
# The PVH entry point is an ELF note owned by "Xen" (XEN_ELFNOTE_PHYS32_ENTRY).
readelf -n "$VMLINUX" | grep '^  Xen ' >/dev/null || die "$VMLINUX has no PVH entry note; is CONFIG_PVH=y in the fragment?"
# A bzImage carries the "HdrS" boot protocol signature at offset 0x202.
[[ "$(dd if="$BZIMAGE" bs=1 skip=514 count=4 status=none)" == HdrS ]] || die "$BZIMAGE has no x86 boot header"
echo "vmlinux $(du -h --apparent-size "$VMLINUX" | cut -f1), bzImage $(du -h --apparent-size "$BZIMAGE" | cut -f1), PVH note present"

# ---------------------------------------------------------------------------
step 8 "installing into $OUT and removing the build tree"
mkdir -p -- "$TMP"
echo "$BUILT_FROM" >"$TMP/$MARKER"
cp -- "$VMLINUX" "$TMP/vmlinux"
cp -- "$BZIMAGE" "$TMP/bzImage"
cp -- "$SRC/.config" "$TMP/config"
echo "$VERSION" >"$TMP/version"
rm -rf --one-file-system -- "$OUT"
mv -T -- "$TMP" "$OUT"
echo "installed Linux $KERNEL_VERSION from $SOURCE_PACKAGE $VERSION in $OUT ($(elapsed))"
# Deleting ~55,000 files can take a minute or more on slow disks.
rm -rf --one-file-system -- "$WORK"
echo "done in $(elapsed)"
