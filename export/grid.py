"""Which tensors carry the image's spatial grid, and on which axes — from data flow, not shapes.

A class activation map is a map over positions of the image. A tensor can be explained by one
only where the graph *proves* that some of its axes index the image's rows and columns: the
image input's own spatial axes, followed forward through every op whose effect on axes is known.
``spatial_grids`` does that walk once per export. Each tensor gets a ``Grid`` — its row and
column axes, or (for token models) the one axis on which rows × columns are laid out row-major
after ``prefix`` other tokens (class, distillation, register tokens) — or nothing.

What keeps the grid: spatial NCHW ops (Conv, pooling, normalisations, Resize, Pad, …) on a
tensor whose grid is on axes (2, 3); element-wise ops (the grid of the inputs that have one,
aligned from the right, when they agree); Transpose, Squeeze/Unsqueeze, Reshape/Flatten when
the static shapes show where each axis goes (so a channel shuffle keeps it, flattening H·W into
tokens merges it, and a ``[B, N, C] → [B, H, W, C]`` view splits it again); a row or column axis
split in two with the outer part kept apart from the inner (a patch merge: the grid at a coarser
step); Concat and Slice off the grid axes (and on a token axis, the prefix tokens they add or
remove); reductions that
keep the grid axes; a MatMul whose left operand has the grid on a row axis (a Linear on
tokens or channels-last maps, and the query axis of attention). Anything else — Gather on a grid
axis, window partitions, an op not listed — ends the grid: an unknown tensor is never treated as
a map (attention scores, q/k/v splits and tokens reshaped into windows have no ``Grid`` with
separate row and column axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx

from onnxcam.contract import LAYOUTS, NCHW, Layout

from .graph import Dim, GraphView, attr, ints, reduce_axes

SPATIAL_NCHW_OPS = {
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LRN",
    "Resize",
    "Upsample",
    "Pad",
    "DepthToSpace",
    "SpaceToDepth",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "MaxRoiPool",
}
"""Ops that read and write NCHW: the grid stays on axes (2, 3) (its size may change)."""

SAME_AXES_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Gelu", "Erf", "Softplus", "Softsign", "Mish", "Add", "Sub", "Mul", "Div", "Pow",
    "Identity", "Dropout", "Cast", "Sum", "Max", "Min", "Mean", "Neg", "Sqrt", "Exp", "Log",
    "Abs", "Reciprocal", "Where", "Expand", "Tile", "Softmax", "LogSoftmax",
    "LayerNormalization", "Floor", "Ceil", "Round", "Sign", "Celu", "ThresholdedRelu",
    "QuantizeLinear", "DequantizeLinear",
}  # fmt: skip
"""Ops whose output axis i is (broadcast from) their inputs' axis i, aligned from the right."""

REDUCE_OPS = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip


@dataclass(frozen=True)
class Grid:
    """Where a tensor holds the image grid: rows on axis ``h`` and columns on axis ``w``, or —
    ``w is None`` — rows × columns laid out row-major on axis ``h`` after ``prefix`` tokens.
    ``size`` is (rows, columns), ints or None where dynamic."""

    h: int
    w: int | None
    size: tuple[Dim | None, Dim | None]
    prefix: int = 0

    @property
    def tokens(self) -> bool:
        return self.w is None

    def layout(self, rank: int) -> Layout | None:
        """The 4-D layout these axes make (NCHW, NHWC), or None (tokens, other axes)."""
        if self.w is None or rank != 4:
            return None
        return next((lay for lay in LAYOUTS if lay.spatial_axes == (self.h, self.w)), None)

    def shifted(self, by: int) -> Grid:
        return replace(self, h=self.h + by, w=None if self.w is None else self.w + by)


def spatial_grids(view: GraphView, image: str, layout: Layout) -> dict[str, Grid]:
    """Every tensor computed from ``image`` whose grid axes the graph proves, with its ``Grid``."""
    shape = view.shape(image) or (None,) * 4
    grids = {image: Grid(*layout.spatial_axes, tuple(layout.spatial(shape)))}
    order: dict[str, str] = {}  # tensor → the gridded tensor whose element order it keeps
    for node in view.topo_order():
        if not any(i in grids or i in order for i in node.input if i):
            continue
        found = _propagate(view, node, grids) if any(i in grids for i in node.input) else []
        for k, out in enumerate(node.output):
            g = found[k] if k < len(found) else None
            if g is None and out:
                g = _same_order(view, node, out, grids, order)
            if g is not None and out:
                grids[out] = g
    return grids


ORDER_KEEPING = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "InstanceNormalization",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", *SAME_AXES_OPS,
}  # fmt: skip
"""Ops whose output element i is computed at input element i (shapes aside): a tensor whose
grid is lost in a flattening keeps its elements' order through them."""


def _same_order(view: GraphView, node, out: str, grids: dict, order: dict) -> Grid | None:
    """The grid of a tensor reshaped back to the shape of a gridded tensor whose elements it
    kept in order (GroupNorm written as Reshape → InstanceNormalization → Reshape, as
    MobileViTv2's is): that tensor's grid. Records the order for the ops in between."""
    x = node.input[0] if node.input else ""
    root = x if x in grids else order.get(x)
    if root is None or node.op_type not in ORDER_KEEPING:
        return None
    reshaping = node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
    if not reshaping and view.shape(out) != view.shape(x):  # an op that broadcasts x
        return None
    dst, src = view.shape(out), view.shape(root)
    if node.op_type == "Reshape" and dst is not None and src is not None and list(dst) == list(src):
        return grids[root]
    order[out] = root
    return None


def _propagate(view: GraphView, node: onnx.NodeProto, grids: dict[str, Grid]) -> list:
    """The grids of ``node``'s outputs (None where lost)."""
    op = node.op_type
    x = node.input[0] if node.input else ""
    g = grids.get(x)
    out = node.output[0]
    rank = view.rank(out)
    if op == "Pad" and g is not None and _pads_off_grid(view, node, g):
        return [_kept(view, g, out)]
    if op in SPATIAL_NCHW_OPS:
        if g is None or g.tokens or (g.h, g.w) != NCHW.spatial_axes:
            return [None]
        return [Grid(2, 3, _spatial_size(view, out, 2, 3))]
    if op in SAME_AXES_OPS:
        return [_elementwise(view, node, grids, rank)]
    if op == "Concat":
        return [_concat(view, node, grids)]
    if g is None:
        return [None]
    if op == "Transpose":
        return [_transpose(view, g, node, out)]
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return [_reshape(view, g, x, out)]
    if op == "Split":
        on_grid = _axis(node, 0, rank) in _axes(g)
        return [None if on_grid else _kept(view, g, o) for o in node.output]
    if op == "Slice":
        return [_slice(view, node, g)]
    if op in REDUCE_OPS:
        return [_reduce(view, node, g, out)]
    if op == "MatMul":
        return [_matmul(view, node, grids)]
    if op == "Gather":
        return [None if _axis(node, 0, view.rank(x)) in _axes(g) else _kept(view, g, out)]
    return [None]


# --- helpers ------------------------------------------------------------------------------------
def _axes(g: Grid) -> tuple[int, ...]:
    return (g.h,) if g.w is None else (g.h, g.w)


def _axis(node: onnx.NodeProto, default: int, rank: int | None) -> int:
    a = int(attr(node, "axis", default))
    return a % rank if rank else a


def _spatial_size(view: GraphView, name: str, h: int, w: int) -> tuple:
    s = view.shape(name)
    return (s[h], s[w]) if s is not None and len(s) > max(h, w) else (None, None)


def _kept(view: GraphView, g: Grid, out: str) -> Grid:
    """``g`` on the same axes of ``out`` (its sizes read from ``out``)."""
    if g.w is None:
        return g
    return replace(g, size=_spatial_size(view, out, g.h, g.w))


def _elementwise(view: GraphView, node: onnx.NodeProto, grids: dict, rank: int | None):
    """The one grid the inputs agree on (aligned from the right), or None."""
    if rank is None:
        return None
    found = set()
    for i in node.input:
        g = grids.get(i)
        r = view.rank(i)
        if g is None or r is None:
            continue
        found.add(g.shifted(rank - r) if rank != r else g)
    if len({(f.h, f.w, f.prefix) for f in found}) != 1:
        return None
    g = max(found, key=lambda f: sum(isinstance(d, int) and d > 1 for d in f.size))
    return _kept(view, g, node.output[0])


def _transpose(view: GraphView, g: Grid, node: onnx.NodeProto, out: str) -> Grid | None:
    perm = attr(node, "perm")
    rank = view.rank(out)
    if perm is None:
        perm = list(range(rank or 0))[::-1]
    perm = list(perm)
    return replace(g, h=perm.index(g.h), w=None if g.w is None else perm.index(g.w))


def _reshape(view: GraphView, g: Grid, x: str, out: str) -> Grid | None:
    """Follow the grid through a shape change, from the static shapes (batch may be dynamic)."""
    src, dst = view.shape(x), view.shape(out)
    if src is None or dst is None:
        return None
    src_at = _starts(src)
    dst_at = _starts(dst)
    if src_at is None or dst_at is None:
        return None
    rows, cols = g.size
    if not isinstance(rows, int) or not isinstance(cols, int):
        return None
    if g.w is not None:
        # each grid axis kept as an axis of its own, or both merged into one (tokens)
        hs = _same_place(src_at, dst_at, g.h, src, dst)
        ws = _same_place(src_at, dst_at, g.w, src, dst)
        if hs is not None and ws is not None:
            return Grid(hs, ws, (rows, cols))
        hc = _coarse_place(src_at, dst_at, g.h, src, dst)
        wc = _coarse_place(src_at, dst_at, g.w, src, dst)
        if hc is not None and wc is not None:  # a patch merge: the grid at a coarser step
            return Grid(hc, wc, (dst[hc], dst[wc]))
        if g.w == g.h + 1:
            for j, d in enumerate(dst):
                if dst_at[j] == src_at[g.h] and d == rows * cols:
                    return Grid(j, None, (rows, cols))
        return None
    # tokens: kept as one axis, or split into rows and columns (no prefix tokens)
    j = _same_place(src_at, dst_at, g.h, src, dst)
    if j is not None:
        return replace(g, h=j)
    if g.prefix == 0:
        for j in range(len(dst) - 1):
            if dst_at[j] == src_at[g.h] and (dst[j], dst[j + 1]) == (rows, cols):
                return Grid(j, j + 1, (rows, cols))
    return None


def _starts(shape: Sequence[Dim]) -> list | None:
    """For each axis, the product of the sizes before it (the batch axis, even when dynamic,
    counts as one symbol ``b``); None when another axis is dynamic."""
    out, acc = [], 1
    for k, d in enumerate(shape):
        out.append(acc)
        if k == 0 and not isinstance(d, int):
            acc = ("b", acc)
            continue
        if not isinstance(d, int):
            return None
        acc = (acc[0], acc[1] * d) if isinstance(acc, tuple) else acc * d
    return out


def _same_place(src_at: list, dst_at: list, axis: int, src, dst) -> int | None:
    """The output axis that is input ``axis`` unchanged (same offset, same size)."""
    for j, d in enumerate(dst):
        if dst_at[j] == src_at[axis] and d == src[axis]:
            return j
    return None


def _pads_off_grid(view: GraphView, node: onnx.NodeProto, g: Grid) -> bool:
    """A Pad that adds nothing on the grid axes (Swin pads NHWC maps to even sizes: by 0 here)."""
    rank = view.rank(node.input[0])
    pads = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if rank is None or pads is None or (len(node.input) > 3 and node.input[3]):
        return False
    p = ints(pads)
    return len(p) == 2 * rank and all(p[a] == 0 and p[a + rank] == 0 for a in _axes(g))


def _coarse_place(src_at: list, dst_at: list, axis: int, src, dst) -> int | None:
    """The output axis that is input ``axis`` split in two, outer part first (rows of 56 viewed
    as 28 × 2: Swin's patch merging); the outer axis indexes the grid at a coarser step."""
    for j in range(len(dst) - 1):
        if (
            dst_at[j] == src_at[axis]
            and 1 < dst[j] < src[axis]
            and dst[j] * dst[j + 1] == src[axis]
        ):
            return j
    return None


def _concat(view: GraphView, node: onnx.NodeProto, grids: dict) -> Grid | None:
    rank = view.rank(node.output[0])
    axis = _axis(node, 0, rank)
    withg = [(i, grids[i]) for i in node.input if i in grids]
    if len({(g.h, g.w) for _, g in withg}) != 1:
        return None
    g = withg[0][1]
    if axis not in _axes(g):
        return _kept(view, g, node.output[0])
    if g.w is not None or len(withg) != 1:
        return None
    # tokens: what is concatenated before the grid's tokens becomes prefix tokens
    names = [i for i in node.input if i]
    k = names.index(withg[0][0])
    if k != len(names) - 1:
        return None  # tokens after the grid: not a layout onnxcam reads
    before = [view.shape(i) for i in names[:k]]
    if any(s is None or not isinstance(s[axis], int) for s in before):
        return None
    return replace(g, prefix=g.prefix + sum(s[axis] for s in before))


def _slice(view: GraphView, node: onnx.NodeProto, g: Grid) -> Grid | None:
    """A slice off the grid axes keeps it; on a token axis, dropping exactly the prefix tokens
    from the front leaves the grid's tokens alone (``prefix`` 0)."""
    x, out = node.input[0], node.output[0]
    src, dst = view.shape(x), view.shape(out)
    if src is None or dst is None or len(src) != len(dst):
        return None
    changed = [k for k, (a, b) in enumerate(zip(src, dst, strict=True)) if a != b]
    if not set(changed) & set(_axes(g)):
        return _kept(view, g, out)
    if g.w is not None:
        return _subsampled(view, node, g, src, dst, changed)
    if changed != [g.h] or dst[g.h] != explained_size(g):
        return None
    r = _slice_ranges(view, node, len(src)).get(g.h)
    return replace(g, prefix=0) if r is not None and r[0] == g.prefix else None


def _slice_ranges(view: GraphView, node: onnx.NodeProto, rank: int) -> dict:
    """A Slice's constant (start, end, step) per sliced axis (end None when not constant);
    empty when its starts are not constant."""

    def const(k: int):
        return view.const(node.input[k]) if len(node.input) > k and node.input[k] else None

    starts, ends, axes, steps = const(1), const(2), const(3), const(4)
    if starts is None:
        return {}
    lo = ints(starts)
    axes = [int(a) % rank for a in ints(axes)] if axes is not None else list(range(len(lo)))
    hi = ints(ends) if ends is not None else [None] * len(lo)
    step = ints(steps) if steps is not None else [1] * len(lo)
    return {a: (lo[k], hi[k], step[k]) for k, a in enumerate(axes)}


def _subsampled(view: GraphView, node: onnx.NodeProto, g: Grid, src, dst, changed) -> Grid | None:
    """``x[:, ::s, ::s]`` on grid axes (LeViT's attention subsample, one axis per Slice): every
    s-th row or column over the whole image — the grid at a coarser step. A crop is not (its
    map would cover part of the image)."""
    if not set(changed) <= {g.h, g.w}:
        return None
    ranges = _slice_ranges(view, node, len(src))
    for a in changed:
        if a not in ranges or ranges[a][1] is None:
            return None
        lo, hi, step = ranges[a]
        if not isinstance(src[a], int) or step <= 1 or not 0 <= lo < step or hi < src[a]:
            return None
    return Grid(g.h, g.w, (dst[g.h], dst[g.w]))


def _reduce(view: GraphView, node: onnx.NodeProto, g: Grid, out: str) -> Grid | None:
    rank = view.rank(node.input[0])
    axes = None if rank is None else reduce_axes(view, node, rank)
    if axes is None:
        return None
    reduced = set(axes)
    if attr(node, "keepdims", 1):
        return _kept(view, g, out) if g.w is not None or g.h not in reduced else None
    if reduced & set(_axes(g)):
        return None
    shift = lambda a: a - sum(r < a for r in reduced)  # noqa: E731
    return replace(g, h=shift(g.h), w=None if g.w is None else shift(g.w))


def _matmul(view: GraphView, node: onnx.NodeProto, grids: dict) -> Grid | None:
    """``A @ B``: the rows of A are the rows of the result, so a grid on A's axes other than
    the last (the contracted one) stays; a grid on B only does not."""
    a = grids.get(node.input[0])
    ra, rout = view.rank(node.input[0]), view.rank(node.output[0])
    if a is None or ra is None or rout is None or ra - 1 in _axes(a):
        return None
    return _kept(view, a.shifted(rout - ra), node.output[0])


# --- which positions reach the score -------------------------------------------------------
PREFIX, PATCHES = "prefix", "patches"
ALL_PARTS = frozenset((PREFIX, PATCHES))
_MIXING_OPS = {"Softmax", "LogSoftmax", "LayerNormalization", "Hardmax", "CumSum"}
"""Ops that mix positions along their ``axis`` (from ``axis`` on, for LayerNormalization)."""


def live_positions(
    view: GraphView, grids: dict[str, Grid], on_path: set[str], logits: str
) -> dict[str, frozenset]:
    """For each tensor on the path to ``logits``, which of its positions the score depends on:
    ``PATCHES`` (the grid's positions), ``PREFIX`` (a token tensor's prefix tokens), both.

    A backward walk from the logits. A position-wise op passes what is live in its output to
    the same positions of its input; a Slice or Gather that keeps only prefix tokens (a ViT's
    class token read by the classifier) passes only ``PREFIX``; anything that mixes positions
    (attention's ``P @ V`` and ``Q @ Kᵀ`` on the key side, pooling over tokens, an op this
    walk does not know) makes every position of its input live. So a transformer's tokens
    after its last attention are found to be dead at the patches (their gradient is exactly
    zero there: a Grad-CAM of them is empty), while the last block's input is live.
    """
    live: dict[str, frozenset] = {logits: ALL_PARTS}
    for node in reversed(view.topo_order()):
        out_live = [live.get(o, frozenset()) for o in node.output if o]
        if not any(out_live):
            continue
        for i in node.input:
            if not i or i not in on_path or view.is_const(i):
                continue
            parts = _live_input(view, node, i, grids, live)
            live[i] = live.get(i, frozenset()) | parts
    return live


def _live_input(
    view: GraphView, node: onnx.NodeProto, x: str, grids: dict[str, Grid], live: dict
) -> frozenset:
    """The positions of input ``x`` of ``node`` that reach the score."""
    gi = grids.get(x)
    if gi is None or gi.w is not None:  # not a token tensor: every position counts alike
        return ALL_PARTS
    out = node.output[0]
    lo = live.get(out, frozenset())
    go = grids.get(out)
    op = node.op_type
    if op == "MatMul" and node.input[0] != x:  # the key/value side of attention: mixed
        return ALL_PARTS
    if op in _MIXING_OPS or op in REDUCE_OPS:
        rank = view.rank(x)
        axes = _mixed_axes(view, node, rank)
        if axes is None or gi.h in axes:
            return ALL_PARTS
    if op in ("Gather", "Slice") and (go is None or not go.tokens or go.prefix != gi.prefix):
        kept = _kept_tokens(view, node, gi)
        if kept is not None and kept[1] <= gi.prefix:  # only prefix tokens are read
            return frozenset((PREFIX,)) if lo else frozenset()
        if go is not None and go.tokens and go.prefix == 0:  # the prefix was dropped
            return lo & {PATCHES}
    if go is None or not go.tokens:
        return ALL_PARTS if lo else frozenset()
    if go.prefix == gi.prefix:
        return lo
    parts = {PATCHES} & lo  # a Concat that adds prefix tokens before these
    if gi.prefix and PREFIX in lo:
        parts.add(PREFIX)
    return frozenset(parts)


def _mixed_axes(view: GraphView, node: onnx.NodeProto, rank: int | None) -> set[int] | None:
    """The axes along which ``node`` combines values (None: unknown)."""
    if rank is None:
        return None
    if node.op_type in REDUCE_OPS:
        axes = reduce_axes(view, node, rank)
        return None if axes is None else set(axes)
    axis = _axis(node, -1, rank)
    if node.op_type == "LayerNormalization":
        return set(range(axis, rank))
    return {axis}


def _kept_tokens(view: GraphView, node: onnx.NodeProto, g: Grid) -> tuple[int, int] | None:
    """[first, end) of the tokens a Gather/Slice on the token axis keeps (None: unknown or not
    on the token axis)."""
    rank = view.rank(node.input[0])
    if rank is None:
        return None
    if node.op_type == "Gather":
        idx = view.const(node.input[1])
        if _axis(node, 0, rank) != g.h or idx is None:
            return None
        vals = [int(v) for v in ints(idx)]
        return (min(vals), max(vals) + 1) if vals and min(vals) >= 0 else None
    r = _slice_ranges(view, node, rank).get(g.h)
    if r is None or r[1] is None:
        return None
    lo, hi, _ = r
    return (lo, hi) if lo >= 0 and hi >= 0 else None


def explained_size(g: Grid) -> int | None:
    """Positions on the grid (rows × columns), when static."""
    rows, cols = g.size
    return rows * cols if isinstance(rows, int) and isinstance(cols, int) else None


__all__ = [
    "ALL_PARTS",
    "PATCHES",
    "PREFIX",
    "Grid",
    "explained_size",
    "live_positions",
    "spatial_grids",
]
