"""onnxcam: Class Activation Maps from plain ONNX Runtime."""

from __future__ import annotations

from .errors import OnnxcamError

__version__ = "0.1.0"
__all__ = ["OnnxcamError", "__version__"]
