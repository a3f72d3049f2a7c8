"""In-graph heatmaps: the CAM maps themselves as graph outputs, in standard ONNX ops.

Any onnxruntime client (C#, Java, JavaScript, Triton) then gets finished maps from one run,
with no post-processing code. Each builder mirrors the numpy function of the same name in
``onnxcam/methods.py``; the post-processing mirrors ``onnxcam/postprocess.py``: ReLU →
bilinear resize (half-pixel centres, clamped at the border: OpenCV's ``INTER_LINEAR``) →
per-image min-max (constant → zeros). Inputs are NCHW ``A``, ``G``.

The subgraph is built for speed next to small networks (EfficientNet-Lite0 runs in ~6 ms):
  * tensors are flattened to [B, C, h·w] and terms shared by several methods (G·A, ReLU(G),
    Σ_hw A) are built once per layer (``_Terms``);
  * every channel-weighted map (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM) comes from *one*
    batched ``MatMul`` of the stacked weights [B, K, C] with A [B, C, h·w], and each
    element-wise map's channel sum is a ``MatMul`` with a row of ones (ORT's ``ReduceSum``
    over a middle axis is several times slower);
  * the bilinear resize is two ``MatMul``s with constant interpolation matrices, and the
    final min-max is computed *before* the resize from the few output pixels that can hold an
    extreme (``_extreme_rows``), so the full-resolution maps are written once and never
    re-read (the previous Resize + min-max + Split design made 7 passes over them);
  * Eigen-CAM and EigenGrad-CAM, which need an eigenvector ONNX has no operator for, come
    from repeated squaring of the small Gram matrix (``_principal_maps``), one chain of
    [n, n] MatMuls for both (n = min(h·w, C), 49 for a 7×7 layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from onnxcam.contract import NCHW, Layout, heatmap_name
from onnxcam.errors import ExportError
from onnxcam.postprocess import bilinear_sources, interpolation_matrix

from .autodiff import path_tensors
from .builder import NodeBuilder
from .graph import GraphView, attr, reduce_axes

Builder = Callable[["_Terms"], tuple[str, str]]
HEATMAPS: dict[str, Builder] = {}
"""method name → builder(terms) returning ("weights", per-channel weights — [B, C, 1], or
[B, 1, C] under a pooled gradient), ("map", [B, 1, h·w]) or ("principal", X [B, C, h·w]):
the map is X's first principal component (``_principal_maps``)."""


def heatmap(name: str):
    def register(fn: Builder) -> Builder:
        HEATMAPS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class LayerFacts:
    """What the graph guarantees about a target layer, used to build cheaper exact maps."""

    channels: int | None
    positions: int | None
    """h·w (None when the feature size is dynamic)."""
    pooled_gradient: str | None = None
    """[B, C, 1, 1] (or NHWC [B, 1, 1, C]) tensor the gradient is a spatial broadcast of."""
    mean: str | None = None
    """The forward pass's global average pool of the layer (mean over positions)."""
    nonnegative: bool = False
    """The activations come out of a ReLU / ReLU6 / sigmoid."""


def layer_facts(
    view: GraphView, tensor: str, pooled_gradient: str | None, layout: Layout, shape
) -> LayerFacts:
    """Static facts about target ``tensor`` (activations); ``pooled_gradient`` as found by
    ``autodiff.spatially_constant_source`` when the backward pass was built."""
    channels = layout.channels(shape)
    h, w = layout.spatial(shape)
    positions = h * w if isinstance(h, int) and isinstance(w, int) else None
    return LayerFacts(
        channels if isinstance(channels, int) else None,
        positions,
        pooled_gradient if positions else None,
        _spatial_mean(view, tensor, layout) if positions else None,
        _nonnegative(view, tensor),
    )


def _spatial_mean(view: GraphView, tensor: str, layout: Layout) -> str | None:
    """Output of a consumer of ``tensor`` that is its [B, C, 1, 1] mean over positions (NCHW
    layers only: the shape ``_Terms`` reads it in)."""
    if layout != NCHW:
        return None
    for node in view.consumers.get(tensor, []):
        if node.op_type == "GlobalAveragePool":
            return node.output[0]
        mean = node.op_type == "ReduceMean" and attr(node, "keepdims", 1)
        if mean and reduce_axes(view, node) == layout.spatial_axes:
            return node.output[0]
    return None


def _nonnegative(view: GraphView, tensor: str) -> bool:
    node = view.producer.get(tensor)
    if node is None:
        return False
    if node.op_type in ("Relu", "Sigmoid"):
        return True
    if node.op_type == "Clip":  # opset ≥ 11 (the exporter upgrades older models): min input
        lo = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return lo is not None and float(np.min(lo)) >= 0
    return False


class _Terms:
    """One layer's A and G flattened to [B, C, h·w], and the terms several methods share,
    each built on first use.

    ``g`` is the per-channel gradient when every position has the same gradient (the layer
    feeds a global average pool: ``autodiff.spatially_constant_source``); the methods then work
    on C numbers instead of C·h·w — exactly the same maps, and Layer-CAM, HiRes-CAM and
    XGrad-CAM become channel-weighted maps that join the shared MatMul. Per-channel terms are
    then kept as rows [B, 1, C], the layout the weights MatMul takes (no reshapes); otherwise
    as columns [B, C, 1], next to A [B, C, h·w].
    """

    def __init__(self, b: NodeBuilder, A: str, G: str, w: str | None, facts: LayerFacts):
        self.b, self.w, self.facts = b, w, facts
        flat = b.ints([0, 0, -1])
        self.A = b.Reshape(A, flat)
        self.row = facts.pooled_gradient is not None
        self.per_channel = b.ints([0, 1, -1] if self.row else [0, -1, 1])
        self.g = b.Reshape(facts.pooled_gradient, self.per_channel) if self.row else None
        self.G = self.g if self.row else b.Reshape(G, flat)
        self.mean_a = None if facts.mean is None else b.Reshape(facts.mean, self.per_channel)

    @cached_property
    def GA(self) -> str:
        g = self.b.Reshape(self.g, self.b.ints([0, -1, 1])) if self.row else self.G
        return self.b.Mul(g, self.A)

    @cached_property
    def centred_a(self) -> str:
        """A minus its mean over positions, per channel (the forward pass's own global average
        pool when the layer feeds one)."""
        b = self.b
        if self.facts.mean is not None:
            return b.Sub(self.A, b.Reshape(self.facts.mean, b.ints([0, -1, 1])))
        return b.Sub(self.A, b.reduce("ReduceMean", self.A, [2], 1))

    @cached_property
    def centred_ga(self) -> str:
        """G·A minus its mean over positions, per channel (g·(A − mean A) under a pooled
        gradient: one pass)."""
        b = self.b
        if self.row:
            return b.Mul(b.Reshape(self.g, b.ints([0, -1, 1])), self.centred_a)
        return b.Sub(self.GA, b.reduce("ReduceMean", self.GA, [2], 1))

    @cached_property
    def relu_g(self) -> str:
        return self.b.Relu(self.G)

    @cached_property
    def sum_a(self) -> str:
        """Σ_hw A per channel (from the forward pass's own global average pool when the layer
        feeds one: h·w · mean, no extra pass over A)."""
        if self.mean_a is not None:
            return self.b.Mul(self.mean_a, self.b.scalar(float(self.facts.positions), self.A))
        s = self.hw_sum(self.A)
        return self.b.Reshape(s, self.per_channel) if self.row else s

    def hw_sum(self, x: str) -> str:
        """Σ over the spatial axis: [B, C, h·w] → [B, C, 1]."""
        return self.b.reduce("ReduceSum", x, [2], 1)

    def hw_sum_of_g_term(self, x: str) -> str:
        """Σ over positions of a term computed from G alone ([B, C, 1] when G is per-channel:
        h·w equal terms)."""
        if self.g is None:
            return self.hw_sum(x)
        return self.b.Mul(x, self.b.scalar(float(self.facts.positions), self.A))

    def channel_sum(self, x: str) -> str:
        """Σ over channels: [B, C, h·w] → [B, 1, h·w] (a MatMul with a row of ones)."""
        if self.facts.channels is None:
            return self.b.reduce("ReduceSum", x, [1], 1)
        ones = np.ones((1, self.facts.channels), dtype=self.b.view.np_dtype(self.A))
        return self.b.MatMul(self.b.const(ones), x)


@heatmap("gradcam")
def _gradcam(t: _Terms) -> tuple[str, str]:
    return "weights", t.g if t.g is not None else t.b.reduce("ReduceMean", t.G, [2], 1)


@heatmap("gradcam++")
def _gradcam_pp(t: _Terms) -> tuple[str, str]:
    # α·ReLU(G) with α = G² / (2G² + ΣA·G³) written in r = ReLU(G): equal wherever G > 0,
    # exactly 0 elsewhere (no inf·0 where the denominator vanishes for a negative G).
    b = t.b
    r2 = b.Mul(t.relu_g, t.relu_g)
    r3 = b.Mul(r2, t.relu_g)
    denom = b.Add(b.Add(b.Mul(r2, b.scalar(2.0, t.A)), b.Mul(t.sum_a, r3)), b.scalar(1e-6, t.A))
    return "weights", t.hw_sum_of_g_term(b.Div(r3, denom))


@heatmap("xgradcam")
def _xgradcam(t: _Terms) -> tuple[str, str]:
    b = t.b
    num = b.Mul(t.g, t.sum_a) if t.g is not None else t.hw_sum(t.GA)  # Σ G·A = g·ΣA
    return "weights", b.Div(num, b.Add(t.sum_a, b.scalar(1e-7, t.A)))


@heatmap("layercam")
def _layercam(t: _Terms) -> tuple[str, str]:
    if t.g is not None:  # Σ_c ReLU(g_c)·A_c
        return "weights", t.relu_g
    return "map", t.channel_sum(t.b.Mul(t.relu_g, t.A))


@heatmap("hirescam")
def _hirescam(t: _Terms) -> tuple[str, str]:
    if t.g is not None:  # Σ_c g_c·A_c: HiResCAM equals Grad-CAM under a pooled gradient
        return "weights", t.g
    return "map", t.channel_sum(t.GA)


@heatmap("gradcam-elementwise")
def _gradcam_elementwise(t: _Terms) -> tuple[str, str]:
    if t.g is not None and t.facts.nonnegative:  # ReLU(g_c·A_c) = ReLU(g_c)·A_c: Layer-CAM
        return "weights", t.relu_g
    return "map", t.channel_sum(t.b.Relu(t.GA))


@heatmap("cam")
def _cam(t: _Terms) -> tuple[str, str]:
    return "weights", t.b.Reshape(t.w, t.per_channel)


EIGEN_SQUARINGS = 16
"""Repeated squarings of the Gram matrix for the eigen maps (``_principal_maps``): the other
principal directions shrink by (λ₂/λ₁)^(2^16) — below float32 resolution for any
λ₂/λ₁ ≤ 0.9997 (measured on CAM layers: 0.1–0.75)."""

EIGEN_MAX_SIZE = 512
"""Largest Gram matrix (min(h·w, C)) the eigen maps are built for; each squaring costs n³."""


def _gram(t: _Terms, Xc: str) -> tuple[str, str, str]:
    """(Gram matrix [B, 1, n, n] of the centred Xc, Xc's channel sum [B, 1, h·w, 1], Xcᵀ
    [B, 1, h·w, C]) for ``_principal_maps``; n = min(h·w, C)."""
    b, f = t.b, t.facts
    XcT = b.Transpose(Xc, perm=[0, 2, 1])  # [B, h·w, C]
    S = b.MatMul(XcT, Xc) if f.positions <= f.channels else b.MatMul(Xc, XcT)
    s = b.Transpose(t.channel_sum(Xc), perm=[0, 2, 1])  # [B, h·w, 1]
    one = b.ints([1])
    return b.Unsqueeze(S, one), b.Unsqueeze(s, one), b.Unsqueeze(XcT, one)


def _principal_maps(t: _Terms, Xs: list[str]) -> str:
    """Each X's projection on its first principal direction [B, E, h·w], with the runtime's
    sign (positively correlated with X's channel sum s), up to a positive scale (the maps are
    min-max normalised afterwards). ``Xs`` are already centred per channel over positions
    (``_Terms.centred_a`` / ``centred_ga``); the uncentred channel sum differs from the
    centred one by a constant over positions, which the centred Gram matrix annihilates
    (S·1 = 0), so either gives the same sign. One chain of MatMuls serves every X (stacked).

    ONNX has no eigen-solver, but the direction is the limit of powers of the Gram matrix:
    with the centred X = Σ σᵢ vᵢ uᵢᵀ (uᵢ over positions), S = XᵀX has P = S^(2^k) / scale →
    c·u₁u₁ᵀ, so P·s → c·(u₁ᵀs)·u₁: σ₁u₁ up to scale, with the sign that makes it correlate
    positively with s (``onnxcam.methods._first_component``'s convention). k =
    ``EIGEN_SQUARINGS``. P is positive semi-definite, so its largest entry is a diagonal one
    and λ₁ lies between it and n times it: after scaling by it, ``j`` squarings stay below
    n^(2^j) — the scale is renewed every j steps (float32 range; a zero matrix stays zero).
    When C < h·w the channels' Gram matrix Q = XXᵀ is used and the map is
    Xᵀ·Q^(2^k)·X·s = c·σ₁²·(u₁ᵀs)·u₁.
    """
    b, f = t.b, t.facts
    grams = [_gram(t, X) for X in Xs]

    def stacked(i: int) -> str:
        parts = [g[i] for g in grams]
        return parts[0] if len(parts) == 1 else b.Concat(*parts, axis=1)

    S, s = stacked(0), stacked(1)
    n = min(f.positions, f.channels)
    big = np.finfo(b.view.np_dtype(t.A)).max
    every = max(1, int(np.floor(np.log2(np.log(big) / np.log(max(n, 2))))) - 1)
    tiny = b.scalar(float(np.finfo(b.view.np_dtype(t.A)).tiny), t.A)
    P = S
    for step in range(EIGEN_SQUARINGS + 1):
        if step:
            P = b.MatMul(P, P)
        if step % every == 0 or step == EIGEN_SQUARINGS:
            P = b.Div(P, b.Max(b.reduce("ReduceMax", P, [2, 3], 1), tiny))
    if f.positions <= f.channels:
        v = b.MatMul(P, s)
    else:  # Xcᵀ·P·Xc·s, with Xc·s = (sᵀ·Xcᵀ)ᵀ — no second transpose of X
        XcT = stacked(2)
        Xcs = b.Transpose(b.MatMul(b.Transpose(s, perm=[0, 1, 3, 2]), XcT), perm=[0, 1, 3, 2])
        v = b.MatMul(XcT, b.MatMul(P, Xcs))
    return b.Reshape(v, b.ints([0, 0, -1]))  # [B, E, h·w]


@heatmap("eigencam")
def _eigencam(t: _Terms) -> tuple[str, str]:
    return "principal", t.centred_a


@heatmap("eigengradcam")
def _eigengradcam(t: _Terms) -> tuple[str, str]:
    return "principal", t.centred_ga


def unavailable(method: str, facts: LayerFacts, cam_weight: str | None) -> str | None:
    """Why ``method`` cannot be an in-graph heatmap of this layer (None when it can)."""
    if method == "cam" and not cam_weight:
        return "the 'cam' heatmap needs a GAP → Linear head after the target layer"
    if method in ("eigencam", "eigengradcam"):
        if facts.positions is None or facts.channels is None:
            return f"the {method} heatmap needs a fixed feature size"
        n = min(facts.positions, facts.channels)
        if n > EIGEN_MAX_SIZE:
            return (
                f"the {method} heatmap squares a {n}×{n} Gram matrix {EIGEN_SQUARINGS} times: "
                f"too costly above {EIGEN_MAX_SIZE} (the runtime computes it on the host)"
            )
    return None


def raw_maps(
    b: NodeBuilder, A: str, G: str, w: str | None, methods: list[str], facts: LayerFacts
) -> tuple[str, list[int]]:
    """Every method's raw map stacked to [B, M, h·w], and each method's row in the stack
    (methods whose maps are provably identical share a row).

    Channel-weighted methods share one MatMul: weights [B, K, C] @ A [B, C, h·w].
    """
    t = _Terms(b, A, G, w, facts)
    parts = [HEATMAPS[m](t) for m in methods]
    # one row per distinct tensor (HiRes-CAM's weights are Grad-CAM's under a pooled gradient)
    weights = list(dict.fromkeys(x for kind, x in parts if kind == "weights"))
    maps = list(dict.fromkeys(x for kind, x in parts if kind == "map"))
    blocks = []
    if weights:
        W = weights if t.row else [b.Reshape(x, b.ints([0, 1, -1])) for x in weights]
        blocks.append(b.MatMul(W[0] if len(W) == 1 else b.Concat(*W, axis=1), t.A))
    blocks += maps
    principal = list(dict.fromkeys(x for kind, x in parts if kind == "principal"))
    if principal:
        blocks.append(_principal_maps(t, principal))
    stacked = blocks[0] if len(blocks) == 1 else b.Concat(*blocks, axis=1)
    order = weights + maps + principal
    return stacked, [order.index(x) for _, x in parts]


def _extreme_rows(n_out: int, n_in: int) -> list[int]:
    """Output indices that can hold the min or max of a bilinear resize along one axis.

    Output rows interpolating the same source pair (j0, j1) are a convex combination whose
    weight grows with the row index, so along that axis the values between the first and last
    such row are monotone; in 2-D the map is bilinear in the two weights on each such cell, so
    its extremes lie on the cell's corner samples. The min/max of the whole resized map is
    therefore the min/max over these rows × these columns (about 2·n_in of each).
    """
    j0, j1, _ = bilinear_sources(n_out, n_in)
    first: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(j0.tolist(), j1.tolist(), strict=True)):
        first.setdefault(key, i)
        last[key] = i
    return sorted(set(first.values()) | set(last.values()))


def _scale_to_unit(b: NodeBuilder, m: str, lo: str, hi: str) -> str:
    """(m − lo) / (hi − lo); a constant map (hi = lo) becomes zeros, never NaN: m − lo is then
    exactly 0 and the divisor is clamped to the smallest normal float."""
    tiny = b.scalar(float(np.finfo(b.view.np_dtype(m)).tiny), m)
    return b.Div(b.Sub(m, lo), b.Max(b.Sub(hi, lo), tiny))


def postprocess(
    b: NodeBuilder,
    stacked: str,
    rows: list[int],
    A: str,
    feature: tuple[object, object],
    size: tuple[int, int] | None,
) -> list[str]:
    """ReLU → (bilinear resize to ``size``) → per-image min-max, for all maps of a layer at once.

    ``stacked`` is [B, M, h·w] (``raw_maps``), ``A`` the NCHW activations (for a dynamic
    feature size ``feature``); returns one [B, H, W] output per entry of ``rows``. The
    runtime's min-max before the resize is not repeated here: min-max is affine per image and
    bilinear resizing commutes with affine maps (its weights sum to 1), so
    min-max(resize(min-max(m))) = min-max(resize(m)) = resize(m scaled by the resized map's own
    min and max) — computed in that order: scale at feature resolution, then resize.
    """
    h, w = feature
    static = isinstance(h, int) and isinstance(w, int)
    if size is not None and not static:
        raise ExportError("in-graph heatmaps at input resolution need a fixed feature size")
    shape = (
        b.ints([0, -1, h, w])
        if static
        else b.Concat(b.ints([0, -1]), b.Shape(A, start=2, end=4), axis=0)
    )
    m = b.Relu(b.Reshape(stacked, shape))
    if size is None:
        lo = b.reduce("ReduceMin", m, [2, 3], 1)
        hi = b.reduce("ReduceMax", m, [2, 3], 1)
        unit = _scale_to_unit(b, m, lo, hi)
        done = {r: b.Gather(unit, b.const(np.int64(r)), axis=1) for r in set(rows)}
        return [done[r] for r in rows]
    H, W = size
    dtype = b.view.np_dtype(stacked)
    Ry, Rx = interpolation_matrix(H, h), interpolation_matrix(W, w)
    ry, rx = _extreme_rows(H, h), _extreme_rows(W, w)
    cand = b.MatMul(b.MatMul(b.const(Ry[ry].astype(dtype)), m), b.const(Rx[rx].T.astype(dtype)))
    lo = b.reduce("ReduceMin", cand, [2, 3], 1)
    hi = b.reduce("ReduceMax", cand, [2, 3], 1)
    tall = b.MatMul(b.const(Ry.astype(dtype)), _scale_to_unit(b, m, lo, hi))  # [B, M, H, w]
    rxt = b.const(Rx.T.astype(dtype))
    done = {r: b.MatMul(b.Gather(tall, b.const(np.int64(r)), axis=1), rxt) for r in set(rows)}
    return [done[r] for r in rows]


# --- FullGrad's bias map ----------------------------------------------------------------------
FULLGRAD_EPS = 1e-7
"""pytorch-grad-cam's ``scale_cam_image``: (t − min) / (1e-7 + max − min)."""


@dataclass(frozen=True)
class BiasLayer:
    """A layer with a bias on the score's path: z = Conv(x, W, b), or z = BatchNormalization
    (x, γ, β, μ, σ²) whose bias is β − μγ/√(σ² + ε) (FullGrad's, as pytorch-grad-cam's
    ``get_bias_data``)."""

    output: str
    """z, [B, C, h, w]."""
    op: str
    bias: tuple[str, ...]
    """Conv: (b,); BatchNormalization: (γ, β, μ, σ²)."""
    epsilon: float
    size: tuple[int, int]
    """(h, w) of z."""


def bias_layers(view: GraphView, x: str, logits: str) -> list[BiasLayer]:
    """The 2-D Conv (with a bias input) and BatchNormalization outputs between input ``x`` and
    ``logits`` — pytorch-grad-cam's FullGrad layers (``Conv2d``/``BatchNorm2d`` with a bias) as
    they appear in ONNX; a torch export folds an eval BatchNorm into the Conv before it, whose
    output is then the BatchNorm's and whose bias is β − μγ/√(σ² + ε) (plus the conv's own,
    scaled). Gemm/MatMul biases are not FullGrad's. A 1×1 output is left out: ψ of a single
    position is 0 (its min is its max)."""
    on_path = path_tensors(view, [x], [logits])
    found = []
    for node in view.topo_order():
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            bias, eps = (node.input[2],), 0.0
        elif node.op_type == "BatchNormalization" and not attr(node, "training_mode", 0):
            bias, eps = tuple(node.input[1:5]), float(attr(node, "epsilon", 1e-5))
        else:
            continue
        z = node.output[0]
        shape = view.shape(z)
        if z not in on_path or shape is None or len(shape) != 4:
            continue
        h, w = shape[2:]
        if not (isinstance(h, int) and isinstance(w, int)):
            raise ExportError(
                f"FullGrad needs static feature sizes; {node.op_type} output {z!r} is "
                f"{h}x{w}{view.size_hint(z)}"
            )
        if h * w > 1:
            found.append(BiasLayer(z, node.op_type, bias, eps, (h, w)))
    return found


def _bias_vector(b: NodeBuilder, layer: BiasLayer) -> str:
    """The layer's bias [C]: b, or β − μγ/√(σ² + ε) (folded by onnxruntime: constants)."""
    if layer.op == "Conv":
        return layer.bias[0]
    gamma, beta, mean, var = layer.bias
    scale = b.Div(gamma, b.Sqrt(b.Add(var, b.scalar(layer.epsilon, var))))
    return b.Sub(beta, b.Mul(mean, scale))


def _bias_channel_sum(b: NodeBuilder, layer: BiasLayer, g: str) -> str:
    """Σ_c ψ(b_c · g_c) [B, 1, h·w] for ∂score/∂z = ``g`` [B, C, h, w], ψ(t) = (|t| − min) /
    (ε + max − min) per image and channel. With |b_c g| = |b_c|·|g|, that is
    Σ_c (|g_c| − min|g_c|) · |b_c| / (ε + |b_c|(max|g_c| − min|g_c|)): one weighted channel
    sum (a ``MatMul``), the bias never broadcast over the map."""
    a = b.Reshape(b.Abs(g), b.ints([0, 0, -1]))  # [B, C, h·w]
    lo = b.reduce("ReduceMin", a, [2], 1)  # [B, C, 1]
    hi = b.reduce("ReduceMax", a, [2], 1)
    beta = b.Reshape(b.Abs(_bias_vector(b, layer)), b.ints([1, -1, 1]))  # [1, C, 1]
    eps = b.scalar(FULLGRAD_EPS, layer.output)
    weight = b.Div(beta, b.Add(b.Mul(beta, b.Sub(hi, lo)), eps))
    return b.MatMul(b.Transpose(weight, perm=[0, 2, 1]), b.Sub(a, lo))  # [B, 1, h·w]


def fullgrad_bias(
    b: NodeBuilder, layers: list[BiasLayer], grads: dict[str, str], size: tuple[int, int]
) -> str:
    """FullGrad's bias map [B, H, W]: Σ over ``layers`` of resize(Σ_c ψ(b_c · ∂score/∂z_c))
    (``grads``: z → its gradient), as pytorch-grad-cam's ``FullGrad`` (which resizes each
    channel with OpenCV's ``INTER_LINEAR`` before the channel sum). The resize is linear, so
    the layers of one resolution are summed first and resized once (two ``MatMul``s with the
    interpolation matrices: ``postprocess.interpolation_matrix``)."""
    H, W = size
    by_size: dict[tuple[int, int], list[str]] = {}
    for layer in layers:
        by_size.setdefault(layer.size, []).append(_bias_channel_sum(b, layer, grads[layer.output]))
    dtype = b.view.np_dtype(layers[0].output)
    maps = []
    for (h, w), parts in by_size.items():
        m = b.Reshape(parts[0] if len(parts) == 1 else b.Sum(*parts), b.ints([0, h, w]))
        if (h, w) != (H, W):
            ry = b.const(interpolation_matrix(H, h).astype(dtype))
            rxt = b.const(interpolation_matrix(W, w).T.astype(dtype))
            m = b.MatMul(b.MatMul(ry, m), rxt)
        maps.append(m)
    return maps[0] if len(maps) == 1 else b.Sum(*maps)


output_name = heatmap_name
"""Output name of a heatmap (defined in ``onnxcam.contract``)."""


def parse_methods(text: str | list[str] | None) -> list[str]:
    """'gradcam,layercam' | 'all' | list → validated heatmap method names."""
    if not text:
        return []
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    out: list[str] = []
    for n in names:
        if n == "all":
            out += list(HEATMAPS)
        elif n in HEATMAPS:
            out.append(n)
        elif n:
            raise ExportError(
                f"no in-graph heatmap for {n!r}; choose from {', '.join(HEATMAPS)} or all"
            )
    return list(dict.fromkeys(out))


__all__ = [
    "HEATMAPS",
    "BiasLayer",
    "LayerFacts",
    "bias_layers",
    "fullgrad_bias",
    "layer_facts",
    "output_name",
    "parse_methods",
    "postprocess",
    "raw_maps",
    "unavailable",
]
