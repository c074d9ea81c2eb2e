#!/usr/bin/env python3
"""Runs an ONNX model with onnxruntime on raw images (used by tests/test_export.cpp).

usage: onnx_check.py MODEL.onnx INPUT.bin N,C,H,W OUTPUT.bin

INPUT.bin holds float32 little-endian images of shape (N, C, H, W); the model's output is
written to OUTPUT.bin in the same encoding. Exits 3 when onnxruntime or numpy cannot be
imported, so the caller can skip the comparison with a clear message.
"""
import sys


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a broken install
        print(f"onnx_check.py: onnxruntime/numpy not importable by {sys.executable}: {e}", file=sys.stderr)
        return 3
    model, inp, shape, out = sys.argv[1:]
    dims = [int(d) for d in shape.split(",")]
    x = np.fromfile(inp, dtype="<f4").reshape(dims)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.asarray(y, dtype="<f4").tofile(out)
    print(f"onnx_check.py: onnxruntime {ort.__version__}: {model} -> output {tuple(y.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
