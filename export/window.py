"""A detector's backward in a window: each detection's gradient, exact, from a small crop.

A YOLOv8/11 class logit at anchor (y, x) of scale s is computed from the head input of that
scale by a branch of stride-1 convolutions and pointwise ops: it depends only on the head
input within radius R of (y, x) (R: the sum of the branch's convolution radii; 2 for
YOLO11's depthwise 3×3 pairs). So the direct gradient of one detection's logit is zero outside
that (2R+1)² window, and inside it is the gradient of the same branch re-run on the window
alone. This module does exactly that for the graph's own detections (the default seed): it
crops each detection's window, re-runs the branch on the crops (a few hundred positions
instead of the whole map: ~13 ms → ~0.3 ms per detection on yolo11n at 640), differentiates
that copy, and adds each window's gradient back at its place in a zero map.

Exact, not an approximation: a position of an intermediate tensor that lies outside the
feature map is multiplied by zero before every convolution that mixes positions (the zero
padding the full map gets), and the crop's own border is R away from the centre, so every
value the centre's gradient reads equals the full map's. The exporter checks it numerically
against the dense backward (``verify.windows_match``).

Where the head is not such a branch (a layer that mixes positions beyond a fixed radius, a
strided or unpadded convolution, an input from another scale, an anchors-first layout) there
is no plan and the dense backward is used; a fed seed always takes the dense backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .autodiff import build_backward, path_nodes, path_tensors
from .builder import NodeBuilder
from .graph import GraphView, attr

UNARY = frozenset(
    {
        "Identity", "Sigmoid", "Relu", "LeakyRelu", "Tanh", "HardSigmoid", "HardSwish", "Elu",
        "Selu", "Softplus", "Gelu", "Mish", "Neg", "Exp", "Erf", "Clip", "PRelu", "Cast",
    }
)  # fmt: skip
"""Pointwise ops (their other inputs, if any, constants)."""
BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
"""Pointwise with broadcasting: the other operand on the branch (same shape) or a constant
without spatial extent (a per-channel scale, a scalar)."""
SUFFIX = "/onnxcam_window"


@dataclass(frozen=True)
class Window:
    """One scale of the head: the branch from head input ``wrt`` to ``end`` (``[B, C', H, W]``,
    whose channels ``channel`` … ``channel + K − 1`` are the K class logits of anchors
    ``anchor`` … ``anchor + H·W − 1``, row-major)."""

    wrt: str
    end: str
    channel: int
    anchor: int
    height: int
    width: int
    radius: int
    nodes: tuple[onnx.NodeProto, ...]


def plan(view: GraphView, logits: str, wrt: Sequence[str], num_classes: int) -> list[Window] | None:
    """One ``Window`` per head input (in ``wrt``'s order), or None when the head is not
    windowable (see the module docstring). ``logits``: ``[B, C, N]`` whose last
    ``num_classes`` channels are the class logits (YOLOv8/11)."""
    shape = _sizes(view, logits)
    if shape is None or len(shape) != 3 or shape[1] < num_classes:
        return None
    sources = _sources(view, logits, shape[1] - num_classes, num_classes, 0)
    if not sources or sum(_positions(view, e) for e, _, _ in sources) != shape[2]:
        return None
    windows: dict[str, Window] = {}
    for end, channel, anchor in sources:
        above = [x for x in wrt if x in view.ancestors([end], data_only=True)]
        # its own head input: the one no other of them lies between (direct gradients)
        owners = [x for x in above if not any(x in view.ancestors([y]) for y in above if y != x)]
        if len(owners) != 1 or owners[0] in windows:
            return None
        w = _window(view, owners[0], end, channel, anchor)
        if w is None:
            return None
        windows[owners[0]] = w
    if set(windows) != set(wrt):
        return None
    return [windows[x] for x in wrt]


def _sizes(view: GraphView, t: str) -> tuple | None:
    """``t``'s shape when every size past the batch axis is known (the batch may not be)."""
    shape = view.shape(t)
    if shape is None or not shape or any(not isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape)


def _positions(view: GraphView, end: str) -> int:
    s = _sizes(view, end)
    return s[2] * s[3]


def _sources(view: GraphView, t: str, lo: int, k: int, anchor: int):
    """The 4-D tensors the logits ``t`` (channels ``lo … lo + k`` of it) are laid out from:
    [(tensor, its channel of logit channel 0, first anchor)], or None. Follows channel
    ``Slice``/``Split``/``Concat``, the anchor ``Concat`` and the ``[B, C, H, W] → [B, C, H·W]``
    ``Reshape``."""
    n = view.producer.get(t)
    shape = _sizes(view, t)
    if n is None or shape is None:
        return None
    rank = len(shape)
    if n.op_type == "Identity":
        return _sources(view, n.input[0], lo, k, anchor)
    if n.op_type == "Concat":
        axis = attr(n, "axis") % rank
        sizes = [_sizes(view, i) for i in n.input]
        if any(z is None for z in sizes):
            return None
        if axis == 1:  # channels: the one input holding lo … lo + k
            start = 0
            for i, z in zip(n.input, sizes, strict=True):
                if start <= lo and lo + k <= start + z[1]:
                    return _sources(view, i, lo - start, k, anchor)
                start += z[1]
            return None
        if rank == 3 and axis == 2:  # anchors: each input's anchors follow the previous'
            found = []
            for i, z in zip(n.input, sizes, strict=True):
                sub = _sources(view, i, lo, k, anchor)
                if sub is None:
                    return None
                found += sub
                anchor += z[2]
            return found
        return None
    if n.op_type == "Split" and attr(n, "axis", 0) % rank == 1:
        start = 0
        for o in n.output:
            if o == t:
                return _sources(view, n.input[0], lo + start, k, anchor)
            z = _sizes(view, o)
            if z is None:
                return None
            start += z[1]
    if n.op_type == "Slice":
        return _channel_slice(view, n, lo, k, anchor, rank)
    if n.op_type == "Reshape" and rank == 3:
        src = _sizes(view, n.input[0])
        if src and len(src) == 4 and src[1] == shape[1] and src[2] * src[3] == shape[2]:
            return [(n.input[0], lo, anchor)] if _is_end(view, n.input[0]) else None
    return None


def _channel_slice(view: GraphView, n: onnx.NodeProto, lo: int, k: int, anchor: int, rank: int):
    """A constant ``Slice`` of channels (axis 1, step 1)."""
    starts = view.const(n.input[1])
    if starts is None:
        return None
    axes = view.const(n.input[3]) if len(n.input) > 3 and n.input[3] else np.arange(len(starts))
    steps = view.const(n.input[4]) if len(n.input) > 4 and n.input[4] else np.ones_like(starts)
    if starts is None or axes is None or steps is None or len(starts) != 1:
        return None
    if int(axes[0]) % rank != 1 or int(steps[0]) != 1 or int(starts[0]) < 0:
        return None
    return _sources(view, n.input[0], lo + int(starts[0]), k, anchor)


def _is_end(view: GraphView, t: str) -> bool:
    """``t`` is a branch's result: a 4-D tensor computed by a pointwise op or a convolution
    (a per-scale channel ``Concat`` is followed further by ``_sources``)."""
    n = view.producer.get(t)
    return n is not None and (n.op_type in UNARY | BINARY | {"Conv", "BatchNormalization"})


def _window(view: GraphView, x: str, end: str, channel: int, anchor: int) -> Window | None:
    """The branch from ``x`` to ``end`` if every node on it is local (see ``UNARY``,
    ``BINARY``, stride-1 "same" convolutions, channel ``Concat``), with its radius."""
    xs, es = _sizes(view, x), _sizes(view, end)
    if xs is None or es is None or len(xs) != 4 or xs[2:] != es[2:]:
        return None
    on = path_tensors(view, [x], [end])
    nodes = path_nodes(view, on)
    radius = 0
    for n in nodes:
        others = [i for i in n.input if i and i not in on]
        if n.op_type == "Conv":
            r = _conv_radius(view, n)
            if r is None or any(not view.is_weight(i) for i in others):
                return None
            radius += r
        elif n.op_type in UNARY or n.op_type == "BatchNormalization":
            if any(not view.is_weight(i) for i in others):
                return None
        elif n.op_type in BINARY:
            for i in others:
                s = view.static_shape(i)
                if not view.is_weight(i) or s is None or any(d != 1 for d in s[-2:]):
                    return None
        elif n.op_type == "Concat":
            if attr(n, "axis") % 4 != 1 or others:
                return None
        else:
            return None
        if any(view.rank(o) != 4 for o in n.output if o in on):
            return None
    xs_ok = all(_sizes(view, o) is not None for n in nodes for o in n.output if o in on)
    if not nodes or not xs_ok:
        return None
    return Window(x, end, channel, anchor, es[2], es[3], radius, tuple(nodes))


def _conv_radius(view: GraphView, n: onnx.NodeProto) -> int | None:
    """A stride-1 convolution that keeps the size ("same" padding): its radius; else None."""
    w = _sizes(view, n.input[1])
    if w is None or len(w) != 4:
        return None
    kernel = attr(n, "kernel_shape", w[2:])
    dil = attr(n, "dilations", [1, 1])
    if any(s != 1 for s in attr(n, "strides", [1, 1])):
        return None
    reach = [d * (k - 1) for d, k in zip(dil, kernel, strict=True)]
    if any(r % 2 for r in reach):
        return None
    auto = attr(n, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return max(reach) // 2
    if auto not in ("NOTSET", ""):
        return None
    pads = attr(n, "pads", [0, 0, 0, 0])
    if list(pads) != [r // 2 for r in reach] * 2:
        return None
    return max(reach) // 2


def gradients(
    view: GraphView,
    windows: list[Window],
    rows: tuple[str, str, str],
    consts: dict,
    placed: bool = True,
) -> list[str]:
    """The direct gradients ``[rows, C, H, W]`` at each window's head input of the detections
    ``rows`` = (image, class, anchor), each ``[rows, 1]`` int64: one seed row per detection,
    at its own scale (zero at the others). ``placed=False``: the windows themselves,
    ``[rows, C, 2r + 1, 2r + 1]`` (centred on the row's anchor; zero off the map and for the
    rows of other scales)."""
    return [_gradient(view, w, rows, consts, k, placed) for k, w in enumerate(windows)]


def _gradient(
    view: GraphView, w: Window, rows: tuple[str, str, str], consts: dict, k: int, placed: bool
) -> str:
    b = NodeBuilder(view, f"onnxcam/window{k}", consts)
    image, cls, anchor = rows
    r, size, h, wd = w.radius, 2 * w.radius + 1, w.height, w.width
    dtype = view.dtype(w.wrt)

    def i64(v) -> str:
        return b.const(np.asarray(v, dtype=np.int64))

    def within(v: str, n: int) -> str:
        return b.And(b.GreaterOrEqual(v, i64(0)), b.Less(v, i64(n)))

    def window_of(a: str) -> tuple[str, str]:
        """Anchors [n, 1] of this scale → the window's rows and columns, [n, size] each."""
        step = i64(np.arange(size)[None] - r)
        return b.Add(b.Div(a, i64(wd)), step), b.Add(b.Mod(a, i64(wd)), step)

    a = b.Sub(anchor, i64(w.anchor))  # [S, 1]
    inside = b.Squeeze(within(a, h * wd), b.ints([1]))  # [S]: the rows on this scale
    sel = b.Squeeze(b.NonZero(inside), b.ints([0]))  # [S_s]
    ys, xs = window_of(b.Gather(a, sel, axis=0))  # [S_s, size]
    on_map = b.And(
        b.Unsqueeze(within(ys, h), b.ints([1, 3])), b.Unsqueeze(within(xs, wd), b.ints([1, 2]))
    )  # [S_s, 1, size, size]
    mask = b.Cast(on_map, to=dtype)
    # the crops [S_s, C, size, size] of the head input: positions off the map read a clamped
    # one (finite values the mask zeroes before any convolution mixes positions)
    at = b.Add(
        b.Mul(b.Unsqueeze(b.Clip(ys, i64(0), i64(h - 1)), b.ints([2])), i64(wd)),
        b.Unsqueeze(b.Clip(xs, i64(0), i64(wd - 1)), b.ints([1])),
    )  # [S_s, size, size]
    chans = _sizes(view, w.wrt)[1]
    taken = b.Gather(b.Reshape(w.wrt, i64([0, chans, h * wd])), at, axis=2)  # [B, C, S_s, …]
    taken = b.Transpose(taken, perm=[0, 2, 1, 3, 4])  # [B, S_s, C, size, size]
    count = b.Shape(sel)
    pick = b.Concat(
        b.Gather(image, sel, axis=0),
        b.Unsqueeze(b.Range(i64(0), b.Squeeze(count, b.ints([0])), i64(1)), b.ints([1])),
        axis=1,
    )  # [S_s, 2]: (image, row)
    crop = b.GatherND(taken, pick)
    _like(view, crop, w.wrt, size)
    end = _replay(view, w, crop, b, mask)
    # the seed: each row's class at the window's centre
    channels = _sizes(view, w.end)[1]
    c = b.Reshape(b.Add(b.Gather(cls, sel, axis=0), i64(w.channel)), i64([-1, 1, 1, 1]))
    hot = b.Cast(b.Equal(c, i64(np.arange(channels).reshape(1, -1, 1, 1))), to=dtype)
    centre = np.zeros((1, 1, size, size), view.np_dtype(w.wrt))
    centre[0, 0, r, r] = 1
    g = build_backward(view, {end: b.Mul(hot, b.const(centre))}, [crop], consts)[crop]
    # every row: its window's gradient, or zeros (an appended zero row) on another scale
    zero = b.ConstantOfShape(
        b.Concat(i64([1]), b.Shape(g, start=1), axis=0),
        value=onnx.numpy_helper.from_array(np.zeros(1, view.np_dtype(w.wrt))),
    )
    at = b.Where(
        inside, b.Sub(b.CumSum(b.Cast(inside, to=onnx.TensorProto.INT64), i64(0)), i64(1)), count
    )
    g = b.Gather(b.Concat(g, zero, axis=0), at, axis=0)  # [S, C, size, size]
    if not placed:
        return g
    # placed back: dense[r, c] = Yᵣᵀ · g[r, c] · Xᵣ, with Yᵣ [size, H] and Xᵣ [size, W] the
    # one-hots of the window's rows and columns (off-map ones match nothing): a product that
    # writes the dense map once (a scatter into zeros writes it three times)
    ys, xs = window_of(b.Clip(a, i64(0), i64(h * wd - 1)))  # [S, size]
    rows_of = b.Cast(
        b.Equal(b.Unsqueeze(ys, b.ints([2])), i64(np.arange(h).reshape(1, 1, -1))), to=dtype
    )
    cols_of = b.Cast(
        b.Equal(b.Unsqueeze(xs, b.ints([2])), i64(np.arange(wd).reshape(1, 1, -1))), to=dtype
    )
    placed = b.MatMul(g, b.Unsqueeze(cols_of, b.ints([1])))  # [S, C, size, W]
    return b.MatMul(b.Unsqueeze(b.Transpose(rows_of, perm=[0, 2, 1]), b.ints([1])), placed)


def _replay(
    view: GraphView, w: Window, source: str, b: NodeBuilder, mask: str | None = None
) -> str:
    """Copies of the branch's nodes reading ``source`` (crops, or the head input itself);
    with ``mask``, the input of every convolution that mixes positions is multiplied by it
    first. Returns the copy of ``w.end``."""
    renamed = {w.wrt: source}
    size = 2 * w.radius + 1 if mask else None
    for n in w.nodes:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = view.unique_name((n.name or n.output[0]) + SUFFIX)
        inputs = [renamed.get(i, i) for i in n.input]
        if mask and n.op_type == "Conv" and _conv_radius(view, n):
            inputs[0] = b.Mul(inputs[0], mask)
            _like(view, inputs[0], n.input[0], size)
        del new.input[:]
        new.input.extend(inputs)
        del new.output[:]
        for o in n.output:
            renamed[o] = view.unique_name(o + SUFFIX) if o else ""
            new.output.append(renamed[o])
        view.add_node(new)
        for o in n.output:
            if o:
                _like(view, renamed[o], o, size)
    return renamed[w.end]


def _like(view: GraphView, copy: str, original: str, size: int | None) -> None:
    """A copy's type: the original's; with ``size``, a row per detection and the window's
    spatial size."""
    view.dtypes[copy] = view.dtype(original)
    shape = view.shape(original)
    view.shapes[copy] = shape if size is None else ("rows", shape[1], size, size)


def dense_gradients(
    view: GraphView, windows: list[Window], logits: str, seed: str, consts: dict
) -> list[str]:
    """The direct gradients ``[rows, C, H, W]`` for a fed ``seed`` over ``logits`` (any
    weights, so the whole map): the backward from the seed to each branch's end, then
    through a copy of the branch made here. The copy keeps the forward's own branch nodes
    free of readers in the ``If``, which would stop onnxruntime fusing them (convolution +
    SiLU): read by a backward, they cost every run ~10% of yolo11n's latency."""
    ends = [w.end for w in windows]
    at_end = build_backward(view, {logits: seed}, ends, consts, seed_rows=True)
    out = []
    for k, w in enumerate(windows):
        b = NodeBuilder(view, f"onnxcam/replay{k}", consts)
        end = _replay(view, w, w.wrt, b)
        out.append(
            build_backward(view, {end: at_end[w.end]}, [w.wrt], consts, seed_rows=True)[w.wrt]
        )
    return out
