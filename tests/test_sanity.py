"""Sanity checks for saliency maps (``onnxcam.sanity``, ``onnxcam.export.randomize``; Adebayo
et al., arXiv:1810.03292).

What is pinned:

1. the similarity measures against scipy's ``spearmanr`` and scikit-image's SSIM;
2. the plain forward extracted from an export is the model it was exported from, node for
   node; the cascade's weights do not depend on how the layers are grouped into steps;
3. randomising at the ONNX level and exporting again gives the same maps as re-initialising
   the torch model with the same values and exporting that (an independent path: torch's
   exporter folds the BatchNorm again, and the graph is built from scratch) — and a plain
   initializer swap on the exported graph does not (the reason for the design);
4. on the real-weight EfficientNet-Lite0: Grad-CAM and saliency decorrelate as the layers are
   randomised, Guided Backprop stays similar until the low layers go, and a random class
   changes Grad-CAM's map but not Guided Backprop's;
5. ``onnxcam eval --sanity``: exit 0, sanity.json with a row per method and step; bad values
   are one-line errors.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from test_cli_export import assert_one_line_error, onnxcam

from onnxcam import Explainer, OnnxcamError
from onnxcam.export import export_onnx, plain_onnx
from onnxcam.export.api import _all_nodes
from onnxcam.export.randomize import Cascade, cascade_counts, extract_forward
from onnxcam.sanity import cascading_randomization, rank, spearman, ssim

PIXEL_METHODS = ["gradcam", "saliency", "guided-backprop"]


@pytest.fixture(scope="module")
def tiny_pixels(tiny_onnx) -> bytes:
    """The tiny CNN (conftest) exported with the input gradient and the guided rule."""
    res = export_onnx(tiny_onnx, input_gradient=True, rules="guided", labels=list("abcde"))
    return res.model.SerializeToString()


@pytest.fixture(scope="module")
def noise_images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (40, 48, 3)).astype(np.float32) for _ in range(2)]


# --- 1. the measures --------------------------------------------------------------------------
def test_spearman_equals_scipy_with_ties(rng) -> None:
    from scipy.stats import spearmanr

    a = rng.integers(0, 5, (16, 16)).astype(float)  # many ties, as a rectified map has
    b = a + rng.normal(0, 2, a.shape)
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    assert rank(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.zeros((4, 4)), b[:4, :4]) == 0.0  # a constant map carries no ranks


def test_ssim_equals_scikit_image(rng) -> None:
    from skimage.metrics import structural_similarity

    a = cv2.GaussianBlur(rng.random((64, 80)), (9, 9), 3)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    want = structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, b) == pytest.approx(want, abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


# --- 2. extraction and the cascade ------------------------------------------------------------
def test_extracted_forward_is_the_exported_model_node_for_node(tiny_onnx, tiny_pixels) -> None:
    """Every forward node back as it was (MaxPool's Indices, switched on by the export for
    its backward, switched off again), the same weights, the same outputs."""
    plain = onnx.load(str(tiny_onnx))
    forward, c = extract_forward(tiny_pixels)
    assert [n.SerializeToString() for n in forward.graph.node] == [
        n.SerializeToString() for n in plain.graph.node
    ]
    exported = onnx.load_from_string(tiny_pixels)  # (a forward copy: the default with pixels)
    pools = [n for n, _ in _all_nodes(exported.graph) if n.op_type == "MaxPool"]
    assert any(len(n.output) == 2 for n in pools)  # the export did switch it on
    want = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in forward.graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert [i.name for i in forward.graph.input] == ["input"]
    assert not any(p.key.startswith("onnxcam.") for p in forward.metadata_props)
    assert c.targets[-1].pixels


def test_cascade_steps_and_values_do_not_depend_on_the_grouping(tiny_pixels) -> None:
    assert cascade_counts(50, 8) == [1, 8, 15, 22, 29, 36, 43, 50]
    assert cascade_counts(5, 1) == [5]
    assert cascade_counts(3, 10) == [1, 2, 3]
    c = Cascade(tiny_pixels, seed=3)
    assert [(layer.node, layer.op_type) for layer in c.layers] == [
        ("/fc/Gemm", "Gemm"),
        ("/head_conv/Conv", "Conv"),
        ("/block/block.2/Conv", "Conv"),
        ("/block/block.0/Conv", "Conv"),
        ("/stem/stem.0/Conv", "Conv"),  # its BatchNorm was folded in by torch's exporter
    ]
    two, three = (
        {t.name: numpy_helper.to_array(t) for t in c.model(k).graph.initializer} for k in (2, 3)
    )
    orig = {t.name: numpy_helper.to_array(t) for t in c.forward.graph.initializer}
    for name in orig:
        top2 = name.startswith(("fc.", "head_conv."))
        assert np.array_equal(two[name], three[name]) == (not name.startswith("block.2"))
        assert np.array_equal(two[name], orig[name]) == (not top2)
    w = two["head_conv.weight"]
    assert w.std() == pytest.approx(orig["head_conv.weight"].std(), rel=0.2)
    assert abs(w.mean()) < 0.2 * w.std()  # N(0, σ²), σ the original's std


# --- 3. against an independent reference ------------------------------------------------------
def _torch_reinit(net: torch.nn.Module, randomized: onnx.ModelProto, c: Cascade, k: int):
    """A copy of ``net`` with the top ``k`` layers' values taken from the randomised ONNX
    model; a BatchNorm after a re-initialised convolution becomes the identity (its ONNX
    convolution holds the folded weights, now random)."""
    net = copy.deepcopy(net)
    values = {t.name: numpy_helper.to_array(t) for t in randomized.graph.initializer}
    for layer in c.layers[:k]:
        module = net.get_submodule(layer.node.split("/")[-2])
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(values[layer.tensors[0]].copy()))
            module.bias.copy_(torch.from_numpy(values[layer.tensors[1]].copy()))
        parent, _, index = layer.node.split("/")[-2].rpartition(".")
        after = list(net.get_submodule(parent))[int(index) + 1 :] if parent else []
        bn = after[0] if after else None
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_(float(np.sqrt(1.0 + bn.eps)))
                bn.bias.zero_()
    return net


@pytest.mark.parametrize("k", [2, 5])
def test_onnx_randomisation_equals_torch_reinit(
    k, tiny_torch_model, tiny_pixels, noise_images
) -> None:
    """The cascade's model after k layers = the torch model with those layers re-initialised
    to the same values, exported by torch and onnxcam from scratch: same logits, same maps."""
    c = Cascade(tiny_pixels, seed=11)
    randomized = c.model(k)
    net = _torch_reinit(tiny_torch_model, randomized, c, k)
    reference = export_onnx(
        plain_onnx(net, (1, 3, 32, 32)), input_gradient=True, rules="guided", labels=list("abcde")
    ).model.SerializeToString()
    got = Explainer(c.export(k), device="cpu").explain(noise_images, PIXEL_METHODS, classes=1)
    want = Explainer(reference, device="cpu").explain(noise_images, PIXEL_METHODS, classes=1)
    orig = Explainer(tiny_pixels, device="cpu").explain(noise_images, PIXEL_METHODS, classes=1)
    for g, w, o in zip(got, want, orig, strict=True):
        assert g.target.logit == pytest.approx(w.target.logit, rel=1e-5, abs=1e-5)
        assert abs(g.target.logit - o.target.logit) > 1e-3  # the weights did change
        for m in PIXEL_METHODS:
            a, b = g.maps[m].raw, w.maps[m].raw
            assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), m


def test_a_plain_initializer_swap_leaves_the_backward_stale(
    tiny_onnx, tiny_pixels, noise_images
) -> None:
    """Why the cascade exports again: overriding a one-graph export's weights at session
    creation changes the forward (optimisations off: onnxruntime merges the branch copies of
    a kernel with the forward's otherwise) but not the flipped kernels of the backward. (In a
    forward copy the branches hold their own copies: a swap by name reaches neither.)"""
    one = export_onnx(
        tiny_onnx, input_gradient=True, rules="guided", labels=list("abcde"), forward_copy=False
    ).model.SerializeToString()
    c = Cascade(tiny_pixels, seed=11)
    k = 4
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    names = {t for layer in c.layers[:k] for t in layer.tensors}
    values = {
        t.name: ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t))
        for t in c.model(k).graph.initializer
        if t.name in names
    }  # kept alive until the session is made
    for name, value in values.items():
        so.add_initializer(name, value)
    swapped = Explainer(one, device="cpu", session_options=so)
    right = Explainer(c.export(k), device="cpu")
    a = swapped.explain(noise_images, ["saliency"], classes=1)
    b = right.explain(noise_images, ["saliency"], classes=1)
    for x, y in zip(a, b, strict=True):
        assert x.target.logit == pytest.approx(y.target.logit, rel=1e-5)  # forward: swapped
        err = np.abs(x.maps["saliency"].raw - y.maps["saliency"].raw).max()
        assert err > 0.1 * np.abs(y.maps["saliency"].raw).max()  # backward: stale


def test_a_given_source_must_be_the_exported_model(tiny_pixels, tiny_onnx, tmp_path) -> None:
    images = [np.full((32, 32, 3), 90.0, np.float32)]
    r = cascading_randomization(
        tiny_pixels, images, "gradcam", 2, source=tiny_onnx, device="cpu", random_logit=False
    )
    assert r.forward.startswith("given") and [s.layers for s in r.steps] == [1, 5]
    torch.manual_seed(1)
    other = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5)
    )
    other(torch.zeros(1, 3, 32, 32))
    wrong = tmp_path / "other.onnx"
    wrong.write_bytes(plain_onnx(other.eval(), (1, 3, 32, 32)))
    with pytest.raises(OnnxcamError, match="does not reproduce"):
        cascading_randomization(tiny_pixels, images, "gradcam", 2, source=wrong, device="cpu")


# --- 4. the real-weight EfficientNet-Lite0 ----------------------------------------------------
@pytest.fixture(scope="module")
def lite0_sanity(tmp_path_factory, photos):
    """Lite0 (ImageNet weights) with the input gradient and the guided rule; the checks on
    chelsea and coffee in 4 cascade steps (1, 17, 34, 50 of its 50 layers)."""
    import warnings

    from onnxcam.models import efficientnet_lite0

    out = tmp_path_factory.mktemp("lite0s") / "lite0.guided.cam.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        efficientnet_lite0.export(out, rules="guided")
    images = [photos["chelsea"], photos["coffee"]]
    return cascading_randomization(out, images, PIXEL_METHODS, steps=4, seed=0, device="cpu")


def _abs(result, method: str) -> list[float]:
    return [v["spearman_abs"] for v in result.cascade[method]]


@pytest.mark.model
def test_lite0_gradcam_and_saliency_decorrelate_guided_backprop_does_not(lite0_sanity) -> None:
    """Measured (Spearman of |map|, mean of 2 photos; steps = 1, 17, 34, 50 layers):
    gradcam −0.12 −0.01 0.00 0.21, saliency 0.44 0.36 0.31 0.01, guided-backprop 0.999 0.94
    0.55 0.03 — Guided Backprop is blind to the top third of the network (Adebayo's finding)."""
    r = lite0_sanity
    assert [s.layers for s in r.steps] == [1, 17, 34, 50] and r.total_layers == 50
    assert r.steps[0].lowest == "/model/_fc/Gemm" and r.steps[-1].lowest == "/model/_conv_stem/Conv"
    assert r.forward.startswith("extracted")
    gc, sal, gbp = (_abs(r, m) for m in PIXEL_METHODS)
    assert max(abs(v) for v in gc[:3]) < 0.3 and gc[3] < 0.5  # from the first step on
    assert sal[0] < 0.7 and abs(sal[3]) < 0.15  # all layers: gone
    assert gbp[0] > 0.97 and gbp[1] > 0.85  # the logits and 16 more layers: unchanged
    assert gbp[1] - max(abs(gc[1]), sal[1]) > 0.4
    assert gbp[3] < gbp[2] < gbp[1]  # it decorrelates only as the low layers go
    signed = [v["spearman_signed"] for v in r.cascade["guided-backprop"]]
    assert signed[1] > 0.9 and r.cascade["saliency"][0]["spearman_signed"] is None


@pytest.mark.model
def test_lite0_random_logit_changes_gradcam_not_guided_backprop(lite0_sanity) -> None:
    """Measured: a random class's map vs the explained class's: gradcam 0.31, saliency 0.46,
    guided-backprop 0.999 (class-insensitive)."""
    r = lite0_sanity
    assert all(c != o for c, o in zip(r.random_classes, r.classes, strict=True))
    logit = {m: r.random_logit[m]["spearman_abs"] for m in PIXEL_METHODS}
    assert logit["guided-backprop"] > 0.95
    assert logit["gradcam"] < logit["guided-backprop"] - 0.3
    assert r.random_logit["guided-backprop"]["ssim"] > 0.95


# --- 5. the command line ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_pixels, noise_images) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sanity_cli")
    model = d / "tiny.cam.onnx"
    model.write_bytes(tiny_pixels)
    images = d / "images"
    images.mkdir()
    for i, img in enumerate(noise_images):
        cv2.imwrite(str(images / f"noise{i}.png"), img.astype(np.uint8))
    return model, images


def test_cli_eval_sanity_writes_a_row_per_method_and_step(folder, tmp_path) -> None:
    model, images = folder
    out = tmp_path / "eval"
    r = onnxcam(
        "eval", model, images, "--sanity", "--sanity-steps", "3", "-m", ",".join(PIXEL_METHODS),
        "--steps", "4", "--no-road", "-o", out, "--device", "cpu",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "sanity.json").read_text())
    assert [s["layers"] for s in doc["steps"]] == [1, 3, 5]
    seen = {(row["method"], row["step"]) for row in doc["rows"]}
    assert seen == {(m, s) for m in PIXEL_METHODS for s in [1, 2, 3, "random-logit"]}
    assert len(doc["rows"]) == 2 * len(seen)  # both images
    assert set(doc["cascade"]) == set(PIXEL_METHODS) and len(doc["cascade"]["gradcam"]) == 3
    assert (out / "sanity.png").is_file() and (out / "metrics.json").is_file()
    assert "rand.logit" in r.stdout and "s3:   5 layers, down to /stem/stem.0/Conv" in r.stdout


def test_cli_sanity_only_skips_the_metrics(folder, tmp_path) -> None:
    model, images = folder
    out = tmp_path / "eval"
    r = onnxcam(
        "eval", model, images, "--sanity-only", "--sanity-steps", "1", "-m", "gradcam",
        "-o", out, "--device", "cpu", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["sanity"]
    assert [s["layers"] for s in doc["steps"]] == [5]
    assert (out / "sanity.json").is_file() and not (out / "metrics.json").exists()


def test_cli_bad_sanity_values_are_one_line_errors(folder, tmp_path) -> None:
    model, images = folder
    r = onnxcam("eval", model, images, "--sanity", "--sanity-steps", "0", "-o", tmp_path)
    assert_one_line_error(r, "--sanity-steps must be at least 1")
    r = onnxcam("eval", model, images, "--source", model, "-o", tmp_path)
    assert_one_line_error(r, "--source", "--sanity")
    r = onnxcam(
        "eval", model, images, "--sanity-only", "--source", tmp_path / "missing.onnx",
        "-o", tmp_path,
    )  # fmt: skip
    assert_one_line_error(r, "missing.onnx")
