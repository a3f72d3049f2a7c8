"""Checks an exported graph must pass before it is written.

* ``check_forward_nodes_kept``: every forward node is still there, unchanged (export only
  appends). The one allowed edit, an optional output switched on (MaxPool ``Indices``), is
  recognised by the note ``NodeBuilder.enable_optional_output`` leaves in the ``doc_string``.
* ``check_model``: ``onnx.checker`` with ``full_check``.
* ``verify_forward``: old and new graphs run in onnxruntime on ``random_feeds``; the model's own
  outputs must be unchanged, each head-only path must reproduce the score, and every onnxcam
  output must be finite (the onnxsim way of verifying a rewrite).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.contract import InputSpec
from onnxcam.errors import ExportError

NodeKey = tuple
"""(name, domain, op_type, inputs, outputs, attributes): what must not change in a node."""

_ENABLED = re.compile(r"onnxcam: enabled optional output (\d+)")


def node_key(node: onnx.NodeProto) -> NodeKey:
    """A forward node's identity, with the optional outputs onnxcam switched on left out."""
    outputs = list(node.output)
    for k in (int(m) for m in _ENABLED.findall(node.doc_string)):
        if k < len(outputs):
            outputs[k] = ""
    while outputs and not outputs[-1]:
        outputs.pop()
    attrs = tuple(a.SerializeToString(deterministic=True) for a in node.attribute)
    return (node.name, node.domain, node.op_type, tuple(node.input), tuple(outputs), attrs)


def forward_nodes(model: onnx.ModelProto | Iterable[onnx.NodeProto]) -> Counter[NodeKey]:
    """The multiset of ``node_key``s of a model's (main graph's) nodes."""
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model
    return Counter(node_key(n) for n in nodes)


def check_forward_nodes_kept(
    original: onnx.ModelProto | Counter[NodeKey], exported: onnx.ModelProto
) -> None:
    """Raise ``ExportError`` unless every node of ``original`` is in ``exported``, unchanged
    (same name, op, inputs, outputs and attributes). A dropped, renamed or edited node fails.
    ``original`` may be the ``forward_nodes`` taken before the passes ran."""
    before = original if isinstance(original, Counter) else forward_nodes(original)
    missing = before - forward_nodes(exported)
    if missing:
        shown = ", ".join(f"{k[2]} {k[0] or k[4][:1]!r}" for k in list(missing)[:5])
        raise ExportError(
            f"internal: export changed or removed {sum(missing.values())} forward node(s): {shown}"
        )


def check_model(model: onnx.ModelProto | bytes | str) -> None:
    """``onnx.checker.check_model(full_check=True)`` of a model, its bytes or its path (a model
    over 2 GiB); failures become ``ExportError``."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"internal: the exported graph fails onnx.checker: {e}") from None


def random_feeds(model: onnx.ModelProto, spec: InputSpec, batch: int, seed: int = 0) -> dict:
    """Random inputs for every real graph input (image ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits or vi.type.HasField("optional_type"):  # onnxcam's: left out
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
        if np.issubdtype(dt, np.integer):  # a uint8 image: pixels
            feeds[vi.name] = rng.integers(0, 256, size=dims).astype(dt)
        else:
            feeds[vi.name] = rng.normal(size=dims).astype(dt)
    return feeds


TOLERANCE = {TensorProto.FLOAT: 1e-5, TensorProto.FLOAT16: 4e-3, TensorProto.BFLOAT16: 3e-2}
"""Relative tolerance of the verification per float type the graph computes in: onnxruntime
may fuse or order the same ops differently once extra outputs are attached, which moves a
float16 result by a few of its ulps (2⁻¹⁰ ≈ 1e-3), not by float32's."""


def tolerance(dtypes) -> float:
    """The verification tolerance for a graph computing in ``dtypes`` (the loosest one)."""
    f32 = TensorProto.FLOAT
    return max(TOLERANCE.get(d, TOLERANCE[f32]) for d in [*dtypes, f32])


def verify_batch(model: onnx.ModelProto, spec: InputSpec) -> int:
    """The batch to verify with: the image input's fixed batch, else 2."""
    vi = next(i for i in model.graph.input if i.name == spec.name)
    dims = vi.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 2


def verify_forward(
    original: bytes | str,
    exported: onnx.ModelProto,
    spec: InputSpec,
    batch: int | None = None,
    atol: float = 1e-5,
    new_source: bytes | str | None = None,
) -> float:
    """Run old and new graphs in onnxruntime; the model's own outputs must be unchanged.

    ``original`` is what onnxruntime opens for the old graph (bytes, or a path for a model over
    2 GiB, ``storage.model_source``), ``new_source`` the same for ``exported`` (default: its
    bytes). Returns the
    largest absolute difference seen. Also fails if a head-only path changes the score or any
    onnxcam output is not finite. ``batch``: default ``verify_batch``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    old = ort.InferenceSession(original, opts, providers=providers)
    if new_source is None:
        new_source = exported.SerializeToString()
    new = ort.InferenceSession(new_source, opts, providers=providers)
    feeds = random_feeds(exported, spec, verify_batch(exported, spec) if batch is None else batch)
    names = [o.name for o in old.get_outputs()]
    ref = old.run(names, feeds)
    outs = new.run(None, feeds)
    by_name = dict(zip([o.name for o in new.get_outputs()], outs, strict=True))
    worst = _compare(names, ref, by_name, atol, "")
    # forward only (mode 1): the same outputs (a forward copy runs another graph for it)
    if contract.MODE_INPUT in {i.name for i in new.get_inputs()}:
        mode = np.array(contract.MODE_FORWARD, dtype=np.int64)
        alone = dict(zip(names, new.run(names, {**feeds, contract.MODE_INPUT: mode}), strict=True))
        worst = max(worst, _compare(names, ref, alone, atol, " in a forward-only run"))
    _verify_heads(new, feeds, by_name, atol)
    for name, value in by_name.items():
        floating = np.issubdtype(value.dtype, np.floating)
        if name.startswith(contract.NAME_PREFIX) and floating and not np.all(np.isfinite(value)):
            raise ExportError(f"verification failed: {name!r} is not finite")
    return worst


def _compare(names: list[str], ref: list, got: dict, atol: float, where: str) -> float:
    """The largest absolute difference of the model's own outputs; an ``ExportError`` when one
    changed shape or value (beyond ``atol`` relative to its scale)."""
    worst = 0.0
    for name, r in zip(names, ref, strict=True):
        value = got[name]
        if value.shape != r.shape:
            raise ExportError(f"verification failed: output {name!r} changed shape{where}")
        if r.size and np.issubdtype(r.dtype, np.floating):
            diff = float(np.max(np.abs(value.astype(np.float64) - r)))
            worst = max(worst, diff)
            if diff > atol * max(1.0, float(np.max(np.abs(r)))):
                raise ExportError(
                    f"verification failed: output {name!r} changed by {diff:.3g} after export"
                    f"{where}"
                )
        elif not np.array_equal(value, r):
            raise ExportError(f"verification failed: output {name!r} changed after export{where}")
    return worst


def _verify_heads(session, feeds: dict, by_name: dict, atol: float) -> None:
    """Each head-only path, fed the real activations, must reproduce the explained score."""
    targets = itertools.takewhile(
        lambda k: contract.activation_name(k) in by_name, itertools.count()
    )
    for k in (k for k in targets if contract.head_output_name(k) in by_name):
        feeds_k = {
            **feeds,
            contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64),
            contract.head_input_name(k): by_name[contract.activation_name(k)],
        }
        (head,) = session.run([contract.head_output_name(k)], feeds_k)
        cls, score = by_name[contract.CLASS_OUTPUT], by_name[contract.SCORE_OUTPUT]
        diff = float(np.max(np.abs(head[np.arange(len(cls)), cls] - score)))
        if diff > atol * max(1.0, float(np.max(np.abs(score)))):
            raise ExportError(f"verification failed: head {k} changes the score by {diff:.3g}")


def seed_rows_hold(
    model: onnx.ModelProto, source: bytes | str, spec: InputSpec, n: int, row_shape
) -> bool:
    """Whether one image's backward with several seed rows gives each row's gradients (as
    separate runs do): the exporter records it as ``ScoreSpec.seed_rows`` (a detector's
    detections then take one run per image). ``row_shape``: the logits' sizes past axis 0."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    feeds = random_feeds(model, spec, 1)
    seed = np.random.default_rng(0).normal(size=(3, *row_shape)).astype(np.float32)
    names = [contract.gradient_name(k) for k in range(n)]
    try:
        together = s.run(names, {**feeds, contract.SEED_INPUT: seed})
    except Exception:  # an op that needs equal rows: seed rows do not hold
        return False
    for r in range(len(seed)):
        alone = s.run(names, {**feeds, contract.SEED_INPUT: seed[r : r + 1]})
        for x, y in zip(together, alone, strict=True):
            scale = max(1.0, float(np.abs(y).max()))
            if x.shape[0] != len(seed) or not np.allclose(
                x[r : r + 1], y, rtol=1e-4, atol=1e-5 * scale
            ):
                return False
    return True


def windows_hold(
    model: onnx.ModelProto, source: bytes | str, spec: InputSpec, n: int, row_shape, classes: int
) -> float:
    """The largest relative difference between the windowed gradients of the graph's own
    detections (``export/window.py``) and the full backward of the same rows (their one-hot
    seeds fed), on random images with every prediction a candidate (conf 0, the 32 best).
    ``row_shape``: the logits' sizes past axis 0, ``[C, N]``, the last ``classes`` channels
    the class logits."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = [contract.gradient_name(k) for k in range(n)]
    worst = 0.0
    for seed in (0, 1):
        feeds = random_feeds(model, spec, 1, seed=seed)
        chosen = {
            contract.DETECT_CONF_INPUT: np.array([0.0], np.float32),
            contract.DETECT_IOU_INPUT: np.array([1.0], np.float32),
            contract.DETECT_TOP_INPUT: np.array([32], np.int64),
        }
        rows, *windowed = s.run([contract.DETECTIONS_OUTPUT, *names], {**feeds, **chosen})
        ones = np.zeros((len(rows), *row_shape), np.float32)
        c = rows[:, 5].astype(int) + row_shape[0] - classes
        ones[np.arange(len(rows)), c, rows[:, 6].astype(int)] = 1
        full = s.run(names, {**feeds, contract.SEED_INPUT: ones})
        for a, b in zip(windowed, full, strict=True):
            scale = max(float(np.abs(b).max()), 1e-30)
            worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst
