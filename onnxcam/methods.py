"""The host CAM methods: one formula each, registered in ``METHODS`` with what it needs.

Every method returns *raw* maps ``[batch, h, w]`` (before ReLU and normalisation, which
``postprocess`` applies once for all methods). A body is the formula only, written on the
layer's ``Terms`` (``onnxcam.terms``: NCHW arrays, shared terms, the GAP shortcut): ``t.A`` the
target layer's activations, ``t.G`` the gradients of the explained class score with respect to
them (``dScore/dA``), ``t.w`` the explained class's classifier row ``[batch, C]``, ``t.Gs``
gradients of noisy copies ``[batch, n, C, h, w]``. The module-level functions take those
arrays positionally, in ``needs`` order: ``gradcam(A, G)``.

The registry itself is ``onnxcam.registry``; the perturbation family registers from
``onnxcam.perturbation``. ``METHODS`` and ``resolve_methods`` imported from here come with both
families registered, and the CLI's ``--method`` choices are ``METHODS``' keys.
"""

from __future__ import annotations

import numpy as np

from . import registry
from .registry import MethodSpec, method
from .terms import Terms, host_method


@host_method("cam", ("activations", "cam_weights"), "classifier", "arXiv:1512.04150")
def cam(t: Terms) -> np.ndarray:
    """CAM (Zhou et al. 2016): L = Σ_c w_c^k A_c, with w^k the classifier row of class k.

    Needs a GAP → Linear head (the exporter then outputs ``onnxcam_cam_weight_k``).
    """
    return t.weighted_sum(t.w)


@host_method("gradcam", ("activations", "gradients"), "gradient", "arXiv:1610.02391")
def gradcam(t: Terms) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): α_c = mean_ij G_cij;  L = Σ_c α_c A_c."""
    return t.weighted_sum(t.mean_g)


@host_method("gradcam++", ("activations", "gradients"), "gradient", "arXiv:1710.11063")
def gradcam_plusplus(t: Terms) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed form with first-order gradients.

    a_cij = G² / (2G² + Σ_ab A_cab · G³);  α_c = Σ_ij a_cij · ReLU(G_cij);
    L = Σ_c α_c A_c.
    """
    # a·ReLU(G) written in r = ReLU(G): the same wherever G > 0 and exactly 0 elsewhere (the
    # usual np.where(G != 0, a, 0) still gives inf·0 = NaN where 2G² + ΣA·G³ vanishes, G < 0)
    r = t.relu_g
    r2 = r * r
    r3 = r2 * r
    denom = 2 * r2 + t.sum_a[:, :, None, None] * r3 + np.float32(1e-6)
    return t.weighted_sum(t.position_sum(r3 / denom))


@host_method("xgradcam", ("activations", "gradients"), "gradient", "arXiv:2008.02312")
def xgradcam(t: Terms) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020): α_c = Σ_ij G_cij · A_cij / Σ_ij A_cij;  L = Σ_c α_c A_c."""
    return t.weighted_sum(t.sum_ga / (t.sum_a + np.float32(1e-7)))


@host_method("layercam", ("activations", "gradients"), "gradient", "arXiv:2107.07624")
def layercam(t: Terms) -> np.ndarray:
    """Layer-CAM (Jiang et al. 2021): L = Σ_c ReLU(G_c) ⊙ A_c (element-wise weights)."""
    return t.product_sum(t.relu_g)


@host_method("hirescam", ("activations", "gradients"), "gradient", "arXiv:2011.08891")
def hirescam(t: Terms) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): L = Σ_c G_c ⊙ A_c (no spatial averaging)."""
    return t.product_sum(t.G)


@host_method("gradcam-elementwise", ("activations", "gradients"), "gradient", "arXiv:2011.08891")
def gradcam_elementwise(t: Terms) -> np.ndarray:
    """Element-wise Grad-CAM (pytorch-grad-cam's GradCAMElementWise): L = Σ_c ReLU(G_c ⊙ A_c)."""
    return t.relu_product_sum(t.G)


@host_method(
    "refinecam",
    ("activations", "gradients"),
    "gradient",
    "arXiv:2605.14641",
    fusion="product",  # several layers' maps multiplied (--layer all or a list)
)
def refinecam(t: Terms) -> np.ndarray:
    """RefineCAM (pytorch-grad-cam's ``RefineCAM``): Grad-CAM++ at each target layer, the
    layers' maps multiplied at input resolution: L = norm(Π_l norm(up(ReLU(L_l))))
    (``onnxcam.fusion``, rule ``product``); one layer gives Grad-CAM++'s map."""
    return gradcam_plusplus.__wrapped__(t)


WINDOWED = frozenset(
    {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "gradcam-elementwise",
        "refinecam",  # Grad-CAM++'s formula at each layer
    }
)
"""The gradient formulas that read G only through ``Terms``' position sums and per-position
products, so a ``WindowTerms`` (gradients zero outside a window) gives the same map from the
window alone. EigenGrad-CAM is not among them: its principal component reads every position."""


def _top_eigenpair(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest eigenvalue [b] and its unit eigenvector [b, n] of symmetric matrices [b, n, n].

    The eigenvalues alone (``eigvalsh``), then two steps of inverse iteration shifted just
    above λ₁: (S − σI)⁻¹ has the eigenvalue 1/(λ₁ − σ) ~ 10¹⁰/λ₁ against at most
    1/(λ₁ − λ₂), so each step shrinks every other direction by ~10⁻¹⁰·λ₁/(λ₁ − λ₂) — the
    same vector as a full ``eigh`` (to 1e-15 on CAM Gram matrices) in ~60% of its time.
    It starts from S's column of largest diagonal entry (in S's range). A singular solve
    falls back to ``eigh``.
    """
    lam = np.linalg.eigvalsh(S)[:, -1]
    n = S.shape[-1]
    shifted = S - (lam * (1 + 1e-10) + 1e-300)[:, None, None] * np.eye(n)
    # start from the column with the largest diagonal entry: it lies in S's range, whereas a
    # vector of ones is S's null vector when S is a centred Gram matrix (Eigen-CAM, KPCA-CAM)
    first = np.argmax(np.diagonal(S, axis1=1, axis2=2), axis=1)
    v = np.take_along_axis(S, first[:, None, None], axis=2) + 1e-30
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


@host_method("eigencam", ("activations",), "activation", "arXiv:2008.00299")
def eigencam(t: Terms) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020): first principal component of the activations.

    Class-agnostic (no gradients). ONNX has no eigen-solver: on the host this is ``eigvalsh``
    + inverse iteration; an ``--heatmaps`` export computes it in the graph by repeated
    squaring of the Gram matrix (``export/heatmaps.py``).
    """
    return _first_component(t.A)


@host_method("eigengradcam", ("activations", "gradients"), "gradient", "arXiv:2008.00299")
def eigengradcam(t: Terms) -> np.ndarray:
    """EigenGrad-CAM (pytorch-grad-cam): first principal component of G ⊙ A (class-specific)."""
    return _first_component(t.ga)


@host_method("activationmap", ("activations",), "activation", "OpenVINO XAI ActivationMap")
def activationmap(t: Terms) -> np.ndarray:
    """ActivationMap (OpenVINO XAI, no paper): L = mean_c A_c, class-agnostic.

    OpenVINO XAI then min-maxes it per image (×255) without a ReLU; onnxcam's display rectifies
    first (the same map after a ReLU layer; ``relu=False`` for theirs on signed layers)."""
    return _channel_mean(t.A)


def _channel_mean(A: np.ndarray) -> np.ndarray:
    b, c, h, w = A.shape
    return (np.full(c, 1 / c, dtype=np.float32) @ A.reshape(b, c, h * w)).reshape(b, h, w)


FEM_K = 2.0
"""FEM's threshold: channel mean + ``FEM_K`` standard deviations (Xplique's and the paper's k)."""


@host_method("reciprocam", ("reciprocam_maps",), "perturbation", "arXiv:2209.14074", in_all=False)
def reciprocam(t: Terms) -> np.ndarray:
    """ReciproCAM (Byun & Lee 2022): M_j = z_c(head(A ⊙ e_j)), the class logit of the head run
    on the activations with every position but j zeroed — computed in the graph
    (``export --reciprocam``, ``export/reciprocam.py``) in the explain run itself (mode 0, or
    mode 4 when no method needs gradients).

    Returned as M − min M per image, so that ReLU + min-max give OpenVINO XAI's per-map
    min-max scaling (its ``embed_scaling``) instead of clipping negative logits."""
    m = t.M.astype(np.float32)
    return m - m.min(axis=(1, 2), keepdims=True)


@host_method("fem", ("activations",), "activation", "doi:10.1109/IPTA50016.2020.9286629")
def fem(t: Terms) -> np.ndarray:
    """FEM (Fuad et al. 2020, Xplique's ``FEM``): per channel μ_c = mean_ij A_c, σ_c its
    (population) standard deviation; L = Σ_c μ_c · 1[A_c ≥ μ_c + k σ_c], k = 2.

    Class-agnostic. pytorch-grad-cam's ``FEM`` weighs differently (see docs/methods.md)."""
    A = t.A
    b, c, h, w = A.shape
    flat = A.reshape(b, c, h * w).astype(np.float64)
    mu = flat.mean(axis=2, keepdims=True)
    sigma = flat.std(axis=2, keepdims=True)
    mask = (flat >= mu + FEM_K * sigma).astype(np.float64)
    return np.einsum("bc,bcp->bp", mu[:, :, 0], mask).reshape(b, h, w).astype(np.float32)


def _kernel_component(X: np.ndarray) -> np.ndarray:
    """First kernel principal component of each image's (h·w, C) rows of X [b, C, h, w]:
    rows centred per channel, sigmoid kernel K = tanh(γ x·y + 1), γ = 1/C (scikit-learn's
    ``KernelPCA(kernel="sigmoid")`` defaults, as pytorch-grad-cam's ``KPCA_CAM``), K centred
    in feature space, projection = √λ₁ v₁; sign as ``_first_component``."""
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    b, c, h, w = X.shape
    rows = X.reshape(b, c, h * w).transpose(0, 2, 1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    K = np.tanh(rows @ rows.transpose(0, 2, 1) / c + 1.0)
    K = (
        K
        - K.mean(axis=1, keepdims=True)
        - K.mean(axis=2, keepdims=True)
        + K.mean(axis=(1, 2), keepdims=True)
    )
    val, vec = _top_eigenpair(K)
    proj = vec * np.sqrt(np.maximum(val, 0.0))[:, None]
    flip = np.einsum("bp,bp->b", proj, X.sum(axis=1).reshape(b, h * w)) < 0
    proj[flip] = -proj[flip]
    return proj.reshape(b, h, w).astype(np.float32)


@host_method(
    "kpcacam",
    ("activations",),
    "activation",
    "arXiv:2410.00267",
)
def kpcacam(t: Terms) -> np.ndarray:
    """KPCA-CAM (Karmani et al. 2024): the first kernel principal component of the activations
    (sigmoid kernel, γ = 1/C: pytorch-grad-cam's ``KPCA_CAM`` defaults), class-agnostic."""
    return _kernel_component(t.A)


@host_method(
    "smoothgradcam++",
    ("activations", "noisy_gradients"),
    "sampling",
    "arXiv:1908.01224",
    in_all=False,  # n noisy copies per image: ~n× the cost of the one-run maps, named explicitly
)
def smoothgradcam_plusplus(t: Terms) -> np.ndarray:
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with gradients averaged over noise.

    With n noisy copies x + N(0, σ²) of each input and D_p = mean_m (G_m)^p:
    a_cij = D₂ / (2 D₂ + Σ_ab A_cab · D₃);  α_c = Σ_ij a_cij · ReLU(D₁);  L = Σ_c α_c A_c,
    where A are the clean input's activations.
    """
    Gs = t.Gs
    d1, d2, d3 = Gs.mean(axis=1), (Gs**2).mean(axis=1), (Gs**3).mean(axis=1)
    denom = 2 * d2 + t.A.sum(axis=(2, 3), keepdims=True) * d3 + 1e-6
    a = np.where(d2 != 0, d2 / denom, 0.0)
    return t.weighted_sum((a * np.maximum(d1, 0)).sum(axis=(2, 3)))


def __getattr__(name: str):
    """``METHODS`` and ``resolve_methods`` (PEP 562) with every family registered: the
    perturbation family is imported on first use (it does not import this module)."""
    if name in ("METHODS", "resolve_methods"):
        from . import attribution, perturbation  # noqa: F401  (register their families)

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: F822 (METHODS and resolve_methods come from __getattr__)
    "METHODS",
    "MethodSpec",
    "Terms",
    "activationmap",
    "cam",
    "eigencam",
    "eigengradcam",
    "fem",
    "gradcam",
    "gradcam_elementwise",
    "gradcam_plusplus",
    "hirescam",
    "kpcacam",
    "layercam",
    "method",
    "refinecam",
    "resolve_methods",
    "smoothgradcam_plusplus",
    "xgradcam",
]
