"""``export_onnx``: the general front end (any ``.onnx`` classifier → explainable graph)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import version_converter

from onnxcam import __version__, contract
from onnxcam.contract import InputSpec, Layout, TargetLayer
from onnxcam.errors import ExportError, LayerNotFoundError, ModelLoadError

from . import preprocessing, storage, tasks
from .gating import EXPLAIN
from .graph import GraphView
from .heatmaps import BiasLayer, bias_layers
from .heatmaps import parse_methods as parse_heatmaps
from .layers import (
    Head,
    LayerInfo,
    candidate_layers,
    default_layer,
    find_head,
    image_input,
    input_layout,
    resolve_layer,
)
from .layout import localize_all, split_forward, subgraphs
from .passes import ExportState, make_targets, write_metadata
from .pipeline import run_passes
from .verify import (
    check_forward_nodes_kept,
    check_model,
    forward_nodes,
    random_feeds,
    seed_rows_hold,
    tolerance,
    verify_batch,
    verify_forward,
    windows_hold,
)

MIN_OPSET = 17

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


@dataclass
class ExportResult:
    """What ``export_onnx`` / ``export_torch`` produced."""

    model: onnx.ModelProto
    path: Path | None
    targets: list[TargetLayer]
    input: InputSpec
    head: Head
    seconds: float
    max_output_diff: float
    """Largest change of the model's own outputs seen by the verification run (should be 0)."""


def load_model(src: ModelSource) -> onnx.ModelProto:
    """Load an ONNX model from a path, bytes or a proto; errors become ``ModelLoadError``."""
    if isinstance(src, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(src)
        return m
    try:
        if isinstance(src, bytes):
            m = onnx.load_from_string(src)
        else:
            path = Path(src)
            if not path.is_file():
                raise ModelLoadError(f"{path}: no such file")
            m = onnx.load(str(path))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"{src if not isinstance(src, bytes) else 'model'}: not a readable ONNX "
            f"model ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if not m.graph.node:
        raise ModelLoadError(
            f"{src if not isinstance(src, bytes) else 'model'}: not an ONNX model (no graph nodes)"
        )
    return m


def _label(src: ModelSource) -> str:
    return "model" if isinstance(src, bytes) else str(src)


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or {index: name})."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ExportError(f"cannot read labels file {p}: {e.strerror}") from None
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data, key=lambda k: int(k))]
        return [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _normalize_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return model, opset
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        raise ExportError(
            f"the model uses opset {opset}; converting it to opset {MIN_OPSET} failed: {e}"
        ) from None
    return converted, opset


def _fix_size(model: onnx.ModelProto, name: str, layout: Layout, size: Sequence[int]) -> None:
    vi = next(i for i in model.graph.input if i.name == name)
    dims = vi.type.tensor_type.shape.dim
    axes = layout.spatial_axes
    for axis, want in zip(axes, size, strict=True):
        d = dims[axis]
        if d.HasField("dim_value") and d.dim_value != want:
            raise ExportError(
                f"the model input {name!r} is fixed at {dims[axes[0]].dim_value}x"
                f"{dims[axes[1]].dim_value}; --size {size[0]} {size[1]} does not match"
            )
        d.Clear()
        d.dim_value = int(want)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_path(src: ModelSource, output: str | os.PathLike | None) -> Path | None:
    """Refuse, before any work, to overwrite the input or to write where we cannot."""
    if output is None:
        return None
    out = Path(output)
    if isinstance(src, (str, os.PathLike)) and _same_file(Path(src), out):
        raise ExportError(f"refusing to overwrite the input model {out}; choose another -o path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"output directory {parent} does not exist")
    try:  # a real write probe: os.access() says yes to root even on read-only mounts
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".onnxcam-probe-"):
            pass
    except OSError as e:
        raise ExportError(f"output directory {parent} is not writable ({e.strerror})") from None
    return out


def list_layers(
    model: ModelSource, output: str | None = None, task: str | None = None
) -> list[LayerInfo]:
    """Candidate target layers of a model, the default marked (``LayerInfo.default``)."""
    m, _ = _normalize_opset(load_model(model))
    view = GraphView(m)
    head = find_head(view, output, task)
    found = candidate_layers(view, head)
    if head.task != "classify":
        chosen = {c.tensor for _, c in _task_defaults(view, head, found)}
        for c in found:
            c.default = c.tensor in chosen
    return found


def export_onnx(
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    layers: Sequence[str] | None = None,
    size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    color: str | None = None,
    preset: str | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    model_output: str | None = None,
    task: str | None = None,
    detect_format: str | None = None,
    detect_gradients: str = "direct",
    verify: bool = True,
    heatmaps: str | Sequence[str] | None = None,
    heatmap_size: str = "input",
    layer_names: Sequence[str] | None = None,
    layer_notes: Sequence[str | None] | None = None,
    drop_outputs: Sequence[str] = (),
    input_gradient: bool = False,
    rules: str | Sequence[str] | None = None,
    fullgrad: bool = False,
    reciprocam: bool = False,
    head_gradients: bool = False,
    forward_copy: bool | None = None,
) -> ExportResult:
    """Rewrite an ONNX classifier, segmenter or detector into an explainable graph (contract v3).

    ``layers`` are ONNX tensor or node names of feature maps on the image grid (default: the
    last one before the head, or an ``ExportError`` listing candidates when none convinces).
    ``heatmaps`` ('gradcam,layercam' or 'all') adds finished maps as graph outputs, at the
    input resolution or, with ``heatmap_size="feature"``, at the layer's. ``size`` fixes a
    dynamic input size; ``preset`` (``contract.PRESETS``: torch, caffe, tf, unit, raw) and
    ``mean``/``std``/``scale``/``color`` (which override it) describe the preprocessing the
    runtime must apply; given none, it comes from the graph (``export/preprocessing.py``: a
    uint8 input or an in-graph division by 255 takes raw pixels; the torch preset otherwise).
    ``output`` is written atomically and never equals the input. Front ends may pass
    ``layer_names``/``layer_notes`` (how targets are named and annotated in the metadata) and
    ``drop_outputs`` (helper outputs removed after verification). ``input_gradient`` adds the
    model input as a target (the full backward, for the pixel-space methods: saliency,
    Integrated Gradients, SmoothGrad …); ``rules`` ('guided', 'deconvnet': ``contract.RULE_SETS``)
    adds its gradient under those ReLU rules too (Guided Backpropagation, Deconvnet);
    ``fullgrad`` adds FullGrad's bias map (``onnxcam_fullgrad_bias_k``, from the same backward;
    implies ``input_gradient``). ``reciprocam`` adds ReciproCAM's map per target
    (``onnxcam_reciprocam_k``, computed in mode 4: ``export/reciprocam.py``).
    ``head_gradients`` adds each head's backward in mode 2 (``onnxcam_head_gradient_k``: the
    gradient of the head's score with respect to ``onnxcam_head_input_k``, for ShapleyCAM).
    ``forward_copy`` writes forward-only and explaining runs as two graphs, each with its own
    copy of the weights (``export/layout.py``: the file grows by the weights once more;
    forward-only runs cost the plain model's time, and an input gradient's backward keeps
    onnxruntime's blocked layout). Default (None): on when the export has a pixel target
    (``input_gradient``, ``rules``, ``fullgrad``), whose backward reads every activation.

    Steps: load and upgrade → ``build_state`` → ``pipeline.PASSES`` → forward nodes kept →
    forward copy (``layout.split_forward``) → branch weights → metadata → ``onnx.checker`` →
    ``verify_forward`` → write.
    """
    t0 = time.perf_counter()
    out_path = check_output_path(model, output)
    m, source = _load_for_export(model)
    st = build_state(
        m,
        layers=layers,
        size=size,
        mean=mean,
        std=std,
        scale=scale,
        color=color,
        preset=preset,
        labels=labels,
        model_output=model_output,
        task=task,
        detect_format=detect_format,
        detect_gradients=detect_gradients,
        heatmaps=heatmaps,
        heatmap_size=heatmap_size,
        layer_names=layer_names,
        layer_notes=layer_notes,
        input_gradient=input_gradient,
        rules=rules,
        fullgrad=fullgrad,
    )
    st.reciprocam = reciprocam
    st.head_gradients = head_gradients
    forward = forward_nodes(m)
    run_passes(st)
    _share_duplicate_initializers(m)
    check_forward_nodes_kept(forward, m)
    if forward_copy is None:
        forward_copy = any(t.pixels for t in st.targets)
    if forward_copy:
        split_forward(m, f"onnxcam_{EXPLAIN.label}", _backward_shape(st.view, m))
    _localize_weights(m)  # (a constant two branches read is copied into each: then unused)
    if forward_copy:
        localize_all(m)
    _drop_unused_constants(m, weights=forward_copy)
    st.forward_copy = forward_copy
    write_metadata(st, _exporter_info(st, source.opset, time.perf_counter() - t0))
    try:
        with storage.model_source(m) as new:
            check_model(new)
            atol = tolerance(st.view.dtype(t.tensor) for t in st.targets)
            diff = (
                verify_forward(source.original, m, st.spec, atol=atol, new_source=new)
                if verify
                else 0.0
            )
            if verify and st.reciprocam:
                _verify_reciprocam(m, new, st)
            if st.head.task == "detect":  # one run per image needs several rows per image
                rows = st.view.shape(st.head.logits)[1:]
                st.seed_rows = seed_rows_hold(m, new, st.spec, len(st.targets), rows)
                if not st.seed_rows:
                    raise ExportError(
                        "this detector's backward does not keep the rows of several detections "
                        "of one image apart (checked numerically); report the model"
                    )
                if st.windows:  # the windowed backward = the full one, checked numerically
                    off = windows_hold(m, new, st.spec, len(st.targets), rows, st.head.num_classes)
                    if not off <= 1e-4:
                        raise ExportError(
                            f"internal: this detector's windowed gradients differ from the full "
                            f"backward by {off:.3g} (relative); report the model, and export "
                            "with --detect-gradients total meanwhile"
                        )
                write_metadata(st, _exporter_info(st, source.opset, time.perf_counter() - t0))
    finally:
        if source.scratch is not None:
            shutil.rmtree(source.scratch, ignore_errors=True)
    _drop_outputs(m, drop_outputs)
    if out_path is not None:
        storage.save(m, out_path, source.external or storage.is_large(m))
    return ExportResult(m, out_path, st.targets, st.spec, st.head, time.perf_counter() - t0, diff)


def _verify_reciprocam(m: onnx.ModelProto, new: bytes | str, st: ExportState) -> None:
    """One mode-4 run (``export --reciprocam``): every ReciproCAM map has its shape
    [batch, h, w] and is finite (the export's forward check runs mode 0, which skips them)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(new, opts, providers=["CPUExecutionProvider"])
    batch = verify_batch(m, st.spec)
    feeds = random_feeds(m, st.spec, batch)
    feeds[contract.MODE_INPUT] = np.array(contract.MODE_RECIPROCAM, dtype=np.int64)
    found = [t for t in st.targets if t.reciprocam]
    maps = session.run([t.reciprocam for t in found], feeds)
    for t, got in zip(found, maps, strict=True):
        if got.shape != (batch, *t.spatial) or not np.isfinite(got).all():
            raise ExportError(
                f"verification failed: the ReciproCAM map of layer {t.name!r} has shape "
                f"{got.shape} or is not finite"
            )


def _all_nodes(graph: onnx.GraphProto, inside: bool = False):
    """Every node of ``graph`` and of its subgraphs (If branches), with whether it is inside
    a subgraph."""
    for node in graph.node:
        yield node, inside
        for g in subgraphs(node):
            yield from _all_nodes(g, True)


def _drop_unused_constants(m: onnx.ModelProto, weights: bool = False) -> None:
    """Remove onnxcam's own constants that no node reads (a discarded head branch leaves some;
    onnxruntime warns about each unused initializer when it loads the graph); ``weights``:
    the model's own too (the forward copy leaves the main graph's originals unread once each
    branch holds its copy)."""
    used: set[str] = {i.name for i in m.graph.input}
    for node, _ in _all_nodes(m.graph):
        used.update(node.input)
    keep = [
        t
        for t in m.graph.initializer
        if t.name in used or not (weights or t.name.startswith("onnxcam/"))
    ]
    if len(keep) != len(m.graph.initializer):
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)


def _share_duplicate_initializers(m: onnx.ModelProto) -> None:
    """Inside the ``If`` branches, read weights by the name onnxruntime keeps for them: the
    first of identical initializers (same type, shape and bytes — LayerNorm's ones and zeros
    in a fresh model), and an initializer itself rather than an ``Identity`` of it (torch's
    exporter writes shared weights that way). onnxruntime merges duplicates and removes such
    Identity nodes at load time, and warns for every outer-scope name it cannot rename inside a
    subgraph. The forward nodes keep their own names."""
    first: dict[tuple, str] = {}
    canonical: dict[str, str] = {}
    inputs = {i.name for i in m.graph.input}  # an input's default can be overridden: never shared
    for t in m.graph.initializer:
        if t.name in inputs:
            continue
        if t.HasField("raw_data"):
            key = (t.data_type, tuple(t.dims), hashlib.sha1(t.raw_data).digest())
            canonical[t.name] = first.setdefault(key, t.name)
        else:
            canonical[t.name] = t.name
    for node in m.graph.node:  # in topological order: chains of Identity resolve in one pass
        if node.op_type == "Identity" and node.input[0] in canonical:
            canonical[node.output[0]] = canonical[node.input[0]]

    for node, inside in _all_nodes(m.graph):
        if inside:
            for k, i in enumerate(node.input):
                if canonical.get(i, i) != i:
                    node.input[k] = canonical[i]


WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,)}
"""Op → the inputs onnxruntime prepacks when they are constants of the graph the node is in."""


def _localize_weights(m: onnx.ModelProto) -> None:
    """Give the ``If`` branches their own copies of the weights their convolutions read.

    onnxruntime treats an initializer of the main graph as an ordinary outer-scope value inside
    a subgraph: a convolution there gets no prepacked weights and no NCHWc layout. Measured: a
    672-channel depthwise 5×5 convolution at 14×14 takes 0.12 ms in the main graph and 1.27 ms
    inside an ``If`` reading the same initializer — 0.12 ms again with the initializer in the
    branch. So an initializer read only by one branch's convolutions (the flipped kernels of a
    backward) moves into that branch, and one that the forward also reads (a strided
    convolution's kernel, read again by its ``ConvTranspose`` adjoint) is copied in."""
    main = {t.name: t for t in m.graph.initializer}
    users: dict[str, set[int]] = {}  # initializer → the graphs (by id) that read it
    graphs: dict[int, onnx.GraphProto] = {id(m.graph): m.graph}

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            for i in node.input:
                if i in main:
                    users.setdefault(i, set()).add(id(g))
            for sub in subgraphs(node):
                graphs[id(sub)] = sub
                walk(sub)

    walk(m.graph)
    inputs = {i.name for i in m.graph.input}
    moved: set[str] = set()
    for gid, g in graphs.items():
        if gid == id(m.graph):
            continue
        local: dict[str, str] = {}
        for node in g.node:
            for k in WEIGHT_INPUTS.get(node.op_type, ()):
                name = node.input[k] if k < len(node.input) else ""
                if name not in main or name in inputs:
                    continue
                if users[name] == {gid}:  # this branch's alone: moved
                    if name not in moved:
                        g.initializer.append(main[name])
                        moved.add(name)
                    continue
                if name not in local:  # shared with the forward or another branch: copied
                    copy = onnx.TensorProto()
                    copy.CopyFrom(main[name])
                    copy.name = local[name] = f"{name}/in/{g.name}"
                    g.initializer.append(copy)
                node.input[k] = local[name]
    if moved:
        keep = [t for t in m.graph.initializer if t.name not in moved]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)


def build_state(
    m: onnx.ModelProto,
    *,
    layers: Sequence[str] | None = None,
    size: Sequence[int] | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    model_output: str | None = None,
    task: str | None = None,
    detect_format: str | None = None,
    detect_gradients: str = "direct",
    heatmaps: str | Sequence[str] | None = None,
    heatmap_size: str = "input",
    layer_names: Sequence[str] | None = None,
    layer_notes: Sequence[str | None] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    color: str | None = None,
    preset: str | None = None,
    input_gradient: bool = False,
    rules: str | Sequence[str] | None = None,
    fullgrad: bool = False,
) -> ExportState:
    """What the passes start from, for a model at opset ≥ 17: the image input (``size``
    fixed), its spec, the head, the labels and the target layers (the arguments are
    ``export_onnx``'s)."""
    _refuse_qoperator(m)
    # with --size the first view only finds the image input: its declared types suffice
    view = GraphView(m, analyse=size is None)
    image = image_input(view)
    layout = input_layout(view, image)
    if size is not None:
        _fix_size(m, image, layout, size)
        view = GraphView(m)
    label_list = (
        load_labels(labels) if isinstance(labels, (str, os.PathLike)) else _list_or_none(labels)
    )
    n_labels = None if label_list is None else len(label_list)
    head = find_head(view, model_output, task, detect_format, n_labels)
    if label_list is not None and head.binary:
        if len(label_list) == 1:  # the positive class's name
            label_list = [f"not {label_list[0]}", label_list[0]]
        if len(label_list) != 2:
            raise ExportError(
                f"{len(label_list)} labels given for a single-logit (binary) head: give two "
                "(negative, positive) or the positive class's name"
            )
    elif label_list is not None and head.num_classes and len(label_list) != head.num_classes:
        raise ExportError(f"{len(label_list)} labels given for {head.num_classes} classes")
    names = _target_names(view, head, layers, layer_names)
    given = {"color": color, "mean": mean, "std": std, "scale": scale}
    dtype, fields = preprocessing.resolve(view, image, preset, given)
    spec = _input_spec(view, image, layout, dtype, **fields)
    _check_spec(spec)
    st = ExportState(view, head, spec, make_targets(view, names), labels=label_list)
    if detect_gradients not in ("direct", "total"):
        raise ExportError("detect_gradients must be 'direct' or 'total'")
    st.detect_gradients = detect_gradients
    st.heatmaps = parse_heatmaps(heatmaps)
    st.heatmaps_all = isinstance(heatmaps, str) and "all" in heatmaps.lower().split(",")
    if heatmap_size not in ("input", "feature"):
        raise ExportError("heatmap_size must be 'input' or 'feature'")
    st.heatmap_size = heatmap_size
    for t, note in zip(st.targets, layer_notes or [None] * len(st.targets), strict=True):
        t.note = note
    st.rules = _rule_sets(rules)
    if input_gradient or st.rules or fullgrad:
        if head.task == "detect":
            raise ExportError(
                "the input gradient is not available for detectors yet; explain their head "
                "inputs (the default)"
            )
        x = _float_input(view, image)
        k = len(st.targets)
        pixel = TargetLayer(k, "input", x, layout, view.shape(x), "input", pixels=True)
        pixel.head_note = "the model input: its head is the whole model"
        st.targets.append(pixel)
        if fullgrad:
            st.fullgrad = _fullgrad_layers(view, x, head.logits)
    return st


def _fullgrad_layers(view: GraphView, x: str, logits: str) -> list[BiasLayer]:
    """FullGrad's biased layers between ``x`` and the logits; none is an ``ExportError``."""
    found = bias_layers(view, x, logits)
    if not found:
        raise ExportError(
            "FullGrad needs layers with a bias between the input and the score (Conv with a "
            "bias input, BatchNormalization) whose output is larger than 1x1, and this model "
            "has none (Gemm/MatMul biases are not FullGrad's); use the other pixel methods "
            "(--input-gradient)"
        )
    return found


def _rule_sets(rules: str | Sequence[str] | None) -> list[str]:
    """'guided,deconvnet' | list → ReLU rule sets (``contract.RULE_SETS``), validated."""
    names = rules.split(",") if isinstance(rules, str) else list(rules or [])
    names = [n.strip().lower() for n in names if n.strip()]
    bad = [n for n in names if n not in contract.RULE_SETS]
    if bad:
        raise ExportError(f"unknown rule set {bad[0]!r}; choose {', '.join(contract.RULE_SETS)}")
    return list(dict.fromkeys(names))


def _float_input(view: GraphView, image: str) -> str:
    """The image input if it is float, else the float tensor its ``Cast`` makes (a uint8
    model's pixels, differentiated as floats)."""
    if view.is_float(image):
        return image
    casts = [n for n in view.consumers.get(image, []) if n.op_type == "Cast"]
    floats = [n.output[0] for n in casts if view.is_float(n.output[0])]
    if len(floats) != 1:
        raise ExportError(
            f"the input {image!r} is not float and is not cast to float once; the input "
            "gradient needs the float pixels the model computes with"
        )
    return floats[0]


QOPERATOR_OPS = {
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QAttention",
}  # fmt: skip
"""Integer-arithmetic ops of QOperator and dynamically quantized models."""


def _refuse_qoperator(m: onnx.ModelProto) -> None:
    """A QOperator (or dynamically quantized) model: one line on what to do instead."""
    found = sorted({n.op_type for n in m.graph.node if n.op_type in QOPERATOR_OPS})
    if found:
        raise ExportError(
            f"this model is quantized in QOperator form ({', '.join(found[:3])}): its integer "
            "ops have no gradient; onnxcam explains INT8 models in QDQ form — quantize the "
            "float model with onnxruntime.quantization.quantize_static(..., "
            "quant_format=QuantFormat.QDQ)"
        )


def _list_or_none(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


@dataclass
class _Source:
    """The model as it came (for verification) and where its weights were."""

    original: bytes | str
    """What onnxruntime opens the unchanged model from: its bytes, or — over 2 GiB — a path."""
    opset: int
    external: bool
    """Its weights were in an external data file (the output keeps them external)."""
    scratch: Path | None = None
    """A temporary directory holding a large in-memory source (removed after the export)."""


def _load_for_export(model: ModelSource) -> tuple[onnx.ModelProto, _Source]:
    """The model at opset ≥ 17 and IR ≥ 8, and its ``_Source``; a model onnxcam already
    exported is refused."""
    m = load_model(model)
    if contract.META_VERSION in {p.key for p in m.metadata_props}:
        raise ExportError("this model was already exported by onnxcam; export the original model")
    is_path = isinstance(model, (str, os.PathLike))
    external = is_path and storage.has_external_data(
        onnx.load(str(model), load_external_data=False)
    )
    scratch = None
    if not storage.is_large(m):
        original: bytes | str = m.SerializeToString()
    elif is_path:
        original = str(model)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="onnxcam-"))
        original = storage.write_external(m, scratch / "original.onnx")
    m, source_opset = _normalize_opset(m)
    m.ir_version = max(m.ir_version, 8)
    return m, _Source(original, source_opset, external, scratch)


def _backward_shape(view: GraphView, m: onnx.ModelProto):
    """A backward node's output shape as far as known: a ``ConvTranspose``'s channels from its
    weight (input 1: [C_in, C_out / group, ...]); an ``Expand``'s whole shape from the forward
    tensor whose ``Shape`` it expands to (a pooling's adjoint); else the view's."""
    dims = {t.name: list(t.dims) for t in m.graph.initializer}

    def shape(node: onnx.NodeProto, producer: dict) -> tuple | None:
        if node.op_type == "ConvTranspose" and node.input[1] in dims:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            return (None, dims[node.input[1]][1] * group, None, None)
        p = producer.get(node.input[1]) if node.op_type == "Expand" else None
        source = p.input[0] if p is not None and p.op_type == "Shape" else node.output[0]
        found = view.shape(source)
        return None if found is None else tuple(found)

    return shape


def _exporter_info(st: ExportState, source_opset: int, seconds: float) -> dict:
    """The ``onnxcam.exporter`` metadata entry."""
    info = {
        "name": "onnxcam",
        "version": __version__,
        "source_opset": source_opset,
        "opset": max(st.view.opset, MIN_OPSET),
        "seconds": round(seconds, 3),
    }
    if st.forward_copy:
        info["forward_copy"] = True
    return info


def _drop_outputs(m: onnx.ModelProto, names: Sequence[str]) -> None:
    """Remove the named outputs (a front end's helper outputs) from the graph's output list."""
    keep = [o for o in m.graph.output if o.name not in set(names)]
    del m.graph.output[:]
    m.graph.output.extend(keep)


def _target_names(
    view: GraphView, head: Head, layers: Sequence[str] | None, names: Sequence[str] | None
) -> list[tuple[str, LayerInfo]]:
    """(user name, candidate) of each requested layer (default: the default candidate)."""
    candidates = candidate_layers(view, head)
    if not layers and head.task != "classify":
        return _task_defaults(view, head, candidates)
    if not layers:
        default = default_layer(candidates)
        return [(default.tensor, default)]
    by_tensor = {c.tensor: c for c in candidates}
    users = list(names) if names else list(layers)
    chosen = []
    for name, user in zip(layers, users, strict=True):
        try:
            chosen.append(by_tensor[resolve_layer(view, name, candidates)])
        except LayerNotFoundError as e:  # say it in the caller's names (torch modules)
            raise LayerNotFoundError(str(e).replace(repr(name), repr(user))) from None
    return list(zip(users, chosen, strict=True))


def _task_defaults(
    view: GraphView, head: Head, candidates: list[LayerInfo]
) -> list[tuple[str, LayerInfo]]:
    """A detector's or segmenter's default layers (``export/tasks.py``), as candidates."""
    if head.task == "detect":
        tensors = tasks.head_inputs(view, head.logits)
    else:
        tensors = [tasks.classifier_input(view, head.logits)]
    by_tensor = {c.tensor: c for c in candidates}
    missing = [t for t in tensors if t not in by_tensor]
    if missing:
        raise ExportError(
            f"the {head.task} head's input {missing[0]!r} is not a feature map on the image "
            f"grid; choose layers with --layer ({_few(candidates)})"
        )
    return [(t, by_tensor[t]) for t in tensors]


def _few(candidates: list[LayerInfo]) -> str:
    return "candidates: " + ", ".join(c.tensor for c in candidates[-4:][::-1])


def _input_spec(view: GraphView, image: str, layout: Layout, dtype: str, **given) -> InputSpec:
    """The image input's spec: its size and channels from the graph, the preprocessing
    ``given`` (``preprocessing.resolve``; missing = the ``InputSpec`` default, or GRAY with
    mean/std 0.5 for a one-channel input)."""
    shape = view.shape(image) or (None,) * 4
    h, w = layout.spatial(shape)
    channels = layout.channels(shape)
    fields: dict = {"color": "GRAY", "mean": (0.5,), "std": (0.5,)} if channels == 1 else {}
    fields.update({k: v for k, v in given.items() if v is not None})
    if "color" in fields:
        fields["color"] = fields["color"].upper()
    return InputSpec(
        name=image,
        layout=layout,
        height=h if isinstance(h, int) else None,
        width=w if isinstance(w, int) else None,
        channels=channels if isinstance(channels, int) else 3,
        dtype=dtype,
        **fields,
    )


def _check_spec(spec: InputSpec) -> None:
    if spec.color not in contract.COLOR_ORDERS:
        raise ExportError(f"color must be one of {', '.join(contract.COLOR_ORDERS)}")
    for what, v in (("mean", spec.mean), ("std", spec.std)):
        if len(v) not in (1, spec.channels):
            raise ExportError(f"{what} needs 1 or {spec.channels} values, got {len(v)}")
    if any(s == 0 for s in spec.std):
        raise ExportError("std values must be non-zero")
