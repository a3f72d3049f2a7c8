"""The exporter's contract, front ends and passes on small real models."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.errors import ExportError, LayerNotFoundError, UnsupportedOpError
from onnxcam.export import export_onnx, export_torch, list_layers
from onnxcam.export.verify import check_forward_nodes_kept


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    s = _session(model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True))


def _meta(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props}


# --- graph contract ---------------------------------------------------------------------------
def test_contract_inputs_outputs_and_metadata(tiny_onnx, tmp_path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(5)))
    res = export_onnx(tiny_onnx, tmp_path / "out.onnx", labels=labels, mean=[0.5], std=[0.25])
    m = onnx.load(str(tmp_path / "out.onnx"))
    s = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    # onnxcam's inputs are optional-typed: plain run(None, {image}) works
    inputs = {i.name: i.type for i in s.get_inputs()}
    assert inputs["input"] == "tensor(float)"
    assert inputs[contract.CLASS_INPUT] == "optional(tensor(int64))"
    assert inputs[contract.MODE_INPUT] == "optional(tensor(int64))"
    assert s.run([contract.CLASS_OUTPUT], {"input": np.zeros((2, 3, 32, 32), np.float32)})
    outs = [o.name for o in s.get_outputs()]
    assert outs[0] == "logits"  # the model's own output keeps its name and place
    for name in (
        contract.CLASS_OUTPUT,
        contract.SCORE_OUTPUT,
        contract.activation_name(0),
        contract.gradient_name(0),
        contract.cam_weight_name(0),
    ):
        assert name in outs
    meta = _meta(m)
    assert meta[contract.META_VERSION] == str(contract.VERSION)
    targets = json.loads(meta[contract.META_TARGETS])
    assert targets[0]["layout"] == "NCHW" and targets[0]["shape"][1:] == [16, 8, 8]
    assert json.loads(meta[contract.META_LABELS]) == [f"class{i}" for i in range(5)]
    spec = json.loads(meta[contract.META_INPUT])
    assert spec["name"] == "input" and spec["height"] == 32 and spec["mean"] == [0.5]
    assert json.loads(meta[contract.META_SCORE])["logits"] == "logits"
    assert json.loads(meta[contract.META_CLASSIFIER])["weight"] == "fc.weight"
    assert res.max_output_diff == 0.0
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    onnx.checker.check_model(m, full_check=True)


def test_top1_by_default_and_class_input_per_sample(tiny_onnx, tiny_torch_model, rng) -> None:
    res = export_onnx(tiny_onnx)
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    out = _run(res.model, {"input": x})
    logits = out["logits"]
    np.testing.assert_array_equal(out[contract.CLASS_OUTPUT], logits.argmax(1))
    np.testing.assert_allclose(out[contract.SCORE_OUTPUT], logits.max(1), rtol=1e-6)
    chosen = np.array([2, -1, 4], dtype=np.int64)
    out2 = _run(res.model, {"input": x, contract.CLASS_INPUT: chosen})
    want = np.where(chosen < 0, logits.argmax(1), chosen)
    np.testing.assert_array_equal(out2[contract.CLASS_OUTPUT], want)
    np.testing.assert_allclose(out2[contract.SCORE_OUTPUT], logits[np.arange(3), want], rtol=1e-6)
    # gradients are per sample: each equals the single-sample run for that class
    for i in range(3):
        single = _run(res.model, {"input": x[i : i + 1], contract.CLASS_INPUT: want[i : i + 1]})
        np.testing.assert_allclose(
            out2[contract.gradient_name(0)][i], single[contract.gradient_name(0)][0], atol=1e-7
        )


def test_gradients_match_torch_for_chosen_class(tiny_onnx, tiny_torch_model, rng) -> None:
    from torch_reference import torch_layer_gradients

    res = export_onnx(tiny_onnx, layers=[list_layers(tiny_onnx)[-1].tensor])
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    cls = np.array([1, 3], dtype=np.int64)
    out = _run(res.model, {"input": x, contract.CLASS_INPUT: cls})
    _, _, grads = torch_layer_gradients(tiny_torch_model, x, ["act"], classes=cls)
    np.testing.assert_allclose(out[contract.gradient_name(0)], grads[0], atol=1e-6, rtol=1e-4)


def test_cam_weights_are_the_classifier_row(tiny_onnx, tiny_torch_model, rng) -> None:
    res = export_onnx(tiny_onnx)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    out = _run(res.model, {"input": x})
    w = tiny_torch_model.fc.weight.detach().numpy()
    np.testing.assert_allclose(out[contract.cam_weight_name(0)], w[out[contract.CLASS_OUTPUT]])


def test_multiple_targets_in_one_export(tiny_onnx, rng) -> None:
    cands = list_layers(tiny_onnx)
    assert cands[-1].default and not any(c.default for c in cands[:-1])
    layers = [cands[0].tensor, cands[-3].tensor, cands[-1].tensor]
    res = export_onnx(tiny_onnx, layers=layers)
    out = _run(res.model, {"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)})
    for k in range(3):
        assert out[contract.activation_name(k)].shape == out[contract.gradient_name(k)].shape
        assert np.isfinite(out[contract.gradient_name(k)]).all()


def test_node_name_selects_its_output(tiny_onnx) -> None:
    m = onnx.load(str(tiny_onnx))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    res = export_onnx(m, layers=[conv.name])
    assert res.targets[0].tensor == conv.output[0]


def test_export_never_edits_forward_nodes_except_maxpool_indices(tiny_onnx) -> None:
    before = onnx.load(str(tiny_onnx))
    layers = [list_layers(before)[0].tensor]  # the stem: the gradient crosses the MaxPool
    after = export_onnx(before, layers=layers).model
    old = {n.name: n for n in before.graph.node}
    for n in after.graph.node:
        if n.name not in old:
            continue
        o = old[n.name]
        assert list(n.input) == list(o.input) and n.attribute == o.attribute
        if n.op_type == "MaxPool":
            assert n.output[0] == o.output[0] and len(n.output) == 2
            assert "onnxcam" in n.doc_string
        else:
            assert list(n.output) == list(o.output)
    # compared as sets, so a dropped or renamed forward node fails too
    assert {n.name for n in before.graph.node} <= {n.name for n in after.graph.node}
    check_forward_nodes_kept(before, after)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(after)
    renamed.graph.node[0].name += "_renamed"
    with pytest.raises(ExportError, match="forward node"):
        check_forward_nodes_kept(before, renamed)


# --- torch front end --------------------------------------------------------------------------
def test_export_torch_by_module_name_restores_training_mode(tiny_torch_model, tmp_path) -> None:
    tiny_torch_model.train()
    try:
        res = export_torch(
            tiny_torch_model, (1, 3, 32, 32), layers=["block"], output=tmp_path / "t.onnx"
        )
        assert tiny_torch_model.training  # the caller's mode is restored
    finally:
        tiny_torch_model.eval()
    assert res.targets[0].name == "block"
    names = [o.name for o in onnx.load(str(tmp_path / "t.onnx")).graph.output]
    assert not any(n.startswith("onnxcam_capture") for n in names)


def test_module_called_twice_last_call_or_explicit(tiny_torch_model, rng) -> None:
    from torch_reference import torch_layer_gradients

    # `act` runs twice in Tiny.forward: after the residual add and after head_conv
    with pytest.warns(UserWarning, match="called 2 times"):
        res = export_torch(tiny_torch_model, (1, 3, 32, 32), layers=["act"])
    meta = json.loads(_meta(res.model)[contract.META_TARGETS])
    assert meta[0]["name"] == "act@1" and "called 2 times" in meta[0]["note"]
    x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    out = _run(res.model, {"input": x})
    assert out[contract.activation_name(0)].shape[1] == 16  # the head's act (16 channels)
    first = export_torch(tiny_torch_model, (1, 3, 32, 32), layers=["act@0"])
    assert _run(first.model, {"input": x})[contract.activation_name(0)].shape[1] == 8
    with pytest.raises(LayerNotFoundError, match="act@0, act@1"):
        export_torch(tiny_torch_model, (1, 3, 32, 32), layers=["act@5"])
    with pytest.raises(LayerNotFoundError, match="not found"):
        export_torch(tiny_torch_model, (1, 3, 32, 32), layers=["nope"])
    del torch_layer_gradients


@pytest.mark.model
def test_efficientnet_lite0_reused_relu6_module() -> None:
    """EfficientNet-Lite0 reuses one ReLU6 module (`_swish`) in its stem and head."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0").eval()
    with pytest.warns(UserWarning, match="_swish"):
        res = export_torch(model, (1, 3, 224, 224), layers=["_swish"])
    assert res.targets[0].name == "_swish@1"
    assert res.targets[0].shape[1:] == [1280, 7, 7]
    stem = export_torch(model, (1, 3, 224, 224), layers=["_swish@0"])
    assert stem.targets[0].shape[1:] == [32, 112, 112]


# --- general ONNX front end -------------------------------------------------------------------
def _nhwc_model() -> onnx.ModelProto:
    """A tf2onnx-style model: NHWC input, convs wrapped in transposes, ReduceMean over H, W."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.normal(size=(8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["conv_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["conv_nhwc"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def test_nhwc_model_softmax_head_and_old_opset() -> None:
    model = _nhwc_model()
    res = export_onnx(model)
    t = res.targets[0]
    assert t.tensor == "features" and t.layout == "NHWC"
    assert res.head.logits == "logits" and res.head.activation == "softmax"
    assert res.input.layout == "NHWC" and res.input.height == 16
    assert t.cam_weight is not None  # ReduceMean over H,W → MatMul + Add is GAP→Linear
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    out = _run(res.model, {"image": x})
    # score is the pre-softmax logit; its gradient w.r.t. the NHWC features (the ReLU output)
    # is w[:, c] / (H·W) at every position
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    cls = out[contract.CLASS_OUTPUT]
    want = np.broadcast_to(w2[:, cls].T[:, None, None, :] / 256.0, (2, 16, 16, 8))
    np.testing.assert_allclose(out[contract.gradient_name(0)], want, atol=1e-7)
    np.testing.assert_allclose(out[contract.cam_weight_name(0)], w2[:, cls].T)
    meta = json.loads(_meta(res.model)[contract.META_EXPORTER])
    assert meta["source_opset"] == 13 and meta["opset"] >= 17


def _gemm_head_model(trans_b: int, alpha: float) -> onnx.ModelProto:
    """conv → ReLU → GlobalAveragePool → Flatten → Gemm (any transB / alpha) = the logits."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.normal(size=(5, 6) if trans_b else (6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], transB=trans_b, alpha=alpha),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 12, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("trans_b", "alpha"), [(1, 1.0), (0, 1.0), (1, 0.5), (0, -2.0)])
def test_gemm_head_gradient_seeded_with_the_class_row(trans_b: int, alpha: float) -> None:
    """With a Gemm classifier the backward pass starts at the Gemm's input with α·W[class]:
    the gradient is still α·W[class] / (h·w) at every position, for any transB and alpha, per
    sample and for a chosen class; the exporter marks it as pooled."""
    model = _gemm_head_model(trans_b, alpha)
    res = export_onnx(model)
    assert res.targets[0].tensor == "features" and res.targets[0].gradient_pooled
    # the backward reads the class row (a Gather), never onehot × W (no product in its branch
    # that takes the whole matrix without a fed seed: the Gemm is in the fed-seed branch only)
    backward = next(n for n in res.model.graph.node if n.op_type == "If" and "backward" in n.name)
    then = next(a.g for a in backward.attribute if a.name == "then_branch")
    seed_rows = [n for n in then.node if n.op_type == "If" and n.name.startswith("onnxcam/seed")]
    assert len(seed_rows) == 1 and not any(n.op_type in ("Range", "MatMul") for n in then.node)
    branches = {a.name: [n.op_type for n in a.g.node] for a in seed_rows[0].attribute}
    assert "Gemm" in branches["then_branch"] and "Gather" in branches["else_branch"]
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    rows = w2 if trans_b else w2.T  # [classes, features]
    x = np.random.default_rng(4).normal(size=(3, 3, 12, 10)).astype(np.float32)
    for feeds in ({"input": x}, {"input": x, contract.CLASS_INPUT: np.array([4, -1, 0])}):
        out = _run(res.model, feeds)
        cls = out[contract.CLASS_OUTPUT]
        logits = out["logits"]
        np.testing.assert_allclose(out[contract.SCORE_OUTPUT], logits[np.arange(3), cls])
        want = np.broadcast_to((alpha * rows[cls] / 120.0)[:, :, None, None], (3, 6, 12, 10))
        np.testing.assert_allclose(out[contract.gradient_name(0)], want, rtol=1e-6, atol=1e-9)


def _all_nodes(model: onnx.ModelProto):
    """Every node, subgraphs (If branches) included."""
    for n in model.graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from a.g.node


def test_dynamic_size_fixed_with_size(tmp_path) -> None:
    model = _nhwc_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_param = "H"
    dims[2].Clear()
    dims[2].dim_param = "W"
    res = export_onnx(model, size=(16, 16))
    assert (res.input.height, res.input.width) == (16, 16)
    with pytest.raises(ExportError, match="fixed at 16x16"):
        export_onnx(_nhwc_model(), size=(32, 32))


def test_unsupported_op_on_path_names_op_node_and_supported_ops() -> None:
    model = _nhwc_model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.name = "Sin", "weird_node"
    with pytest.raises(UnsupportedOpError) as e:
        export_onnx(model, layers=["conv_nhwc"])
    msg = str(e.value)
    assert "'Sin'" in msg and "weird_node" in msg and "Conv" in msg and "MaxPool" in msg


def test_no_4d_tensor_and_unknown_layer_are_clear_errors(tiny_onnx) -> None:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[w],
    )
    flat = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="4-D"):
        export_onnx(flat)
    with pytest.raises(LayerNotFoundError, match="candidates"):
        export_onnx(tiny_onnx, layers=["no_such_layer"])
    exported = export_onnx(tiny_onnx).model
    with pytest.raises(ExportError, match="already exported"):
        export_onnx(exported)


def test_refuses_to_overwrite_input_before_any_work(tiny_onnx) -> None:
    before = tiny_onnx.read_bytes()
    with pytest.raises(ExportError, match="overwrite"):
        export_onnx(tiny_onnx, tiny_onnx)
    assert tiny_onnx.read_bytes() == before


# --- what the runtime side may and may not import ----------------------------------------------
def test_import_onnxcam_loads_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, onnxcam, onnxcam.contract, onnxcam.errors, onnxcam.cli;"
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_graph_runs_with_only_onnxruntime(tiny_onnx, tmp_path) -> None:
    out = tmp_path / "cam.onnx"
    export_onnx(tiny_onnx, out)
    code = f"""
import sys
sys.modules['torch'] = None; sys.modules['onnx'] = None   # importing them now fails
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider'])
r = s.run(['onnxcam_gradient_0', 'onnxcam_class'], {{'input': np.ones((2, 3, 32, 32), np.float32)}})
assert r[0].shape == (2, 16, 8, 8) and np.isfinite(r[0]).all()
meta = s.get_modelmeta().custom_metadata_map
assert meta['onnxcam.contract_version'] == '3'
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_export_through_dynamo_exporter(tiny_torch_model, rng) -> None:
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_torch(tiny_torch_model, (1, 3, 32, 32), layers=["block"], dynamo=True)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    out = _run(res.model, {"input": x})
    with torch.no_grad():
        ref = tiny_torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5)
