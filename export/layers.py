"""Find what to explain: the image input, the logits, candidate target layers and the CAM head.

Everything here only reads the graph. Layout (NCHW vs NHWC) is decided per tensor from who
produces and consumes it, so tf2onnx models (NHWC feature maps around transposed convs) work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import onnx

from onnxcam.contract import LAYOUTS, NCHW, NHWC, Layout
from onnxcam.errors import ExportError, LayerNotFoundError

from .graph import GraphView, attr, ints, node_label

NCHW_PRODUCERS = {
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LRN",
    "InstanceNormalization",
}
ELEMENTWISE = {
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Gelu",
    "Erf",
    "Softplus",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Identity",
    "Dropout",
    "Cast",
    "Sum",
    "Max",
    "Min",
    "Neg",
    "Sqrt",
    "Pow",
    "Exp",
    "Abs",
}
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


@dataclass
class LayerInfo:
    """A candidate target layer (a 4-D feature map between the input and the logits)."""

    tensor: str
    op: str
    node: str
    shape: tuple
    layout: Layout
    default: bool = False


def image_input(view: GraphView) -> str:
    """The first real graph input of rank 4 (the image)."""
    for name in view.graph_inputs:
        if view.rank(name) == 4 and view.is_float(name):
            return name
    raise ExportError("the model has no 4-D float input (expected an image batch)")


def input_layout(view: GraphView, name: str) -> Layout:
    """The image input's layout: the one layout whose channel axis holds a colour channel
    count (``COLOR_CHANNELS``); NCHW when both or neither do."""
    s = view.shape(name) or (None,) * 4
    looks = [lay for lay in LAYOUTS if lay.channels(s) in COLOR_CHANNELS]
    return looks[0] if len(looks) == 1 else NCHW


def find_head(view: GraphView, output: str | None = None) -> Head:
    """The classifier output (the first model output unless named) and its logits."""
    outputs = [o.name for o in view.graph.output]
    if output is None:
        output = outputs[0]
    elif output not in outputs:
        raise ExportError(f"unknown model output {output!r}; outputs: {', '.join(outputs)}")
    t, activation = output, None
    while (p := view.producer.get(t)) is not None and p.op_type == "Identity":
        t = p.input[0]
    p = view.producer.get(t)
    if p is not None and p.op_type in OUTPUT_ACTIVATIONS:
        activation, t = OUTPUT_ACTIVATIONS[p.op_type], p.input[0]
    shape = view.shape(t)
    if shape is None or len(shape) != 2:
        raise ExportError(
            f"model output {output!r} must be [batch, classes] logits or probabilities, "
            f"got shape {list(shape) if shape else 'unknown'}"
        )
    k = shape[1] if isinstance(shape[1], int) else None
    return Head(logits=t, output=output, activation=activation, num_classes=k)


def tensor_layout(view: GraphView, name: str) -> Layout:
    """NCHW or NHWC for a 4-D tensor, from its producer, its consumers or the input."""
    return _layout(view, name, 0)


def _layout(view: GraphView, name: str, depth: int) -> Layout:
    p = view.producer.get(name)
    if p is not None:
        if p.op_type in NCHW_PRODUCERS:
            return ONNX_LAYOUT
        if p.op_type == "Transpose":
            perm = tuple(attr(p, "perm") or ())
            if perm == NHWC.from_nchw_perm:
                return NHWC
            if perm == NHWC.to_nchw_perm:
                return NCHW
        if p.op_type in ELEMENTWISE and depth < 64:
            for i in p.input:
                if i and view.rank(i) == 4 and not view.is_const(i):
                    return _layout(view, i, depth + 1)
    for c in view.consumers.get(name, []):
        if c.op_type in NCHW_PRODUCERS:
            return ONNX_LAYOUT
        if c.op_type == "Transpose" and tuple(attr(c, "perm") or ()) == NHWC.to_nchw_perm:
            return NHWC
        reduce = c.op_type in ("ReduceMean", "ReduceSum", "ReduceMax")
        if reduce and reduce_axes(view, c) == NHWC.spatial_axes:
            return NHWC
    if view.graph_inputs:
        try:
            return input_layout(view, image_input(view))
        except ExportError:
            pass
    return NCHW


def reduce_axes(view: GraphView, node: onnx.NodeProto) -> tuple[int, ...] | None:
    """The sorted, non-negative axes a 4-D Reduce* node reduces (attribute or input)."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = view.const(node.input[1])
    return None if axes is None else tuple(sorted(int(a) % 4 for a in ints(axes)))


def candidate_layers(view: GraphView, head: Head) -> list[LayerInfo]:
    """4-D feature maps on the data path from the image to the logits, spatial size > 1.

    The last one in topological order — the last feature map feeding the classifier head —
    is marked as the default.
    """
    image = image_input(view)
    on_path = view.descendants([image], data_only=True) & view.ancestors(
        [head.logits], data_only=True
    )
    found: list[LayerInfo] = []
    for node in view.topo_order():
        for out in node.output:
            if out not in on_path or view.rank(out) != 4:
                continue
            shape = view.shape(out)
            layout = tensor_layout(view, out)
            if any(isinstance(d, int) and d <= 1 for d in layout.spatial(shape)):
                continue
            found.append(LayerInfo(out, node.op_type, node_label(node), tuple(shape), layout))
    if not found:
        raise ExportError(
            "the model has no 4-D feature map between its input and its output "
            "(nothing to explain with a class activation map)"
        )
    found[-1].default = True
    return found


def resolve_layer(view: GraphView, name: str, candidates: list[LayerInfo]) -> str:
    """A user's layer name (tensor or node name) → tensor name."""
    if name in view.producer or name in set(view.graph_inputs):
        tensor = name
    else:
        node = next((n for n in view.graph.node if n.name == name), None)
        if node is None:
            raise LayerNotFoundError(_unknown_layer_message(name, candidates))
        tensor = node.output[0]
    if view.rank(tensor) != 4:
        raise LayerNotFoundError(
            f"layer {name!r} is not a 4-D feature map (shape {view.shape(tensor)}); "
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


_PASS_THROUGH = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze"}


def find_gap_linear(
    view: GraphView, tensor: str, layout: Layout, head: Head
) -> ClassifierHead | None:
    """Detect target → global average pool → (flatten) → Linear → logits; else None."""
    data = view.ancestors([head.logits], data_only=True)

    @cache
    def only_consumer(t: str) -> onnx.NodeProto | None:
        cs = [c for c in view.consumers.get(t, []) if any(o in data for o in c.output)]
        return cs[0] if len(cs) == 1 else None

    t = tensor
    node = only_consumer(t)
    while node is not None and node.op_type in ("Identity", "Dropout"):
        t, node = node.output[0], only_consumer(node.output[0])
    if node is None or not _is_global_average(view, node, layout):
        return None
    t, node = node.output[0], only_consumer(node.output[0])
    while node is not None and node.op_type in _PASS_THROUGH:
        t, node = node.output[0], only_consumer(node.output[0])
    if node is None:
        return None
    if node.op_type == "Gemm" and node.input[0] == t and view.is_const(node.input[1]):
        if attr(node, "transA", 0):
            return None
        cls = ClassifierHead(
            node.input[1],
            node.input[2] if len(node.input) > 2 and node.input[2] else None,
            bool(attr(node, "transB", 0)),
            float(attr(node, "alpha", 1.0)),
        )
        out = node.output[0]
    elif node.op_type == "MatMul" and node.input[0] == t and view.is_const(node.input[1]):
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
