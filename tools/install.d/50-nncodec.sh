#!/usr/bin/env bash
# NNR/CABAC test dependencies (issue 5), idempotent:
#  * clang, for the libFuzzer + ASan/UBSan smoke test of the bitstream decoder (tests/test_nnr_fuzz.py);
#  * .venv-nncodec, an isolated venv with NNCodec 2.1.3 (Fraunhofer HHI), the conformance oracle.
#    NNCodec pins numpy<2 and pulls torch/torchvision/opencv, so it never goes next to edgeprune's own
#    dependencies. Only its codec core (nncodec.nnc_core + the deepCABAC C++ extension) is used, which
#    needs numpy alone, so it is installed with --no-deps and its build requirements by hand; torch is
#    never resolved here (and -c constraints.txt would keep it on 2.13.0 CPU if it were).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v clang >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
fi
VENV=.venv-nncodec
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import nncodec.nnc_core, nncodec.extensions.deepCABAC, zstandard" 2>/dev/null; then
  echo "$VENV: nncodec already installed"
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# zstandard: only for benchmarks/bench_nnr.py (zstd-19 of the same levels, as a reference)
"$VENV/bin/pip" install -q -c constraints.txt "setuptools>=68" wheel "pybind11>=2.6.2" "numpy<2" zstandard
"$VENV/bin/python" -c "import nncodec.nnc_core" 2>/dev/null ||
  "$VENV/bin/pip" install -q -c constraints.txt --no-deps --no-build-isolation "nncodec==2.1.3"
"$VENV/bin/python" -c "import nncodec.nnc_core, nncodec.extensions.deepCABAC; print('nncodec core OK')"
