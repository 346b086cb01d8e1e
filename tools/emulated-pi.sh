#!/usr/bin/env bash
# Functional check of the on-device harness on emulated Raspberry Pi userlands, by hand (CI runs the same
# thing as tests/test_arm_emulation.py): runtime_bench loads and runs each model under qemu-user on
#   arm64 - 64-bit Raspberry Pi OS (Debian bookworm) with numpy + ai-edge-litert + onnxruntime wheels;
#   armhf - 32-bit Raspberry Pi OS (the usual Pi 3B system) with Debian's numpy and tflite-runtime.
# NOT a benchmark: emulated timings are 100-500x slower than a real Cortex-A53 and mean nothing.
#
#   tools/emulated-pi.sh MODEL.tflite [MODEL.onnx ...]
#
# The userlands come from tools/build-arm-rootfs.sh (cached in $EDGEPRUNE_ARM_ROOT or
# ~/.cache/edgeprune/arm-rootfs; building them needs root once). Using them needs neither root, chroot
# nor binfmt_misc: qemu -L makes the ARM userland's files shadow the host's for the emulated process.
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 MODEL.tflite|MODEL.onnx ..." >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
arm_root="${EDGEPRUNE_ARM_ROOT:-$HOME/.cache/edgeprune/arm-rootfs}"
if [ ! -f "$arm_root/arm64/.edgeprune-ready" ] || [ ! -f "$arm_root/armhf/.edgeprune-ready" ]; then
  bash "$repo/tools/install.d/30-arm-emulation.sh"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/runtime_bench" "$work/"

on_arm() {  # ARCH ARGS...: python3 -m runtime_bench ARGS in that userland
  local arch="$1"; shift
  # a Pi 3B's Cortex-A53 (armhf: the ARMv7 model with its features); qemu's default "max" CPU gives
  # wrong INT8 results in XNNPACK under qemu 7.2 (see tests/test_arm_emulation.py)
  local qemu=qemu-aarch64-static cpu=cortex-a53
  if [ "$arch" = armhf ]; then qemu=qemu-arm-static; cpu=cortex-a7; fi
  (cd "$work" && env -i PATH=/usr/bin:/bin HOME="$work" PYTHONPATH="$arm_root/$arch/opt/edgeprune-site:$work" \
    "$qemu" -cpu "$cpu" -L "$arm_root/$arch" "$arm_root/$arch/usr/bin/python3" -m runtime_bench "$@")
}

status=0
for arch in arm64 armhf; do
  echo "== $arch: $(on_arm "$arch" probe)"
  for model in "$@"; do
    model="$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"
    if [ "$arch" = armhf ] && [[ "$model" == *.onnx ]]; then
      echo "   $(basename "$model"): skipped (no onnxruntime wheel for 32-bit ARM)"
      continue
    fi
    echo "   $(basename "$model") (timings under emulation are meaningless):"
    on_arm "$arch" run "$model" --runs 3 --warmup 1 || status=1
  done
done
exit $status
