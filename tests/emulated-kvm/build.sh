#!/usr/bin/env bash
# Builds the emulated-KVM machine: a small x86-64 machine that QEMU emulates in
# software (TCG) with an AMD CPU that has SVM, booting Debian's own kernel, whose
# kvm_amd module then gives a real /dev/kvm. There cellbox's VMM runs its Linux
# guest with user space, on hosts whose /dev/kvm cannot (PVM) or that have none.
#
#   build.sh OUT_DIR
#
# Output in OUT_DIR: vmlinuz (Debian's linux-image-amd64 kernel), initrd.gz
# (busybox, the virtio/9p/overlay/KVM/veth modules and the init below), version.
# Installs qemu-system-x86, busybox-static, kmod and cpio with apt-get when
# missing (root needed only then). Takes about a minute; run.sh starts it.
set -Eeuo pipefail

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: build.sh OUT_DIR" >&2; exit 2; }
OUT="$(realpath -m -- "$1")"
WORK="$OUT.work"
step() { echo "[emulated-kvm $1/4] $2"; }
die() { echo "emulated-kvm: error: $*" >&2; exit 1; }

step 1 "checking for qemu-system-x86, busybox-static, kmod, cpio"
missing=()
for p in qemu-system-x86 busybox-static kmod cpio; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; install them or run this as root"
    echo "installing with apt-get: ${missing[*]}"
    apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

step 2 "downloading Debian's kernel package (linux-image-amd64)"
rm -rf -- "$WORK" && mkdir -p -- "$WORK" && cd -- "$WORK"
package="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
if [[ -z "$package" ]]; then
    apt-get update -q >/dev/null || die "apt-get update failed"
    package="$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
fi
[[ -n "$package" ]] || die "apt-cache knows no linux-image-amd64 kernel"
# apt's sandbox user cannot write to root-owned folders; download as root.
apt-get download -o APT::Sandbox::User=root "$package" >/dev/null || die "apt-get download $package failed"
dpkg-deb -x ./*.deb root
version="$(ls root/lib/modules | head -n 1)"
echo "kernel $version"

step 3 "collecting the modules it needs (virtio, 9p, overlay, KVM, veth)"
mkdir -p initrd/{bin,dev,proc,sys,host,root,tmp,lib/modules}
cp /bin/busybox initrd/bin/busybox
for applet in sh mount umount mkdir modprobe cat cp echo poweroff switch_root sed sleep ip; do
    ln -s busybox "initrd/bin/$applet"
done
modules="lib/modules/$version"
mkdir -p "initrd/$modules"
cp root/"$modules"/modules.{order,builtin,builtin.modinfo} "initrd/$modules/"
(cd root && find "$modules/kernel" -name '*.ko*' \
    | grep -E '/(arch/x86/kvm|virt/lib|drivers/crypto/ccp|fs/9p|net/9p|fs/netfs|fs/fscache|fs/overlayfs|drivers/virtio)/|/drivers/net/veth\.ko' \
    | cpio -pdm --quiet ../initrd)
depmod -b "$PWD/initrd" "$version"

cat >initrd/init <<'INIT'
#!/bin/sh
# PID 1 of the emulated machine: loads the modules, lays a writable tmpfs
# over the host's file system (shared read-only over 9p), makes it the root,
# runs the command script named on the command line in it, reports its exit
# status on the second serial port, powers off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
for m in virtio_pci 9pnet_virtio 9p overlay kvm kvm_amd veth; do
    modprobe "$m" || echo "emulated-kvm: modprobe $m failed"
done
script=$(sed -n 's/.*cellbox.script=\([^ ]*\).*/\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose host /host
mount -t tmpfs tmp /tmp
mkdir -p /tmp/upper /tmp/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/tmp/upper,workdir=/tmp/work /root
# Read the script before the host's /tmp is covered by the machine's own.
cp "/root$script" /root/.emulated-kvm-command
mount --move /dev /root/dev
mount -t proc proc /root/proc
mount -t sysfs sys /root/sys
mount -t cgroup2 cgroup2 /root/sys/fs/cgroup
echo "+memory +pids" >/root/sys/fs/cgroup/cgroup.subtree_control
mount -t tmpfs tmp /root/tmp
mount -t tmpfs run /root/run
mkdir -p /root/dev/shm /root/dev/pts
mount -t tmpfs shm /root/dev/shm
mount -t devpts devpts /root/dev/pts
if [ -c /root/dev/kvm ]; then echo "emulated-kvm: /dev/kvm is up (kvm_amd)"; else echo "emulated-kvm: no /dev/kvm"; fi
# switch_root, not chroot: in a chroot the kernel refuses new user namespaces,
# which sandboxing tools (passt) make for themselves. Once the command ends,
# its status goes out on the second serial port and sysrq powers off.
exec switch_root /root /bin/bash -c '
bash /.emulated-kvm-command
echo "$?" >/dev/ttyS1
sleep 1 # let the UART drain
echo o >/proc/sysrq-trigger
# Wait with builtins only: the host share goes away as the machine stops, and
# PID 1 exiting would panic the kernel.
while :; do read -r -t 60 _ || :; done'
INIT
chmod +x initrd/init

step 4 "packing the initramfs into $OUT"
cp root/boot/vmlinuz-* vmlinuz
(cd initrd && find . | cpio -o -H newc --quiet | gzip -1 >../initrd.gz)
echo "$version" >version
mkdir -p -- "$OUT.tmp"
mv vmlinuz initrd.gz version "$OUT.tmp/"
rm -rf -- "$OUT" && mv -T -- "$OUT.tmp" "$OUT"
cd / && rm -rf -- "$WORK"
echo "built the emulated-KVM machine in $OUT ($(du -sh "$OUT" | cut -f1))"
