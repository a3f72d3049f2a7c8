"""VJP rules of element-wise ops: activations and broadcasting arithmetic.

Notation: x = input 0, y = output 0, g = dScore/dy. Every rule returns dScore/dx.
Masks follow torch's conventions at the kinks (e.g. ReLU6 passes gradient only strictly inside
(min, max)), so exported gradients match ``torch.autograd`` on the same weights.
"""

from __future__ import annotations

import math

import numpy as np

from onnxcam.errors import UnsupportedOpError

from ..graph import attr, input_or_none, node_label
from .registry import vjp


def _zero(b, like):
    return b.scalar(0.0, like)


def _keep(b, g: str, mask: str, like: str) -> str:
    """g where ``mask``, else 0: g · float(mask). A ``Where`` against a scalar 0 takes
    onnxruntime's broadcasting path, 4× slower on a [1, 96, 112, 112] map (10.3 vs 2.3 ms) —
    the ReLU6 masks of EfficientNet-Lite0's input gradient cost 26 ms that way."""
    return b.Mul(g, b.Cast(mask, to=b.view.dtype(like)))


def _step(b, y: str, bound: str | None, above: bool) -> str | None:
    """The float32 mask [y > bound] (``above``) or [y < bound] as one ``HardSigmoid``
    (min(1, max(0, s·(±y ∓ bound))) with s a power of two), or None where that is not exact
    (another dtype, a bound not constant at export).

    Why: a comparison → Cast → Mul mask runs in plain NCHW and element by element, so every
    backward Conv around it pays a layout reorder on each side; ``HardSigmoid`` and a
    same-shape ``Mul`` stay in onnxruntime's blocked NCHWc layout (docs/benchmarks.md,
    "Input gradient"). Exactness: s·(y − bound) is computed exactly for y near the bound
    (Sterbenz) and s is chosen so that the smallest step past the bound (one ulp, or the
    smallest normal float at bound 0) lands ≥ 1, and s·|bound| stays finite. The only
    inexact inputs are subnormal ReLU outputs (0 < y < 2⁻¹²⁶), which get the fraction 2¹²⁷·y.
    """
    if b.view.dtype(y) != 1:  # FLOAT
        return None
    value = 0.0 if bound is None else b.view.const(bound)
    if value is None or np.size(value) != 1:
        return None
    value = float(np.asarray(value).reshape(()))
    if not math.isfinite(value):
        return None
    scale = 127 if value == 0.0 else min(127, 125 - math.floor(math.log2(abs(value))))
    s = 2.0**scale
    alpha, beta = (s, -value * s) if above else (-s, value * s)
    return b.HardSigmoid(y, alpha=alpha, beta=beta)


def _masked(b, g: str, steps: list[str]) -> str:
    for m in steps:
        g = b.Mul(g, m)
    return g


@vjp("Identity")
def _identity(b, n, gy, need):
    return [gy[0]]


@vjp("Dropout")
def _dropout(b, n, gy, need):
    # inference: the identity (its mask output carries no gradient)
    mode = input_or_none(n, 2)
    if mode is not None and (b.view.const(mode) is None or bool(b.view.const(mode))):
        raise UnsupportedOpError(f"Dropout node {node_label(n)!r}: training_mode is not off")
    return [gy[0], None, None]


@vjp("Cast")
def _cast(b, n, gy, need):
    return [b.Cast(gy[0], to=b.view.dtype(n.input[0]))]


@vjp("Neg")
def _neg(b, n, gy, need):
    return [b.Neg(gy[0])]


@vjp("Relu")
def _relu(b, n, gy, need):
    # dx = g · [y > 0]
    y = n.output[0]
    step = _step(b, y, None, above=True)
    if step is not None:
        return [b.Mul(gy[0], step)]
    return [_keep(b, gy[0], b.Greater(y, _zero(b, y)), y)]


def _guided_relu(b, n, gy, need):
    # Guided Backpropagation: dx = [y > 0] · max(g, 0)
    y, g = n.output[0], gy[0]
    step = _step(b, y, None, above=True)
    if step is not None:
        return [b.Mul(b.Relu(g), step)]
    zero = _zero(b, y)
    return [_keep(b, g, b.And(b.Greater(y, zero), b.Greater(g, zero)), y)]


def _deconvnet_relu(b, n, gy, need):
    # Deconvnet: dx = max(g, 0), whatever the forward's sign
    return [b.Relu(gy[0])]


@vjp("LeakyRelu")
def _leaky_relu(b, n, gy, need):
    # dx = g if x > 0 else alpha · g
    x, g = n.input[0], gy[0]
    alpha = b.scalar(attr(n, "alpha", 0.01), x)
    return [b.Where(b.Greater(x, _zero(b, x)), g, b.Mul(g, alpha))]


@vjp("PRelu")
def _prelu(b, n, gy, need):
    # dx = g if x > 0 else slope · g  (slope broadcasts; its own gradient is never needed)
    x, g = n.input[0], gy[0]
    return [b.Where(b.Greater(x, _zero(b, x)), g, b.Mul(g, n.input[1])), None]


@vjp("Elu")
def _elu(b, n, gy, need):
    # dx = g if x > 0 else g · (y + alpha)
    x, y, g = n.input[0], n.output[0], gy[0]
    alpha = b.scalar(attr(n, "alpha", 1.0), x)
    return [b.Where(b.Greater(x, _zero(b, x)), g, b.Mul(g, b.Add(y, alpha)))]


@vjp("Selu")
def _selu(b, n, gy, need):
    # dx = gamma · g if x > 0 else g · (y + alpha · gamma)
    x, y, g = n.input[0], n.output[0], gy[0]
    alpha, gamma = (
        attr(n, "alpha", 1.67326319217681884765625),
        attr(n, "gamma", 1.05070102214813232421875),
    )
    pos = b.Mul(g, b.scalar(gamma, x))
    neg = b.Mul(g, b.Add(y, b.scalar(alpha * gamma, x)))
    return [b.Where(b.Greater(x, _zero(b, x)), pos, neg)]


@vjp("Softplus")
def _softplus(b, n, gy, need):
    # dx = g · sigmoid(x)
    return [b.Mul(gy[0], b.Sigmoid(n.input[0]))]


def _clip_bounds(b, n) -> tuple[str | None, str | None]:
    x = n.input[0]
    lo, hi = input_or_none(n, 1), input_or_none(n, 2)
    if lo is None and hi is None:  # opset < 11 keeps the bounds in attributes
        lo_v, hi_v = attr(n, "min"), attr(n, "max")
        lo = None if lo_v is None else b.scalar(lo_v, x)
        hi = None if hi_v is None else b.scalar(hi_v, x)
    return lo, hi


def _clip_mask(b, n, lo: str | None, hi: str | None) -> str | None:
    """[min < x < max], read from the output y (the same set: y = x there, y = a bound
    elsewhere), so a Conv → Clip pair stays fusible when a backward reads it."""
    y = n.output[0]
    masks = []
    if lo is not None:
        masks.append(b.Greater(y, lo))
    if hi is not None:
        masks.append(b.Less(y, hi))
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else b.And(*masks)


def _clip_steps(b, n, lo: str | None, hi: str | None) -> list[str] | None:
    """[min < x < max] as float32 ``HardSigmoid`` steps (see ``_step``); None where a bound
    does not allow it (then ``_clip_mask`` builds the comparisons)."""
    y = n.output[0]
    steps = [_step(b, y, lo, above=True)] if lo is not None else []
    steps += [_step(b, y, hi, above=False)] if hi is not None else []
    return None if any(s is None for s in steps) else steps


@vjp("Clip")
def _clip(b, n, gy, need):
    # dx = g · [min < x < max]  (torch's hardtanh/ReLU6 convention at the bounds)
    g = gy[0]
    steps = _clip_steps(b, n, *_clip_bounds(b, n))
    if steps is not None:
        return [_masked(b, g, steps), None, None]
    mask = _clip_mask(b, n, *_clip_bounds(b, n))
    if mask is None:
        return [g, None, None]
    return [_keep(b, g, mask, n.output[0]), None, None]


def _rectifier_clip(b, n) -> tuple[str | None, str | None] | None:
    """A Clip with min 0 (ReLU6): its bounds; None for another Clip (keeps its exact rule)."""
    lo, hi = _clip_bounds(b, n)
    value = None if lo is None else b.view.const(lo)
    return (lo, hi) if value is not None and float(value) == 0.0 else None


def _guided_clip(b, n, gy, need):
    # Guided Backpropagation through ReLU6: dx = [0 < x < max] · max(g, 0)
    bounds = _rectifier_clip(b, n)
    if bounds is None:
        return _clip(b, n, gy, need)
    steps = _clip_steps(b, n, *bounds)
    if steps is not None:
        return [_masked(b, b.Relu(gy[0]), steps), None, None]
    g, zero = gy[0], _zero(b, n.output[0])
    mask = b.And(_clip_mask(b, n, *bounds), b.Greater(g, zero))
    return [_keep(b, g, mask, n.output[0]), None, None]


def _deconvnet_clip(b, n, gy, need):
    # Deconvnet through ReLU6: dx = max(g, 0) · [x < max] (the rectifier ignores x's sign)
    bounds = _rectifier_clip(b, n)
    if bounds is None:
        return _clip(b, n, gy, need)
    g = b.Relu(gy[0])
    if bounds[1] is None:
        return [g, None, None]
    step = _step(b, n.output[0], bounds[1], above=False)
    if step is not None:
        return [b.Mul(g, step), None, None]
    cap = b.Less(n.output[0], bounds[1])
    return [_keep(b, g, cap, n.output[0]), None, None]


@vjp("Sigmoid")
def _sigmoid(b, n, gy, need):
    # dx = g · y · (1 − y)
    y = n.output[0]
    return [b.Mul(gy[0], b.Mul(y, b.Sub(b.scalar(1.0, y), y)))]


@vjp("HardSigmoid")
def _hard_sigmoid(b, n, gy, need):
    # y = clip(alpha·x + beta, 0, 1);  dx = alpha · g · [0 < alpha·x + beta < 1]
    x, g = n.input[0], gy[0]
    alpha, beta = attr(n, "alpha", 0.2), attr(n, "beta", 0.5)
    t = b.Add(b.Mul(x, b.scalar(alpha, x)), b.scalar(beta, x))
    inside = b.And(b.Greater(t, _zero(b, x)), b.Less(t, b.scalar(1.0, x)))
    return [_keep(b, b.Mul(g, b.scalar(alpha, x)), inside, x)]


@vjp("HardSwish")
def _hard_swish(b, n, gy, need):
    # y = x · relu6(x + 3) / 6;  dx = 0 (x < −3),  g · (x/3 + 1/2) (−3 ≤ x ≤ 3),  g (x > 3)
    x, g = n.input[0], gy[0]
    mid = b.Mul(g, b.Add(b.Mul(x, b.scalar(1.0 / 3.0, x)), b.scalar(0.5, x)))
    upper = b.Where(b.Greater(x, b.scalar(3.0, x)), g, mid)
    return [b.Where(b.Less(x, b.scalar(-3.0, x)), _zero(b, x), upper)]


@vjp("Tanh")
def _tanh(b, n, gy, need):
    # dx = g · (1 − y²)
    y = n.output[0]
    return [b.Mul(gy[0], b.Sub(b.scalar(1.0, y), b.Mul(y, y)))]


@vjp("Erf")
def _erf(b, n, gy, need):
    # dx = g · 2/√π · exp(−x²)
    x = n.input[0]
    e = b.Exp(b.Neg(b.Mul(x, x)))
    return [b.Mul(gy[0], b.Mul(e, b.scalar(2.0 / math.sqrt(math.pi), x)))]


@vjp("Gelu")
def _gelu(b, n, gy, need):
    x, g = n.input[0], gy[0]
    if attr(n, "approximate", "none") == "tanh":
        # y = x/2 · (1 + tanh(u)), u = √(2/π)(x + 0.044715 x³)
        # dy/dx = (1 + t)/2 + x/2 · (1 − t²) · √(2/π)(1 + 3·0.044715 x²)
        c = math.sqrt(2.0 / math.pi)
        x2 = b.Mul(x, x)
        u = b.Mul(b.Add(x, b.Mul(b.Mul(x2, x), b.scalar(0.044715, x))), b.scalar(c, x))
        t = b.Tanh(u)
        du = b.Mul(b.Add(b.scalar(1.0, x), b.Mul(x2, b.scalar(3 * 0.044715, x))), b.scalar(c, x))
        left = b.Mul(b.Add(b.scalar(1.0, x), t), b.scalar(0.5, x))
        right = b.Mul(b.Mul(b.Mul(x, b.scalar(0.5, x)), b.Sub(b.scalar(1.0, x), b.Mul(t, t))), du)
        return [b.Mul(g, b.Add(left, right))]
    # exact: dy/dx = Φ(x) + x·φ(x)
    cdf = b.Mul(
        b.Add(b.Erf(b.Mul(x, b.scalar(1 / math.sqrt(2), x))), b.scalar(1.0, x)), b.scalar(0.5, x)
    )
    pdf = b.Mul(
        b.Exp(b.Mul(b.Mul(x, x), b.scalar(-0.5, x))), b.scalar(1 / math.sqrt(2 * math.pi), x)
    )
    return [b.Mul(g, b.Add(cdf, b.Mul(x, pdf)))]


@vjp("Exp")
def _exp(b, n, gy, need):
    return [b.Mul(gy[0], n.output[0])]


@vjp("Log")
def _log(b, n, gy, need):
    return [b.Div(gy[0], n.input[0])]


@vjp("Reciprocal")
def _reciprocal(b, n, gy, need):
    # y = 1/x;  dx = −g · y²
    y = n.output[0]
    return [b.Neg(b.Mul(gy[0], b.Mul(y, y)))]


@vjp("Abs")
def _abs(b, n, gy, need):
    return [b.Mul(gy[0], b.Sign(n.input[0]))]


@vjp("Sqrt")
def _sqrt(b, n, gy, need):
    # dx = g / (2y)
    y = n.output[0]
    return [b.Div(b.Mul(gy[0], b.scalar(0.5, y)), y)]


@vjp("Softmax")
def _softmax(b, n, gy, need):
    # dx = y · (g − Σ_axis g·y)
    y, g = n.output[0], gy[0]
    axes = b.ints(attr(n, "axis", -1))
    s = b.ReduceSum(b.Mul(g, y), axes, keepdims=1)
    return [b.Mul(y, b.Sub(g, s))]


@vjp("LogSoftmax")
def _log_softmax(b, n, gy, need):
    # dx = g − exp(y) · Σ_axis g
    y, g = n.output[0], gy[0]
    s = b.ReduceSum(g, b.ints(attr(n, "axis", -1)), keepdims=1)
    return [b.Sub(g, b.Mul(b.Exp(y), s))]


# --- broadcasting arithmetic: gradients at the output shape; the walker un-broadcasts ----------


@vjp("Add", broadcasting=True)
def _add(b, n, gy, need):
    return [gy[0], gy[0]]


@vjp("Sub", broadcasting=True)
def _sub(b, n, gy, need):
    return [gy[0], b.Neg(gy[0]) if need[1] else None]


@vjp("Mul", broadcasting=True)
def _mul(b, n, gy, need):
    a, c = n.input[0], n.input[1]
    return [b.Mul(gy[0], c) if need[0] else None, b.Mul(gy[0], a) if need[1] else None]


@vjp("Div", broadcasting=True)
def _div(b, n, gy, need):
    # y = a / c;  da = g / c;  dc = −g · y / c
    a, c = n.input[0], n.input[1]
    da = b.Div(gy[0], c) if need[0] else None
    dc = b.Neg(b.Div(b.Mul(gy[0], n.output[0]), c)) if need[1] else None
    del a
    return [da, dc]


@vjp("Pow", broadcasting=True)
def _pow(b, n, gy, need):
    # y = a^p;  da = g · p · a^(p−1);  dp = g · y · ln(a)
    a, p, g = n.input[0], n.input[1], gy[0]
    da = dp = None
    if need[0]:
        pv = b.view.const(p)
        if pv is not None:
            dt = b.view.np_dtype(a)
            if pv.size == 1 and float(pv.reshape(-1)[0]) == 2.0:
                da = b.Mul(g, b.Mul(a, b.scalar(2.0, a)))
            else:
                pm1 = b.Pow(a, b.const(np.asarray(pv, dtype=dt) - 1))
                da = b.Mul(g, b.Mul(pm1, b.const(np.asarray(pv, dtype=dt))))
        else:
            pc = b.Cast(p, to=b.view.dtype(a))
            da = b.Mul(g, b.Mul(b.Pow(a, b.Sub(pc, b.scalar(1.0, a))), pc))
    if need[1]:
        dp = b.Mul(g, b.Mul(n.output[0], b.Log(a)))
    return [da, dp]


@vjp("Sum", broadcasting=True)
def _sum(b, n, gy, need):
    return [gy[0]] * len(n.input)


@vjp("Mean", broadcasting=True)
def _mean(b, n, gy, need):
    g = b.Mul(gy[0], b.scalar(1.0 / len(n.input), n.output[0]))
    return [g] * len(n.input)


@vjp("Max", "Min", broadcasting=True)
def _max_min(b, n, gy, need):
    # the gradient flows to the input(s) equal to the result
    y, g = n.output[0], gy[0]
    return [
        b.Where(b.Equal(x, y), g, _zero(b, y)) if need[k] else None for k, x in enumerate(n.input)
    ]


@vjp("Where", broadcasting=True)
def _where(b, n, gy, need):
    cond, g = n.input[0], gy[0]
    z = _zero(b, n.output[0])
    return [
        None,
        b.Where(cond, g, z) if need[1] else None,
        b.Where(cond, z, g) if need[2] else None,
    ]


@vjp("Expand", broadcasting=True)
def _expand(b, n, gy, need):
    return [gy[0], None]


RELU_RULES = {
    "guided": {"Relu": _guided_relu, "Clip": _guided_clip},
    "deconvnet": {"Relu": _deconvnet_relu, "Clip": _deconvnet_clip},
}
"""The alternative rectifier rules of ``contract.RULE_SETS`` (``autodiff.build_backward(rules=)``):
``Relu``, and ``Clip`` with min 0 (ReLU6; another Clip keeps its exact rule)."""
