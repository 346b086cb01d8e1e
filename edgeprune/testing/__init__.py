"""Harnesses shared by the test suite and the benchmarks, never used by the pipeline itself.

* :mod:`edgeprune.testing.sshd` - a throw-away OpenSSH server on 127.0.0.1 (the device harness is
  tested and benchmarked against real OpenSSH, not a mock);
* :mod:`edgeprune.testing.reader_fuzz` - mutations of real ``.nnr`` streams for the reader fuzz (a
  bounded run in the suite, the long run in ``benchmarks/fuzz_nnr_reader.py``).

They live in the package, not under ``tests/``, so that the benchmarks do not import from the tests.
"""
