"""onnxcam: Class Activation Maps from plain ONNX Runtime.

``Explainer`` loads an exported model (``onnxcam export``) once and explains images; ``METHODS``
is the registry of CAM methods. The exporter lives in ``onnxcam.export`` (needs ``onnx``).
Importing this package never imports torch or onnx.
"""

from __future__ import annotations

from .engine import CamMap, Explainer, Explanation, Failure, Prediction
from .errors import OnnxcamError
from .methods import METHODS, MethodSpec

__version__ = "0.1.0"
__all__ = [
    "METHODS",
    "CamMap",
    "Explainer",
    "Explanation",
    "Failure",
    "MethodSpec",
    "OnnxcamError",
    "Prediction",
    "__version__",
]
