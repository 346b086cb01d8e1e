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

# build ARCH WHEEL_ARCH DEBIAN_PACKAGES PIP_REQUIREMENTS PIP_FLAGS
build() {
  local arch="$1" wheel_arch="$2" debs="$3" wheels="$4" flags="$5"
  local root="$dest/$arch"
  if [ -f "$root/.edgeprune-ready" ] && [ "$(cat "$root/.edgeprune-ready")" = "$stamp" ]; then
    echo "$arch userland up to date in $root"
    return
  fi
  local start=$SECONDS
  rm -rf "$root"
  mkdir -p "$dest/$arch.debs"
  # --download-only: fetch the .debs (with their dependencies) without running anything for the target.
  # They stay in $arch.debs as a cache: a rebuild downloads only what changed.
  debootstrap --download-only --arch="$arch" --variant=minbase --include="$debs" \
    "$suite" "$dest/$arch.debs" "$mirror" >/dev/null
  mkdir -p "$root"
  for deb in "$dest/$arch.debs"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  # Links that maintainer scripts would make (update-alternatives), which unpacking alone does not:
  # Debian's numpy finds BLAS/LAPACK as <triplet>/libblas.so.3 -> blas/libblas.so.3.
  local lib
  for lib in "$root"/usr/lib/*/blas/libblas.so.3 "$root"/usr/lib/*/lapack/liblapack.so.3; do
    [ -e "$lib" ] && ln -sfn "$(basename "$(dirname "$lib")")/$(basename "$lib")" "$(dirname "$(dirname "$lib")")/"
  done
  local pyver glibc
  pyver="$(basename "$(readlink -f "$root/usr/bin/python3")")"   # e.g. python3.11
  pyver="${pyver#python}"
  # pip takes --platform tags literally: list every manylinux level up to the userland's glibc
  # (bookworm: 2.36), as pip on the Pi itself would accept them.
  glibc="$(find "$dest/$arch.debs/var/cache/apt/archives" -name 'libc6_2.*.deb' -printf '%f\n' \
    | sed -E 's/^libc6_2\.([0-9]+).*/\1/' | head -n1)"
  local -a platform_args=(--platform "linux_$wheel_arch")
  [ "$wheel_arch" = aarch64 ] && platform_args+=(--platform manylinux2014_aarch64)
  for ((minor = 17; minor <= glibc; minor++)); do platform_args+=(--platform "manylinux_2_${minor}_$wheel_arch"); done
  # shellcheck disable=SC2086  # flags is a word list on purpose
  python3 -m pip install -q --no-warn-conflicts --root-user-action=ignore --target "$root/opt/edgeprune-site" \
    --only-binary=:all: --implementation cp \
    --python-version "$pyver" "${platform_args[@]}" $flags $wheels
  # cpuinfo (LiteRT's XNNPACK, onnxruntime) reads /proc/cpuinfo and /sys to learn the CPU; under qemu-user
  # the host's x86 files would show through (and they crash with SIGSEGV), so the userland gets files of
  # its own describing one core of a Pi 3B (Cortex-A53, part 0xd03), which qemu -L serves in their place.
  mkdir -p "$root/sys/devices/system/cpu/cpu0" "$root/proc"
  echo 0 > "$root/sys/devices/system/cpu/possible"
  echo 0 > "$root/sys/devices/system/cpu/present"
  echo 0 > "$root/sys/devices/system/cpu/online"
  if [ "$arch" = arm64 ]; then
    features="fp asimd evtstrm crc32 cpuid"; cpu_arch=8
  else
    features="half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32"; cpu_arch=7
  fi
  printf 'processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: %s\n%s\n\n' \
    "$features" "$cpu_arch" $'CPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4' > "$root/proc/cpuinfo"
  echo "$stamp" > "$root/.edgeprune-ready"
  echo "$arch userland built in $root in $((SECONDS - start)) s: python $pyver, $(ls "$root/opt/edgeprune-site" \
    | grep -Ei '^(numpy|ai_edge_litert|onnxruntime|tflite_runtime)-[0-9.]+\.dist-info$' | sed 's/\.dist-info//' \
    | paste -sd ' ' -)"
}

mkdir -p "$dest"
build arm64 aarch64 "python3" "numpy ai-edge-litert onnxruntime" ""
# tflite-runtime declares numpy>=1.23 only; Debian's python3-numpy (1.24) satisfies it, so --no-deps.
build armhf armv7l "python3,python3-numpy" "tflite-runtime" "--no-deps"
echo "ARM userlands ready in $dest (used by tests/test_arm_emulation.py; repo $repo)"
