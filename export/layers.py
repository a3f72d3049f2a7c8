"""Find what to explain: the image input, the logits, candidate target layers and the CAM head.

Everything here only reads the graph. Layout (NCHW vs NHWC) is decided per tensor from who
produces and consumes it, so tf2onnx models (NHWC feature maps around transposed convs) work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import onnx

from onnxcam import contract
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
    layout: str
    default: bool = False


def image_input(view: GraphView) -> str:
    """The first real graph input of rank 4 (the image)."""
    for name in view.graph_inputs:
        if view.rank(name) == 4 and view.is_float(name):
            return name
    raise ExportError("the model has no 4-D float input (expected an image batch)")


def input_layout(view: GraphView, name: str) -> str:
    s = view.shape(name) or (None,) * 4
    if s[1] in (1, 3, 4) and s[3] not in (1, 3, 4):
        return contract.LAYOUT_NCHW
    if s[3] in (1, 3, 4) and s[1] not in (1, 3, 4):
        return contract.LAYOUT_NHWC
    return contract.LAYOUT_NCHW


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


def tensor_layout(view: GraphView, name: str) -> str:
    """NCHW or NHWC for a 4-D tensor, from its producer, its consumers or the input."""
    return _layout(view, name, 0)


def _layout(view: GraphView, name: str, depth: int) -> str:
    p = view.producer.get(name)
    if p is not None:
        if p.op_type in NCHW_PRODUCERS:
            return contract.LAYOUT_NCHW
        if p.op_type == "Transpose":
            perm = list(attr(p, "perm") or [])
            if perm == [0, 2, 3, 1]:
                return contract.LAYOUT_NHWC
            if perm == [0, 3, 1, 2]:
                return contract.LAYOUT_NCHW
        if p.op_type in ELEMENTWISE and depth < 64:
            for i in p.input:
                if i and view.rank(i) == 4 and not view.is_const(i):
                    return _layout(view, i, depth + 1)
    for c in view.consumers.get(name, []):
        if c.op_type in NCHW_PRODUCERS:
            return contract.LAYOUT_NCHW
        if c.op_type == "Transpose" and list(attr(c, "perm") or []) == [0, 3, 1, 2]:
            return contract.LAYOUT_NHWC
        if c.op_type in ("ReduceMean", "ReduceSum", "ReduceMax"):
            axes = attr(c, "axes")
            if axes is None and len(c.input) > 1:
                axes = view.const(c.input[1])
            if axes is not None and sorted(int(a) % 4 for a in ints(axes)) == [1, 2]:
                return contract.LAYOUT_NHWC
    if view.graph_inputs:
        try:
            return input_layout(view, image_input(view))
        except ExportError:
            pass
    return contract.LAYOUT_NCHW


def spatial_dims(shape: tuple, layout: str) -> tuple:
    return tuple(shape[1:3]) if layout == contract.LAYOUT_NHWC else tuple(shape[2:4])


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
            if any(isinstance(d, int) and d <= 1 for d in spatial_dims(shape, layout)):
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


def find_gap_linear(view: GraphView, tensor: str, layout: str, head: Head) -> ClassifierHead | None:
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


def _is_global_average(view: GraphView, node: onnx.NodeProto, layout: str) -> bool:
    if node.op_type == "GlobalAveragePool":
        return layout == contract.LAYOUT_NCHW
    if node.op_type == "ReduceMean":
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = view.const(node.input[1])
        if axes is None:
            return False
        want = [1, 2] if layout == contract.LAYOUT_NHWC else [2, 3]
        return sorted(int(a) % 4 for a in ints(axes)) == want
    if node.op_type == "AveragePool":
        shape = view.shape(node.input[0])
        k = list(attr(node, "kernel_shape") or [])
        return (
            layout == contract.LAYOUT_NCHW
            and shape is not None
            and k == list(shape[2:])
            and not any(attr(node, "pads") or [])
        )
    return False
