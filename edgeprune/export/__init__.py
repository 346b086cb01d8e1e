"""Export to ONNX and TFLite."""
