"""Perturbation CAMs: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM and occlusion sensitivity.

They all need many forward passes. One ``Scorer`` batches them through the model's single
session: perturbed *images* run with ``onnxcam_mode = 1`` (the gradient subgraph is skipped),
perturbed *activations* run through the target's head-only path with ``onnxcam_mode = 2`` (the
layers before the target are not run at all). Each method is one function registered in
``METHODS`` with ``needs=("perturbation",)`` and receives a ``PerturbationInputs``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import contract
from .errors import MethodError
from .methods import method
from .postprocess import interpolation_matrix

Progress = Callable[[int, int, str], None]
"""progress(done, total, label): called after every scored batch."""


@dataclass(frozen=True)
class PerturbationOptions:
    """Knobs of the perturbation methods (defaults follow the peers named in docs/methods.md)."""

    batch_size: int = 32
    scorecam_convention: str = "pytorch-grad-cam"
    """pytorch-grad-cam: upsample (align_corners) then min-max each mask; torchcam: min-max
    at feature resolution then upsample (half-pixel)."""
    scorecam_topk: int | None = None
    """Approximation: score only the K channels with the largest mean activation (others get
    weight 0 before the softmax is renormalised over the kept ones). None = every channel."""
    ss_samples: int = 35
    ss_noise: float = 2.0
    is_steps: int = 10
    occlusion_patch: int = 32
    occlusion_stride: int = 16
    occlusion_baseline: float | None = None
    """Pixel value (0–255, all channels) put in the occluded patch; None = the dataset mean
    (0 in the model's normalised input)."""
    seed: int = 0
    """Seeds SS-CAM's noise; each image's draws are also keyed by its content, so an image's
    map does not depend on the other images of its batch."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "ss_samples", "is_steps", "occlusion_patch", "occlusion_stride"):
            if getattr(self, name) < 1:
                raise MethodError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.scorecam_topk is not None and self.scorecam_topk < 1:
            raise MethodError(f"scorecam_topk must be at least 1, got {self.scorecam_topk}")
        if self.scorecam_convention not in ("pytorch-grad-cam", "torchcam"):
            raise MethodError(
                f"unknown Score-CAM convention {self.scorecam_convention!r}: "
                "pytorch-grad-cam or torchcam"
            )


def image_rng(seed: int, x: np.ndarray) -> np.random.Generator:
    """A generator keyed by the seed and the image's content (batch-independent draws)."""
    digest = zlib.crc32(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return np.random.default_rng([seed, digest])


@dataclass
class Scores:
    """Per scored input: the explained class's logit and probability."""

    logit: np.ndarray
    prob: np.ndarray


@dataclass
class Scorer:
    """Batched "score these perturbed inputs" against one session."""

    run: Callable[[dict, list[str]], list[np.ndarray]]
    info: object
    batch_size: int = 32
    progress: Progress | None = None
    label: str = ""
    _done: int = field(default=0, init=False)

    def _probs(self, logits: np.ndarray, cls: np.ndarray) -> np.ndarray:
        return self.info.probabilities(logits)[np.arange(len(cls)), cls]

    def images(self, batches: Iterator[np.ndarray], total: int, cls: int) -> Scores:
        """Score perturbed model inputs (mode 1, no gradients); ``batches`` yields chunks."""
        logits, probs = [], []
        self._done = 0
        for x in batches:
            c = np.full(len(x), cls, dtype=np.int64)
            feeds = {
                self.info.input.name: x.astype(np.float32, copy=False),
                contract.CLASS_INPUT: c,
                contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64),
            }
            out, score = self.run(feeds, [self.info.logits_output, contract.SCORE_OUTPUT])
            logits.append(score)
            probs.append(self._probs(out, c))
            self._tick(len(x), total)
        return Scores(np.concatenate(logits), np.concatenate(probs))

    def head(self, layer, acts: Iterator[np.ndarray], total: int, cls: int) -> Scores:
        """Score perturbed activations of ``layer`` through its head only (mode 2)."""
        if not getattr(layer, "head_input", None):
            raise MethodError(
                f"layer {layer.name!r} has no head-only path in this export "
                f"({getattr(layer, 'head_note', None) or 're-export with this onnxcam version'})"
            )
        spec = self.info.input
        shape = (
            (1, spec.channels, spec.height, spec.width)
            if spec.layout == contract.LAYOUT_NCHW
            else (1, spec.height, spec.width, spec.channels)
        )
        dummy = np.zeros(shape, np.float32)  # the image branch is not what is scored here
        logits, probs = [], []
        self._done = 0
        for a in acts:
            feeds = {
                spec.name: dummy,
                contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64),
                layer.head_input: a.astype(np.float32, copy=False),
            }
            (rows,) = self.run(feeds, [layer.head_output])
            c = np.full(len(a), cls, dtype=np.int64)
            logits.append(rows[np.arange(len(a)), c])
            probs.append(self._probs(rows, c))
            self._tick(len(a), total)
        return Scores(np.concatenate(logits), np.concatenate(probs))

    def _tick(self, n: int, total: int) -> None:
        self._done += n
        if self.progress:
            self.progress(self._done, total, self.label)


@dataclass
class PerturbationInputs:
    """What a perturbation method gets: per image, its model input, target activations and
    explained class, plus the scorer and the options."""

    x: np.ndarray
    """[B, ...] model inputs (the model's layout)."""
    A: np.ndarray
    """[B, C, h, w] target activations (NCHW), or None when not fetched."""
    classes: np.ndarray
    layer: object
    scorer: Scorer
    options: PerturbationOptions
    nchw: bool = True

    @property
    def hw(self) -> tuple[int, int]:
        s = self.x.shape
        return (s[2], s[3]) if self.nchw else (s[1], s[2])

    def apply_mask(self, x1: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """One image [1, ...] × masks [m, H, W] → [m, ...] (broadcast over channels)."""
        return x1 * (masks[:, None] if self.nchw else masks[..., None]).astype(np.float32)


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
    p: PerturbationInputs, variants: int, perturb, convention: str, deterministic: bool
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
        chosen = _channels(p, i)
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


@method("scorecam", ("perturbation",), "perturbation", "arXiv:1910.01279")
def scorecam(p: PerturbationInputs) -> np.ndarray:
    """Score-CAM (Wang et al. 2020): w = softmax_c(f_c(x ⊙ M_k)), M_k = norm(up(A_k));
    L = Σ_k w_k A_k. Every channel by default (``scorecam_topk`` approximates)."""
    return _score_family(p, 1, lambda m, v, i: m, p.options.scorecam_convention, True)


@method("sscam", ("perturbation",), "perturbation", "arXiv:2006.14255")
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


@method("iscam", ("perturbation",), "perturbation", "arXiv:2010.03023")
def iscam(p: PerturbationInputs) -> np.ndarray:
    """IS-CAM (Naidu et al. 2020): Score-CAM with masks integrated over ``is_steps`` steps,
    step i scaling the mask by Σ_{j≤i} j/N (torchcam's ISCAM)."""
    n = p.options.is_steps
    coeff = np.cumsum(np.arange(1, n + 1) / n)
    return _score_family(p, n, lambda m, v, i: coeff[v] * m, "torchcam", True)


@method("ablationcam", ("perturbation",), "perturbation", "WACV 2020 (Desai & Ramaswamy)")
def ablationcam(p: PerturbationInputs) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y − y_k) / y, y_k the class score with
    channel k of the target activations set to 0; L = Σ_k w_k A_k. Runs only the target's
    head (graph contract v2 head-only path), never the layers before the target."""
    o = p.options
    out = []
    layout_nhwc = p.layer.layout == contract.LAYOUT_NHWC
    for i in range(len(p.A)):
        A1 = p.A[i]
        C = A1.shape[0]
        feed1 = A1.transpose(1, 2, 0) if layout_nhwc else A1
        # ablating an all-zero channel changes nothing: its weight is exactly 0, skip the run
        live = np.flatnonzero(np.abs(A1.reshape(C, -1)).max(axis=1) > 0)

        def batches(feed1=feed1, live=live):
            for s in _chunks(len(live), max(1, o.batch_size)):
                ch = live[s]
                a = np.repeat(feed1[None], len(ch), axis=0)
                if layout_nhwc:
                    a[np.arange(len(ch)), :, :, ch] = 0
                else:
                    a[np.arange(len(ch)), ch] = 0
                yield a

        cls = int(p.classes[i])
        base = float(p.scorer.head(p.layer, iter([feed1[None]]), 1, cls).logit[0])
        w = np.zeros(C)
        if len(live) and base != 0:
            w[live] = (base - p.scorer.head(p.layer, batches(), len(live), cls).logit) / base
        out.append(_weighted(w, A1))
    return np.stack(out).astype(np.float32)


def _positions(n: int, patch: int, stride: int) -> list[int]:
    last = max(n - patch, 0)
    pos = list(range(0, last + 1, max(1, stride)))
    if pos[-1] != last:
        pos.append(last)
    return pos


@method("occlusion", ("perturbation",), "perturbation", "arXiv:1311.2901")
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
                for j, (y, x) in enumerate(spots[s]):
                    if p.nchw:
                        b[j, :, y : y + ph, x : x + pw] = fill[:, None, None]
                    else:
                        b[j, y : y + ph, x : x + pw, :] = fill
                yield b

        probs = p.scorer.images(batches(), len(spots), cls).prob
        acc = np.zeros((H, W))
        cnt = np.zeros((H, W))
        for (y, x), pr in zip(spots, probs, strict=True):
            acc[y : y + ph, x : x + pw] += base - pr
            cnt[y : y + ph, x : x + pw] += 1
        out.append(np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0))
    return np.stack(out).astype(np.float32)


__all__ = ["PerturbationInputs", "PerturbationOptions", "Scorer", "Scores"]
