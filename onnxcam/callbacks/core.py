"""Framework-free half of the training callbacks: explain a fixed image set with an exported
model, make captioned overlays and localisation scalars, and hand them to the loggers.

The front ends (``torch.py``, ``keras.py``) only turn the current model into explainable ONNX
bytes; everything after that happens here, with the torch-free runtime.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from onnxcam.engine import Explainer
from onnxcam.localize import boxes_mask, energy_pointing, pointing_hit
from onnxcam.results import Explanation

BoxLike = Sequence[float]
"""A box ``(x0, y0, x1, y1)`` in the image's pixels (x1, y1 exclusive)."""


@dataclass(frozen=True)
class CamImage:
    """One logged image: an RGB uint8 overlay and its caption."""

    image: np.ndarray
    caption: str


@dataclass
class Snapshot:
    """What one logging step produced; every logger receives it whole."""

    step: int
    images: dict[str, list[CamImage]] = field(default_factory=dict)
    """Tag (``onnxcam/<method>``) → one captioned overlay per image."""
    scalars: dict[str, float] = field(default_factory=dict)
    """``onnxcam/<method>/pointing_game``, ``.../energy_pointing``, ``onnxcam/accuracy`` ..."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of this step: ``export``, ``explain``, ``log``."""


@runtime_checkable
class Logger(Protocol):
    """Anything with ``log(snapshot)``; ``close()`` is optional."""

    def log(self, snapshot: Snapshot) -> None: ...


def as_images(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """RGB images ``[H, W, 3]`` (uint8, or float in 0–255) from a batch or a list."""
    out = [np.asarray(im) for im in images]
    for im in out:
        if im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(f"images must be RGB [H, W, 3] pixel arrays, got shape {im.shape}")
    return out


def _as_boxes(boxes: Sequence[BoxLike | Sequence[BoxLike]] | None, n: int) -> list | None:
    """One list of boxes per image (a single box per image is accepted)."""
    if boxes is None:
        return None
    if len(boxes) != n:
        raise ValueError(f"{len(boxes)} box entries for {n} images")
    return [[b] if np.ndim(b) == 1 else list(b) for b in boxes]


def caption_of(e: Explanation, truth: str | None = None) -> str:
    """``"<label> 0.93"`` (the explained class; its probability), with ``| true <label>``."""
    p = e.predictions[0] if e.predictions else e.target
    text = f"{p.label} {p.probability:.2f}"
    return text if truth is None else f"{text} | true {truth}"


def burn_caption(rgb: np.ndarray, caption: str, size: int = 160) -> np.ndarray:
    """``rgb`` scaled to at least ``size`` pixels high with ``caption`` on a band below it."""
    h, w = rgb.shape[:2]
    k = max(1, int(np.ceil(size / h)))
    big = cv2.resize(rgb, (w * k, h * k), interpolation=cv2.INTER_NEAREST) if k > 1 else rgb
    band = np.zeros((18, big.shape[1], 3), np.uint8)
    cv2.putText(band, caption, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return np.ascontiguousarray(np.concatenate([big, band]))


class CamRecorder:
    """Explain fixed images with exported model bytes and pass the result to loggers.

    ``images``: RGB pixel images (the export's preprocessing turns them into the model's
    input). ``classes``: the true class index of each image (explained instead of the top-1
    and shown in the caption); ``boxes``: the object box(es) of each image, for the pointing
    game (``tolerance`` pixels, Zhang et al.) and the energy-based pointing game as scalars.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        methods: Sequence[str] = ("gradcam",),
        *,
        classes: Sequence[int] | None = None,
        boxes: Sequence[BoxLike | Sequence[BoxLike]] | None = None,
        loggers: Sequence[Logger] = (),
        tolerance: int = 0,
        burn: bool = True,
        display_size: int = 160,
        alpha: float = 0.5,
    ) -> None:
        self.images = as_images(images)
        self.methods = (methods,) if isinstance(methods, str) else tuple(methods)
        n = len(self.images)
        if classes is not None and len(classes) != n:
            raise ValueError(f"{len(classes)} classes for {n} images")
        self.classes = None if classes is None else [int(c) for c in classes]
        self.boxes = _as_boxes(boxes, n)
        self.loggers = list(loggers)
        self.tolerance = tolerance
        self.burn = burn
        self.display_size = display_size
        self.alpha = alpha
        self.history: list[Snapshot] = []
        """Every snapshot taken (images dropped after logging, scalars and times kept)."""

    def record(self, model: bytes, step: int, export_seconds: float = 0.0) -> Snapshot:
        """Explain the images with ``model`` (onnxcam-exported bytes), log, return the step."""
        t0 = time.perf_counter()
        with Explainer(model, device="cpu") as ex:
            exps = ex.explain(self.images, list(self.methods), classes=self.classes)
            label = ex.info.label
        snap = Snapshot(step, seconds={"export": export_seconds})
        truths = [None] * len(exps) if self.classes is None else [label(c) for c in self.classes]
        captions = [caption_of(e, t) for e, t in zip(exps, truths, strict=True)]
        for m in self.methods:
            tag = f"onnxcam/{m}"
            snap.images[tag] = [
                CamImage(self._show(e.overlay(m, alpha=self.alpha), c), c)
                for e, c in zip(exps, captions, strict=True)
            ]
            if self.boxes is not None:
                snap.scalars.update(self._localisation(tag, m, exps))
        if self.classes is not None:
            hits = [e.predictions[0].index == c for e, c in zip(exps, self.classes, strict=True)]
            snap.scalars["onnxcam/accuracy"] = float(np.mean(hits))
        snap.seconds["explain"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        for lg in self.loggers:
            lg.log(snap)
        snap.seconds["log"] = time.perf_counter() - t1
        self.history.append(Snapshot(step, {}, dict(snap.scalars), dict(snap.seconds)))
        return snap

    def _show(self, overlay: np.ndarray, caption: str) -> np.ndarray:
        return burn_caption(overlay, caption, self.display_size) if self.burn else overlay

    def _localisation(self, tag: str, method: str, exps: list[Explanation]) -> dict[str, float]:
        hits, energy = [], []
        for e, boxes, im in zip(exps, self.boxes, self.images, strict=True):
            target = boxes_mask(boxes, im.shape[:2])
            m = e.maps[method].original
            hits.append(pointing_hit(m, target, self.tolerance))
            energy.append(energy_pointing(m, target))
        return {
            f"{tag}/pointing_game": float(np.mean(hits)),
            f"{tag}/energy_pointing": float(np.mean(energy)),
        }

    def close(self) -> None:
        """Close the loggers that can be closed."""
        for lg in self.loggers:
            close = getattr(lg, "close", None)
            if close is not None:
                close()


class Schedule:
    """What every framework's callback shares: a ``CamRecorder`` of fixed images, run every
    ``every`` epochs, with the layer and export options of the in-memory export."""

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        every: int,
        methods: Sequence[str],
        layer: str | None,
        export_kwargs: dict,
        **recorder: object,
    ) -> None:
        if every < 1:
            raise ValueError("every must be ≥ 1")
        self.recorder = CamRecorder(images, methods, **recorder)
        self.every = every
        self.layer = layer
        self.export_kwargs = export_kwargs

    @property
    def history(self) -> list[Snapshot]:
        """Scalars and timings of every step logged so far."""
        return self.recorder.history


def scalars_of(history: Sequence[Snapshot], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar over a recorder's history."""
    return [(s.step, s.scalars[key]) for s in history if key in s.scalars]


def median_seconds(history: Sequence[Snapshot]) -> Mapping[str, float]:
    """Median wall time of each phase over the history."""
    keys = {k for s in history for k in s.seconds}
    return {k: float(np.median([s.seconds.get(k, 0.0) for s in history])) for k in sorted(keys)}
