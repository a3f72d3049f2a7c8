"""VJP rules of QDQ quantization: straight-through gradients through Q/DQ pairs.

An INT8 QDQ model computes ``DequantizeLinear(QuantizeLinear(x))`` = x rounded to the grid
``scale · (q − zero_point)`` and clipped to the integer range. The straight-through estimator
(Bengio et al. 2013, the rule quantization-aware training uses) passes the gradient through the
rounding unchanged and stops it where the clipping is active. Split over the two ops (the
quantized tensor between them carries a float gradient like any other):

* DequantizeLinear  y = (q − zp) · s  →  dq = g · s
* QuantizeLinear    q = clip(round(x / s) + zp)  →  dx = dq / s · [qmin ≤ x / s + zp ≤ qmax]

so a Q/DQ pair gives dx = g inside the range and 0 outside. Per-axis scales (``axis``) are
broadcast along their axis.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..graph import attr, input_or_none
from .registry import vjp


def _per_axis(b, scale: str, like: str, axis: int) -> str:
    """``scale`` shaped to broadcast against ``like``: as is when it has one value, else along
    ``axis``."""
    shape = b.view.shape(scale)
    rank = b.view.rank(like)
    if shape is None or len(shape) == 0 or rank is None or int(np.prod(shape)) == 1:
        return scale
    dims = [1] * rank
    dims[axis % rank] = -1
    return b.Reshape(scale, b.ints(dims))


@vjp("DequantizeLinear")
def _dequantize(b, n, gy, need):
    q, scale = n.input[0], n.input[1]
    s = _per_axis(b, scale, q, attr(n, "axis", 1))
    return [b.Mul(gy[0], s), None, None]


@vjp("QuantizeLinear")
def _quantize(b, n, gy, need):
    x, scale = n.input[0], n.input[1]
    zp = input_or_none(n, 2)
    s = _per_axis(b, scale, x, attr(n, "axis", 1))
    qtype = b.view.dtype(zp) if zp else attr(n, "output_dtype", 0) or TensorProto.UINT8
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(qtype))
    r = b.Div(x, s)
    if zp:
        r = b.Add(r, b.Cast(_per_axis(b, zp, x, attr(n, "axis", 1)), to=b.view.dtype(x)))
    inside = b.And(
        b.GreaterOrEqual(r, b.scalar(info.min - 0.5, x)),
        b.LessOrEqual(r, b.scalar(info.max + 0.5, x)),
    )
    dx = b.Div(gy[0], s)
    return [b.Where(inside, dx, b.scalar(0.0, x)), None, None]
