"""In-graph heatmaps: the CAM maps themselves as graph outputs, in standard ONNX ops.

Any onnxruntime client (C#, Java, JavaScript, Triton) then gets finished maps from one run,
with no post-processing code. Each builder mirrors the numpy function of the same name in
``onnxcam/methods.py``; the post-processing mirrors ``onnxcam/postprocess.py``: ReLU →
per-image min-max (constant → zeros) → bilinear resize (``Resize`` linear, half-pixel centres,
the same as OpenCV's ``INTER_LINEAR``) → min-max again. Inputs are NCHW ``A``, ``G``.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxcam.errors import ExportError

from .builder import GradBuilder

Builder = Callable[..., str]
HEATMAPS: dict[str, Builder] = {}
"""method name → builder(b, A, G, w) returning the raw map [B, h, w]."""


def heatmap(name: str):
    def register(fn: Builder) -> Builder:
        HEATMAPS[name] = fn
        return fn

    return register


def _reduce(b: GradBuilder, op: str, x: str, axes: list[int], keepdims: int) -> str:
    """Reduce* over ``axes`` in the model's opset (axes became an input in opset 18;
    ReduceSum already in 13)."""
    if op == "ReduceSum" or b.view.opset >= 18:
        return b.op(op, x, b.ints(axes), keepdims=keepdims)
    return b.op(op, x, axes=axes, keepdims=keepdims)


def _weighted_sum(b: GradBuilder, w: str, A: str) -> str:
    """Σ_c w[b, c, 1, 1] · A[b, c, :, :] → [B, h, w]."""
    return _reduce(b, "ReduceSum", b.Mul(w, A), [1], 0)


@heatmap("gradcam")
def _gradcam(b, A, G, w):
    return _weighted_sum(b, _reduce(b, "ReduceMean", G, [2, 3], 1), A)


@heatmap("gradcam++")
def _gradcam_pp(b, A, G, w):
    g2 = b.Mul(G, G)
    g3 = b.Mul(g2, G)
    sum_a = b.ReduceSum(A, b.ints([2, 3]), keepdims=1)
    denom = b.Add(b.Add(b.Mul(g2, b.scalar(2.0, G)), b.Mul(sum_a, g3)), b.scalar(1e-6, G))
    zero = b.scalar(0.0, G)
    a = b.Where(b.Equal(G, zero), zero, b.Div(g2, denom))
    weights = b.ReduceSum(b.Mul(a, b.Relu(G)), b.ints([2, 3]), keepdims=1)
    return _weighted_sum(b, weights, A)


@heatmap("xgradcam")
def _xgradcam(b, A, G, w):
    num = b.ReduceSum(b.Mul(G, A), b.ints([2, 3]), keepdims=1)
    den = b.Add(b.ReduceSum(A, b.ints([2, 3]), keepdims=1), b.scalar(1e-7, A))
    return _weighted_sum(b, b.Div(num, den), A)


@heatmap("layercam")
def _layercam(b, A, G, w):
    return b.ReduceSum(b.Mul(b.Relu(G), A), b.ints(1), keepdims=0)


@heatmap("hirescam")
def _hirescam(b, A, G, w):
    return b.ReduceSum(b.Mul(G, A), b.ints(1), keepdims=0)


@heatmap("gradcam-elementwise")
def _gradcam_elementwise(b, A, G, w):
    return b.ReduceSum(b.Relu(b.Mul(G, A)), b.ints(1), keepdims=0)


@heatmap("cam")
def _cam(b, A, G, w):
    if w is None:
        raise ExportError("the 'cam' heatmap needs a GAP → Linear head after the target layer")
    return _weighted_sum(b, b.Unsqueeze(w, b.ints([2, 3])), A)


def _minmax(b: GradBuilder, m: str, axes: list[int]) -> str:
    """Per-image (x − min) / (max − min) over ``axes``; 0 where the map is constant."""
    lo = _reduce(b, "ReduceMin", m, axes, 1)
    hi = _reduce(b, "ReduceMax", m, axes, 1)
    span = b.Sub(hi, lo)
    zero = b.scalar(0.0, m)
    safe = b.Where(b.Greater(span, zero), span, b.scalar(1.0, m))
    return b.Where(b.Greater(span, zero), b.Div(b.Sub(m, lo), safe), zero)


def postprocess(b: GradBuilder, raws: list[str], size: tuple[int, int] | None) -> list[str]:
    """ReLU → (bilinear resize to ``size``) → per-image min-max, for all maps of a layer at once.

    The maps are stacked to [B, M, h, w] so one Resize and one min-max serve every method.
    The runtime's min-max *before* the resize is not repeated here: min-max is an affine map
    per image and bilinear resizing commutes with it, so min-max(resize(min-max(m))) equals
    min-max(resize(m)) (and a constant map still becomes zeros).
    """
    stacked = b.Concat(*[b.Unsqueeze(r, b.ints(1)) for r in raws], axis=1)
    m = b.Relu(stacked)
    if size is not None:
        sizes = b.Concat(b.Shape(m, start=0, end=2), b.ints(list(size)), axis=0)
        m = b.Resize(m, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    m = _minmax(b, m, [2, 3])
    if len(raws) == 1:
        return [b.Squeeze(m, b.ints(1))]
    parts = b.Split(m, b.ints([1] * len(raws)), axis=1, outputs=len(raws))
    return [b.Squeeze(p, b.ints(1)) for p in parts]


def output_name(method: str, k: int) -> str:
    """``onnxcam_heatmap_<method>_<k>`` with '+' spelled 'p' (gradcam++ → gradcampp)."""
    return f"onnxcam_heatmap_{method.replace('+', 'p').replace('-', '_')}_{k}"


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


__all__ = ["HEATMAPS", "output_name", "parse_methods", "postprocess"]
