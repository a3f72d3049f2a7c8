"""Every error onnxcam raises on purpose derives from ``OnnxcamError``.

The CLI turns these into one ``Error: ...`` line and a non-zero exit; anything else is a bug.
"""

from __future__ import annotations


class OnnxcamError(Exception):
    """Base class of all onnxcam errors."""


class ModelLoadError(OnnxcamError):
    """A file is not a readable ONNX model (missing, truncated, not protobuf)."""


class ContractError(OnnxcamError):
    """A model lacks (or has a broken) onnxcam graph contract."""


class ExportError(OnnxcamError):
    """The exporter cannot produce an explainable graph from this model."""


class UnsupportedOpError(ExportError):
    """An op on the gradient path has no VJP rule."""


class LayerNotFoundError(ExportError):
    """A requested target layer name does not exist in the model."""


class ImageError(OnnxcamError):
    """An image cannot be read or decoded."""


class MethodError(OnnxcamError):
    """A CAM method cannot run with what the model provides (e.g. CAM without a GAP head)."""


class DeviceError(OnnxcamError):
    """The requested execution device is not available."""
