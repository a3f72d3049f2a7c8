"""Training-time callbacks: log CAM overlays and localisation scores while a model trains.

Each step exports the current model to explainable ONNX in memory, explains a fixed set of
images with onnxruntime and hands a ``Snapshot`` to the loggers. Importing this package loads
no framework; each front end and logger imports its own library:

* ``onnxcam.callbacks.torch``: ``CamLogger`` (any loop), ``CamCallback`` (Lightning);
* ``onnxcam.callbacks.keras``: ``CamCallback`` (``keras.callbacks.Callback``);
* ``onnxcam.callbacks.loggers``: ``TensorBoardLogger``, ``WandbLogger``, ``MlflowLogger``.

See docs/callbacks.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .core import CamImage, CamRecorder, Logger, Snapshot

__all__ = [
    "CamImage",
    "CamLogger",
    "CamRecorder",
    "KerasCamCallback",
    "LightningCamCallback",
    "Logger",
    "MlflowLogger",
    "Snapshot",
    "TensorBoardLogger",
    "WandbLogger",
]

_LAZY = {
    "CamLogger": ("torch", "CamLogger"),
    "LightningCamCallback": ("torch", "CamCallback"),
    "KerasCamCallback": ("keras", "CamCallback"),
    "TensorBoardLogger": ("loggers", "TensorBoardLogger"),
    "WandbLogger": ("loggers", "WandbLogger"),
    "MlflowLogger": ("loggers", "MlflowLogger"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
