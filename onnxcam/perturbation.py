"""Perturbation CAMs: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM and occlusion sensitivity.

They all need many forward passes. One ``Scorer`` (``onnxcam.scoring``) batches them through
the model's single session: perturbed *images* run with ``onnxcam_mode = 1`` (the gradient
subgraph is skipped), perturbed *activations* run through the target's head-only path with
``onnxcam_mode = 2`` (the layers before the target are not run at all). Each method is one
function registered in ``METHODS`` (``onnxcam.registry``) with ``needs=("perturbation",)``,
outside ``all`` (``in_all=False``), and receives a ``PerturbationInputs``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .contract import (
    CLASS_INPUT,
    MODE_HEAD,
    MODE_INPUT,
    NCHW,
    Layout,
    TargetLayer,
)
from .errors import MethodError
from .postprocess import interpolation_matrix
from .registry import method
from .scoring import Progress, Scorer, Scores, image_rng


@dataclass(frozen=True)
class PerturbationOptions:
    """Knobs of the perturbation methods (defaults follow the peers named in docs/methods.md)."""

    batch_size: int = 32
    """Images per run, and perturbed inputs per run for perturbation methods."""
    scorecam_convention: str = "pytorch-grad-cam"
    """pytorch-grad-cam: upsample (align_corners) then min-max each mask; torchcam: min-max
    at feature resolution then upsample (half-pixel)."""
    scorecam_topk: int | None = None
    """Approximation: score only the K channels with the largest mean activation (others get
    weight 0 before the softmax is renormalised over the kept ones). None = every channel."""
    ss_samples: int = 35
    """SS-CAM noise draws."""
    ss_noise: float = 2.0
    """SS-CAM: standard deviation of the Gaussian noise added to each mask."""
    is_steps: int = 10
    """IS-CAM integration steps."""
    occlusion_patch: int = 32
    """Occlusion: side of the square patch, in model-input pixels."""
    occlusion_stride: int = 16
    """Occlusion: step between patches, in model-input pixels."""
    occlusion_baseline: float | None = None
    """Pixel value (0–255, all channels) put in the occluded patch; None = the dataset mean
    (0 in the model's normalised input)."""
    seed: int = 0
    """Seeds SS-CAM's noise; each image's draws are also keyed by its content, so an image's
    map does not depend on the other images of its batch. Seeds RISE's masks (the same masks
    for every image, as in the paper)."""
    fasterscorecam_n: int = 10
    """Faster Score-CAM: score only the N channels with the largest spatial variance
    (tf-keras-vis' ``max_N``)."""
    rise_masks: int = 4000
    """RISE: random masks per image (the paper's N for ResNet-50)."""
    rise_cells: int = 7
    """RISE: masks are drawn on a cells × cells grid, then upsampled (the paper's s)."""
    rise_p: float = 0.5
    """RISE: probability that a grid cell is kept (the paper's p)."""
    shapley_step: float = 0.01
    """ShapleyCAM: relative step ε of the central difference of head-only gradients that gives
    the Hessian-vector product, H·A ≈ [G_head((1+ε)A) − G_head((1−ε)A)] / (2ε) (truncation
    O(ε²), float32 rounding ~1e-7/ε, kinks crossed ∝ ε: measured in docs/methods.md)."""

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "ss_samples",
            "is_steps",
            "occlusion_patch",
            "occlusion_stride",
            "fasterscorecam_n",
            "rise_masks",
            "rise_cells",
        ):
            if getattr(self, name) < 1:
                raise MethodError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.rise_p <= 1:
            raise MethodError(f"rise_p must be in (0, 1], got {self.rise_p}")
        if not 0 < self.shapley_step < 1:
            raise MethodError(f"shapley_step must be in (0, 1), got {self.shapley_step}")
        if self.scorecam_topk is not None and self.scorecam_topk < 1:
            raise MethodError(f"scorecam_topk must be at least 1, got {self.scorecam_topk}")
        if self.scorecam_convention not in ("pytorch-grad-cam", "torchcam"):
            raise MethodError(
                f"unknown Score-CAM convention {self.scorecam_convention!r}: "
                "pytorch-grad-cam or torchcam"
            )


@dataclass
class PerturbationInputs:
    """What a perturbation method gets: per image, its model input, target activations and
    explained class, plus the scorer and the options."""

    x: np.ndarray
    """[B, ...] model inputs (in ``layout``, the model input's)."""
    A: np.ndarray | None
    """[B, C, h, w] target activations (NCHW), or None when not fetched."""
    classes: np.ndarray
    layer: TargetLayer
    scorer: Scorer
    options: PerturbationOptions
    layout: Layout = NCHW
    """The model input's layout."""
    G: np.ndarray | None = None
    """[B, C, h, w] gradients of the explained score at ``A`` (``perturbation_gradients``)."""

    @property
    def hw(self) -> tuple[int, int]:
        """The model input's (H, W)."""
        return self.layout.spatial(self.x.shape)

    def apply_mask(self, x1: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """One image [1, ...] × masks [m, H, W] → [m, ...] (broadcast over channels)."""
        return x1 * self.layout.per_position(masks).astype(np.float32)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# --- masks -----------------------------------------------------------------------------------
def _interp(n_out: int, n_in: int, align_corners: bool) -> np.ndarray:
    return interpolation_matrix(n_out, n_in, align_corners).astype(np.float32)


def _minmax_channels(a: np.ndarray) -> np.ndarray:
    """Per-channel (x − min) / (max − min + 1e-8), over the last two axes."""
    lo = a.min(axis=(-2, -1), keepdims=True)
    return (a - lo) / ((a - lo).max(axis=(-2, -1), keepdims=True) + 1e-8)


def score_masks(
    A1: np.ndarray, hw: tuple[int, int], convention: str
) -> Callable[[slice], np.ndarray]:
    """Masks of one image's channels [C, h, w] at input size, built lazily per channel slice."""
    h, w = A1.shape[-2:]
    A1 = A1.astype(np.float32)  # float32 like the peers: half the memory traffic of float64
    if convention == "pytorch-grad-cam":
        mh, mw = _interp(hw[0], h, True), _interp(hw[1], w, True)
        return lambda s: _minmax_channels(mh @ A1[s] @ mw.T)
    if convention == "torchcam":
        mh, mw = _interp(hw[0], h, False), _interp(hw[1], w, False)
        norm = _minmax_channels(A1)
        return lambda s: mh @ norm[s] @ mw.T
    raise MethodError(f"unknown Score-CAM convention {convention!r}: pytorch-grad-cam or torchcam")


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _weighted(w: np.ndarray, A1: np.ndarray) -> np.ndarray:
    return np.tensordot(w, A1, axes=(0, 0))


def _channels(p: PerturbationInputs, i: int) -> np.ndarray:
    """The channels Score-CAM-style methods score (all, or the top-K by mean activation)."""
    C = p.A.shape[1]
    k = p.options.scorecam_topk
    if k is None or k >= C:
        return np.arange(C)
    return np.sort(np.argsort(-p.A[i].mean(axis=(1, 2)))[:k])


def _top_variance(p: PerturbationInputs, i: int) -> np.ndarray:
    """Faster Score-CAM's channels: the ``fasterscorecam_n`` largest spatial variances (ties
    to the lower index), in channel order."""
    C = p.A.shape[1]
    n = p.options.fasterscorecam_n
    if n >= C:
        return np.arange(C)
    var = p.A[i].reshape(C, -1).astype(np.float64).var(axis=1)
    return np.sort(np.argsort(-var, kind="stable")[:n])


def _distinct_masks(masks_of: Callable[[slice], np.ndarray], n: int, step: int) -> np.ndarray:
    """For n masks built chunk by chunk, the index of the first bit-identical mask of each
    (``first[k] == k`` for a representative). Masks are hashed (BLAKE2b, 128-bit) and
    discarded, so memory stays at one chunk."""
    first = np.empty(n, dtype=np.int64)
    seen: dict[bytes, int] = {}
    for s in _chunks(n, step):
        for k, m in zip(range(s.start, s.stop), masks_of(s), strict=True):
            first[k] = seen.setdefault(hashlib.blake2b(m.tobytes(), digest_size=16).digest(), k)
    return first


def _distinct_masks_of(A1: np.ndarray, hw: tuple[int, int], convention: str, step: int):
    """``_distinct_masks`` for channels [C, h, w], cheaply: constant channels (dead ones) all
    have the all-zero mask and are grouped without building it; the others are grouped by their
    min-max-normalised feature map (49 numbers), and only channels sharing one are compared by
    their full masks — a mask is shared only when it is bit-identical."""
    flat = A1.reshape(len(A1), -1).astype(np.float32)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    constant = span[:, 0] == 0
    first = np.arange(len(A1))
    if constant.any():
        first[constant] = np.flatnonzero(constant)[0]
    live = np.flatnonzero(~constant)
    groups: dict[bytes, list[int]] = {}
    for k, row in zip(live, (flat[live] - lo[live]) / span[live], strict=True):
        groups.setdefault(row.tobytes(), []).append(int(k))
    for members in groups.values():
        if len(members) > 1:
            idx = np.array(members)
            masks_of = score_masks(A1[idx], hw, convention)
            first[idx] = idx[_distinct_masks(masks_of, len(idx), step)]
    return first


def _score_family(
    p: PerturbationInputs,
    variants: int,
    perturb,
    convention: str,
    deterministic: bool,
    choose: Callable[[PerturbationInputs, int], np.ndarray] = _channels,
) -> np.ndarray:
    """Shared loop of Score-CAM, SS-CAM and IS-CAM.

    For image i and kept channel c, ``perturb(masks, v, i)`` returns variant v of the masks;
    the masked inputs are scored (mode 1, batched); weights are the softmax over channels of the
    mean logit over variants (subtracting the unmasked logit, as torchcam does, would not change
    a softmax over channels). Returns raw maps [B, h, w].

    With ``deterministic`` perturbations, channels whose masks are bit-identical give the same
    masked inputs, hence the same scores: each distinct mask is scored once and its score
    shared — exact, not an approximation. That covers every dead channel (all-zero mask: more
    than half of EfficientNet-Lite0's head on real photos) and channels that are scaled copies
    of each other, typically those active at a single position (a few % of a ResNet-50's).
    """
    o = p.options
    out = []
    step = max(1, o.batch_size)
    for i in range(len(p.x)):
        x1, A1 = p.x[i : i + 1], p.A[i]
        chosen = choose(p, i)
        if deterministic:
            first = _distinct_masks_of(A1[chosen], p.hw, convention, step)
            reps = np.flatnonzero(first == np.arange(len(chosen)))
        else:
            first = reps = np.arange(len(chosen))
        masks_of = score_masks(A1[chosen[reps]], p.hw, convention)
        n_reps = len(reps)
        total = n_reps * variants

        def batches(masks_of=masks_of, n=n_reps, x1=x1, i=i):
            for v in range(variants):
                for s in _chunks(n, step):
                    yield p.apply_mask(x1, perturb(masks_of(s), v, i)).astype(np.float32)

        scores = p.scorer.images(batches(), total, int(p.classes[i]))
        mean_logit = scores.logit.reshape(variants, len(reps)).mean(axis=0)
        per_channel = np.empty(len(chosen))
        per_channel[reps] = mean_logit
        per_channel = per_channel[first]  # every channel gets its representative's score
        w = np.zeros(A1.shape[0])
        w[chosen] = _softmax(per_channel.astype(np.float64))
        out.append(_weighted(w, A1))
    return np.stack(out).astype(np.float32)


@method("scorecam", ("perturbation",), "perturbation", "arXiv:1910.01279", in_all=False)
def scorecam(p: PerturbationInputs) -> np.ndarray:
    """Score-CAM (Wang et al. 2020): w = softmax_c(f_c(x ⊙ M_k)), M_k = norm(up(A_k));
    L = Σ_k w_k A_k. Every channel by default (``scorecam_topk`` approximates)."""
    return _score_family(p, 1, lambda m, v, i: m, p.options.scorecam_convention, True)


@method("sscam", ("perturbation",), "perturbation", "arXiv:2006.14255", in_all=False)
def sscam(p: PerturbationInputs) -> np.ndarray:
    """SS-CAM (Wang et al. 2020): Score-CAM with each mask smoothed by Gaussian noise,
    averaged over ``ss_samples`` draws (σ = ``ss_noise``, seeded); masks and noise follow
    torchcam's SSCAM (min-max at feature resolution, then upsample)."""
    rngs: dict[int, np.random.Generator] = {}

    def noisy(m: np.ndarray, v: int, i: int) -> np.ndarray:
        if i not in rngs:
            rngs[i] = image_rng(p.options.seed, p.x[i])
        return m + rngs[i].normal(0, p.options.ss_noise, m.shape)

    return _score_family(p, p.options.ss_samples, noisy, "torchcam", False)


@method("iscam", ("perturbation",), "perturbation", "arXiv:2010.03023", in_all=False)
def iscam(p: PerturbationInputs) -> np.ndarray:
    """IS-CAM (Naidu et al. 2020): Score-CAM with masks integrated over ``is_steps`` steps,
    step i scaling the mask by Σ_{j≤i} j/N (torchcam's ISCAM)."""
    n = p.options.is_steps
    coeff = np.cumsum(np.arange(1, n + 1) / n)
    return _score_family(p, n, lambda m, v, i: coeff[v] * m, "torchcam", True)


@method("fasterscorecam", ("perturbation",), "perturbation", "arXiv:1910.01279", in_all=False)
def fasterscorecam(p: PerturbationInputs) -> np.ndarray:
    """Faster Score-CAM (tf-keras-vis' ``max_N``, Score-CAM arXiv:1910.01279): Score-CAM on the
    N = ``fasterscorecam_n`` channels of largest spatial variance only; w = softmax over those
    N of f_c(x ⊙ M_k), 0 elsewhere; L = Σ_k w_k A_k. N forward passes per image."""
    return _score_family(
        p, 1, lambda m, v, i: m, p.options.scorecam_convention, True, _top_variance
    )


# --- RISE ------------------------------------------------------------------------------------
def rise_draws(
    n: int, cells: int, prob: float, hw: tuple[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """RISE's random draws: grids [n, cells, cells] (1 with probability ``prob``) and shifts
    [n, 2] (row, column in [0, cell size)), from ``default_rng(seed)`` in that order."""
    rng = np.random.default_rng(seed)
    grids = (rng.random((n, cells, cells)) < prob).astype(np.float32)
    cell = np.ceil(np.asarray(hw) / cells).astype(np.int64)
    shifts = rng.integers(0, cell, size=(n, 2))
    return grids, shifts


def rise_masks(grids: np.ndarray, shifts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """RISE masks [n, H, W]: each grid upsampled bilinearly (half-pixel centres, edges clamped)
    to (cells + 1) × the cell size, then cropped at its shift."""
    cells = grids.shape[1]
    H, W = hw
    ch, cw = (int(np.ceil(H / cells)), int(np.ceil(W / cells)))
    mh = _interp((cells + 1) * ch, cells, False)
    mw = _interp((cells + 1) * cw, cells, False)
    rows = mh[shifts[:, 0, None] + np.arange(H)]  # [n, H, cells]
    cols = mw[shifts[:, 1, None] + np.arange(W)]  # [n, W, cells]
    return rows @ grids @ cols.transpose(0, 2, 1)


@method(
    "rise",
    ("perturbation",),
    "perturbation",
    "arXiv:1806.07421",
    in_all=False,
    map_size="input",
)
def rise(p: PerturbationInputs) -> np.ndarray:
    """RISE (Petsiuk et al. 2018), black-box: N = ``rise_masks`` random masks M_n (a
    ``rise_cells``² grid, cells kept with probability p = ``rise_p``, upsampled with a random
    shift: ``rise_masks``), P_n the class probability of x ⊙ M_n;
    L = Σ_n P_n M_n / (N · p). Seeded (``seed``): the same masks for every image.
    N forward passes per image; maps at the model-input resolution."""
    o = p.options
    hw = p.hw
    grids, shifts = rise_draws(o.rise_masks, o.rise_cells, o.rise_p, hw, o.seed)
    step = max(1, o.batch_size)
    out = []
    for i in range(len(p.x)):
        x1 = p.x[i : i + 1]

        def batches(x1=x1):
            for s in _chunks(len(grids), step):
                yield p.apply_mask(x1, rise_masks(grids[s], shifts[s], hw))

        probs = p.scorer.images(batches(), len(grids), int(p.classes[i])).prob
        acc = np.zeros(hw, np.float64)
        for s in _chunks(len(grids), step):
            m = rise_masks(grids[s], shifts[s], hw)
            acc += np.tensordot(probs[s].astype(np.float64), m, axes=(0, 0))
        out.append(acc / (len(grids) * o.rise_p))
    return np.stack(out).astype(np.float32)


# --- ShapleyCAM ------------------------------------------------------------------------------
@method(
    "shapleycam",
    ("perturbation", "perturbation_gradients"),
    "perturbation",
    "arXiv:2501.06261",
    in_all=False,
)
def shapleycam(p: PerturbationInputs) -> np.ndarray:
    """ShapleyCAM (Cai et al. 2025): w_c = mean_ij (G − ½ H·A)_cij, L = Σ_c w_c A_c, with
    H the Hessian of the score with respect to A (pytorch-grad-cam's ``ShapleyCAM``).

    The graph gives G (mode 0) and, in mode 2, the head-only gradient G_head
    (``onnxcam_head_gradient_k``, ``export --head-gradients``); the Hessian-vector product is
    its central difference along A: H·A ≈ [G_head((1+ε)A) − G_head((1−ε)A)] / (2ε),
    ε = ``shapley_step``. One head run of 2 rows per image, batched over the images. A
    piecewise-linear head (``head_linear``: ReLU CNNs) has H·A = 0 almost everywhere — what
    autograd gives — and no head run: the difference would cross its kinks."""
    o = p.options
    layer = p.layer
    if layer.head_linear:  # a piecewise-linear (ReLU) head: H·A = 0, ShapleyCAM is Grad-CAM
        G = p.G.astype(np.float64).mean(axis=(2, 3))
        return np.stack([_weighted(w, A) for w, A in zip(G, p.A, strict=True)]).astype(np.float32)
    if not layer.head_gradient:
        why = layer.head_note if not layer.head_input else None
        raise MethodError(
            f"shapleycam needs the head-only gradient of layer {layer.name!r}: "
            + (f"it has no head-only path ({why})" if why else "export with --head-gradients")
        )
    eps = float(o.shapley_step)
    spec = p.scorer.info.input
    layout = layer.layout
    scale = np.array([1 + eps, 1 - eps], np.float32)[None, :, None, None, None]
    out = []
    for s in _chunks(len(p.A), max(1, o.batch_size // 2)):
        A = p.A[s].astype(np.float32)
        rows = (A[:, None] * scale).reshape(-1, *A.shape[1:])  # image i: rows 2i, 2i + 1
        feeds = {
            spec.name: spec.feed(p.x[s]),
            CLASS_INPUT: np.asarray(p.classes[s], dtype=np.int64),
            MODE_INPUT: np.array(MODE_HEAD, dtype=np.int64),
            layer.head_input: np.ascontiguousarray(layout.from_nchw(rows)),
        }
        (g,) = p.scorer.run(feeds, [layer.head_gradient])
        g = layout.to_nchw(g).astype(np.float64).reshape(len(A), 2, *A.shape[1:])
        hvp = (g[:, 0] - g[:, 1]) / (2 * eps)
        w = (p.G[s].astype(np.float64) - 0.5 * hvp).mean(axis=(2, 3))
        out.extend(_weighted(wi, Ai) for wi, Ai in zip(w, A, strict=True))
    return np.stack(out).astype(np.float32)


@method(
    "ablationcam",
    ("perturbation",),
    "perturbation",
    "WACV 2020 (Desai & Ramaswamy)",
    in_all=False,
)
def ablationcam(p: PerturbationInputs) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y − y_k) / y, y_k the class score with
    channel k of the target activations set to 0; L = Σ_k w_k A_k. Runs only the target's
    head (graph contract v2 head-only path), never the layers before the target."""
    o = p.options
    out = []
    layout = p.layer.layout
    for i in range(len(p.A)):
        A1 = p.A[i]
        C = A1.shape[0]
        feed1 = layout.from_nchw(A1)  # the head takes the layer's own layout
        # ablating an all-zero channel changes nothing: its weight is exactly 0, skip the run
        live = np.flatnonzero(np.abs(A1.reshape(C, -1)).max(axis=1) > 0)

        def batches(feed1=feed1, live=live):
            for s in _chunks(len(live), max(1, o.batch_size)):
                ch = live[s]
                a = np.repeat(feed1[None], len(ch), axis=0)
                layout.to_nchw(a)[np.arange(len(ch)), ch] = 0  # (a view: zeroes a's channels)
                yield a

        cls = int(p.classes[i])
        x1 = p.x[i : i + 1]
        base = float(p.scorer.head(p.layer, iter([feed1[None]]), 1, cls, x1).logit[0])
        w = np.zeros(C)
        if len(live) and base != 0:
            w[live] = (base - p.scorer.head(p.layer, batches(), len(live), cls, x1).logit) / base
        out.append(_weighted(w, A1))
    return np.stack(out).astype(np.float32)


def _positions(n: int, patch: int, stride: int) -> list[int]:
    last = max(n - patch, 0)
    pos = list(range(0, last + 1, max(1, stride)))
    if pos[-1] != last:
        pos.append(last)
    return pos


@method(
    "occlusion",
    ("perturbation",),
    "perturbation",
    "arXiv:1311.2901",
    in_all=False,
    map_size="input",
)
def occlusion(p: PerturbationInputs) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2014): slide a ``occlusion_patch`` square with
    ``occlusion_stride`` over the input, fill it with the baseline, and record the drop of the
    class probability; each pixel gets the mean drop of the patches covering it.
    Returns maps at the model-input resolution (not the feature resolution)."""
    o = p.options
    H, W = p.hw
    ph, pw = min(o.occlusion_patch, H), min(o.occlusion_patch, W)
    ys, xs = _positions(H, ph, o.occlusion_stride), _positions(W, pw, o.occlusion_stride)
    spots = [(y, x) for y in ys for x in xs]
    info = p.scorer.info
    spec = info.input
    if o.occlusion_baseline is None:
        fill = np.zeros(spec.channels, np.float32)
    else:
        fill = (o.occlusion_baseline * spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
        fill = np.broadcast_to(np.asarray(fill, np.float32), (spec.channels,))
    out = []
    for i in range(len(p.x)):
        x1 = p.x[i]
        cls = int(p.classes[i])
        base = p.scorer.images(iter([p.x[i : i + 1]]), 1, cls).prob[0]

        def batches(x1=x1):
            for s in _chunks(len(spots), max(1, o.batch_size)):
                b = np.repeat(x1[None], s.stop - s.start, axis=0)
                view = p.layout.to_nchw(b)  # writes through to b
                for j, (y, x) in enumerate(spots[s]):
                    view[j, :, y : y + ph, x : x + pw] = fill[:, None, None]
                yield b

        probs = p.scorer.images(batches(), len(spots), cls).prob
        acc = np.zeros((H, W))
        cnt = np.zeros((H, W))
        for (y, x), pr in zip(spots, probs, strict=True):
            acc[y : y + ph, x : x + pw] += base - pr
            cnt[y : y + ph, x : x + pw] += 1
        out.append(np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0))
    return np.stack(out).astype(np.float32)


__all__ = [  # Scorer, Scores, Progress, image_rng live in onnxcam.scoring (re-exported)
    "PerturbationInputs",
    "PerturbationOptions",
    "Progress",
    "Scorer",
    "Scores",
    "image_rng",
]
