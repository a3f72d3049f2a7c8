"""VJP rules of data-movement ops: reshapes, transposes, concat/split, slicing, gather, pad.

All of them are linear maps that only move values, so each gradient moves ``g`` back:
reshape-like ops reshape to x's runtime shape; Concat/Split swap roles; Slice, Gather and
non-constant Pad modes scatter ``g`` back with ``ScatterElements(reduction="add")``.
"""

from __future__ import annotations

import numpy as np

from onnxcam.errors import ExportError

from ..graph import attr, input_or_none, ints, node_label
from .registry import vjp

INT64_MAX = np.iinfo(np.int64).max


def _const_input(b, n, k: int, what: str) -> np.ndarray | None:
    name = input_or_none(n, k)
    if name is None:
        return None
    v = b.view.const(name)
    if v is None:
        raise ExportError(
            f"{n.op_type} node {node_label(n)!r}: its {what} must be a constant to "
            f"differentiate it{b.view.size_hint(name)}"
        )
    return v


def _static_dim(b, n, x: str, axis: int) -> int:
    s = b.view.shape(x)
    d = None if s is None else s[axis]
    if not isinstance(d, int):
        raise ExportError(
            f"{n.op_type} node {node_label(n)!r}: dimension {axis} of {x!r} must be static "
            "to differentiate it (fix the input size with --size H W)"
        )
    return d


def _scatter_axis(b, g: str, rank: int, idx: np.ndarray, axis: int, dim: int) -> str:
    """Adjoint of ``take(x, idx, axis)``: zeros with ``dim`` along ``axis``, ``g`` added at idx."""
    shape_g = b.Shape(g)
    pieces = [b.ints(dim)]
    if axis > 0:
        pieces.insert(0, b.Shape(g, start=0, end=axis))
    if axis < rank - 1:
        pieces.append(b.Shape(g, start=axis + 1))
    zeros = b.zeros(b.Concat(*pieces, axis=0) if len(pieces) > 1 else pieces[0], g)
    idx_shape = [1] * rank
    idx_shape[axis] = -1
    idx_t = b.Expand(b.const(np.asarray(idx, dtype=np.int64).reshape(idx_shape)), shape_g)
    return b.ScatterElements(zeros, idx_t, g, axis=axis, reduction="add")


def _rank(b, n, x: str) -> int:
    r = b.view.rank(x)
    if r is None:
        raise ExportError(f"{n.op_type} node {node_label(n)!r}: the rank of {x!r} is unknown")
    return r


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b, n, gy, need):
    return [b.reshape_like(gy[0], n.input[0]), None]


@vjp("Transpose")
def _transpose(b, n, gy, need):
    perm = attr(n, "perm") or list(reversed(range(_rank(b, n, n.input[0]))))
    return [b.Transpose(gy[0], perm=[int(i) for i in np.argsort(perm)])]


@vjp("Concat")
def _concat(b, n, gy, need):
    rank = _rank(b, n, n.output[0])
    axis = attr(n, "axis") % rank
    dims = [(b.view.shape(x) or [None] * rank)[axis] for x in n.input]
    if all(isinstance(d, int) for d in dims):
        parts = b.Split(gy[0], b.ints(dims), axis=axis, outputs=len(dims))
        parts = [parts] if isinstance(parts, str) else parts
        return [p if need[k] else None for k, p in enumerate(parts)]
    # dynamic sizes: slice [start_k, start_k + size_k) along axis
    grads, start = [], b.ints(0)
    for k, x in enumerate(n.input):
        size = b.Shape(x, start=axis, end=axis + 1)
        end = b.Add(start, size)
        grads.append(b.Slice(gy[0], start, end, b.ints(axis)) if need[k] else None)
        start = end
    return grads


@vjp("Split")
def _split(b, n, gy, need):
    rank = _rank(b, n, n.input[0])
    axis = attr(n, "axis", 0) % rank
    parts = [g if g is not None else b.zeros_like(o) for g, o in zip(gy, n.output, strict=True)]
    return [b.Concat(*parts, axis=axis), None]


@vjp("Slice")
def _slice(b, n, gy, need):
    x, g = n.input[0], gy[0]
    rank = _rank(b, n, x)
    starts = _const_input(b, n, 1, "starts")
    ends = _const_input(b, n, 2, "ends")
    axes = _const_input(b, n, 3, "axes")
    steps = _const_input(b, n, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(axes) if steps is None else ints(steps)
    pads = [0] * (2 * rank)
    scatters = []
    for a, s, e, st in zip(axes, ints(starts), ints(ends), steps, strict=True):
        dim = _static_dim(b, n, x, a)
        idx = _slice_indices(s, e, st, dim)
        if st == 1:
            lo = int(idx[0]) if idx.size else 0
            pads[a], pads[rank + a] = lo, dim - lo - idx.size
        else:
            scatters.append((a, idx, dim))
    for a, idx, dim in scatters:
        g = _scatter_axis(b, g, rank, idx, a, dim)
    if any(pads):
        g = b.Pad(g, b.ints(pads))
    return [g, None, None, None, None]


def _slice_indices(start: int, end: int, step: int, dim: int) -> np.ndarray:
    """Positions ONNX Slice reads along one axis (its clamping differs from Python's)."""
    if step == 0:
        raise ExportError("Slice with step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


@vjp("Gather")
def _gather(b, n, gy, need):
    x, g = n.input[0], gy[0]
    rank = _rank(b, n, x)
    axis = attr(n, "axis", 0) % rank
    idx = _const_input(b, n, 1, "indices")
    dim = _static_dim(b, n, x, axis)
    flat = np.where(idx < 0, idx + dim, idx).reshape(-1)
    if idx.ndim == 0:
        g = b.Unsqueeze(g, b.ints(axis))
    elif idx.ndim != 1:
        parts = [b.ints(-1)]
        if axis > 0:
            parts.insert(0, b.Shape(x, start=0, end=axis))
        if axis < rank - 1:
            parts.append(b.Shape(x, start=axis + 1))
        g = b.Reshape(g, b.Concat(*parts, axis=0))
    return [_scatter_axis(b, g, rank, flat, axis, dim), None]


@vjp("Pad")
def _pad(b, n, gy, need):
    x, g = n.input[0], gy[0]
    rank = _rank(b, n, x)
    pads = ints(_const_input(b, n, 1, "pads"))
    axes_v = _const_input(b, n, 3, "axes")
    axes = list(range(rank)) if axes_v is None else [int(a) % rank for a in axes_v]
    begin, end = pads[: len(axes)], pads[len(axes) :]
    mode = attr(n, "mode", "constant")
    if mode == "constant":
        grow = [0] * (2 * rank)  # negative pads cropped x: give those positions zero gradient
        for a, pb, pe in zip(axes, begin, end, strict=True):
            grow[a], grow[rank + a] = max(-pb, 0), max(-pe, 0)
        if any(grow):
            g = b.Pad(g, b.ints(grow))
        starts = [max(pb, 0) for pb in begin]
        stops = [-pe if pe > 0 else INT64_MAX for pe in end]
        return [b.Slice(g, b.ints(starts), b.ints(stops), b.ints(axes)), None, None, None]
    for a, pb, pe in zip(axes, begin, end, strict=True):
        if pb == 0 and pe == 0:
            continue
        dim = _static_dim(b, n, x, a)
        p = np.arange(-pb, dim + pe)
        if mode == "edge":
            src = np.clip(p, 0, dim - 1)
        elif mode == "reflect":
            period = max(2 * (dim - 1), 1)
            m = np.mod(p, period)
            src = np.where(m < dim, m, period - m)
        elif mode == "wrap":
            src = np.mod(p, dim)
        else:
            raise ExportError(f"Pad node {node_label(n)!r}: unknown mode {mode!r}")
        g = _scatter_axis(b, g, rank, src, a, dim)
    return [g, None, None, None]


def _tiled_view(b, x: str, reps: list[int]) -> str:
    """The shape [r_0, d_0, r_1, d_1, …] of a Tile's output split into (repeat, x) axes; axes
    with r = 1 keep only d. Static when x's shape is, else read at run time."""
    s = b.view.shape(x)
    if s is not None and all(isinstance(d, int) for d in s):
        pairs = zip(reps, s, strict=True)
        return b.ints([v for r, d in pairs for v in ([r, d] if r != 1 else [d])])
    parts = []
    for a, r in enumerate(reps):
        if r != 1:
            parts.append(b.ints(r))
        parts.append(b.Shape(x, start=a, end=a + 1))
    return b.Concat(*parts, axis=0)


@vjp("Tile")
def _tile(b, n, gy, need):
    # y = x repeated r_a times along each axis a: view g as [r_0, d_0, r_1, d_1, …] and sum
    # over the repeat axes
    x = n.input[0]
    reps = ints(_const_input(b, n, 1, "repeats"))
    if all(r == 1 for r in reps):
        return [gy[0], None]
    g = b.Reshape(gy[0], _tiled_view(b, x, reps))
    axes = [a + k for k, a in enumerate(i for i, r in enumerate(reps) if r != 1)]
    return [b.ReduceSum(g, b.ints(axes), keepdims=0), None]
