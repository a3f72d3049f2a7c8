"""Pixel-space methods (``onnxcam.attribution``) and the input gradient they read
(``export --input-gradient``, ``--rules guided,deconvnet``), against captum and pytorch-grad-cam
on the same random-init torchvision models (captum in float64; the graph runs in float32).

Where the conventions agree the maps match within 1e-4 of their largest value (at 99% of the
pixels: see ``_relative``): every map is the attribution summed over the input channels, as
captum's ``visualize_image_attr`` shows it.
SmoothGrad is checked on the same noisy inputs (captum's ``NoiseTunnel`` draws its own noise);
Integrated Gradients with captum's own Gauss–Legendre points.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from onnxcam import Explainer, contract
from onnxcam.errors import MethodError, OnnxcamError
from onnxcam.export import plain_onnx
from onnxcam.scoring import image_rng

captum = pytest.importorskip("captum.attr")

SIZE = 96
TOL = 1e-4


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    """The error at the 99th percentile of pixels, relative to the map's largest value.

    Not the maximum: a ReLU whose input is within ~1e-7 of zero takes a different side in
    onnxruntime's float32 and torch's float64 arithmetic (seen on a random-init vgg11, whose
    activations without BatchNorm are tiny: one 48×48 position at 6e-8 moved 64 of 9216
    input pixels by 1.3%); every other pixel agrees within 1e-6."""
    err = np.abs(got - want)
    return float(np.percentile(err, 99) / max(np.abs(want).max(), 1e-30))


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v3_small"])
def model(request, tmp_path_factory):
    """(torch model in float64, exported graph path): random init, eval, the graph with the
    input gradient and both ReLU rule sets."""
    from onnxcam.export import export_onnx

    torch.manual_seed(0)
    net = getattr(torchvision.models, request.param)(weights=None).eval()
    d = tmp_path_factory.mktemp(request.param)
    src = d / "model.onnx"
    src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    out = d / "model.cam.onnx"
    export_onnx(src, out, preset="torch", input_gradient=True, rules="guided,deconvnet")
    return request.param, net.double(), out


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)


def _explain(path, x, methods, **kw):
    ex = Explainer(path, device="cpu")
    return ex, ex.explain_tensor(x, methods, **kw)


def _target(res) -> torch.Tensor:
    return torch.tensor([r.target.index for r in res])


def test_export_adds_the_pixel_target(model):
    _, _, path = model
    ex = Explainer(path, device="cpu")
    pixel = [t for t in ex.info.targets if t.pixels]
    assert len(pixel) == 1 and pixel[0].index == len(ex.info.targets) - 1
    assert set(pixel[0].rules) == {"guided", "deconvnet"}
    assert pixel[0].head_input is None  # its head would be the whole model
    assert not ex.info.targets[0].pixels  # the default layer is still a feature map


@pytest.mark.parametrize(
    ("method", "peer"),
    [
        ("saliency", "Saliency"),
        ("gradient-input", "InputXGradient"),
        ("guided-backprop", "GuidedBackprop"),
        ("deconvnet", "Deconvolution"),
    ],
)
def test_one_run_methods_match_captum(model, x, method, peer):
    """Each map = captum's attribution summed over the channels, within 1e-4."""
    _, net, path = model
    _, res = _explain(path, x, method)
    attr = getattr(captum, peer)(net).attribute(torch.from_numpy(x).double(), target=_target(res))
    want = attr.detach().numpy().sum(axis=1)
    for r, w in zip(res, want, strict=True):
        assert _relative(r.maps[method].raw, w) <= TOL, method


def test_guided_backprop_matches_pytorch_grad_cam(model, x):
    """pytorch-grad-cam's ``GuidedBackpropReLUModel`` (its ReLU modules swapped) gives the
    same input gradient."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    _, net, path = model
    _, res = _explain(path, x[:1], "guided-backprop")
    gb = GuidedBackpropReLUModel(net, device="cpu")
    want = gb(torch.from_numpy(x[:1]).double(), target_category=res[0].target.index)
    assert _relative(res[0].maps["guided-backprop"].raw, want.sum(axis=2)) <= TOL


def test_guided_gradcam_matches_captum(model, x):
    """Guided Grad-CAM at the default layer = captum's ``GuidedGradCam`` on that module."""
    name, net, path = model
    _, res = _explain(path, x, "guided-gradcam")
    layer = net.layer4 if name == "resnet18" else net.features  # the default target layer
    attr = captum.GuidedGradCam(net, layer).attribute(
        torch.from_numpy(x).double(), target=_target(res)
    )
    want = attr.detach().numpy().sum(axis=1)
    for r, w in zip(res, want, strict=True):
        assert _relative(r.maps["guided-gradcam"].raw, w) <= TOL


@pytest.mark.parametrize(("baseline", "tol"), [("uniform", TOL), ("black", 2e-3)])
def test_integrated_gradients_match_captum(model, x, baseline, tol):
    """Integrated Gradients = captum's with the same baseline and Gauss–Legendre points; the
    completeness error is reported and equals captum's convergence delta.

    At the black baseline the path starts at a constant image, where max-pooling windows
    hold exact ties: float32 and float64 then route some gradients through different
    positions near α = 0 (≈ 6e-4 of the map's range), hence its looser tolerance."""
    from onnxcam.plan import ExplainOptions

    _, net, path = model
    steps = 16
    ex, res = _explain(path, x, "integrated-gradients", ig_steps=steps, ig_baseline=baseline)
    opts = ExplainOptions(ig_baseline=baseline)
    base = np.stack([ex._baseline(xi, opts) for xi in x])
    attr, delta = captum.IntegratedGradients(net).attribute(
        torch.from_numpy(x).double(),
        baselines=torch.from_numpy(base).double(),
        target=_target(res),
        n_steps=steps,
        method="gausslegendre",
        return_convergence_delta=True,
    )
    want = attr.detach().numpy().sum(axis=1)
    for r, w, d in zip(res, want, delta.detach().numpy(), strict=True):
        m = r.maps["integrated-gradients"]
        assert _relative(m.raw, w) <= tol
        assert m.stats["completeness_error"] == pytest.approx(float(d), abs=1e-3 * abs(d) + 1e-4)


@pytest.mark.parametrize("baseline", ["blur", "uniform"])
def test_integrated_gradients_baselines(model, x, baseline):
    """Other baselines give other maps, and the reported completeness error is Σ attributions
    − (S(x) − S(x′)) with both scores taken from the model's own output. (Its size depends
    on the path: Gauss–Legendre assumes a smooth integrand, and a random-init VGG's max-pools
    make it rough; captum's convergence delta is the same number, checked above.)"""
    from onnxcam.plan import ExplainOptions

    _, _, path = model
    ex, res = _explain(path, x[:1], "integrated-gradients", ig_steps=16, ig_baseline=baseline)
    _, black = _explain(path, x[:1], "integrated-gradients", ig_steps=16)
    m = res[0].maps["integrated-gradients"]
    assert _relative(m.raw, black[0].maps["integrated-gradients"].raw) > 1e-3
    base = ex._baseline(x[0], ExplainOptions(ig_baseline=baseline))
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    z = s.run(["logits"], {"input": np.stack([x[0], base])})[0][:, res[0].target.index]
    want = float(m.raw.sum(dtype=np.float64) - (z[0] - z[1]))
    assert m.stats["completeness_error"] == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_smoothgrad_on_the_same_noise(model, x):
    """SmoothGrad, SmoothGrad² and VarGrad = captum ``Saliency(abs=False)`` on the same noisy
    copies, averaged as captum's ``NoiseTunnel`` does."""
    _, net, path = model
    n, noise = 4, 0.1
    methods = "smoothgrad,smoothgrad-sq,vargrad"
    _, res = _explain(path, x, methods, smooth_samples=n, smooth_noise=noise)
    sal = captum.Saliency(net)
    for i, r in enumerate(res):
        xi = x[i]
        eps = image_rng(0, xi).normal(size=(n, *xi.shape)).astype(np.float32)
        noisy = xi[None] + eps * np.float32(noise * (xi.max() - xi.min()))
        target = torch.full((n,), r.target.index)
        g = sal.attribute(torch.from_numpy(noisy).double(), target=target, abs=False).numpy()
        want = {
            "smoothgrad": g.mean(axis=0),
            "smoothgrad-sq": (g**2).mean(axis=0),
            "vargrad": (g**2).mean(axis=0) - g.mean(axis=0) ** 2,
        }
        for m, w in want.items():
            assert _relative(r.maps[m].raw, w.sum(axis=0)) <= TOL, m


def test_input_gradient_is_gated(model, x):
    """Mode 1 (forward only) computes no input gradient: the output is empty."""
    _, _, path = model
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    k = len(Explainer(path, device="cpu").info.targets) - 1
    mode = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, np.int64)}
    (g,) = s.run([contract.gradient_name(k)], {"input": x, **mode})
    assert g.size == 0


def test_attribution_display_is_captums(model, x):
    """The shown map is captum's ``visualize_image_attr`` default: |Σ_c a| over the
    cumulative-sum 98th percentile, clipped to [0, 1]."""
    from captum.attr._utils.visualization import _normalize_attr

    _, _, path = model
    _, res = _explain(path, x[:1], "gradient-input")
    m = res[0].maps["gradient-input"]
    want = _normalize_attr(m.raw, "absolute_value", 2)
    np.testing.assert_allclose(m.feature, want, atol=1e-6)


def test_pixel_methods_need_the_input_gradient(tmp_path):
    """A model exported without ``--input-gradient``: a one-line error naming the flag."""
    from onnxcam.export import export_onnx

    net = torchvision.models.resnet18(weights=None).eval()
    src = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 64, 64), str(src), opset_version=17, dynamo=False)
    out = tmp_path / "m.cam.onnx"
    export_onnx(src, out, preset="torch")
    ex = Explainer(out, device="cpu")
    x = np.zeros((1, 3, 64, 64), np.float32)
    for method, flag in (("saliency", "--input-gradient"), ("guided-gradcam", "--rules guided")):
        with pytest.raises(MethodError) as e:
            ex.explain_tensor(x, method)
        assert flag in str(e.value) and "\n" not in str(e.value)


def test_bad_rule_set_is_refused(tmp_path):
    from onnxcam.export import export_onnx

    net = torchvision.models.resnet18(weights=None).eval()
    src = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 64, 64), str(src), opset_version=17, dynamo=False)
    with pytest.raises(OnnxcamError, match="unknown rule set 'lrp'"):
        export_onnx(src, tmp_path / "o.onnx", rules="guided,lrp")


class _GuidedReLU6(torch.autograd.Function):
    """Guided Backpropagation through ReLU6: dx = [0 < x < 6] · max(g, 0)."""

    @staticmethod
    def forward(ctx, i):
        ctx.save_for_backward(i)
        return i.clamp(0, 6)

    @staticmethod
    def backward(ctx, g):
        (i,) = ctx.saved_tensors
        return g * ((i > 0) & (i < 6) & (g > 0))


def test_guided_rule_covers_relu6(tmp_path):
    """``--rules guided`` treats Clip(0, 6) as a rectifier too (captum and pytorch-grad-cam
    only swap ``nn.ReLU``, so on a ReLU6 network theirs is the plain gradient): mobilenet_v2's
    guided gradient = autograd with every ReLU6 made guided."""
    import copy

    from onnxcam.export import export_onnx

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    src, out = tmp_path / "m.onnx", tmp_path / "m.cam.onnx"
    torch.onnx.export(net, x, str(src), input_names=["input"], opset_version=17, dynamo=False)
    export_onnx(src, out, preset="torch", rules="guided")
    ex = Explainer(out, device="cpu")
    (r,) = ex.explain_tensor(x.numpy(), "guided-backprop")

    class Guided(torch.nn.Module):
        def forward(self, i):
            return _GuidedReLU6.apply(i)

    ref = copy.deepcopy(net).double()
    for mod in list(ref.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(mod, name, Guided())
    xd = x.double().requires_grad_(True)
    ref(xd)[0, r.target.index].backward()
    assert _relative(r.maps["guided-backprop"].raw, xd.grad.numpy()[0].sum(axis=0)) <= TOL


def test_input_gradient_equals_onnx_ad(model, x):
    """A second, independent oracle for the full-network gradient: onnx-ad's reverse pass of
    the plain ONNX model (its own VJP rules; batch fixed at 1, shapes inferred)."""
    import onnx

    onnx_ad = pytest.importorskip("onnx_ad")
    _, _, path = model
    plain = onnx.load(str(path.parent / "model.onnx"))
    for v in [*plain.graph.input, *plain.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = 1
    adjoint = onnx_ad.reverse(onnx.shape_inference.infer_shapes(plain))
    s = ort.InferenceSession(adjoint.SerializeToString(), providers=["CPUExecutionProvider"])
    ex = Explainer(path, device="cpu")
    k = len(ex.info.targets) - 1
    res = ex.explain_tensor(x[:1], "saliency", keep_tensors=True)
    ours = res[0].tensors[contract.gradient_name(k)][0]
    seed = np.zeros((1, ex.info.num_classes), np.float32)
    seed[0, res[0].target.index] = 1
    theirs = s.run(["adj_input"], {"input": x[:1], "adj_logits": seed})[0].reshape(ours.shape)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
