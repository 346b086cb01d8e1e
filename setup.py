"""Build hook for the C extension(s); all metadata lives in pyproject.toml.

The CABAC/NNR coder (edgeprune/nnr) registers its extension here so that a plain
`pip install .` compiles it with the same setuptools backend.
"""

from setuptools import setup

EXT_MODULES: list = []

setup(ext_modules=EXT_MODULES)
