"""VJP rules of network layers: convolution, pooling, reductions, normalization, Gemm/MatMul.

Weights are never differentiated (CAM needs no weight gradients) and are reused as they are:
the gradient of Conv is a ``ConvTranspose`` over the *same* weight initializer, the gradient of
Gemm is a ``Gemm`` over the same matrix with the other ``transB``.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np

from onnxcam.errors import ExportError, UnsupportedOpError

from ..graph import attr, input_or_none, ints, node_label
from .registry import vjp


# --- sliding windows (Conv, AveragePool) -----------------------------------------------------
@dataclass
class _Window:
    """Geometry of a sliding-window op over the spatial axes (all static)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads_begin: list[int]
    pads_end: list[int]
    in_size: list[int]
    out_size: list[int]

    def transpose_padding(self) -> tuple[list[int], list[int]]:
        """``pads`` and ``output_padding`` making ConvTranspose the exact adjoint of the window.

        ConvTranspose places tap j of window o at ``o·s − pad_begin + j·d`` and its output is
        ``s·(out−1) + (k−1)·d + 1 − pad_begin − pad_end + output_padding`` long. We need that
        length to be the forward input size; the excess ``e`` goes to ``pad_end`` when e ≥ 0
        (ceil_mode, or inputs the last window did not reach), else to ``output_padding`` (< s).
        """
        pad_end, out_pad = [], []
        for k, s, d, pb, n_in, n_out in zip(
            self.kernel,
            self.strides,
            self.dilations,
            self.pads_begin,
            self.in_size,
            self.out_size,
            strict=True,
        ):
            e = s * (n_out - 1) + (k - 1) * d + 1 - pb - n_in
            pad_end.append(max(e, 0))
            out_pad.append(max(-e, 0))
        return self.pads_begin + pad_end, out_pad


def _spatial(b, n, name: str) -> list[int]:
    s = b.view.shape(name)
    if s is None or any(not isinstance(d, int) for d in s[2:]):
        raise ExportError(
            f"{n.op_type} node {node_label(n)!r}: the spatial size of {name!r} must be static to "
            "differentiate it (fix the input size with --size H W)"
        )
    return [int(d) for d in s[2:]]


def _window(b, n, kernel: list[int]) -> _Window:
    """Read strides/dilations/pads/auto_pad of a Conv or pool node into a ``_Window``."""
    x, y = n.input[0], n.output[0]
    r = len(kernel)
    n_in, n_out = _spatial(b, n, x), _spatial(b, n, y)
    strides = list(attr(n, "strides") or [1] * r)
    dilations = list(attr(n, "dilations") or [1] * r)
    auto_pad = attr(n, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(attr(n, "pads") or [0] * (2 * r))
        begin, end = pads[:r], pads[r:]
    elif auto_pad == "VALID":
        begin, end = [0] * r, [0] * r
    else:  # SAME_UPPER / SAME_LOWER: total padding split, the odd one at the end (UPPER)
        begin, end = [], []
        for k, s, d, i, o in zip(kernel, strides, dilations, n_in, n_out, strict=True):
            total = max((o - 1) * s + (k - 1) * d + 1 - i, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
    return _Window(list(kernel), strides, dilations, begin, end, n_in, n_out)


def _data_input_only(n, need) -> None:
    """Refuse a node whose weights (inputs 1, 2, ...) depend on the target layer."""
    if any(need[1:]):
        raise UnsupportedOpError(
            f"{n.op_type} node {node_label(n)!r}: its weights depend on the target layer; only "
            "the data input can be differentiated"
        )


def _kernel(b, n) -> list[int]:
    """``kernel_shape``, else the weight's static spatial shape."""
    w_shape = b.view.static_shape(n.input[1])
    kernel = list(attr(n, "kernel_shape") or (w_shape[2:] if w_shape else []))
    if not kernel:
        raise ExportError(f"{n.op_type} node {node_label(n)!r}: kernel shape unknown")
    return kernel


@vjp("Conv")
def _conv(b, n, gy, need):
    # dx = ConvTranspose(g, W) with the forward strides/dilations/group and adjoint padding
    _data_input_only(n, need)
    w = n.input[1]
    win = _window(b, n, _kernel(b, n))
    pads, out_pad = win.transpose_padding()
    flipped = _as_conv(b, n, gy[0], win, pads, out_pad)
    if flipped is not None:
        return [flipped, None, None]
    dx = b.ConvTranspose(
        gy[0],
        w,
        strides=win.strides,
        dilations=win.dilations,
        group=attr(n, "group", 1),
        kernel_shape=win.kernel,
        pads=pads,
        output_padding=out_pad,
    )
    return [dx, None, None]


def _as_conv(b, n, g: str, win, pads: list[int], out_pad: list[int]) -> str | None:
    """The adjoint of a stride-1 Conv with constant weights as a Conv: the kernel flipped in
    space with its in/out channels swapped per group, padded by d·(k−1) − pad. The same sums
    as the ``ConvTranspose``, which onnxruntime's CPU provider runs several times slower
    (depthwise and 1×1 kernels above all: a YOLO head's backward). None when not applicable."""
    weight = b.view.const(n.input[1])
    if weight is None or any(s != 1 for s in win.strides) or any(out_pad):
        return None
    r = len(win.kernel)
    reach = [d * (k - 1) for d, k in zip(win.dilations, win.kernel, strict=True)]
    new_pads = [reach[i % r] - p for i, p in enumerate(pads)]
    if any(p < 0 for p in new_pads):
        return None
    group = attr(n, "group", 1)
    cout, cin_g = weight.shape[:2]
    w = weight.reshape(group, cout // group, cin_g, *weight.shape[2:])
    w = np.swapaxes(w, 1, 2).reshape(group * cin_g, cout // group, *weight.shape[2:])
    w = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + r))))
    return b.Conv(
        g,
        b.const(w),
        dilations=list(win.dilations),
        group=group,
        kernel_shape=list(win.kernel),
        pads=new_pads,
    )


def _conv_transpose_pads(n, r: int) -> list[int]:
    """The explicit ``pads`` of a ConvTranspose; ``auto_pad`` SAME_* and ``output_shape`` (whose
    padding split onnxruntime and the spec disagree on) are refused."""
    auto_pad = attr(n, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "", "VALID") or attr(n, "output_shape") is not None:
        what = "output_shape" if attr(n, "output_shape") is not None else f"auto_pad={auto_pad}"
        raise ExportError(
            f"ConvTranspose node {node_label(n)!r}: {what} is not supported on the gradient "
            "path (export it with explicit pads, as torch does)"
        )
    strides = attr(n, "strides") or [1] * r
    if any(p >= s for p, s in zip(attr(n, "output_padding") or [0] * r, strides, strict=True)):
        raise ExportError(f"ConvTranspose node {node_label(n)!r}: output_padding ≥ stride")
    pads = attr(n, "pads") if auto_pad != "VALID" else None
    return list(pads or [0] * (2 * r))


@vjp("ConvTranspose")
def _conv_transpose(b, n, gy, need):
    # y[o] += x[i]·W[j] at o = i·s − pad_begin + j·d: the adjoint reads g at those same taps,
    # dx = Conv(g, W) with the forward strides/dilations/group/pads (W is [C_in, C_out/group, k]
    # as a ConvTranspose weight, which is [M, C/group, k] for a Conv from C_out to C_in);
    # output_padding (< stride) only adds outputs no input reaches.
    _data_input_only(n, need)
    kernel = _kernel(b, n)
    r = len(kernel)
    dx = b.Conv(
        gy[0],
        n.input[1],
        strides=list(attr(n, "strides") or [1] * r),
        dilations=list(attr(n, "dilations") or [1] * r),
        group=attr(n, "group", 1),
        kernel_shape=kernel,
        pads=_conv_transpose_pads(n, r),
    )
    return [dx, None, None]


def _avg_pool_inverse_divisor(win: _Window, count_include_pad: int) -> np.ndarray:
    """1 / (number of elements each output window averaged), shape ``out_size``.

    Per axis, a tap counts when it lies inside the input (or inside input + pads when
    ``count_include_pad``); windows are products of per-axis ranges, so counts multiply.
    """
    counts = np.ones([1], dtype=np.float64)
    for k, s, d, pb, pe, n_in, n_out in zip(
        win.kernel,
        win.strides,
        win.dilations,
        win.pads_begin,
        win.pads_end,
        win.in_size,
        win.out_size,
        strict=True,
    ):
        taps = np.arange(n_out)[:, None] * s - pb + np.arange(k)[None, :] * d
        lo, hi = (-pb, n_in + pe) if count_include_pad else (0, n_in)
        c = ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.float64)
        counts = np.multiply.outer(counts, np.maximum(c, 1.0))
    return 1.0 / counts.reshape(win.out_size)


@vjp("AveragePool")
def _average_pool(b, n, gy, need):
    # dx = ConvTranspose(g / divisor, ones) per channel: each output spreads back over its window
    x = n.input[0]
    win = _window(b, n, list(attr(n, "kernel_shape")))
    dt = b.view.np_dtype(x)
    inv = _avg_pool_inverse_divisor(win, attr(n, "count_include_pad", 0)).astype(dt)
    g = b.Reshape(b.Mul(gy[0], b.const(inv)), b.ints([-1, 1, *win.out_size]))
    pads, out_pad = win.transpose_padding()
    dx = b.ConvTranspose(
        g,
        b.const(np.ones([1, 1, *win.kernel], dtype=dt)),
        strides=win.strides,
        dilations=win.dilations,
        kernel_shape=win.kernel,
        pads=pads,
        output_padding=out_pad,
    )
    return [b.reshape_like(dx, x)]


@vjp("MaxPool")
def _max_pool(b, n, gy, need):
    # dx = scatter-add of g at the argmax positions (MaxPool's optional Indices output,
    # flat over N·C·H·W): exact for overlapping windows, dilation and ceil_mode alike.
    if attr(n, "storage_order", 0) != 0:
        raise UnsupportedOpError(f"MaxPool node {node_label(n)!r}: storage_order=1")
    x = n.input[0]
    indices = b.enable_optional_output(n, 1, "argmax positions for the onnxcam gradient")
    flat = b.ScatterElements(
        b.Reshape(b.zeros_like(x), b.ints(-1)),
        b.Reshape(indices, b.ints(-1)),
        b.Reshape(gy[0], b.ints(-1)),
        axis=0,
        reduction="add",
    )
    return [b.reshape_like(flat, x)]


# --- reductions ------------------------------------------------------------------------------
def _inverse_count(b, x: str, axes: list[int], groups: int = 1) -> str:
    """``groups`` / (number of elements over ``axes`` of ``x``), a scalar of x's dtype: the
    inverse size of what one reduction (or one of ``groups`` groups) averages."""
    s = b.view.shape(x)
    dims = [s[a] for a in axes] if s is not None else [None]
    if all(isinstance(d, int) for d in dims):
        return b.scalar(groups / math.prod(dims), x)
    count = b.ReduceProd(b.Gather(b.Shape(x), b.ints(axes)), keepdims=0)
    inv = b.Reciprocal(b.Cast(count, to=b.view.dtype(x)))
    return b.Mul(inv, b.scalar(groups, x)) if groups != 1 else inv


def _reduce_axes(b, n, x: str) -> list[int] | None:
    """Normalised reduce axes; ``None`` when the op is the identity (noop_with_empty_axes)."""
    rank = b.view.rank(x)
    if rank is None:
        raise ExportError(f"{n.op_type} node {node_label(n)!r}: rank of {x!r} unknown")
    axes = attr(n, "axes")
    if axes is None and input_or_none(n, 1) is not None:
        axes = b.view.const(n.input[1])
        if axes is None:
            raise ExportError(f"{n.op_type} node {node_label(n)!r}: axes must be constant")
    if axes is None or len(ints(axes)) == 0:
        return None if attr(n, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in ints(axes))


def _keepdims(b, n, t: str, axes: list[int]) -> str:
    """A reduction's output (or its gradient) with the reduced axes kept as size 1."""
    return t if attr(n, "keepdims", 1) else b.Unsqueeze(t, b.ints(axes))


def _expand_back(b, n, g: str, x: str, axes: list[int]) -> str:
    """Broadcast a reduction's gradient back over the reduced axes of ``x``."""
    return b.Expand(_keepdims(b, n, g, axes), b.Shape(x))


@vjp("ReduceSum", "ReduceMean")
def _reduce_sum_mean(b, n, gy, need):
    # dx = broadcast(g) (· 1/count for the mean)
    x, g = n.input[0], gy[0]
    axes = _reduce_axes(b, n, x)
    if axes is None:
        return [g, None]
    if n.op_type == "ReduceMean":
        g = b.Mul(g, _inverse_count(b, x, axes))
    return [_expand_back(b, n, g, x, axes), None]


@vjp("ReduceMax", "ReduceMin")
def _reduce_max_min(b, n, gy, need):
    # dx = broadcast(g) where x equals the extremum
    x, y = n.input[0], n.output[0]
    axes = _reduce_axes(b, n, x)
    if axes is None:
        return [gy[0], None]
    hit = b.Equal(x, _expand_back(b, n, y, x, axes))
    return [b.Where(hit, _expand_back(b, n, gy[0], x, axes), b.scalar(0.0, x)), None]


@vjp("ReduceL2")
def _reduce_l2(b, n, gy, need):
    # y = √Σx²;  dx = x · g/y, and 0 where y = 0 (torch's norm backward); with no axes and
    # noop_with_empty_axes, y = |x| element-wise and the same formula holds
    x, y = n.input[0], n.output[0]
    axes = _reduce_axes(b, n, x)
    zero = b.scalar(0.0, y)
    q = b.Where(b.Equal(y, zero), zero, b.Div(gy[0], y))
    return [b.Mul(x, _keepdims(b, n, q, axes) if axes else q), None]


@vjp("ReduceLogSumExp")
def _reduce_log_sum_exp(b, n, gy, need):
    # y = log Σ exp x;  dx = g · exp(x − y)  (the softmax of x over the reduced axes)
    x, y = n.input[0], n.output[0]
    axes = _reduce_axes(b, n, x)
    if axes is None:
        return [gy[0], None]
    p = b.Exp(b.Sub(x, _keepdims(b, n, y, axes)))
    return [b.Mul(p, _keepdims(b, n, gy[0], axes)), None]


@vjp("GlobalAveragePool")
def _global_average_pool(b, n, gy, need):
    # dx = broadcast(g) / (H·W)
    x = n.input[0]
    rank = b.view.rank(x) or 4
    g = b.Mul(gy[0], _inverse_count(b, x, list(range(2, rank))))
    return [b.Expand(g, b.Shape(x))]


@vjp("GlobalMaxPool")
def _global_max_pool(b, n, gy, need):
    x, y = n.input[0], n.output[0]
    hit = b.Equal(x, b.Expand(y, b.Shape(x)))
    return [b.Where(hit, b.Expand(gy[0], b.Shape(x)), b.scalar(0.0, x))]


# --- normalization ---------------------------------------------------------------------------
@vjp("BatchNormalization")
def _batch_norm(b, n, gy, need):
    # inference: y = (x − mean)·scale/√(var + ε) + bias;  dx = g · scale/√(var + ε)
    if attr(n, "training_mode", 0):
        raise UnsupportedOpError(f"BatchNormalization node {node_label(n)!r}: training_mode=1")
    x, scale, var = n.input[0], n.input[1], n.input[4]
    rank = b.view.rank(x) or 4
    eps = b.scalar(attr(n, "epsilon", 1e-5), x)
    factor = b.Div(scale, b.Sqrt(b.Add(var, eps)))
    return [b.Mul(gy[0], b.Reshape(factor, b.ints([-1] + [1] * (rank - 2))))]


def _mean_over(b, t: str, axes: str, inv_n: str) -> str:
    return b.Mul(b.ReduceSum(t, axes, keepdims=1), inv_n)


def _normalize_grad(b, x: str, gh: str, axis_list: list[int], eps: float, inv_n: str) -> str:
    """dx of x̂ = (x − μ)·r, r = 1/√(σ² + ε) (moments over ``axis_list``, ``inv_n`` = 1/count),
    given ĝ = ∂/∂x̂:  dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂))."""
    axes = b.ints(axis_list)
    xc = b.Sub(x, _mean_over(b, x, axes, inv_n))
    var = _mean_over(b, b.Mul(xc, xc), axes, inv_n)
    r = b.Reciprocal(b.Sqrt(b.Add(var, b.scalar(eps, x))))
    xhat = b.Mul(xc, r)
    inner = b.Sub(
        b.Sub(gh, _mean_over(b, gh, axes, inv_n)),
        b.Mul(xhat, _mean_over(b, b.Mul(gh, xhat), axes, inv_n)),
    )
    return b.Mul(r, inner)


def _norm_rank(b, n) -> int:
    rank = b.view.rank(n.input[0])
    if rank is None:
        raise ExportError(f"{n.op_type} node {node_label(n)!r}: rank unknown")
    return rank


@vjp("LayerNormalization")
def _layer_norm(b, n, gy, need):
    # moments over axes [axis, rank);  ĝ = g·scale;  dx = _normalize_grad
    x, g = n.input[0], gy[0]
    rank = _norm_rank(b, n)
    axis_list = list(range(attr(n, "axis", -1) % rank, rank))
    scale = input_or_none(n, 1)
    gh = b.Mul(g, scale) if scale else g
    eps = attr(n, "epsilon", 1e-5)
    return [_normalize_grad(b, x, gh, axis_list, eps, _inverse_count(b, x, axis_list)), None, None]


@vjp("InstanceNormalization")
def _instance_norm(b, n, gy, need):
    # moments over the spatial axes of each (n, c);  ĝ = g·scale[c];  dx = _normalize_grad
    _data_input_only(n, need)
    x = n.input[0]
    rank = _norm_rank(b, n)
    spatial = list(range(2, rank))
    gh = b.Mul(gy[0], b.Reshape(n.input[1], b.ints([-1] + [1] * (rank - 2))))
    eps = attr(n, "epsilon", 1e-5)
    return [_normalize_grad(b, x, gh, spatial, eps, _inverse_count(b, x, spatial)), None, None]


@vjp("GroupNormalization")
def _group_norm(b, n, gy, need):
    # moments over x viewed as [N, G, C/G·spatial];  ĝ = g·scale, the scale per channel
    # (opset 21) or per group (opset 18, applied in the grouped view);  dx = _normalize_grad
    _data_input_only(n, need)
    x, scale, g = n.input[0], n.input[1], gy[0]
    rank, groups = _norm_rank(b, n), attr(n, "num_groups")
    if b.view.opset >= 21:
        g = b.Mul(g, b.Reshape(scale, b.ints([-1] + [1] * (rank - 2))))
    gh = b.Reshape(g, b.ints([0, groups, -1]))
    if b.view.opset < 21:
        gh = b.Mul(gh, b.Reshape(scale, b.ints([-1, 1])))
    inv_n = _inverse_count(b, x, list(range(1, rank)), groups)
    xg = b.Reshape(x, b.ints([0, groups, -1]))
    dx = _normalize_grad(b, xg, gh, [2], attr(n, "epsilon", 1e-5), inv_n)
    return [b.reshape_like(dx, x), None, None]


# --- linear algebra --------------------------------------------------------------------------
@vjp("Gemm")
def _gemm(b, n, gy, need):
    # Y = α·op(A)·op(B) + β·C, op = transpose when transA/transB
    a, w, g = n.input[0], n.input[1], gy[0]
    ta, tb = attr(n, "transA", 0), attr(n, "transB", 0)
    alpha, beta = attr(n, "alpha", 1.0), attr(n, "beta", 1.0)
    da = dw = dc = None
    if need[0]:
        # transA=0: dA = α·G·op(B)ᵀ          transA=1: dA = α·op(B)·Gᵀ
        da = (
            b.Gemm(w, g, alpha=alpha, transA=tb, transB=1)
            if ta
            else b.Gemm(g, w, alpha=alpha, transB=1 - tb)
        )
    if need[1]:
        # transB=0: dB = α·op(A)ᵀ·G          transB=1: dB = α·Gᵀ·op(A)
        dw = (
            b.Gemm(g, a, alpha=alpha, transA=1, transB=ta)
            if tb
            else b.Gemm(a, g, alpha=alpha, transA=1 - ta)
        )
    if len(n.input) > 2 and need[2]:
        # dC = β·G summed over the axes C was broadcast along
        gc = b.Mul(g, b.scalar(beta, g)) if beta != 1.0 else g
        dc = b.unbroadcast(gc, b.view.shape(n.output[0]), n.input[2])
    return [da, dw, dc]


def _swap_last_two(rank: int) -> list[int]:
    return [*range(rank - 2), rank - 1, rank - 2]


@vjp("MatMul")
def _matmul(b, n, gy, need):
    # Y = A·B (batched, broadcasting);  dA = G·Bᵀ,  dB = Aᵀ·G, each summed to its own shape
    a, c, g = n.input[0], n.input[1], gy[0]
    sa, sc, sy = b.view.shape(a), b.view.shape(c), b.view.shape(n.output[0])
    if sa is None or sc is None or sy is None or len(sa) < 2 or len(sc) < 2:
        raise UnsupportedOpError(
            f"MatMul node {node_label(n)!r}: only operands of known rank ≥ 2 are supported"
        )
    da = dc = None
    if need[0]:
        da = b.MatMul(g, b.Transpose(c, perm=_swap_last_two(len(sc))))
        da = b.unbroadcast(da, (*sy[:-2], *sa[-2:]), a)
    if need[1]:
        dc = b.MatMul(b.Transpose(a, perm=_swap_last_two(len(sa))), g)
        dc = b.unbroadcast(dc, (*sy[:-2], *sc[-2:]), c)
    return [da, dc]


# --- Einsum ----------------------------------------------------------------------------------
def _einsum_terms(b, n) -> tuple[list[str], str]:
    """Operand and output subscripts of an Einsum with ``...`` spelled out as fresh letters
    and the implicit output (labels used once, sorted) made explicit."""
    eq = attr(n, "equation").replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    fresh = [c for c in string.ascii_letters if c not in eq]
    ranks = [b.view.rank(x) for x in n.input]
    if any(r is None for r in ranks):
        raise ExportError(f"Einsum node {node_label(n)!r}: operand ranks unknown")
    spans = [r - len(t) + 3 if "..." in t else 0 for t, r in zip(terms, ranks, strict=True)]
    letters = "".join(fresh[: max(spans, default=0)])
    terms = [
        t.replace("...", letters[len(letters) - k :]) for t, k in zip(terms, spans, strict=True)
    ]
    if not arrow:
        once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1)
        out = letters + "".join(c for c in once if c not in letters)
    out = out.replace("...", letters)
    _check_einsum(b, n, terms, out)
    return terms, out


def _check_einsum(b, n, terms: list[str], out: str) -> None:
    """Refuse repeated labels in one operand (diagonals, traces) and labels whose static sizes
    differ between operands (a size-1 ``...`` dimension broadcast)."""
    sizes: dict[str, set] = {}
    for t, x in zip(terms, n.input, strict=True):
        if len(set(t)) != len(t):
            raise ExportError(
                f"Einsum node {node_label(n)!r}: repeated subscripts in {t!r} (a diagonal or "
                "trace) are not supported on the gradient path"
            )
        for c, d in zip(t, b.view.shape(x) or [None] * len(t), strict=True):
            if isinstance(d, int):
                sizes.setdefault(c, set()).add(d)
    if any(len(v) > 1 for v in sizes.values()):
        raise ExportError(
            f"Einsum node {node_label(n)!r}: operands {','.join(terms)} -> {out} broadcast a "
            "size-1 dimension; only equal sizes per label are supported on the gradient path"
        )


@vjp("Einsum")
def _einsum(b, n, gy, need):
    # Y = einsum(s_1, …, s_k -> s_y);  dX_i = einsum(s_y, s_j (j ≠ i) -> s_i), then broadcast
    # over the labels only s_i carries (the forward summed them away alone)
    terms, out = _einsum_terms(b, n)
    grads: list[str | None] = []
    for i, x in enumerate(n.input):
        others = [t for j, t in enumerate(terms) if j != i]
        seen = set(out).union(*others)
        kept = "".join(c for c in terms[i] if c in seen)
        dx = None
        if need[i]:
            ops = [gy[0], *(v for j, v in enumerate(n.input) if j != i)]
            dx = b.Einsum(*ops, equation=",".join([out, *others]) + "->" + kept)
            if kept != terms[i]:
                lost = [k for k, c in enumerate(terms[i]) if c not in seen]
                dx = b.Expand(b.Unsqueeze(dx, b.ints(lost)), b.Shape(x))
        grads.append(dx)
    return grads
