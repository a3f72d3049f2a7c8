"""Faithfulness metrics of explanation maps, batched through the model's one session.

Every perturbed input is scored with ``onnxcam_mode = 1`` (no gradients) by the same ``Scorer``
the perturbation methods use. Maps are at the model-input resolution ([H, W], values in [0, 1]);
``x`` is the model input of one image ([1, ...], already normalised, in the model input's
``layout``: NCHW by default), so "zero" means the dataset mean. Definitions and references:
docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .contract import NCHW, NHWC, Layout
from .scoring import Scorer, image_rng


@dataclass
class Curve:
    """A perturbation curve: class probability vs fraction of pixels changed, and its AUC."""

    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoids), x in [0, 1]."""
        x, y = self.fractions, self.scores
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _layout(layout: Layout, nchw: bool | None) -> Layout:
    """``layout``, or the one the older ``nchw=`` keyword names."""
    return layout if nchw is None else (NCHW if nchw else NHWC)


def _channels_last(x: np.ndarray, layout: Layout) -> np.ndarray:
    """[..., layout] → [..., H, W, C] (a view), the layout OpenCV works in."""
    return NHWC.from_nchw(layout.to_nchw(x))


def _from_channels_last(x: np.ndarray, layout: Layout) -> np.ndarray:
    """[..., H, W, C] → [..., layout] (a view)."""
    return layout.from_nchw(NHWC.to_nchw(x))


def confidence_change(
    scorer: Scorer,
    x: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    layout: Layout = NCHW,
    *,
    nchw: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(Y, O) per image: class probability of the input and of ``map ⊙ input``.

    Grad-CAM++ (arXiv:1710.11063) masks the input with the explanation; as torchcam and
    pytorch-grad-cam do, the product is taken on the normalised input tensor.
    """
    layout = _layout(layout, nchw)
    ys, os_ = [], []
    for i in range(len(x)):
        c = int(classes[i])
        both = np.concatenate([x[i : i + 1], x[i : i + 1] * layout.per_position(maps[i : i + 1])])
        p = scorer.images(iter([both.astype(np.float32)]), 2, c).prob
        ys.append(p[0])
        os_.append(p[1])
    return np.asarray(ys), np.asarray(os_)


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """Average Drop % = 100 · mean(max(0, Y − O) / Y) (Grad-CAM++; lower is better)."""
    return float(100 * np.mean(np.maximum(0.0, y - o) / (y + 1e-7)))


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> float:
    """Increase in Confidence % = 100 · mean(O > Y) (Grad-CAM++; higher is better)."""
    return float(100 * np.mean(o > y))


def _order(map01: np.ndarray) -> np.ndarray:
    """Pixel indices from most to least salient (stable for ties)."""
    return np.argsort(-np.asarray(map01, dtype=np.float64).ravel(), kind="stable")


def baseline_input(
    x1: np.ndarray, kind: str, layout: Layout = NCHW, *, nchw: bool | None = None
) -> np.ndarray:
    """The "removed" version of an input: ``zero`` (the dataset mean) or ``blur`` (Gaussian,
    kernel 11, σ 5, as RISE's insertion)."""
    layout = _layout(layout, nchw)
    if kind == "zero":
        return np.zeros_like(x1)
    if kind == "blur":
        img = _channels_last(x1, layout)[0]
        b = cv2.GaussianBlur(np.ascontiguousarray(img), (11, 11), 5)
        b = b.reshape(img.shape)
        return _from_channels_last(b[None], layout).astype(x1.dtype)
    raise ValueError(f"unknown baseline {kind!r}: zero or blur")


def deletion_insertion(
    scorer: Scorer,
    x1: np.ndarray,
    map01: np.ndarray,
    cls: int,
    mode: str,
    steps: int = 50,
    baseline: str = "zero",
    layout: Layout = NCHW,
    batch_size: int = 32,
    *,
    nchw: bool | None = None,
) -> Curve:
    """RISE's deletion / insertion curve (arXiv:1806.07421).

    ``deletion``: replace the most salient pixels by the baseline, ``steps`` equal chunks at a
    time (lower AUC is better). ``insertion``: start from the baseline and put the most salient
    pixels back (higher AUC is better). The y value is the explained class's probability.
    """
    layout = _layout(layout, nchw)
    h, w = layout.spatial(x1.shape)
    n = h * w
    order = _order(map01)
    base = baseline_input(x1, baseline, layout)
    counts = np.round(np.linspace(0, n, steps + 1)).astype(int)

    def batches():
        for s in range(0, len(counts), batch_size):
            chunk = counts[s : s + batch_size]
            mask = np.zeros((len(chunk), n), dtype=np.float32)
            for j, k in enumerate(chunk):
                mask[j, order[:k]] = 1.0
            m = layout.per_position(mask.reshape(len(chunk), h, w))
            if mode == "deletion":
                yield x1 * (1 - m) + base * m
            elif mode == "insertion":
                yield base * (1 - m) + x1 * m
            else:
                raise ValueError(f"unknown mode {mode!r}: deletion or insertion")

    probs = scorer.images(batches(), len(counts), cls).prob
    return Curve(counts / n, probs.astype(np.float64))


ROAD_KERNEL = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
"""ROAD's neighbour weights: a removed pixel is the weighted mean of its 8 neighbours."""


def noisy_linear_impute(
    img: np.ndarray, removed: np.ndarray, noise: float = 0.01, rng=None, tol: float = 1e-6
) -> np.ndarray:
    """ROAD's noisy linear imputation (arXiv:2202.00449) of the ``removed`` pixels of an
    [H, W, C] image: each removed pixel equals the ``ROAD_KERNEL``-weighted mean of its
    neighbours, plus N(0, noise²).

    The linear system (W − K)·x = K·x_known on the removed pixels (W the in-bounds weight sum,
    K the neighbour convolution) is symmetric positive definite, so it is solved exactly with
    matrix-free conjugate gradients (convolutions only: numpy and OpenCV, no sparse solver)."""
    out = img.astype(np.float64).copy()
    r = removed.astype(bool)
    if not r.any():
        return out.astype(np.float32)

    def conv(v: np.ndarray) -> np.ndarray:
        return cv2.filter2D(v, -1, ROAD_KERNEL, borderType=cv2.BORDER_CONSTANT)

    weight = conv(np.ones(r.shape, np.float64))
    for c in range(out.shape[2]):
        known = np.where(r, 0.0, out[..., c])
        b = np.where(r, conv(known), 0.0)

        def apply(v: np.ndarray) -> np.ndarray:
            return np.where(r, weight * v - conv(v), 0.0)

        x = np.where(r, known.sum() / max((~r).sum(), 1), 0.0)  # start from the mean
        res = b - apply(x)
        p = res.copy()
        rr = float((res * res).sum())
        stop = tol * tol * max(float((b * b).sum()), 1e-30)
        for _ in range(4 * int(r.sum()) + 10):
            if rr <= stop:
                break
            ap = apply(p)
            alpha = rr / float((p * ap).sum())
            x += alpha * p
            res -= alpha * ap
            rr_new = float((res * res).sum())
            p = res + (rr_new / rr) * p
            rr = rr_new
        out[..., c] = np.where(r, x, out[..., c])
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        out[r] += rng.normal(0, noise, size=(int(r.sum()), out.shape[2]))
    return out.astype(np.float32)


def road(
    scorer: Scorer,
    x1: np.ndarray,
    map01: np.ndarray,
    cls: int,
    order: str = "morf",
    percentiles: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
    layout: Layout = NCHW,
    seed: int = 0,
    *,
    nchw: bool | None = None,
) -> Curve:
    """ROAD (Rong et al. 2022): remove the most (``morf``) or least (``lerf``) relevant share of
    pixels, impute them with noisy linear imputation, score. MoRF: lower is better; LeRF:
    higher is better. The curve's x are the removed shares (0 = the original image)."""
    layout = _layout(layout, nchw)
    h, w = layout.spatial(x1.shape)
    ranked = _order(map01)
    if order == "lerf":
        ranked = ranked[::-1]
    elif order != "morf":
        raise ValueError(f"unknown ROAD order {order!r}: morf or lerf")
    img = _channels_last(x1, layout)[0]
    rng = image_rng(seed, x1)
    inputs = [x1]
    for p in percentiles:
        removed = np.zeros(h * w, dtype=bool)
        removed[ranked[: round(p * h * w)]] = True
        imp = noisy_linear_impute(img, removed.reshape(h, w), rng=rng)
        inputs.append(_from_channels_last(imp[None], layout))
    probs = scorer.images(iter([np.concatenate(inputs).astype(np.float32)]), len(inputs), cls).prob
    return Curve(np.asarray([0.0, *percentiles]), probs.astype(np.float64))


def random_map(
    shape: tuple[int, int], seed: int, x: np.ndarray, grid: tuple[int, int] = (7, 7)
) -> np.ndarray:
    """The random baseline: uniform random values on the feature ``grid``, upsampled
    bilinearly to ``shape`` — a map with a CAM's spatial smoothness (a per-pixel random map
    would "win" pixel deletion by destroying the image with scattered holes). Keyed by the
    seed and the image content."""
    g = image_rng(seed, x).uniform(0, 1, size=grid).astype(np.float32)
    return cv2.resize(g, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
