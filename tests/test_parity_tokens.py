"""Parity with pytorch-grad-cam on token target layers: a ViT and a distilled DeiT.

Random-init timm models (no weights downloaded): ``vit_tiny_patch16_224`` at 224×224 (14×14
patches, one class token) and ``deit_tiny_distilled_patch16_224`` at 112×112 (7×7 patches,
class + distillation tokens). The target is the last block's ``norm1`` — the layer
pytorch-grad-cam's ViT tutorial uses, and onnxcam's default on a class-token transformer.
pytorch-grad-cam gets its tutorial's ``reshape_transform`` (drop the prefix tokens, reshape to
the grid, channels first); onnxcam lays the same tokens out in the graph (``TokenGrid``).

Conventions as in tests/test_parity_peers.py (see its docstring): both sides see the same
float32 input — images are float64 arrays in [0, 255] already at the input size, and the
model is exported with ``scale=1, mean=128, std=64`` — and ``CamMap.input`` (resized, then
min-maxed again) is compared with pytorch-grad-cam's output as is, ≤ 1e-4 per pixel.
EigenCAM / EigenGradCAM: pytorch-grad-cam keeps numpy's arbitrary SVD sign, and onnxcam's
sign convention is degenerate on a random-init LayerNorm output (see the test), so they are
compared up to sign.

A random-init ViT is *not* flat at this layer (measured: the two test images' Grad-CAM maps
differ by 0.99 at most, onnxcam vs pytorch-grad-cam ~2e-6): norm1 normalises every token, so
its maps follow the image even though timm's 0.02-std init makes the attention nearly uniform.
``test_same_input_and_prediction_on_both_sides`` asserts it, so no calibration or weight
scaling is needed.

Ablation-CAM is not compared: pytorch-grad-cam's ``AblationLayerVit`` sets a channel to
``min − 1e7`` over all tokens, the class token included (it departs from the paper's zeroing);
onnxcam zeroes the channel on the patch tokens only (the map's channel). Its weights are
checked against a direct torch computation of the paper's definition instead.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (
    GradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch_reference import (
    blob_images,
    check_maps,
    normalized_tensor,
    pytorch_grad_cam_methods,
    worst_per_image,
)

import onnxcam.perturbation
from onnxcam.contract import TokenGrid
from onnxcam.engine import Explainer
from onnxcam.export import export_torch
from onnxcam.image import as_rgb_array, preprocess

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.model

TOL = 1e-4
MEAN, STD = 128.0, 64.0
LAYER = "blocks.11.norm1"
GRADIENT_METHODS, EIGEN_METHODS = pytorch_grad_cam_methods()
GIVEN_CLASSES = [17, 503]
# key → (timm model, input size, prefix tokens)
MODELS = {
    "vit": ("vit_tiny_patch16_224", 224, 1),
    "deit": ("deit_tiny_distilled_patch16_224", 112, 2),
}


def reshape_transform(tensor, height=14, width=14):
    """pytorch-grad-cam's ViT tutorial (vit_example.py), verbatim: drop the class token."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    # Bring the channels to the first dimension, like in CNNs.
    result = result.transpose(2, 3).transpose(1, 2)
    return result  # noqa: RET504 (verbatim)


def deit_reshape_transform(tensor, height=7, width=7):
    """The same for a distilled DeiT: drop the class and the distillation token."""
    result = tensor[:, 2:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


RESHAPE = {"vit": reshape_transform, "deit": deit_reshape_transform}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch on one thread while this module runs (restored after): on a small shared machine
    its intra-op threads contend with onnxruntime's (measured: pytorch-grad-cam's ViT-Tiny
    forward + backward at 224², batch 2, 1.6 s with 2 threads under load, 0.46 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(size: int, seed: int = 0, n: int = 2) -> list[np.ndarray]:
    return blob_images(size, seed, n)


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return normalized_tensor(images, MEAN, STD)


@dataclass
class Case:
    key: str
    model: torch.nn.Module
    explainer: Explainer
    images: list[np.ndarray]
    x: torch.Tensor
    size: int
    prefix: int

    @property
    def target(self) -> torch.nn.Module:
        return self.model.get_submodule(LAYER)


@functools.cache
def _case(key: str) -> Case:
    name, size, prefix = MODELS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    res = export_torch(
        model, (1, 3, size, size), layers=[LAYER], scale=1.0, mean=[MEAN] * 3, std=[STD] * 3
    )
    grid = size // 16
    assert res.targets[0].tokens == TokenGrid(prefix, grid, grid)
    explainer = Explainer(res.model.SerializeToString(), device="cpu")
    images = _images(size)
    return Case(key, model, explainer, images, _tensor(images), size, prefix)


@functools.cache
def _top1(key: str) -> tuple[int, ...]:
    case = _case(key)
    with torch.no_grad():
        return tuple(case.model(case.x).argmax(1).tolist())


def _classes(case: Case, mode: str) -> list[int]:
    return list(_top1(case.key) if mode == "top1" else GIVEN_CLASSES)


def _explain(case: Case, methods: list[str], mode: str):
    classes = None if mode == "top1" else _classes(case, mode)
    exps = case.explainer.explain(case.images, methods=methods, classes=classes)
    assert [e.target.index for e in exps] == _classes(case, mode)
    return exps


def _pgc(cls, case: Case, classes: list[int]):
    """pytorch-grad-cam's maps and the (reshaped) activations / gradients it captured."""
    with cls(
        model=case.model, target_layers=[case.target], reshape_transform=RESHAPE[case.key]
    ) as cam:
        out = cam(input_tensor=case.x, targets=[ClassifierOutputTarget(k) for k in classes])
        ag = cam.activations_and_grads
        A = ag.activations[0].numpy()
        G = ag.gradients[0].numpy() if ag.gradients else None
    return out, A, G


@pytest.mark.parametrize("key", list(MODELS))
def test_same_input_and_prediction_on_both_sides(key: str) -> None:
    case = _case(key)
    x = preprocess([as_rgb_array(img) for img in case.images], case.explainer.info.input)
    np.testing.assert_array_equal(x, case.x.numpy())
    exps = case.explainer.explain(case.images, methods="gradcam")
    with torch.no_grad():
        logits = case.model(case.x).numpy()
    got = np.array([e.target.logit for e in exps])
    assert np.abs(got - logits.max(1)).max() <= 1e-5 * max(1.0, np.abs(logits).max())
    # the maps must depend on the image, or the comparisons below are vacuous
    a, b = (e.maps["gradcam"].feature for e in exps)
    assert np.abs(a - b).max() > 0.05
    # the map is the graph's tokens on the grid, the same numbers pytorch-grad-cam reshapes
    _, A, G = _pgc(GradCAM, case, _classes(case, "top1"))
    t = case.explainer.info.targets[0]
    outs = case.explainer.session.run([t.activation, t.gradient], {"input": x})
    for got_t, ref in zip(outs, (A, G), strict=True):
        ref = ref.transpose(0, 2, 3, 1)  # NCHW → the graph's NHWC
        assert np.abs(got_t - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("mode", ["top1", "given"])
@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_vit_gradient_methods_match_pytorch_grad_cam(method: str, mode: str) -> None:
    case = _case("vit")
    classes = _classes(case, mode)
    exps = _explain(case, [method], mode)
    ref, _, _ = _pgc(GRADIENT_METHODS[method], case, classes)
    assert np.abs(ref[0] - ref[1]).max() > 0.05  # not flat: the maps follow the image
    got = np.stack([e.maps[method].input for e in exps])
    check_maps(f"vit {method} ({mode} {classes})", got, ref, TOL)


@pytest.mark.parametrize("mode", ["top1", "given"])
@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_distilled_deit_gradient_methods_match_pytorch_grad_cam(method: str, mode: str) -> None:
    """Two prefix tokens (class, distillation): pytorch-grad-cam with a reshape_transform that
    drops both, onnxcam with the prefix it found in the graph."""
    case = _case("deit")
    assert case.explainer.info.targets[0].tokens == TokenGrid(2, 7, 7)
    classes = _classes(case, mode)
    exps = _explain(case, [method], mode)
    ref, _, _ = _pgc(GRADIENT_METHODS[method], case, classes)
    got = np.stack([e.maps[method].input for e in exps])
    check_maps(f"deit {method} ({mode} {classes})", got, ref, TOL)


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("method", list(EIGEN_METHODS))
def test_eigen_methods_match_up_to_sign(key: str, method: str) -> None:
    """Up to sign only: both signs are checked and exactly one must match. onnxcam's sign
    convention (projection positively correlated with the channel sum) is degenerate here:
    a LayerNorm output with weight 1 and bias 0 (random init) has zero mean over channels at
    every token, so the channel sum is float32 rounding (≤ 2e-5) and picks either sign."""
    case = _case(key)
    size = (case.size, case.size)
    exps = _explain(case, [method], "top1")
    ref, A, G = _pgc(EIGEN_METHODS[method], case, _classes(case, "top1"))
    X = A if method == "eigencam" else G * A
    P = get_2d_projection(X)
    candidates = {s: scale_cam_image(scale_cam_image(np.maximum(s * P, 0), size)) for s in (1, -1)}
    np.testing.assert_allclose(candidates[1], ref, rtol=0, atol=1e-6)
    got = np.stack([e.maps[method].input for e in exps])
    for i in range(len(exps)):
        d = {s: max(worst_per_image(got[i : i + 1], c[i : i + 1])) for s, c in candidates.items()}
        print(f"{key} {method} image {i}: |Δ| by pytorch-grad-cam's sign {d}")
        best = min(d, key=d.get)
        assert d[best] <= TOL, f"{key} {method} image {i}: |Δ| {d}"
        assert d[-best] > 0.1  # the two signs really differ: the match is not vacuous


def _torch_logits(model, x1: np.ndarray, prefix: int, channels: list[int | None]) -> np.ndarray:
    """float64 torch logits of image ``x1`` [1, ...], one row per entry of ``channels``: row r
    with channel ``channels[r]`` of norm1's patch tokens set to 0 by a forward hook (the
    prefix tokens kept), or unchanged for None."""

    def hook(_m, _i, out):
        out = out.clone()
        for r, k in enumerate(channels):
            if k is not None:
                out[r, prefix:, k] = 0
        return out

    handle = model.get_submodule(LAYER).register_forward_hook(hook)
    x = torch.from_numpy(np.repeat(x1, len(channels), axis=0).astype(np.float64))
    try:
        with torch.no_grad():
            return model(x).numpy()
    finally:
        handle.remove()


def test_ablation_weights_match_torch(monkeypatch) -> None:
    """onnxcam's Ablation-CAM weights w_k = (y − y_k) / y (channel k of the patch tokens set
    to 0, through the head-only path) against the same definition in float64 torch, for the
    three channels of largest |w| and two others.

    w_k is a difference of two float32 logits divided by y: its error is the logits' rounding
    (measured ≤ 3e-7·|y|), not a fraction of |w_k| (~1/C, ≤ 1.2e-2 here), so it is bounded
    in logit units: |Δw_k| · |y| ≤ 1e-5 · max(1, |y|)."""
    case = _case("vit")
    weights: list[np.ndarray] = []
    weighted = onnxcam.perturbation._weighted
    monkeypatch.setattr(
        onnxcam.perturbation,
        "_weighted",
        lambda w, A1: (weights.append(np.array(w)), weighted(w, A1))[1],
    )
    exps = case.explainer.explain(case.images, methods=["ablationcam"])
    assert len(weights) == len(exps) == 2
    reference = copy.deepcopy(case.model).double().eval()
    x = case.x.numpy()
    t = case.explainer.info.targets[0]
    A = case.explainer.session.run([t.activation], {"input": x})[0].transpose(0, 3, 1, 2)
    for i, (e, w) in enumerate(zip(exps, weights, strict=True)):
        cls = e.target.index
        # the raw map is Σ_k w_k A_k with these weights
        raw = np.tensordot(w, A[i], axes=(0, 0))
        np.testing.assert_allclose(e.maps["ablationcam"].raw, raw, rtol=0, atol=1e-6)
        channels = [*np.argsort(-np.abs(w))[:3].tolist(), 5, 100]
        logits = _torch_logits(reference, x[i : i + 1], case.prefix, [None, *channels])[:, cls]
        y = logits[0]
        ref = (y - logits[1:]) / y
        err = np.abs(w[channels] - ref) * abs(y)
        print(f"image {i} class {cls}: w {w[channels]}, torch {ref}, |Δw|·|y| {err}")
        assert err.max() <= 1e-5 * max(1.0, abs(y)), err
        assert np.all(np.sign(w[channels[:3]]) == np.sign(ref[:3]))  # the strongest agree
