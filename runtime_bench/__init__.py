"""On-device latency harness: needs only numpy and one runtime (no torch, no edgeprune).

``harness`` times a .tflite (ai_edge_litert or tflite_runtime) or .onnx (onnxruntime) model and
``parsers`` reads the logs of TFLite's ``benchmark_model`` and ``onnxruntime_perf_test`` for devices
without Python. The host copies this package to the device and runs ``python3 -m runtime_bench``.
"""
