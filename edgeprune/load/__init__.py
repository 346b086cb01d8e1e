"""The load stage: the model and data every run starts from (see :mod:`edgeprune.load.stage`)."""

from edgeprune.load.stage import LoadOptions, load

__all__ = ["LoadOptions", "load"]
