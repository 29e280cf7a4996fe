#!/usr/bin/env bash
# Makes the cellbox guest's ext4 root filesystem image from the base tree that
# build.sh made, with the files of EXTRA_DIR laid over it (guest-init as
# /sbin/init, the Python kernel driver under /usr/lib/cellbox/, ...).
#
#   make-ext4.sh TREE EXTRA_DIR OUT.ext4
#
# Needs mkfs.ext4, debugfs and e2fsck (e2fsprogs >= 1.43, for mkfs.ext4 -d) and
# read access to every file in TREE (in practice: root, for /etc/shadow and
# friends). No loop device, no mount, nothing is written to TREE or EXTRA_DIR.
# Takes a few seconds for a 500 MB tree.
#
# How the overlay is done: mkfs.ext4 -d copies one directory into the new
# filesystem, so the image is made from TREE alone and the EXTRA_DIR entries are
# then written into it with one `debugfs -w` session (mkdir, rm, write, symlink,
# and set_inode_field for mode and owner). EXTRA_DIR holds a handful of files,
# so this is cheaper than a staging copy of the whole tree, and unlike a staging
# tree of hard links (cp -al) it cannot change TREE by accident and works when
# TREE is read-only or on another filesystem. debugfs does not follow symbolic
# links in the directories of a path it creates, and Debian 12's tree has
# /sbin -> usr/sbin, /lib -> usr/lib and so on, so every EXTRA_DIR path is first
# resolved against TREE the way the guest's kernel would resolve it. debugfs
# also exits 0 when a command fails, so its error output is checked, and every
# entry is read back from the finished image and compared.
#
# Size: the content (in 4 KiB blocks), plus headroom of 20% of it but at least
# 64 MiB, plus the journal (16 MiB) and the inode tables. No blocks are reserved
# for root (-m 0). The file is sparse.
set -Eeuo pipefail

STEPS=4
step() { echo "[rootfs-ext4 $1/$STEPS] $2"; }
die() { echo "rootfs-ext4: error: $*" >&2; exit 1; }

[[ $# -eq 3 && -n "$1" && -n "$2" && -n "$3" ]] || {
    echo "usage: make-ext4.sh TREE EXTRA_DIR OUT.ext4" >&2
    exit 2
}
[[ -d "$1" ]] || die "TREE $1 is not a directory"
[[ -d "$2" ]] || die "EXTRA_DIR $2 is not a directory"
TREE="$(realpath -- "$1")"
EXTRA="$(realpath -- "$2")"
OUT="$(realpath -m -- "$3")"
[[ "$TREE" != / ]] || die "TREE must not be the host's root directory"
[[ -d "$(dirname -- "$OUT")" ]] || die "the directory for $OUT does not exist"
START=$SECONDS
BLOCK=4096
JOURNAL_MIB=16
MIN_HEADROOM=$((64 * 1024 * 1024))

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cellbox-ext4.XXXXXX")"
trap 'rm -rf -- "$WORK" "$OUT.tmp"' EXIT

step 1 "checking the tools and the input"
for tool in mkfs.ext4 debugfs e2fsck dumpe2fs; do
    command -v "$tool" >/dev/null || PATH="$PATH:/sbin:/usr/sbin"
    command -v "$tool" >/dev/null \
        || die "$tool not found; install e2fsprogs (Debian/Ubuntu: apt-get install e2fsprogs)"
done
# -d needs e2fsprogs 1.43 or newer; older ones do not list it in their usage text.
usage="$(mkfs.ext4 -h 2>&1 || true)"
grep -q -- '-d ' <<<"$usage" || die "this mkfs.ext4 has no -d option; e2fsprogs 1.43 or newer is needed"
echo "using $(mkfs.ext4 -V 2>&1 | sed -n 1p)"
[[ -x "$TREE/usr/bin/python3" ]] || die "$TREE does not look like a cellbox base tree (no usr/bin/python3); make one with build.sh"
if unreadable="$(find "$TREE" -xdev ! -type l ! -readable -print -quit)" && [[ -n "$unreadable" ]]; then
    die "cannot read $unreadable; run as root"
fi

# Resolves a directory path relative to the image root the way the kernel would,
# following symbolic links found in TREE (absolute targets start again at the
# image root, not the host's). Prints the resolved path without a leading /.
resolve_dir() {
    local -a queue parts
    local resolved="" c candidate target hops=0
    IFS=/ read -r -a queue <<<"$1"
    while ((${#queue[@]})); do
        c="${queue[0]}"
        queue=("${queue[@]:1}")
        case "$c" in
            "" | .) continue ;;
            ..)
                if [[ "$resolved" == */* ]]; then resolved="${resolved%/*}"; else resolved=""; fi
                continue
                ;;
        esac
        candidate="${resolved:+$resolved/}$c"
        if [[ -L "$TREE/$candidate" ]]; then
            ((++hops <= 40)) || die "too many levels of symbolic links below $TREE at /$candidate"
            target="$(readlink -- "$TREE/$candidate")"
            [[ "$target" == /* ]] && resolved=""
            IFS=/ read -r -a parts <<<"$target"
            queue=("${parts[@]}" "${queue[@]}")
        else
            resolved="$candidate"
        fi
    done
    printf '%s' "$resolved"
}

# debugfs splits its commands at white space and treats quotes specially.
SAFE_NAME='^[A-Za-z0-9._+@:,=/-]+$'
check_name() { [[ "$1" =~ $SAFE_NAME ]] || die "unsupported character in the name '$1' (allowed: letters, digits and ._+@:,=-)"; }

step 2 "planning the overlay of $EXTRA"
# One debugfs command file; image paths are absolute, with symlinks resolved.
cmds="$WORK/debugfs.cmds"
checks=()                        # "type|path as the guest sees it|source"
declare -A made_dirs=()
: >"$cmds"
extra_count=0
while IFS= read -r -d '' src; do
    rel="${src#"$EXTRA"/}"
    check_name "$rel"
    parent="$(resolve_dir "$(dirname -- "$rel")")"
    dest="/${parent:+$parent/}$(basename -- "$rel")"
    check_name "$dest"
    mode="$(stat -c '%a' -- "$src")"
    if [[ -L "$src" ]]; then
        target="$(readlink -- "$src")"
        check_name "$target"
        [[ -d "$TREE$dest" && ! -L "$TREE$dest" ]] && die "EXTRA_DIR/$rel is a symbolic link but $dest is a directory in TREE"
        [[ -e "$TREE$dest" || -L "$TREE$dest" ]] && echo "rm $dest" >>"$cmds"
        printf 'symlink %s %s\nsif %s uid 0\nsif %s gid 0\n' "$dest" "$target" "$dest" "$dest" >>"$cmds"
        checks+=("l|/$rel|$target")
    elif [[ -d "$src" ]]; then
        # Directories that TREE already has (possibly through a symlink such as
        # /sbin) keep their mode and owner; new ones get EXTRA_DIR's mode.
        real="$(resolve_dir "$rel")"
        if [[ -d "$TREE/$real" || -n "${made_dirs[/$real]:-}" ]]; then
            continue
        fi
        [[ -e "$TREE/$real" ]] && die "EXTRA_DIR/$rel is a directory but /$real is not one in TREE"
        printf 'mkdir %s\nsif %s mode 0%o\nsif %s uid 0\nsif %s gid 0\n' \
            "$dest" "$dest" $((8#40000 | 8#$mode)) "$dest" "$dest" >>"$cmds"
        made_dirs[$dest]=1
        checks+=("d|/$rel|$mode")
    elif [[ -f "$src" ]]; then
        [[ -d "$TREE$dest" && ! -L "$TREE$dest" ]] && die "EXTRA_DIR/$rel is a file but $dest is a directory in TREE"
        [[ -e "$TREE$dest" || -L "$TREE$dest" ]] && echo "rm $dest" >>"$cmds"
        check_name "$src"
        printf 'write %s %s\nsif %s mode 0%o\nsif %s uid 0\nsif %s gid 0\n' \
            "$src" "$dest" "$dest" $((8#100000 | 8#$mode)) "$dest" "$dest" >>"$cmds"
        checks+=("f|/$rel|$src")
    else
        die "EXTRA_DIR/$rel is neither a file, a directory nor a symbolic link"
    fi
    extra_count=$((extra_count + 1))
done < <(find "$EXTRA" -mindepth 1 -print0)
echo "$extra_count entries to add or replace (directories the tree already has are kept as they are)"

step 3 "making the ext4 image"
# Blocks taken by the content: every file and directory rounded up to whole
# 4 KiB blocks (hard links once); symlinks under 60 bytes live in the inode.
read -r content_blocks entries < <(
    find "$TREE" "$EXTRA" -xdev -printf '%D:%i %n %y %s\n' | awk -v B=$BLOCK '
        $2 > 1 && $3 != "d" { if (seen[$1]++) { n++; next } }
        { n++ }
        $3 == "l" { if ($4 >= 60) b++; next }
        { k = int(($4 + B - 1) / B); if ($3 == "d" && k == 0) k = 1; b += k }
        END { printf "%d %d\n", b, n }')
content=$((content_blocks * BLOCK))
headroom=$((content / 5))
((headroom >= MIN_HEADROOM)) || headroom=$MIN_HEADROOM
# Inodes: everything there is, 20% more, and at least 16384 to spare.
spare_inodes=$((entries / 5))
((spare_inodes >= 16384)) || spare_inodes=16384
inodes=$((entries + spare_inodes))
# Metadata: the inode tables (256 bytes each), the journal, and 1% + 4 MiB for
# bitmaps, group descriptors and extent blocks.
overhead=$((inodes * 256 + JOURNAL_MIB * 1024 * 1024 + content / 100 + 4 * 1024 * 1024))
size_mib=$(((content + headroom + overhead + 1024 * 1024 - 1) / (1024 * 1024)))
echo "content $((content / 1024 / 1024)) MiB in $entries entries; image $size_mib MiB with $((headroom / 1024 / 1024)) MiB headroom and $inodes inodes"

rm -f -- "$OUT.tmp"
truncate -s "${size_mib}M" -- "$OUT.tmp"
# -E root_owner keeps mke2fs from giving / to the calling user; -d copies the
# tree with owners, modes, times, hard links, xattrs and device nodes.
mkfs.ext4 -q -F -t ext4 -b $BLOCK -I 256 -N "$inodes" -m 0 -J size=$JOURNAL_MIB \
    -L cellbox-root -E root_owner=0:0 -d "$TREE" -- "$OUT.tmp" \
    >"$WORK/mkfs.log" 2>&1 || die "mkfs.ext4 failed: $(cat "$WORK/mkfs.log")"

if [[ -s "$cmds" ]]; then
    debugfs -w -f "$cmds" -- "$OUT.tmp" >"$WORK/debugfs.out" 2>"$WORK/debugfs.err" \
        || die "debugfs failed: $(cat "$WORK/debugfs.err")"
    # stderr carries only the version banner and the "Allocated inode" notes when all went well.
    if grep -v -E '^debugfs [0-9.]+ \(|^Allocated inode: [0-9]+$|^$' "$WORK/debugfs.err" >"$WORK/debugfs.bad"; then
        die "debugfs could not lay EXTRA_DIR over the tree: $(head -n 20 "$WORK/debugfs.bad")"
    fi
fi

step 4 "checking the image"
# Read every EXTRA_DIR entry back through the path the guest will use.
for c in "${checks[@]}"; do
    IFS='|' read -r kind path expect <<<"$c"
    info="$(debugfs -R "stat $path" -- "$OUT.tmp" 2>&1)" || die "debugfs cannot stat $path in the image"
    owner="$(sed -n 's/^User: *\([0-9]*\) *Group: *\([0-9]*\).*/\1:\2/p' <<<"$info")"
    [[ "$owner" == 0:0 ]] || die "$path in the image is owned by ${owner:-?}, not root"
    case "$kind" in
        f)
            mode="$(sed -n 's/.*Type: regular *Mode: *\([0-7]*\).*/\1/p' <<<"$info")"
            [[ -n "$mode" && $((8#$mode)) -eq $((8#$(stat -c '%a' -- "$expect"))) ]] \
                || die "$path in the image is not a regular file with mode $(stat -c '%a' -- "$expect"): $(head -n 2 <<<"$info")"
            debugfs -R "dump $path $WORK/readback" -- "$OUT.tmp" >/dev/null 2>&1
            cmp -s -- "$expect" "$WORK/readback" || die "$path in the image differs from $expect"
            ;;
        d)
            mode="$(sed -n 's/.*Type: directory *Mode: *\([0-7]*\).*/\1/p' <<<"$info")"
            [[ -n "$mode" && $((8#$mode)) -eq $((8#$expect)) ]] || die "$path in the image is not a directory with mode $expect"
            ;;
        l)
            grep -q 'Type: symlink' <<<"$info" && grep -qF "Fast link dest: \"$expect\"" <<<"$info" \
                || [[ "$(debugfs -R "cat $path" -- "$OUT.tmp" 2>/dev/null)" == "$expect" ]] \
                || die "$path in the image is not a symbolic link to $expect"
            ;;
    esac
done
e2fsck -fn -- "$OUT.tmp" >"$WORK/fsck.log" 2>&1 || die "e2fsck found errors in the new image: $(tail -n 20 "$WORK/fsck.log")"
free_blocks="$(dumpe2fs -h -- "$OUT.tmp" 2>/dev/null | sed -n 's/^Free blocks: *//p')"
free=$((free_blocks * BLOCK))
((free >= MIN_HEADROOM)) || die "the image has only $((free / 1024 / 1024)) MiB free; the size estimate is wrong"
mv -f -- "$OUT.tmp" "$OUT"
trap 'rm -rf -- "$WORK"' EXIT
echo "image ready: $OUT ($size_mib MiB, $((free / 1024 / 1024)) MiB free, $(du -m -- "$OUT" | cut -f1) MiB on disk) in $((SECONDS - START)) s"
