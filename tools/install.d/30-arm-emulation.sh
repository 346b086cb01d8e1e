#!/usr/bin/env bash
# The Pi path on ARM (tests/test_arm_emulation.py): qemu-user-static runs ARM binaries (no binfmt_misc,
# no chroot: qemu -L points it at the userland), debootstrap fetches the Debian arm64/armhf packages, and
# tools/build-arm-rootfs.sh assembles the two Raspberry Pi userlands with their PyPI wheels. The result is
# cached (~/.cache/edgeprune/arm-rootfs, or $EDGEPRUNE_ARM_ROOT), so a rerun costs nothing.
# Idempotent; without root (or apt-get) it says what to run and exits 0, like 10-system-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(qemu-user-static debootstrap)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "skipping: need root and apt-get for ${packages[*]} and the ARM userlands; run: sudo $0" >&2
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash tools/build-arm-rootfs.sh
