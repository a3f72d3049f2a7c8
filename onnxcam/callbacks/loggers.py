"""Loggers for ``Snapshot``s: TensorBoard, Weights & Biases, MLflow, and Lightning's loggers.

Each imports its library when constructed, so only the one in use must be installed
(``pip install 'onnxcam[tensorboard]'`` / ``[wandb]`` / ``[mlflow]``). Your own logger is any
object with ``log(snapshot)`` (``core.Logger``).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import numpy as np

from .core import CamImage, Logger, Snapshot

__all__ = ["MlflowLogger", "TensorBoardLogger", "WandbLogger", "from_lightning", "grid"]


def grid(images: Sequence[CamImage], columns: int = 4) -> np.ndarray:
    """The images tiled row by row on a black canvas (RGB uint8), for one-image loggers."""
    h = max(c.image.shape[0] for c in images)
    w = max(c.image.shape[1] for c in images)
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, c in enumerate(images):
        r, q = divmod(k, columns)
        ih, iw = c.image.shape[:2]
        out[r * h : r * h + ih, q * w : q * w + iw] = c.image
    return out


def _stack(images: Sequence[CamImage]) -> np.ndarray:
    """``[N, H, W, 3]`` uint8, smaller images padded at the bottom right."""
    h = max(c.image.shape[0] for c in images)
    w = max(c.image.shape[1] for c in images)
    out = np.zeros((len(images), h, w, 3), np.uint8)
    for k, c in enumerate(images):
        out[k, : c.image.shape[0], : c.image.shape[1]] = c.image
    return out


class TensorBoardLogger:
    """Images with ``add_images`` (one batch per tag, captions burnt in and as text) and
    scalars with ``add_scalar``. ``writer``: a ``SummaryWriter`` (torch's or tensorboardX's);
    else one is made for ``log_dir`` with ``torch.utils.tensorboard`` or tensorboardX.

    TensorBoard imports TensorFlow whenever it is installed (~15 s, and TensorFlow beside
    torch in one process); unless TensorFlow is already loaded, ``no_tensorflow`` makes it use
    its own TensorFlow stub instead (``tensorboard.compat.notf``), which writes the same files.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        writer: Any = None,
        no_tensorflow: bool = True,
    ) -> None:
        if no_tensorflow and "tensorflow" not in sys.modules:
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from tensorboardX import SummaryWriter
            writer = SummaryWriter(None if log_dir is None else str(log_dir))
        self.writer = writer
        self._owned = log_dir is not None or writer is None

    def log(self, snapshot: Snapshot) -> None:
        for tag, images in snapshot.images.items():
            self.writer.add_images(tag, _stack(images), snapshot.step, dataformats="NHWC")
            text = "  \n".join(f"{k}: {c.caption}" for k, c in enumerate(images))
            self.writer.add_text(f"{tag}/captions", text, snapshot.step)
        for key, value in snapshot.scalars.items():
            self.writer.add_scalar(key, value, snapshot.step)
        self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()


class WandbLogger:
    """``wandb.Image``s with their captions (a list per tag) and scalars in one ``log`` call.

    ``run``: a wandb run (default: the active one, or ``wandb.init(**init_kwargs)``; offline
    with ``WANDB_MODE=offline``). ``step_metric``: log the step under this key instead of as
    wandb's own step (needed beside Lightning, which owns the run's step counter)."""

    def __init__(self, run: Any = None, step_metric: str | None = None, **init_kwargs: Any):
        import wandb

        self._wandb = wandb
        self._owned = run is None and wandb.run is None
        self.run = run or wandb.run or wandb.init(**init_kwargs)
        self.step_metric = step_metric

    def log(self, snapshot: Snapshot) -> None:
        data: dict[str, Any] = {
            tag: [self._wandb.Image(c.image, caption=c.caption) for c in images]
            for tag, images in snapshot.images.items()
        }
        data.update(snapshot.scalars)
        if self.step_metric is None:
            self.run.log(data, step=snapshot.step)
        else:
            self.run.log({**data, self.step_metric: snapshot.step})

    def close(self) -> None:
        if self._owned:
            self.run.finish()


class MlflowLogger:
    """A grid image per tag and step (``MlflowClient.log_image`` with ``key``/``step``; the
    captions are burnt in and logged as ``<tag>/captions_<step>.txt``) and metrics.

    ``run_id``: the run to log to (default: the active run, else a new one started with
    ``mlflow.start_run(**start_kwargs)``); ``tracking_uri`` e.g. ``"file:./mlruns"``."""

    def __init__(
        self, run_id: str | None = None, tracking_uri: str | None = None, **start_kwargs: Any
    ) -> None:
        import mlflow

        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        self._mlflow = mlflow
        self._owned = False
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                active = mlflow.start_run(**start_kwargs)
                self._owned = True
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = mlflow.MlflowClient(tracking_uri)

    def log(self, snapshot: Snapshot) -> None:
        for tag, images in snapshot.images.items():
            key = tag.replace("/", "_")
            self.client.log_image(self.run_id, grid(images), key=key, step=snapshot.step)
            text = "\n".join(f"{k}: {c.caption}" for k, c in enumerate(images))
            self.client.log_text(self.run_id, text, f"{tag}/captions_{snapshot.step}.txt")
        for key, value in snapshot.scalars.items():
            self.client.log_metric(self.run_id, key, value, step=snapshot.step)

    def close(self) -> None:
        if self._owned:
            self._mlflow.end_run()


def from_lightning(loggers: Sequence[Any]) -> list[Logger]:
    """Our loggers writing into Lightning's TensorBoard, W&B and MLflow loggers' runs (others
    are skipped)."""
    out: list[Logger] = []
    for lg in loggers:
        kind = type(lg).__name__
        if kind == "TensorBoardLogger":
            out.append(TensorBoardLogger(writer=lg.experiment))
        elif kind == "WandbLogger":
            out.append(WandbLogger(run=lg.experiment, step_metric="epoch"))
        elif kind == "MLFlowLogger":
            lg.experiment  # noqa: B018 (creates the run)
            out.append(MlflowLogger(run_id=lg.run_id, tracking_uri=lg._tracking_uri))
    return out
