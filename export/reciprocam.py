"""ReciproCAM in the graph (Byun & Lee, arXiv 2209.14074), as OpenVINO XAI computes it.

For a target map A [B, C, h, w], copy j (j = 0 … h·w − 1, row-major) keeps position j only,
A ⊙ e_j (a one-hot spatial mask over all channels: OpenVINO XAI's CNN ``ReciproCAM``, which
has no Gaussian option — only its ViT variant does). The h·w copies of every image run through
the head (the layers after the target, ``export/head.py``) in one batch of B·h·w rows, and

    M[b, j] = z_c(head(A_b ⊙ e_j)),   c = the explained class of image b,

the pre-softmax logit (OpenVINO XAI reads the input of the model's final Softmax, or the
output's producer when there is none). The map is raw; OpenVINO XAI's ``embed_scaling`` is a
per-map min-max to [0, 255], which the runtime's min-max reproduces (``reciprocam`` subtracts
the minimum first so that its ReLU is a no-op).

**GAP shortcut** (exact): when the head's only reader of A is a global average pool, the pooled
copy is A[:, :, j] / (h·w) — the other positions are zero — so the head is run from the pool's
output on B·h·w pooled vectors built with one Reshape/Transpose/Mul, never on h·w masked maps:
a C·h·w-fold smaller batch (EfficientNet-Lite0, ResNet-50: the whole head is then one Gemm).

**ViT-ReciproCAM** (arXiv 2310.02588; a token target ``[B, P + N, D]``): OpenVINO XAI's
``ViTReciproCAM`` defaults — copy j keeps the P prefix tokens and weighs the patch tokens by a
3×3 Gaussian centred on patch j (``token_masks``), and the residual stream the head reads from
before the target (the block's input X, a skip tensor of the same shape) is masked the same
way: with the last block's norm1 as the target this is OpenVINO XAI's mosaic of both X and
LayerNorm(X).

Everything lives in ``If(onnxcam_mode ∈ {4, 0})``: a run with mode 4 (``MODE_RECIPROCAM``)
returns predictions, activations and the maps and skips the backward; mode 0 (explain) returns
them beside the gradients, so one run serves ReciproCAM and the gradient methods together (an
exported map is computed on every explain run, like the in-graph heatmaps); modes 1–3 pay
nothing for it.
"""

from __future__ import annotations

import numpy as np

from onnxcam import contract
from onnxcam.contract import NCHW, TargetLayer
from onnxcam.errors import ExportError

from .autodiff import path_nodes, path_tensors
from .builder import NodeBuilder
from .gating import Gate
from .graph import GraphView, attr
from .head import build_head

RECIPROCAM = Gate(contract.MODE_RECIPROCAM, "reciprocam", also=(contract.MODE_EXPLAIN,))
"""The ReciproCAM maps (modes 4 and 0)."""


def masks(h: int, w: int) -> np.ndarray:
    """The h·w one-hot spatial masks [h·w, h, w]: mask j is 1 at position j (row-major)."""
    return np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)


GAUSSIAN = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16
"""ViT-ReciproCAM's 3×3 kernel (OpenVINO XAI's ``use_gaussian``, its default)."""


def token_masks(rows: int, cols: int, prefix: int) -> np.ndarray:
    """ViT-ReciproCAM's masks [rows·cols, prefix + rows·cols]: copy j keeps the prefix tokens
    (class token: OpenVINO XAI's ``cls_token=True``) and weighs the patch tokens by ``GAUSSIAN``
    centred on patch j, cut at the grid's border (not renormalised)."""
    n = rows * cols
    padded = np.zeros((n, rows + 2, cols + 2), dtype=np.float32)
    for j in range(n):
        r, c = divmod(j, cols)
        padded[j, r : r + 3, c : c + 3] = GAUSSIAN
    patches = padded[:, 1:-1, 1:-1].reshape(n, n)
    return np.concatenate([np.ones((n, prefix), np.float32), patches], axis=1)


def gap_reader(view: GraphView, t: TargetLayer, logits: str):
    """The global average pool that is the head's only reader of ``t`` (GlobalAveragePool on
    an NCHW map, or ReduceMean over the map's spatial axes), or None."""
    if t.tokens is not None:
        return None
    on_path = path_tensors(view, [t.tensor], [logits]) | {t.tensor}
    readers = [n for n in path_nodes(view, on_path) if t.tensor in n.input]
    if len(readers) != 1:
        return None
    n = readers[0]
    if n.op_type == "GlobalAveragePool" and t.layout == NCHW:
        return n
    if n.op_type == "ReduceMean":
        axes = attr(n, "axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = view.const(n.input[1])
        if axes is None:
            return None
        rank = len(t.shape)
        if sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)) == list(
            t.layout.spatial_axes
        ):
            return n
    return None


def build(
    view: GraphView, consts: dict, t: TargetLayer, A: str, logits: str, cls: str
) -> tuple[str, bool]:
    """Appends target ``t``'s ReciproCAM map [B, h, w] (``A``: its map in ``t.layout``,
    ``cls``: the explained class [B]); returns (map, whether the GAP shortcut was taken)."""
    k = t.index
    h, w = t.spatial
    C = t.channels
    if not all(isinstance(d, int) for d in (h, w, C)):
        raise ExportError(f"ReciproCAM needs a static feature size (layer {t.name!r})")
    n = h * w
    b = NodeBuilder(view, f"onnxcam/reciprocam{k}", consts)
    gap = gap_reader(view, t, logits)
    skip = None
    if gap is not None:  # pooled copies: A[:, :, j] / (h·w), straight into the pool's output
        start_at, pooled = gap.output[0], view.shape(gap.output[0])
        if pooled is None or not all(isinstance(d, int) for d in pooled[1:]):
            raise ExportError(f"ReciproCAM: the pool after {t.name!r} has no static shape")
        if t.layout == NCHW:
            rows = b.Transpose(b.Reshape(A, b.ints([0, C, n])), perm=[0, 2, 1])  # [B, n, C]
        else:
            rows = b.Reshape(A, b.ints([0, n, C]))
        rows = b.Mul(rows, b.scalar(1.0 / n, A))
        start = b.Reshape(rows, b.ints([-1, *pooled[1:]]))
    elif t.tokens is not None:  # ViT-ReciproCAM: masked token copies, the residual's too
        start_at = t.tensor
        tokens = view.shape(t.tensor)
        mask = token_masks(h, w, t.tokens.prefix)[None, :, :, None].astype(view.np_dtype(A))
        skip = (b.const(mask), tuple(tokens[1:]))
        copies = b.Mul(b.Unsqueeze(t.tensor, b.ints(1)), skip[0])
        start = b.Reshape(copies, b.ints([-1, *tokens[1:]]))
    else:  # masked copies [B·n, ...]: copy j of image i is row i·n + j
        start_at = t.tensor
        mask = t.layout.per_position(masks(h, w))[None].astype(view.np_dtype(A))
        copies = b.Mul(b.Unsqueeze(A, b.ints(1)), b.const(mask))
        start = b.Reshape(copies, b.ints([-1, *t.shape[1:]]))
    try:
        nodes, out = build_head(view, start_at, logits, k, start, consts, n, "reciprocam", skip)
    except ExportError as e:
        raise ExportError(f"ReciproCAM at layer {t.name!r}: {e}") from None
    view.graph.node.extend(nodes)
    index = b.Reshape(
        b.Expand(b.Unsqueeze(cls, b.ints(1)), b.Concat(b.Shape(cls), b.ints(n), axis=0)),
        b.ints([-1, 1]),
    )
    picked = b.GatherElements(out, index, axis=1)  # [B·n, 1]
    return b.Reshape(picked, b.ints([-1, h, w])), gap is not None


__all__ = ["RECIPROCAM", "build", "gap_reader", "masks"]
