"""Build hook for the C extension(s); all metadata lives in pyproject.toml.

The CABAC/NNR coder (edgeprune/nnr) registers its extension here so that a plain
`pip install .` compiles it with the same setuptools backend. It is plain C99 against the
CPython API and the buffer protocol: no numpy headers, no C++ runtime.
"""

from setuptools import Extension, setup

EXT_MODULES: list = [
    Extension(
        "edgeprune.nnr._cabac",
        sources=["edgeprune/nnr/_cabac.c", "edgeprune/nnr/cabac.c", "edgeprune/nnr/quantize.c"],
        depends=["edgeprune/nnr/cabac.h", "edgeprune/nnr/nnr_tables.h", "edgeprune/nnr/nnr_derived_tables.h"],
        extra_compile_args=["-std=c99", "-O3"],
    ),
]

setup(ext_modules=EXT_MODULES)
