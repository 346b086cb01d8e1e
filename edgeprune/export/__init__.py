"""Export to ONNX and TFLite (fp32 and INT8), each file verified in its runtime.

Modules: :mod:`~edgeprune.export.onnx` and :mod:`~edgeprune.export.tflite` (the two toolchains),
:mod:`~edgeprune.export.verify` (the INT8 level check), :mod:`~edgeprune.export.stage` (the
pipeline stage and :class:`ExportOptions`).
"""

from edgeprune.export.stage import ExportOptions
from edgeprune.export.verify import verify_exported_levels

__all__ = ["ExportOptions", "verify_exported_levels"]
