"""Targets: the seed input (contract v3 ``onnxcam_seed``) and ``onnxcam.targets`` end to end.

The explained score of row r is Σ seed[r] · logits[r]; the graph's gradients are the gradients
of that weighted sum. A target S(z) of the logits is explained by seeding with ∇_z S (the chain
rule), so its gradient with respect to a layer must equal torch's float64 autograd of S itself,
written here in torch independently of ``onnxcam.targets`` (never ``target.weights``).

Models are random-init torchvision ResNet-18s with small heads and inputs (64² for the seed and
target checks, 112² for the FinerCAM parity), and a two-convolution net with one logit for the
binary head; each is exported once per module. Images are drawn at the model's input size and
exported with ``scale=1, mean=128, std=64`` (as in test_parity_peers), so the Explainer's input
tensor is ``(pixel − 128) / 64`` exactly, the same tensor torch sees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
import pytorch_grad_cam
import torch
import torchcam.methods
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
from torch import nn
from torch_reference import (
    assert_gradients_close,
    blob_images,
    normalized_tensor,
    torch_score_gradients,
    torchvision_classifier,
)

from onnxcam import contract
from onnxcam.engine import Explainer
from onnxcam.errors import OnnxcamError
from onnxcam.export import export_torch
from onnxcam.targets import (
    ClassLogit,
    ClassSum,
    Contrast,
    Finer,
    Probability,
    Similarity,
    Target,
)

pytestmark = pytest.mark.model

TOL = 1e-4
MEAN, STD = 128.0, 64.0
SIZE = 64
K = 10
LAYERS = ["layer4", "layer3"]


@dataclass
class Case:
    """A torch model (float32, and its float64 copy for references) and its export."""

    model: nn.Module
    model64: nn.Module
    onnx: bytes
    layers: list[str]
    size: int

    @functools.cached_property
    def session(self) -> ort.InferenceSession:
        return ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])

    @functools.cached_property
    def explainer(self) -> Explainer:
        return Explainer(self.onnx, device="cpu")

    def run(self, x: np.ndarray, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {"input": x, **feeds}), strict=True))

    def images(self, seed: int, n: int) -> list[np.ndarray]:
        return blob_images(self.size, seed, n)

    def tensor(self, images: list[np.ndarray]) -> np.ndarray:
        return normalized_tensor(images, MEAN, STD).numpy()

    def reference(self, x: np.ndarray, score: Callable) -> tuple[np.ndarray, np.ndarray, list]:
        """float64 logits, per-row scores and layer gradients of Σ score(logits)."""
        return torch_score_gradients(self.model64, x.astype(np.float64), self.layers, score)


def _export(model: nn.Module, layers: list[str], size: int) -> bytes:
    res = export_torch(
        model, (1, 3, size, size), layers=layers, scale=1.0, mean=[MEAN] * 3, std=[STD] * 3
    )
    return res.model.SerializeToString()


def _torchvision_case(num_classes: int, size: int, layers: list[str]) -> Case:
    model = torchvision_classifier("resnet18", num_classes)
    model64 = torchvision_classifier("resnet18", num_classes).double()
    return Case(model, model64, _export(model, layers, size), layers, size)


@pytest.fixture(scope="module")
def resnet() -> Case:
    """ResNet-18, 10 classes, 64² input, target layers layer4 (2×2) and layer3 (4×4)."""
    return _torchvision_case(K, SIZE, LAYERS)


@pytest.fixture(scope="module")
def embedder() -> Case:
    """ResNet-18 with 16 outputs read as an embedding (layer4 only)."""
    return _torchvision_case(16, SIZE, ["layer4"])


def _seeded(seed: np.ndarray) -> Callable:
    """S = Σ seed · z per row."""
    w = torch.from_numpy(seed.astype(np.float64))
    return lambda z: (w * z).sum(1)


# --- 1. the raw session: a fed seed ----------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_fed_seed_gradients_and_score_match_torch_autograd(resnet: Case, batch: int) -> None:
    x = resnet.tensor(resnet.images(1, batch))
    seed = np.random.default_rng(batch).standard_normal((batch, K)).astype(np.float32)
    out = resnet.run(x, onnxcam_seed=seed)
    _, score, grads = resnet.reference(x, _seeded(seed))
    assert out[contract.SCORE_OUTPUT].shape == (batch,)
    np.testing.assert_allclose(out[contract.SCORE_OUTPUT], score, rtol=1e-5, atol=1e-5)
    # Σ seed · z of the session's own logits, row by row
    own = (seed.astype(np.float64) * out["logits"]).sum(1)
    np.testing.assert_allclose(out[contract.SCORE_OUTPUT], own, rtol=1e-5, atol=1e-6)
    for k, layer in enumerate(resnet.layers):
        got = out[contract.gradient_name(k)]
        assert_gradients_close(got, grads[k], TOL, f"{layer} seeded batch {batch}")
    # the gradient depends on the seed (not a one-hot in disguise): another seed, another map
    other = resnet.run(x, onnxcam_seed=np.roll(seed, 1, axis=1))
    assert np.abs(other[contract.gradient_name(1)] - out[contract.gradient_name(1)]).max() > 1e-3


def test_seed_rows_are_independent(resnet: Case) -> None:
    """Row r's gradient depends on seed row r only (the batch is not mixed)."""
    x = resnet.tensor(resnet.images(2, 3))
    seed = np.random.default_rng(7).standard_normal((3, K)).astype(np.float32)
    full = resnet.run(x, onnxcam_seed=seed)
    for r in range(3):
        one = resnet.run(x[r : r + 1], onnxcam_seed=seed[r : r + 1])
        for k in range(len(resnet.layers)):
            a, b = full[contract.gradient_name(k)][r : r + 1], one[contract.gradient_name(k)]
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_no_seed_is_the_one_hot_of_the_top_class(resnet: Case) -> None:
    x = resnet.tensor(resnet.images(3, 3))
    plain = resnet.run(x)
    top = plain["logits"].argmax(1)
    np.testing.assert_array_equal(plain[contract.CLASS_OUTPUT], top)
    onehot = np.eye(K, dtype=np.float32)[top]
    fed = resnet.run(x, onnxcam_seed=onehot)
    np.testing.assert_allclose(plain[contract.SCORE_OUTPUT], plain["logits"].max(1), rtol=1e-6)
    np.testing.assert_allclose(fed[contract.SCORE_OUTPUT], plain[contract.SCORE_OUTPUT], rtol=1e-6)
    for k in range(len(resnet.layers)):
        a, b = plain[contract.gradient_name(k)], fed[contract.gradient_name(k)]
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), f"layer {k}"
    a, b = plain[contract.cam_weight_name(0)], fed[contract.cam_weight_name(0)]
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    # and a given class without a seed: the one-hot of that class
    cls = (top + 1) % K
    given = resnet.run(x, onnxcam_target_class=cls.astype(np.int64))
    fed = resnet.run(x, onnxcam_seed=np.eye(K, dtype=np.float32)[cls])
    for k in range(len(resnet.layers)):
        a, b = given[contract.gradient_name(k)], fed[contract.gradient_name(k)]
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), f"layer {k}, given class"


# --- 2. CAM weights follow the seed ----------------------------------------------------------
def test_cam_weights_follow_the_seed(resnet: Case) -> None:
    W = resnet.model.fc.weight.detach().numpy().astype(np.float64)  # [K, 512]
    x = resnet.tensor(resnet.images(4, 3))
    seed = np.random.default_rng(4).standard_normal((3, K)).astype(np.float32)
    fed = resnet.run(x, onnxcam_seed=seed)[contract.cam_weight_name(0)]
    np.testing.assert_allclose(fed, seed.astype(np.float64) @ W, rtol=1e-5, atol=1e-6)
    plain = resnet.run(x)
    np.testing.assert_array_equal(
        plain[contract.cam_weight_name(0)], W[plain[contract.CLASS_OUTPUT]]
    )
    # and the CAM weights are the gradient at layer4 times its spatial size (GAP → Linear)
    g = fed.reshape(3, -1, 1, 1) / 4.0
    grad = resnet.run(x, onnxcam_seed=seed)[contract.gradient_name(0)]
    np.testing.assert_allclose(grad, np.broadcast_to(g, grad.shape), rtol=1e-5, atol=1e-7)


# --- 6a. a seed of the wrong shape is refused by onnxruntime ---------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype", "error"),
    [
        ((3, K + 1), np.float32, InvalidArgument),  # a class count other than the declared one
        ((K,), np.float32, InvalidArgument),  # no row axis
        ((3, K, 1), np.float32, InvalidArgument),  # an extra axis
        ((3, K), np.float64, InvalidArgument),  # not the logits' dtype
        ((2, K), np.float32, Fail),  # two rows for three images: no broadcast
    ],
    ids=str,
)
def test_a_seed_of_the_wrong_shape_fails(resnet: Case, shape, dtype, error) -> None:
    x = resnet.tensor(resnet.images(5, 3))
    with pytest.raises(error, match="ONNXRuntimeError"):
        resnet.run(x, onnxcam_seed=np.ones(shape, dtype))


# --- 3. targets through the Explainer --------------------------------------------------------
def _refs(z: torch.Tensor, m: int, n: int) -> list[int]:
    """The n classes whose logits are nearest z[m] (m excluded), nearest first."""
    d = (z.detach() - z.detach()[m]).abs()
    d[m] = float("inf")
    return d.topk(n, largest=False).indices.tolist()


def _per_row(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    return lambda Z: torch.stack([f(z) for z in Z])


def _top(z: torch.Tensor) -> int:
    return int(z.detach().argmax())


def _finer_mean(main: int | None, alpha: float) -> Callable:
    def s(z: torch.Tensor) -> torch.Tensor:
        m = _top(z) if main is None else main
        return z[m] - alpha * z[_refs(z, m, 3)].mean()

    return _per_row(s)


def _finer_softmax(main: int | None, alpha: float) -> Callable:
    def s(z: torch.Tensor) -> torch.Tensor:
        m = _top(z) if main is None else main
        p = torch.softmax(z, 0)
        refs = _refs(z, m, 3)
        return (p[refs] * (z[m] - alpha * z[refs])).sum() / (p[refs].sum() + 1e-9)

    return _per_row(s)


# name → (target, S in torch, the class it is reported under (None: the top class))
TARGETS: dict[str, tuple[Target, Callable, int | None]] = {
    "logit": (ClassLogit(3), lambda Z: Z[:, 3], 3),
    "logit-top": (ClassLogit(), _per_row(lambda z: z.max()), None),
    "probability": (Probability(3), lambda Z: torch.softmax(Z, 1)[:, 3], 3),
    "probability-top": (Probability(), _per_row(lambda z: torch.softmax(z, 0).max()), None),
    "sigmoid": (Probability(5, sigmoid=True), lambda Z: torch.sigmoid(Z[:, 5]), 5),
    "contrast": (Contrast(2, 7), lambda Z: Z[:, 2] - Z[:, 7], 2),
    "sum": (ClassSum((1, 4, 8)), lambda Z: Z[:, [1, 4, 8]].sum(1), None),
    "finer-mean": (Finer(), _finer_mean(None, 0.6), None),
    "finer-mean-given": (Finer(main=6, alpha=0.8), _finer_mean(6, 0.8), 6),
    "finer-softmax": (Finer(weighting="softmax", alpha=1.0), _finer_softmax(None, 1.0), None),
    "finer-softmax-0.6": (Finer(main=1, weighting="softmax"), _finer_softmax(1, 0.6), 1),
    "finer-similar": (
        Finer(main=0, similar=(4, 9)),
        lambda Z: Z[:, 0] - 0.6 * (Z[:, 4] + Z[:, 9]) / 2,
        0,
    ),
}


def _gradients(exps, k: int) -> np.ndarray:
    return np.concatenate([e.tensors[contract.gradient_name(k)] for e in exps])


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_gradients_match_torch_autograd(resnet: Case, name: str) -> None:
    target, score, cls = TARGETS[name]
    images = resnet.images(6, 3)
    x = resnet.tensor(images)
    exps = resnet.explainer.explain(
        images, "gradcam", targets=target, layers="all", keep_tensors=True
    )
    logits, _, grads = resnet.reference(x, score)
    assert len(exps) == 3
    if cls is None and name == "sum":
        expected = [[1, 4, 8][int(np.argmax(z[[1, 4, 8]]))] for z in logits]
    elif cls is None:
        expected = logits.argmax(1).tolist()
    else:
        expected = [cls] * 3
    assert [e.target.index for e in exps] == expected
    for k, layer in enumerate(resnet.layers):
        assert_gradients_close(_gradients(exps, k), grads[k], TOL, f"{name} {layer}")
    # the map is Grad-CAM of those gradients (the target only changes the seed)
    for e in exps:
        A = e.tensors[contract.activation_name(0)][0].astype(np.float64)
        G = e.tensors[contract.gradient_name(0)][0].astype(np.float64)
        raw = (G.mean(axis=(1, 2))[:, None, None] * A).sum(0)
        np.testing.assert_allclose(e.maps["gradcam@layer4"].raw, raw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [8, 2])
def test_one_target_per_image(resnet: Case, batch_size: int) -> None:
    """A list of targets: image i is explained for targets[i], in one batch or across two."""
    names = ["contrast", "finer-softmax", "probability"]
    images = resnet.images(8, 3)
    x = resnet.tensor(images)
    exps = resnet.explainer.explain(
        images,
        "gradcam",
        targets=[TARGETS[n][0] for n in names],
        keep_tensors=True,
        batch_size=batch_size,
    )
    assert [e.target.index for e in exps][::2] == [2, 3]  # Contrast(2, 7), Probability(3)
    for i, n in enumerate(names):
        _, _, grads = resnet.reference(x[i : i + 1], TARGETS[n][1])
        assert_gradients_close(_gradients(exps[i : i + 1], 0), grads[0], TOL, f"image {i} {n}")


def test_similarity_to_a_reference_embedding(embedder: Case) -> None:
    images = embedder.images(9, 3)
    x = embedder.tensor(images)
    r = np.random.default_rng(9).standard_normal(16)
    rt = torch.from_numpy(r)
    exps = embedder.explainer.explain(
        images, "gradcam", targets=Similarity.of(r), keep_tensors=True
    )
    z, _, grads = embedder.reference(x, lambda Z: (Z @ rt) / (Z.norm(dim=1) * rt.norm()))
    assert_gradients_close(_gradients(exps, 0), grads[0], TOL, "similarity layer4")
    assert [e.target.index for e in exps] == z.argmax(1).tolist()
    # a reference image's own embedding is the most similar direction: cos = 1, gradient 0
    own = embedder.explainer.explain(
        images[:1], "gradcam", targets=Similarity.of(z[0]), keep_tensors=True
    )
    g = _gradients(own, 0)
    assert np.abs(g).max() <= 1e-4 * np.abs(grads[0][:1]).max()


# --- 4. FinerCAM parity with pytorch-grad-cam and torchcam -----------------------------------
PARITY_SIZE = 112  # layer4: 4×4, layer3: 7×7


@pytest.fixture(scope="module")
def parity() -> Case:
    return _torchvision_case(K, PARITY_SIZE, LAYERS)


def _minmax(m: np.ndarray) -> np.ndarray:
    """Per-map min-max over the last two axes, float64 (exact span, no epsilon); a constant
    map (e.g. rectified to zero everywhere) becomes zeros."""
    m = np.asarray(m, np.float64) - np.min(m, axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True)
    return np.divide(m, span, out=np.zeros_like(m), where=span > 0)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def _check_maps(what: str, exps, layer: str, raw_ref: np.ndarray, normalized: np.ndarray) -> None:
    maps = [e.maps["gradcam"] for e in exps]
    raw = np.stack([m.raw for m in maps])
    feature = np.stack([m.feature for m in maps])
    rel = _rel(raw, raw_ref)
    worst = np.abs(feature - normalized).max(axis=(1, 2))
    print(f"{what} {layer}: raw |Δ|/max {rel:.2g}, feature |Δ| per image {worst}")
    assert rel <= TOL, f"{what} {layer}: raw maps differ, relative {rel}"
    assert worst.max() <= TOL, f"{what} {layer}: feature maps differ by {worst}"
    # the maps are not flat (or the comparison would be vacuous); a given class's rectified
    # map may be zero everywhere (then zero on both sides), but not most of them
    assert sum(np.ptp(f) > 0.5 for f in feature) >= 2


def _differs_from_plain_gradcam(case: Case, images, layer: str, exps) -> None:
    """The references matter: Grad-CAM of the main class alone gives another map."""
    classes = [e.target.index for e in exps]
    plain = case.explainer.explain(images, "gradcam", classes=classes, layers=layer)
    a = np.stack([e.maps["gradcam"].feature for e in plain])
    b = np.stack([e.maps["gradcam"].feature for e in exps])
    assert np.abs(a - b).max() > 0.05


@pytest.mark.parametrize("layer", LAYERS)
def test_finer_softmax_matches_pytorch_grad_cam(parity: Case, layer: str) -> None:
    """pytorch-grad-cam's FinerCAM defaults: the top class against the classes ranked 1, 2, 3
    by |z − z_main|, each weighted by its softmax probability, α = 1, base GradCAM."""
    images = parity.images(10, 3)
    x = torch.from_numpy(parity.tensor(images))
    module = parity.model.get_submodule(layer)
    with pytorch_grad_cam.FinerCAM(parity.model, target_layers=[module]) as cam:
        out = cam(input_tensor=x)  # at the input size, min-maxed as pgc does
        ag = cam.base_cam.activations_and_grads
        A, G = ag.activations[0].numpy(), ag.gradients[0].numpy()
        raw = cam.base_cam.get_cam_image(x, module, None, A, G, False)
    exps = parity.explainer.explain(
        images, "gradcam", targets=Finer(weighting="softmax", alpha=1.0), layers=layer,
        keep_tensors=True,
    )  # fmt: skip
    k = parity.layers.index(layer)
    assert_gradients_close(_gradients(exps, k), G.astype(np.float64), 1e-3, f"pgc {layer} G")
    _check_maps("pytorch-grad-cam FinerCAM", exps, layer, raw, _minmax(np.maximum(raw, 0)))
    _differs_from_plain_gradcam(parity, images, layer, exps)
    # as is at the input resolution (onnxcam's CamMap.input follows pgc's convention)
    got = np.stack([e.maps["gradcam"].input for e in exps])
    worst = np.abs(got - out).max(axis=(1, 2))
    print(f"pytorch-grad-cam FinerCAM {layer} at {PARITY_SIZE}²: |Δ| per image {worst}")
    assert worst.max() <= TOL


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("layer", LAYERS)
def test_finer_mean_matches_torchcam(parity: Case, layer: str, given: bool) -> None:
    """torchcam's FinerCAM: z_main − γ · mean of the 3 nearest logits, γ = 0.6, base GradCAM;
    normalised at feature resolution as (x − min) / (max(x − min) + 1e-8) after a ReLU."""
    images = parity.images(11, 3)
    x = torch.from_numpy(parity.tensor(images))
    with torchcam.methods.FinerCAM(
        parity.model, layer, input_shape=(3, PARITY_SIZE, PARITY_SIZE)
    ) as extractor:
        scores = parity.model(x)
        classes = [2, 5, 9] if given else scores.argmax(1).tolist()
        normalized = extractor(class_idx=classes, scores=scores, retain_graph=True)[0].numpy()
        raw = extractor(class_idx=classes, scores=scores, normalized=False)[0].numpy()
        G = extractor.base_cam.hook_g[0].numpy()
        A = extractor.base_cam.hook_a[0].detach().numpy()
    # torchcam's GradCAM, signed (before its ReLU): the raw map onnxcam reports
    raw_signed = (G.mean(axis=(2, 3))[:, :, None, None] * A).sum(1)
    np.testing.assert_allclose(raw, np.maximum(raw_signed, 0), rtol=1e-5, atol=1e-7)
    targets = [Finer(main=c) for c in classes] if given else Finer()
    exps = parity.explainer.explain(
        images, "gradcam", targets=targets, layers=layer, keep_tensors=True
    )
    assert [e.target.index for e in exps] == classes
    k = parity.layers.index(layer)
    assert_gradients_close(_gradients(exps, k), G.astype(np.float64), 1e-3, f"torchcam {layer}")
    _check_maps("torchcam FinerCAM", exps, layer, raw_signed, _minmax(raw))
    _differs_from_plain_gradcam(parity, images, layer, exps)
    assert np.abs(np.stack([e.maps["gradcam"].feature for e in exps]) - normalized).max() <= TOL


# --- 5. a binary head's negative class -------------------------------------------------------
class OneLogit(nn.Module):
    """Two convolutions, global average pool, one logit through a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(self.features(x).mean((2, 3))))


BINARY_SIZE = 32


@pytest.fixture(scope="module")
def binary() -> Case:
    torch.manual_seed(0)
    model = OneLogit().eval()
    model64 = OneLogit().double().eval()
    model64.load_state_dict(model.state_dict())
    return Case(
        model, model64, _export(model, ["features.3"], BINARY_SIZE), ["features.3"], BINARY_SIZE
    )


def test_negative_class_of_a_binary_head(binary: Case) -> None:
    images = binary.images(12, 3)
    x = binary.tensor(images)
    x64 = torch.from_numpy(x.astype(np.float64))
    acts = binary.model64.features(x64)
    z = binary.model64.fc(acts.mean((2, 3)))[:, 0]
    (dz,) = torch.autograd.grad(z.sum(), acts)
    dz = dz.numpy()
    zs = z.detach().numpy()
    # the raw session: seed [1, 0] (class 0, score −z)
    out = binary.run(x, onnxcam_seed=np.tile(np.float32([1, 0]), (3, 1)))
    np.testing.assert_allclose(out[contract.SCORE_OUTPUT], -zs, rtol=1e-5, atol=1e-6)
    assert_gradients_close(out[contract.gradient_name(0)], -dz, TOL, "raw seed [1, 0]")
    w = binary.model.fc.weight.detach().numpy()[0]
    np.testing.assert_allclose(
        out[contract.cam_weight_name(0)], np.tile(-w, (3, 1)), rtol=1e-6, atol=1e-7
    )
    # the Explainer: ClassLogit(0) and ClassLogit(1)
    for c, sign in ((0, -1.0), (1, 1.0)):
        exps = binary.explainer.explain(images, "gradcam", targets=ClassLogit(c), keep_tensors=True)
        assert [e.target.index for e in exps] == [c] * 3
        np.testing.assert_allclose([e.target.logit for e in exps], sign * zs, rtol=1e-5, atol=1e-6)
        assert_gradients_close(_gradients(exps, 0), sign * dz, TOL, f"ClassLogit({c})")


def test_probability_of_a_binary_head(binary: Case) -> None:
    """p = σ(z) for class 1 and 1 − p = σ(−z) for class 0 (``sigmoid=True``)."""
    images = binary.images(17, 2)
    x64 = torch.from_numpy(binary.tensor(images).astype(np.float64))
    acts = binary.model64.features(x64)
    z = binary.model64.fc(acts.mean((2, 3)))[:, 0]
    for c in (0, 1):
        p = torch.sigmoid(z if c else -z)
        (ref,) = torch.autograd.grad(p.sum(), acts, retain_graph=True)
        exps = binary.explainer.explain(
            images, "gradcam", targets=Probability(c, sigmoid=True), keep_tensors=True
        )
        assert [e.target.index for e in exps] == [c, c]
        assert_gradients_close(_gradients(exps, 0), ref.numpy(), TOL, f"σ class {c}")


# --- 6b. out-of-range classes in a target: one onnxcam error line ---------------------------
@pytest.mark.parametrize(
    "target",
    [
        ClassLogit(K),
        ClassLogit(-1),
        Probability(K + 5),
        Contrast(0, K),
        ClassSum((1, K)),
        Finer(main=K),
        Finer(main=0, similar=(1, K + 1)),
    ],
    ids=repr,
)
def test_out_of_range_class_is_one_onnxcam_error(resnet: Case, target: Target) -> None:
    images = resnet.images(13, 2)
    for targets in (target, [ClassLogit(0), target]):
        with pytest.raises(OnnxcamError) as e:
            resnet.explainer.explain(images, "gradcam", targets=targets)
        msg = str(e.value)
        assert msg and "\n" not in msg and "out of range" in msg, msg


def test_fewer_targets_than_images_is_one_onnxcam_error(resnet: Case) -> None:
    with pytest.raises(OnnxcamError) as e:
        resnet.explainer.explain(resnet.images(15, 3), targets=[ClassLogit(0), ClassLogit(1)])
    assert "\n" not in str(e.value), str(e.value)


def test_a_binary_head_has_two_classes(binary: Case) -> None:
    with pytest.raises(OnnxcamError, match="out of range") as e:
        binary.explainer.explain(binary.images(16, 1), targets=Contrast(1, 2))
    assert "\n" not in str(e.value), str(e.value)


def test_similarity_of_a_vector_of_the_wrong_length_is_one_onnxcam_error(embedder: Case) -> None:
    with pytest.raises(OnnxcamError) as e:
        embedder.explainer.explain(
            embedder.images(14, 1), "gradcam", targets=Similarity.of(np.ones(15))
        )
    assert "\n" not in str(e.value), str(e.value)


def test_in_graph_heatmaps_follow_the_seed(resnet: Case) -> None:
    """An export with ``--heatmaps`` computes its maps from the seeded gradients and CAM
    weights: with a fed seed, each in-graph map equals the host's map of that seed (the
    host methods on the same run's activations, gradients and CAM weights), and differs from
    the map without the seed."""
    res = export_torch(
        resnet.model, (1, 3, SIZE, SIZE), layers=["layer3"], scale=1.0, mean=[MEAN] * 3,
        std=[STD] * 3, heatmaps="gradcam,layercam", heatmap_size="feature",
    )  # fmt: skip
    session = ort.InferenceSession(
        res.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = resnet.tensor(resnet.images(21, 2))
    seed = np.random.default_rng(5).normal(size=(2, K)).astype(np.float32)
    names = [
        "onnxcam_activation_0",
        "onnxcam_gradient_0",
        contract.heatmap_name("gradcam", 0),
        contract.heatmap_name("layercam", 0),
    ]
    A, G, gc, lc = session.run(names, {"input": x, contract.SEED_INPUT: seed})
    want_gc = np.maximum((G.mean(axis=(2, 3), keepdims=True) * A).sum(1), 0)
    want_lc = np.maximum((np.maximum(G, 0) * A).sum(1), 0)
    for got, want in ((gc, want_gc), (lc, want_lc)):
        lo = want.min(axis=(1, 2), keepdims=True)
        span = want.max(axis=(1, 2), keepdims=True) - lo
        np.testing.assert_allclose(got, (want - lo) / np.where(span > 0, span, 1), atol=1e-4)
    unseeded = session.run([names[2]], {"input": x})[0]
    assert np.abs(unseeded - gc).max() > 1e-3
