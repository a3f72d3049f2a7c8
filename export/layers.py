"""Find what to explain: the image input, the logits, candidate target layers and the CAM head.

Everything here only reads the graph. A tensor is a candidate only where the graph proves
which of its axes are the image's rows and columns (``export/grid.py``); its layout (NCHW,
NHWC) follows from those axes, so tf2onnx models (NHWC feature maps around transposed convs)
work and attention tensors are never taken for feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import onnx
from onnx import TensorProto

from onnxcam.contract import LAYOUTS, NCHW, NHWC, DetectSpec, Layout, TokenGrid
from onnxcam.errors import ExportError, LayerNotFoundError

from . import tasks
from .graph import GraphView, attr, node_label, reduce_axes
from .grid import PATCHES, Grid, live_positions, spatial_grids

OUTPUT_ACTIVATIONS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}
ONNX_LAYOUT = NCHW
"""The layout ONNX's own spatial ops (Conv, pooling, GlobalAveragePool) read and write."""
COLOR_CHANNELS = (1, 3, 4)
"""Channel counts of an image input (gray, RGB/BGR, RGBA)."""


@dataclass
class Head:
    """Where the explained score comes from."""

    logits: str
    """The pre-activation tensor that is differentiated."""
    output: str
    """The model output it feeds (its name is kept)."""
    activation: str | None
    """softmax | log_softmax | sigmoid | None: what the model applies after the logits."""
    num_classes: int | None
    binary: bool = False
    """One logit z (raw or through a sigmoid): explained as two classes, 0 the negative (score
    −z, as pytorch-grad-cam's ``BinaryClassifierOutputTarget``) and 1 the positive (z)."""
    task: str = "classify"
    """classify, detect or segment (``contract.TASKS``)."""
    detect: DetectSpec | None = None
    """A detector's output layout (task detect)."""


NORMALIZATION_OPS = {"LayerNormalization", "BatchNormalization", "GroupNormalization"}
"""Producers of the token layer a practitioner picks in a class-token transformer (the last
block's ``norm1``, pytorch-grad-cam's recommendation)."""


@dataclass
class LayerInfo:
    """A candidate target layer between the input and the logits: a 4-D feature map (NCHW,
    NHWC) or a ``[B, P + N, C]`` token tensor whose N tokens lie on the image grid."""

    tensor: str
    op: str
    node: str
    shape: tuple
    """The tensor's own shape (for a token layer, the tokens' ``[B, P + N, C]``)."""
    layout: Layout
    """The layout of the map the layer is explained as (NHWC for a token layer)."""
    default: bool = False
    tokens: TokenGrid | None = None
    """For a token layer: its prefix tokens and grid."""
    live: bool = True
    """The score depends on the layer's grid positions (False: only its prefix tokens reach
    the classifier, so every gradient at its positions is exactly zero)."""

    @property
    def kind(self) -> str:
        """What ``onnxcam layers`` shows as the layout: NCHW, NHWC or tokens(P+h×w)."""
        if self.tokens is None:
            return str(self.layout)
        t = self.tokens
        return f"tokens({t.prefix}+{t.rows}x{t.cols})"

    @property
    def map_shape(self) -> list:
        """The shape of the activation and gradient outputs (the map the layer becomes)."""
        if self.tokens is None:
            return list(self.shape)
        return [self.shape[0], self.tokens.rows, self.tokens.cols, self.shape[2]]


def image_input(view: GraphView) -> str:
    """The first real graph input of rank 4, float or uint8 (the image)."""
    for name in view.graph_inputs:
        if view.rank(name) == 4 and (view.is_float(name) or view.dtype(name) == TensorProto.UINT8):
            return name
    raise ExportError("the model has no 4-D float or uint8 input (expected an image batch)")


def input_layout(view: GraphView, name: str) -> Layout:
    """The image input's layout: the one layout whose channel axis holds a colour channel
    count (``COLOR_CHANNELS``); NCHW when both or neither do."""
    s = view.shape(name) or (None,) * 4
    looks = [lay for lay in LAYOUTS if lay.channels(s) in COLOR_CHANNELS]
    return looks[0] if len(looks) == 1 else NCHW


def find_head(
    view: GraphView,
    output: str | None = None,
    task: str | None = None,
    detect_format: str | None = None,
    num_labels: int | None = None,
) -> Head:
    """The explained output (the first model output unless named), its task (given, or from
    its rank: ``tasks.task_of``) and the tensor that is differentiated."""
    outputs = [o.name for o in view.graph.output]
    if output is None:
        output = outputs[0]
    elif output not in outputs:
        raise ExportError(f"unknown model output {output!r}; outputs: {', '.join(outputs)}")
    task = tasks.task_of(view, output, task)
    if task == "detect":
        spec = tasks.detect_format(view, output, detect_format, num_labels)
        logits, activation = tasks.class_logits(view, spec)
        return Head(logits, output, activation, spec.num_classes, task="detect", detect=spec)
    t, activation = output, None
    while (p := view.producer.get(t)) is not None and p.op_type == "Identity":
        t = p.input[0]
    p = view.producer.get(t)
    if p is not None and p.op_type in OUTPUT_ACTIVATIONS:
        activation, t = OUTPUT_ACTIVATIONS[p.op_type], p.input[0]
    t = _before_quantization(view, t)
    shape = view.shape(t)
    if task == "segment" and shape is not None and len(shape) == 4:
        k = shape[1] if isinstance(shape[1], int) else None
        return Head(logits=t, output=output, activation=activation, num_classes=k, task="segment")
    if shape is None or len(shape) != 2:
        raise ExportError(
            f"model output {output!r} must be [batch, classes] logits or probabilities, "
            f"got shape {list(shape) if shape else 'unknown'}"
        )
    k = shape[1] if isinstance(shape[1], int) else None
    if k == 1 and activation in ("softmax", "log_softmax"):
        raise ExportError(
            f"model output {output!r} is a {activation} over one logit (constant): there is no "
            "class score to explain; export the model without it"
        )
    return Head(logits=t, output=output, activation=activation, num_classes=k, binary=k == 1)


def _before_quantization(view: GraphView, t: str) -> str:
    """The float logits an INT8 QDQ model quantizes last (``DequantizeLinear(QuantizeLinear(z))``
    → z): the score is differentiated before that rounding, so a logit at the top of the
    quantizer's calibrated range still has a gradient (straight-through with clipping would
    give the saturated top class an empty map) and saturated ties keep their order."""
    dq = view.producer.get(t)
    q = (
        view.producer.get(dq.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear"
        else None
    )
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else t


def candidate_layers(view: GraphView, head: Head) -> list[LayerInfo]:
    """Feature maps and token tensors on the image grid (``grid.spatial_grids``: rows and
    columns, or the tokens they were flattened into, on axes the graph proves), on the data
    path from the image to the logits, spatial size > 1, in topological order; each marked
    with whether the score depends on its grid positions (``grid.live_positions``).

    The default (``LayerInfo.default``) is the last live candidate when everything between it
    and the logits has given the positions up for good (pooled or flattened into a vector, or
    only prefix tokens read) — a CNN's last feature map, a pooled transformer's last tokens.
    In a class-token transformer the patch tokens stop reaching the score at the last
    attention, so the default is the last live token tensor made by a normalization (the last
    block's ``norm1``, the layer pytorch-grad-cam recommends). Otherwise (windows or
    attention after the last map) no candidate is marked and ``default_layer`` refuses.
    """
    image = image_input(view)
    grids = spatial_grids(view, image, input_layout(view, image))
    on_path = view.descendants(_float_start(view, image), data_only=True) & view.ancestors(
        [head.logits], data_only=True
    )
    live = live_positions(view, grids, on_path, head.logits)
    found: list[LayerInfo] = []
    for node in view.topo_order():
        for out in node.output:
            g = grids.get(out)
            if out not in on_path or g is None:
                continue
            c = _candidate(view, node, out, g)
            if c is not None:
                c.live = PATCHES in live.get(out, ())
                found.append(c)
    if not found:
        raise ExportError(
            "the model has no feature map or token tensor on the image grid between its input "
            "and its output (nothing to explain with a class activation map)"
        )
    _mark_default(view, found, on_path, grids, live)
    return found


def _float_start(view: GraphView, image: str) -> list[str]:
    """Where float data starts: the image, or the float tensors a uint8 image becomes (after
    the ops that move its pixels before the Cast)."""
    found, todo, seen = [], [image], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if view.is_float(t):
            found.append(t)
            continue
        todo.extend(o for c in view.consumers.get(t, []) for o in c.output if o)
    return found


def _candidate(view: GraphView, node: onnx.NodeProto, out: str, g: Grid) -> LayerInfo | None:
    """``out`` as a candidate layer, or None (not 4-D/tokens, a grid of one position, …)."""
    if any(isinstance(d, int) and d <= 1 for d in g.size):
        return None
    shape = tuple(view.shape(out) or ())
    rank = len(shape)
    if g.tokens:
        rows, cols = g.size
        if (
            rank != 3
            or g.h != 1
            or not isinstance(rows, int)
            or not isinstance(cols, int)
            or not isinstance(shape[2], int)
            or shape[1] != g.prefix + rows * cols
        ):
            return None  # per-head attention tensors, windows, dynamic grids
        tokens = TokenGrid(g.prefix, rows, cols)
        return LayerInfo(out, node.op_type, node_label(node), shape, NHWC, tokens=tokens)
    layout = g.layout(rank)
    if layout is None:
        return None
    return LayerInfo(out, node.op_type, node_label(node), shape, layout)


def _mark_default(
    view: GraphView, found: list[LayerInfo], on_path: set, grids: dict, live: dict
) -> None:
    alive = [c for c in found if c.live]
    if not alive:
        return
    last = alive[-1]
    after = (view.descendants([last.tensor], data_only=True) - {last.tensor}) & on_path
    if all(_settled(view, t, grids, live) for t in after):
        _unsliced(view, last, {c.tensor: c for c in alive}).default = True
        return
    if last.tokens is not None:
        normed = [c for c in alive if c.tokens is not None and c.op in NORMALIZATION_OPS]
        if normed:
            normed[-1].default = True


def _unsliced(view: GraphView, c: LayerInfo, alive: dict[str, LayerInfo]) -> LayerInfo:
    """The tokens ``c`` was sliced from when ``c`` only drops their prefix (a pooled ViT's
    ``x[:, 1:]`` before the mean): the same map, and the layer a practitioner names (the last
    block or norm, not the slice)."""
    p = view.producer.get(c.tensor)
    while c.tokens is not None and p is not None and p.op_type in ("Slice", "Identity"):
        src = alive.get(p.input[0])
        if (
            src is None
            or src.tokens is None
            or (src.tokens.rows, src.tokens.cols)
            != (
                c.tokens.rows,
                c.tokens.cols,
            )
        ):
            break
        c, p = src, view.producer.get(src.tensor)
    return c


def _settled(view: GraphView, tensor: str, grids: dict[str, Grid], live: dict) -> bool:
    """``tensor`` keeps the image grid on rows and columns, or holds no live positions any
    more (rank ≤ 2: pooled or flattened into a vector; tokens read only at their prefix)."""
    g = grids.get(tensor)
    if (view.rank(tensor) or 0) <= 2 or (g is not None and not g.tokens):
        return True
    return g is not None and PATCHES not in live.get(tensor, ())


def default_layer(candidates: list[LayerInfo]) -> LayerInfo:
    """The default target layer, or an ``ExportError`` listing the best candidates when none
    is convincing (never a guess)."""
    default = next((c for c in candidates if c.default), None)
    if default is not None:
        return default
    alive = [c for c in candidates if c.live] or candidates
    last = alive[-1]
    best = ", ".join(f"{c.tensor} {c.kind}" for c in alive[-4:][::-1])
    raise ExportError(
        f"no default target layer: the last feature map on the image grid, {last.tensor!r} "
        f"({last.op}), is followed by tensors that are not on the image grid (windows, "
        "attention, …) before the head, so explaining it could explain an early layer. "
        f"Choose a layer with --layer; candidates: {best}"
    )


def resolve_layer(view: GraphView, name: str, candidates: list[LayerInfo]) -> str:
    """A user's layer name (tensor or node name) → tensor name; it must be a candidate (a
    feature map on the image grid), else an error lists the candidates."""
    if name in view.producer or name in set(view.graph_inputs):
        tensor = name
    else:
        node = next((n for n in view.graph.node if n.name == name), None)
        if node is None:
            raise LayerNotFoundError(_unknown_layer_message(name, candidates))
        tensor = node.output[0]
    if view.rank(tensor) not in (3, 4):
        raise LayerNotFoundError(
            f"layer {name!r} is neither a 4-D feature map nor a [batch, tokens, channels] token "
            f"tensor (shape {view.shape(tensor)}); " + _candidates_hint(candidates)
        )
    by_tensor = {c.tensor: c for c in candidates}
    p = view.producer.get(tensor)
    while tensor not in by_tensor and p is not None and p.op_type in ("Transpose", "Identity"):
        # a layout copy the graph does not use further (torch's exporter folds the permute back
        # of a Swin-v2-cr stage into the next one): explain the tensor it copies (same map)
        if view.consumers.get(tensor):
            break
        tensor, p = p.input[0], view.producer.get(p.input[0])
    found = by_tensor.get(tensor)
    if found is not None and not found.live:
        default = next((c.tensor for c in candidates if c.default), None)
        hint = f" such as {default!r}" if default else ""
        raise LayerNotFoundError(
            f"the score does not depend on the grid positions of layer {name!r}: after it the "
            "classifier reads only prefix tokens (a class token), so its gradient is exactly "
            f"zero at every position and its map would be empty. Choose an earlier layer{hint} "
            "(before the last attention)"
        )
    if found is None:
        raise LayerNotFoundError(
            f"layer {name!r} (shape {list(view.shape(tensor) or [])}) is not a feature map on "
            "the image grid: the graph does not show which of its axes are rows and columns "
            "of the image (an attention or window tensor, or an op onnxcam cannot follow); "
            + _candidates_hint(candidates)
        )
    return tensor


def _candidates_hint(candidates: list[LayerInfo]) -> str:
    names = [c.tensor for c in candidates]
    shown = names if len(names) <= 12 else [*names[:4], "...", *names[-8:]]
    return f"candidates ({len(names)}, see `onnxcam layers`): {', '.join(shown)}"


def _unknown_layer_message(name: str, candidates: list[LayerInfo]) -> str:
    return f"unknown layer {name!r}; " + _candidates_hint(candidates)


@dataclass
class ClassifierHead:
    """A GAP → Linear head: enables classic CAM (Zhou et al., arXiv 1512.04150)."""

    weight: str
    bias: str | None
    rows_are_classes: bool
    alpha: float


_PASS_THROUGH = {
    "Identity", "Dropout", "Flatten", "Reshape", "Squeeze",
    "QuantizeLinear", "DequantizeLinear",  # a QDQ model's rounding of the pooled vector
}  # fmt: skip


def find_gap_linear(
    view: GraphView, tensor: str, layout: Layout, head: Head, tokens: TokenGrid | None = None
) -> ClassifierHead | None:
    """Detect target → global average pool → (flatten) → Linear → logits; else None. For a
    token layer (``tokens``, no prefix tokens) the pool is the mean over the token axis."""
    data = view.ancestors([head.logits], data_only=True)

    @cache
    def only_consumer(t: str) -> onnx.NodeProto | None:
        cs = [c for c in view.consumers.get(t, []) if any(o in data for o in c.output)]
        return cs[0] if len(cs) == 1 else None

    t = tensor
    node = only_consumer(t)
    while node is not None and node.op_type in ("Identity", "Dropout"):
        t, node = node.output[0], only_consumer(node.output[0])
    if tokens is not None:
        pooled = tokens.prefix == 0 and node is not None and node.op_type == "ReduceMean"
        if not pooled or reduce_axes(view, node, 3) != (1,) or attr(node, "keepdims", 1):
            return None
    elif node is None or not _is_global_average(view, node, layout):
        return None
    t, node = node.output[0], only_consumer(node.output[0])
    while node is not None and node.op_type in _PASS_THROUGH:
        t, node = node.output[0], only_consumer(node.output[0])
    if node is None:
        return None
    if node.op_type == "Gemm" and node.input[0] == t and view.is_weight(node.input[1]):
        if attr(node, "transA", 0):
            return None
        cls = ClassifierHead(
            node.input[1],
            node.input[2] if len(node.input) > 2 and node.input[2] else None,
            bool(attr(node, "transB", 0)),
            float(attr(node, "alpha", 1.0)),
        )
        out = node.output[0]
    elif node.op_type == "MatMul" and node.input[0] == t and view.is_weight(node.input[1]):
        cls = ClassifierHead(node.input[1], None, False, 1.0)
        out = node.output[0]
        nxt = only_consumer(out)
        if nxt is not None and nxt.op_type == "Add" and out != head.logits:
            cls.bias = next((i for i in nxt.input if i != out), None)
            out = nxt.output[0]
    else:
        return None
    while out != head.logits:
        nxt = only_consumer(out)
        if nxt is None or nxt.op_type != "Identity":
            return None
        out = nxt.output[0]
    return cls


def _is_global_average(view: GraphView, node: onnx.NodeProto, layout: Layout) -> bool:
    """``node`` averages a ``layout`` tensor over all its positions."""
    if node.op_type == "GlobalAveragePool":
        return layout == ONNX_LAYOUT
    if node.op_type == "ReduceMean":
        return reduce_axes(view, node) == layout.spatial_axes
    if node.op_type == "AveragePool":
        shape = view.shape(node.input[0])
        k = tuple(attr(node, "kernel_shape") or ())
        return (
            layout == ONNX_LAYOUT
            and shape is not None
            and k == layout.spatial(shape)
            and not any(attr(node, "pads") or [])
        )
    return False
