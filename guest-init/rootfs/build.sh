#!/usr/bin/env bash
# Builds the base tree of the cellbox guest root filesystem: a minimal Debian 12
# "bookworm" with Python 3.11, IPython, numpy, pandas, matplotlib and Pillow,
# E2B's other preinstalled Python packages from PyPI (python-packages.txt),
# Node.js 18 with TypeScript (the JavaScript and TypeScript kernels), R 4.2 with
# IRkernel (the R kernel) and OpenJDK 17 (the Java kernel, on JShell), no init
# system, no kernel, no documentation.
#
#   build.sh OUT_DIR
#
# Output: OUT_DIR/tree/ (the unpacked root filesystem), OUT_DIR/packages.txt
# (name, version and architecture of every Debian package, then "pypi:NAME
# VERSION" for each package from PyPI) and
# OUT_DIR/.cellbox-rootfs (a marker that lets a later run replace OUT_DIR).
# guest-init's files are added later, when the ext4 image is made (make-ext4.sh).
#
# Needs: apt-get, network access to deb.debian.org and PyPI, about 4 GiB free
# beside OUT_DIR (the finished tree is much smaller), and either root or
# subordinate ids (/etc/subuid, /etc/subgid) with newuidmap and newgidmap. As
# root the tree's files belong to their owners; as an ordinary user
# mmdebstrap's unshare mode builds it in a user namespace, so they belong to
# the user's subordinate ids (the guest's root is the first one, its uid N the
# N+1st: as the rootless namespace sandbox maps them), and every step that
# touches the tree runs in such a namespace too (in_tree). mmdebstrap is
# installed with apt-get when missing (root only). Takes a few minutes, mostly
# downloading.
#
# The build goes to OUT_DIR.tmp and is moved to OUT_DIR only when complete, so an
# interrupted build never leaves a half-built tree at OUT_DIR.
set -Eeuo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
MIN_FREE_BYTES=$((4 * 1024 * 1024 * 1024))
MARKER=.cellbox-rootfs
# Installed on top of the minbase variant (Essential:yes, Priority:required and
# apt), with their hard dependencies but without Recommends.
PACKAGES=(
    python3                   # 3.11
    ipython3                  # IPython 8.5
    python3-numpy
    python3-pandas
    python3-matplotlib
    python3-pil
    python3-matplotlib-inline # IPython's inline plot backend
    # python3-fonttools (needed by matplotlib) depends on "python3-scipy |
    # python3-munkres"; apt takes the first, and scipy drags in pythran, gcc,
    # g++, boost and the Python headers (about 700 MB). Naming the 40 kB
    # alternative keeps all of that out.
    python3-munkres
    python3-pip               # installs python-packages.txt (step 4)
    nodejs                    # 18: the JavaScript kernel (cellbox_kernel.js)
    node-typescript           # the TypeScript kernel strips types with it
    r-cran-irkernel           # R 4.2's Jupyter kernel: the R kernel
    python3-jupyter-client    # ... which cellbox_kernel_jupyter.py drives
    openjdk-17-jdk-headless   # JShell: the Java kernel (CellboxKernel.java)
    libgoogle-gson-java       # ... which reads and writes JSON with Gson
    # The tools E2B's templates have, which code written for E2B calls.
    python-is-python3         # `python`
    curl
    ca-certificates           # so that curl, wget and git can check HTTPS
    wget
    git
    procps                    # ps, pgrep, pkill, top, free
    less
)
# What must work in the finished tree: the imports (python-packages.txt's too),
# Agg as the default backend, a plot rendered to PNG and a table rendered to HTML.
IMPORT_CHECK='import io, sys, IPython, numpy, pandas, matplotlib, PIL, matplotlib_inline
import matplotlib.pyplot as plt
assert matplotlib.get_backend().lower() == "agg", "default backend is " + matplotlib.get_backend()
png = io.BytesIO()
plt.plot(numpy.arange(10) ** 2)
plt.savefig(png, format="png")
assert png.getvalue().startswith(b"\x89PNG"), "matplotlib did not write a PNG"
assert "<table" in pandas.DataFrame({"a": [1, 2]})._repr_html_(), "pandas did not render HTML"
import scipy, sklearn, seaborn, plotly, bokeh, openpyxl, xlrd, docx, bs4, requests, nltk, cv2
import skimage, xarray, numba, joblib, imageio, aiohttp, textblob, pytest
print("python", sys.version.split()[0], "| IPython", IPython.__version__, "| numpy", numpy.__version__,
      "| pandas", pandas.__version__, "| matplotlib", matplotlib.__version__, "| Pillow", PIL.__version__)'
# And the JavaScript side: Node.js runs, and TypeScript (Debian's, found by
# name) turns typed code into JavaScript.
NODE_CHECK='const ts = require("typescript");
const js = ts.transpileModule("const x: number = 1", {}).outputText;
if (!js.includes("var x = 1") && !js.includes("const x = 1")) throw new Error("TypeScript gave " + js);
console.log("node", process.version, "| TypeScript", ts.version)'
# R with IRkernel and what it renders with, and the bridge's jupyter_client.
R_CHECK='library(IRkernel); library(repr); stopifnot(capabilities("cairo"))
cat(R.version.string, "| IRkernel", format(packageVersion("IRkernel")), "\n")'

STEPS=7
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
step() { echo "[rootfs $1/$STEPS] $2"; }
die() { echo "rootfs: error: $*" >&2; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: build.sh OUT_DIR" >&2; exit 2; }
OUT="$(realpath -m -- "$1")"
TMP="$OUT.tmp"
OLD="$OUT.old"
START=$SECONDS

# Runs a command as the tree's root: here as root, else in a user namespace
# whose root is the user's first subordinate id (mmdebstrap's own).
if [[ $(id -u) -eq 0 ]]; then
    MODE=root
    in_tree() { "$@"; }
else
    MODE=unshare
    in_tree() { mmdebstrap --unshare-helper "$@"; }
fi
CHROOT="$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot)"
# Runs a command of the tree in it, with a clean environment whose home is in
# its /tmp (emptied at the end: nothing a check writes there stays).
in_chroot() { in_tree "$CHROOT" "$T" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp/build-home "$@"; }
# Writes standard input to FILE in the tree (appends with -a).
write_in_tree() {
    local append=""
    if [[ "$1" == -a ]]; then append=1; shift; fi
    in_tree sh -c 'if [ -n "$2" ]; then cat >>"$1"; else cat >"$1"; fi' sh "$1" "$append"
}

# Removes a directory this script made, refusing when something is still mounted
# below it (mmdebstrap mounts /proc, /sys and /dev in the chroot while it runs,
# and rm -rf must never walk into the host's /sys or /dev). A user's tree is
# emptied as its root first.
remove_build_dir() {
    local dir="$1"
    [[ -e "$dir" ]] || return 0
    if findmnt -rn -o TARGET | grep -qF -- "$dir/"; then
        die "something is still mounted below $dir; unmount it (findmnt | grep '$dir') and run again"
    fi
    if [[ $MODE == unshare && -d "$dir/tree" ]]; then
        in_tree find "$dir/tree" -xdev -mindepth 1 -delete
    fi
    rm -rf --one-file-system -- "$dir"
}

# A directory may be replaced only when it is empty or was made by this script.
ours_or_empty() {
    [[ ! -e "$1" ]] || [[ -f "$1/$MARKER" ]] || [[ -d "$1" && -z "$(ls -A -- "$1")" ]]
}

on_error() {
    local rc=$?
    # errtrace makes subshells inherit the trap; report once, from the main shell.
    [[ $BASHPID -eq $$ ]] || return "$rc"
    local where=""
    [[ -e "$TMP" ]] && where="; the partial build is in $TMP"
    echo "rootfs: error: the build failed at: $BASH_COMMAND (exit status $rc)$where" >&2
}
trap on_error ERR

step 1 "checking the build host"
if [[ $MODE == unshare ]]; then
    me="$(id -un)"
    for ids in /etc/subuid /etc/subgid; do
        grep -qE "^($me|$(id -u)):" "$ids" 2>/dev/null \
            || die "$me has no subordinate ids in $ids, which an ordinary user's build needs (the tree's files belong to many users); as root run: cellbox setup --user $me"
    done
    for tool in newuidmap newgidmap; do
        command -v "$tool" >/dev/null || die "$tool not found; as root run: apt-get install uidmap"
    done
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found; as root run: apt-get install mmdebstrap"
fi
command -v apt-get >/dev/null || die "apt-get not found; this script needs a Debian or Ubuntu build host"
for d in "$OUT" "$TMP" "$OLD"; do
    ours_or_empty "$d" || die "$d exists and was not made by this script; remove it or choose another OUT_DIR"
done
# The nearest existing ancestor of OUT_DIR tells which filesystem the build lands on.
probe="$(dirname -- "$OUT")"
while [[ ! -d "$probe" ]]; do probe="$(dirname -- "$probe")"; done
free=$(df -B1 --output=avail -- "$probe" | tail -n 1 | tr -d ' ')
# A stale OUT_DIR.tmp from an interrupted run is removed below; count its space as free.
if ((free < MIN_FREE_BYTES)) && [[ ! -e "$TMP" ]]; then
    die "only $((free / 1024 / 1024)) MiB free in the filesystem of $probe; the build needs at least $((MIN_FREE_BYTES / 1024 / 1024)) MiB"
fi
remove_build_dir "$TMP"
remove_build_dir "$OLD"
free=$(df -B1 --output=avail -- "$probe" | tail -n 1 | tr -d ' ')
((free >= MIN_FREE_BYTES)) \
    || die "only $((free / 1024 / 1024)) MiB free in the filesystem of $probe; the build needs at least $((MIN_FREE_BYTES / 1024 / 1024)) MiB"

step 2 "checking for mmdebstrap"
if ! command -v mmdebstrap >/dev/null; then
    echo "installing mmdebstrap with apt-get"
    apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null \
        || die "apt-get install mmdebstrap failed"
fi
echo "using $(mmdebstrap --version)"
MERGED_USR_HOOK=/usr/share/mmdebstrap/hooks/merged-usr
[[ -d "$MERGED_USR_HOOK" ]] || die "$MERGED_USR_HOOK is missing; mmdebstrap 1.0 or newer is needed"

mkdir -p -- "$TMP"
touch -- "$TMP/$MARKER"

step 3 "installing Debian $SUITE with ${PACKAGES[*]} (downloads about 100 MB; takes a few minutes)"
# The dpkg options are written to /etc/dpkg/dpkg.cfg.d/99mmdebstrap in the tree,
# so they also hold for packages installed into it later. C.UTF-8 is built into
# glibc, so no locale data is kept apart from locale.alias. Copyright files are
# kept: they are small and some licences ask for them to travel with the binaries.
# /usr/share/unicode (37 MB) comes with unicode-data, a dependency of
# python3-fonttools that nothing here reads. (The Python test suites cannot be
# excluded this way: py3compile fails on missing files; step 4 removes them.)
mmopts=(
    --mode="$MODE" --format=directory --variant=minbase --architectures=amd64
    --include="$(IFS=,; echo "${PACKAGES[*]}")"
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/bug/*'
    --dpkgopt='path-exclude=/usr/share/unicode/*'
    --aptopt='Acquire::Languages "none"'
    # init-system-helpers (Priority: required) depends on "usrmerge |
    # usr-is-merged", and usrmerge, a conversion tool in Perl, drags in Perl
    # (about 55 MB). This hook of mmdebstrap's creates the /bin, /sbin, /lib*
    # -> usr/... symlinks up front and installs usr-is-merged instead.
    --hook-dir="$MERGED_USR_HOOK"
    # OpenJDK's postinst links its man pages with update-alternatives, which
    # fails when their folder is missing (man pages are excluded above).
    --setup-hook='mkdir -p "$1/usr/share/man/man1"'
)
if [[ -n "${ROOTFS_VERBOSE:-}" ]]; then mmopts+=(--verbose); fi
mmdebstrap "${mmopts[@]}" "$SUITE" "$TMP/tree" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" \
    || die "mmdebstrap failed (see its messages above; run with ROOTFS_VERBOSE=1 for apt and dpkg output); the partial build is in $TMP"
echo "mmdebstrap finished after $((SECONDS - START)) s"

T="$TMP/tree"
step 4 "installing E2B's Python packages from PyPI (python-packages.txt; downloads about 250 MB)"
# With the tree's own Python and pip, in a chroot that still has the build
# host's resolver (step 5 removes it), into /usr/local; wheels only, nothing
# compiled. numpy, pandas and matplotlib come from there too (E2B's versions);
# build.sh checks below that the tree imports the pinned ones.
core_versions() {
    in_chroot /usr/bin/python3 -B -c 'import numpy, pandas, matplotlib
print(numpy.__version__, pandas.__version__, matplotlib.__version__)'
}
pinned() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$HERE/python-packages.txt"; }
wanted_core="$(pinned numpy) $(pinned pandas) $(pinned matplotlib)"
write_in_tree "$T/tmp/python-packages.txt" <"$HERE/python-packages.txt"
# pip trusts what the build host trusts (a proxy's CA, say) and goes through its proxy.
pip_env=(PATH=/usr/bin:/bin HOME=/tmp/pip-home PIP_NO_CACHE_DIR=1)
host_ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
if [[ -f "$host_ca" ]]; then
    write_in_tree "$T/tmp/build-host-ca.crt" <"$host_ca"
    pip_env+=(PIP_CERT=/tmp/build-host-ca.crt)
fi
for var in HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy; do
    if [[ -n "${!var:-}" ]]; then pip_env+=("$var=${!var}"); fi
done
in_tree "$CHROOT" "$T" /usr/bin/env -i "${pip_env[@]}" \
    /usr/bin/python3 -m pip install --quiet --only-binary=:all: --break-system-packages \
    --no-warn-script-location --root-user-action=ignore --progress-bar=off \
    --requirement /tmp/python-packages.txt \
    || die "pip could not install python-packages.txt into the tree (see its messages above)"
in_tree rm -rf -- "$T/tmp/python-packages.txt" "$T/tmp/pip-home" "$T/tmp/build-host-ca.crt"
[[ "$(core_versions)" == "$wanted_core" ]] \
    || die "the tree imports numpy, pandas and matplotlib $(core_versions), not $wanted_core as python-packages.txt pins them"
echo "installed $(in_chroot /usr/bin/python3 -m pip list --path /usr/local/lib/python3.11/dist-packages 2>/dev/null | tail -n +3 | wc -l) packages into /usr/local ($(du -sh "$T/usr/local" | cut -f1))"

step 5 "configuring the tree"
# mmdebstrap unmounts what it mounted in the chroot; make sure before deleting anything.
if findmnt -rn -o TARGET | grep -qF -- "$T/"; then
    die "mmdebstrap left filesystems mounted below $T; unmount them (findmnt | grep '$T') and run again"
fi
# mmdebstrap copies the build host's name and resolver into the tree; the guest
# has its own name and no network.
echo cellbox | write_in_tree "$T/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcellbox\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' | write_in_tree "$T/etc/hosts"
write_in_tree "$T/etc/resolv.conf" </dev/null
# pip installs where cells and commands ask, as in E2B's sandboxes: into
# /usr/local as root, ~/.local as user (Debian marks its Python as managed by
# apt only, PEP 668; Debian's own packages stay under /usr/lib).
in_tree rm -f -- "$T"/usr/lib/python3*/EXTERNALLY-MANAGED
# No display in the guest: plots render with Agg and come back as PNG.
# Debian's matplotlib reads /etc/matplotlibrc as its system-wide rc file.
printf '# cellbox: no display in the guest; render with Agg\nbackend: Agg\n' | write_in_tree "$T/etc/matplotlibrc"
# The account cells and commands run as (E2B's: "user", uid and gid 1000,
# home /home/user), and the place for guest-init's files.
echo 'user:x:1000:' | write_in_tree -a "$T/etc/group"
echo 'user:x:1000:1000::/home/user:/bin/bash' | write_in_tree -a "$T/etc/passwd"
if [[ -f "$T/etc/shadow" ]]; then echo 'user:*:20000:0:99999:7:::' | write_in_tree -a "$T/etc/shadow"; fi
in_tree mkdir -p "$T/home/user" "$T/usr/lib/cellbox"
in_tree chmod 0755 "$T/home/user" "$T/usr/lib/cellbox"
in_tree chown 1000:1000 "$T/home/user"
# mmdebstrap already removed apt's lists and downloaded packages; these are the rest.
in_tree rm -rf "$T"/var/lib/apt/lists/* "$T"/var/cache/apt/*.bin "$T"/var/cache/apt/archives/*.deb \
    "$T"/var/cache/debconf/*-old "$T"/var/lib/dpkg/*-old "$T"/var/log/apt/*
# The test suites of the Python packages (pandas, sympy, numpy, matplotlib, ...:
# about 90 MB with their .pyc files) are never imported by user code; pd.test()
# and np.test() are the only things that lose them. dpkg still lists the files,
# which does not matter for an image that is rebuilt rather than upgraded.
in_tree find "$T/usr/lib/python3/dist-packages" "$T/usr/local/lib/python3.11/dist-packages" \
    -xdev -type d -name tests -prune -exec rm -rf {} +
if [[ -n "$(in_tree find "$T/var/lib/apt/lists" "$T/var/cache/apt/archives" -type f ! -name lock -print -quit)" ]]; then
    die "apt's package lists or downloaded packages are still in the tree"
fi

step 6 "checking that Python, Node.js, R, Java and their libraries work in the tree"
# Runs in a plain chroot without /proc, /sys or /dev mounted; -B and a
# throwaway HOME under /tmp keep the tree unchanged, except for matplotlib's
# font cache, kept in MPLCONFIGDIR: the guest's kernels point there, which
# saves every new session the font scan (about 0.3 s).
in_tree mkdir -p "$T/tmp/cellbox-check" "$T/var/cache/cellbox/matplotlib"
versions="$(in_tree "$CHROOT" "$T" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp/cellbox-check \
    MPLCONFIGDIR=/var/cache/cellbox/matplotlib /usr/bin/python3 -B -c "$IMPORT_CHECK" 2>&1)" \
    || die "python3 in the new tree cannot do what cellbox needs: $versions"
node_versions="$(in_tree "$CHROOT" "$T" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp/cellbox-check \
    /usr/bin/node -e "$NODE_CHECK" 2>&1)" \
    || die "node in the new tree cannot do what cellbox needs: $node_versions"
r_versions="$(in_tree "$CHROOT" "$T" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp/cellbox-check \
    /usr/bin/Rscript -e "$R_CHECK" 2>&1)" \
    && in_chroot /usr/bin/python3 -B -c 'import jupyter_client' \
    && [[ -f "$T/usr/share/jupyter/kernels/ir/kernel.json" ]] \
    || die "R in the new tree cannot do what cellbox needs: $r_versions"
# (Without /proc the loader cannot resolve java's $ORIGIN to find libjli.so;
# the guest has /proc.)
JDK=/usr/lib/jvm/java-17-openjdk-amd64
java_versions="$(in_tree "$CHROOT" "$T" /usr/bin/env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH=$JDK/lib \
    /usr/bin/java -XX:+UseSerialGC -version 2>&1)" \
    && [[ -f "$T/usr/share/java/gson.jar" ]] \
    || die "Java in the new tree cannot do what cellbox needs: $java_versions"
in_tree rm -rf "$T/tmp/cellbox-check"
# The kernels run as "user" and matplotlib wants its folder writable.
in_tree chown -R 1000:1000 "$T/var/cache/cellbox/matplotlib"
echo "$versions"
echo "$node_versions"
echo "$r_versions"
echo "$java_versions" | head -n 1
for p in systemd systemd-sysv sysvinit-core runit openrc usrmerge; do
    # shellcheck disable=SC2016 # dpkg-query expands these itself
    if in_chroot dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        die "$p was installed into the tree; it must not be (an init system, or usrmerge and Perl)"
    fi
done
if compgen -G "$T/boot/vmlinu*" >/dev/null || ls "$T"/lib/modules/* >/dev/null 2>&1; then
    die "a kernel was installed into the tree; it must not be"
fi

step 7 "moving the tree into $OUT"
# shellcheck disable=SC2016 # dpkg-query expands these itself
in_chroot dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort >"$TMP/packages.txt"
# ... and the ones from PyPI, as "pypi:NAME VERSION".
in_chroot /usr/bin/python3 -m pip list --path /usr/local/lib/python3.11/dist-packages --format=freeze 2>/dev/null \
    | sed 's/^/pypi:/; s/==/ /' | sort >>"$TMP/packages.txt"
# Empty mount points, made last because programs run in the chroot above create
# files in them (Python's imports leave a plain file at /dev/null when /dev is
# empty). The guest mounts proc, sysfs, devtmpfs and tmpfs over them, or the
# namespace sandbox binds its own.
for d in proc sys dev run tmp; do
    in_tree mkdir -p "$T/$d"
    in_tree find "$T/$d" -xdev -mindepth 1 -delete
done
in_tree chmod 0555 "$T/proc" "$T/sys"
in_tree chmod 0755 "$T/dev" "$T/run"
in_tree chmod 1777 "$T/tmp"
if [[ -e "$OUT" ]]; then
    mv -- "$OUT" "$OLD"
fi
mv -- "$TMP" "$OUT"
remove_build_dir "$OLD"
trap - ERR
echo "rootfs ready: $OUT/tree ($(in_tree du -sh --one-file-system "$OUT/tree" | cut -f1), $(wc -l <"$OUT/packages.txt") packages) in $((SECONDS - START)) s"
