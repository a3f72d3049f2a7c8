"""``Terms``: one target layer's method inputs as NCHW arrays, and the terms several CAM methods
share, each computed on first use — the host twin of ``export/heatmaps._Terms``.

The engine builds one ``Terms`` per target layer and batch, and every requested method reads
it, so a term two methods share (``ReLU(G)``, ``G ⊙ A``, ``Σ_ij A``) is computed once. The GAP
shortcut lives here and nowhere else: when the exporter proved the gradient the same at every
position (``TargetLayer.gradient_pooled``: the layer feeds a global average pool) ``G`` is
per channel ``[B, C, 1, 1]``, and the sums below then work on C numbers instead of C·h·w —
the same maps, without position-wise passes. Method bodies (``onnxcam.methods``) are the
formulas only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import NEEDS, method


class _Term:
    """A property computed on first use and then stored on the instance (``cached_property``
    without the per-access lock it takes before Python 3.12: these are read per batch)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


def _weighted_sum(weights: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Σ_c weights[b, c] · A[b, c, :, :] (a batched mat-vec product)."""
    b, c, h, w = A.shape
    return np.matmul(weights[:, None, :], A.reshape(b, c, h * w)).reshape(b, h, w)


def _spatial_sum(X: np.ndarray) -> np.ndarray:
    """Σ_ij X[b, c, i, j] → [b, c], as a BLAS product with a vector of ones (5x faster than
    ``X.sum(axis=(2, 3))`` for 7×7 maps)."""
    b, c, h, w = X.shape
    return X.reshape(b, c, h * w) @ np.ones(h * w, dtype=X.dtype)


def _channel_sum(X: np.ndarray) -> np.ndarray:
    """Σ_c X[b, c, i, j] → [b, h, w] (a product with a vector of ones)."""
    b, c, h, w = X.shape
    return (np.ones(c, dtype=X.dtype) @ X.reshape(b, c, h * w)).reshape(b, h, w)


@dataclass(frozen=True)
class PathGradients:
    """Gradients along straight paths from a baseline to each input (Integrated Gradients):
    ``G`` [B, n, C, H, W] at ``baseline + α_k (x − baseline)``, the quadrature ``weights``
    [n] (they sum to 1), the ``baseline`` [B, C, H, W] and the score there ``baseline_score``
    [B] (the input's own score is ``score``)."""

    G: np.ndarray
    weights: np.ndarray
    baseline: np.ndarray
    baseline_score: np.ndarray
    score: np.ndarray


class Terms:
    """A layer's ``A`` [B, C, h, w], ``G`` (same shape, or per channel [B, C, 1, 1]), ``w``
    [B, C] and ``Gs`` [B, n, C, h, w] (each None when not fetched), and their shared terms.

    "A term like G" below is an array with G's shape: per position, or per channel under a
    pooled gradient. Nothing here modifies an array it was given or has handed out.
    """

    def __init__(
        self,
        A: np.ndarray | None = None,
        G: np.ndarray | None = None,
        w: np.ndarray | None = None,
        Gs: np.ndarray | None = None,
        R: dict[str, np.ndarray] | None = None,
        path: PathGradients | None = None,
        F: np.ndarray | None = None,
        M: np.ndarray | None = None,
    ) -> None:
        self.A, self.G, self.w, self.Gs = A, G, w, Gs
        self.R = R or {}
        """The input's gradients under other ReLU rules (rule → [B, C, H, W])."""
        self.path = path
        """Integrated Gradients' path run (the pixel target)."""
        self.F = F
        """FullGrad's bias map [B, H, W] (the pixel target, ``export --fullgrad``)."""
        self.M = M
        """ReciproCAM's in-graph map [B, h, w] (``export --reciprocam``)."""

    @classmethod
    def of(cls, needs: Sequence[str], arrays: Sequence[np.ndarray]) -> Terms:
        """The terms of a method's positional arrays (``gradcam(A, G)``: needs order)."""
        t = cls()
        for n, a in zip(needs, arrays, strict=True):
            need = NEEDS[n]
            if need.rule:  # the input gradient under a ReLU rule
                t.R[need.rule] = a
            elif need.path:  # Integrated Gradients' path run (a PathGradients)
                t.path = a
            else:
                setattr(t, need.term, a)
        return t

    # --- shared terms (each computed once per layer and batch) ----------------------------------
    @_Term
    def pooled(self) -> bool:
        """G is per channel ([B, C, 1, 1]): the same at every position."""
        return self.G.shape[2:] == (1, 1)

    @_Term
    def positions(self) -> np.float32:
        """h·w of the layer."""
        return np.float32(self.A.shape[2] * self.A.shape[3])

    @_Term
    def relu_g(self) -> np.ndarray:
        """ReLU(G), like G."""
        return np.maximum(self.G, 0)

    @_Term
    def ga(self) -> np.ndarray:
        """G ⊙ A [B, C, h, w] (G broadcast over positions when pooled)."""
        return self.G * self.A

    @_Term
    def mean_g(self) -> np.ndarray:
        """mean_ij G [B, C] (G's own value when pooled)."""
        G = self.G
        return _spatial_sum(G) / np.float32(G.shape[2] * G.shape[3])

    @_Term
    def sum_a(self) -> np.ndarray:
        """Σ_ij A [B, C]."""
        return _spatial_sum(self.A)

    @_Term
    def sum_ga(self) -> np.ndarray:
        """Σ_ij G ⊙ A [B, C] (g · Σ_ij A when pooled)."""
        if self.pooled:
            return self.G[:, :, 0, 0] * self.sum_a
        return _spatial_sum(self.ga)

    @_Term
    def nonnegative_a(self) -> bool:
        """A ≥ 0 everywhere (it comes out of a ReLU)."""
        return bool(self.A.min() >= 0)

    # --- reductions ------------------------------------------------------------------------------
    def weighted_sum(self, weights: np.ndarray) -> np.ndarray:
        """Σ_c weights_c A_c [B, h, w] for per-channel ``weights`` [B, C]."""
        return _weighted_sum(weights, self.A)

    def position_sum(self, term: np.ndarray) -> np.ndarray:
        """Σ_ij of a term like G → [B, C] (h·w equal terms when pooled)."""
        if self.pooled:
            return term[:, :, 0, 0] * self.positions
        return _spatial_sum(term)

    def product_sum(self, term: np.ndarray) -> np.ndarray:
        """Σ_c term_c ⊙ A_c [B, h, w] for a term like G (a weighted sum when pooled)."""
        if self.pooled:
            return _weighted_sum(term[:, :, 0, 0], self.A)
        return _channel_sum(self.ga if term is self.G else term * self.A)

    def relu_product_sum(self, term: np.ndarray) -> np.ndarray:
        """Σ_c ReLU(term_c ⊙ A_c) [B, h, w] for a term like G; when pooled and A ≥ 0 it is
        Σ_c ReLU(term_c) · A_c, one weighted sum."""
        if self.pooled and self.nonnegative_a:
            return self.product_sum(self.relu_g if term is self.G else np.maximum(term, 0))
        return _channel_sum(np.maximum(self.ga if term is self.G else term * self.A, 0))


class WindowTerms(Terms):
    """The terms of detection rows whose gradients are zero outside a window
    (``contract.GradientWindow``): ``G`` [n, C, k, k] holds each row's window (zero off the
    map), ``origin`` [n, 2] its top-left position on the map (negative at the border), ``A``
    [1, C, h, w] the image's whole map. "A term like G" is then a window: sums over positions
    and per-position products read the k² window positions instead of h·w — the same maps,
    since every other position contributes zero (``WINDOWED`` lists the formulas that read G
    through these terms only)."""

    pooled = False

    def __init__(self, A: np.ndarray, G: np.ndarray, origin: np.ndarray) -> None:
        super().__init__(A=A, G=G)
        self.origin = np.asarray(origin, dtype=np.int64)

    @_Term
    def a_window(self) -> np.ndarray:
        """A at each row's window positions [n, C, k, k] (zero off the map)."""
        return windows(self.A, self.origin, self.G.shape[2])

    @_Term
    def ga(self) -> np.ndarray:
        return self.G * self.a_window

    @_Term
    def mean_g(self) -> np.ndarray:
        return _spatial_sum(self.G) / self.positions

    def weighted_sum(self, weights: np.ndarray) -> np.ndarray:
        _, c, h, w = self.A.shape
        return (weights @ self.A.reshape(c, h * w)).reshape(len(weights), h, w)

    def product_sum(self, term: np.ndarray) -> np.ndarray:
        return self._placed(_channel_sum(self.ga if term is self.G else term * self.a_window))

    def relu_product_sum(self, term: np.ndarray) -> np.ndarray:
        prod = self.ga if term is self.G else term * self.a_window
        return self._placed(_channel_sum(np.maximum(prod, 0)))

    def _placed(self, maps: np.ndarray) -> np.ndarray:
        """Window maps [n, k, k] → [n, h, w], zero outside the windows."""
        h, w = self.A.shape[2:]
        out = np.zeros((len(maps), h, w), maps.dtype)
        for r, o in enumerate(self.origin):
            on_map, in_window = _overlap(o, maps.shape[1], h, w)
            out[(r, *on_map)] = maps[(r, *in_window)]
        return out


def _overlap(origin: Sequence[int], k: int, h: int, w: int) -> tuple[tuple, tuple]:
    """The part of the k × k window at ``origin`` (top-left) that lies on an h × w map: its
    (rows, columns) slices on the map and in the window."""
    y, x = int(origin[0]), int(origin[1])
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + k, h), min(x + k, w)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def windows(
    X: np.ndarray, origin: np.ndarray, k: int, rows: Sequence[int] | None = None
) -> np.ndarray:
    """Windows k × k of ``X`` [N, C, h, w] at ``origin`` [n, 2] (top-left): [n, C, k, k], zero
    off the map; window r is taken from row ``rows[r]`` of X (default: row 0)."""
    c, h, w = X.shape[1:]
    out = np.zeros((len(origin), c, k, k), X.dtype)
    for r, o in enumerate(origin):
        on_map, in_window = _overlap(o, k, h, w)
        out[(r, slice(None), *in_window)] = X[
            (0 if rows is None else rows[r], slice(None), *on_map)
        ]
    return out


def host_method(name: str, needs: tuple[str, ...], family: str, paper: str, **spec):
    """Register a formula on ``Terms``; the decorated name becomes its array-level function
    (``gradcam(A, G)``, as ``METHODS[name].fn``). ``spec``: ``registry.method``'s options."""

    def register(formula: Callable[[Terms], np.ndarray]) -> Callable[..., np.ndarray]:
        @functools.wraps(formula)
        def on_arrays(*arrays: np.ndarray) -> np.ndarray:
            return formula(Terms.of(needs, arrays))

        return method(name, needs, family, paper, formula=formula, **spec)(on_arrays)

    return register
