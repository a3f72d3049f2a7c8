"""Weakly-supervised localization from maps: masks, boxes, IoU, pointing, drawing.

Maps are [0, 1] arrays (``CamMap.original`` / ``.input``). Boxes are ``(x0, y0, x1, y1)`` in
pixels, inclusive of x0/y0 and exclusive of x1/y1 (so width = x1 − x0).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box with the map's mean value inside it as a score (the C library's
    boxes, with their component's area, are ``onnxcam.cpp.ComponentBox``)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 1.0

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def mask_from_map(map01: np.ndarray, threshold: float = 0.5, mode: str = "fraction") -> np.ndarray:
    """Boolean mask: pixels ≥ ``threshold``·max (``fraction``), or the top ``threshold`` share of
    pixels (``percentile``: 0.2 keeps the 20 % highest). An all-zero map gives an empty mask."""
    m = np.asarray(map01, dtype=np.float32)
    peak = float(m.max(initial=0.0))
    if peak <= 0:
        return np.zeros(m.shape, dtype=bool)
    if mode == "fraction":
        return m >= threshold * peak
    if mode == "percentile":
        if threshold <= 0:
            return np.zeros(m.shape, dtype=bool)
        cut = np.quantile(m, 1.0 - min(threshold, 1.0))
        return (m >= cut) & (m > 0)
    raise ValueError(f"unknown mask mode {mode!r}: fraction or percentile")


def boxes_from_map(
    map01: np.ndarray,
    threshold: float = 0.5,
    largest: bool = True,
    min_area: float = 0.01,
) -> list[Box]:
    """Boxes around the connected components of ``mask_from_map(map, threshold)``.

    ``largest``: only the component with the most pixels (the CAM paper's protocol); else
    every component covering at least ``min_area`` of the image, best score first.
    """
    mask = mask_from_map(map01, threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return []
    boxes = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if not largest and area < min_area * mask.size:
            continue
        score = float(np.asarray(map01)[labels == k].mean())
        boxes.append((area, Box(x, y, x + w, y + h, score)))
    if not boxes:
        return []
    if largest:
        return [max(boxes, key=lambda t: t[0])[1]]
    return [b for _, b in sorted(boxes, key=lambda t: -t[1].score)]


def iou_boxes(a: Box | list, b: Box | list) -> float:
    """Intersection over union of two boxes."""
    a, b = _box(a), _box(b)
    inter = Box(max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def iou_masks(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def boxes_mask(boxes: list, shape: tuple[int, int]) -> np.ndarray:
    """The union of boxes as a boolean mask of ``shape`` (h, w)."""
    m = np.zeros(shape, dtype=bool)
    for b in map(_box, boxes):
        m[max(b.y0, 0) : max(b.y1, 0), max(b.x0, 0) : max(b.x1, 0)] = True
    return m


def pointing_hit(map01: np.ndarray, target: np.ndarray, tolerance: int = 15) -> bool:
    """Pointing game (Zhang et al., arXiv:1608.00507): does the map's maximum fall on the
    object (boolean mask), within ``tolerance`` pixels?"""
    y, x = np.unravel_index(int(np.argmax(map01)), np.shape(map01))
    if tolerance > 0:
        t = np.asarray(target, np.uint8)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        target = cv2.dilate(t, k) > 0
    return bool(np.asarray(target)[y, x])


def energy_pointing(map01: np.ndarray, target: np.ndarray) -> float:
    """Energy-based pointing game (Score-CAM, arXiv:1910.01279): share of the map's mass that
    falls on the object (boolean mask); 0 for an all-zero map."""
    m = np.maximum(np.asarray(map01, dtype=np.float64), 0)
    total = m.sum()
    return float(m[np.asarray(target, bool)].sum() / total) if total > 0 else 0.0


# --- the WSOL protocol of Choe et al. (CVPR 2020, arXiv:2001.07437): no fixed threshold ---------
CAM_THRESHOLDS = np.arange(0.0, 1.0, 0.01)
"""The map thresholds swept (their ``cam_curve_interval`` = 0.01)."""
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
"""MaxBoxAccV2 averages MaxBoxAcc over these IoU thresholds (MaxBoxAcc alone uses 0.5)."""


def _unit(map01: np.ndarray) -> np.ndarray:
    """The map min-maxed to [0, 1] (NaN → 0), as the protocol normalises every score map."""
    m = np.nan_to_num(np.asarray(map01, dtype=np.float64), nan=0.0)
    if not m.size:
        return m
    m = m - m.min()
    peak = m.max()
    return m / peak if peak > 0 else m


def _levels(map01: np.ndarray) -> np.ndarray:
    """``_unit`` as 8-bit levels, as the protocol thresholds it."""
    return (_unit(map01) * 255).astype(np.uint8)


def box_iou_sweep(
    map01: np.ndarray, gt_boxes: list, thresholds: np.ndarray = CAM_THRESHOLDS
) -> np.ndarray:
    """``[2, T]``: at each threshold τ, the best IoU with any ground-truth box of the box around
    the largest contour of ``map > τ·max`` (row 0, MaxBoxAcc), and of the best box among every
    contour's (row 1, MaxBoxAccV2's multi-contour boxes). An empty mask scores 0."""
    levels = _levels(map01)
    top = int(levels.max(initial=0))
    gts = [_box(b) for b in gt_boxes]
    out = np.zeros((2, len(thresholds)), np.float64)
    for i, t in enumerate(thresholds):
        binary = (levels > int(t * top)).astype(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not contours:
            continue
        boxes = [_contour_box(c) for c in contours]
        largest = _contour_box(max(contours, key=cv2.contourArea))
        out[0, i] = max(iou_boxes(largest, g) for g in gts)
        out[1, i] = max(iou_boxes(b, g) for b in boxes for g in gts)
    return out


def _contour_box(contour: np.ndarray) -> Box:
    x, y, w, h = cv2.boundingRect(contour)
    return Box(x, y, x + w, y + h)


def max_box_acc(ious: np.ndarray, iou_threshold: float = 0.5) -> float:
    """MaxBoxAcc over a dataset: ``ious`` ``[images, T]`` (a ``box_iou_sweep`` row per image) →
    max over τ of the share of images whose box reaches ``iou_threshold``."""
    ious = np.asarray(ious, dtype=np.float64)
    return float((ious >= iou_threshold).mean(axis=0).max()) if ious.size else 0.0


def max_box_acc_v2(ious: np.ndarray, iou_thresholds: tuple = IOU_THRESHOLDS) -> float:
    """MaxBoxAccV2: MaxBoxAcc of the multi-contour boxes averaged over the IoU thresholds."""
    return float(np.mean([max_box_acc(ious, d) for d in iou_thresholds]))


PXAP_EDGES = np.append(CAM_THRESHOLDS, [1.0, 2.0, 3.0])
"""Histogram edges of the map values for PxAP (the protocol's, right edges past 1)."""


def pixel_histograms(map01: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[2, bins]``: how many object (row 0) and background (row 1) pixels fall in each bin
    of the min-maxed map; summed over a dataset, they give ``pxap``."""
    m = _unit(map01)
    t = np.asarray(target, bool)
    return np.stack(
        [np.histogram(m[t], bins=PXAP_EDGES)[0], np.histogram(m[~t], bins=PXAP_EDGES)[0]]
    ).astype(np.float64)


def pxap(histograms: np.ndarray) -> float:
    """PxAP (pixel average precision): the area under the pixel precision–recall curve over
    the threshold sweep, from ``pixel_histograms`` summed over the dataset."""
    true, false = np.asarray(histograms, dtype=np.float64)
    if true.sum() <= 0:
        return 0.0
    tp, fp = true[::-1].cumsum(), false[::-1].cumsum()
    kept = (tp + fp) > 0
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=kept)
    recall = tp / true.sum()
    return float((precision[1:] * np.diff(recall))[kept[1:]].sum())


def draw_boxes(
    rgb: np.ndarray, boxes: list, color: tuple[int, int, int] = (0, 255, 0), thickness: int = 2
) -> np.ndarray:
    """Draw boxes on an RGB uint8 image (a copy)."""
    out = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)).copy()
    for b in map(_box, boxes):
        cv2.rectangle(out, (b.x0, b.y0), (b.x1 - 1, b.y1 - 1), color, thickness)
    return out


def _box(b: Box | list | tuple) -> Box:
    return b if isinstance(b, Box) else Box(*(round(v) for v in b[:4]))
