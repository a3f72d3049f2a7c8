"""PyTorch: ``CamLogger``, a hook for any training loop, and ``CamCallback``, the same as a
Lightning ``Callback`` (created on first use, from ``lightning`` or ``pytorch_lightning``).

Each logging step exports the current model in memory (``export_torch``, no file written),
explains the fixed images with onnxruntime and logs captioned overlays and scalars. The
caller's model is left as it was: every submodule's train/eval flag is restored one by one,
the global torch RNG is forked (the exporter's dummy input draws from it), and a model that is
not on the CPU is exported from a CPU copy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import BoxLike, Logger, Schedule, Snapshot

if TYPE_CHECKING:  # torch is imported where a model is exported, not when this module is
    import torch

__all__ = ["CamLogger", "export_current"]  # and CamCallback, made on first use


def export_current(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    layer: str | None = None,
    **export_kwargs: Any,
) -> bytes:
    """``model`` as explainable ONNX bytes, leaving its modes, parameters, buffers, gradients
    and the torch RNG exactly as they were."""
    import torch

    from onnxcam.export import export_torch

    modes = [(m, m.training) for m in model.modules()]
    tensors = [*model.parameters(), *model.buffers()]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    target = model if on_cpu else copy.deepcopy(model).cpu()
    try:
        with torch.random.fork_rng(devices=[]):
            res = export_torch(
                target, tuple(input_shape), layers=[layer] if layer else None, **export_kwargs
            )
    finally:
        for m, training in modes:  # export_torch restores only the top-level flag
            m.training = training
    return res.model.SerializeToString()


class CamLogger(Schedule):
    """Log CAM overlays of fixed images every ``every`` epochs from a plain training loop.

    ``images``: RGB pixel images ``[N, H, W, 3]`` (uint8 or 0–255 floats); ``export_kwargs``
    tell the exporter how the model's input is made from them (``preset``, ``mean``, ``std``,
    ``scale``; ``labels`` for the captions). ``layer``: a module name (default: the exporter's
    default, the last feature map). ``classes``/``boxes``: ground truth per image for the
    captions, the accuracy and the pointing-game scalars (see ``CamRecorder``).

    >>> cam = CamLogger(val_images, every=1, loggers=[TensorBoardLogger("runs/x")],
    ...                 preset="unit", labels=["square", "circle", "triangle"])
    >>> for epoch in range(n): train_one_epoch(model); cam.on_epoch_end(model, epoch)
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
        input_shape: Sequence[int] | None = None,
        tolerance: int = 0,
        burn: bool = True,
        **export_kwargs: Any,
    ) -> None:
        super().__init__(
            images, every, methods, layer, export_kwargs,
            classes=classes, boxes=boxes, loggers=loggers, tolerance=tolerance, burn=burn,
        )  # fmt: skip
        h, w = self.recorder.images[0].shape[:2]
        self.input_shape = tuple(input_shape or (1, 3, h, w))

    def on_epoch_end(
        self, model: torch.nn.Module, epoch: int, step: int | None = None
    ) -> Snapshot | None:
        """Log when ``epoch % every == 0`` (at ``step``, default the epoch); else None."""
        if epoch % self.every:
            return None
        return self.log(model, epoch if step is None else step)

    def log(self, model: torch.nn.Module, step: int) -> Snapshot:
        """Export ``model`` as it is now, explain the images, log at ``step``."""
        t0 = time.perf_counter()
        onnx_bytes = export_current(model, self.input_shape, self.layer, **self.export_kwargs)
        return self.recorder.record(onnx_bytes, step, time.perf_counter() - t0)

    def close(self) -> None:
        """Close the loggers."""
        self.recorder.close()


_LIGHTNING: dict[str, type] = {}


def _lightning_callback() -> type:
    """``CamCallback``, subclassing the installed Lightning's ``Callback``."""
    if "cls" in _LIGHTNING:
        return _LIGHTNING["cls"]
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ImportError(
                "CamCallback needs Lightning: pip install 'onnxcam[lightning]'"
            ) from None

    class CamCallback(Callback):
        """A Lightning callback around ``CamLogger`` (same arguments, plus ``on``).

        ``on="validation"`` logs at the end of each validation epoch (sanity checks skipped),
        ``"train"`` at the end of each training epoch; only the global-zero process logs, at
        step = the epoch. Without ``loggers``, the trainer's TensorBoard, W&B and MLflow
        loggers are used (``loggers.from_lightning``).
        """

        def __init__(self, images, every: int = 1, *args, on: str = "validation", **kw):
            super().__init__()
            if on not in ("validation", "train"):
                raise ValueError("on must be 'validation' or 'train'")
            self.on = on
            self.cam = CamLogger(images, every, *args, **kw)
            self._own_loggers = bool(self.cam.recorder.loggers)

        def setup(self, trainer, pl_module, stage: str) -> None:
            if not self._own_loggers:
                from .loggers import from_lightning

                self.cam.recorder.loggers = from_lightning(trainer.loggers)

        def _maybe_log(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            self.cam.on_epoch_end(pl_module, trainer.current_epoch)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if self.on == "validation":
                self._maybe_log(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if self.on == "train":
                self._maybe_log(trainer, pl_module)

    _LIGHTNING["cls"] = CamCallback
    return CamCallback


def __getattr__(name: str) -> Any:
    if name == "CamCallback":
        return _lightning_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
