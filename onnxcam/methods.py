"""CAM methods: one function each, registered in ``METHODS`` with what it needs.

Every function returns *raw* maps ``[batch, h, w]`` (before ReLU and normalisation, which
``postprocess`` applies once for all methods). Inputs are NCHW: ``A`` the target layer's
activations, ``G`` the gradients of the explained class score with respect to them
(``dScore/dA``), ``w`` the explained class's classifier row ``[batch, C]``, ``Gs`` gradients of
noisy copies ``[batch, n, C, h, w]``.

``MethodSpec.needs`` names the inputs (``activations``, ``gradients``, ``cam_weights``,
``noisy_gradients``); the engine fetches only what the requested methods need, and the CLI's
``--method`` choices are this registry's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import MethodError


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, the inputs it needs, and its family."""

    fn: Callable[..., np.ndarray]
    needs: tuple[str, ...]
    family: str
    """gradient | activation | classifier | sampling | perturbation"""
    paper: str


METHODS: dict[str, MethodSpec] = {}


def method(name: str, needs: tuple[str, ...], family: str, paper: str):
    """Register ``fn`` under ``name``."""

    def register(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        METHODS[name] = MethodSpec(fn, needs, family, paper)
        return fn

    return register


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


def _pooled(G: np.ndarray) -> bool:
    """True when G is per channel ([B, C, 1, 1]): the engine passes gradients that way when
    the exporter proved them the same at every position (``TargetLayer.gradient_pooled``, a
    layer that feeds a global average pool). Each method then works on C numbers — the same
    maps, computed without position-wise passes."""
    return G.shape[2:] == (1, 1)


def _sum_over_positions(term: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Σ_ij of a [B, C, h, w] term, or of a per-channel term broadcast over A's h·w positions."""
    if _pooled(term):
        return term[:, :, 0, 0] * np.float32(A.shape[2] * A.shape[3])
    return _spatial_sum(term)


@method("cam", ("activations", "cam_weights"), "classifier", "arXiv:1512.04150")
def cam(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    """CAM (Zhou et al. 2016): L = Σ_c w_c^k A_c, with w^k the classifier row of class k.

    Needs a GAP → Linear head (the exporter then outputs ``onnxcam_cam_weight_k``).
    """
    return _weighted_sum(w, A)


@method("gradcam", ("activations", "gradients"), "gradient", "arXiv:1610.02391")
def gradcam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): α_c = mean_ij G_cij;  L = Σ_c α_c A_c."""
    return _weighted_sum(_spatial_sum(G) / np.float32(G.shape[2] * G.shape[3]), A)


@method("gradcam++", ("activations", "gradients"), "gradient", "arXiv:1710.11063")
def gradcam_plusplus(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed form with first-order gradients.

    a_cij = G² / (2G² + Σ_ab A_cab · G³);  α_c = Σ_ij a_cij · ReLU(G_cij);
    L = Σ_c α_c A_c.
    """
    # a·ReLU(G) written in r = ReLU(G): the same wherever G > 0 and exactly 0 elsewhere (the
    # usual np.where(G != 0, a, 0) still gives inf·0 = NaN where 2G² + ΣA·G³ vanishes, G < 0)
    r = np.maximum(G, 0)
    r2 = r * r
    r3 = r2 * r
    denom = 2 * r2 + _spatial_sum(A)[:, :, None, None] * r3 + np.float32(1e-6)
    return _weighted_sum(_sum_over_positions(r3 / denom, A), A)


@method("xgradcam", ("activations", "gradients"), "gradient", "arXiv:2008.02312")
def xgradcam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020): α_c = Σ_ij G_cij · A_cij / Σ_ij A_cij;  L = Σ_c α_c A_c."""
    sum_a = _spatial_sum(A)
    num = G[:, :, 0, 0] * sum_a if _pooled(G) else _spatial_sum(G * A)
    return _weighted_sum(num / (sum_a + np.float32(1e-7)), A)


@method("layercam", ("activations", "gradients"), "gradient", "arXiv:2107.07624")
def layercam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Layer-CAM (Jiang et al. 2021): L = Σ_c ReLU(G_c) ⊙ A_c (element-wise weights)."""
    if _pooled(G):
        return _weighted_sum(np.maximum(G[:, :, 0, 0], 0), A)
    return _channel_sum(np.maximum(G, 0) * A)


@method("hirescam", ("activations", "gradients"), "gradient", "arXiv:2011.08891")
def hirescam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): L = Σ_c G_c ⊙ A_c (no spatial averaging)."""
    if _pooled(G):
        return _weighted_sum(G[:, :, 0, 0], A)
    return _channel_sum(G * A)


@method("gradcam-elementwise", ("activations", "gradients"), "gradient", "arXiv:2011.08891")
def gradcam_elementwise(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Element-wise Grad-CAM (pytorch-grad-cam's GradCAMElementWise): L = Σ_c ReLU(G_c ⊙ A_c)."""
    if _pooled(G) and A.min() >= 0:  # ReLU(g_c·A_c) = ReLU(g_c)·A_c: one weighted sum
        return _weighted_sum(np.maximum(G[:, :, 0, 0], 0), A)
    return _channel_sum(np.maximum(G * A, 0))


def _top_eigenpair(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest eigenvalue [b] and its unit eigenvector [b, n] of symmetric matrices [b, n, n].

    The eigenvalues alone (``eigvalsh``), then two steps of inverse iteration shifted just
    above λ₁: (S − σI)⁻¹ has the eigenvalue 1/(λ₁ − σ) ~ 10¹⁰/λ₁ against at most
    1/(λ₁ − λ₂), so each step shrinks every other direction by ~10⁻¹⁰·λ₁/(λ₁ − λ₂) — the
    same vector as a full ``eigh`` (to 1e-15 on CAM Gram matrices) in ~60% of its time.
    A singular solve falls back to ``eigh``.
    """
    lam = np.linalg.eigvalsh(S)[:, -1]
    n = S.shape[-1]
    shifted = S - (lam * (1 + 1e-10) + 1e-300)[:, None, None] * np.eye(n)
    v = np.ones((S.shape[0], n, 1))
    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for _ in range(2):
                v = np.linalg.solve(shifted, v)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
    except np.linalg.LinAlgError:
        v = np.full_like(v, np.nan)
    if not np.isfinite(v).all():
        vals, vecs = np.linalg.eigh(S)
        return vals[:, -1], vecs[:, :, -1]
    return lam, v[:, :, 0]


def _first_component(X: np.ndarray) -> np.ndarray:
    """Projection of each image's (h·w, C) matrix on its first principal direction.

    X: [batch, C, h, w]. Each image's pixels are rows, centred per channel (as
    pytorch-grad-cam's ``get_2d_projection``); the projection onto the first right-singular
    vector v₁ is σ₁·u₁. It is found from the smaller of the two Gram matrices — the pixels'
    (h·w)² or the channels' C² — with a symmetric eigen-solver, which is exact and much cheaper
    than an SVD of the whole matrix. SVD's sign is arbitrary: onnxcam picks the sign that makes
    the projection correlate positively with the channel sum of X (so "where the features are
    strong" is positive); see docs/methods.md.
    """
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    b, c, h, w = X.shape
    cols = X.reshape(b, c, h * w)
    cols = cols - (cols @ np.full(h * w, 1 / (h * w), np.float32))[:, :, None]  # centre channels
    rows = cols.transpose(0, 2, 1)  # [b, pixels, channels]
    # the Gram matrix in float32 BLAS (a batched GEMM), its eigenvector in float64
    if h * w <= c:  # pixels' Gram matrix: rows·rowsᵀ = U Σ² Uᵀ, projection = σ₁ u₁
        val, vec = _top_eigenpair((rows @ cols).astype(np.float64))
        proj = vec * np.sqrt(np.maximum(val, 0.0))[:, None]
    else:  # channels' covariance: rowsᵀ·rows = V Σ² Vᵀ, projection = rows · v₁
        _, vec = _top_eigenpair((cols @ rows).astype(np.float64))
        proj = (rows.astype(np.float64) @ vec[:, :, None])[:, :, 0]
    strength = np.ones(c, dtype=np.float32) @ X.reshape(b, c, h * w)  # channel sums [b, hw]
    flip = np.einsum("bp,bp->b", proj, strength) < 0
    proj[flip] = -proj[flip]
    return proj.reshape(b, h, w).astype(np.float32)


@method("eigencam", ("activations",), "activation", "arXiv:2008.00299")
def eigencam(A: np.ndarray) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020): first principal component of the activations.

    Class-agnostic (no gradients). ONNX has no eigen-solver: on the host this is ``eigvalsh``
    + inverse iteration; an ``--heatmaps`` export computes it in the graph by repeated
    squaring of the Gram matrix (``export/heatmaps.py``).
    """
    return _first_component(A)


@method("eigengradcam", ("activations", "gradients"), "gradient", "arXiv:2008.00299")
def eigengradcam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """EigenGrad-CAM (pytorch-grad-cam): first principal component of G ⊙ A (class-specific)."""
    return _first_component(G * A)


@method("smoothgradcam++", ("activations", "noisy_gradients"), "sampling", "arXiv:1908.01224")
def smoothgradcam_plusplus(A: np.ndarray, Gs: np.ndarray) -> np.ndarray:
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with gradients averaged over noise.

    With n noisy copies x + N(0, σ²) of each input and D_p = mean_m (G_m)^p:
    a_cij = D₂ / (2 D₂ + Σ_ab A_cab · D₃);  α_c = Σ_ij a_cij · ReLU(D₁);  L = Σ_c α_c A_c,
    where A are the clean input's activations.
    """
    d1, d2, d3 = Gs.mean(axis=1), (Gs**2).mean(axis=1), (Gs**3).mean(axis=1)
    denom = 2 * d2 + A.sum(axis=(2, 3), keepdims=True) * d3 + 1e-6
    a = np.where(d2 != 0, d2 / denom, 0.0)
    return _weighted_sum((a * np.maximum(d1, 0)).sum(axis=(2, 3)), A)


def resolve_methods(names: str | list[str] | tuple[str, ...], has_cam_weights: bool) -> list[str]:
    """'gradcam,layercam' | 'all' | list → registered method names (validated)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        key = n.lower()
        if key == "all":
            out += [
                m
                for m, s in METHODS.items()
                if s.family != "perturbation" and (m != "cam" or has_cam_weights)
            ]
            continue
        if key not in METHODS:
            raise MethodError(f"unknown method {n!r}; choose from {', '.join(METHODS)} or all")
        out.append(key)
    if "cam" in out and not has_cam_weights:
        raise MethodError(
            "CAM needs a GAP → Linear classifier head directly after the target layer, and this "
            "model's export has none (no onnxcam_cam_weight output); use gradcam instead"
        )
    return list(dict.fromkeys(out))


# the perturbation family registers itself in METHODS (kept in its own module)
from . import perturbation as _perturbation  # noqa: E402, F401
