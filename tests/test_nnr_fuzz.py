"""A short libFuzzer + ASan/UBSan run of the CABAC decoder (the long run is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed (tools/install.d/50-nncodec.sh)")
def test_decoder_survives_a_fuzz_smoke_run(tmp_path):
    binary = tmp_path / "nnr_decode_fuzzer"
    build = subprocess.run(
        ["bash", str(ROOT / "fuzz" / "build.sh"), str(binary)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert build.returncode == 0, build.stderr[-3000:]
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "fuzz" / "corpus", corpus)
    # ASan's shadow memory and free-quarantine inflate RSS well past the decoder's own (size-capped)
    # buffers; a small quarantine and a 3 GiB ceiling keep the smoke run from tripping libFuzzer's
    # out-of-memory check on a busy machine while leaks, crashes and UB are still reported.
    env = {**os.environ, "ASAN_OPTIONS": "quarantine_size_mb=32:detect_leaks=1"}
    run = subprocess.run(
        [str(binary), "-runs=30000", "-timeout=5", "-rss_limit_mb=3072", str(corpus)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    log = run.stderr[-3000:]
    assert run.returncode == 0, log
    assert "Done 30000 runs" in log and "ERROR" not in log
