"""Keras 3 (TensorFlow backend): ``CamCallback``, a ``keras.callbacks.Callback`` logging CAM
overlays and localisation scalars at the end of every ``every``-th epoch.

The model is converted in memory with ``tf2onnx.convert.from_function`` (no file); without
tf2onnx, Keras' own ``model.export(format="onnx")`` writes into a temporary directory that is
removed at once. The graph's NHWC maps are handled by the exporter like any tf2onnx model.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .core import BoxLike, Logger, Schedule, Snapshot

__all__ = ["CamCallback", "keras_to_onnx"]


def keras_to_onnx(model: keras.Model, opset: int = 17) -> bytes:
    """Plain ONNX bytes of a built Keras model (dynamic batch, inference mode)."""
    import tensorflow as tf

    shape = (None, *model.inputs[0].shape[1:])
    try:
        import tf2onnx
    except ImportError:
        with tempfile.TemporaryDirectory(prefix="onnxcam-keras-") as d:
            path = Path(d) / "model.onnx"
            model.export(str(path), format="onnx", verbose=False)
            return path.read_bytes()
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    # from_function, not from_keras: tf2onnx's from_keras cannot name a Keras 3 Sequential
    # model's outputs (KeyError 'keras_tensor_…'); this is also how Keras' own export calls it
    fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto.SerializeToString()


def _resolve_layer(onnx_bytes: bytes, layer: str | None) -> list[str] | None:
    """A Keras layer name → the ONNX tensor it became (the last candidate in its scope)."""
    if layer is None:
        return None
    from onnxcam.export import list_layers

    found = [c.tensor for c in list_layers(onnx_bytes)]
    if layer in found:
        return [layer]
    scoped = [t for t in found if f"/{layer}/" in t or f"/{layer}_1/" in t]
    return [scoped[-1]] if scoped else [layer]


class CamCallback(keras.callbacks.Callback, Schedule):
    """Log CAM overlays of fixed ``images`` (RGB pixels, ``[N, H, W, 3]``) during ``fit``.

    Arguments as ``onnxcam.callbacks.torch.CamLogger``; ``layer`` is a Keras layer name or an
    ONNX tensor name; ``export_kwargs`` (``preset``, ``mean``, ``std``, ``scale``, ``labels``)
    say how the images become the model's input.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        every: int = 1,
        methods: Sequence[str] = ("gradcam",),
        layer: str | None = None,
        *,
        classes: Sequence[int] | None = None,
        boxes: Sequence[BoxLike | Sequence[BoxLike]] | None = None,
        loggers: Sequence[Logger] = (),
        tolerance: int = 0,
        burn: bool = True,
        **export_kwargs: Any,
    ) -> None:
        keras.callbacks.Callback.__init__(self)
        Schedule.__init__(
            self, images, every, methods, layer, export_kwargs,
            classes=classes, boxes=boxes, loggers=loggers, tolerance=tolerance, burn=burn,
        )  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch % self.every == 0:
            self.log(epoch)

    def log(self, step: int) -> Snapshot:
        """Export ``self.model`` as it is now, explain the images, log at ``step``."""
        from onnxcam.export import export_onnx

        t0 = time.perf_counter()
        plain = keras_to_onnx(self.model)
        res = export_onnx(plain, layers=_resolve_layer(plain, self.layer), **self.export_kwargs)
        onnx_bytes = res.model.SerializeToString()
        return self.recorder.record(onnx_bytes, step, time.perf_counter() - t0)
