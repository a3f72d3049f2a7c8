"""The export passes, in order: each appends to the graph and never edits forward nodes.

resolve targets → expose activations → add class selection and score → add backward →
add CAM weights → write metadata → verify forward (original outputs unchanged) → check model.

The one forward edit allowed is switching on an optional output (MaxPool ``Indices``), which
the MaxPool VJP rule records in the node's ``doc_string``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.contract import ClassifierSpec, Contract, InputSpec, ScoreSpec, TargetLayer
from onnxcam.errors import ExportError

from .autodiff import build_backward, spatially_constant_source
from .builder import GradBuilder
from .graph import GraphView, attr
from .head import build_head
from .heatmaps import layer_facts
from .heatmaps import postprocess as postprocess_heatmaps
from .heatmaps import raw_maps as raw_heatmaps
from .heatmaps import unavailable as heatmap_unavailable
from .layers import ClassifierHead, Head, LayerInfo, find_gap_linear, tensor_layout

Target = TargetLayer
"""The exporter fills the contract's record pass by pass (one name for one concept)."""


@dataclass
class ExportState:
    """What the passes share while rewriting one model."""

    view: GraphView
    head: Head
    spec: InputSpec
    targets: list[Target]
    consts: dict = field(default_factory=dict)
    cls: str = ""
    heatmaps: list[str] = field(default_factory=list)
    heatmap_size: str = "input"
    heatmaps_all: bool = False
    pooled: dict[int, str] = field(default_factory=dict)
    """Target index → the [B, C, 1, 1] tensor its gradient broadcasts, when the gradient is the
    same at every position (``autodiff.spatially_constant_source``)."""
    classifiers: dict[int, ClassifierHead] = field(default_factory=dict)
    """Target index → its GAP → Linear classifier (targets that have one)."""


def _value_info(view: GraphView, name: str, like: str, shape=None) -> onnx.ValueInfoProto:
    dims = view.shape(like) if shape is None else shape
    return helper.make_tensor_value_info(
        name, view.dtype(like), None if dims is None else list(dims)
    )


def _vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _identity(src: str, dst: str) -> onnx.NodeProto:
    """The node that publishes an internal tensor under a contract output name."""
    return helper.make_node("Identity", [src], [dst], name=dst)


def make_targets(view: GraphView, names: Sequence[tuple[str, str]]) -> list[Target]:
    """(user name, tensor) pairs → ``Target`` records with layout, shape and producer."""
    targets = []
    seen = set()
    for k, (user, tensor) in enumerate(names):
        if tensor in seen:
            raise ExportError(f"layer {user!r} was requested twice")
        seen.add(tensor)
        p = view.producer.get(tensor)
        shape = list(view.shape(tensor) or [])
        layout = tensor_layout(view, tensor)
        targets.append(TargetLayer(k, user, tensor, layout, shape, p.op_type if p else "input"))
    return targets


def expose_activations(st: ExportState) -> None:
    """Output each target tensor as ``onnxcam_activation_k``."""
    g = st.view.graph
    for t in st.targets:
        st.view.add_node(
            helper.make_node("Identity", [t.tensor], [t.activation], name=t.activation)
        )
        g.output.append(_value_info(st.view, t.activation, t.tensor))


def add_score(st: ExportState) -> None:
    """Class selector input, explained class and score outputs, and the one-hot gradient seed.

    cls = sel if sel ≥ 0 else argmax(logits);  score = logits[:, cls] (a GatherElements).
    The selector is an input with a default ``[-1]`` initializer, so ``run(None, {image})``
    explains the top-1 class and callers may feed one class per sample.
    """
    view, logits = st.view, st.head.logits
    b = GradBuilder(view, "onnxcam/score", st.consts)
    g = view.graph
    batch = (view.shape(logits) or ["batch"])[0]
    g.input.append(helper.make_tensor_value_info(contract.CLASS_INPUT, TensorProto.INT64, [batch]))
    view.add_initializer(contract.CLASS_INPUT, np.array([-1], dtype=np.int64))
    top1 = b.ArgMax(logits, axis=1, keepdims=0)
    chosen = b.Less(contract.CLASS_INPUT, b.const(np.array(0, dtype=np.int64)))
    view.add_node(
        helper.make_node(
            "Where",
            [chosen, top1, contract.CLASS_INPUT],
            [contract.CLASS_OUTPUT],
            name=contract.CLASS_OUTPUT,
        )
    )
    picked = b.GatherElements(logits, b.Unsqueeze(contract.CLASS_OUTPUT, b.ints(1)), axis=1)
    view.add_node(
        helper.make_node(
            "Squeeze", [picked, b.ints(1)], [contract.SCORE_OUTPUT], name=contract.SCORE_OUTPUT
        )
    )
    if st.head.activation is not None:  # the model outputs probabilities: publish the logits
        view.add_node(
            helper.make_node(
                "Identity", [logits], [contract.LOGITS_OUTPUT], name=contract.LOGITS_OUTPUT
            )
        )
        g.output.append(_value_info(view, contract.LOGITS_OUTPUT, logits))
    g.output.append(
        helper.make_tensor_value_info(contract.CLASS_OUTPUT, TensorProto.INT64, [batch])
    )
    g.output.append(
        helper.make_tensor_value_info(contract.SCORE_OUTPUT, view.dtype(logits), [batch])
    )
    st.cls = contract.CLASS_OUTPUT
    _add_topk(st, b, batch)


def _add_topk(st: ExportState, b: GradBuilder, batch) -> None:
    """The top-K classes with their logits and probabilities as outputs (K = min(5, classes)):
    the runtime's predictions without a pass over the logits on the host (numpy right after
    the network costs ~0.25 ms per batch: a few % of a 5-ms model)."""
    view, logits = st.view, st.head.logits
    shape = view.shape(logits)
    if not shape or len(shape) != 2 or not isinstance(shape[1], int):
        return  # dynamic class count: the runtime ranks the logits itself
    k = min(contract.TOPK, shape[1])
    values, index = contract.TOPK_LOGIT_OUTPUT, contract.TOPK_INDEX_OUTPUT
    view.add_node(
        helper.make_node("TopK", [logits, b.ints([k])], [values, index], name=index, axis=1)
    )
    if st.head.activation == "sigmoid":  # multi-label: each class on its own
        node = helper.make_node("Sigmoid", [values], [contract.TOPK_PROBABILITY_OUTPUT])
    else:  # softmax over all classes: exp(z − logsumexp z)
        lse = b.reduce("ReduceLogSumExp", logits, [1], 1)
        node = helper.make_node("Exp", [b.Sub(values, lse)], [contract.TOPK_PROBABILITY_OUTPUT])
    node.name = contract.TOPK_PROBABILITY_OUTPUT
    view.add_node(node)
    dtype = view.dtype(logits)
    for name, t in (
        (index, TensorProto.INT64),
        (values, dtype),
        (contract.TOPK_PROBABILITY_OUTPUT, dtype),
    ):
        view.graph.output.append(helper.make_tensor_value_info(name, t, [batch, k]))


def add_mode_input(st: ExportState) -> None:
    """The ``onnxcam_mode`` input (int64 scalar, default 0 = activations + gradients)."""
    st.view.graph.input.append(
        helper.make_tensor_value_info(contract.MODE_INPUT, TensorProto.INT64, [])
    )
    st.view.add_initializer(contract.MODE_INPUT, np.array(contract.MODE_EXPLAIN, dtype=np.int64))


def _gate(
    st: ExportState,
    first: int,
    results: list[tuple[str, str, int, list]],
    mode: int,
    label: str,
) -> None:
    """Move the nodes appended since index ``first`` into ``If(onnxcam_mode == mode)``.

    ``results``: (tensor inside the branch, output name outside, dtype, shape when skipped —
    an empty tensor of that shape). Only the taken branch runs, so a skipped branch costs
    nothing; the branch reads forward tensors and weights as outer-scope values.
    """
    view = st.view
    body = list(view.graph.node[first:])
    del view.graph.node[first:]
    then_outs, produced = [], {o for n in body for o in n.output}
    for inner, outer, dtype, _ in results:
        name = inner
        if inner not in produced or inner in {o.name for o in then_outs}:
            # an outer-scope value, or a tensor already returned once (two methods with
            # provably equal maps): return a copy. Otherwise the branch returns the tensor
            # itself, so onnxruntime writes it straight into the If output (an Identity here
            # costs a copy per output: 25 µs per 224×224 heatmap).
            name = view.unique_name(f"{outer}/then")
            body.append(helper.make_node("Identity", [inner], [name], name=name))
        then_outs.append(helper.make_tensor_value_info(name, dtype, None))
    skipped, else_outs = [], []
    for _, outer, dtype, shape in results:
        name = view.unique_name(f"{outer}/else")
        empty = helper.make_tensor(name + "/value", dtype, shape, [])
        skipped.append(helper.make_node("Constant", [], [name], name=name, value=empty))
        else_outs.append(helper.make_tensor_value_info(name, dtype, shape))
    b = GradBuilder(view, f"onnxcam/{label}", st.consts)
    cond = b.Equal(contract.MODE_INPUT, b.const(np.array(mode, dtype=np.int64)))
    node = helper.make_node(
        "If",
        [cond],
        [outer for _, outer, _, _ in results],
        name=view.unique_name(f"onnxcam/{label}"),
        then_branch=helper.make_graph(body, f"onnxcam_{label}", [], then_outs),
        else_branch=helper.make_graph(skipped, f"onnxcam_no_{label}", [], else_outs),
    )
    view.add_node(node)
    view.reindex()


def _empty_like_target(t: Target) -> list:
    return [0, *[d if isinstance(d, int) else 1 for d in t.shape[1:]]]


def _onehot(st: ExportState) -> str:
    """onehot(class) over the logits' last axis: ∂score/∂logits."""
    view, logits = st.view, st.head.logits
    b = GradBuilder(view, "onnxcam/score", st.consts)
    classes = b.Range(
        b.const(np.array(0, dtype=np.int64)),
        b.Squeeze(b.Shape(logits, start=1, end=2), b.ints(0)),
        b.const(np.array(1, dtype=np.int64)),
    )
    hit = b.Equal(b.Unsqueeze(contract.CLASS_OUTPUT, b.ints(1)), classes)
    return b.Cast(hit, to=view.dtype(logits))


def _score_seed(st: ExportState, wrt: list[str]) -> dict[str, str]:
    """Where the backward pass starts: ∂score/∂logits = onehot(class), or — when the logits
    come straight from a ``Gemm`` with constant weights (a Linear classifier) — one step
    further down, at the Gemm's input, whose gradient is the explained class's weight row
    α·W[class] (a ``Gather``). Exactly the same gradient, without the one-hot × W product,
    which reads the whole classifier matrix (5 MB for a 1280 → 1000 head: about 4% of
    EfficientNet-Lite0's batch-1 latency)."""
    view, logits = st.view, st.head.logits
    gemm = view.producer.get(logits)
    if (
        gemm is None
        or gemm.op_type != "Gemm"
        or attr(gemm, "transA", 0)
        or not view.is_const(gemm.input[1])
        or (len(gemm.input) > 2 and gemm.input[2] and not view.is_const(gemm.input[2]))
        or any(x == logits for x in wrt)
    ):
        return {logits: _onehot(st)}
    w = gemm.input[1]
    b = GradBuilder(view, "onnxcam/score_seed", st.consts)
    if attr(gemm, "transB", 0):  # W: [classes, features]
        row = b.Gather(w, st.cls, axis=0)
    else:  # W: [features, classes]
        row = b.Transpose(b.Gather(w, st.cls, axis=1), perm=[1, 0])
    alpha = attr(gemm, "alpha", 1.0)
    if alpha != 1.0:
        row = b.Mul(row, b.scalar(alpha, w))
    view.shapes[row] = view.shape(gemm.input[0])
    return {gemm.input[0]: row}


def add_backward(st: ExportState) -> None:
    """dScore/dA for every target, output as ``onnxcam_gradient_k``, behind ``If(mode == 0)``."""
    view = st.view
    wrt = [t.tensor for t in st.targets]
    first = len(view.graph.node)
    grads = build_backward(view, _score_seed(st, wrt), wrt, st.consts)
    results = []
    for k, t in enumerate(st.targets):
        pooled = spatially_constant_source(view, grads[t.tensor], t.layout.spatial_axes)
        if pooled is not None:
            st.pooled[k], t.gradient_pooled = pooled, True
        dtype = view.dtype(t.tensor)
        results.append((grads[t.tensor], t.gradient, dtype, _empty_like_target(t)))
        view.graph.output.append(_value_info(view, t.gradient, t.tensor))
    results += _heatmap_results(st, grads)
    _gate(st, first, results, contract.MODE_EXPLAIN, "backward")


def _heatmap_results(st: ExportState, grads: dict[str, str]) -> list:
    """In-graph heatmaps (``export/heatmaps.py``) for every target, built in the backward
    branch: ``onnxcam_heatmap_<method>_<k>`` [batch, H, W] (or feature size)."""
    view, out = st.view, []
    size = None if st.heatmap_size == "feature" else (st.spec.height, st.spec.width)
    if st.heatmaps and size is not None and None in size:
        raise ExportError("in-graph heatmaps at input resolution need a fixed input size (--size)")
    for k, t in enumerate(st.targets):
        b = GradBuilder(view, f"onnxcam/heatmap{k}", st.consts)
        A, G = t.tensor, grads[t.tensor]
        if t.layout != contract.NCHW:
            perm = list(t.layout.to_nchw_perm)
            A, G = b.Transpose(A, perm=perm), b.Transpose(G, perm=perm)
        facts = layer_facts(view, t.tensor, st.pooled.get(k), t.layout, t.shape)
        methods = []
        for m in st.heatmaps:
            why = heatmap_unavailable(m, facts, t.cam_weight)
            if why and not st.heatmaps_all:  # "all" means every heatmap this layer can have
                raise ExportError(f"{why} (layer {t.name!r})")
            if not why:
                methods.append(m)
        if not methods:
            continue
        stacked, rows = raw_heatmaps(b, A, G, t.cam_weight, methods, facts)
        finals = postprocess_heatmaps(b, stacked, rows, A, t.spatial, size)
        dims = [t.shape[0], *(size or t.spatial)]
        empty = [0, *[d if isinstance(d, int) else 1 for d in dims[1:]]]
        dtype = view.dtype(t.tensor)
        for m, final in zip(methods, finals, strict=True):
            name = contract.heatmap_name(m, k)
            t.heatmaps[m], t.heatmap_size = name, st.heatmap_size
            out.append((final, name, dtype, empty))
            view.graph.output.append(helper.make_tensor_value_info(name, dtype, dims))
    return out


def add_heads(st: ExportState) -> None:
    """Per target, a head-only path behind ``If(mode == 2)``: ``onnxcam_head_input_k`` →
    ``onnxcam_head_logits_k`` (see ``export/head.py``). A target that is not a cut of the
    graph gets no head; its metadata says why."""
    view = st.view
    n_cls = st.head.num_classes or 0
    for k, t in enumerate(st.targets):
        name_in = contract.head_input_name(k)
        first = len(view.graph.node)
        try:
            nodes, logits = build_head(view, t.tensor, st.head.logits, k, name_in, st.consts)
        except ExportError as e:
            del view.graph.node[first:]
            view.reindex()
            t.head_note = str(e)
            continue
        view.graph.node.extend(nodes)
        dims = ["head_batch", *t.shape[1:]]
        view.graph.input.append(helper.make_tensor_value_info(name_in, view.dtype(t.tensor), dims))
        view.add_initializer(name_in, np.zeros(_empty_like_target(t), view.np_dtype(t.tensor)))
        t.head_input, t.head_output = name_in, contract.head_output_name(k)
        dtype = view.dtype(st.head.logits)
        _gate(
            st, first, [(logits, t.head_output, dtype, [0, n_cls])], contract.MODE_HEAD, f"head{k}"
        )
        view.graph.output.append(
            helper.make_tensor_value_info(t.head_output, dtype, ["head_batch", n_cls or None])
        )


def add_cam_weights(st: ExportState) -> None:
    """For a GAP→Linear head, output the explained class's classifier row as [batch, C]."""
    view = st.view
    for k, t in enumerate(st.targets):
        cls = find_gap_linear(view, t.tensor, t.layout, st.head)
        if cls is None:
            continue
        b = GradBuilder(view, f"onnxcam/cam_weight_{k}", st.consts)
        if cls.rows_are_classes:  # W: [K, C]
            w = b.Gather(cls.weight, st.cls, axis=0)
        else:  # W: [C, K]
            w = b.Transpose(b.Gather(cls.weight, st.cls, axis=1), perm=[1, 0])
        if cls.alpha != 1.0:
            w = b.Mul(w, b.scalar(cls.alpha, cls.weight))
        t.cam_weight, st.classifiers[k] = contract.cam_weight_name(k), cls
        view.add_node(_identity(w, t.cam_weight))
        batch = (view.shape(st.head.logits) or ["batch"])[0]
        view.graph.output.append(_vi(t.cam_weight, view.dtype(cls.weight), [batch, t.channels]))


def write_metadata(st: ExportState, labels: list[str] | None, exporter_info: dict) -> None:
    """Record the contract in ``metadata_props`` (other existing entries are kept)."""
    classifier = None
    if st.classifiers:
        k = min(st.classifiers)
        c = st.classifiers[k]
        layout = "classes_first" if c.rows_are_classes else "channels_first"
        classifier = ClassifierSpec(c.weight, c.bias, layout, c.alpha, k)
    h = st.head
    record = Contract(
        targets=st.targets,
        input=st.spec,
        score=ScoreSpec(h.logits, h.output, h.activation, h.num_classes),
        labels=labels,
        classifier=classifier,
        exporter=exporter_info,
    )
    props = {p.key: p.value for p in st.view.model.metadata_props}
    for key in contract.ALL_META_KEYS:
        props.pop(key, None)
    props.update(record.to_metadata())
    del st.view.model.metadata_props[:]
    for key, value in props.items():
        st.view.model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def random_feeds(model: onnx.ModelProto, spec: InputSpec, batch: int, seed: int = 0) -> dict:
    """Random inputs for every real graph input (image ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else (batch if k == 0 else None)
            for k, d in enumerate(tt.shape.dim)
        ]
        if vi.name == spec.name:
            for axis, size in zip(spec.layout.spatial_axes, spec.size, strict=True):
                dims[axis] = dims[axis] or size
        if any(d is None for d in dims):
            raise ExportError(f"cannot make a test input for {vi.name!r}: shape {dims} not static")
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.normal(size=dims).astype(dt)
    return feeds


def verify_forward(
    original: bytes, exported: onnx.ModelProto, spec: InputSpec, batch: int, atol: float = 1e-5
) -> float:
    """Run old and new graphs in onnxruntime; the model's own outputs must be unchanged.

    Returns the largest absolute difference seen. Also fails if any gradient is not finite.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the class-selector default input is intended
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    old = ort.InferenceSession(original, opts, providers=providers)
    new = ort.InferenceSession(exported.SerializeToString(), opts, providers=providers)
    feeds = random_feeds(exported, spec, batch)
    names = [o.name for o in old.get_outputs()]
    ref = old.run(names, feeds)
    outs = new.run(None, feeds)
    by_name = dict(zip([o.name for o in new.get_outputs()], outs, strict=True))
    worst = 0.0
    for name, r in zip(names, ref, strict=True):
        got = by_name[name]
        if got.shape != r.shape:
            raise ExportError(f"verification failed: output {name!r} changed shape")
        if r.size and np.issubdtype(r.dtype, np.floating):
            diff = float(np.max(np.abs(got.astype(np.float64) - r)))
            scale = max(1.0, float(np.max(np.abs(r))))
            worst = max(worst, diff)
            if diff > atol * scale:
                raise ExportError(
                    f"verification failed: output {name!r} changed by {diff:.3g} after export"
                )
        elif not np.array_equal(got, r):
            raise ExportError(f"verification failed: output {name!r} changed after export")
    for k in range(len([n for n in by_name if n.startswith("onnxcam_head_logits_")])):
        # each head-only path, fed the real activations, must reproduce the explained score
        feeds_k = {
            **feeds,
            contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64),
            contract.head_input_name(k): by_name[contract.activation_name(k)],
        }
        (head,) = new.run([contract.head_output_name(k)], feeds_k)
        cls, score = by_name[contract.CLASS_OUTPUT], by_name[contract.SCORE_OUTPUT]
        diff = float(np.max(np.abs(head[np.arange(len(cls)), cls] - score)))
        if diff > atol * max(1.0, float(np.max(np.abs(score)))):
            raise ExportError(f"verification failed: head {k} changes the score by {diff:.3g}")
    for name, value in by_name.items():
        floating = np.issubdtype(value.dtype, np.floating)
        if name.startswith("onnxcam_") and floating and not np.all(np.isfinite(value)):
            raise ExportError(f"verification failed: {name!r} is not finite")
    return worst


def tensor_size_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


__all__ = [
    "ExportState",
    "LayerInfo",
    "Target",
    "add_backward",
    "add_cam_weights",
    "add_score",
    "expose_activations",
    "make_targets",
    "random_feeds",
    "verify_forward",
    "write_metadata",
]
