"""Model-parameter randomisation for the sanity checks (Adebayo et al., arXiv:1810.03292).

The cascading test re-initialises a model's weights layer by layer, from the logits down to
the input, and re-explains the same images after each step. An exported graph cannot simply
have its initializers swapped: the backward holds constants *derived* from the weights (the
flipped kernels of a stride-1 convolution's adjoint, the copies ``_localize_weights`` puts in
the ``If`` branches), which such a swap would leave stale — a silently wrong gradient. So:

1. ``extract_forward``: the plain model back out of an exported one — the main graph's nodes
   that compute the model's own outputs (and the target tensors) from the image input, which
   export never edits (``verify.check_forward_nodes_kept``), with the one allowed edit (an
   optional output switched on) undone;
2. ``parameter_layers``: its parameterised layers, top (logits) first: Conv / ConvTranspose /
   Gemm / MatMul weights and biases, Batch/Layer/Instance/GroupNormalization scale and bias;
3. ``randomize``: each of their tensors replaced by N(0, σ²), σ the tensor's own std (its RMS
   when the tensor is constant, e.g. a normalisation's scale of ones), from a generator keyed
   by (seed, tensor name) — a tensor gets the same values whichever step randomises it;
4. ``Cascade.export``: the randomised forward through ``export_onnx`` with the options the
   exported model's metadata records (``export_options``), so every derived constant is
   derived again.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam import contract
from onnxcam.contract import Contract
from onnxcam.errors import ExportError

from .api import ModelSource, export_onnx, load_model
from .layout import reads, unsplit
from .verify import _ENABLED

PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2),
}
"""Op → the inputs that are its parameters when they are constants (Gemm and MatMul: the
operand that is an initializer; a MatMul's bias is the constant of the ``Add`` after it)."""


@dataclass(frozen=True)
class ParamLayer:
    """One parameterised layer: its node and the initializers that hold its parameters."""

    node: str
    """The node's name (its first output when it has none)."""
    op_type: str
    tensors: tuple[str, ...]


def extract_forward(model: ModelSource) -> tuple[onnx.ModelProto, Contract]:
    """The plain model inside an onnxcam export, and the export's contract.

    Kept: the main graph's nodes that compute the model's own outputs and the target tensors
    from the graph inputs (every name outside the ``onnxcam_`` contract), in their order, the
    initializers and inputs they read, and the model's other metadata. A node onnxcam appended
    (``onnxcam…`` or ``…/grad/…`` names) on that path is an ``ExportError``."""
    m = unsplit(load_model(model))
    meta = {p.key: p.value for p in m.metadata_props}
    if contract.META_VERSION not in meta:
        raise ExportError("not an onnxcam export (no onnxcam metadata): give the plain model")
    c = Contract.from_metadata(meta)
    g = m.graph
    outputs = [o for o in g.output if not o.name.startswith(contract.NAME_PREFIX)]
    if not outputs:
        raise ExportError("the exported model has none of its own outputs left")
    producer = {o: n for n in g.node for o in n.output if o}
    keep: set[int] = set()
    stack = [o.name for o in outputs] + [t.tensor for t in c.targets if not t.pixels]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(reads(node))
    nodes = [n for n in g.node if id(n) in keep]
    appended = [n.name for n in nodes if n.name.startswith("onnxcam") or "/grad/" in n.name]
    if appended:
        raise ExportError(f"internal: the forward path runs through onnxcam's node {appended[0]}")
    read = {i for n in nodes for i in reads(n)}
    out = onnx.ModelProto()
    out.CopyFrom(m)
    del out.graph.node[:], out.graph.initializer[:], out.graph.input[:], out.graph.output[:]
    del out.graph.value_info[:], out.metadata_props[:]
    for n in nodes:
        copy = out.graph.node.add()
        copy.CopyFrom(n)
        _undo_optional_outputs(copy)
    out.graph.initializer.extend(t for t in g.initializer if t.name in read)
    out.graph.input.extend(
        i for i in g.input if i.name in read and not i.name.startswith(contract.NAME_PREFIX)
    )
    out.graph.output.extend(outputs)
    out.graph.value_info.extend(v for v in g.value_info if v.name in read)
    out.metadata_props.extend(p for p in m.metadata_props if not p.key.startswith("onnxcam."))
    return out, c


def _undo_optional_outputs(node: onnx.NodeProto) -> None:
    """Switch off the optional outputs the exporter switched on (MaxPool's ``Indices``)."""
    enabled = [int(k) for k in _ENABLED.findall(node.doc_string)]
    if not enabled:
        return
    outs = list(node.output)
    for k in enabled:
        if k < len(outs):
            outs[k] = ""
    while outs and not outs[-1]:
        outs.pop()
    del node.output[:]
    node.output.extend(outs)
    kept = "\n".join(x for x in node.doc_string.splitlines() if not _ENABLED.search(x)).strip()
    if kept:
        node.doc_string = kept
    else:
        node.ClearField("doc_string")


def export_options(c: Contract) -> dict:
    """``export_onnx`` keyword arguments that rebuild an export with this contract: its
    target tensors (names kept), preprocessing, labels, score output, task, in-graph heatmaps,
    input gradient, rule sets, FullGrad's bias map, ReciproCAM's maps and the heads'
    gradients."""
    if c.score.task == "detect":
        raise ExportError("the randomisation sanity check explains classifiers, not detectors")
    features = [t for t in c.targets if not t.pixels]
    pixels = [t for t in c.targets if t.pixels]
    heatmaps = sorted({m for t in features for m in t.heatmaps})
    spec = c.input
    opts: dict = {
        "layers": [t.tensor for t in features],
        "layer_names": [t.name for t in features],
        "labels": list(c.labels) if c.labels is not None else None,
        "model_output": c.score.output,
        "task": c.score.task,
        "color": spec.color,
        "input_gradient": bool(pixels),
        "rules": sorted(pixels[0].rules) if pixels else None,
        "fullgrad": bool(pixels and pixels[0].fullgrad),
        "reciprocam": any(t.reciprocam for t in features),
        "head_gradients": any(t.head_gradient for t in features),
        "forward_copy": bool(c.exporter.get("forward_copy")),
        "heatmaps": heatmaps or None,
        "heatmap_size": next((t.heatmap_size for t in features if t.heatmap_size), "input"),
    }
    if spec.dtype != "uint8":  # a uint8 input takes raw pixels: nothing else may be given
        opts.update(scale=spec.scale, mean=list(spec.mean), std=list(spec.std))
    return opts


def parameter_layers(model: onnx.ModelProto) -> list[ParamLayer]:
    """The parameterised layers of a plain model, in reverse topological order (the layer
    nearest the logits first). A tensor shared by several layers belongs to the first."""
    g = model.graph
    inits = {t.name for t in g.initializer} - {i.name for i in g.input}
    alias = {}  # Identity outputs of initializers (torch's shared weights) → the initializer
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        if n.op_type == "Identity" and (alias.get(n.input[0], n.input[0]) in inits):
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])

    def const(name: str) -> str | None:
        name = alias.get(name, name)
        return name if name in inits else None

    layers, seen = [], set()
    for n in reversed(g.node):
        ks = PARAMETER_INPUTS.get(n.op_type, ())
        found = [const(n.input[k]) for k in ks if k < len(n.input) and n.input[k]]
        tensors = [t for t in found if t is not None]
        if n.op_type == "MatMul" and len(tensors) == 1:
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                tensors += [t for i in users[0].input if (t := const(i)) is not None]
        if n.op_type in ("Gemm", "MatMul") and not any(
            const(i) for i in n.input[:2] if i
        ):  # a product of two activations (attention scores) has no parameters
            continue
        tensors = [t for t in dict.fromkeys(tensors) if t not in seen]
        if tensors:
            seen.update(tensors)
            layers.append(ParamLayer(n.name or n.output[0], n.op_type, tuple(tensors)))
    return layers


def cascade_counts(n_layers: int, steps: int) -> list[int]:
    """How many layers (top first) are randomised after each of ``steps`` cascade steps: the
    top layer alone first, all of them last, evenly spaced between."""
    if n_layers < 1:
        raise ExportError("the model has no parameterised layer to randomise")
    if steps < 1:
        raise ExportError(f"the cascade needs at least one step, not {steps}")
    if steps == 1:
        return [n_layers]
    return sorted({round(float(v)) for v in np.linspace(1, n_layers, steps)})


def random_values(name: str, value: np.ndarray, seed: int) -> np.ndarray:
    """N(0, σ²) of ``value``'s shape and dtype, σ its std (its RMS when it is constant), from
    a generator keyed by (``seed``, ``name``)."""
    v = value.astype(np.float64)
    sigma = float(v.std()) or float(np.sqrt(np.mean(v**2)))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.normal(0.0, sigma, size=value.shape).astype(value.dtype)


def randomize(model: onnx.ModelProto, layers: Sequence[ParamLayer], seed: int) -> onnx.ModelProto:
    """A copy of ``model`` with the parameters of ``layers`` re-initialised (``random_values``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {t for layer in layers for t in layer.tensors}
    for k, t in enumerate(out.graph.initializer):
        if t.name in names:
            new = numpy_helper.from_array(random_values(t.name, numpy_helper.to_array(t), seed))
            new.name = t.name
            out.graph.initializer[k].CopyFrom(new)
    return out


class Cascade:
    """The cascading randomisation of one exported model: its plain forward, its export
    options and parameterised layers; ``export(k)`` is the model with the top ``k`` layers
    randomised, exported again."""

    def __init__(self, exported: ModelSource, source: ModelSource | None = None, seed: int = 0):
        """``source``: the plain model (default: extracted from ``exported``)."""
        forward, self.contract = extract_forward(exported)
        self.forward = forward if source is None else load_model(source)
        self.options = export_options(self.contract)
        self.layers = parameter_layers(self.forward)
        self.seed = seed
        if not self.layers:
            raise ExportError(
                "no parameterised layer (Conv, ConvTranspose, Gemm, MatMul with a constant "
                "weight, a normalisation's scale and bias) found to randomise"
            )

    def model(self, k: int) -> onnx.ModelProto:
        """The plain model with its top ``k`` layers randomised."""
        return randomize(self.forward, self.layers[:k], self.seed)

    def export(self, k: int, verify: bool = True) -> bytes:
        """The top ``k`` layers randomised and exported with the original export's options."""
        return export_onnx(self.model(k), verify=verify, **self.options).model.SerializeToString()


__all__ = [
    "PARAMETER_INPUTS",
    "Cascade",
    "ParamLayer",
    "cascade_counts",
    "export_options",
    "extract_forward",
    "parameter_layers",
    "random_values",
    "randomize",
]
