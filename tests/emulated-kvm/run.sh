#!/usr/bin/env bash
# Runs one command inside the emulated-KVM machine (see build.sh, which this
# runs first when the cached machine is missing) and exits with its status.
#
#   run.sh COMMAND [ARGS...]
#
# The command runs as root in the current folder with this shell's exported
# environment plus CELLBOX_EMULATED_KVM=1, /dev/kvm open to the group kvm, on this host's file system (read-only;
# writes land in the machine's memory and are gone afterwards), with a real
# /dev/kvm (kvm_amd on an emulated AMD CPU). No network but loopback. Its output
# and the machine's console come out here, with a line "emulated-kvm: alive"
# every 30 seconds while the machine runs. Everything is emulated in software:
# slow, but the same binaries and cached artefacts as on the host.
#
# Environment: EMULATED_KVM_TIMEOUT (seconds, default 3600), EMULATED_KVM_MEMORY_MIB
# (default 6144), EMULATED_KVM_CPUS (default 2), CELLBOX_CACHE_DIR (where the
# machine is cached, under emulated-kvm/<key of build.sh>).
set -Eeuo pipefail

[[ $# -ge 1 ]] || { echo "usage: run.sh COMMAND [ARGS...]" >&2; exit 2; }
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CELLBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cellbox}"
KEY="$(sha256sum <"$HERE/build.sh" | cut -c1-16)"
MACHINE="$CACHE/emulated-kvm/$KEY"
TIMEOUT="${EMULATED_KVM_TIMEOUT:-3600}"
MEMORY="${EMULATED_KVM_MEMORY_MIB:-6144}"
CPUS="${EMULATED_KVM_CPUS:-2}"

mkdir -p -- "$CACHE/emulated-kvm"
if [[ ! -f "$MACHINE/initrd.gz" ]]; then
    (
        flock 9
        [[ -f "$MACHINE/initrd.gz" ]] || bash "$HERE/build.sh" "$MACHINE"
    ) 9>"$CACHE/emulated-kvm/.lock"
fi

# The command as a script on the host's disk, which the machine reads at boot.
RUN="$(mktemp -d "$CACHE/emulated-kvm/run.XXXXXX")"
trap 'rm -rf -- "$RUN"' EXIT
{
    echo "export -n PWD OLDPWD SHLVL 2>/dev/null"
    export -p | grep -vE '^declare -x (PWD|OLDPWD|SHLVL|_)='
    echo "export CELLBOX_EMULATED_KVM=1 HOME=${HOME:-/root}"
    printf 'cd %q || exit 125\n' "$PWD"
    # /dev/kvm as udev's rule makes it on Debian: the group kvm may open it.
    echo 'getent group kvm >/dev/null && chgrp kvm /dev/kvm && chmod 660 /dev/kvm'
    # A heartbeat while the machine lives, whatever the command does: the
    # caller tells a machine that locked up from a command that is quiet.
    # shellcheck disable=SC2016
    echo '(while sleep 30; do echo "emulated-kvm: alive, load $(cut -d" " -f1-3 /proc/loadavg)"; done) &'
    printf 'exec'
    printf ' %q' "$@"
    echo
} >"$RUN/command.sh"

echo "emulated-kvm: starting the machine ($CPUS CPUs, $MEMORY MiB, kernel $(cat "$MACHINE/version")) for: $*"
started=$SECONDS
rc=0
timeout --foreground "$TIMEOUT" qemu-system-x86_64 -M q35 -accel tcg,thread=multi \
    -cpu EPYC,+svm,+npt -smp "$CPUS" -m "$MEMORY" \
    -display none -monitor none -no-reboot -nodefaults \
    -serial stdio -serial "file:$RUN/status" \
    -kernel "$MACHINE/vmlinuz" -initrd "$MACHINE/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 cellbox.script=$RUN/command.sh" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    </dev/null 2> >(grep --line-buffered -v "TCG doesn't support requested feature" >&2) || rc=$?
if ((rc == 124)); then
    echo "emulated-kvm: error: the command did not finish within ${TIMEOUT}s (EMULATED_KVM_TIMEOUT)" >&2
    exit 124
fi
status="$(tr -dc '0-9' <"$RUN/status" 2>/dev/null || true)"
if [[ -z "$status" ]]; then
    echo "emulated-kvm: error: the machine stopped before the command ended (qemu exit status $rc; console above)" >&2
    exit 125
fi
echo "emulated-kvm: the command exited with status $status after $((SECONDS - started))s"
exit "$status"
