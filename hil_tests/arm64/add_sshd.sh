#!/usr/bin/env bash
# Install openssh-server into the arm64 root filesystem that build_rootfs.sh
# made, so that the real-device tests (HIL_TARGET=ssh://...) can run against
# an aarch64 userland over real ssh when no Raspberry Pi is at hand: the
# tests start its /usr/sbin/sshd under qemu-user, chrooted, on a random
# loopback port, with a key they generate.
#
# Idempotent (a stamp in the work directory); apt runs inside the root
# filesystem, under qemu, against the mirror debootstrap used.  Needs root.
#
#   HIL_WORK   work directory (default: hil_tests/.work, as build_rootfs.sh)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${HIL_WORK:-$REPO/hil_tests/.work}"
ROOTFS="$WORK/rootfs-bookworm-arm64"
STAMP="$WORK/.openssh.done"

log() { printf '[add_sshd %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (chroot); rerun with sudo"
[ -e "$WORK/.debootstrap.done" ] || die "no root filesystem in $ROOTFS; \
run hil_tests/arm64/build_rootfs.sh first"
if [ -e "$STAMP" ] && [ -x "$ROOTFS/usr/sbin/sshd" ]; then
    log "openssh-server already in $ROOTFS"
    exit 0
fi

in_rootfs() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        chroot "$ROOTFS" "$@"
}

t0=$(date +%s)
log "apt-get install openssh-server inside $ROOTFS (under qemu) ..."
# No init system in a chroot: tell the maintainer scripts not to start
# services (policy-rc.d exit 101 = "action forbidden").
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
trap 'rm -f "$ROOTFS/usr/sbin/policy-rc.d"' EXIT
# apt's sandbox user cannot be switched to under every qemu build.
in_rootfs apt-get -o APT::Sandbox::User=root update -qq >"$WORK/add_sshd.log" 2>&1 \
    || { tail -n 20 "$WORK/add_sshd.log" >&2; die "apt-get update failed"; }
in_rootfs apt-get -o APT::Sandbox::User=root install -y -qq --no-install-recommends \
    openssh-server >>"$WORK/add_sshd.log" 2>&1 \
    || { tail -n 20 "$WORK/add_sshd.log" >&2; die "apt-get install failed"; }
rm -rf "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/lib/apt/lists/"*
in_rootfs ssh-keygen -A >>"$WORK/add_sshd.log" 2>&1
mkdir -p "$ROOTFS/run/sshd"
chmod 755 "$ROOTFS/run/sshd"
[ -x "$ROOTFS/usr/sbin/sshd" ] || die "no /usr/sbin/sshd after the install"
touch "$STAMP"
log "openssh-server installed in $(( $(date +%s) - t0 )) s"
