"""onnxcam.export: rewrite a classifier into an explainable ONNX graph (needs ``onnx``).

``export_onnx`` takes any ONNX classifier; ``export_torch`` takes a ``torch.nn.Module`` and
names target layers by module name. Both append, in standard ONNX ops, the target layers'
activations and the gradient of the explained class score with respect to them: the passes
listed, in order, in ``export/pipeline.py`` (``PASSES``), then the checks in ``export/verify.py``.
"""

from __future__ import annotations

from onnxcam.contract import InputSpec

from .api import ExportResult, export_onnx, list_layers, load_labels, load_model
from .layers import LayerInfo
from .rules import VJP_RULES, supported_ops


def plain_onnx(*args, **kwargs) -> bytes:
    """A module as plain ONNX (see ``onnxcam.export.torch_frontend.plain_onnx``)."""
    from .torch_frontend import plain_onnx as _plain_onnx

    return _plain_onnx(*args, **kwargs)


def export_torch(*args, **kwargs) -> ExportResult:
    """Export a ``torch.nn.Module`` (see ``onnxcam.export.torch_frontend.export_torch``)."""
    from .torch_frontend import export_torch as _export_torch

    return _export_torch(*args, **kwargs)


__all__ = [
    "VJP_RULES",
    "ExportResult",
    "InputSpec",
    "LayerInfo",
    "export_onnx",
    "export_torch",
    "list_layers",
    "load_labels",
    "load_model",
    "plain_onnx",
    "supported_ops",
]
