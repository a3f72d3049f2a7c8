"""Detections: a detector's kept boxes with their maps, fused over the head's scales, drawn.

The graph keeps the detections and seeds one backward row per detection
(``export/detect_graph.py``); here they become ``Detection`` objects in original-image pixels.
``decode`` and ``keep`` are the same selection on the host with OpenCV's NMS, from the
model's output as ``contract.DetectSpec`` lays it out: the independent check of the graph's
choice (tests) and a tool for callers who run a plain detector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .contract import DetectSpec, TargetLayer
from .errors import MethodError
from .postprocess import resize
from .results import CamMap
from .terms import Terms, WindowTerms, windows

FUSIONS = ("max", "mean")
"""How a detection's maps at the head's scales become one: ``max`` of the per-scale maps,
each divided by its own maximum first (ultralytics' LayerCAM fusion: a weak scale is not
drowned by the scale the object was detected on; ultralytics clamps that maximum at 1e-7,
onnxcam divides by any positive maximum, so a random-init model's tiny maps still show), or
their ``mean``, min-max normalised (pytorch-grad-cam's multi-layer aggregation)."""


@dataclass
class Detection:
    """One kept detection: its box (x1, y1, x2, y2 in original-image pixels), class, score
    (the class probability, times objectness for YOLOv5), the anchor it came from and its
    maps (fused over the head's scales, per method)."""

    box: tuple[float, float, float, float]
    index: int
    label: str
    score: float
    anchor: int
    maps: dict[str, CamMap] = field(default_factory=dict)


@dataclass
class DetectionResult:
    """One image's detections and, per method, the fusion of all its detections' maps."""

    source: str
    image: np.ndarray | None
    detections: list[Detection]
    maps: dict[str, CamMap] = field(default_factory=dict)
    inference_seconds: float = 0.0
    note: str | None = None
    """Why nothing was explained (no box kept)."""


def decode(row: np.ndarray, spec: DetectSpec) -> tuple[np.ndarray, np.ndarray]:
    """One image's output → (boxes xyxy [N, 4] in input pixels, class scores [N, K])."""
    out = row.T if not spec.anchors_first else row  # [N, C]
    xywh = out[:, :4].astype(np.float64)
    scores = out[:, 4:].astype(np.float64)
    if spec.objectness:
        scores = scores[:, 1:] * scores[:, :1]
    half = xywh[:, 2:] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1), scores


def keep(
    boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, top: int
) -> list[tuple[int, int, float]]:
    """(anchor, class, score) of the detections kept: each anchor's best class above ``conf``,
    class-wise NMS at ``iou`` (OpenCV's ``NMSBoxesBatched``), the ``top`` best."""
    import cv2

    cls = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), cls]
    idx = np.flatnonzero(best >= conf)
    if not len(idx):
        return []
    xywh = np.concatenate([boxes[idx, :2], boxes[idx, 2:] - boxes[idx, :2]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), best[idx].tolist(), cls[idx].tolist(), float(conf), float(iou)
    )
    kept = sorted((int(idx[k]) for k in np.asarray(kept).ravel()), key=lambda a: -best[a])
    return [(a, int(cls[a]), float(best[a])) for a in kept[:top]]


def rows_of(row: np.ndarray, spec: DetectSpec, chosen: list[tuple[int, int]]) -> np.ndarray:
    """``onnxcam_detections`` rows for given (anchor, class) pairs of one image's output (the
    rows the graph would write: x1, y1, x2, y2, score, class, anchor, kept = 1)."""
    boxes, scores = decode(row, spec)
    return np.array(
        [[*boxes[a], scores[a, c], c, a, 1.0] for a, c in chosen], dtype=np.float32
    ).reshape(len(chosen), 8)


def from_row(
    row: np.ndarray,
    size: tuple[int, int],
    original: tuple[int, int],
    label,
    maps: dict[str, CamMap],
) -> Detection:
    """A row of ``onnxcam_detections`` (x1, y1, x2, y2 in input pixels, score, class, anchor,
    kept) as a ``Detection`` in original-image pixels (clipped to the image)."""
    h, w = size
    x1, y1, x2, y2 = np.clip(row[:4], 0, [w, h, w, h])
    sy, sx = original[0] / h, original[1] / w
    box = (float(x1 * sx), float(y1 * sy), float(x2 * sx), float(y2 * sy))
    c = int(row[5])
    return Detection(box, c, label(c), float(row[4]), int(row[6]), maps)


def window_map(
    formula: Callable[[Terms], np.ndarray],
    target: TargetLayer,
    A: np.ndarray,
    G: np.ndarray,
    anchors: np.ndarray,
    given: bool = False,
) -> np.ndarray:
    """A gradient method's maps ``[rows, h, w]`` at a head input whose detection gradients
    are local (``target.window``): each row on this map from its gradient's window alone
    (``terms.WindowTerms``), zero for the rows of other maps (their gradient here is zero).
    ``A`` is the image's activations [1, C, h, w] (NCHW); ``G`` the gradient output: whole
    maps (mode 0), or with ``given`` the windows themselves ``[rows, C, k, k]`` (mode 3)."""
    h, w = A.shape[2:]
    win = target.window
    found = [(r, win.position(int(a), h, w)) for r, a in enumerate(anchors)]
    mine = [(r, p) for r, p in found if p is not None]
    out = np.zeros((len(anchors), h, w), np.float32)
    if not mine:
        return out
    k = win.size
    rows = [r for r, _ in mine]
    origin = np.array([(y - win.radius, x - win.radius) for _, (y, x) in mine])
    windowed = G[rows] if given else windows(target.layout.to_nchw(G), origin, k, rows)
    out[rows] = formula(WindowTerms(A, windowed, origin))
    return out


def fuse(levels: list[np.ndarray], size: tuple[int, int], how: str, n: int) -> np.ndarray:
    """Per-scale maps ``[n or 1, h_s, w_s]`` (rectified; one row: the same map for every
    detection) → one map per detection ``[n, H, W]`` in [0, 1]
    at input size ``size``: see ``FUSIONS``. Each level is resized bilinearly to ``size``
    first (ultralytics' order); for ``max`` a row's all-zero level is skipped (with direct
    gradients a detection has a map at its own scale only), which changes nothing."""
    if how not in FUSIONS:
        raise MethodError(f"unknown fusion {how!r}; choose {', '.join(FUSIONS)}")
    if how == "mean":
        up = [resize(np.broadcast_to(m, (n, *m.shape[1:])), *size) for m in levels]
        mean = np.mean(np.stack(up), axis=0, dtype=np.float32)
        lo = mean.min(axis=(1, 2), keepdims=True)
        span = mean.max(axis=(1, 2), keepdims=True) - lo
        return np.divide(mean - lo, span, out=np.zeros(mean.shape, np.float32), where=span > 0)
    out = np.empty((n, *size), np.float32)
    touched = np.zeros(n, bool)  # a row's first map is written, the next ones maxed in
    for m in levels:
        if len(m) == 1 and n > 1:  # the same map for every row (Eigen-CAM): resized once
            up = resize(m[0], *size)
            top = up.max()
            if top > 0:
                up *= 1 / top
                for r in range(n):
                    _max_into(out[r], up, touched[r])
                touched[:] = True
            continue
        for r in np.flatnonzero(m.reshape(len(m), -1).max(axis=1) > 0):  # in place, per row
            up = out[r] if not touched[r] else np.empty(size, np.float32)
            cv2.resize(m[r], size[::-1], dst=up, interpolation=cv2.INTER_LINEAR)
            top = up.max()
            if top <= 0:
                continue
            up *= 1 / top
            if touched[r]:
                np.maximum(out[r], up, out=out[r])
            touched[r] = True
    out[~touched] = 0
    return out


def _max_into(row: np.ndarray, up: np.ndarray, touched: bool) -> None:
    if touched:
        np.maximum(row, up, out=row)
    else:
        row[...] = up


def draw(rgb: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """``rgb`` (uint8 H×W×3) with each detection's box and "label score" drawn on it."""
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    thick = max(2, round(max(out.shape[:2]) / 300))
    for j, d in enumerate(detections):
        color = tuple(int(v) for v in _PALETTE[d.index % len(_PALETTE)])
        x1, y1, x2, y2 = (round(v) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = f"{j + 1}: {d.label} {d.score:.2f}"
        scale = thick / 3
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - 4, 0)
        left = max(min(x1, out.shape[1] - tw - 4), 0)  # the label stays inside the image
        cv2.rectangle(out, (left, top), (left + tw + 4, top + th + 4), color, -1)
        cv2.putText(
            out, text, (left + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1
        )
    return out


_PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)],
    dtype=np.uint8,
)  # fmt: skip
