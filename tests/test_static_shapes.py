"""Static shapes from a static input: shape arithmetic (Shape → Gather → Concat → Reshape,
Slice ends computed from sizes) is resolved for the analysis, with the batch left dynamic.

torch's exporters compute reshape targets and slice bounds from the runtime shape of the
activations when the batch axis is dynamic; the analysis (``graph.analyse_shapes``) fixes the
batch at two sizes, so values that do not depend on it become constants, dimensions that do
stay the batch. The exported graphs are checked against float64 torch autograd at batch 1 and
3, from both torch exporters. A truly dynamic H/W still needs ``--size``, and says so.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch_reference import (
    assert_gradients_close,
    max_rel_err,
    torch_layer_gradients,
    torchvision_model,
)

from onnxcam import contract
from onnxcam.errors import ExportError
from onnxcam.export import export_onnx, export_torch, plain_onnx
from onnxcam.export.graph import GraphView, analyse_shapes

TOL = 1e-4


# --- the analysis on hand-made graphs ---------------------------------------------------------
def _shape_arithmetic_model(h: int | str = 6, w: int | str = 6) -> onnx.ModelProto:
    """x[B, 4, H, W] → Reshape(x, [B, 2, 2, (H // 2) * 2 * W]) → Slice(.., ends=[H // 2 * W])."""
    i64 = TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i2"], ["hh"], axis=0),
        helper.make_node("Gather", ["s", "i3"], ["ww"], axis=0),
        helper.make_node("Div", ["hh", "two"], ["half"]),
        helper.make_node("Mul", ["half", "ww"], ["hw"]),
        helper.make_node("Mul", ["hw", "two"], ["hw2"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["hw2", "ax0"], ["hw21"]),
        helper.make_node("Unsqueeze", ["hw", "ax0"], ["end"]),
        helper.make_node("Concat", ["b1", "c22", "hw21"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Slice", ["y", "zero", "end", "ax3"], ["z"]),
    ]
    inits = [
        helper.make_tensor("i0", i64, [], [0]),
        helper.make_tensor("i2", i64, [], [2]),
        helper.make_tensor("i3", i64, [], [3]),
        helper.make_tensor("two", i64, [], [2]),
        helper.make_tensor("ax0", i64, [1], [0]),
        helper.make_tensor("ax3", i64, [1], [3]),
        helper.make_tensor("zero", i64, [1], [0]),
        helper.make_tensor("c22", i64, [2], [2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "arith",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, h, w])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_arithmetic_resolves_with_the_batch_left_dynamic() -> None:
    view = GraphView(_shape_arithmetic_model())
    assert view.probe_batches  # the graph reads shapes and its batch is dynamic
    assert view.shape("y") == ("batch", 2, 2, 36)
    assert view.shape("z") == ("batch", 2, 2, 18)
    assert int(view.const("half")) == 3
    assert view.const("end").tolist() == [18]
    assert view.const("b") is None  # the batch is never a constant
    assert view.const("target") is None  # nor anything computed from it
    assert view.size_hint("end") == ""
    # analysis only: the graph keeps every node
    assert len(view.graph.node) == 13


def test_dynamic_height_width_stay_dynamic_and_hint_at_size() -> None:
    view = GraphView(_shape_arithmetic_model("h", "w"))
    assert view.const("half") is None and view.const("end") is None
    assert view.shape("y")[:3] == ("batch", 2, 2)
    assert isinstance(view.shape("y")[3], (str, type(None)))
    assert "--size" in view.size_hint("end")


def test_static_batch_needs_no_probe() -> None:
    m = _shape_arithmetic_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    found = analyse_shapes(m)
    assert found.probe_batches == ()
    assert found.shapes["z"] == (2, 2, 2, 18)
    assert found.values["target"].tolist() == [2, 2, 2, 36]


def test_reshape_minus_one_with_a_dynamic_batch() -> None:
    """``Reshape(x, [0, -1])`` (dynamo's flatten): the batch stays the batch, the rest static."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.INT64, [2], [0, -1])],
    )
    view = GraphView(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert view.shape("y") == ("n", 32)


def test_tiny_cnn_shapes_all_static_but_the_batch(tiny_onnx) -> None:
    view = GraphView(onnx.load(str(tiny_onnx)))
    assert view.shape("logits") == ("batch", 5)
    assert all(
        s is not None and s[1:] == tuple(int(d) for d in s[1:]) for s in view.shapes.values()
    )


# --- real torch models ------------------------------------------------------------------------
class ShuffleSliceWindows(nn.Module):
    """Channel shuffle, slices whose bounds come from sizes, and 2×2 windows through the batch
    axis (Swin-style ``view(-1, …)``) — shape arithmetic the exporters compute at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.mid = nn.Conv2d(8, 8, 3, 1, 1)
        self.last = nn.Conv2d(8, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch.tanh(self.mid(x))
        x = x[:, :, : x.size(2) // 2, 1 : x.size(3) - 1]
        n, c, h, w = x.size()
        win = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, 4)
        win = torch.softmax(win, dim=-1) * win
        x = win.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
        x = self.last(x)
        return self.fc(x.mean((2, 3)))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return ShuffleSliceWindows().eval()


def _dynamic_hw_onnx(model: nn.Module, size: int) -> bytes:
    """A plain TorchScript-exporter ONNX file whose batch, height and width are dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def _check_gradients(
    res_model: onnx.ModelProto, model: nn.Module, layers: list[str], size: int
) -> float:
    """Gradients and activations of the exported graph vs float64 autograd at batch 1 and 3;
    the worst relative gradient error."""
    sess = ort.InferenceSession(res_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    model64 = _double(model)
    worst = 0.0
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32)
        out = dict(zip(names, sess.run(None, {"input": x}), strict=True))
        _, acts, grads = torch_layer_gradients(
            model64, x.astype(np.float64), layers, classes=out[contract.CLASS_OUTPUT]
        )
        for k, layer in enumerate(layers):
            got = out[contract.gradient_name(k)]
            assert_gradients_close(got, grads[k], TOL, f"{layer} batch {batch}")
            assert max_rel_err(out[contract.activation_name(k)], acts[k]) <= TOL
            worst = max(worst, max_rel_err(got, grads[k]))
    return worst


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


@pytest.mark.model
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_shape_arithmetic_module_differentiates_without_size(dynamo: bool) -> None:
    model = _tiny()
    res = export_torch(model, (1, 3, 32, 32), layers=["stem", "mid"], dynamo=dynamo)
    assert res.input.height == 32 and res.input.width == 32
    err = _check_gradients(res.model, model, ["stem", "mid"], 32)
    print(f"ShuffleSliceWindows ({'dynamo' if dynamo else 'legacy'}): max rel err {err:.2g}")


@pytest.mark.model
def test_dynamic_height_width_needs_size_and_works_with_it(tmp_path) -> None:
    model = _tiny()
    src = tmp_path / "dynamic_hw.onnx"
    src.write_bytes(_dynamic_hw_onnx(model, 32))
    m = onnx.load(str(src))
    stem = next(n.output[0] for n in m.graph.node if n.op_type == "Conv")
    with pytest.raises(ExportError, match="--size"):
        export_onnx(src, layers=[stem])
    res = export_onnx(src, layers=[stem], size=(32, 32))
    _check_gradients(res.model, model, ["stem"], 32)


class SliceOnly(nn.Module):
    """The gradient path's only size-dependent op is a Slice whose end is ``H // 2``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x[:, :, : x.size(2) // 2].mean((2, 3)))


@pytest.mark.model
def test_dynamic_height_slice_end_asks_for_size(tmp_path) -> None:
    torch.manual_seed(0)
    model = SliceOnly().eval()
    src = tmp_path / "slice.onnx"
    src.write_bytes(_dynamic_hw_onnx(model, 32))
    conv = next(n.output[0] for n in onnx.load(str(src)).graph.node if n.op_type == "Conv")
    res = export_onnx(src, layers=[conv], size=(32, 32))
    _check_gradients(res.model, model, ["conv"], 32)
    with pytest.raises(ExportError, match="--size"):
        export_onnx(src, layers=[conv])


def _stage_output(m: onnx.ModelProto, stage: str, following: str) -> str:
    """The tensor a legacy-exported torchvision model passes from ``stage`` to ``following``
    (node names follow module paths: ``/stage3/...``)."""
    made = {o: n.name for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.name.startswith(f"/{following}/"):
            for i in n.input:
                if made.get(i, "").startswith(f"/{stage}/"):
                    return i
    raise AssertionError(f"no tensor from {stage} to {following}")


@pytest.mark.model
def test_shufflenet_v2_stage3_from_a_plain_legacy_file(tmp_path) -> None:
    """The issue's reproduction: a torchvision ShuffleNetV2 exported by the TorchScript
    exporter with a dynamic batch, ``stage3`` (after its channel-shuffle Reshape) as target."""
    model = torchvision_model("shufflenet_v2_x0_5")
    src = tmp_path / "shufflenet.onnx"
    src.write_bytes(plain_onnx(model, (1, 3, 224, 224)))
    tensor = _stage_output(onnx.load(str(src)), "stage3", "stage4")
    res = export_onnx(src, layers=[tensor])
    err = _check_gradients(res.model, model, ["stage3"], 224)
    print(f"ShuffleNetV2 x0.5 stage3 (legacy file): max rel err {err:.2g}")


@pytest.mark.model
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_shufflenet_v2_stages(dynamo: bool) -> None:
    model = torchvision_model("shufflenet_v2_x0_5")
    layers = ["stage2", "stage3"]
    res = export_torch(model, (1, 3, 224, 224), layers=layers, dynamo=dynamo)
    err = _check_gradients(res.model, model, layers, 224)
    print(f"ShuffleNetV2 x0.5 stage2+3 ({'dynamo' if dynamo else 'legacy'}): max rel err {err:.2g}")
