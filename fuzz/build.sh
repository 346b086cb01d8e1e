#!/usr/bin/env bash
# Build the libFuzzer target of the NNR CABAC decoder with ASan + UBSan (needs clang).
# Usage: fuzz/build.sh [output-binary]   then   <binary> -max_total_time=60 <a copy of fuzz/corpus>
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${TMPDIR:-/tmp}/nnr_decode_fuzzer}"  # outside the work tree: nothing to ignore
clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iedgeprune/nnr fuzz/nnr_decode_fuzzer.c edgeprune/nnr/cabac.c edgeprune/nnr/quantize.c -lm -o "$out"
echo "$out"
