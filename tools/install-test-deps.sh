#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine with Python 3.11:
# the package with its [test,tflite] extras (torch kept on the CPU build by constraints.txt),
# then each tools/install.d/*.sh step (system packages for loopback SSH/ADB peers, the NNCodec
# conformance venv, ...). Safe to re-run: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt"
python3 -m pip install -q -c constraints.txt torch==2.13.0
python3 -m pip install -q -c constraints.txt -e ".[test,tflite]"
for step in tools/install.d/*.sh; do
  [ -e "$step" ] || continue
  echo "== $step"
  bash "$step"
done
