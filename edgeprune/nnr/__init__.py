"""MPEG-NNR bitstreams with a DeepCABAC-style CABAC coder (C core)."""
