"""VJP rule of Resize: along each resized axis it is a constant matrix, so its adjoint is too.

Resize is separable. Along axis a, output o is a weighted sum of a few inputs around the source
coordinate x_a(o) (one for nearest, two for linear, four for cubic, indices clamped at the
border): ``y = x ×_a R_a`` with R_a a constant [out_a, in_a] matrix. The gradient is
``g ×_a R_aᵀ``: one MatMul per resized axis (``g·R`` for the last axis, ``Rᵀ·g`` for the one
before it, a Transpose around it for others). Exact for every coordinate transformation mode but
``tf_crop_and_resize``; the resized axes' sizes must be static, and ``antialias`` is refused.
Coordinates are computed in float32 like onnxruntime, so ties (x.5) round the way it rounds.
"""

from __future__ import annotations

import numpy as np

from onnxcam.errors import ExportError

from ..graph import attr, input_or_none, node_label
from .registry import vjp

_F = np.float32


def _source(mode: str, n_in: int, n_out: int, scale: float) -> np.ndarray | None:
    """Source coordinate of each output position (ONNX Resize's coordinate transformation);
    None for an unsupported mode."""
    o, s = np.arange(n_out, dtype=_F), _F(scale)
    if mode == "half_pixel":
        return (o + _F(0.5)) / s - _F(0.5)
    if mode == "pytorch_half_pixel":
        return (o + _F(0.5)) / s - _F(0.5) if n_out > 1 else np.zeros(1, _F)
    if mode == "half_pixel_symmetric":
        offset = _F(n_in / 2) * (_F(1) - _F(n_out) / (s * _F(n_in)))
        return offset + (o + _F(0.5)) / s - _F(0.5)
    if mode == "align_corners":
        return o * _F(n_in - 1) / _F(n_out - 1) if n_out > 1 else np.zeros(1, _F)
    if mode == "asymmetric":
        return o / s
    return None


_NEAREST = {
    "round_prefer_floor": lambda x: np.ceil(x - _F(0.5)),
    "round_prefer_ceil": lambda x: np.floor(x + _F(0.5)),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` (ONNX's ``cubic_coeff_a`` = a)."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _taps(n, x: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices [out, k] (clamped to the input, as edge padding) and their weights."""
    mode = attr(n, "mode", "nearest")
    if mode == "nearest":
        idx = _NEAREST[attr(n, "nearest_mode", "round_prefer_floor")](x)[:, None]
        return np.clip(idx, 0, n_in - 1).astype(np.int64), np.ones(idx.shape)
    x0 = np.floor(x).astype(np.float64)
    offsets = np.arange(2) if mode == "linear" else np.arange(-1, 3)
    idx = x0[:, None] + offsets[None, :]
    t = (x - x0)[:, None]
    if mode == "linear":
        w = np.hstack([1 - t, t])
    else:
        w = _cubic(offsets[None, :] - t, attr(n, "cubic_coeff_a", -0.75))
    if attr(n, "exclude_outside", 0):
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        w = w / w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1).astype(np.int64), w


def _resize_matrix(n, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """R [n_out, n_in] of one axis: y = R · x along it."""
    ctm = attr(n, "coordinate_transformation_mode", "half_pixel")
    x = _source(ctm, n_in, n_out, scale)
    mode = attr(n, "mode", "nearest")
    if x is None or mode not in ("nearest", "linear", "cubic"):
        what = f"coordinate_transformation_mode={ctm}" if x is None else f"mode={mode}"
        raise ExportError(f"Resize node {node_label(n)!r}: {what} is not supported")
    idx, w = _taps(n, x, n_in)
    R = np.zeros((n_out, n_in))
    np.add.at(R, (np.repeat(np.arange(n_out), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
    return R


def _scales(b, n, rank: int) -> list[float | None]:
    """Per-axis scale from the ``scales`` input (None per axis when ``sizes`` sets the size)."""
    name = input_or_none(n, 2)
    value = None if name is None else b.view.const(name)
    if name is not None and value is None:
        raise ExportError(f"Resize node {node_label(n)!r}: its scales must be a constant")
    if value is None or value.size == 0:
        policy = attr(n, "keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            raise ExportError(
                f"Resize node {node_label(n)!r}: keep_aspect_ratio_policy={policy} is not supported"
            )
        return [None] * rank
    axes = [int(a) % rank for a in attr(n, "axes") or range(rank)]
    out: list[float | None] = [1.0] * rank
    for a, s in zip(axes, np.asarray(value, dtype=np.float64).reshape(-1), strict=True):
        out[a] = float(s)
    return out


def _matrices(b, n) -> dict[int, np.ndarray]:
    """The interpolation matrix of every axis Resize changes."""
    x, y = n.input[0], n.output[0]
    sx, sy = b.view.shape(x), b.view.shape(y)
    if sx is None or sy is None:
        raise ExportError(f"Resize node {node_label(n)!r}: input/output ranks unknown")
    mats = {}
    for a, (d_in, d_out, s) in enumerate(zip(sx, sy, _scales(b, n, len(sx)), strict=True)):
        if d_in == d_out and d_in is not None and s in (None, 1.0):
            continue  # this axis is not resized (the identity in every mode)
        if not isinstance(d_in, int) or not isinstance(d_out, int):
            raise ExportError(
                f"Resize node {node_label(n)!r}: axis {a} resizes a dynamic size {d_in} -> "
                f"{d_out}; fix the input size with --size H W"
            )
        R = _resize_matrix(n, d_in, d_out, d_out / d_in if s is None else s)
        if R.shape[0] != R.shape[1] or not np.array_equal(R, np.eye(d_in)):
            mats[a] = R
    return mats


def _adjoint_along(b, g: str, R: np.ndarray, axis: int, rank: int) -> str:
    """``g`` ×_axis Rᵀ: g's [.., out, ..] along ``axis`` becomes [.., in, ..] (R is [out, in])."""
    if axis == rank - 2:
        return b.MatMul(b.const(np.ascontiguousarray(R.T)), g)
    if axis == rank - 1:
        return b.MatMul(g, b.const(R))
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return b.Transpose(b.MatMul(b.Transpose(g, perm=perm), b.const(R)), perm=perm)


@vjp("Resize")
def _resize(b, n, gy, need):
    # y = x ×_a R_a over the resized axes a;  dx = g ×_a R_aᵀ
    if attr(n, "antialias", 0):
        raise ExportError(f"Resize node {node_label(n)!r}: antialias=1 is not supported")
    x, g = n.input[0], gy[0]
    rank = len(b.view.shape(x) or ())
    dt = b.view.np_dtype(x)
    for a, R in _matrices(b, n).items():
        g = _adjoint_along(b, g, R.astype(dt), a, rank)
    return [g, None, None, None]
