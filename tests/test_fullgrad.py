"""FullGrad (``export --fullgrad``, ``-m fullgrad``): the graph's bias map and the method's map,
against pytorch-grad-cam's ``FullGrad`` and against torch autograd in float64.

The models are random-init torchvision networks whose BatchNorms were calibrated on a random
batch, with random affine parameters: at torchvision's initialisation (running mean 0,
variance 1, β = 0) every BatchNorm bias β − μγ/√(σ² + ε) is 0, so the bias map would be all
zeros and the comparison would test the input term only. ResNet-18 is exported as torch does by
default (each BatchNorm folded into the Conv before it: a Conv with a bias), MobileNetV3-Small
without constant folding (Conv without bias → BatchNormalization, and its squeeze-excitation
Convs with biases on 1×1 maps).
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from test_cli_export import assert_one_line_error, onnxcam

from onnxcam import Explainer, contract
from onnxcam.errors import ExportError, MethodError

SIZE = 96
TOL = 1e-4


def _calibrated(name: str) -> torch.nn.Module:
    """torchvision ``name`` (random init), its BatchNorms given random γ, β and the statistics
    of a random batch; eval mode."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the running statistics become the batch's
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.num_features, generator=g))
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, SIZE, SIZE, generator=g))
    return net.eval()


def _torch_export(net: torch.nn.Module, path, size: int = SIZE, fold: bool = True) -> None:
    torch.onnx.export(
        net,
        torch.randn(1, 3, size, size),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}},
        opset_version=17,
        dynamo=False,
        do_constant_folding=fold,
    )


@pytest.fixture(scope="module", params=[("resnet18", True), ("mobilenet_v3_small", False)])
def model(request, tmp_path_factory):
    """(torch model in float64, exported graph path)."""
    from onnxcam.export import export_onnx

    name, fold = request.param
    net = _calibrated(name)
    d = tmp_path_factory.mktemp(name)
    src, out = d / "model.onnx", d / "model.cam.onnx"
    _torch_export(net, src, fold=fold)
    export_onnx(src, out, preset="torch", fullgrad=True)
    return name, net.double(), out


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)


def _pytorch_grad_cam(net: torch.nn.Module, x: np.ndarray, classes) -> np.ndarray:
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with contextlib.redirect_stdout(io.StringIO()):  # "target_layers is ignored in FullGrad"
        cam = FullGrad(net, [])
    return cam(torch.from_numpy(x).double(), [ClassifierOutputTarget(int(c)) for c in classes])


def _biased(net: torch.nn.Module) -> list[torch.nn.Module]:
    """pytorch-grad-cam's FullGrad layers: Conv2d and BatchNorm2d with a bias."""
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d)
    return [m for m in net.modules() if type(m) in kinds and m.bias is not None]


def _bias(m: torch.nn.Module) -> torch.Tensor:
    if isinstance(m, torch.nn.BatchNorm2d):
        return m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
    return m.bias


def _autograd_bias_map(net: torch.nn.Module, x: np.ndarray, classes) -> tuple[np.ndarray, int]:
    """Σ over the biased layers of bilinear(Σ_c ψ(b_c · ∂S/∂z_c)), from torch autograd in
    float64 (ψ = |·|, then (t − min) / (1e-7 + max − min) per image and channel; resized by
    ``F.interpolate``, half-pixel centres), and how many layers have more than one position."""
    import torch.nn.functional as F

    ref = copy.deepcopy(net).double()
    for m in ref.modules():  # keep every layer output intact for autograd
        if hasattr(m, "inplace"):
            m.inplace = False
    layers = _biased(ref)
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in layers]
    y = ref(torch.from_numpy(x).double())
    for h in hooks:
        h.remove()
    score = y[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    grads = torch.autograd.grad(score, outs)
    total = torch.zeros(len(x), 1, SIZE, SIZE, dtype=torch.float64)
    spread = 0
    for m, g in zip(layers, grads, strict=True):
        t = (_bias(m).detach()[None, :, None, None] * g).abs()
        t = t - t.amin(dim=(2, 3), keepdim=True)
        t = t / (1e-7 + t.amax(dim=(2, 3), keepdim=True))
        total += F.interpolate(t.sum(1, keepdim=True), (SIZE, SIZE), mode="bilinear")
        spread += g.shape[2] * g.shape[3] > 1
    return total[:, 0].numpy(), spread


def test_fullgrad_matches_pytorch_grad_cam(model, x):
    """The shown map = pytorch-grad-cam's ``FullGrad`` (float64) within 1e-4 of its range
    (one image: it resizes every channel of every layer, seconds per image; the batch is
    checked against autograd below)."""
    _, net, path = model
    res = Explainer(path, device="cpu").explain_tensor(x[:1], "fullgrad")
    want = _pytorch_grad_cam(net, x[:1], [r.target.index for r in res])
    for r, w in zip(res, want, strict=True):
        m = r.maps["fullgrad"]
        assert m.feature.shape == (SIZE, SIZE) and m.raw.min() >= 0
        assert np.abs(m.feature - w).max() <= TOL * w.max()


def test_bias_map_equals_autograd(model, x):
    """The graph's ``onnxcam_fullgrad_bias_k`` = the same sum from torch autograd of every
    biased layer's output in float64; the 1×1 maps of MobileNet's squeeze-excitation Convs
    add exactly 0 and are left out of the graph."""
    name, net, path = model
    ex = Explainer(path, device="cpu")
    pixel = ex.info.targets[-1]
    assert pixel.pixels and pixel.fullgrad == contract.fullgrad_bias_name(pixel.index)
    assert "fullgrad" not in ex.info.targets[0].to_json()  # a feature layer has none
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, bias = s.run(["logits", pixel.fullgrad], {"input": x})
    want, layers = _autograd_bias_map(net, x, logits.argmax(1))
    assert pixel.fullgrad_layers == layers == {"resnet18": 20, "mobilenet_v3_small": 34}[name]
    assert bias.shape == (len(x), SIZE, SIZE)
    assert want.min() > 0  # every layer contributes: the comparison is not of zeros
    assert np.abs(bias - want).max() <= TOL * want.max()


def test_bias_map_is_gated(model, x):
    """Mode 1 (forward only) computes no bias map."""
    _, _, path = model
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = Explainer(path, device="cpu").info.targets[-1].fullgrad
    mode = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, np.int64)}
    (b,) = s.run([name], {"input": x, **mode})
    assert b.size == 0


class _ConvBiasBN(torch.nn.Module):
    """VGG-BN-style blocks: Conv2d with a bias, then BatchNorm2d (two FullGrad layers each)."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn
        self.features = c.Sequential(
            c.Conv2d(3, 8, 3, padding=1), c.BatchNorm2d(8), c.ReLU(),
            c.Conv2d(8, 16, 3, stride=2, padding=1), c.BatchNorm2d(16), c.ReLU(),
        )  # fmt: skip
        self.fc = c.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_conv_bias_then_batchnorm(tmp_path, x):
    """A Conv with a bias before a BatchNorm: unfolded, both biases are terms (as in
    pytorch-grad-cam, which hooks both modules); folded by torch's exporter, the graph has one
    Conv whose bias is (b − μ)γ/√(σ² + ε) + β — one term, a different map (the documented
    difference for VGG-BN-style models)."""
    from onnxcam.export import export_onnx

    torch.manual_seed(0)
    net = _ConvBiasBN()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.eval()
    counts, maps = {}, {}
    for fold in (False, True):
        src, out = tmp_path / f"m{fold}.onnx", tmp_path / f"m{fold}.cam.onnx"
        _torch_export(net, src, fold=fold)
        res = export_onnx(src, out, preset="torch", fullgrad=True)
        counts[fold] = res.targets[-1].fullgrad_layers
        (r,) = Explainer(out, device="cpu").explain_tensor(x[:1], "fullgrad")
        maps[fold] = r.maps["fullgrad"].feature
    assert counts == {False: 4, True: 2}
    want = _pytorch_grad_cam(net.double(), x[:1], [r.target.index])[0]
    assert np.abs(maps[False] - want).max() <= TOL
    assert np.abs(maps[True] - want).max() > 1e-2


def test_export_refuses_a_model_without_biased_layers(tmp_path):
    """No Conv with a bias and no BatchNorm between the input and the score: an
    ``ExportError`` that says what FullGrad needs (a Gemm bias does not count)."""
    from onnxcam.export import export_onnx

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    src = tmp_path / "m.onnx"
    _torch_export(net, src, size=32)
    with pytest.raises(ExportError, match="FullGrad needs layers with a bias") as e:
        export_onnx(src, tmp_path / "o.onnx", fullgrad=True)
    assert "\n" not in str(e.value)


def test_fullgrad_needs_the_fullgrad_export(tiny_onnx, tmp_path, photos):
    """``onnxcam run -m fullgrad`` on a graph exported without ``--fullgrad`` (with or without
    ``--input-gradient``) is a one-line error naming the flag; with it, the map is written."""
    plain, pixels, full = (tmp_path / f"{n}.cam.onnx" for n in ("plain", "pixels", "full"))
    for out, flags in ((plain, ()), (pixels, ("--input-gradient",)), (full, ("--fullgrad",))):
        r = onnxcam("export", tiny_onnx, "-o", out, *flags)
        assert r.returncode == 0, r.stderr
    for out in (plain, pixels):
        r = onnxcam("run", out, photos["chelsea"], "-m", "fullgrad", "-o", tmp_path / "x")
        assert_one_line_error(r, "fullgrad", "--fullgrad")
    r = onnxcam("run", full, photos["chelsea"], "-m", "fullgrad", "-o", tmp_path / "ok")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ok" / "chelsea_fullgrad.png").is_file()
    with pytest.raises(MethodError, match="--fullgrad"):
        Explainer(pixels, device="cpu").explain_tensor(np.zeros((1, 3, 32, 32)), "fullgrad")
