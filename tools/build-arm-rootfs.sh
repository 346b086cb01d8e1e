#!/usr/bin/env bash
# Builds the Raspberry Pi userlands that tests/test_arm_emulation.py runs runtime_bench in, under
# qemu-user (no chroot, no binfmt_misc, no root needed to *use* them):
#
#   arm64 - Debian bookworm (what 64-bit Raspberry Pi OS is built on), python3 from Debian, and the
#           wheels a 64-bit Pi gets from PyPI: numpy, ai-edge-litert, onnxruntime (manylinux aarch64);
#   armhf - Debian bookworm armhf (32-bit Raspberry Pi OS, the usual OS of a Pi 3B), python3-numpy from
#           Debian (numpy < 2: PyPI has no armv7 numpy wheels) and tflite-runtime's armv7l wheel, the only
#           TFLite runtime published for 32-bit ARM.
#
#   tools/build-arm-rootfs.sh [DEST]        (default: $EDGEPRUNE_ARM_ROOT or ~/.cache/edgeprune/arm-rootfs)
#
# Only Debian packages and PyPI wheels are fetched, and only here (install time): debootstrap
# downloads the .debs, which are unpacked with dpkg-deb (nothing is executed in the target, so no
# emulation is needed to build it); the wheels are fetched for the target platform by the host's pip
# and unpacked with `pip install --target`. A finished userland is marked by DEST/<arch>/.edgeprune-ready
# holding this script's hash, so reruns cost nothing and an edited script rebuilds.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-${EDGEPRUNE_ARM_ROOT:-$HOME/.cache/edgeprune/arm-rootfs}}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
stamp="$(sha256sum "$0" | cut -c1-16)"
# The host's pip configuration may point at local x86 wheel folders or cap versions; the target's
# wheels come from PyPI alone (PIP_CERT etc. in the environment still apply).
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="" PIP_CONSTRAINT="" PIP_DISABLE_PIP_VERSION_CHECK=1

for tool in debootstrap dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing: run tools/install.d/30-arm-emulation.sh" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "error: debootstrap needs root to build $dest" >&2; exit 2; }

# build ARCH QEMU_PLATFORM_TAGS DEBIAN_PACKAGES PIP_REQUIREMENTS PIP_FLAGS
build() {
  local arch="$1" platforms="$2" debs="$3" wheels="$4" flags="$5"
  local root="$dest/$arch"
  if [ -f "$root/.edgeprune-ready" ] && [ "$(cat "$root/.edgeprune-ready")" = "$stamp" ]; then
    echo "$arch userland up to date in $root"
    return
  fi
  local start=$SECONDS
  rm -rf "$root" "$dest/$arch.debs"
  mkdir -p "$dest/$arch.debs"
  # --download-only: fetch the .debs (with their dependencies) without running anything for the target.
  debootstrap --download-only --arch="$arch" --variant=minbase --include="$debs" \
    "$suite" "$dest/$arch.debs" "$mirror" >/dev/null
  mkdir -p "$root"
  for deb in "$dest/$arch.debs"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  rm -rf "$dest/$arch.debs"
  local pyver
  pyver="$(basename "$(readlink -f "$root/usr/bin/python3")")"   # e.g. python3.11
  pyver="${pyver#python}"
  local -a platform_args=()
  for p in $platforms; do platform_args+=(--platform "$p"); done
  # shellcheck disable=SC2086  # flags is a word list on purpose
  python3 -m pip install -q --target "$root/opt/edgeprune-site" --only-binary=:all: --implementation cp \
    --python-version "$pyver" "${platform_args[@]}" $flags $wheels
  # cpuinfo (LiteRT's XNNPACK, onnxruntime) reads /sys to learn the CPU topology; under qemu-user the
  # host's x86 /sys would show through (and crash them), so the userland gets a one-CPU /sys of its own.
  mkdir -p "$root/sys/devices/system/cpu/cpu0"
  echo 0 > "$root/sys/devices/system/cpu/possible"
  echo 0 > "$root/sys/devices/system/cpu/present"
  echo 0 > "$root/sys/devices/system/cpu/online"
  echo "$stamp" > "$root/.edgeprune-ready"
  echo "$arch userland built in $root in $((SECONDS - start)) s: python $pyver, $(ls "$root/opt/edgeprune-site" \
    | grep -Ei '^(numpy|ai_edge_litert|onnxruntime|tflite_runtime)-[0-9.]+\.dist-info$' | sed 's/\.dist-info//' \
    | paste -sd ' ' -)"
}

mkdir -p "$dest"
build arm64 "manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_28_aarch64" \
  "python3" "numpy ai-edge-litert onnxruntime" ""
# tflite-runtime declares numpy>=1.23 only; Debian's python3-numpy (1.24) satisfies it, so --no-deps.
build armhf "manylinux_2_34_armv7l linux_armv7l" \
  "python3,python3-numpy" "tflite-runtime" "--no-deps"
echo "ARM userlands ready in $dest (used by tests/test_arm_emulation.py; repo $repo)"
