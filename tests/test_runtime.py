"""The runtime API: Explainer, classes, batching, image formats, devices, real photos."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from onnxcam import postprocess
from onnxcam.engine import Explainer
from onnxcam.errors import ContractError, DeviceError, ImageError, MethodError
from onnxcam.image import read_image
from onnxcam.methods import METHODS

GRADIENT_METHODS = [m for m, s in METHODS.items() if s.family in ("gradient", "activation")]


def _images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, size=(size, size + 8, 3)) for _ in range(n)]


# --- theory ------------------------------------------------------------------------------------
def test_gradcam_equals_cam_up_to_scale_on_gap_linear(tiny_cam) -> None:
    """Through GAP → Linear, dScore/dA = w_c / (h·w) everywhere, so Grad-CAM = CAM / (h·w)."""
    with Explainer(tiny_cam) as ex:
        for r in ex.explain(_images(3), ["cam", "gradcam"], relu=False):
            cam, grad = r.maps["cam"].raw, r.maps["gradcam"].raw
            h, w = cam.shape
            np.testing.assert_allclose(grad * h * w, cam, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(r.maps["gradcam"].feature, r.maps["cam"].feature, atol=1e-5)


# --- results -----------------------------------------------------------------------------------
def test_maps_at_three_resolutions_and_predictions(tiny_cam) -> None:
    with Explainer(tiny_cam) as ex:
        (r,) = ex.explain(_images(1), GRADIENT_METHODS)
        assert r.target == r.predictions[0]  # top-1 by default
        assert r.predictions[0].label == f"class{r.target.index}"
        assert abs(sum(p.probability for p in r.predictions) - 1) < 1e-5  # 5 classes: all of them
        for m in GRADIENT_METHODS:
            cm = r.maps[m]
            assert cm.feature.shape == (8, 8)
            assert cm.input.shape == (32, 32)
            assert cm.original.shape == (32, 40)
            assert cm.feature.min() >= 0 and cm.feature.max() <= 1
            assert np.isfinite(cm.original).all()
        ov = r.overlay("gradcam", alpha=0.4, colormap="turbo")
        assert ov.shape == (32, 40, 3) and ov.dtype == np.uint8


def test_batch_results_equal_one_by_one(tiny_cam) -> None:
    imgs = _images(5, seed=3)
    with Explainer(tiny_cam) as ex:
        batched = ex.explain(imgs, GRADIENT_METHODS, batch_size=4)
        single = ex.explain(imgs, GRADIENT_METHODS, batch_size=1)
    for a, b in zip(batched, single, strict=True):
        assert a.target.index == b.target.index
        for m in GRADIENT_METHODS:
            np.testing.assert_allclose(a.maps[m].feature, b.maps[m].feature, atol=1e-5)


def test_class_selection_index_label_list_and_topk(tiny_cam) -> None:
    imgs = _images(2, seed=5)
    with Explainer(tiny_cam) as ex:
        assert [r.target.index for r in ex.explain(imgs, classes=3)] == [3, 3]
        assert [r.target.index for r in ex.explain(imgs, classes="class1")] == [1, 1]
        assert [r.target.index for r in ex.explain(imgs, classes=[4, "class0"])] == [4, 0]
        top = ex.explain(imgs, "gradcam", topk=3)
        assert len(top) == 6
        for i in range(2):
            got = [r.target.index for r in top[3 * i : 3 * i + 3]]
            assert got == [p.index for p in top[3 * i].predictions[:3]]
            # a top-k map equals explaining that class directly
            direct = ex.explain(imgs[i], classes=got[2])[0]
            np.testing.assert_allclose(
                top[3 * i + 2].maps["gradcam"].feature, direct.maps["gradcam"].feature, atol=1e-5
            )
        with pytest.raises(ContractError, match="no class named"):
            ex.explain(imgs, classes="zebra")
        with pytest.raises(ContractError, match="out of range"):
            ex.explain(imgs, classes=9)


def test_smooth_gradcam_pp_is_seeded_and_reduces_to_gradcam_pp_without_noise(tiny_onnx) -> None:
    from onnxcam.export import export_onnx, list_layers

    # an earlier layer: through GAP → Linear alone the gradient would not depend on the input
    model = export_onnx(tiny_onnx, layers=[list_layers(tiny_onnx)[2].tensor]).model
    img = _images(1, seed=9)
    with Explainer(model.SerializeToString()) as ex:
        a = ex.explain(img, "smoothgradcam++", seed=1)[0].maps["smoothgradcam++"].feature
        b = ex.explain(img, "smoothgradcam++", seed=1)[0].maps["smoothgradcam++"].feature
        c = ex.explain(img, "smoothgradcam++", seed=2, smooth_noise=0.5)[0].maps["smoothgradcam++"]
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c.feature)
        zero = ex.explain(img, ["smoothgradcam++", "gradcam++"], smooth_noise=0.0)[0]
        np.testing.assert_allclose(
            zero.maps["smoothgradcam++"].feature, zero.maps["gradcam++"].feature, atol=1e-5
        )


def test_unknown_method_and_cam_without_gap_head(tiny_cam, tiny_onnx) -> None:
    from onnxcam.export import export_onnx, list_layers

    with Explainer(tiny_cam) as ex, pytest.raises(MethodError, match="unknown method"):
        ex.explain(_images(1), "gradcam+++")
    # an earlier layer does not feed GAP → Linear directly: CAM is refused with a reason
    early = export_onnx(tiny_onnx, layers=[list_layers(tiny_onnx)[0].tensor]).model
    with Explainer(early.SerializeToString()) as ex, pytest.raises(MethodError, match="GAP"):
        ex.explain(_images(1), "cam")


# --- never NaN -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", [m for m, s in METHODS.items() if s.family in ("gradient", "activation", "classifier")]
)
def test_all_zero_gradients_or_activations_give_zero_maps(name) -> None:
    rng = np.random.default_rng(0)
    A = rng.uniform(0, 1, size=(2, 6, 5, 4)).astype(np.float32)
    for a, g in ((A, np.zeros_like(A)), (np.zeros_like(A), np.zeros_like(A))):
        args = {"activations": a, "gradients": g, "cam_weights": np.zeros((2, 6), np.float32)}
        raw = METHODS[name].fn(*[args[n] for n in METHODS[name].needs])
        m = postprocess.normalize(postprocess.relu(raw))
        assert np.isfinite(m).all()
        if "gradients" in METHODS[name].needs or not a.any():  # class-agnostic: A's map
            np.testing.assert_array_equal(m, 0)


@pytest.mark.parametrize(
    "name", [m for m, s in METHODS.items() if s.needs == ("activations", "gradients")]
)
@pytest.mark.parametrize("sign", ["nonnegative", "signed"])
def test_per_channel_gradient_gives_the_same_maps_as_the_full_tensor(name, sign) -> None:
    """The engine passes a pooled gradient as [B, C, 1, 1] (TargetLayer.gradient_pooled);
    every method must give the map it gives for that gradient broadcast to every position."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 16, 6, 5)).astype(np.float32)
    A = np.maximum(A, 0) if sign == "nonnegative" else A
    g = rng.normal(size=(3, 16, 1, 1)).astype(np.float32)
    full = METHODS[name].fn(A, np.broadcast_to(g, A.shape).copy())
    pooled = METHODS[name].fn(A, g)
    scale = np.abs(full).max()
    assert np.abs(pooled - full).max() <= 1e-5 * scale


def test_gradcam_pp_is_finite_where_its_denominator_vanishes() -> None:
    """2G² + ΣA·G³ = 0 for G = −2/ΣA: a negative gradient there must not make inf·0 = NaN."""
    A = np.ones((1, 2, 2, 2), np.float32)  # ΣA = 4 per channel
    G = np.full_like(A, 0.25)
    G[0, 0] = -0.5  # 2·0.25 − 4·0.125 = 0
    raw = METHODS["gradcam++"].fn(A, G)
    assert np.isfinite(raw).all() and (raw > 0).all()


def test_top_eigenpair_matches_a_full_eigendecomposition() -> None:
    from onnxcam.methods import _top_eigenpair

    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 49, 300))
    X[1] *= 0  # all zero: λ = 0, any unit vector
    X[2, :, 0] *= 1e3  # one dominant direction
    S = X @ X.transpose(0, 2, 1)
    lam, vec = _top_eigenpair(S)
    vals, vecs = np.linalg.eigh(S)
    np.testing.assert_allclose(lam, vals[:, -1], rtol=1e-12, atol=1e-9)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1)
    for i in (0, 2, 3, 4, 5):
        assert abs(abs(vec[i] @ vecs[i, :, -1]) - 1) < 1e-9


def test_constant_and_nan_maps_normalise_to_zeros() -> None:
    m = np.stack([np.full((4, 4), 3.0), np.full((4, 4), np.nan)])
    np.testing.assert_array_equal(postprocess.normalize(m), 0)


def test_black_image_end_to_end_is_finite(tiny_cam) -> None:
    with Explainer(tiny_cam) as ex:
        r = ex.explain(np.zeros((32, 32, 3)), [*GRADIENT_METHODS, "cam", "smoothgradcam++"])[0]
    assert all(np.isfinite(m.original).all() for m in r.maps.values())


# --- image formats -----------------------------------------------------------------------------
def test_image_formats_gray_rgba_16bit(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb.astype(np.float32))
    gray = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (20, 30, 3) and np.array_equal(g[..., 1], gray.astype(np.float32))
    rgba = np.dstack([rgb[..., ::-1], np.full((20, 30), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # top half transparent → black
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    a = read_image(tmp_path / "a.png")
    assert np.all(a[:10] == 0) and np.array_equal(a[10:], rgb[10:].astype(np.float32))
    deep = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "d.png"), deep[..., ::-1])
    np.testing.assert_allclose(read_image(tmp_path / "d.png"), rgb, atol=1e-3)


def test_exif_orientation_is_applied(tmp_path) -> None:
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :20] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape == (60, 40, 3)
    assert out[:15].mean() > 200 and out[-15:].mean() < 50  # the band is now on top


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_unreadable_image_is_a_clear_error(tmp_path, content, tiny_cam) -> None:
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=r"bad\.png"):
        read_image(p)
    with Explainer(tiny_cam) as ex:
        out = list(ex.iter_explain([p, _images(1)[0]], "gradcam"))
    assert type(out[0]).__name__ == "Failure" and "bad.png" in out[0].error
    assert type(out[1]).__name__ == "Explanation"


# --- models and devices ------------------------------------------------------------------------
def test_plain_onnx_is_exported_in_memory_with_a_note(tiny_onnx) -> None:
    with Explainer(tiny_onnx) as ex:
        assert any("exported in memory" in n for n in ex.notes)
        assert ex.explain(_images(1))[0].maps["gradcam"].feature.shape == (8, 8)


def test_plain_onnx_without_exporter_says_how_to_export(tiny_onnx) -> None:
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from onnxcam.engine import Explainer\n"
        "from onnxcam.errors import ContractError\n"
        f"try:\n    Explainer({str(tiny_onnx)!r})\n"
        "except ContractError as e:\n    assert 'onnxcam export' in str(e), e\n"
        "else:\n    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_cam) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(DeviceError, match="CUDA"):
        Explainer(tiny_cam, device="cuda")
    assert Explainer(tiny_cam, device="auto").provider == "CPUExecutionProvider"


def test_nhwc_model_end_to_end() -> None:
    from test_export_api import _nhwc_model

    from onnxcam.export import export_onnx

    model = export_onnx(_nhwc_model()).model.SerializeToString()
    with Explainer(model) as ex:
        r = ex.explain(_images(1, size=16), ["gradcam", "cam", "layercam"])[0]
    assert r.maps["gradcam"].feature.shape == (16, 16)
    np.testing.assert_allclose(r.maps["gradcam"].feature, r.maps["cam"].feature, atol=1e-5)
    # the model ends in Softmax: predictions carry the real logits and softmax probabilities
    import onnxruntime as ort

    from onnxcam.image import as_rgb_array, preprocess

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = preprocess([as_rgb_array(_images(1, size=16)[0])], ex.info.input)
    logits, probs = sess.run(["onnxcam_logits", "probs"], {"image": x})
    top = r.predictions[0]
    assert top.index == int(probs[0].argmax())
    assert abs(top.logit - float(logits[0, top.index])) < 1e-5
    assert abs(top.probability - float(probs[0, top.index])) < 1e-5


# --- real photos, real weights -----------------------------------------------------------------
CAT_FACE = (60, 40, 350, 290)  # x0, y0, x1, y1 in chelsea (451×300)
ESPRESSO_CUP = (130, 0, 420, 260)  # in coffee (600×400)


def _peak_in(m: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y, x = np.unravel_index(np.argmax(m), m.shape)
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@pytest.mark.model
def test_efficientnet_lite0_chelsea_is_a_cat_and_gradcam_peaks_on_it(lite0_cam, photos) -> None:
    with Explainer(lite0_cam) as ex:
        cat, cup = ex.explain([photos["chelsea"], photos["coffee"]], ["gradcam", "gradcam++"])
    assert 281 <= cat.target.index <= 285, cat.target  # ImageNet's domestic cat classes
    assert "cat" in cat.target.label and cat.target.probability > 0.5
    assert cup.target.label in ("espresso", "cup", "coffee mug")
    for m in ("gradcam", "gradcam++"):
        assert _peak_in(cat.maps[m].original, CAT_FACE), m
        assert _peak_in(cup.maps[m].original, ESPRESSO_CUP), m
        # and the map is concentrated: most of its mass lies inside the object box
        x0, y0, x1, y1 = CAT_FACE
        mm = cat.maps[m].original
        assert mm[y0:y1, x0:x1].sum() / mm.sum() > 0.6


# --- predictions from the graph's top-k outputs --------------------------------------------------
def _head_model(classes: int, activation: str | None):
    """x [N, 3, 8, 8] → conv → ReLU → GAP → Gemm (``classes`` logits) → optional activation."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(classes)
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1),
    ]
    out = "logits"
    if activation:
        nodes.append(
            helper.make_node(activation, ["logits"], ["probs"], axis=1)
            if activation == "Softmax"
            else helper.make_node(activation, ["logits"], ["probs"])
        )
        out = "probs"
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "cw"),
            numpy_helper.from_array(rng.normal(size=(classes, 6)).astype(np.float32) * 3, "fw"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize(
    ("classes", "activation"), [(12, None), (12, "Softmax"), (12, "Sigmoid"), (4, "Softmax")]
)
def test_graph_topk_outputs_equal_the_host_ranking(classes: int, activation: str | None) -> None:
    """onnxcam_topk_* (TopK + log-sum-exp, or sigmoid for a multi-label head) give the same
    classes, logits and probabilities as ranking the logits on the host, and the Explainer's
    predictions are the same either way."""
    import onnxruntime as ort

    from onnxcam import contract
    from onnxcam.export import export_onnx

    model = export_onnx(_head_model(classes, activation)).model.SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(6, 3, 8, 8)).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {"x": x}), strict=True))
    k = min(5, classes)
    assert out[contract.TOPK_INDEX_OUTPUT].shape == (6, k)
    with Explainer(model) as ex:
        logits = out[ex.info.logits_output]
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(out[contract.TOPK_INDEX_OUTPUT], order)
        np.testing.assert_array_equal(
            out[contract.TOPK_LOGIT_OUTPUT], np.take_along_axis(logits, order, 1)
        )
        probs = ex.info.probabilities(logits)
        np.testing.assert_allclose(
            out[contract.TOPK_PROBABILITY_OUTPUT], np.take_along_axis(probs, order, 1), atol=1e-6
        )
        from_graph = ex._predictions(out, 5)
        on_host = ex._rank(logits, 5)
        assert [[p.index for p in r] for r in from_graph] == [[p.index for p in r] for r in on_host]
        for ra, rb in zip(from_graph, on_host, strict=True):
            for a, b in zip(ra, rb, strict=True):
                assert abs(a.probability - b.probability) < 1e-6
                assert abs(a.logit - b.logit) < 1e-6
        # explain() reads them (and does not rank the logits itself): the same predictions
        ex._rank = lambda *_: pytest.fail("ranked on the host although the graph has top-k")
        preds = [r.predictions for r in ex.explain_tensor(x, "gradcam")]
        assert [[p.index for p in r] for r in preds] == [[p.index for p in r] for r in on_host]
