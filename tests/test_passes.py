"""The export pipeline pass by pass on a tiny hand-built classifier, the ``If`` gating utility
and the checks in ``export/verify.py``."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.errors import ExportError
from onnxcam.export import export_onnx, pipeline
from onnxcam.export.api import build_state
from onnxcam.export.builder import NodeBuilder
from onnxcam.export.gating import Branch, Gate
from onnxcam.export.graph import GraphView
from onnxcam.export.passes import add_backward, optional_input
from onnxcam.export.pipeline import PASSES, describe, run_passes
from onnxcam.export.verify import check_forward_nodes_kept, verify_forward

CLASSES = 7
LAYERS = ["features", "mapped"]
"""Target 0 sits before a MaxPool and a 1×1 conv; target 1 feeds the GAP → Linear head."""


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w1": (rng.normal(size=(4, 3, 3, 3)) * 0.5).astype(np.float32),
        "b1": rng.normal(size=4).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(6, 4, 1, 1)).astype(np.float32),
        "b2": rng.normal(size=6).astype(np.float32) * 0.1,
        "fc_w": rng.normal(size=(CLASSES, 6)).astype(np.float32),
        "fc_b": rng.normal(size=CLASSES).astype(np.float32),
    }


def _tiny() -> onnx.ModelProto:
    """image [N, 3, 8, 8] → Conv → Relu (features) → MaxPool 2×2 → Conv 1×1 → Relu (mapped)
    → GlobalAveragePool → Flatten → Gemm (transB) = logits → Softmax = probs."""
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["conv"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["features"], name="relu1"),
        helper.make_node(
            "MaxPool", ["features"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["pool", "w2", "b2"], ["conv2"], name="conv2"),
        helper.make_node("Relu", ["conv2"], ["mapped"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["mapped"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in _weights().items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _after(name: str | None, **kwargs):
    """The state after running the pipeline up to and including pass ``name`` (None: none)."""
    st = build_state(_tiny(), layers=LAYERS, **kwargs)
    n = 0 if name is None else [p.name for p in PASSES].index(name) + 1
    run_passes(st, PASSES[:n])
    return st


def _previous(name: str) -> str | None:
    i = [p.name for p in PASSES].index(name)
    return PASSES[i - 1].name if i else None


def _added(name: str, **kwargs):
    """(inputs, outputs, top-level op types) pass ``name`` adds, and the state after it."""
    before = _after(_previous(name), **kwargs).view.graph
    st = _after(name, **kwargs)
    g = st.view.graph
    inputs = [i.name for i in g.input][len(before.input) :]
    outputs = [o.name for o in g.output][len(before.output) :]
    ops = [n.op_type for n in g.node][len(before.node) :]
    return inputs, outputs, ops, st


def _run(model: onnx.ModelProto, feeds: dict, names=None) -> dict:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = names or [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds), strict=True))


def _image(batch: int = 3) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(batch, 3, 8, 8)).astype(np.float32)


def _reference(x: np.ndarray) -> dict:
    """The plain model's tensors, intermediate ones included."""
    m = _tiny()
    names = ["features", "mapped", "logits", "probs"]
    m.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names[:3]
    )
    return _run(m, {"image": x}, names)


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


def _branches(node: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}


# --- the pipeline as data -----------------------------------------------------------------------
def test_module_docstring_lists_the_passes_in_order() -> None:
    assert describe() in pipeline.__doc__
    listed = re.findall(r"^\d+\. ``(\w+)``", pipeline.__doc__, re.MULTILINE)
    assert listed == [p.name for p in PASSES]
    gated = [p.name for p in PASSES if p.gate is not None]
    assert gated == [
        "add_backward",
        "add_heatmaps",
        "add_rule_gradients",
        "add_fullgrad_bias",
        "add_windows",
        "add_reciprocam",
    ]


@pytest.mark.parametrize("n", range(len(PASSES) + 1))
def test_every_prefix_of_the_pipeline_is_a_valid_graph(n: int) -> None:
    """Each pass leaves a graph that passes onnx.checker and keeps the model's own outputs."""
    st = build_state(_tiny(), layers=LAYERS, heatmaps="gradcam")
    run_passes(st, PASSES[:n])
    assert st.branch is None  # the pipeline closes the branch it opened
    onnx.checker.check_model(st.view.model, full_check=True)
    assert verify_forward(_tiny().SerializeToString(), st.view.model, st.spec) == 0.0


def test_export_onnx_runs_the_pipeline() -> None:
    st = _after("add_heads")
    exported = export_onnx(_tiny(), layers=LAYERS).model
    assert [o.name for o in exported.graph.output] == [o.name for o in st.view.graph.output]
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in st.view.graph.node]


# --- one test per pass --------------------------------------------------------------------------
def test_add_mode_input() -> None:
    inputs, outputs, ops, st = _added("add_mode_input")
    assert (inputs, outputs, ops) == ([contract.MODE_INPUT], [], ["OptionalHasElement", "If"])
    assert _default(st, contract.MODE_INPUT).tolist() == contract.MODE_EXPLAIN
    assert contract.MODE_INPUT not in st.view.initializers  # no initializer: no ORT warning


def _default(st, name: str) -> np.ndarray:
    """The default an optional input takes when left out (its ``If``'s else branch)."""
    node = next(n for n in st.view.graph.node if n.op_type == "If" and n.input[0].startswith(name))
    orelse = next(a.g for a in node.attribute if a.name == "else_branch")
    value = next(a.t for a in orelse.node[0].attribute if a.name == "value")
    return numpy_helper.to_array(value)


def test_optional_inputs_are_optional_typed_and_load_without_warnings(capfd) -> None:
    """The contract's inputs can be left out (defaults apply) or fed as plain tensors, and
    onnxruntime loads the graph silently at its default log level."""
    st = _after("add_heads")
    types = {i.name: i.type for i in st.view.graph.input}
    for name in (contract.MODE_INPUT, contract.CLASS_INPUT, contract.head_input_name(0)):
        assert types[name].HasField("optional_type")
    capfd.readouterr()
    session = ort.InferenceSession(st.view.model.SerializeToString())
    session.run(None, {"image": _image()})
    assert capfd.readouterr().err == ""


def test_expose_activations() -> None:
    inputs, outputs, ops, st = _added("expose_activations")
    assert inputs == [] and ops == ["Reshape", "Reshape"]  # published as no-op Reshapes
    assert outputs == [contract.activation_name(0), contract.activation_name(1)]
    x = _image()
    out, ref = _run(st.view.model, {"image": x}), _reference(x)
    np.testing.assert_array_equal(out[contract.activation_name(0)], ref["features"])
    np.testing.assert_array_equal(out[contract.activation_name(1)], ref["mapped"])


def test_add_score() -> None:
    inputs, outputs, _, st = _added("add_score")
    assert inputs == [contract.CLASS_INPUT, contract.SEED_INPUT]
    # the model ends in Softmax: its logits are published too
    assert outputs == [contract.LOGITS_OUTPUT, contract.CLASS_OUTPUT, contract.SCORE_OUTPUT]
    assert _default(st, contract.CLASS_INPUT).tolist() == [-1]
    assert st.cls == contract.CLASS_OUTPUT
    x = _image()
    ref = _reference(x)
    out = _run(st.view.model, {"image": x})
    np.testing.assert_array_equal(out[contract.LOGITS_OUTPUT], ref["logits"])
    np.testing.assert_array_equal(out[contract.CLASS_OUTPUT], ref["logits"].argmax(1))
    np.testing.assert_array_equal(out[contract.SCORE_OUTPUT], ref["logits"].max(1))
    chosen = np.array([3, -1, 0], dtype=np.int64)
    out = _run(st.view.model, {"image": x, contract.CLASS_INPUT: chosen})
    want = np.where(chosen < 0, ref["logits"].argmax(1), chosen)
    np.testing.assert_array_equal(out[contract.CLASS_OUTPUT], want)
    np.testing.assert_array_equal(out[contract.SCORE_OUTPUT], ref["logits"][np.arange(3), want])
    # a fed seed weighs the logits: score = Σ w · z per row
    w = np.random.default_rng(1).normal(size=ref["logits"].shape).astype(np.float32)
    out = _run(st.view.model, {"image": x, contract.SEED_INPUT: w})
    np.testing.assert_allclose(out[contract.SCORE_OUTPUT], (w * ref["logits"]).sum(1), rtol=1e-5)


def test_add_topk() -> None:
    inputs, outputs, ops, st = _added("add_topk")
    assert inputs == [] and "TopK" in ops
    assert outputs == [
        contract.TOPK_INDEX_OUTPUT,
        contract.TOPK_LOGIT_OUTPUT,
        contract.TOPK_PROBABILITY_OUTPUT,
    ]
    x = _image()
    ref = _reference(x)
    out = _run(st.view.model, {"image": x})
    best = np.argsort(-ref["logits"], axis=1, kind="stable")[:, : contract.TOPK]
    np.testing.assert_array_equal(out[contract.TOPK_INDEX_OUTPUT], best)
    np.testing.assert_allclose(
        out[contract.TOPK_LOGIT_OUTPUT], np.take_along_axis(ref["logits"], best, 1), rtol=1e-6
    )
    np.testing.assert_allclose(
        out[contract.TOPK_PROBABILITY_OUTPUT], np.take_along_axis(ref["probs"], best, 1), rtol=1e-5
    )


def test_add_cam_weights() -> None:
    inputs, outputs, _, st = _added("add_cam_weights")
    # only the layer feeding GAP → Linear has classifier weights
    assert inputs == [] and outputs == [contract.cam_weight_name(1)]
    assert st.targets[0].cam_weight is None and st.targets[1].cam_weight == outputs[0]
    assert list(st.classifiers) == [1] and st.classifiers[1].rows_are_classes
    out = _run(st.view.model, {"image": _image()})
    np.testing.assert_array_equal(out[outputs[0]], _weights()["fc_w"][out[contract.CLASS_OUTPUT]])


def _score(A: np.ndarray, k: int, cls: np.ndarray) -> np.ndarray:
    """The explained logit as a function of target k's activations (float64 numpy)."""
    w = {n: v.astype(np.float64) for n, v in _weights().items()}
    if k == 0:  # MaxPool 2×2 → Conv 1×1 → Relu
        n, c, h, wd = A.shape
        pooled = A.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        conv = np.einsum("oc,nchw->nohw", w["w2"][:, :, 0, 0], pooled)
        A = np.maximum(conv + w["b2"][:, None, None], 0)
    logits = A.mean(axis=(2, 3)) @ w["fc_w"].T + w["fc_b"]
    return logits[np.arange(len(cls)), cls]


def test_add_backward_gradients_match_finite_differences() -> None:
    inputs, outputs, ops, st = _added("add_backward")
    assert inputs == [] and outputs == [contract.gradient_name(0), contract.gradient_name(1)]
    assert ops == ["Equal", "If"]  # everything else is inside the If
    assert [t.gradient_pooled for t in st.targets] == [False, True] and list(st.pooled) == [1]
    x = _image()
    out = _run(st.view.model, {"image": x})
    cls = out[contract.CLASS_OUTPUT]
    rng = np.random.default_rng(0)
    for k in range(2):
        A = out[contract.activation_name(k)].astype(np.float64)
        G = out[contract.gradient_name(k)]
        assert G.shape == A.shape
        # positions active in every sample (no MaxPool window of tied zeros)
        active = np.argwhere((A > 1e-3).all(axis=0))
        for row in rng.choice(len(active), size=12, replace=False):
            idx = tuple(int(i) for i in active[row])
            e = np.zeros_like(A)
            e[(slice(None), *idx)] = 1e-4
            fd = (_score(A + e, k, cls) - _score(A - e, k, cls)) / 2e-4
            np.testing.assert_allclose(G[(slice(None), *idx)], fd, rtol=1e-3, atol=1e-5)
    # forward-only runs skip the branch: the gradients are empty
    fwd = {"image": x, contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    assert _run(st.view.model, fwd)[contract.gradient_name(0)].shape[0] == 0


def _minmax(m: np.ndarray) -> np.ndarray:
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1), 0)


def test_add_heatmaps_join_the_gradients_if_branch() -> None:
    kwargs = {"heatmaps": "gradcam,layercam", "heatmap_size": "feature"}
    inputs, outputs, ops, st = _added("add_heatmaps", **kwargs)
    names = [contract.heatmap_name(m, k) for k in range(2) for m in ("gradcam", "layercam")]
    assert inputs == [] and outputs == names
    assert ops == []  # no node of its own at the top level: all in the gradients' If
    (gate,) = [n for n in st.view.graph.node if n.op_type == "If" and n.name == "onnxcam/backward"]
    assert list(gate.output) == [contract.gradient_name(0), contract.gradient_name(1), *names]
    then = _branches(gate)["then_branch"]
    produced = {o for n in then.node for o in n.output}
    assert all(o.name in produced for o in then.output)
    assert not any(n.op_type == "Identity" for n in then.node)  # returned as computed
    out = _run(st.view.model, {"image": _image()})
    for k in range(2):
        A = out[contract.activation_name(k)].astype(np.float64)
        G = out[contract.gradient_name(k)].astype(np.float64)
        gradcam = np.einsum("nc,nchw->nhw", G.mean(axis=(2, 3)), A)
        layercam = np.einsum("nchw,nchw->nhw", np.maximum(G, 0), A)
        for m, want in (("gradcam", gradcam), ("layercam", layercam)):
            got = out[contract.heatmap_name(m, k)]
            np.testing.assert_allclose(got, _minmax(np.maximum(want, 0)), atol=2e-5)
            assert st.targets[k].heatmaps[m] == contract.heatmap_name(m, k)
    fwd = {"image": _image(), contract.MODE_INPUT: np.array(contract.MODE_FORWARD, np.int64)}
    assert _run(st.view.model, fwd)[names[0]].shape == (0, 8, 8)


def test_add_heads() -> None:
    inputs, outputs, ops, st = _added("add_heads")
    assert inputs == [contract.head_input_name(0), contract.head_input_name(1)]
    assert outputs == [contract.head_output_name(0), contract.head_output_name(1)]
    # one If per head, taken in mode 2 when its input has rows
    optional = ["OptionalHasElement", "If"]  # the input's value, or its empty default
    assert ops == [*optional, "Equal", "Size", "Greater", "And", "If"] * 2
    assert [t.head_output for t in st.targets] == outputs
    x = _image()
    out = _run(st.view.model, {"image": x})
    feeds = {"image": x, contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64)}
    for k in range(2):
        feeds[contract.head_input_name(k)] = out[contract.activation_name(k)]
    head = _run(st.view.model, feeds)
    for k in range(2):
        np.testing.assert_allclose(
            head[contract.head_output_name(k)], _reference(x)["logits"], rtol=1e-5, atol=1e-6
        )
    assert out[contract.head_output_name(0)].shape == (0, CLASSES)  # mode 0: no head run
    del feeds[contract.head_input_name(1)]  # mode 2, head 1 left at its empty default: not run
    head = _run(st.view.model, feeds)
    assert head[contract.head_output_name(1)].shape == (0, CLASSES)
    np.testing.assert_allclose(
        head[contract.head_output_name(0)], _reference(x)["logits"], rtol=1e-5, atol=1e-6
    )


def test_a_gated_pass_outside_its_branch_is_an_internal_error() -> None:
    st = _after("add_cam_weights")
    with pytest.raises(ExportError, match="outside its If branch"):
        add_backward(st)


# --- the If gating utility ----------------------------------------------------------------------
def _relu_graph() -> tuple[GraphView, onnx.ModelProto]:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    view = GraphView(m)
    optional_input(view, contract.MODE_INPUT, TensorProto.INT64, [], np.array(0, dtype=np.int64))
    return view, m


def test_branch_moves_its_nodes_into_one_if_and_copies_only_when_it_must() -> None:
    view, m = _relu_graph()
    consts: dict = {}
    branch = Branch(view, Gate(0, "double"), consts)
    b = NodeBuilder(view, "onnxcam/double", consts)
    doubled = b.Mul("y", b.const(np.float32(2)))
    branch.output(doubled, "doubled", TensorProto.FLOAT, ["N", 2])
    branch.output(doubled, "again", TensorProto.FLOAT, ["N", 2])  # returned twice: a copy
    branch.output("x", "outer", TensorProto.FLOAT, ["N", 2])  # an outer-scope value: a copy
    node = branch.close()
    assert [n.op_type for n in m.graph.node] == [
        "Relu",
        "OptionalHasElement",  # the mode's value (optional input)
        "If",
        "Equal",
        "If",
    ] and node.name == "onnxcam/double"
    then = _branches(node)["then_branch"]
    assert [n.op_type for n in then.node] == ["Mul", "Identity", "Identity"]
    onnx.checker.check_model(m, full_check=True)
    x = np.array([[-1.0, 2.0]], dtype=np.float32)
    out = _run(m, {"x": x})
    np.testing.assert_array_equal(out["doubled"], [[0.0, 4.0]])
    np.testing.assert_array_equal(out["again"], out["doubled"])
    np.testing.assert_array_equal(out["outer"], x)
    skipped = _run(m, {"x": x, contract.MODE_INPUT: np.array(1, dtype=np.int64)})
    assert all(v.shape == (0, 2) for k, v in skipped.items() if k != "y")
    with pytest.raises(ExportError, match="already closed"):
        branch.close()


def test_branch_with_nothing_to_return() -> None:
    view, m = _relu_graph()
    assert Branch(view, Gate(0, "empty"), {}).close() is None
    branch = Branch(view, Gate(0, "dead"), {})
    NodeBuilder(view, "onnxcam/dead", {}).Neg("y")
    with pytest.raises(ExportError, match="computes nothing"):
        branch.close()
    branch = Branch(view, Gate(0, "dropped"), {})
    NodeBuilder(view, "onnxcam/dropped", {}).Neg("y")
    branch.discard()
    assert len(m.graph.node) == 4  # Relu, the mode value (2) and the dead Neg of the close above


# --- verification ---------------------------------------------------------------------------------
def test_verify_forward_fails_when_the_forward_graph_is_altered() -> None:
    original = _tiny().SerializeToString()
    res = export_onnx(_tiny(), layers=LAYERS)
    assert verify_forward(original, res.model, res.input) == 0.0
    # a forward weight changed after export
    changed = onnx.ModelProto()
    changed.CopyFrom(res.model)
    w1 = next(i for i in changed.graph.initializer if i.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w1) * 1.01, "w1"))
    with pytest.raises(ExportError, match="'probs' changed"):
        verify_forward(original, changed, res.input)
    # a Mul inserted on the path to the model's output
    scaled = onnx.ModelProto()
    scaled.CopyFrom(res.model)
    softmax = next(n for n in scaled.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs_before"
    scaled.graph.initializer.append(numpy_helper.from_array(np.float32(1.5), "k"))
    scaled.graph.node.append(helper.make_node("Mul", ["probs_before", "k"], ["probs"]))
    with pytest.raises(ExportError, match="'probs' changed"):
        verify_forward(original, scaled, res.input)


def test_forward_node_check_compares_node_sets() -> None:
    original = _tiny()
    exported = export_onnx(_tiny(), layers=LAYERS).model
    check_forward_nodes_kept(original, exported)  # MaxPool's Indices were switched on: allowed
    pool = next(n for n in exported.graph.node if n.op_type == "MaxPool")
    assert len(pool.output) == 2 and "onnxcam: enabled optional output 1" in pool.doc_string

    def edited(edit) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(exported)
        edit(m.graph)
        return m

    def drop(g):
        del g.node[1]

    def rename(g):
        g.node[1].name = "relu1_renamed"

    def rewire(g):
        g.node[3].input[0] = "features"

    def undocumented(g):
        next(n for n in g.node if n.op_type == "MaxPool").doc_string = ""

    def new_attribute(g):
        g.node[2].attribute.append(helper.make_attribute("ceil_mode", 1))

    for edit in (drop, rename, rewire, undocumented, new_attribute):
        with pytest.raises(ExportError, match="forward node"):
            check_forward_nodes_kept(original, edited(edit))
