"""onnxcam: Class Activation Maps from plain ONNX Runtime.

``Explainer`` loads an exported model (``onnxcam export``) once and explains images; ``METHODS``
is the registry of CAM methods. The exporter lives in ``onnxcam.export`` (needs ``onnx``).
Importing this package never imports torch or onnx, and loads nothing else until a name below
is used (PEP 562): ``onnxcam.__version__`` costs no engine, OpenCV or onnxruntime import.
"""

from __future__ import annotations

from importlib import import_module

from .errors import OnnxcamError

__version__ = "0.1.0"

_LAZY = {
    "CamMap": "results",
    "ExplainOptions": "plan",
    "Explainer": "engine",
    "Explanation": "results",
    "Failure": "results",
    "METHODS": "methods",
    "MethodSpec": "registry",
    "Prediction": "results",
}
"""Public name → the module it is imported from on first use."""

__all__ = [
    "METHODS",
    "CamMap",
    "ExplainOptions",
    "Explainer",
    "Explanation",
    "Failure",
    "MethodSpec",
    "OnnxcamError",
    "Prediction",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
