"""`onnxcam inspect`: a layer's activation maps and filter visualisations, read from the layer's
probe graph (``onnxcam.export.probe``) in plain onnxruntime.

Checked against what does not go through the probe: the source model run in onnxruntime with the
layer as an output (channel means and their order), torch autograd in float64 (the probe's input
gradient), and a hand-built network whose channels are known edge filters (what the
visualisation shows).
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from test_cli_export import assert_one_line_error, onnxcam

from onnxcam.contract import IMAGENET_MEAN, IMAGENET_STD
from onnxcam.errors import LayerNotFoundError, MethodError
from onnxcam.export import plain_onnx
from onnxcam.inspect import AscentOptions, Probe, inspect_image, top_channels

SIZE = 64
LAYER = "/layer2/layer2.1/relu_1/Relu_output_0"
"""resnet18's ``layer2`` output in the torch exporter's names (``onnxcam layers``)."""

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(random-init resnet18 in float64, its plain ONNX file at 64×64, dynamic batch)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("r18") / "resnet18.onnx"
    path.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    return net.double(), path


@pytest.fixture(scope="module")
def probe(resnet) -> Probe:
    return Probe.build(resnet[1], LAYER, device="cpu")


def _layer2(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    for m in (net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2):
        x = m(x)
    return x


def _normalise(p: torch.Tensor) -> torch.Tensor:
    """0–255 RGB pixels → the torch preset's model input (ImageNet mean and std)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=p.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=p.dtype).view(1, 3, 1, 1)
    return (p / 255.0 - mean) / std


def _source_means(path, layer: str, x: np.ndarray) -> np.ndarray:
    """The layer's channel means from the *source* model, with the layer added as an output."""
    m = onnx.load(str(path))
    m.graph.output.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (A,) = sess.run([layer], {"input": x})
    return A.mean(axis=(2, 3), dtype=np.float64)


def _torch_preprocess(rgb: np.ndarray) -> np.ndarray:
    """The torch preset written out: area-resize to 64×64, /255, ImageNet mean and std, NCHW."""
    r = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA) / 255.0
    x = (r - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_activation_grid_ranks_channels_as_the_source_model(resnet, photos, tmp_path):
    """The channels shown and their means = the layer read from the source model itself."""
    _, path = resnet
    res = inspect_image(path, photos["chelsea"], LAYER, tmp_path, channels=10, device="cpu")
    rgb = cv2.imread(str(photos["chelsea"]))[..., ::-1].astype(np.float32)
    want = _source_means(path, LAYER, _torch_preprocess(rgb))[0]
    assert [r.index for r in res.channels] == top_channels(want, 10)
    assert [r.rank for r in res.channels] == list(range(1, 11))
    got = np.array([r.mean for r in res.channels])
    np.testing.assert_allclose(got, want[[r.index for r in res.channels]], rtol=1e-5)
    assert np.all(np.diff(got) <= 0) and got[0] == pytest.approx(want.max(), rel=1e-5)
    grid = cv2.imread(str(res.written["activations"]))
    assert grid is not None and grid.shape[0] > 3 * 128 and grid.shape[1] > 4 * 128  # 4×3 tiles
    assert "filters" not in res.written  # only with filters=True


def test_probe_gradient_equals_torch_autograd(resnet, probe):
    """∂ mean(layer2[:, c]) / ∂ pixels, one channel per row, = torch autograd in float64 of
    the same function (pixels → ImageNet normalisation → resnet18 up to layer2)."""
    net, _ = resnet
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, size=(3, 3, SIZE, SIZE)).astype(np.float32)
    channels = [5, 17, 100]
    got = probe.gradients(pixels, channels)
    means = probe.channel_means(pixels, channels)

    p = torch.from_numpy(pixels).double().requires_grad_(True)
    A = _layer2(net, _normalise(p)).mean(dim=(2, 3))  # [3, 128]
    picked = A[torch.arange(3), torch.tensor(channels)]
    (want,) = torch.autograd.grad(picked.sum(), p)
    np.testing.assert_allclose(means, picked.detach().numpy(), rtol=1e-5)
    for g, w in zip(got, want.numpy(), strict=True):
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()


def test_gradient_ascent_raises_each_channel_and_batching_does_not_mix(probe, photos):
    """Each channel's mean grows several times over its start and beyond its value on the
    photo; each image excites its own channel most; a channel alone gets the same image."""
    x = _torch_preprocess(cv2.imread(str(photos["chelsea"]))[..., ::-1].astype(np.float32))
    photo_means = probe.activations(x)[0].mean(axis=(1, 2))
    channels = top_channels(photo_means, 4)
    found = probe.visualize(channels)
    assert np.all(found.final >= 3 * found.start), (found.start, found.final)
    assert np.all(found.final > photo_means[channels])
    # every channel on every image: channel j responds most to its own image
    cross = np.stack([probe.channel_means(found.pixels, [c] * len(channels)) for c in channels])
    assert np.array_equal(cross.argmax(axis=1), np.arange(len(channels))), cross
    alone = probe.visualize([channels[2]])
    np.testing.assert_allclose(alone.pixels[0], found.pixels[2], atol=0.05)
    assert found.pixels.min() >= 0 and found.pixels.max() <= 255


def test_an_nhwc_layer_matches_torch(tmp_path):
    """A channels-last layer (conv → permute → LayerNorm → ReLU, as ConvNeXt's blocks): its
    channel means and their pixel gradients = torch's, in float64."""

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.norm = torch.nn.LayerNorm(6)
            self.fc = torch.nn.Linear(6, 4)

        def layer(self, x):
            return torch.relu(self.norm(self.conv(x).permute(0, 2, 3, 1)))  # [B, H, W, C]

        def forward(self, x):
            return self.fc(self.layer(x).mean(dim=(1, 2)))

    torch.manual_seed(0)
    net = ChannelsLast().eval()
    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(
        net, torch.zeros(1, 3, 16, 16), str(path), input_names=["input"],
        dynamic_axes={"input": {0: "b"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    probe = Probe.build(path, "/Relu_output_0", device="cpu")
    assert probe.layer.layout == "NHWC" and probe.channels == 6
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 3, 16, 16)).astype(np.float32)
    p = torch.from_numpy(pixels).double().requires_grad_(True)
    A = net.double().layer(_normalise(p)).mean(dim=(1, 2))  # [2, 6]
    picked = A[torch.arange(2), torch.tensor([4, 1])]
    (want,) = torch.autograd.grad(picked.sum(), p)
    np.testing.assert_allclose(probe.activations(probe.to_input(pixels)).mean(axis=(2, 3)),
                               A.detach().numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
    got = probe.gradients(pixels, [4, 1])
    assert np.abs(got - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max()


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    """A conv net whose layer is two known filters: channel 0 a vertical-edge (Sobel x)
    detector, channel 1 a horizontal-edge (Sobel y) one, then ReLU, pooling and a head."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

    class Edges(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1, bias=False)
            with torch.no_grad():
                self.conv.weight[0] = sobel.expand(3, 3, 3) / 3
                self.conv.weight[1] = sobel.T.expand(3, 3, 3) / 3
            self.relu = torch.nn.ReLU()
            self.fc = torch.nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))

    path = tmp_path_factory.mktemp("edges") / "edges.onnx"
    torch.onnx.export(
        Edges().eval(),
        torch.zeros(1, 3, 32, 32),
        str(path),
        input_names=["input"],
        dynamic_axes={"input": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_filter_images_show_what_the_filters_detect(edges):
    """The vertical-edge channel's image is vertical stripes (it changes from column to
    column much more than from row to row), the horizontal-edge channel's horizontal ones."""
    probe = Probe.build(edges, "/relu/Relu_output_0", device="cpu")
    found = probe.visualize([0, 1], AscentOptions(steps=32))
    grey = found.pixels.mean(axis=1)  # [2, H, W]
    across = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))  # change from column to column
    down = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))  # change from row to row
    assert across[0] > 2.5 * down[0], (across, down)  # measured 3.5 (stripes wobble a little)
    assert down[1] > 2.5 * across[1], (across, down)


def test_an_onnxcam_export_is_probed_through_its_original_forward(tiny_onnx, tmp_path):
    """A ``.cam.onnx`` (here with MaxPool's indices switched on by the export) gives the same
    probe as its source, and keeps the preprocessing it recorded."""
    from onnxcam.export import export_onnx
    from onnxcam.export.api import _all_nodes

    cam = tmp_path / "tiny.cam.onnx"
    export_onnx(tiny_onnx, cam, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2], input_gradient=True)
    pools = [n for n, _ in _all_nodes(onnx.load(str(cam)).graph) if n.op_type == "MaxPool"]
    assert any(len(n.output) == 2 for n in pools)  # (in the forward copy's explaining branch)
    layer = "/act/Relu_output_0"
    plain = Probe.build(tiny_onnx, layer, device="cpu")
    done = Probe.build(cam, layer, device="cpu")
    assert done.spec.mean == (0.5, 0.4, 0.3) and done.spec.std == (0.2, 0.2, 0.2)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(done.activations(x), plain.activations(x))
    cls = np.array([1, 3])
    (g_done,) = done.explainer._run(x, cls, [done.pixels.gradient]).values()
    (g_plain,) = plain.explainer._run(x, cls, [plain.pixels.gradient]).values()
    np.testing.assert_array_equal(g_done, g_plain)


def test_bad_requests_are_one_line_errors(resnet, probe):
    with pytest.raises(LayerNotFoundError, match=r"unknown layer .nope.; candidates"):
        Probe.build(resnet[1], "nope", device="cpu")
    with pytest.raises(
        MethodError, match=r"channel 128 is out of range: .* has 128 channels \(0\.\.127\)"
    ):
        probe.visualize([3, 128])
    with pytest.raises(MethodError, match="step_size"):
        AscentOptions(step_size=0)


def test_cli_writes_pngs_and_html(resnet, photos, tmp_path):
    _, path = resnet
    out = tmp_path / "out"
    r = onnxcam(
        "inspect", path, photos["coffee"], "--layer", LAYER, "-o", out, "--filters",
        "--channels", "4", "--steps", "4", "--device", "cpu", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    shown = [c["index"] for c in doc["channels"]]
    assert len(shown) == 4 and all("final" in c for c in doc["channels"])
    assert set(doc["written"]) == {"activations", "filters", "html"}
    filters = cv2.imread(doc["written"]["filters"])
    assert filters is not None and filters.shape[1] >= 2 * 96
    page = (out / "inspect.html").read_text(encoding="utf-8")
    assert all(f"<b>#{c}</b>" in page for c in shown)
    assert page.count("data:image/jpeg;base64,") == 1 + 2 * 4  # image, maps, filters
    assert "http" not in page.replace("http-equiv", "")  # self-contained


def test_cli_bad_layer_or_image_is_one_line(resnet, photos, tmp_path):
    _, path = resnet
    r = onnxcam("inspect", path, photos["coffee"], "--layer", "nope", "-o", tmp_path)
    assert_one_line_error(r, "unknown layer 'nope'")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = onnxcam("inspect", path, broken, "--layer", LAYER, "-o", tmp_path)
    assert_one_line_error(r, "broken.jpg", "not a decodable image")


def test_the_runtime_side_loads_neither_onnx_nor_torch():
    code = "import sys, onnxcam.inspect; print(sorted({'onnx', 'torch'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
