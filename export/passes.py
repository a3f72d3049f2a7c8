"""The export passes: each appends to the graph and never edits forward nodes.

Their order is data: ``PASSES`` in ``export/pipeline.py``, which also opens and closes the
``If`` branches the gated passes append to (``export/gating.py``). Each pass is a function of
the shared ``ExportState``; its docstring's first line is its entry in the pipeline's list.

The one forward edit allowed is switching on an optional output (MaxPool ``Indices``), which
the MaxPool VJP rule records in the node's ``doc_string`` (``verify.check_forward_nodes_kept``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.contract import (
    ClassifierSpec,
    Contract,
    GradientWindow,
    InputSpec,
    ScoreSpec,
    TargetLayer,
    TokenGrid,
)
from onnxcam.errors import ExportError

from . import reciprocam, window
from .autodiff import build_backward, spatially_constant_source
from .builder import NodeBuilder
from .detect_graph import add_detections
from .gating import (
    Branch,
    declare_optional,
    empty_shape,
    has_value,
    head_gate,
    if_else,
    if_else_many,
    optional_input,
    optional_value,
)
from .gating import declare_output as _output
from .graph import GraphView, attr
from .head import HEAD_BATCH, build_head, head_is_piecewise_linear, per_head_row
from .heatmaps import BiasLayer, fullgrad_bias, layer_facts
from .heatmaps import postprocess as postprocess_heatmaps
from .heatmaps import raw_maps as raw_heatmaps
from .heatmaps import unavailable as heatmap_unavailable
from .layers import ClassifierHead, Head, LayerInfo, find_gap_linear
from .rules import RULE_SETS

Target = TargetLayer
"""The exporter fills the contract's record pass by pass (one name for one concept)."""


@dataclass
class ExportState:
    """What the passes share while rewriting one model."""

    view: GraphView
    head: Head
    spec: InputSpec
    targets: list[Target]
    labels: list[str] | None = None
    heatmaps: list[str] = field(default_factory=list)
    heatmap_size: str = "input"
    heatmaps_all: bool = False
    """``heatmaps`` came from "all": a layer gets every heatmap it can have (no error)."""
    consts: dict = field(default_factory=dict)
    """Constants shared by every ``NodeBuilder`` of the export (deduplicated)."""
    cls: str = ""
    """The explained class tensor (``add_score``)."""
    seed: str = ""
    """The seed's value: what was fed as ``onnxcam_seed``, or the task's default (``seed_of``)."""
    seed_shape: list = field(default_factory=list)
    seed_default: Callable[[], str] | None = None
    """Appends the nodes of the task's default seed (run only when no seed is fed)."""
    seed_rows: bool = False
    """Verified: one image's backward runs with several seed rows (``ScoreSpec.seed_rows``)."""
    detect_gradients: str = "direct"
    """A detector's head-input gradients: ``direct`` (each scale's own head) or ``total``."""
    detect_rows: tuple[str, str, str] | None = None
    """A detector's detections (image, class, anchor), ``[rows, 1]`` each (``add_detections``)."""
    windows: list | None = None
    """A detector's windowed backward (``export/window.py``), when its head allows one."""
    rules: list[str] = field(default_factory=list)
    """ReLU rule sets (``contract.RULE_SETS``) for the input gradient (``add_rule_gradients``)."""
    fullgrad: list[BiasLayer] = field(default_factory=list)
    """FullGrad's biased layers (``heatmaps.bias_layers``; ``export --fullgrad``): their
    gradients are kept from the backward (``add_backward``) for ``add_fullgrad_bias``."""
    bias_gradients: dict[str, str] = field(default_factory=dict)
    """A biased layer's output z → ∂score/∂z in the explain branch (``add_backward``)."""
    reciprocam: bool = False
    """Add the ReciproCAM maps (``add_reciprocam``; ``export --reciprocam``)."""
    head_gradients: bool = False
    """Add each head's backward in mode 2 (``add_heads``; ``export --head-gradients``)."""
    forward_copy: bool = False
    """Written as a forward copy (``export/layout.py``; set by ``export_onnx`` after the
    passes)."""
    score_seeds: dict[str, str] = field(default_factory=dict)
    """Where the gradients' backward starts (``_score_seed``; ``add_backward``)."""
    pixel_class: str = ""
    """A segmenter's per-pixel argmax class (``_top_class``)."""
    single_logit: str | None = None
    """A binary head's one logit z (``add_binary_logits`` makes the two-class logits)."""
    maps: dict[int, str] = field(default_factory=dict)
    """Target index → its activations as a map (the target tensor, or a token layer's patch
    tokens laid out on their grid: ``token_map``), made by ``expose_activations``."""
    gradients: dict[int, str] = field(default_factory=dict)
    """Target index → its gradient map inside the explain branch (``add_backward``)."""
    pooled: dict[int, str] = field(default_factory=dict)
    """Target index → the [B, C, 1, 1] tensor its gradient broadcasts, when the gradient is the
    same at every position (``autodiff.spatially_constant_source``)."""
    classifiers: dict[int, ClassifierHead] = field(default_factory=dict)
    """Target index → its GAP → Linear classifier (targets that have one)."""
    branch: Branch | None = None
    """The ``If`` branch the running pass appends to (opened and closed by the pipeline)."""

    def gated(self) -> Branch:
        """The open branch of a gated pass."""
        if self.branch is None:
            raise ExportError("internal: a gated pass ran outside its If branch")
        return self.branch

    @property
    def batch(self):
        """The batch dimension of the logits (an int or a dim name)."""
        return (self.view.shape(self.head.logits) or ["batch"])[0]


def _publish(st: ExportState, src: str, dst: str, rank: int) -> None:
    """Publish forward tensor ``src`` as graph output ``dst`` (a contract name) with a no-op
    ``Reshape`` to its own shape (``[0] * rank`` copies every dimension).

    Not an ``Identity``: onnxruntime removes an Identity that feeds a graph output by renaming
    its input tensor to the output's name, and on some graphs (a tf2onnx MobileNetV2 whose Relu6
    also feeds a fused Pad) leaves another consumer reading the old name — the session then
    fails to load ("is not a graph input, initializer, or output of a previous node")."""
    shape = NodeBuilder(st.view, "onnxcam/publish", st.consts).ints([0] * rank)
    st.view.add_node(helper.make_node("Reshape", [src, shape], [dst], name=dst))


def _identity(src: str, dst: str) -> onnx.NodeProto:
    """The node that publishes an internal tensor under a contract output name."""
    return helper.make_node("Identity", [src], [dst], name=dst)


def make_targets(view: GraphView, names: Sequence[tuple[str, LayerInfo]]) -> list[Target]:
    """(user name, candidate layer) pairs → ``Target`` records with layout, shape and producer
    (the layout is the candidate's, proven by ``export/grid.py``)."""
    targets = []
    seen = set()
    for k, (user, c) in enumerate(names):
        if c.tensor in seen:
            raise ExportError(f"layer {user!r} was requested twice")
        seen.add(c.tensor)
        p = view.producer.get(c.tensor)
        producer = p.op_type if p else "input"
        targets.append(
            TargetLayer(k, user, c.tensor, c.layout, c.map_shape, producer, tokens=c.tokens)
        )
    return targets


def token_map(b: NodeBuilder, x: str, tokens: TokenGrid, channels: int) -> str:
    """``[B, P + rows·cols, C]`` tokens → their patch tokens as an NHWC map ``[B, rows, cols, C]``
    (``TokenGrid.to_map``): a Slice past the prefix and a Reshape (no copy of the batch)."""
    if tokens.prefix:
        x = b.Slice(x, b.ints([tokens.prefix]), b.ints([np.iinfo(np.int64).max]), b.ints([1]))
    return b.Reshape(x, b.ints([0, tokens.rows, tokens.cols, channels]))


def map_tokens(b: NodeBuilder, m: str, like: str, tokens: TokenGrid, channels: int) -> str:
    """The inverse for the head: a map ``[m, rows, cols, C]`` → ``[m, P + rows·cols, C]``
    tokens, the prefix tokens taken from ``like`` (the forward tokens of the images in the same
    run: image i's for its rows, ``per_head_row``)."""
    x = b.Reshape(m, b.ints([0, tokens.rows * tokens.cols, channels]))
    if not tokens.prefix:
        return x
    prefix = b.Slice(like, b.ints([0]), b.ints([tokens.prefix]), b.ints([1]))
    return b.Concat(per_head_row(b, prefix, m), x, axis=1)


# --- the passes, in pipeline order --------------------------------------------------------------
def add_mode_input(st: ExportState) -> None:
    """The ``onnxcam_mode`` input (int64 scalar, default 0: explain)."""
    default = np.array(contract.MODE_EXPLAIN, dtype=np.int64)
    optional_input(st.view, contract.MODE_INPUT, TensorProto.INT64, [], default)


def expose_activations(st: ExportState) -> None:
    """Each target tensor as output ``onnxcam_activation_k``."""
    for k, t in enumerate(st.targets):
        a = t.tensor
        if t.tokens is not None:
            b = NodeBuilder(st.view, f"onnxcam/map{k}", st.consts)
            a = token_map(b, a, t.tokens, t.channels)
        st.maps[k] = a
        _publish(st, a, t.activation, len(t.shape))
        _output(st.view, t.activation, st.view.dtype(t.tensor), t.shape)


def add_binary_logits(st: ExportState) -> None:
    """A one-logit head as two classes: logits ``[−z, z]`` (class 0: negative).

    So class selection, the score, top-k and head paths work as for any classifier; each class's
    probability is the sigmoid of its logit (p(1) = σ(z), p(0) = σ(−z) = 1 − σ(z)), and top-1
    is class 1 when p ≥ 0.5. Nothing to do for other heads.
    """
    h = st.head
    if not h.binary:
        return
    b = NodeBuilder(st.view, "onnxcam/binary", st.consts)
    two = b.Concat(b.Neg(h.logits), h.logits, axis=1)
    st.view.shapes[two] = [st.batch, 2]
    st.single_logit = h.logits
    st.head = replace(h, logits=two, num_classes=2, activation="sigmoid")


def add_score(st: ExportState) -> None:
    """The class and seed inputs, the explained class and the score Σ seed · logits.

    cls = sel if sel ≥ 0 else the task's top class (``_top_class``). The seed (contract
    ``onnxcam_seed``) weighs the logits; absent, it is the task's default (``_default_seed``:
    the one-hot of cls for a classifier, so score = logits[:, cls]). Both inputs are optional,
    so ``run(None, {image})`` explains the top class. A model that outputs probabilities also
    gets its logits as ``onnxcam_logits``.
    """
    view, logits, batch = st.view, st.head.logits, st.batch
    b = NodeBuilder(view, "onnxcam/score", st.consts)
    sel = optional_input(view, contract.CLASS_INPUT, TensorProto.INT64, [batch], np.array([-1]))
    shape = view.shape(logits)
    dtype = view.dtype(logits)
    if st.head.task == "detect":  # rows: the kept detections (``export/detect_graph.py``)
        cls, default, default_score = add_detections(st, b, sel)
        view.add_node(_identity(cls, contract.CLASS_OUTPUT))
    else:
        chosen = b.Less(sel, b.const(np.array(0, dtype=np.int64)))
        view.add_node(
            helper.make_node(
                "Where",
                [chosen, _top_class(st, b), sel],
                [contract.CLASS_OUTPUT],
                name=contract.CLASS_OUTPUT,
            )
        )
    st.cls = contract.CLASS_OUTPUT
    if st.head.task != "detect":
        default = functools.partial(_default_seed, st, b)
        default_score = functools.partial(_default_score, st, b)
    st.seed_shape = ["seed_rows", *shape[1:]]
    st.seed_default = default  # the seed's value is made where it is first read (``seed_of``)
    has = declare_optional(view, contract.SEED_INPUT, dtype, st.seed_shape, True)

    def fed_score() -> str:
        w = b.OptionalGetElement(contract.SEED_INPUT)
        return b.ReduceSum(b.Mul(w, logits), b.ints(list(range(1, len(shape)))), keepdims=0)

    score = if_else(view, has, fed_score, default_score, dtype, ["seed_rows"], "onnxcam/score")
    view.add_node(_identity(score, contract.SCORE_OUTPUT))
    if st.head.activation is not None:  # the model outputs probabilities: publish the logits
        _publish(st, logits, contract.LOGITS_OUTPUT, len(shape))
        _output(view, contract.LOGITS_OUTPUT, dtype, shape)
    rows = "rows" if st.head.task == "detect" else batch
    _output(view, contract.CLASS_OUTPUT, TensorProto.INT64, [rows])
    _output(view, contract.SCORE_OUTPUT, dtype, ["seed_rows"])


def seed_of(st: ExportState) -> str:
    """The seed's value (what was fed, or the task's default), made on first use: in the
    gradients' branch when only the backward reads it, so a forward run (mode 1) never
    builds a detector's or segmenter's dense default seed."""
    if not st.seed:
        dtype = st.view.dtype(st.head.logits)
        shape = st.seed_shape
        st.seed = optional_value(st.view, contract.SEED_INPUT, dtype, shape, st.seed_default)
    return st.seed


def _default_score(st: ExportState, b: NodeBuilder) -> str:
    """The score without a fed seed (what Σ default seed · logits gives, read directly): the
    class's logit (classify); its logits summed over its predicted region (segment)."""
    logits = st.head.logits
    if st.head.task == "segment":
        cls = b.Unsqueeze(st.cls, b.ints([1, 2, 3]))  # [B, 1, 1, 1]
        shape = b.Concat(
            b.Shape(logits, start=0, end=1), b.ints(1), b.Shape(logits, start=2), axis=0
        )
        picked = b.GatherElements(logits, b.Expand(cls, shape), axis=1)  # [B, 1, H, W]
        region = b.Cast(
            b.Equal(b.Unsqueeze(st.pixel_class, b.ints(1)), cls), to=st.view.dtype(logits)
        )
        return b.ReduceSum(b.Mul(picked, region), b.ints([1, 2, 3]), keepdims=0)
    picked = b.GatherElements(logits, b.Unsqueeze(st.cls, b.ints(1)), axis=1)
    return b.Squeeze(picked, b.ints(1))


def _top_class(st: ExportState, b: NodeBuilder) -> str:
    """The class explained by default: the top-1 class (classify), the class of the largest
    predicted region (segment: most pixels whose argmax it is)."""
    logits, task = st.head.logits, st.head.task
    if task == "segment":
        st.pixel_class = b.ArgMax(logits, axis=1, keepdims=0)  # [B, H, W]
        hit = b.Equal(b.Unsqueeze(st.pixel_class, b.ints(1)), _class_range(st, b, [1, -1, 1, 1]))
        counts = b.ReduceSum(b.Cast(hit, to=TensorProto.FLOAT), b.ints([2, 3]), keepdims=0)
        return b.ArgMax(counts, axis=1, keepdims=0)
    # a binary head's tie (z = 0, p = 0.5) goes to the positive class
    return b.ArgMax(logits, axis=1, keepdims=0, select_last_index=int(st.head.binary))


def _class_range(st: ExportState, b: NodeBuilder, shape: list[int]) -> str:
    """0 … K−1 (K: the logits' axis 1 at run time), reshaped to ``shape`` (one −1)."""
    classes = b.Range(
        b.const(np.array(0, dtype=np.int64)),
        b.Squeeze(b.Shape(st.head.logits, start=1, end=2), b.ints(0)),
        b.const(np.array(1, dtype=np.int64)),
    )
    return b.Reshape(classes, b.ints(shape))


def _default_seed(st: ExportState, b: NodeBuilder) -> str:
    """The seed when none is fed: onehot(cls) over the classes (classify); times the mask of
    the pixels predicted as cls (segment: pytorch-grad-cam's ``SemanticSegmentationTarget``
    on the predicted region). A detector's: ``detect_graph.add_detections``."""
    dtype, task = st.view.dtype(st.head.logits), st.head.task
    if task == "classify":
        return b.Cast(
            b.Equal(b.Unsqueeze(st.cls, b.ints(1)), _class_range(st, b, [1, -1])), to=dtype
        )
    cls = b.Unsqueeze(st.cls, b.ints([1, 2, 3]))  # [B, 1, 1, 1]
    onehot = b.Cast(b.Equal(cls, _class_range(st, b, [1, -1, 1, 1])), to=dtype)  # [B, K, 1, 1]
    region = b.Equal(b.Unsqueeze(st.pixel_class, b.ints(1)), cls)  # [B, 1, H, W]
    return b.Mul(onehot, b.Cast(region, to=dtype))


def add_topk(st: ExportState) -> None:
    """The top-K classes with their logits and probabilities (K = min(5, classes)).

    The runtime's predictions without a pass over the logits on the host (numpy right after
    the network costs ~0.25 ms per batch: a few % of a 5-ms model). Skipped when the class
    count is dynamic: the runtime then ranks the logits itself.
    """
    view, logits = st.view, st.head.logits
    shape = view.shape(logits)
    if not shape or len(shape) != 2 or not isinstance(shape[1], int):
        return
    b = NodeBuilder(view, "onnxcam/topk", st.consts)
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
        _output(view, name, t, [st.batch, k])


def add_cam_weights(st: ExportState) -> None:
    """The explained score's CAM weights ``onnxcam_cam_weight_k`` (GAP → Linear).

    The classifier rows weighted by the seed, as [rows, C]: the class's row W[cls] for the
    default seed (a ``Gather``), seedᵀ·W for a fed one; a binary head's one row w times
    (seed₁ − seed₀), the gradient of the score with respect to z."""
    view = st.view
    head = replace(st.head, logits=st.single_logit) if st.single_logit else st.head
    for k, t in enumerate(st.targets):
        cls = find_gap_linear(view, t.tensor, t.layout, head, t.tokens)
        if cls is None:
            continue
        b = NodeBuilder(view, f"onnxcam/cam_weight_{k}", st.consts)
        if st.single_logit:  # W: one row (or column) w; the score is (seed₁ − seed₀)·z
            zero = b.const(np.array(0, dtype=np.int64))
            w = b.Gather(cls.weight, zero, axis=0 if cls.rows_are_classes else 1)
            w = b.Unsqueeze(w, b.ints(0))  # [1, C]
            s0, s1 = b.Split(seed_of(st), b.ints([1, 1]), axis=1, outputs=2)
            w = b.Mul(w, b.Cast(b.Sub(s1, s0), to=view.dtype(cls.weight)))
            if cls.alpha != 1.0:
                w = b.Mul(w, b.scalar(cls.alpha, cls.weight))
        else:
            w = _weighted_rows(st, b, cls.weight, cls.rows_are_classes, cls.alpha)
        t.cam_weight, st.classifiers[k] = contract.cam_weight_name(k), cls
        view.add_node(_identity(w, t.cam_weight))
        _output(view, t.cam_weight, view.dtype(cls.weight), ["seed_rows", t.channels])


def add_backward(st: ExportState) -> None:
    """The gradients dScore/dA_k as outputs ``onnxcam_gradient_k``."""
    view, branch = st.view, st.gated()
    wrt = [t.tensor for t in st.targets]
    rows = st.head.task == "detect"  # one image, a row per detection
    direct = rows and st.detect_gradients == "direct"
    spec = st.head.detect
    st.windows = (
        window.plan(view, st.head.logits, wrt, spec.num_classes)
        if direct and not spec.anchors_first
        else None
    )
    if st.windows:  # the graph's own detections: each from its window (``export/window.py``)

        def fed() -> list[str]:
            seed = NodeBuilder(view, "onnxcam/seed", st.consts).OptionalGetElement(
                contract.SEED_INPUT
            )
            view.shapes[seed] = tuple(st.seed_shape)
            return window.dense_gradients(view, st.windows, st.head.logits, seed, st.consts)

        found = if_else_many(
            view,
            has_value(contract.SEED_INPUT),
            fed,
            lambda: window.gradients(view, st.windows, st.detect_rows, st.consts),
            [view.dtype(x) for x in wrt],
            [["rows", *view.shape(x)[1:]] for x in wrt],
            "onnxcam/backward",
        )
        grads = dict(zip(wrt, found, strict=True))
        for k, (t, w) in enumerate(zip(st.targets, st.windows, strict=True)):
            t.window = GradientWindow(w.anchor, w.radius, contract.gradient_window_name(k))
    else:
        st.score_seeds = _score_seed(st, wrt)
        keep = [layer.output for layer in st.fullgrad]  # FullGrad's ∂score/∂z, on the way
        grads = build_backward(
            view, st.score_seeds, wrt, st.consts, seed_rows=rows, direct=direct, keep=keep
        )
        st.bias_gradients = {z: grads[z] for z in keep if z in grads}
    for k, t in enumerate(st.targets):
        g = grads[t.tensor]
        if t.tokens is not None:
            b = NodeBuilder(view, f"onnxcam/map{k}", st.consts)
            g = token_map(b, g, t.tokens, t.channels)
        st.gradients[k] = g
        pooled = spatially_constant_source(view, g, t.layout.spatial_axes)
        if pooled is not None:
            st.pooled[k], t.gradient_pooled = pooled, True
        shape = ["rows", *t.shape[1:]] if rows else t.shape
        branch.output(g, t.gradient, view.dtype(t.tensor), shape)


def add_rule_gradients(st: ExportState) -> None:
    """The input gradient under another ReLU rule.

    Output ``onnxcam_gradient_<rule>_k``: one more backward per rule set
    (``contract.RULE_SETS``: Guided Backpropagation, Deconvnet), from the same seed to the
    model input, with ``Relu``'s rule replaced (``rules.RULE_SETS``); every other op keeps
    its exact rule."""
    pixel = next((t for t in st.targets if t.pixels), None)
    if pixel is None or not st.rules:
        return
    view, branch = st.view, st.gated()
    for rule in st.rules:  # from the gradients' own seed (``add_backward``, same branch)
        g = build_backward(view, st.score_seeds, [pixel.tensor], st.consts, rules=RULE_SETS[rule])
        name = contract.RULE_GRADIENT_OUTPUT.format(rule=rule, k=pixel.index)
        pixel.rules[rule] = name
        branch.output(g[pixel.tensor], name, view.dtype(pixel.tensor), pixel.shape)


def add_fullgrad_bias(st: ExportState) -> None:
    """FullGrad's input bias map ``onnxcam_fullgrad_bias_k``.

    Σ over the biased layers z (``st.fullgrad``: Conv with a bias, BatchNormalization) of
    resize(Σ_c ψ(b_c · ∂score/∂z_c)), ψ = |·| then min-max per image and channel, resized
    bilinearly to the input (``heatmaps.fullgrad_bias``): pytorch-grad-cam's ``FullGrad`` bias
    terms. The gradients ∂score/∂z come from the input gradient's own backward (``keep``):
    only the maps are added. The runtime adds the input term ψ(x ⊙ ∂score/∂x)
    (``attribution.fullgrad``)."""
    pixel = next((t for t in st.targets if t.pixels), None)
    if pixel is None or not st.fullgrad:
        return
    view, branch = st.view, st.gated()
    size = pixel.spatial
    if not all(isinstance(d, int) for d in size):
        raise ExportError("FullGrad's bias map needs a fixed input size (--size H W)")
    layers = [layer for layer in st.fullgrad if layer.output in st.bias_gradients]
    if not layers:
        raise ExportError("internal: no biased layer received a gradient (FullGrad)")
    b = NodeBuilder(view, "onnxcam/fullgrad", st.consts)
    found = fullgrad_bias(b, layers, st.bias_gradients, size)
    pixel.fullgrad, pixel.fullgrad_layers = contract.fullgrad_bias_name(pixel.index), len(layers)
    dtype = view.dtype(layers[0].output)
    branch.output(found, pixel.fullgrad, dtype, [pixel.shape[0], *size])


def add_windows(st: ExportState) -> None:
    """Each detection's gradient window: ``onnxcam_gradient_window_k``.

    The graph's own detections differentiated as in mode 0, without placing each window in a
    whole map (``export/window.py``): mode 3 skips the ~30 MB of zeros a whole map per row
    and scale writes for yolo11n's ten detections at 640 (~5 ms of a ~75 ms run)."""
    if not st.windows:
        return
    branch = st.gated()
    found = window.gradients(st.view, st.windows, st.detect_rows, st.consts, placed=False)
    for t, g in zip(st.targets, found, strict=True):
        size = t.window.size
        branch.output(g, t.window.output, st.view.dtype(t.tensor), ["rows", t.channels, size, size])


def add_reciprocam(st: ExportState) -> None:
    """ReciproCAM's map per target: ``onnxcam_reciprocam_k``.

    M[b, j] = z_c(head(A_b ⊙ e_j)): the explained class's logit of the head run on the h·w
    copies of the activations that keep one position each, all in one batch (arXiv 2209.14074;
    ``export/reciprocam.py``, with its exact shortcut past a global average pool)."""
    if not st.reciprocam:
        return
    if st.head.task != "classify":
        raise ExportError(f"ReciproCAM explains classifiers; this model is a {st.head.task} model")
    view, branch = st.view, st.gated()
    for k, t in enumerate(st.targets):
        if t.pixels:  # the model input: its "head" is the whole model
            continue
        m, t.reciprocam_gap = reciprocam.build(
            view, st.consts, t, st.maps[k], st.head.logits, st.cls
        )
        t.reciprocam = contract.reciprocam_name(k)
        branch.output(m, t.reciprocam, view.dtype(st.head.logits), [t.shape[0], *t.spatial])


def _weighted_rows(
    st: ExportState, b: NodeBuilder, weight: str, rows_are_classes: bool, alpha: float
) -> str:
    """α · seedᵀ·W: the classifier's class rows weighted by the seed, [rows, features].

    For the default seed (a one-hot) that is the explained class's row, gathered (a
    ``Gather`` of one row instead of a product that reads the whole matrix: 5 MB for a
    1280 → 1000 head, ~4% of EfficientNet-Lite0's batch-1 latency); a fed seed takes the
    product. Only the taken branch of the ``If`` runs."""
    view = st.view
    seed = seed_of(st)  # made here, outside the If's branches (later passes read it too)

    def fed() -> str:  # Gemm(seed, W): W is [K, C] (rows are classes) or [C, K]
        return b.Gemm(seed, weight, alpha=float(alpha), transB=0 if rows_are_classes else 1)

    def default() -> str:
        if rows_are_classes:
            row = b.Gather(weight, st.cls, axis=0)
        else:
            row = b.Transpose(b.Gather(weight, st.cls, axis=1), perm=[1, 0])
        return b.Mul(row, b.scalar(alpha, weight)) if alpha != 1.0 else row

    features = view.shape(weight)[1 if rows_are_classes else 0]
    return if_else(
        view,
        has_value(contract.SEED_INPUT),
        fed,
        default,
        view.dtype(weight),
        ["seed_rows", features],
        "onnxcam/seed_rows",
    )


def _score_seed(st: ExportState, wrt: list[str]) -> dict[str, str]:
    """Where the backward pass starts: ∂score/∂logits = the seed, or — when the logits come
    straight from a ``Gemm`` with constant weights (a Linear classifier) — one step further
    down, at the Gemm's input, whose gradient is seedᵀ·α·W (``_weighted_rows``: the class's
    row for the default seed). Exactly the same gradient."""
    view, logits = st.view, st.head.logits
    gemm = view.producer.get(logits)
    if (
        gemm is None
        or gemm.op_type != "Gemm"
        or attr(gemm, "transA", 0)
        or not view.is_weight(gemm.input[1])
        or (len(gemm.input) > 2 and gemm.input[2] and not view.is_weight(gemm.input[2]))
        or any(x == logits for x in wrt)
    ):
        return {logits: seed_of(st)}
    b = NodeBuilder(view, "onnxcam/score_seed", st.consts)
    rows = _weighted_rows(
        st, b, gemm.input[1], bool(attr(gemm, "transB", 0)), attr(gemm, "alpha", 1.0)
    )
    view.shapes[rows] = view.shape(gemm.input[0])
    return {gemm.input[0]: rows}


def add_heatmaps(st: ExportState) -> None:
    """The requested CAM maps as ``onnxcam_heatmap_<method>_k``.

    Built from the activations and the gradients in the gradients' branch (``export/heatmaps.py``):
    [batch, H, W] at the model input's resolution, or at the layer's (``heatmap_size``).
    """
    view, branch = st.view, st.gated()
    size = None if st.heatmap_size == "feature" else (st.spec.height, st.spec.width)
    if st.heatmaps and size is not None and None in size:
        raise ExportError("in-graph heatmaps at input resolution need a fixed input size (--size)")
    for k, t in enumerate(st.targets):
        if t.pixels:  # the input: pixel-space maps are the runtime's (``methods.PIXEL``)
            continue
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
        b = NodeBuilder(view, f"onnxcam/heatmap{k}", st.consts)
        A, G = st.maps[k], st.gradients[k]
        if t.layout != contract.NCHW:
            perm = list(t.layout.to_nchw_perm)
            A, G = b.Transpose(A, perm=perm), b.Transpose(G, perm=perm)
        stacked, rows = raw_heatmaps(b, A, G, t.cam_weight, methods, facts)
        finals = postprocess_heatmaps(b, stacked, rows, A, t.spatial, size)
        rows = "rows" if st.head.task == "detect" else t.shape[0]  # a detector: per detection
        dims = [rows, *(size or t.spatial)]
        for m, final in zip(methods, finals, strict=True):
            t.heatmaps[m], t.heatmap_size = contract.heatmap_name(m, k), st.heatmap_size
            branch.output(final, t.heatmaps[m], view.dtype(t.tensor), dims)


def add_heads(st: ExportState) -> None:
    """The head alone per target: ``onnxcam_head_input_k`` → ``onnxcam_head_logits_k``.

    Each behind its own ``If(mode == 2)`` (see ``export/head.py``). A target that is not a cut
    of the graph gets no head; its metadata says why.
    """
    if st.head.task != "classify":  # perturbation methods score classes, not regions/boxes
        for t in st.targets:
            t.head_note = f"a {st.head.task} model's layers have no head-only path"
        return
    view = st.view
    n_cls = st.head.num_classes or 0
    dtype = view.dtype(st.head.logits)
    for k, t in enumerate(st.targets):
        if t.pixels:  # the model input: its "head" is the whole model (note set on creation)
            continue
        name_in = contract.head_input_name(k)
        first = len(view.graph.node)
        value = _head_input(st, k, t)
        branch = Branch(view, head_gate(k, value), st.consts)
        start = value
        if t.tokens is not None:  # the head reads tokens: the map's, after the image's prefix
            b = NodeBuilder(view, f"onnxcam/head{k}", st.consts)
            start = map_tokens(b, value, t.tensor, t.tokens, t.channels)
        try:
            nodes, logits = build_head(view, t.tensor, st.head.logits, k, start, st.consts)
        except ExportError as e:
            branch.discard()
            del view.graph.node[first:]
            view.graph.input.pop()
            view.reindex()
            t.head_note = str(e)
            continue
        t.head_linear = head_is_piecewise_linear(view, t.tensor, st.head.logits)
        for node in nodes:
            view.add_node(node)
        t.head_input, t.head_output = name_in, contract.head_output_name(k)
        branch.output(logits, t.head_output, dtype, [HEAD_BATCH, n_cls or None], [0, n_cls])
        if st.head_gradients:
            g = _head_gradient(st, k, t, value, start, logits)
            t.head_gradient = contract.head_gradient_name(k)
            branch.output(g, t.head_gradient, view.dtype(t.tensor), [HEAD_BATCH, *t.shape[1:]])
        branch.close()


def _head_gradient(st: ExportState, k: int, t: Target, value: str, start: str, logits: str) -> str:
    """∂ Σ_r seed_r · head_logits_r / ∂ head input (the head copy's backward, in its branch).

    seed_r: the explained class's one-hot (or the fed ``onnxcam_seed``) of the image row r
    belongs to (``per_head_row``). A token layer's gradient is taken at the rebuilt tokens
    ``[m, P + N, C]`` and laid out as the map (``token_map``), as the main backward's."""
    view = st.view
    b = NodeBuilder(view, f"onnxcam/head{k}_seed", st.consts)
    seed = if_else(
        view,
        has_value(contract.SEED_INPUT),
        lambda: b.OptionalGetElement(contract.SEED_INPUT),
        lambda: _default_seed(st, b),
        view.dtype(st.head.logits),
        st.seed_shape,
        f"onnxcam/head{k}_seed",
    )
    rows = per_head_row(b, seed, value)
    view.shapes[rows] = (HEAD_BATCH, *st.seed_shape[1:])
    view.shapes[start] = (HEAD_BATCH, *view.shape(t.tensor)[1:])
    view.dtypes[start] = view.dtype(t.tensor)
    g = build_backward(view, {logits: rows}, [start], st.consts)[start]
    if t.tokens is not None:
        g = token_map(NodeBuilder(view, f"onnxcam/head{k}_map", st.consts), g, t.tokens, t.channels)
    return g


def _head_input(st: ExportState, k: int, t: Target) -> str:
    """Target k's optional head input (declared with the map's rank and symbolic sizes: a
    client that must feed every input, onnxruntime-node, feeds an empty [0, 1, 1, 1])."""
    view = st.view
    empty = np.zeros(empty_shape(t.shape), view.np_dtype(t.tensor))
    dims = ["head_batch", *(f"head{k}_dim{i}" for i in range(1, len(t.shape)))]
    return optional_input(view, contract.head_input_name(k), view.dtype(t.tensor), dims, empty)


def _static(shape) -> tuple | None:
    """The sizes past axis 0 when all are known."""
    rest = tuple(shape or ())[1:]
    return rest if shape and all(isinstance(d, int) for d in rest) else None


# --- after the passes -------------------------------------------------------------------------
def write_metadata(st: ExportState, exporter: dict) -> None:
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
        score=ScoreSpec(
            h.logits,
            h.output,
            h.activation,
            h.num_classes,
            binary=h.binary,
            task=h.task,
            detect=h.detect,
            seed_rows=st.seed_rows,
            gradients=st.detect_gradients if h.task == "detect" else "total",
            shape=_static(st.view.shape(h.logits)),
        ),
        labels=st.labels,
        classifier=classifier,
        exporter=exporter,
    )
    props = {p.key: p.value for p in st.view.model.metadata_props}
    for key in contract.ALL_META_KEYS:
        props.pop(key, None)
    props.update(record.to_metadata())
    del st.view.model.metadata_props[:]
    for key, value in props.items():
        st.view.model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


__all__ = [
    "ExportState",
    "LayerInfo",
    "Target",
    "add_backward",
    "add_binary_logits",
    "add_cam_weights",
    "add_fullgrad_bias",
    "add_heads",
    "add_heatmaps",
    "add_mode_input",
    "add_reciprocam",
    "add_score",
    "add_topk",
    "expose_activations",
    "make_targets",
    "write_metadata",
]
