"""Edge builds: float16 and INT8 (QDQ) models are explained; QOperator models are refused.

* The straight-through rule of a Q/DQ pair: the gradient passes inside the quantizer's range
  and stops outside it (checked against its definition on a hand-built graph).
* float16 (``convert_float_to_float16(keep_io_types=True)``): exported without a false
  refusal (the verification tolerance follows the dtype), gradients within float16 precision of
  float64 autograd of the float model.
* INT8 QDQ (``quantize_static``): target layers found behind DequantizeLinear, a head-only path
  and CAM weights through the dequantized classifier, and on the real EfficientNet-Lite0 photos
  the same top-1 and Grad-CAM maps as the float32 model (bench/edge_models.py has the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.cli import cli
from onnxcam.engine import Explainer
from onnxcam.errors import ExportError
from onnxcam.export import export_onnx, plain_onnx
from onnxcam.export.autodiff import build_backward
from onnxcam.export.graph import GraphView

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))


def _quantize(src: Path, dst: Path, fmt: str, inputs: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.stem + "_prep.onnx")  # constants → initializers, as
    quant_pre_process(str(src), str(prepared))  # onnxruntime's quantization docs recommend

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x} for x in inputs])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return dst


def test_straight_through_gradient_of_a_qdq_pair() -> None:
    """x → Q → DQ → · w → y: dy/dx = w where x/s + zp lies in the uint8 range, else 0 —
    per tensor and per channel (axis 1)."""
    x = np.array([[-3.0, 0.1, 0.5, 2.0, 3.0], [-1.0, -0.2, 0.0, 0.7, 9.0]], np.float32)
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5)
    for scale, zp, axis in (
        (np.array(0.01, np.float32), np.array(128, np.uint8), 1),
        (np.array([0.01, 0.03], np.float32), np.array([100, 20], np.uint8), 0),
    ):
        graph = helper.make_graph(
            [
                helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=axis),
                helper.make_node("Mul", ["d", "w"], ["y"]),
            ],
            "qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
            [numpy_helper.from_array(v, n) for v, n in ((scale, "s"), (zp, "z"), (w, "w"))],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        view = GraphView(m)
        ones = numpy_helper.from_array(np.ones((2, 5), np.float32), "seed")
        m.graph.initializer.append(ones)
        view.reindex()
        grads = build_backward(view, {"y": "seed"}, ["x"])
        m.graph.output.append(helper.make_tensor_value_info(grads["x"], TensorProto.FLOAT, None))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = s.run([grads["x"]], {"x": x})
        sc = scale.reshape(-1, 1) if scale.ndim else scale
        z = zp.astype(np.float32).reshape(-1, 1) if zp.ndim else float(zp)
        r = x / sc + z
        want = np.where((r >= -0.5) & (r <= 255.5), w, 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert (want == 0).any() and (want != 0).any()  # both sides of the range are checked


def _resnet18(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.onnx"
    path.write_bytes(plain_onnx(model, (1, 3, 64, 64)))
    return path, model


def _inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 3, 64, 64)).astype(np.float32) for _ in range(n)]


def _torch_layer4_gradient(model, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
    m64 = torchvision.models.resnet18(num_classes=10).double().eval()
    m64.load_state_dict(model.state_dict())
    feats = {}
    m64.layer4.register_forward_hook(lambda _m, _i, o: feats.__setitem__("a", o))
    out = m64(torch.from_numpy(x).double())
    (g,) = torch.autograd.grad(out[np.arange(len(x)), cls].sum(), feats["a"])
    return g.numpy()


def test_float16_model_exports_and_its_gradient_is_within_float16_precision(tmp_path) -> None:
    from onnxconverter_common import float16

    src, model = _resnet18(tmp_path)
    fp16 = tmp_path / "r18_fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), fp16)
    res = export_onnx(fp16, tmp_path / "r18_fp16.cam.onnx")  # no false refusal
    t = res.targets[0]
    assert "layer4" in t.tensor
    x = np.concatenate(_inputs(2))
    s = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    cls, g = s.run([contract.CLASS_OUTPUT, t.gradient], {"input": x})
    ref = _torch_layer4_gradient(model, x, cls)
    err = np.abs(g.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err < 2e-2, err  # float16: ~3 significant digits


def test_int8_qdq_model_is_explained_behind_dequantize(tmp_path) -> None:
    src, model = _resnet18(tmp_path)
    qdq = _quantize(src, tmp_path / "r18_qdq.onnx", "QDQ", _inputs(8))
    res = export_onnx(qdq, tmp_path / "r18_qdq.cam.onnx")
    t = res.targets[0]
    assert t.producer == "DequantizeLinear" and t.spatial == (2, 2)
    assert t.head_input and t.cam_weight  # through the dequantized classifier weights
    ex = Explainer(str(res.path))
    x = np.concatenate(_inputs(4, seed=1))
    exps = ex.explain_tensor(x, "gradcam,cam,ablationcam", keep_tensors=True)
    cls = np.array([e.target.index for e in exps])
    g = np.stack([e.tensors[contract.gradient_name(0)] for e in exps])
    ref = _torch_layer4_gradient(model, x, cls)
    corr = np.corrcoef(g.ravel(), ref.ravel())[0, 1]
    assert corr > 0.9, corr  # straight-through: the float model's gradient, up to rounding
    for e in exps:
        assert all(np.isfinite(m.feature).all() for m in e.maps.values())


def test_qoperator_model_is_refused_with_what_to_do(tmp_path) -> None:
    src, _ = _resnet18(tmp_path)
    qop = _quantize(src, tmp_path / "r18_qop.onnx", "QOperator", _inputs(4))
    with pytest.raises(ExportError, match=r"QOperator.*QLinearConv.*QuantFormat.QDQ"):
        export_onnx(qop)
    r = CliRunner().invoke(cli, ["export", str(qop), "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code != 0 and "QOperator" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.model
def test_lite0_float16_and_int8_agree_with_float32_on_photos(tmp_path) -> None:
    """Real weights, real photos: the numbers of docs/benchmarks.md (bench/edge_models.py)."""
    import edge_models

    images = edge_models.photos()
    paths = edge_models.builds(tmp_path, images)
    paths.pop("_plain")
    ref = Explainer(paths["float32"]).explain(images, "gradcam", relu=False)
    classes = [e.target.index for e in ref]
    for name, top1_min, corr_min in (("float16", 1.0, 0.999), ("int8-qdq", 0.75, 0.95)):
        ex = Explainer(paths[name])
        own = ex.explain(images, "gradcam", relu=False)
        agree = np.mean([e.target.index == c for e, c in zip(own, classes, strict=True)])
        assert agree >= top1_min, (name, agree)
        same = ex.explain(images, "gradcam", relu=False, classes=classes)  # the same class
        corr = [
            edge_models.pearson(e.maps["gradcam"].feature, r.maps["gradcam"].feature)
            for e, r in zip(same, ref, strict=True)
        ]
        assert min(corr) >= corr_min, (name, corr)
