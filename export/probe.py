"""``probe_model``: a layer's channel means as a classifier, exported with its input gradient.

``onnxcam inspect`` (``onnxcam/inspect.py``) shows what a layer's channels respond to. Both of
its pictures need one thing: the mean activation of a channel and its gradient with respect to
the input. No new graph math gives it: the model is cut at the layer L (the subgraph from the
image input to L), a ``ReduceMean`` over L's spatial axes makes ``[B, C]`` "logits" — class k
is channel k's mean activation — and that probe goes through ``export_onnx`` with
``layers=[L]`` and ``input_gradient=True``. At run time the class input picks the channel per
batch row, the activation output is L and the pixel target's gradient output is
∂ mean(L[k]) / ∂ input: one ``session.run`` for any number of channels.

A model onnxcam already exported (``.cam.onnx``) is cut back to its original forward first
(the onnxcam inputs, outputs, branches and metadata dropped, an optional output the exporter
switched on switched off again), and the probe keeps its recorded preprocessing.
"""

from __future__ import annotations

import re

import onnx
from onnx import helper

from onnxcam import contract
from onnxcam.contract import Contract, InputSpec
from onnxcam.errors import ExportError

from .api import ModelSource, _normalize_opset, export_onnx, load_model
from .graph import GraphView
from .layers import candidate_layers, find_head, resolve_layer
from .layout import live_nodes, unsplit

MEANS_OUTPUT = "probe_channel_means"
"""The probe's output: ``[B, C]``, the mean of each channel of the layer over its positions."""

_ENABLED = re.compile(r"\n?onnxcam: enabled optional output (\d+) \([^)]*\)\.")
"""The note ``NodeBuilder.enable_optional_output`` leaves on a forward node it edited."""


def probe_model(
    model: ModelSource,
    layer: str,
    *,
    size: tuple[int, int] | None = None,
    preset: str | None = None,
    model_output: str | None = None,
    verify: bool = True,
) -> onnx.ModelProto:
    """The probe of ``layer`` (an ONNX tensor or node name, resolved as ``export --layer``
    does) in ``model`` (plain ONNX or an onnxcam export): input → L → channel means, exported
    with L as target 0 and the input gradient as target 1 (contract v3)."""
    m = load_model(model)
    spec = _recorded_spec(m)
    if spec is not None:
        m = original_forward(m)
    m, _ = _normalize_opset(m)
    view = GraphView(m)
    head = find_head(view, model_output)
    candidates = candidate_layers(view, head)
    tensor = resolve_layer(view, layer, candidates)
    found = next(c for c in candidates if c.tensor == tensor)
    if found.tokens is not None:
        raise ExportError(
            f"layer {layer!r} is a token tensor {found.kind}: inspect shows 4-D feature maps "
            "(NCHW or NHWC) only; choose a convolutional layer (`onnxcam layers`)"
        )
    probe = _cut(m, view, tensor, found.layout.spatial_axes)
    return export_onnx(
        probe,
        layers=[tensor],
        layer_names=[layer],
        size=size,
        preset=preset,
        input_gradient=True,
        verify=verify,
        **_preprocessing(spec),
    ).model


def original_forward(m: onnx.ModelProto) -> onnx.ModelProto:
    """An onnxcam export's original model: its own outputs and the nodes they need, its image
    input, no onnxcam metadata; MaxPool's ``Indices`` switched off where onnxcam switched them
    on (the one forward edit export allows, recorded in the node's ``doc_string``); a forward
    copy's forward branch (``layout.unsplit``)."""
    out = onnx.ModelProto()
    out.CopyFrom(unsplit(m))
    g = out.graph
    own = [o.name for o in g.output if not o.name.startswith(contract.NAME_PREFIX)]
    for node in g.node:
        for k in (int(i) for i in _ENABLED.findall(node.doc_string)):
            if k < len(node.output):
                node.output[k] = ""
        while node.output and not node.output[-1]:
            node.output.pop()
        node.doc_string = _ENABLED.sub("", node.doc_string).strip()
    _prune(g, own)
    del out.metadata_props[:]
    return out


def _recorded_spec(m: onnx.ModelProto) -> InputSpec | None:
    """The preprocessing an onnxcam export recorded, or None for a plain model."""
    meta = {p.key: p.value for p in m.metadata_props}
    if contract.META_VERSION not in meta:
        return None
    return Contract.from_metadata(meta).input


def _preprocessing(spec: InputSpec | None) -> dict:
    """``export_onnx`` keywords that reproduce a recorded ``InputSpec`` (a uint8 input takes
    raw pixels: only its colour order is said)."""
    if spec is None:
        return {}
    if spec.dtype == "uint8":
        return {"color": spec.color}
    return {"color": spec.color, "mean": spec.mean, "std": spec.std, "scale": spec.scale}


def _cut(m: onnx.ModelProto, view: GraphView, tensor: str, axes: tuple[int, int]):
    """The graph from the inputs to ``tensor``, ending in the mean of ``tensor`` over
    ``axes`` (``MEANS_OUTPUT``, ``[B, C]``)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    g = probe.graph
    _prune(g, [tensor])
    opset = next(o.version for o in probe.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # axes became an input at opset 18
        g.initializer.append(helper.make_tensor("probe_axes", onnx.TensorProto.INT64, [2], axes))
        node = helper.make_node(
            "ReduceMean", [tensor, "probe_axes"], [MEANS_OUTPUT], "probe_mean", keepdims=0
        )
    else:
        node = helper.make_node(
            "ReduceMean", [tensor], [MEANS_OUTPUT], "probe_mean", axes=list(axes), keepdims=0
        )
    g.node.append(node)
    shape = view.shape(tensor)
    channels = [d for i, d in enumerate(shape) if i not in axes][1] if shape else None
    batch = shape[0] if shape else None
    g.output.append(
        helper.make_tensor_value_info(MEANS_OUTPUT, view.dtype(tensor), [batch, channels])
    )
    del probe.metadata_props[:]
    return probe


def _prune(g: onnx.GraphProto, outputs: list[str]) -> None:
    """Keep of ``g`` only what ``outputs`` need: nodes, inputs, initializers, value_info."""
    kept, needed = live_nodes(list(g.node), set(outputs))
    nodes = [onnx.NodeProto() for _ in kept]
    for new, old in zip(nodes, kept, strict=True):
        new.CopyFrom(old)
    del g.node[:]
    g.node.extend(nodes)
    made = {o for n in nodes for o in n.output} | needed
    for field, keep in (
        (g.input, lambda v: v.name in needed),
        (g.initializer, lambda t: t.name in needed),
        (g.value_info, lambda v: v.name in made),
    ):
        chosen = [x for x in field if keep(x)]
        del field[:]
        field.extend(chosen)
    wanted = [o for o in g.output if o.name in outputs]
    del g.output[:]
    g.output.extend(wanted)


__all__ = ["MEANS_OUTPUT", "original_forward", "probe_model"]
