"""Faithfulness metrics of explanation maps, batched through the model's one session.

Every perturbed input is scored with ``onnxcam_mode = 1`` (no gradients) by the same ``Scorer``
the perturbation methods use. Maps are at the model-input resolution ([H, W], values in [0, 1]);
``x`` is the model input of one image ([1, ...], already normalised, in the model input's
``layout``: NCHW by default), so "zero" means the dataset mean. Definitions and references:
docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .contract import NCHW, NHWC, InputSpec, Layout
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


# ---------------------------------------------------------------------------------------------
# Metrics cross-checked against Quantus, pytorch-grad-cam and OpenVINO XAI (docs/evaluation.md)
# ---------------------------------------------------------------------------------------------
Explain = Callable[[np.ndarray], np.ndarray]
"""Re-explains a batch of model inputs ``[n, ...]`` (same class, same method) → maps
``[n, H, W]`` at the model-input size."""


def average_gain(y: np.ndarray, o: np.ndarray) -> float:
    """Average Gain % = 100 · mean(max(0, O − Y) / (1 − Y)) (Zhang et al. 2023, Opti-CAM,
    arXiv:2301.07002; higher is better): Average Drop's counterpart for a masked input that the
    model is *more* confident about, normalised by the room left to 1."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return float(100 * np.mean(np.maximum(0.0, o - y) / (1 - y + 1e-7)))


def complexity_l1(map01: np.ndarray) -> float:
    """Poppi et al.'s Complexity (ADCC, arXiv:2104.10252): ‖map‖₁ / (H·W), in [0, 1] for a
    [0, 1] map (lower: fewer pixels explain the class)."""
    m = np.asarray(map01, np.float64)
    return float(np.abs(m).sum() / (m.shape[-1] * m.shape[-2]))


def complexity_entropy(attribution: np.ndarray) -> float:
    """Quantus ``Complexity`` (Bhatt et al. 2020, arXiv:2005.00631): the entropy (nats) of the
    fractional contributions p = |a| / Σ|a|, −Σ p·log(p + 1e-12). 0 for one pixel, log(n) for
    a uniform map (lower is better)."""
    a = np.abs(np.asarray(attribution, np.float64)).ravel()
    p = a / max(a.sum(), 1e-300)
    return float(-(p * np.log(p + 1e-12)).sum())


def sparseness_gini(attribution: np.ndarray) -> float:
    """Quantus ``Sparseness`` (Chalasani et al. 2020, arXiv:1810.06583): the Gini index of
    |a| + 1e-7 sorted ascending, Σ (2i − n − 1)·a_(i) / (n·Σ a); 0 for a uniform map, → 1 for
    one pixel (higher is better)."""
    a = np.sort(np.abs(np.asarray(attribution, np.float64)).ravel() + 1e-7)
    n = a.size
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * a).sum() / (n * a.sum()))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (flattened); 0 when either is constant."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def masked_input(x1: np.ndarray, map01: np.ndarray, layout: Layout = NCHW) -> np.ndarray:
    """``map ⊙ x`` on the normalised input tensor (Average Drop's and Coherency's input)."""
    return (x1 * layout.per_position(np.asarray(map01, np.float32)[None])).astype(np.float32)


def coherency(map01: np.ndarray, remap01: np.ndarray) -> float:
    """Coherency (Poppi et al. 2021): (ρ + 1) / 2, ρ the Pearson correlation of the map and the
    map of the input masked by it (``remap01``, the same method and class); in [0, 1], higher
    is better. A constant map has ρ = 0 (pytorch-grad-cam's ε; the ADCC code gives NaN)."""
    return (pearson(map01, remap01) + 1) / 2


def adcc(coherency_: float, complexity: float, drop: float) -> float:
    """ADCC (Poppi et al. 2021): the harmonic mean 3 / (1/Coherency + 1/(1 − Complexity) +
    1/(1 − Average Drop)) of one image, Average Drop as a fraction; 0 when a term is 0."""
    terms = np.asarray([coherency_, 1 - complexity, 1 - drop], np.float64)
    return 0.0 if (terms <= 0).any() else float(3 / (1 / terms).sum())


def road_combined(
    scorer: Scorer,
    x1: np.ndarray,
    map01: np.ndarray,
    cls: int,
    percentiles: tuple[float, ...] = (20, 40, 60, 80),
    layout: Layout = NCHW,
    seed: int = 0,
    noise: float = 0.01,
) -> float:
    """pytorch-grad-cam's ``ROADCombined`` (the ROAD term of its ARCC): (mean LeRF − mean MoRF)
    probability / 2 over ``percentiles``. MoRF at p imputes the pixels with map ≥ the map's
    p-th percentile (``np.percentile``, linear), LeRF the pixels with 1 − map ≥ its p-th
    percentile — their thresholding, not ROAD's exact shares (``road``). In [−0.5, 0.5]."""
    m = np.asarray(map01, np.float32)
    img = _channels_last(x1, layout)[0]
    rng = image_rng(seed, x1)
    inputs = []
    for v in (m, 1 - m):  # MoRF, then LeRF
        for p in percentiles:
            removed = ~(v < np.percentile(v, p))
            inputs.append(
                _from_channels_last(noisy_linear_impute(img, removed, noise, rng)[None], layout)
            )
    probs = scorer.images(iter([np.concatenate(inputs).astype(np.float32)]), len(inputs), cls).prob
    k = len(percentiles)
    return float((probs[k:].astype(np.float64).mean() - probs[:k].astype(np.float64).mean()) / 2)


def arcc(coherency_: float, complexity: float, road: float) -> float:
    """pytorch-grad-cam 1.5's ARCC: 3 / (1/(Coherency + ε) + 1/(1 − Complexity + ε) +
    1/(clip(2·ROADCombined, 0, 1) + ε)), ε = 1e-8 — ADCC with Average Drop replaced by ROAD
    (higher is better)."""
    r = float(np.clip(2 * road, 0, 1))
    eps = 1e-8
    return float(3 / (1 / (coherency_ + eps) + 1 / (1 - complexity + eps) + 1 / (r + eps)))


def max_sensitivity(
    explain: Explain,
    x1: np.ndarray,
    map01: np.ndarray,
    radius: float = 0.2,
    samples: int = 10,
    rng: np.random.Generator | np.random.RandomState | None = None,
    batch_size: int = 32,
) -> float:
    """Max-Sensitivity (Yeh et al. 2019, arXiv:1901.09392; Quantus ``MaxSensitivity``):
    max over ``samples`` inputs x + δ, δ ~ U(−r, r) per input value (the normalised input), of
    ‖e(x + δ) − e(x)‖₂ / ‖e(x)‖₂, maps flattened (lower is better). The noisy copies are drawn
    in order (one ``rng.uniform`` of x's shape each, as Quantus) and re-explained in batches."""
    rng = rng if rng is not None else np.random.default_rng(0)
    base = np.asarray(map01, np.float64).ravel()
    noisy = np.concatenate(
        [x1 + rng.uniform(-radius, radius, size=x1.shape) for _ in range(samples)]
    ).astype(np.float32)
    maps = np.concatenate(
        [explain(noisy[s : s + batch_size]) for s in range(0, samples, batch_size)]
    )
    diff = np.linalg.norm(maps.reshape(samples, -1).astype(np.float64) - base, axis=1)
    norm = float(np.linalg.norm(base))
    if norm == 0:
        return 0.0 if not diff.any() else float("inf")
    return float(diff.max() / norm)


def ovx_auc(scores: np.ndarray) -> float:
    """OpenVINO XAI's ``AUC``: |Σ s − s₀/2 − s_last/2| / (len − 1) (trapezoids on [0, 1])."""
    s = np.asarray(scores, np.float64)
    return float(abs((s.sum() - s[0] / 2 - s[-1] / 2) / (len(s) - 1)))


def ovx_insertion_deletion(
    scorer: Scorer,
    image: np.ndarray,
    saliency: np.ndarray,
    cls: int,
    spec: InputSpec,
    steps: int = 30,
    batch_size: int = 32,
) -> tuple[Curve, Curve]:
    """Insertion and deletion as OpenVINO XAI 1.1 computes them (``InsertionDeletionAUC``):
    on the *original image* (H, W, C, before preprocessing) and its map at that size, pixels
    ordered by ``np.argsort(−map)`` (numpy's default sort: ties in its order), at step
    i = 0 … ``steps`` the first ``int(i·N/steps)`` pixels set to 0 (black, in the image's own
    values) for deletion, or kept on a black image for insertion; each image preprocessed as
    the model's ``spec`` (``image.preprocess``) and scored (class probability). Returns
    (insertion, deletion) curves; their AUC is ``ovx_auc`` (= ``Curve.auc`` here)."""
    from .image import preprocess

    order = np.argsort(-np.asarray(saliency).flatten())
    rows, cols = np.unravel_index(order, saliency.shape)
    n = len(rows)
    counts = [int(i * n / steps) for i in range(steps + 1)]

    def batches(mode: str):
        for s in range(0, len(counts), batch_size):
            imgs = []
            for k in counts[s : s + batch_size]:
                if mode == "insertion":
                    im = np.zeros_like(image)
                    im[rows[:k], cols[:k]] = image[rows[:k], cols[:k]]
                else:
                    im = image.copy()
                    im[rows[:k], cols[:k]] = 0
                imgs.append(im)
            yield preprocess(imgs, spec)

    ins = scorer.images(batches("insertion"), len(counts), cls).prob.astype(np.float64)
    dele = scorer.images(batches("deletion"), len(counts), cls).prob.astype(np.float64)
    return Curve(np.linspace(0, 1, steps + 1), ins), Curve(np.linspace(0, 1, steps + 1), dele)
