"""Image inputs as edge models take them: uint8 pixels, normalisation inside the graph, and the
preprocessing presets (torch, caffe, tf, unit, raw).

A model that normalises its input itself must not be normalised a second time by the runtime:
the exporter reads that from the graph (an in-graph division by 255 → raw pixels) or stops and
asks. Each check compares against the same network fed the classic way (normalised outside).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from onnxcam import contract
from onnxcam.cli import cli
from onnxcam.engine import Explainer
from onnxcam.errors import ExportError
from onnxcam.export import export_onnx, export_torch
from onnxcam.image import preprocess

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Net(nn.Module):
    """The network itself: NCHW float input, normalised outside."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Pixels(nn.Module):
    """``net`` behind in-graph preprocessing: 0–255 pixels (uint8 NHWC, or float NCHW) →
    /255 → ImageNet mean/std (``divide=False``: mean/std only, on [0, 1] input)."""

    def __init__(self, net: nn.Module, uint8_nhwc: bool, divide: bool = True) -> None:
        super().__init__()
        self.net, self.uint8_nhwc, self.divide = net, uint8_nhwc, divide

    def forward(self, x):
        if self.uint8_nhwc:
            x = x.permute(0, 3, 1, 2).float()
        if self.divide:
            x = x / 255.0
        return self.net((x - MEAN) / STD)


def _photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = np.round(rng.uniform(0, 255, size=(4, 4, 3)))  # whole pixels: exact as uint8
    return np.kron(low, np.ones((8, 8, 1))).astype(np.float32)  # 32×32 blocks of colour


def _maps(model, **kw) -> tuple[list, np.ndarray]:
    ex = Explainer(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model)
    exps = ex.explain([_photo(0), _photo(1)], "gradcam", **kw)
    return [e.target.index for e in exps], np.stack([e.maps["gradcam"].feature for e in exps])


def test_uint8_nhwc_input_takes_pixels_and_explains_like_the_float_model() -> None:
    net = Net().eval()
    res = export_torch(Pixels(net, uint8_nhwc=True).eval(), (1, 32, 32, 3), input_dtype="uint8")
    spec = res.input
    assert (spec.dtype, spec.layout, spec.scale, spec.mean, spec.std) == (
        "uint8",
        "NHWC",
        1.0,
        (0.0,),
        (1.0,),
    )
    ref = export_torch(net, (1, 3, 32, 32))  # the same net, ImageNet normalisation outside
    assert ref.input.dtype == "float32" and ref.input.mean == contract.IMAGENET_MEAN
    cls, maps = _maps(res.model)
    cls_ref, maps_ref = _maps(ref.model)
    assert cls == cls_ref
    np.testing.assert_allclose(maps, maps_ref, atol=1e-5)
    assert np.abs(maps[0] - maps[1]).max() > 0.05  # the maps depend on the photo
    # perturbation methods feed masked pixels: cast back to uint8 on the way in
    ex = Explainer(res.model.SerializeToString())
    (e,) = ex.explain([_photo(0)], "scorecam,occlusion,ablationcam", batch_size=16)
    assert all(np.isfinite(m.feature).all() for m in e.maps.values())
    assert np.ptp(e.maps["scorecam"].feature) > 0 and np.ptp(e.maps["ablationcam"].feature) > 0


def test_in_graph_normalisation_of_0_255_floats_is_detected() -> None:
    net = Net().eval()
    res = export_torch(Pixels(net, uint8_nhwc=False).eval(), (1, 3, 32, 32))
    assert (res.input.scale, res.input.mean, res.input.std) == (1.0, (0.0,), (1.0,))
    cls, maps = _maps(res.model)
    cls_ref, maps_ref = _maps(export_torch(net, (1, 3, 32, 32)).model)
    assert cls == cls_ref
    np.testing.assert_allclose(maps, maps_ref, atol=1e-5)


def test_normalisation_without_a_pixel_scale_is_a_question_not_a_guess() -> None:
    net = Net().eval()
    module = Pixels(net, uint8_nhwc=False, divide=False).eval()
    with pytest.raises(ExportError, match=r"normalises its input itself.*--preset raw"):
        export_torch(module, (1, 3, 32, 32))
    res = export_torch(module, (1, 3, 32, 32), preset="unit")  # the graph takes [0, 1]
    assert (res.input.scale, res.input.mean) == (1 / 255, (0.0,))
    cls, maps = _maps(res.model)
    cls_ref, maps_ref = _maps(export_torch(net, (1, 3, 32, 32)).model)
    assert cls == cls_ref
    np.testing.assert_allclose(maps, maps_ref, atol=1e-5)


def test_uint8_input_refuses_a_normalisation() -> None:
    module = Pixels(Net().eval(), uint8_nhwc=True).eval()
    with pytest.raises(ExportError, match="uint8"):
        export_torch(module, (1, 32, 32, 3), input_dtype="uint8", mean=[0.5])
    with pytest.raises(ExportError, match="uint8"):
        export_torch(module, (1, 32, 32, 3), input_dtype="uint8", preset="torch")


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("caffe", lambda img: img[..., ::-1] - np.array([103.939, 116.779, 123.68])),
        ("tf", lambda img: img / 127.5 - 1.0),
        ("unit", lambda img: img / 255.0),
        ("raw", lambda img: img),
        ("torch", lambda img: (img / 255.0 - contract.IMAGENET_MEAN) / contract.IMAGENET_STD),
    ],
)
def test_presets_preprocess_as_their_frameworks_do(preset, expected, tmp_path) -> None:
    """Keras' ``preprocess_input`` modes (caffe: BGR minus the ImageNet means; tf: [−1, 1])
    and torchvision's normalisation, computed by hand from their definitions."""
    res = export_onnx(_net_onnx(tmp_path), preset=preset)
    img = _photo()
    got = preprocess([img], res.input)[0].transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected(img.astype(np.float64)), rtol=1e-5, atol=1e-4)


def _net_onnx(tmp_path):
    from onnxcam.export import plain_onnx

    path = tmp_path / "net.onnx"
    path.write_bytes(plain_onnx(Net().eval(), (1, 3, 32, 32)))
    return path


def test_explicit_values_override_the_preset_and_the_cli_records_them(tmp_path) -> None:
    src = _net_onnx(tmp_path)
    res = export_onnx(src, preset="caffe", color="RGB")
    assert res.input.color == "RGB" and res.input.mean == (103.939, 116.779, 123.68)
    out = tmp_path / "net.cam.onnx"
    r = CliRunner().invoke(cli, ["export", str(src), "-o", str(out), "--preset", "tf"])
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    spec = json.loads(meta[contract.META_INPUT])
    assert (spec["scale"], spec["mean"], spec["std"], spec["dtype"]) == (
        1 / 127.5,
        [1.0],
        [1.0],
        "float32",
    )
    r = CliRunner().invoke(cli, ["export", str(src), "-o", str(out), "--preset", "bogus"])
    assert r.exit_code != 0 and "Traceback" not in r.output
