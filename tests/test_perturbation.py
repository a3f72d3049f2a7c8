"""Perturbation CAMs (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM, occlusion) against the peers.

Both sides see the *same* float32 input tensor, as in ``test_parity_peers.py``: float64 images
in [0, 255] already at the model's input size (onnxcam's resize is the identity) and models
exported with ``scale=1, mean=128, std=64`` (model input ``(pixel − 128) / 64`` on both sides,
asserted bit-exact below). Two models keep the file fast on a small CPU:

* ``resnet18``: random-init torchvision ResNet-18 at 64×64 (layer3 is 256×4×4, layer4 is
  512×2×2), the real-architecture parity cases (marked ``model``);
* ``tiny``: a 3-conv CNN at a non-square 32×30 input (target ``features``, 16×8×8, GAP → Linear
  head), for the many-pass methods, occlusion, batch-size and top-K checks.

Peer conventions (read from their sources, checked here):

* pytorch-grad-cam ``ScoreCAM``: masks = per-channel min-max (``+ 1e-8``) of the activations
  upsampled with ``UpsamplingBilinear2d`` (align_corners=True); weights = softmax over channels
  of the class logit of ``input × mask`` (float32 throughout); map = ReLU(Σ w A) → its
  ``scale_cam_image`` (÷ max + 1e-7, cv2 resize) → min-max again. onnxcam's default
  ``scorecam_convention`` builds the masks in float64 and divides the final map by its exact
  span; the final min-max cancels the 1e-7.
* torchcam ``ScoreCAM``: per-channel min-max at feature resolution (``+ 1e-8``), then
  ``F.interpolate(bilinear, align_corners=False)``; it subtracts the unmasked logit before the
  softmax (a per-image constant: no effect); the map is ReLU'd and normalised at feature
  resolution as ``(x − min) / (max(x − min) + 1e-8)`` (onnxcam: exact span).
* torchcam ``SSCAM``: the same masks, upsampled, plus ``N(0, std²)`` noise drawn at input
  resolution per sample (torch RNG), mean over samples of (masked − unmasked) logits.
  onnxcam draws its own noise (numpy ``default_rng(seed)``), so only ``ss_noise=0`` can match
  (torchcam cannot take std=0: ``Normal`` needs scale > 0; std=1e-12 is used).
* torchcam ``ISCAM``: ``coeff += (i + 1) / N`` before each step, i.e. step i scales the masked
  input by Σ_{j≤i+1} j/N (its docstring writes Σ_{j=0}^{i−1} j/N; the code is what is matched).
* pytorch-grad-cam ``AblationCAM``: replaces the target module by an ``AblationLayer`` that sets
  the ablated channel to 0 **only if the minimum of the activations is exactly 0** (else to
  ``min − 1e7``), runs the whole model again for every batch, and computes
  ``(y − y_k) / y`` in float32. onnxcam always sets the channel to 0 and runs only the head
  (graph contract v2 head-only path). So parity is on ReLU'd layer4, where both ablate to 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch_reference import check_maps, torchvision_model, worst_per_image
from torchcam.methods import ISCAM, SSCAM
from torchcam.methods import ScoreCAM as TcScoreCAM

from onnxcam import contract
from onnxcam.engine import Explainer
from onnxcam.export import export_torch
from onnxcam.export.gating import value_of
from onnxcam.image import as_rgb_array, preprocess
from onnxcam.perturbation import PerturbationOptions

TOL = 1e-4
MEAN, STD = 128.0, 64.0
MODES = ["top1", "given"]
PERTURBATION_METHODS = ["scorecam", "sscam", "iscam", "ablationcam", "occlusion"]


# --- models and inputs -----------------------------------------------------------------------
class TinyNet(nn.Module):
    """conv(s2) → ReLU → conv(s2) → ReLU (``features``) → GAP → Linear (6 classes)."""

    def __init__(self, final: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(12, 16, 3, 2, 1), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 6)
        self.final = final

    def forward(self, x):
        y = self.fc(torch.flatten(self.gap(self.features(self.stem(x))), 1))
        return y if self.final is None else self.final(y)


def _tiny_model(final: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(final).eval()
    with torch.no_grad():  # spread the logits, so the softmax weights are far from uniform
        model.fc.weight.mul_(8.0)
    return model


@dataclass(frozen=True)
class Spec:
    size: tuple[int, int]  # (H, W)
    layers: tuple[str, ...]
    given: tuple[int, int]  # a class selection besides the top-1, one per image


SPECS = {
    "resnet18": Spec((64, 64), ("layer3", "layer4"), (17, 503)),
    "tiny": Spec((32, 30), ("features",), (3, 5)),
}
SCORE_LAYER = {"resnet18": "layer3", "tiny": "features"}  # Score-CAM target per model
CASES = [pytest.param("resnet18", marks=pytest.mark.model), "tiny"]
SCORE_CASES = [
    pytest.param("resnet18", "layer3", marks=pytest.mark.model),
    pytest.param("resnet18", "layer4", marks=pytest.mark.model),
    ("tiny", "features"),
]


@dataclass
class Case:
    name: str
    model: nn.Module
    explainer: Explainer
    onnx_model: onnx.ModelProto
    images: list[np.ndarray]
    x: torch.Tensor
    spec: Spec


def _images(size: tuple[int, int], seed: int, n: int = 2) -> list[np.ndarray]:
    """Smooth random colour blobs plus noise: float64 (H, W, 3) RGB in [0, 255]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, size=(5, 5, 3))
        img = cv2.resize(low, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(img + rng.normal(0, 20, img.shape), 0, 255))
    return out


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    """The torch input: the same float32 tensor onnxcam's preprocessing builds."""
    x = (np.stack(images).astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _export(model: nn.Module, size: tuple[int, int], layers) -> tuple[Explainer, onnx.ModelProto]:
    res = export_torch(
        model, (1, 3, *size), layers=list(layers), scale=1.0, mean=[MEAN] * 3, std=[STD] * 3
    )
    return Explainer(res.model.SerializeToString(), device="cpu"), res.model


@functools.cache
def _case(name: str) -> Case:
    spec = SPECS[name]
    model = torchvision_model("resnet18") if name == "resnet18" else _tiny_model()
    explainer, onnx_model = _export(model, spec.size, spec.layers)
    images = _images(spec.size, 0)
    return Case(name, model, explainer, onnx_model, images, _tensor(images), spec)


def _classes(case: Case, mode: str) -> list[int]:
    if mode == "top1":
        with torch.no_grad():
            return case.model(case.x).argmax(1).tolist()
    return list(case.spec.given)


def _explain(case: Case, method: str, mode: str = "top1", images=None, **kw):
    classes = None if mode == "top1" else _classes(case, mode)
    kw.setdefault("perturbation", PerturbationOptions(batch_size=64))
    exps = case.explainer.explain(
        case.images if images is None else images, methods=[method], classes=classes, **kw
    )
    if images is None:
        assert [e.target.index for e in exps] == _classes(case, mode)
    return exps


def _maps(exps, method: str, what: str) -> np.ndarray:
    return np.stack([getattr(e.maps[method], what) for e in exps])


def _worst(got: np.ndarray, ref: np.ndarray) -> list[float]:
    return worst_per_image(got, ref)


def _check(what: str, got: np.ndarray, ref: np.ndarray, tol: float = TOL) -> float:
    return check_maps(what, got, ref, tol)


def _session_run(case: Case, x: np.ndarray, names: list[str], **extra) -> dict:
    feeds = {case.explainer.info.input.name: x, **extra}
    return dict(zip(names, case.explainer.session.run(names, feeds), strict=True))


def _target(case: Case, layer: str):
    return case.explainer.layers(layer)[0]


@pytest.mark.parametrize("name", CASES)
def test_same_input_tensor_and_maps_depend_on_the_image(name: str) -> None:
    case = _case(name)
    x = preprocess([as_rgb_array(img) for img in case.images], case.explainer.info.input)
    np.testing.assert_array_equal(x, case.x.numpy())
    exps = _explain(case, "scorecam", layers=SCORE_LAYER[name])
    a, b = _maps(exps, "scorecam", "feature")
    assert np.abs(a - b).max() > 0.05  # otherwise the comparisons below would be vacuous


# --- 1. Score-CAM vs pytorch-grad-cam ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "layer"), SCORE_CASES)
def test_scorecam_matches_pytorch_grad_cam(name: str, layer: str, mode: str) -> None:
    case = _case(name)
    classes = _classes(case, mode)
    exps = _explain(case, "scorecam", mode, layers=layer)
    with PgcScoreCAM(model=case.model, target_layers=[case.model.get_submodule(layer)]) as cam:
        cam.batch_size = 64  # its get_cam_weights reads self.batch_size when present (else 16)
        ref = cam(input_tensor=case.x, targets=[ClassifierOutputTarget(k) for k in classes])
    _check(
        f"{name} {layer} scorecam vs pgc ScoreCAM ({mode} {classes})",
        _maps(exps, "scorecam", "input"),
        ref,
    )


def test_scorecam_scores_each_distinct_mask_once() -> None:
    """Channels with bit-identical masks (here: a duplicated filter, and dead channels) are
    scored once and share the score: fewer forward passes, the same map as pytorch-grad-cam."""
    model = _tiny_model()
    with torch.no_grad():
        conv = model.features[0]
        conv.weight[1] = conv.weight[0]
        conv.bias[1] = conv.bias[0]
        conv.weight[2] = 0  # dead: ReLU(−1) everywhere
        conv.bias[2] = -1.0
        conv.weight[3] = 0
        conv.bias[3] = -2.0
    size = SPECS["tiny"].size
    explainer, _ = _export(model, size, ["features"])
    images = _images(size, 3, n=1)
    totals: list[int] = []
    exps = explainer.explain(
        images,
        ["scorecam"],
        perturbation=PerturbationOptions(batch_size=5),
        method_progress=lambda done, total, label: totals.append(total),
    )
    assert totals[-1] == 16 - 2  # 16 channels: one twin and one extra dead channel shared
    x = _tensor(images)
    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    with PgcScoreCAM(model=model, target_layers=[model.features]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in cls])
    _check("scorecam with duplicate channels vs pgc", _maps(exps, "scorecam", "input"), ref)


# --- 2. Score-CAM (torchcam convention) vs torchcam -------------------------------------------
def _torchcam(cls, case: Case, layer: str, classes: list[int], **kw) -> np.ndarray:
    H, W = case.spec.size
    with cls(case.model, target_layer=layer, batch_size=64, input_shape=(3, H, W), **kw) as ext:
        with torch.no_grad():
            case.model(case.x)
        return ext(class_idx=classes)[0].numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_scorecam_torchcam_convention_matches_torchcam(name: str, mode: str) -> None:
    case = _case(name)
    layer = SCORE_LAYER[name]
    classes = _classes(case, mode)
    opts = PerturbationOptions(batch_size=64, scorecam_convention="torchcam")
    exps = _explain(case, "scorecam", mode, layers=layer, perturbation=opts)
    ref = _torchcam(TcScoreCAM, case, layer, classes)
    got = _maps(exps, "scorecam", "feature")
    _check(f"{name} scorecam[torchcam] vs torchcam ScoreCAM ({mode} {classes})", got, ref)
    # the two mask conventions are distinguishable on this case (the parity is not vacuous)
    other = _maps(_explain(case, "scorecam", mode, layers=layer), "scorecam", "feature")
    gap = max(_worst(other, ref))
    print(f"{name} scorecam[pytorch-grad-cam] vs torchcam ScoreCAM ({mode}): {gap:.2g}")
    assert gap > 10 * TOL


# --- 3. IS-CAM and SS-CAM vs torchcam ---------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 4])
@pytest.mark.parametrize("mode", MODES)
def test_iscam_matches_torchcam(mode: str, steps: int) -> None:
    case = _case("tiny")
    classes = _classes(case, mode)
    exps = _explain(
        case, "iscam", mode, perturbation=PerturbationOptions(batch_size=64, is_steps=steps)
    )
    ref = _torchcam(ISCAM, case, "features", classes, num_samples=steps)
    _check(
        f"tiny iscam N={steps} vs torchcam ISCAM ({mode} {classes})",
        _maps(exps, "iscam", "feature"),
        ref,
    )


@pytest.mark.parametrize("mode", MODES)
def test_sscam_without_noise_matches_torchcam(mode: str) -> None:
    case = _case("tiny")
    classes = _classes(case, mode)
    opts = PerturbationOptions(batch_size=64, ss_samples=2, ss_noise=0.0)
    exps = _explain(case, "sscam", mode, perturbation=opts)
    ref = _torchcam(SSCAM, case, "features", classes, num_samples=2, std=1e-12)
    _check(
        f"tiny sscam σ=0 vs torchcam SSCAM σ=1e-12 ({mode} {classes})",
        _maps(exps, "sscam", "feature"),
        ref,
    )
    # without noise SS-CAM is Score-CAM with torchcam's masks
    sc = PerturbationOptions(batch_size=64, scorecam_convention="torchcam")
    plain = _maps(_explain(case, "scorecam", mode, perturbation=sc), "scorecam", "raw")
    np.testing.assert_allclose(_maps(exps, "sscam", "raw"), plain, rtol=0, atol=1e-6)


def test_sscam_is_seeded() -> None:
    case = _case("tiny")

    def raw(seed: int, noise: float = 2.0) -> np.ndarray:
        opts = PerturbationOptions(batch_size=64, ss_samples=4, ss_noise=noise, seed=seed)
        return _maps(_explain(case, "sscam", perturbation=opts), "sscam", "raw")

    a, b, c = raw(0), raw(0), raw(1)
    np.testing.assert_array_equal(a, b)
    scale = np.abs(a).max()
    seed_effect = np.abs(a - c).max() / scale
    noise_effect = np.abs(a - raw(0, 0.0)).max() / scale
    print(
        f"tiny sscam: relative change seed 0 → 1 {seed_effect:.2g}, noise 2 → 0 {noise_effect:.2g}"
    )
    assert seed_effect > 1e-3
    assert noise_effect > 1e-3


def test_sscam_map_does_not_depend_on_the_other_images_in_the_batch() -> None:
    case = _case("tiny")
    opts = PerturbationOptions(batch_size=64, ss_samples=3)
    both = _maps(_explain(case, "sscam", perturbation=opts), "sscam", "raw")
    alone = _maps(
        _explain(case, "sscam", images=case.images[1:], perturbation=opts), "sscam", "raw"
    )
    d, top = np.abs(both[1] - alone[0]).max(), np.abs(alone[0]).max()
    print(f"tiny sscam image 2 in a batch vs alone: max |Δraw| {d:.2g}, max |raw| {top:.2g}")
    np.testing.assert_allclose(both[1], alone[0], rtol=0, atol=1e-6)


# --- 4. Ablation-CAM vs pytorch-grad-cam, and the head-only path --------------------------------
@pytest.mark.model
@pytest.mark.parametrize("mode", MODES)
def test_ablationcam_matches_pytorch_grad_cam(mode: str) -> None:
    case = _case("resnet18")
    classes = _classes(case, mode)
    exps = _explain(case, "ablationcam", mode, layers="layer4")
    layer4 = case.model.layer4
    with torch.no_grad():  # pgc ablates to 0 only when the activations' minimum is exactly 0
        grabbed = []
        h = layer4.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
        case.model(case.x)
        h.remove()
    for i in range(len(case.images)):
        assert float(grabbed[0][i].min()) == 0.0
    with AblationCAM(model=case.model, target_layers=[layer4], batch_size=64) as cam:
        ref = cam(input_tensor=case.x, targets=[ClassifierOutputTarget(k) for k in classes])
    _check(
        f"resnet18 ablationcam vs pgc AblationCAM ({mode} {classes})",
        _maps(exps, "ablationcam", "input"),
        ref,
    )

    # ResNet's head is GAP → Linear, so y − y_k = W_ck · mean(A_k) exactly: a float64 reference
    t = _target(case, "layer4")
    A = _session_run(
        case,
        case.x.numpy(),
        [t.activation],
        **{contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)},
    )[t.activation].astype(np.float64)
    Wfc = case.model.fc.weight.detach().double().numpy()
    bfc = case.model.fc.bias.detach().double().numpy()
    ref_raw = []
    for i, c in enumerate(classes):
        pooled = A[i].mean(axis=(1, 2))
        y = Wfc[c] @ pooled + bfc[c]
        ref_raw.append(np.tensordot(Wfc[c] * pooled / y, A[i], axes=(0, 0)))
    ref_raw = np.stack(ref_raw)
    rel = float(np.abs(_maps(exps, "ablationcam", "raw") - ref_raw).max() / np.abs(ref_raw).max())
    print(f"resnet18 ablationcam raw vs float64 analytic GAP→Linear ({mode}): relative {rel:.2g}")
    assert rel <= TOL


def _image_dependent(model: onnx.ModelProto, image: str) -> set[str]:
    """Every main-graph tensor computed (directly or not) from the image input."""
    dep = {image}
    for node in model.graph.node:  # topologically sorted
        reads = {i for i in node.input if i}
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                reads |= _outer_reads(a.g)
        if reads & dep:
            dep |= set(node.output)
    return dep


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from its enclosing scope."""
    produced = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    reads: set[str] = set()
    for node in graph.node:
        reads |= {i for i in node.input if i}
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                reads |= _outer_reads(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    reads |= _outer_reads(g)
        produced |= set(node.output)
    return reads - produced


@pytest.mark.model
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_head_path_skips_the_layers_before_the_target(layer: str) -> None:
    case = _case("resnet18")
    t = _target(case, layer)
    info = case.explainer.info
    assert t.head_input and t.head_output
    # structure: the If(mode == 2) branch reads nothing computed from the image
    (head_if,) = [n for n in case.onnx_model.graph.node if t.head_output in n.output]
    assert head_if.op_type == "If"
    then = next(a.g for a in head_if.attribute if a.name == "then_branch")
    reads = _outer_reads(then)
    value = value_of(t.head_input)  # the optional input's value
    assert value in reads
    assert not reads & (_image_dependent(case.onnx_model, info.input.name) - {value})

    x = case.x.numpy()
    fwd = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    ref = _session_run(case, x, [info.output, t.activation, t.head_output], **fwd)
    assert ref[t.head_output].shape[0] == 0  # mode 1: the head does not run
    A = ref[t.activation]
    head = {contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64), t.head_input: A}
    # mode 2: the head logits do not depend on the image fed alongside
    a = _session_run(case, np.zeros((1, 3, 64, 64), np.float32), [t.head_output], **head)
    b = _session_run(case, x[::-1].copy(), [t.head_output], **head)
    np.testing.assert_array_equal(a[t.head_output], b[t.head_output])
    # ... and equal the model's logits when fed the model's own activations
    logits = ref[info.output]
    err = float(np.abs(a[t.head_output] - logits).max())
    print(f"resnet18 head of {layer}: max |head logits − logits| {err:.2g}")
    assert err <= 1e-5 * max(1.0, float(np.abs(logits).max()))


# --- 5. occlusion vs a brute-force loop -------------------------------------------------------
def _brute_occlusion(
    model: nn.Module,
    image: np.ndarray,
    cls: int,
    patch: int,
    stride: int,
    baseline: float | None,
    prob=lambda z, c: torch.softmax(z.double(), 1)[0, c],
) -> np.ndarray:
    """Occlude the *image* (pixels, before preprocessing), one patch per forward pass."""
    H, W = image.shape[:2]
    ph, pw = min(patch, H), min(patch, W)
    fill = MEAN if baseline is None else baseline  # the mean pixel is 0 after preprocessing

    def starts(n: int, p: int) -> list[int]:
        out, s = [], 0
        while True:
            out.append(min(s, n - p))
            if s + p >= n:
                return sorted(set(out))
            s += stride

    with torch.no_grad():
        p0 = float(prob(model(_tensor([image])), cls))
        acc, cnt = np.zeros((H, W)), np.zeros((H, W))
        for y in starts(H, ph):
            for x in starts(W, pw):
                occluded = image.copy()
                occluded[y : y + ph, x : x + pw] = fill
                p = float(prob(model(_tensor([occluded])), cls))
                acc[y : y + ph, x : x + pw] += p0 - p
                cnt[y : y + ph, x : x + pw] += 1
    return np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)


@pytest.mark.parametrize(
    ("patch", "stride", "baseline", "mode"),
    [
        (7, 5, None, "top1"),
        (7, 5, 200.0, "given"),
        (8, 12, 30.0, "top1"),  # stride > patch: uncovered rows/columns stay 0
        (40, 16, None, "given"),  # patch larger than the image: one patch
        (32, 16, 255.0, "top1"),  # the defaults (32, 16)
    ],
)
def test_occlusion_matches_brute_force(patch, stride, baseline, mode) -> None:
    case = _case("tiny")
    classes = _classes(case, mode)
    opts = PerturbationOptions(
        batch_size=64, occlusion_patch=patch, occlusion_stride=stride, occlusion_baseline=baseline
    )
    exps = _explain(case, "occlusion", mode, perturbation=opts)
    got = _maps(exps, "occlusion", "raw")
    assert got.shape == (2, *case.spec.size)
    ref = np.stack(
        [
            _brute_occlusion(case.model, img, c, patch, stride, baseline)
            for img, c in zip(case.images, classes, strict=True)
        ]
    )
    assert np.abs(ref).max() > 1e-3  # occluding changes the probability
    _check(f"tiny occlusion p{patch} s{stride} b{baseline} ({mode} {classes})", got, ref, 1e-5)
    for e in exps:  # at the input resolution already: .input is .feature
        m = e.maps["occlusion"]
        np.testing.assert_array_equal(m.input, m.feature)


def test_occlusion_uses_the_probability_of_a_sigmoid_model() -> None:
    case = _case("tiny")
    model = _tiny_model(nn.Sigmoid())
    explainer, _ = _export(model, case.spec.size, ["features"])
    assert explainer.info.activation == "sigmoid"
    opts = PerturbationOptions(batch_size=64, occlusion_patch=8, occlusion_stride=8)
    exps = explainer.explain(case.images, methods=["occlusion"], perturbation=opts)
    got = _maps(exps, "occlusion", "raw")
    ref = np.stack(
        [
            _brute_occlusion(model, img, e.target.index, 8, 8, None, lambda z, c: z[0, c].double())
            for img, e in zip(case.images, exps, strict=True)
        ]
    )
    print(
        f"tiny+sigmoid occlusion: worst |Δ| {np.abs(got - ref).max():.2g}, max |ref| "
        f"{np.abs(ref).max():.2g}, raw[0, 0, 0] {got[0, 0, 0]:.2g} vs {ref[0, 0, 0]:.2g}"
    )
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


# --- 6. batch sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("scorecam", {}),
        ("scorecam", {"scorecam_convention": "torchcam"}),
        ("iscam", {"is_steps": 3}),
        ("sscam", {"ss_samples": 3}),
        ("ablationcam", {}),
        ("occlusion", {"occlusion_patch": 7, "occlusion_stride": 5}),
    ],
)
def test_batch_size_does_not_change_the_maps(method: str, extra: dict) -> None:
    case = _case("tiny")
    runs = {
        bs: _explain(
            case, method, "given", perturbation=PerturbationOptions(batch_size=bs, **extra)
        )
        for bs in (1, 7, 64)
    }
    raw = {bs: _maps(e, method, "raw") for bs, e in runs.items()}
    feat = {bs: _maps(e, method, "feature") for bs, e in runs.items()}
    worst = max(max(_worst(raw[bs], raw[64]) + _worst(feat[bs], feat[64])) for bs in (1, 7))
    print(f"tiny {method} {extra}: batch 1/7 vs 64 worst |Δ| {worst:.2g}")
    assert worst <= 1e-6


# --- 7. Score-CAM top-K approximation ---------------------------------------------------------
def test_scorecam_topk() -> None:
    case = _case("tiny")
    t = _target(case, "features")
    C = t.shape[1]
    full = _maps(_explain(case, "scorecam", "given"), "scorecam", "raw")
    for k in (C, C + 3):
        opts = PerturbationOptions(batch_size=64, scorecam_topk=k)
        np.testing.assert_array_equal(
            _maps(_explain(case, "scorecam", "given", perturbation=opts), "scorecam", "raw"), full
        )

    K = 4
    opts = PerturbationOptions(batch_size=64, scorecam_topk=K)
    got = _maps(_explain(case, "scorecam", "given", perturbation=opts), "scorecam", "raw")
    # manual: the K channels with the largest mean activation, pgc masks, softmax over those K
    x = case.x.numpy()
    fwd = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    A = _session_run(case, x, [t.activation], **fwd)[t.activation]
    ref = []
    for i, c in enumerate(case.spec.given):
        means = A[i].mean(axis=(1, 2))
        order = np.argsort(-means)
        assert means[order[K - 1]] - means[order[K]] > 1e-4  # an unambiguous top-K
        keep = np.sort(order[:K])
        up = F.interpolate(
            torch.from_numpy(A[i : i + 1, keep]),
            size=case.spec.size,
            mode="bilinear",
            align_corners=True,
        )[0]
        lo = up.amin(dim=(1, 2), keepdim=True)
        hi = up.amax(dim=(1, 2), keepdim=True)
        masks = (up - lo) / (hi - lo + 1e-8)
        with torch.no_grad():
            logits = case.model(case.x[i : i + 1] * masks[:, None])[:, c].double().numpy()
        w = np.exp(logits - logits.max())
        w /= w.sum()
        ref.append(np.tensordot(w, A[i, keep].astype(np.float64), axes=(0, 0)))
    ref = np.stack(ref)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    change = float(np.abs(got - full).max() / np.abs(full).max())
    print(f"tiny scorecam top-{K}: relative |Δ| vs manual {rel:.2g}, vs all channels {change:.2g}")
    assert rel <= 1e-5
    assert change > 1e-2


# --- 8. perturbation runs skip the gradient subgraph ------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_forward_mode_skips_the_gradient_subgraph(name: str) -> None:
    case = _case(name)
    info = case.explainer.info
    t = info.targets[0]
    names = [info.output, contract.SCORE_OUTPUT, contract.CLASS_OUTPUT, t.activation, t.gradient]
    x = case.x.numpy()
    full = _session_run(case, x, names)
    fwd = _session_run(
        case, x, names, **{contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    )
    assert full[t.gradient].shape == full[t.activation].shape
    assert np.abs(full[t.gradient]).max() > 0
    assert fwd[t.gradient].shape == (0, *full[t.activation].shape[1:])
    for n in names[:-1]:
        np.testing.assert_array_equal(fwd[n], full[n])


class _Recorder:
    """Wraps the session: records (mode, fetched names, image batch) of every run."""

    def __init__(self, session, image: str) -> None:
        self.session, self.image, self.calls = session, image, []

    def run(self, names, feeds, *args, **kwargs):
        mode = int(feeds.get(contract.MODE_INPUT, contract.MODE_EXPLAIN))
        self.calls.append((mode, list(names), feeds[self.image].shape[0]))
        return self.session.run(names, feeds, *args, **kwargs)


def test_perturbation_methods_never_run_the_gradient_subgraph(monkeypatch) -> None:
    case = _case("tiny")
    info = case.explainer.info
    rec = _Recorder(case.explainer.session, info.input.name)
    monkeypatch.setattr(case.explainer, "session", rec)
    opts = PerturbationOptions(batch_size=64, ss_samples=2, is_steps=2)
    case.explainer.explain(case.images, methods=PERTURBATION_METHODS, perturbation=opts)
    modes = [m for m, _, _ in rec.calls]
    assert set(modes) == {contract.MODE_FORWARD, contract.MODE_HEAD}
    t = info.targets[0]
    for mode, names, batch in rec.calls:
        assert not any(n.startswith("onnxcam_gradient") for n in names)
        if mode == contract.MODE_HEAD:  # the head-only path: a 1-image dummy, only head logits
            assert names == [t.head_output] and batch == 1
        else:
            assert t.head_output not in names
    # ablation: per image one unablated head run + one batch of 16 ablated channels
    assert modes.count(contract.MODE_HEAD) == 2 * len(case.images)
