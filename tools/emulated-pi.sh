#!/usr/bin/env bash
# Functional check of the on-device harness on an emulated 64-bit Raspberry Pi OS userland
# (Debian bookworm arm64 under qemu-user), NOT part of CI and NOT a benchmark: emulated timings
# are 100-500x slower than a real Cortex-A53 and mean nothing. What it shows is that
# runtime_bench imports and runs on aarch64 with only numpy + ai-edge-litert + onnxruntime
# (the pip wheels a Pi 3B on 64-bit Raspberry Pi OS would get), without torch or edgeprune.
#
#   sudo tools/emulated-pi.sh MODEL.tflite [MODEL.onnx ...]      (rootfs cached in $PI_ROOT)
#
# Needs root (debootstrap, chroot, binfmt_misc) and the Debian mirror plus PyPI. The first run
# builds the rootfs (~7 min, CPU-bound); later runs reuse it.
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 MODEL.tflite|MODEL.onnx ..." >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "error: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${PI_ROOT:-/var/tmp/edgeprune-pi-arm64}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in qemu-user-static binfmt-support debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
mounted=()
mounted_binfmt=0
registered_here=0
cleanup() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  rm -rf "$root/tmp/edgeprune-check"
  [ "$registered_here" -eq 0 ] || update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
  [ "$mounted_binfmt" -eq 0 ] || umount /proc/sys/fs/binfmt_misc 2>/dev/null || true
}
trap cleanup EXIT
# binfmt_misc lets the kernel hand aarch64 executables to qemu-aarch64-static. Both are put back
# as they were on exit: a registered handler changes how *every* foreign binary on this machine
# runs (a wrong-architecture benchmark_model would suddenly "work" under emulation).
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  mounted_binfmt=1
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null
  registered_here=1
fi

if [ ! -x "$root/opt/eb/bin/python" ]; then
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" "$mirror"
fi

# /proc and /dev only: with the host's /sys bound in, the runtimes' cpuinfo reads the x86 CPU
# topology as if it were ARM and both LiteRT and onnxruntime crash (SIGSEGV) under qemu.
for fs in proc dev; do
  mount --bind "/$fs" "$root/$fs" && mounted+=("$root/$fs")
done
# The host's CA bundle (for a proxying/inspecting network); the host's own PIP_* variables point
# at host-only paths, so the chroot gets a clean environment instead (env -i below).
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
cp "$ca" "$root/etc/ssl/certs/host-ca.pem"
in_pi() { chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/host-ca.pem \
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"; }

if [ ! -x "$root/opt/eb/bin/python" ]; then
  in_pi python3 -m venv /opt/eb
  in_pi /opt/eb/bin/pip install -q numpy ai-edge-litert onnxruntime
fi
echo "emulated device: $(in_pi uname -m), $(in_pi /opt/eb/bin/python -m pip list 2>/dev/null \
  | grep -Ei '^(numpy|ai-edge-litert|onnxruntime) ' | tr -s ' ' | paste -sd, -)"

mkdir -p "$root/tmp/edgeprune-check"
cp -r "$repo/runtime_bench" "$root/tmp/edgeprune-check/"
status=0
for model in "$@"; do
  cp "$model" "$root/tmp/edgeprune-check/"
  name="$(basename "$model")"
  echo "== $name (timings under emulation are meaningless)"
  if ! in_pi /bin/sh -c "cd /tmp/edgeprune-check && PYTHONPATH=. /opt/eb/bin/python -m runtime_bench run \
      $(printf %q "$name") --runs 5 --warmup 1"; then
    status=1
  fi
done
exit $status
