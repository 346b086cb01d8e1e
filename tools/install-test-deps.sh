#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine with Python 3.11:
# the package with its [test,tflite] extras (torch from PyTorch's CPU wheel index, pinned by constraints.txt),
# then each tools/install.d/*.sh step (system packages for loopback SSH/ADB peers, the NNCodec
# conformance venv, ...). Safe to re-run: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt"
# The CPU wheel index, as in the README and the Dockerfile (tests/test_readme.py keeps the three equal):
# PyPI's Linux torch pulls several GB of CUDA packages.
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
python3 -m pip install -q --extra-index-url "$TORCH_INDEX" -c constraints.txt torch==2.13.0
python3 -m pip install -q --extra-index-url "$TORCH_INDEX" -c constraints.txt -e ".[test,tflite]"
for step in tools/install.d/*.sh; do
  [ -e "$step" ] || continue
  echo "== $step"
  bash "$step"
done
