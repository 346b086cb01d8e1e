"""edgeprune: make trained PyTorch models small and fast on edge devices.

The pipeline is load -> prune -> simplify -> quantize -> encode -> export -> bench; see
`edgeprune.pipeline` for the Python API and `edgeprune.cli` for the command line.
"""

__version__ = "0.1.0"
