"""What to explain: each target is a score S(z) of the model's logits z, explained through the
graph's seed input (contract ``onnxcam_seed``).

The exported backward pass is linear in the seed, so the gradient of *any* differentiable
S(z) with respect to a layer is the backward pass seeded with ∇_z S(z) (the chain rule). A
target therefore says two things: its seed ``weights(z)`` = ∇_z S at the image's logits and
its value ``score(z)``. Targets whose seed does not depend on z (a class, a contrast, a sum of
classes, a region, a detection) take one run; the others (a probability, FinerCAM's
references, a cosine similarity) take a forward run for z first (``needs_logits``).

Every seed is one image's row: ``[K]`` for a classifier, ``[K, H, W]`` for a segmenter,
``[K, N]`` (class logits over anchors) for a detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MethodError


@dataclass(frozen=True)
class Target:
    """A score S(z) of one image's logits z (its subclasses say which)."""

    needs_logits = False
    """The seed depends on z: the runtime runs the image forward first."""

    def weights(self, z: np.ndarray) -> np.ndarray:
        """∇_z S(z): the seed of this target for logits ``z`` (float64)."""
        raise NotImplementedError

    def score(self, z: np.ndarray) -> float:
        """S(z)."""
        return float(np.sum(self.weights(z) * z))

    def cls(self, z: np.ndarray) -> int:
        """The class the explanation is reported under."""
        raise NotImplementedError

    def check(self, num_classes: int | None) -> None:
        """A one-line ``MethodError`` for a class out of range."""
        for c in self.classes():
            if num_classes is not None and not 0 <= c < num_classes:
                raise MethodError(f"class {c} is out of range (0..{num_classes - 1})")

    def classes(self) -> list[int]:
        return []

    def for_model(self, activation: str | None) -> Target:
        """This target for a model whose output applies ``activation`` (it may settle a
        choice left open: ``Probability``'s sigmoid)."""
        return self


def _onehot(z: np.ndarray, c: int) -> np.ndarray:
    w = np.zeros(z.shape, dtype=np.float64)
    w[c] = 1.0
    return w


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@dataclass(frozen=True)
class ClassLogit(Target):
    """S = z[c] (pytorch-grad-cam's ``ClassifierOutputTarget``; ``c=None``: the top class).
    A binary head's class 0 is its negative class (−z)."""

    c: int | None = None

    def weights(self, z: np.ndarray) -> np.ndarray:
        return _onehot(z, self.cls(z))

    def cls(self, z: np.ndarray) -> int:
        return int(np.argmax(z)) if self.c is None else self.c

    def classes(self) -> list[int]:
        return [] if self.c is None else [self.c]

    @property
    def needs_logits(self) -> bool:  # type: ignore[override]
        return self.c is None


@dataclass(frozen=True)
class Probability(Target):
    """S = softmax(z)[c] (``ClassifierOutputSoftmaxTarget``); with ``sigmoid`` (multi-label
    and binary heads) S = σ(z[c]). ``sigmoid=None``: as the model's own output does (a binary
    head's two logits [−z, z] then give σ(±z), the probabilities its predictions report)."""

    c: int | None = None
    sigmoid: bool | None = None
    needs_logits = True

    def for_model(self, activation: str | None) -> Probability:
        if self.sigmoid is not None:
            return self
        return Probability(self.c, activation == "sigmoid")

    def weights(self, z: np.ndarray) -> np.ndarray:
        c = self.cls(z)
        if self.sigmoid:
            p = 1.0 / (1.0 + np.exp(-z[c]))
            return _onehot(z, c) * p * (1.0 - p)
        p = _softmax(z.astype(np.float64))
        return p[c] * (_onehot(z, c) - p)

    def score(self, z: np.ndarray) -> float:
        c = self.cls(z)
        if self.sigmoid:
            return float(1.0 / (1.0 + np.exp(-z[c])))
        return float(_softmax(z.astype(np.float64))[c])

    def cls(self, z: np.ndarray) -> int:
        return int(np.argmax(z)) if self.c is None else self.c

    def classes(self) -> list[int]:
        return [] if self.c is None else [self.c]


@dataclass(frozen=True)
class Contrast(Target):
    """S = z[a] − z[b]: why class a rather than class b."""

    a: int
    b: int

    def weights(self, z: np.ndarray) -> np.ndarray:
        return _onehot(z, self.a) - _onehot(z, self.b)

    def cls(self, z: np.ndarray) -> int:
        return self.a

    def classes(self) -> list[int]:
        return [self.a, self.b]


@dataclass(frozen=True)
class ClassSum(Target):
    """S = Σ_c z[c] over ``classes`` (a group of classes: "any dog")."""

    members: tuple[int, ...]
    needs_logits = True  # the reported class is the member with the highest logit

    def weights(self, z: np.ndarray) -> np.ndarray:
        return sum((_onehot(z, c) for c in self.members), np.zeros(z.shape))

    def cls(self, z: np.ndarray) -> int:
        return self.members[int(np.argmax(z[list(self.members)]))]

    def classes(self) -> list[int]:
        return list(self.members)


@dataclass(frozen=True)
class Finer(Target):
    """FinerCAM (arXiv 2501.11309): the main class against its most similar classes.

    ``weighting="mean"`` (torchcam's ``FinerCAM``): S = z[m] − α · mean_j z[r_j], the
    references r_j the ``references`` classes whose logits are closest to z[m] (α = γ = 0.6).
    ``weighting="softmax"`` (pytorch-grad-cam's ``FinerCAM`` / ``FinerWeightedTarget``):
    S = Σ_j p_j (z[m] − α z[r_j]) / (Σ_j p_j + 1e-9) with p = softmax(z), differentiated
    through p as well (α = 1 there), the references ranked 1..3 by |z − z[m]|.
    ``main=None``: the top class; ``similar``: the reference classes (else found from z)."""

    main: int | None = None
    similar: tuple[int, ...] | None = None
    alpha: float = 0.6
    references: int = 3
    weighting: str = "mean"
    needs_logits = True

    def __post_init__(self) -> None:
        if self.weighting not in ("mean", "softmax"):
            raise MethodError("FinerCAM weighting must be 'mean' (torchcam) or 'softmax'")

    def cls(self, z: np.ndarray) -> int:
        return int(np.argmax(z)) if self.main is None else self.main

    def refs(self, z: np.ndarray) -> list[int]:
        """The reference classes for logits ``z``."""
        if self.similar is not None:
            return list(self.similar)
        m = self.cls(z)
        d = np.abs(z.astype(np.float64) - z[m])
        d[m] = np.inf
        n = min(self.references, len(z) - 1)
        return [int(j) for j in np.argsort(d, kind="stable")[:n]]

    def weights(self, z: np.ndarray) -> np.ndarray:
        m, refs = self.cls(z), self.refs(z)
        if self.weighting == "mean":
            w = _onehot(z, m)
            for j in refs:
                w -= self.alpha / len(refs) * _onehot(z, j)
            return w
        p = _softmax(z.astype(np.float64))
        d = [z[m] - self.alpha * z[j] for j in refs]
        num = sum(p[j] * dj for j, dj in zip(refs, d, strict=True))
        den = sum(p[j] for j in refs) + 1e-9
        dnum = np.zeros(z.shape)
        dden = np.zeros(z.shape)
        for j, dj in zip(refs, d, strict=True):
            dp = p[j] * (_onehot(z, j) - p)  # ∂p_j/∂z
            dnum += dp * dj + p[j] * (_onehot(z, m) - self.alpha * _onehot(z, j))
            dden += dp
        return (dnum * den - num * dden) / den**2

    def score(self, z: np.ndarray) -> float:
        m, refs = self.cls(z), self.refs(z)
        if self.weighting == "mean":
            return float(z[m] - self.alpha * np.mean([z[j] for j in refs]))
        p = _softmax(z.astype(np.float64))
        num = sum(p[j] * (z[m] - self.alpha * z[j]) for j in refs)
        return float(num / (sum(p[j] for j in refs) + 1e-9))

    def classes(self) -> list[int]:
        return [c for c in [self.main, *(self.similar or ())] if c is not None]


@dataclass(frozen=True)
class Similarity(Target):
    """S = cos(z, r): an embedding model's output against a reference vector ``r``
    (pytorch-grad-cam's ``SimilarityToConceptTarget``); r from ``Explainer.embed`` of a
    reference image, or a ``.npy`` file."""

    reference: tuple[float, ...]
    needs_logits = True

    def _ref(self, z: np.ndarray) -> np.ndarray:
        r = np.asarray(self.reference, dtype=np.float64)
        if r.size != z.size:
            raise MethodError(f"a reference vector of {r.size} values; the output has {z.size}")
        return r.reshape(z.shape)

    def weights(self, z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        r = self._ref(z)
        nz, nr = np.linalg.norm(z), np.linalg.norm(r)
        if nz == 0 or nr == 0:
            raise MethodError("similarity to a zero vector is undefined")
        cos = float(z @ r / (nz * nr))
        return r / (nz * nr) - cos * z / nz**2

    def score(self, z: np.ndarray) -> float:
        z = z.astype(np.float64)
        r = self._ref(z)
        return float(z @ r / (np.linalg.norm(z) * np.linalg.norm(r)))

    def cls(self, z: np.ndarray) -> int:
        return int(np.argmax(z))

    @classmethod
    def of(cls, reference: np.ndarray | Sequence[float]) -> Similarity:
        return cls(tuple(float(v) for v in np.asarray(reference, dtype=np.float64).ravel()))


@dataclass(frozen=True)
class Region(Target):
    """A segmenter's class c summed over a mask: S = Σ_{(y,x) ∈ mask} z[c, y, x]
    (pytorch-grad-cam's ``SemanticSegmentationTarget``). ``mask=None``: the pixels predicted
    as c (the graph's default). ``c=None``: the class of the largest predicted region."""

    c: int | None = None
    mask: np.ndarray | None = None

    @property
    def needs_logits(self) -> bool:  # type: ignore[override]
        return True

    def region(self, z: np.ndarray) -> np.ndarray:
        if self.mask is not None:
            m = np.asarray(self.mask, dtype=np.float32)
            if m.ndim != 2:
                raise MethodError(f"a mask must be 2-D (H, W), got shape {m.shape}")
            if m.shape != z.shape[1:]:  # an image-sized mask on the model's map: nearest
                import cv2

                size = (z.shape[2], z.shape[1])
                m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
            return m.astype(np.float64)
        return (np.argmax(z, axis=0) == self.cls(z)).astype(np.float64)

    def weights(self, z: np.ndarray) -> np.ndarray:
        region = self.region(z)
        if not region.any():
            raise MethodError(
                f"class {self.cls(z)} has no pixel in the region (none predicted as it): "
                "give a --mask, or another --class"
            )
        w = np.zeros(z.shape)
        w[self.cls(z)] = region
        return w

    def cls(self, z: np.ndarray) -> int:
        if self.c is not None:
            return self.c
        counts = np.bincount(np.argmax(z, axis=0).ravel(), minlength=z.shape[0])
        return int(np.argmax(counts))

    def classes(self) -> list[int]:
        return [] if self.c is None else [self.c]


@dataclass(frozen=True)
class Detection(Target):
    """One detection of a YOLOv8/11-style detector: S = z[c, anchor] — its class logit (the
    score before the sigmoid, what ultralytics' LayerCAM differentiates), for
    ``Explainer.detect(targets=...)``. The graph's own selection (NMS, top-K) needs none."""

    anchor: int
    c: int

    def weights(self, z: np.ndarray) -> np.ndarray:
        if not 0 <= self.anchor < z.shape[-1]:
            raise MethodError(f"anchor {self.anchor} is out of range (0..{z.shape[-1] - 1})")
        w = np.zeros(z.shape)
        w[self.c, self.anchor] = 1.0
        return w

    def cls(self, z: np.ndarray) -> int:
        return self.c

    def classes(self) -> list[int]:
        return [self.c]


__all__ = [
    "ClassLogit",
    "ClassSum",
    "Contrast",
    "Detection",
    "Finer",
    "Probability",
    "Region",
    "Similarity",
    "Target",
    "TargetRequest",
]


@dataclass(frozen=True)
class TargetRequest:
    """A target as the command line states it (``onnxcam run`` / ``report`` options, declared
    once in ``onnxcam.options``), resolved against a model by ``build``."""

    cls: int | str | None = None
    """``--class``: the class (index or label name); the top class when None."""
    probability: bool = False
    """``--probability``: explain the class's probability instead of its logit."""
    finer: str | None = None
    """``--finer [K,K,…]``: FinerCAM against these classes ("" = the closest by logit)."""
    finer_alpha: float = 0.6
    finer_weighting: str = "mean"
    contrast: int | str | None = None
    """``--contrast B``: the class against class B."""
    classes: str | None = None
    """``--sum A,B,…``: the sum of these classes' logits."""
    similar_to: str | None = None
    """``--similar-to FILE``: an image or a ``.npy`` vector; cosine of the output to it."""
    mask: str | None = None
    """``--mask FILE``: a segmenter's region (a mask image, non-zero = inside)."""

    def given(self) -> bool:
        """Whether anything beyond ``--class`` was asked (else the classic class path)."""
        return any(
            v not in (None, False)
            for v in (
                self.probability,
                self.finer,
                self.contrast,
                self.classes,
                self.similar_to,
                self.mask,
            )
        )

    def build(self, explainer) -> Target | None:
        """The ``Target`` for ``explainer``'s model (None: the class path, ``--class``)."""
        info = explainer.info
        chosen = [
            n
            for n, v in (
                ("--probability", self.probability),
                ("--finer", self.finer is not None),
                ("--contrast", self.contrast is not None),
                ("--sum", self.classes is not None),
                ("--similar-to", self.similar_to is not None),
            )
            if v
        ]
        if len(chosen) > 1:
            raise MethodError(f"choose one target: {' and '.join(chosen)} were both given")
        c = None if self.cls is None else info.class_index(self.cls)
        if info.task == "segment":
            if chosen:
                raise MethodError(
                    f"{chosen[0]} explains a classifier; a segmenter takes --class/--mask"
                )
            return Region(c, None if self.mask is None else _read_mask(self.mask))
        if self.mask is not None:
            raise MethodError("--mask explains a segmenter's region; this model is a " + info.task)
        if not chosen:
            return None
        if self.probability:
            return Probability(c)
        if self.finer is not None:
            similar = tuple(info.class_index(v) for v in self.finer.split(",") if v.strip())
            return Finer(c, similar or None, self.finer_alpha, weighting=self.finer_weighting)
        if self.contrast is not None:
            if c is None:
                raise MethodError("--contrast B explains --class A against B: give --class too")
            return Contrast(c, info.class_index(self.contrast))
        if self.classes is not None:
            members = tuple(info.class_index(v) for v in self.classes.split(",") if v.strip())
            if not members:
                raise MethodError("--sum needs at least one class")
            return ClassSum(members)
        return Similarity.of(_reference(explainer, self.similar_to))


def _read_mask(path: str) -> np.ndarray:
    from .image import read_image

    return (read_image(path).max(axis=2) > 0).astype(np.float64)


def _reference(explainer, path: str) -> np.ndarray:
    """A reference embedding: a ``.npy`` vector, or the model's output for an image."""
    if str(path).lower().endswith(".npy"):
        try:
            return np.load(path).astype(np.float64).ravel()
        except (OSError, ValueError) as e:
            raise MethodError(f"cannot read reference vector {path}: {e}") from None
    (z,) = explainer.embed([path])
    return z
