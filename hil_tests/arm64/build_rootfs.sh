#!/usr/bin/env bash
# Build an arm64 Debian bookworm root filesystem that stands in for the flight
# computer, and install orbitfl into it with its kernels compiled by the root
# filesystem's own gcc.
#
# Idempotent: every stage leaves a stamp in the work directory and is skipped
# when its stamp is there; a stage that died half-way is redone from scratch.
# The project stage always runs (the source changes between runs).
#
#   HIL_WORK      work directory (default: hil_tests/.work, gitignored)
#   HIL_MIRROR    Debian mirror (default: the one apt uses on this machine)
#   HIL_SKIP_APT  set to 1 to never call apt-get on the host
#
# Needs root (debootstrap, binfmt_misc, chroot).  Prints the time of each stage.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${HIL_WORK:-$REPO/hil_tests/.work}"
ROOTFS="$WORK/rootfs-bookworm-arm64"
WHEELS="$WORK/wheels-aarch64"
SUITE=bookworm
# Inside the root filesystem.
OPT=/opt/orbitfl
PY_VERSION=3.11

# Nothing from the host's pip configuration may leak into the root filesystem.
in_rootfs() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        chroot "$ROOTFS" "$@"
}
log() { printf '[build_rootfs %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
stage_start() { STAGE_T0=$(date +%s); log "stage $1 ..."; }
stage_end() { log "stage $1 done in $(( $(date +%s) - STAGE_T0 )) s"; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, binfmt_misc, chroot); \
rerun with sudo"
mkdir -p "$WORK"
T_ALL=$(date +%s)

# --- 1. host tools --------------------------------------------------------
need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need_pkgs+=(qemu-user-static)
command -v update-binfmts >/dev/null || need_pkgs+=(binfmt-support)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "${HIL_SKIP_APT:-0}" = 1 ] && die "missing host packages: ${need_pkgs[*]}"
    stage_start host-packages
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    stage_end host-packages
fi

# --- 2. binfmt_misc: run aarch64 ELF files through qemu-aarch64-static -------
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
[ -e "$entry" ] || die "$entry is missing after update-binfmts --enable \
qemu-aarch64; is qemu-user-static installed?"
grep -q '^enabled' "$entry" || die "$entry exists but is disabled"
# The F flag makes the kernel open the interpreter now, so it works inside a
# chroot that has no copy of qemu-aarch64-static.
grep -q '^flags:.*F' "$entry" || log "WARNING: $entry has no F flag; \
copying qemu-aarch64-static into the root filesystem instead"

# --- 3. the Debian mirror apt uses here ----------------------------------
mirror="${HIL_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                 /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | grep -oE '(https?://[^ ]+/debian)/?( |$)' | head -n1 | tr -d ' ' \
             || true)
    mirror="${mirror%/}"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

# --- 4. debootstrap -------------------------------------------------------
if [ ! -e "$WORK/.debootstrap.done" ]; then
    stage_start "debootstrap ($mirror)"
    if [ -d "$ROOTFS" ]; then
        log "removing the half-built $ROOTFS"
        umount -R "$ROOTFS/proc" "$ROOTFS/dev" "$ROOTFS/sys" 2>/dev/null || true
        rm -rf --one-file-system "$ROOTFS"
    fi
    # minbase + only what the agent needs: python3 with its headers and venv,
    # and gcc to compile the Cython kernels on the "device".
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-dev,python3-venv,gcc,libc6-dev \
        "$SUITE" "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; \
             die "debootstrap failed, log in $WORK/debootstrap.log"; }
    grep -q '^flags:.*F' "$entry" \
        || cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
    # Keep the image small: nothing more will be installed with apt.
    rm -rf "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/lib/apt/lists/"*
    touch "$WORK/.debootstrap.done"
    stage_end debootstrap
fi

arch=$(in_rootfs uname -m)
[ "$arch" = aarch64 ] || die "chroot uname -m says $arch, expected aarch64"

# --- 5. aarch64 wheels, downloaded on the host ------------------------------
# Pin to what the host runs so that both sides use the same NumPy for the
# bit-identity comparison.
host_py="${HIL_HOST_PYTHON:-python3}"
pin() {
    local v
    v=$("$host_py" -c "import importlib.metadata as m; print(m.version('$1'))" \
        2>/dev/null || true)
    if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}
reqs=("$(pin numpy)" "$(pin msgpack)" "$(pin pyzmq)" "$(pin sgp4)"
      "$(pin Cython)" "$(pin setuptools)" "$(pin wheel)")
req_key=$(printf '%s\n' "${reqs[@]}" | sha256sum | cut -c1-16)
if [ ! -e "$WORK/.wheels-$req_key.done" ]; then
    stage_start "pip download (${reqs[*]})"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    "$host_py" -m pip download -q --dest "$WHEELS" --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp --abi cp311 \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_17_aarch64 --platform any \
        "${reqs[@]}"
    touch "$WORK/.wheels-$req_key.done"
    stage_end "pip download"
fi

# --- 6. venv inside the root filesystem, installed offline ---------------
if [ ! -e "$WORK/.venv-$req_key.done" ]; then
    stage_start "venv (offline install under qemu)"
    rm -rf "$ROOTFS$OPT/wheels" "$ROOTFS$OPT/venv"
    mkdir -p "$ROOTFS$OPT"
    cp -r "$WHEELS" "$ROOTFS$OPT/wheels"
    in_rootfs /usr/bin/python3 -m venv "$OPT/venv"
    # --upgrade: the venv comes with bookworm's older pip and setuptools.
    in_rootfs "$OPT/venv/bin/pip" install -q --upgrade --no-index \
        --no-compile --find-links "$OPT/wheels" "${reqs[@]}"
    touch "$WORK/.venv-$req_key.done"
    stage_end venv
fi

# --- 7. the project: sdist on the host, kernels compiled inside -----------
# Redone only when the source changed since the last build.
src_hash=$(cd "$REPO" && find setup.py pyproject.toml MANIFEST.in agent ground \
    kernels_pyx -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' \
    -o -name '*.toml' -o -name '*.in' \) -not -path '*/__pycache__/*' 2>/dev/null \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
if [ -e "$WORK/.project-$src_hash.done" ] && [ "${HIL_FORCE_PROJECT:-0}" != 1 ]; then
    log "project unchanged since the last build ($src_hash); nothing to do"
    log "root filesystem ready: $ROOTFS"
    exit 0
fi
rm -f "$WORK"/.project-*.done
stage_start "project (sdist + kernel build with the arm64 gcc)"
dist="$WORK/dist"
rm -rf "$dist"
mkdir -p "$dist"
# A throw-away copy of the source so that the sdist build leaves nothing in
# the work tree that other people are editing.
stage_src="$WORK/sdist-src"
rm -rf "$stage_src"
mkdir -p "$stage_src"
(cd "$REPO" && tar -cf - --exclude='*.so' --exclude='*.c' \
    --exclude='__pycache__' --exclude='*.egg-info' \
    setup.py pyproject.toml README.md MANIFEST.in agent ground kernels_pyx) \
    | tar -xf - -C "$stage_src"
(cd "$stage_src" && "$host_py" setup.py -q sdist --dist-dir "$dist" \
    >"$WORK/sdist.log" 2>&1) \
    || { tail -n 20 "$WORK/sdist.log" >&2; die "sdist failed, log in $WORK/sdist.log"; }
sdist=$(ls "$dist"/orbitfl-*.tar.gz)
rm -rf "$ROOTFS$OPT/src"
mkdir -p "$ROOTFS$OPT/src"
tar -xzf "$sdist" -C "$ROOTFS$OPT/src" --strip-components=1
# Cython's output is the same C whatever the machine (same Cython, pinned
# above), so take the C the sdist build just generated on the host and leave
# only the compilation to the arm64 gcc: Cython itself under qemu costs about
# a minute per kernel.  HIL_CYTHONIZE_INSIDE=1 runs Cython inside as well.
if [ "${HIL_CYTHONIZE_INSIDE:-0}" != 1 ]; then
    for c in "$stage_src"/kernels_pyx/*.c; do
        [ -e "$c" ] && cp -p "$c" "$ROOTFS$OPT/src/kernels_pyx/"
    done
    touch "$ROOTFS$OPT/src/kernels_pyx/"*.c 2>/dev/null || true
fi
# The kernels are recompiled only when their sources or the build changed:
# a change to the Python code alone reuses the modules built before.
kernel_hash=$(cd "$ROOTFS$OPT/src" && find setup.py kernels_pyx -type f \
    \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name setup.py \) \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
so_cache="$WORK/kernels-aarch64-$kernel_hash"
if [ -d "$so_cache" ]; then
    log "kernel sources unchanged ($kernel_hash): reusing the arm64 modules"
    cp -p "$so_cache"/*.so "$ROOTFS$OPT/src/agent/kernels/" 2>/dev/null || true
else
    in_rootfs /bin/sh -c "cd $OPT/src && $OPT/venv/bin/python setup.py -q \
        build_ext --inplace -j $(nproc)" >"$WORK/kernel-build.log" 2>&1 \
        || { tail -n 30 "$WORK/kernel-build.log" >&2; \
             die "kernel build failed, log in $WORK/kernel-build.log"; }
    if grep -q WARNING "$WORK/kernel-build.log"; then
        grep WARNING "$WORK/kernel-build.log" >&2
        die "some kernels did not compile inside the root filesystem"
    fi
    rm -rf "$WORK"/kernels-aarch64-*
    mkdir -p "$so_cache.tmp"
    cp -p "$ROOTFS$OPT/src/agent/kernels/"*.so "$so_cache.tmp/" 2>/dev/null || true
    mv "$so_cache.tmp" "$so_cache"
fi
n_so=$(find "$ROOTFS$OPT/src/agent/kernels" -name '*.so' | wc -l)
n_pyx=$(find "$ROOTFS$OPT/src/kernels_pyx" -name '*.pyx' | wc -l)
[ "$n_so" = "$n_pyx" ] || die "built $n_so kernel modules for $n_pyx .pyx files"
for so in "$ROOTFS$OPT/src/agent/kernels/"*.so; do
    [ -e "$so" ] || continue
    file_arch=$(od -An -tx1 -j18 -N2 "$so" | tr -d ' ')
    [ "$file_arch" = b700 ] || die "$so is not an aarch64 ELF (e_machine $file_arch)"
done
echo "$(basename "$sdist")" >"$WORK/.project-sdist"
touch "$WORK/.project-$src_hash.done"
stage_end project

log "root filesystem ready in $(( $(date +%s) - T_ALL )) s: $ROOTFS" \
    "($n_so compiled kernel modules)"
