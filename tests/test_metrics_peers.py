"""The metrics ``onnxcam eval`` shares with other libraries, each against the library (or paper
code) that defines it, on the same model and the same maps.

One torchvision ResNet-18 (10 classes, seeded weights, 64×64 input) is exported with onnxcam;
the torch module itself is the model Quantus and pytorch-grad-cam are given, and the maps are
onnxcam's Grad-CAM maps of two smooth images (and the random baseline's). Peers:

- Quantus 0.6 ``Complexity``, ``Sparseness`` and ``MaxSensitivity`` (identical noise draws);
- pytorch-grad-cam 1.5 ``ARCC`` (its ``Complexity``, ``Coherency``, ``ROADCombined``), with
  onnxcam's explainer as its base method and its imputation noise set to 0 on both sides;
- ADCC as OpenVINO XAI 1.1 and aimagelab/ADCC compute it (scipy's ``pearsonr``, the torch
  model's softmax), transcribed: OpenVINO XAI needs numpy 1.x;
- OpenVINO XAI's ``InsertionDeletionAUC``, transcribed line for line, on the torch model;
- Average Gain (Opti-CAM's formula; no library has it) from the torch model's probabilities.

Then meaning tests (a one-pixel map is less complex than a uniform one, a constant explainer
has Max-Sensitivity 0, …) and ``onnxcam eval`` with the optional metrics on.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from scipy.stats import pearsonr
from test_cli_export import onnxcam

from onnxcam import Explainer
from onnxcam import metrics as M
from onnxcam.evaluate import (
    OPTIONAL,
    RANDOM,
    SUMMARY,
    EvalOptions,
    eval_maps,
    eval_scorer,
    evaluate,
    reexplainer,
)
from onnxcam.export import export_torch
from onnxcam.image import preprocess

quantus = pytest.importorskip("quantus")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class Setup:
    """The torch net, its onnxcam export, two images, their inputs, classes and maps."""

    def __init__(self, d: Path) -> None:
        torch.manual_seed(0)
        self.net = torchvision.models.resnet18(num_classes=10).eval()
        with torch.no_grad():  # a confident head: probabilities far from uniform
            self.net.fc.weight.mul_(5)
        self.path = d / "r18.cam.onnx"
        export_torch(self.net, (1, 3, 64, 64), output=self.path)
        self.ex = Explainer(self.path, device="cpu")
        rng = np.random.default_rng(0)
        self.images = []
        for _ in range(2):  # smooth blobs, larger than the input (shrunk as real photos are)
            small = rng.uniform(0, 255, (6, 7, 3)).astype(np.float32)
            big = cv2.resize(small, (96, 80), interpolation=cv2.INTER_CUBIC)
            self.images.append(np.clip(big, 0, 255))  # what ``Explainer.load`` does
        self.x = preprocess(self.images, self.ex.info.input)
        exps = self.ex.explain(self.images, "gradcam")
        self.cls = np.array([r.target.index for r in exps])
        self.maps = np.stack([r.maps["gradcam"].input for r in exps])
        self.orig = [r.maps["gradcam"].original for r in exps]
        self.inv = 1 - self.maps  # the inverted maps: an unfaithful explanation, ROAD > 0
        self.random = np.stack(
            [eval_maps(r, self.x[i : i + 1], (64, 64), (80, 96), 0)[RANDOM][0] for i, r in
             enumerate(exps)]
        )  # fmt: skip
        self.opts = EvalOptions()
        self.scorer = eval_scorer(self.ex, self.opts)
        self.explain = reexplainer(self.ex, None, 0, exps[0].maps["gradcam"].feature.shape)

    def torch_probs(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(np.asarray(x, np.float32))), -1).numpy()

    def explain_gradcam(self, x: np.ndarray, classes) -> np.ndarray:
        exps = self.ex.explain_tensor(np.asarray(x, np.float32), "gradcam", classes=list(classes))
        return np.stack([e.maps["gradcam"].input for e in exps])


@pytest.fixture(scope="module")
def s(tmp_path_factory) -> Iterator[Setup]:
    """The setup, with torch on one thread (small models on a busy 2-core box run several
    times faster so; restored after the module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Setup(tmp_path_factory.mktemp("peers"))
    finally:
        torch.set_num_threads(before)


def test_the_torch_net_and_its_export_agree(s) -> None:
    """The peers run the torch module, onnxcam its export: same probabilities (≤ 1e-5)."""
    both = np.stack([s.x[0], s.x[1]])
    scores = s.scorer.images(iter([both]), 2, int(s.cls[0])).prob
    np.testing.assert_allclose(scores, s.torch_probs(both)[:, s.cls[0]], atol=1e-5)
    print("top-1 probabilities", s.torch_probs(s.x).max(1))


# --- Quantus: Complexity, Sparseness ----------------------------------------------------------
@pytest.mark.parametrize("which", ["gradcam", RANDOM])
def test_complexity_and_sparseness_equal_quantus(s, which) -> None:
    maps = s.maps if which == "gradcam" else s.random
    kw = {"x_batch": s.x, "y_batch": s.cls, "channel_first": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_cx = quantus.Complexity(disable_warnings=True)(
            model=s.net, a_batch=maps[:, None].copy(), **kw
        )
        q_sp = quantus.Sparseness(disable_warnings=True)(
            model=s.net, a_batch=maps[:, None].copy(), **kw
        )
    ours_cx = [M.complexity_entropy(m) for m in maps]
    ours_sp = [M.sparseness_gini(m) for m in maps]
    print(f"{which}: complexity ours {ours_cx} quantus {list(q_cx)}")
    print(f"{which}: sparseness ours {ours_sp} quantus {list(q_sp)}")
    np.testing.assert_allclose(ours_cx, q_cx, rtol=1e-6)
    np.testing.assert_allclose(ours_sp, q_sp, rtol=1e-6)


def test_complexity_and_sparseness_mean_what_they_say() -> None:
    one = np.zeros((32, 32), np.float32)
    one[5, 7] = 1
    flat = np.ones((32, 32), np.float32)
    blob = np.zeros((32, 32), np.float32)
    blob[8:16, 8:16] = 1
    # entropy: 0 for one pixel, log(n) uniform, log(64) for a 64-pixel blob
    assert M.complexity_entropy(one) == pytest.approx(0, abs=1e-9)
    assert M.complexity_entropy(flat) == pytest.approx(np.log(1024))
    assert M.complexity_entropy(blob) == pytest.approx(np.log(64))
    # Gini: ~1 for one pixel, 0 uniform; Poppi's L1 complexity: share of the mass
    assert M.sparseness_gini(one) > 0.99 and M.sparseness_gini(flat) == pytest.approx(0, abs=1e-9)
    assert M.sparseness_gini(one) > M.sparseness_gini(blob) > M.sparseness_gini(flat)
    assert M.complexity_l1(one) < M.complexity_l1(blob) < M.complexity_l1(flat) == 1.0
    assert M.complexity_l1(blob) == pytest.approx(64 / 1024)
    # scale-free (Quantus normalises by the max first; onnxcam's maps are [0, 1] already)
    assert M.complexity_entropy(3 * blob) == pytest.approx(M.complexity_entropy(blob))


# --- Quantus: MaxSensitivity ------------------------------------------------------------------
def test_max_sensitivity_equals_quantus_with_the_same_noise(s) -> None:
    """Quantus draws its noise with ``np.random.uniform``: seeded, and ours given the same
    ``RandomState``, both perturb with identical values, so the values must agree (≤ 1e-6)."""
    samples, radius = 3, 0.2

    def explain_func(model, inputs, targets, **kw):
        return s.explain_gradcam(inputs, targets)[:, None]

    for i in range(2):
        np.random.seed(100 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantus.MaxSensitivity(
                nr_samples=samples, lower_bound=radius, disable_warnings=True
            )(
                model=s.net, x_batch=s.x[i : i + 1], y_batch=s.cls[i : i + 1],
                a_batch=s.maps[i : i + 1, None].copy(), explain_func=explain_func,
                channel_first=True,
            )  # fmt: skip
        ours = M.max_sensitivity(
            lambda xs, i=i: s.explain("gradcam", xs, int(s.cls[i])),
            s.x[i : i + 1], s.maps[i], radius, samples, np.random.RandomState(100 + i),
        )  # fmt: skip
        print(f"image {i}: Max-Sensitivity ours {ours:.6f} quantus {q[0]:.6f}")
        assert ours == pytest.approx(q[0], rel=1e-6, abs=1e-9)
        assert ours > 0


def test_max_sensitivity_means_what_it_says(s) -> None:
    x, m = s.x[:1], s.maps[0]
    const = M.max_sensitivity(lambda xs: np.repeat(m[None], len(xs), 0), x, m, 0.5, 5)
    assert const == 0.0  # an explainer that ignores its input
    # a real method at radius 0 re-explains the same input: the same map
    assert M.max_sensitivity(lambda xs: s.explain("gradcam", xs, int(s.cls[0])), x, m, 0.0, 2) == (
        pytest.approx(0, abs=1e-6)
    )
    # more noise, more change; the random baseline (a new map per input) is the least stable
    small = M.max_sensitivity(lambda xs: s.explain("gradcam", xs, int(s.cls[0])), x, m, 0.05, 4)
    big = M.max_sensitivity(lambda xs: s.explain("gradcam", xs, int(s.cls[0])), x, m, 1.0, 4)
    rnd = M.max_sensitivity(
        lambda xs: s.explain(RANDOM, xs, int(s.cls[0])), x, s.random[0], 0.05, 4
    )
    print(f"Max-Sensitivity: gradcam r=0.05 {small:.4f}, r=1 {big:.4f}; random r=0.05 {rnd:.4f}")
    assert 0 < small < big and rnd > small


# --- pytorch-grad-cam: ARCC (Complexity, Coherency, ROADCombined) -----------------------------
def test_arcc_equals_pytorch_grad_cam(s, monkeypatch) -> None:
    from pytorch_grad_cam.metrics import arcc as pgc
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    # their imputation adds torch.randn · 0.01, ours numpy's: both set to 0 to compare exactly
    monkeypatch.setattr(
        road.NoisyLinearImputer.__init__, "__defaults__", (0.0, road.neighbors_weights)
    )

    def base_method(input_tensor, targets):
        return s.explain_gradcam(input_tensor.numpy(), [t.category for t in targets])

    maps = np.concatenate([s.maps, s.inv])  # Grad-CAM's maps, then their inverses
    x, cls = np.concatenate([s.x, s.x]), np.concatenate([s.cls, s.cls])
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in cls]
    xt = torch.from_numpy(x)
    theirs = pgc.ARCC(base_method)(xt, maps, targets, s.net)
    their_cx = pgc.Complexity()(maps)
    their_coh = pgc.Coherency()(xt, maps, targets, s.net, base_method)
    their_road = road.ROADCombined(percentiles=[20, 40, 60, 80])(xt, maps, targets, s.net)
    for i in range(4):
        c = int(cls[i])
        remap = s.explain("gradcam", M.masked_input(x[i : i + 1], maps[i]), c)[0]
        coh = M.coherency(maps[i], remap)
        cx = M.complexity_l1(maps[i])
        rc = M.road_combined(s.scorer, x[i : i + 1], maps[i], c, noise=0.0)
        ours = M.arcc(coh, cx, rc)
        print(
            f"map {i}: ARCC ours {ours:.6f} pytorch-grad-cam {theirs[i]:.6f}; coherency "
            f"{coh:.6f}/{their_coh[i]:.6f}, complexity {cx:.6f}/{their_cx[i]:.6f}, "
            f"ROADCombined {rc:.6f}/{their_road[i]:.6f}"
        )
        assert cx == pytest.approx(their_cx[i], rel=1e-6)
        assert coh == pytest.approx(their_coh[i], abs=1e-6)
        assert rc == pytest.approx(their_road[i], abs=2e-5)
        assert ours == pytest.approx(theirs[i], abs=5e-5)
    assert (theirs > 0.05).sum() >= 1  # a map with ROAD > 0: ARCC not clipped to 0


def test_arcc_and_adcc_mean_what_they_say() -> None:
    m = np.random.default_rng(0).uniform(size=(8, 8))
    assert M.coherency(m, m) == pytest.approx(1.0)
    assert M.coherency(m, 1 - m) == pytest.approx(0.0)
    assert M.coherency(np.ones((8, 8)), m) == 0.5  # a constant map: no correlation
    assert M.adcc(1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert M.adcc(1.0, 0.5, 0.5) == pytest.approx(3 / (1 + 2 + 2))
    assert M.adcc(0.9, 0.2, 1.0) == 0.0  # all confidence lost
    assert M.arcc(1.0, 0.0, 0.5) == pytest.approx(1.0, abs=1e-7)
    assert M.arcc(1.0, 0.0, -0.2) == pytest.approx(0.0, abs=1e-6)  # ROAD clipped at 0


# --- ADCC: OpenVINO XAI's and aimagelab's formula ---------------------------------------------
def test_adcc_equals_the_openvino_xai_formula(s) -> None:
    """OpenVINO XAI 1.1 ``ADCC.__call__`` (and aimagelab/ADCC's ``coherency``): Average Drop
    from the model's softmax on ``x ⊙ map``, Coherency (pearsonr + 1) / 2 with the masked
    input's map, Complexity ``map.sum() / (H·W)``, the harmonic mean — transcribed, on the
    torch net's probabilities. Masking is on the normalised tensor on both sides (OpenVINO
    XAI masks its raw input image: docs/evaluation.md)."""
    y_all = s.torch_probs(s.x)
    for i in range(2):
        c = int(s.cls[i])
        sal = s.maps[i]
        masked = s.x[i : i + 1] * sal[None, None]
        conf_in = y_all[i, c]
        conf_sal = s.torch_probs(masked)[0, c]
        avgdrop = max(0.0, conf_in - conf_sal) / conf_in
        b = s.explain_gradcam(masked, [c])[0]
        coh = (pearsonr(sal.flatten(), b.flatten())[0] + 1) / 2
        com = sal.sum() / (sal.shape[-1] * sal.shape[-2])
        peer = 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - avgdrop))
        # ours, through eval's per-image path
        y, o = M.confidence_change(s.scorer, s.x[i : i + 1], sal[None], np.array([c]))
        drop = float(max(0.0, y[0] - o[0]) / (y[0] + 1e-7))
        ours_coh = M.coherency(sal, s.explain("gradcam", M.masked_input(s.x[i : i + 1], sal), c)[0])
        ours = M.adcc(ours_coh, M.complexity_l1(sal), drop)
        print(f"image {i}: ADCC ours {ours:.6f} OpenVINO XAI formula {peer:.6f} (drop {drop:.4f})")
        assert ours_coh == pytest.approx(coh, abs=1e-6)
        assert drop == pytest.approx(avgdrop, abs=1e-5)
        assert ours == pytest.approx(peer, abs=1e-5)


# --- Average Gain -------------------------------------------------------------------------------
def test_average_gain_formula_and_independent_computation(s) -> None:
    assert M.average_gain(np.array([0.2, 0.5]), np.array([0.6, 0.4])) == pytest.approx(
        100 * (0.5 + 0) / 2, rel=1e-6
    )
    assert M.average_gain(np.array([0.9]), np.array([0.9])) == 0.0
    second = np.argsort(-s.torch_probs(s.x), 1)[:, 1]  # the runner-up class has room to gain
    maps = np.concatenate([s.maps, s.random, s.inv, s.maps, s.inv])
    xs = np.concatenate([s.x] * 5)
    cls = np.concatenate([s.cls, s.cls, s.cls, second, second])
    y, o = M.confidence_change(s.scorer, xs, maps, cls)
    p = s.torch_probs(xs)[np.arange(10), cls]
    q = s.torch_probs(xs * maps[:, None])[np.arange(10), cls]
    peer = 100 * np.mean(np.maximum(0, q - p) / (1 - p))
    ours = M.average_gain(y, o)
    print(f"Average Gain ours {ours:.5f} torch {peer:.5f} (O − Y: {np.round(o - y, 4)})")
    assert ours == pytest.approx(peer, abs=1e-3)
    assert (o > y).any() and ours > 0


# --- OpenVINO XAI's insertion / deletion ------------------------------------------------------
def _ovx_reference(predict, saliency_map, class_idx, input_image, steps):
    """openvino_xai/metrics/insertion_deletion_auc.py (1.1.0), ``__call__`` and ``AUC``."""
    sorted_indices = np.argsort(-saliency_map.flatten())
    sorted_indices = np.unravel_index(sorted_indices, saliency_map.shape)
    insertion_scores, deletion_scores = [], []
    for i in range(steps + 1):
        num_pixels = int(i * len(sorted_indices[0]) / steps)
        image_insertion = np.full_like(input_image, 0)
        image_deletion = input_image.copy()
        x_indices = sorted_indices[0][:num_pixels]
        y_indices = sorted_indices[1][:num_pixels]
        image_insertion[x_indices, y_indices] = input_image[x_indices, y_indices]
        image_deletion[x_indices, y_indices] = 0
        insertion_scores.append(predict(image_insertion)[class_idx])
        deletion_scores.append(predict(image_deletion)[class_idx])

    def auc(arr):
        return np.abs((arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1))

    return auc(np.array(insertion_scores)), auc(np.array(deletion_scores))


def test_openvino_xai_insertion_deletion_equals_their_code(s) -> None:
    def predict(img):  # their preprocess_fn / postprocess_fn: resize, normalise; softmax
        r = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
        x = ((r / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
        return s.torch_probs(x)[0]

    for i in range(2):
        c = int(s.cls[i])
        ins_ref, del_ref = _ovx_reference(predict, s.orig[i], c, s.images[i], 10)
        ins, dele = M.ovx_insertion_deletion(
            s.scorer, s.images[i], s.orig[i], c, s.ex.info.input, 10
        )
        rise = M.deletion_insertion(s.scorer, s.x[i : i + 1], s.maps[i], c, "deletion", 10)
        print(
            f"image {i}: OpenVINO XAI insertion ours {ins.auc:.6f} theirs {ins_ref:.6f}, "
            f"deletion ours {dele.auc:.6f} theirs {del_ref:.6f}; onnxcam's own RISE deletion "
            f"(mean baseline, input pixels) {rise.auc:.6f}"
        )
        assert ins.auc == pytest.approx(ins_ref, abs=1e-5)
        assert dele.auc == pytest.approx(del_ref, abs=1e-5)
        assert M.ovx_auc(ins.scores) == pytest.approx(ins.auc)
    assert M.ovx_auc(np.full(7, 0.3)) == pytest.approx(0.3)


OVX_PYTHON = os.environ.get("ONNXCAM_OVXAI_PYTHON") or (
    "/work/venv-ovxai/bin/python" if Path("/work/venv-ovxai/bin/python").exists() else None
)
OVX = """
import sys, numpy as np, openvino as ov
from openvino_xai.metrics import InsertionDeletionAUC
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
def pre(img):  # the same resize as onnxcam's preprocess (area when shrinking)
    import cv2
    r = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    return ((r / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
def post(out):
    z = out[0]
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
model = ov.Core().read_model(sys.argv[1])
metric = InsertionDeletionAUC(model, pre, post)
d = np.load(sys.argv[2])
def run(key):
    res = [metric(d[f"{key}{i}"], int(d["cls"][i]), d[f"img{i}"], steps=10) for i in range(2)]
    return [[r["insertion"], r["deletion"]] for r in res]
default = run("tied")  # OpenVINO's CPU default: bf16 where the CPU has AMX/AVX512-BF16
metric.model_compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[3], np.array([run("map"), run("tied"), default]))
print("ok")
"""


@pytest.mark.skipif(not OVX_PYTHON, reason="no OpenVINO XAI venv (ONNXCAM_OVXAI_PYTHON)")
def test_openvino_xai_itself_agrees(s, tmp_path) -> None:
    """OpenVINO XAI 1.1 run in its own venv (numpy 1.x) with OpenVINO on the plain ONNX
    export of the same torch net: its insertion/deletion AUCs equal ours (≤ 1e-4: OpenVINO
    CPU vs onnxruntime CPU) on maps without ties, once OpenVINO computes in f32 (its CPU
    default on a bf16-capable CPU is bf16, which moves the AUCs by ~5e-3: printed)."""
    plain = tmp_path / "r18.onnx"
    torch.onnx.export(s.net, (torch.from_numpy(s.x[:1]),), str(plain), dynamo=False)
    data = {f"img{i}": s.images[i] for i in range(2)}
    # ties (a 2×2 map upsampled has plateaus) are ordered by np.argsort's default sort, which
    # differs between numpy 1.26 and 2.x: compared on tie-free maps (+ distinct 1e-9 steps)
    jitter = [np.random.default_rng(i).permutation(m.size).reshape(m.shape) for i, m in
              enumerate(s.orig)]  # fmt: skip
    free = [s.orig[i].astype(np.float64) + 1e-9 * jitter[i] for i in range(2)]
    data.update({f"map{i}": free[i] for i in range(2)}, cls=s.cls)
    data.update({f"tied{i}": s.orig[i] for i in range(2)})
    np.savez(tmp_path / "in.npz", **data)
    r = subprocess.run(
        [OVX_PYTHON, "-c", OVX, str(plain), str(tmp_path / "in.npz"), str(tmp_path / "o.npy")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    theirs, tied, default = np.load(tmp_path / "o.npy")
    for i in range(2):
        ins, dele = M.ovx_insertion_deletion(
            s.scorer, s.images[i], free[i], int(s.cls[i]), s.ex.info.input, 10
        )
        ins_t, del_t = M.ovx_insertion_deletion(
            s.scorer, s.images[i], s.orig[i], int(s.cls[i]), s.ex.info.input, 10
        )
        print(
            f"image {i}: insertion, deletion: ours {ins.auc:.6f} {dele.auc:.6f}; OpenVINO XAI "
            f"f32 {theirs[i]}; with ties: ours (numpy 2) {ins_t.auc:.6f} {del_t.auc:.6f}, "
            f"theirs (numpy 1.26) {tied[i]}, theirs at OpenVINO's default precision {default[i]}"
        )
        assert ins.auc == pytest.approx(theirs[i, 0], abs=1e-4)
        assert dele.auc == pytest.approx(theirs[i, 1], abs=1e-4)


# --- onnxcam eval --------------------------------------------------------------------------------
def test_evaluate_and_the_cli_report_the_optional_metrics(s, tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for i, img in enumerate(s.images):
        files.append(folder / f"im{i}.png")
        cv2.imwrite(str(files[-1]), np.clip(img, 0, 255).astype(np.uint8)[..., ::-1])
    opts = EvalOptions(
        steps=4, road=False, baselines=("zero",), adcc=True, arcc=True,
        sensitivity_samples=2, ovx_steps=4,
    )  # fmt: skip
    res = evaluate(s.ex, files, ["gradcam"], None, opts)
    assert not res.failures
    for row in res.rows:
        assert set(OPTIONAL) | {"gain", "complexity", "sparseness", "complexity_l1"} <= set(row)
    g, r = res.summary["gradcam"], res.summary[RANDOM]
    print("eval gradcam/random: " + ", ".join(f"{k} {g[k]:.3f}/{r[k]:.3f}" for k in OPTIONAL))
    assert g["coherency"] > r["coherency"] and g["max_sensitivity"] < r["max_sensitivity"]
    # the CLI: flags → EvalOptions → metrics.json / csv / table
    out = tmp_path / "eval"
    p = onnxcam(
        "eval", s.path, folder, "-m", "gradcam", "--steps", "3", "--no-road", "--adcc",
        "--max-sensitivity", "2", "--openvino-auc-steps", "3", "-o", out,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "ADCC" in p.stdout and "Max-Sensitivity" in p.stdout and "ARCC" not in p.stdout
    doc = json.loads((out / "metrics.json").read_text())
    want = set(SUMMARY) | {"coherency", "adcc", "max_sensitivity", "ovx_insertion", "ovx_deletion"}
    assert set(doc["metrics"]) == want
    new = {"gain", "complexity", "sparseness", "complexity_l1"}
    assert (want - set(SUMMARY)) | new <= set(doc["summary"]["gradcam"])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-5:] == ["coherency", "adcc", "max_sensitivity", "ovx_insertion", "ovx_deletion"]
