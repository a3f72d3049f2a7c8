"""In-graph heatmaps equal the Python runtime's maps (within 1e-5), model by model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch_reference import calibrate_batchnorm, torchvision_model

from onnxcam import Explainer
from onnxcam.errors import ExportError
from onnxcam.export import export_onnx, export_torch
from onnxcam.export.heatmaps import HEATMAPS, _extreme_rows, interpolation_matrix, output_name

pytestmark = pytest.mark.model


def _photos_like(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, size=(180 + 20 * i, 240, 3)) for i in range(n)]


def _compare(with_maps: bytes, plain: bytes, methods: list[str], images) -> float:
    """Worst |in-graph map − host map| at the model-input resolution."""
    import onnxruntime as ort

    from onnxcam.image import as_rgb_array, preprocess

    worst = 0.0
    with Explainer(plain) as host:
        ref = host.explain(images, methods)
        x = preprocess([as_rgb_array(i) for i in images], host.info.input)
    sess = ort.InferenceSession(with_maps, providers=["CPUExecutionProvider"])
    outs = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True)
    )
    for m in methods:
        got = outs[output_name(m, 0)]
        want = np.stack([r.maps[m].input for r in ref])
        assert got.shape == want.shape, m
        assert got.min() >= -1e-6 and got.max() <= 1 + 1e-6, m  # [0, 1] up to rounding
        diff = float(np.abs(got - want).max())
        assert diff <= 1e-5, f"{m}: {diff}"
        worst = max(worst, diff)
    return worst


@pytest.mark.parametrize(
    ("name", "layer", "pooled"),
    [
        ("resnet18", "layer4", True),  # feeds the GAP: per-channel gradient, ReLU output
        ("resnet18", "layer3", False),  # a different gradient at every position
        ("mobilenet_v3_small", "features.12", True),  # Hardswish output: can be negative
    ],
)
def test_torchvision_in_graph_heatmaps_equal_python(name: str, layer: str, pooled: bool) -> None:
    model = torchvision_model(name)
    gen = torch.Generator().manual_seed(0)  # data-dependent BN stats: no flat random-init maps
    calibrate_batchnorm(model, [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(2)])
    with_maps = export_torch(model, (1, 3, 224, 224), [layer], heatmaps="all")
    plain = export_torch(model, (1, 3, 224, 224), [layer]).model
    assert with_maps.targets[0].gradient_pooled is pooled
    names = [o.name for o in with_maps.model.graph.output if o.name.startswith("onnxcam_heatmap_")]
    methods = [m for m in HEATMAPS if output_name(m, 0) in names]
    assert ("cam" in methods) == (layer == "layer4")  # GAP→Linear heads only
    _compare(
        with_maps.model.SerializeToString(), plain.SerializeToString(), methods, _photos_like(2)
    )


@pytest.mark.parametrize(("n_out", "n_in"), [(224, 7), (224, 14), (240, 7), (7, 7), (5, 9)])
def test_interpolation_matrix_is_opencv_inter_linear(n_out: int, n_in: int) -> None:
    import cv2

    rng = np.random.default_rng(n_out + n_in)
    m = rng.normal(size=(n_in, n_in + 2)).astype(np.float64)
    want = cv2.resize(m, (n_out + 3, n_out), interpolation=cv2.INTER_LINEAR)
    got = interpolation_matrix(n_out, n_in) @ m @ interpolation_matrix(n_out + 3, n_in + 2).T
    assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize(("n_out", "n_in"), [(224, 7), (240, 7), (100, 13), (7, 7), (5, 9)])
def test_extremes_of_a_bilinear_resize_lie_on_the_candidate_rows(n_out: int, n_in: int) -> None:
    """min/max over the few candidate rows × columns = min/max over the whole resized map,
    for random maps, sparse peaks and steps (what the in-graph min-max relies on)."""
    rng = np.random.default_rng(n_out * n_in)
    Ry, rows = interpolation_matrix(n_out, n_in), _extreme_rows(n_out, n_in)
    assert len(rows) <= 2 * n_in + 2
    for trial in range(200):
        m = rng.normal(size=(n_in, n_in))
        if trial % 3 == 1:
            m = np.where(rng.random((n_in, n_in)) < 0.1, m, 0)
        elif trial % 3 == 2:
            m = np.sign(m)
        full = Ry @ m @ Ry.T
        cand = full[np.ix_(rows, rows)]
        assert np.isclose(cand.max(), full.max(), atol=1e-12)
        assert np.isclose(cand.min(), full.min(), atol=1e-12)


def test_efficientnet_lite0_in_graph_heatmaps_equal_python(
    lite0_heatmaps, lite0_cam, photos
) -> None:
    import cv2

    images = [cv2.imread(str(p))[..., ::-1].astype(np.float32) for p in photos.values()]
    _compare(lite0_heatmaps.read_bytes(), lite0_cam.read_bytes(), list(HEATMAPS), images)


def test_runtime_uses_in_graph_heatmaps(lite0_heatmaps, photos) -> None:
    with Explainer(lite0_heatmaps) as ex:
        r = ex.explain(photos["coffee"], ["gradcam", "scorecam"], perturbation=None)[0]
    assert r.maps["gradcam"].feature.shape == (224, 224)  # taken from the graph
    assert r.maps["scorecam"].feature.shape == (7, 7)  # computed on the host


def test_heatmap_options_are_validated(tiny_onnx) -> None:
    with pytest.raises(ExportError, match="no in-graph heatmap"):
        export_onnx(tiny_onnx, heatmaps="scorecam")
    early = next(o for o in onnx.load(str(tiny_onnx)).graph.node if o.op_type == "Conv").output[0]
    with pytest.raises(ExportError, match="GAP"):
        export_onnx(tiny_onnx, layers=[early], heatmaps="cam")
    res = export_onnx(tiny_onnx, heatmaps="gradcam", heatmap_size="feature")
    out = next(o for o in res.model.graph.output if o.name == output_name("gradcam", 0))
    assert [d.dim_value for d in out.type.tensor_type.shape.dim][1:] == [8, 8]


def test_nhwc_model_in_graph_heatmaps_equal_python() -> None:
    """tf2onnx-style NHWC layer (ReduceMean over H, W → MatMul + Add head, no Gemm): pooled
    gradient detected through the NHWC axes, maps equal the host's."""
    import onnxruntime as ort
    from test_export_api import _nhwc_model

    from onnxcam.image import as_rgb_array, preprocess

    res = export_onnx(_nhwc_model(), heatmaps="all")
    assert res.targets[0].layout == "NHWC" and res.targets[0].gradient_pooled
    plain = export_onnx(_nhwc_model()).model.SerializeToString()
    images = [np.random.default_rng(i).uniform(0, 255, (20, 24, 3)) for i in range(3)]
    with Explainer(plain) as host:
        ref = host.explain(images, list(HEATMAPS))
        x = preprocess([as_rgb_array(i) for i in images], host.info.input)
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"image": x}), strict=True))
    for m in HEATMAPS:
        want = np.stack([r.maps[m].input for r in ref])
        assert np.abs(outs[output_name(m, 0)] - want).max() <= 1e-5, m


def test_two_target_layers_each_get_their_heatmaps() -> None:
    """layer4 (pooled gradient, GAP→Linear: cam too) and layer3 (per-position gradient) in one
    export: heatmap outputs _0 and _1 equal the host's maps of each layer."""
    import onnxruntime as ort

    from onnxcam.image import as_rgb_array, preprocess

    model = torchvision_model("resnet18")
    gen = torch.Generator().manual_seed(1)
    calibrate_batchnorm(model, [torch.randn(8, 3, 96, 96, generator=gen) for _ in range(2)])
    res = export_torch(model, (1, 3, 96, 96), ["layer4", "layer3"], heatmaps="all")
    assert [t.gradient_pooled for t in res.targets] == [True, False]
    plain = export_torch(model, (1, 3, 96, 96), ["layer4", "layer3"]).model.SerializeToString()
    images = _photos_like(2)
    with Explainer(plain) as host:
        ref = host.explain(images, [m for m in HEATMAPS if m != "cam"], layers="all")
        cam = np.stack([r.maps["cam"].input for r in host.explain(images, ["cam"], layers=0)])
        x = preprocess([as_rgb_array(i) for i in images], host.info.input)
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True)
    )
    for k, layer in enumerate(["layer4", "layer3"]):
        for m in HEATMAPS:
            name = output_name(m, k)
            if m == "cam" and k == 1:
                assert name not in outs  # layer3 does not feed the GAP → Linear head
                continue
            want = cam if m == "cam" else np.stack([r.maps[f"{m}@{layer}"].input for r in ref])
            assert np.abs(outs[name] - want).max() <= 1e-5, (layer, m)


def test_feature_size_heatmaps_equal_the_host_feature_maps(tiny_onnx) -> None:
    """heatmap_size="feature": the maps at the layer's resolution equal ``CamMap.feature``."""
    import onnxruntime as ort

    from onnxcam.image import as_rgb_array, preprocess

    res = export_onnx(tiny_onnx, heatmaps="all", heatmap_size="feature")
    images = _photos_like(3, seed=4)
    with Explainer(export_onnx(tiny_onnx).model.SerializeToString()) as host:
        ref = host.explain(images, list(HEATMAPS))
        x = preprocess([as_rgb_array(i) for i in images], host.info.input)
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True)
    )
    for m in HEATMAPS:
        want = np.stack([r.maps[m].feature for r in ref])
        assert outs[output_name(m, 0)].shape == want.shape == (3, 8, 8)
        assert np.abs(outs[output_name(m, 0)] - want).max() <= 1e-5, m


def _conv_gap_model(channels: int, side: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [N, 3, side, side] → 1×1 conv with orthonormal filters (+ a large bias, so the ReLU
    passes everything) → ReLU "features" → GAP → Gemm. Returns the model and the filters."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels)
    q, _ = np.linalg.qr(rng.normal(size=(channels, 3)))
    conv = q.astype(np.float32).reshape(channels, 3, 1, 1)
    fc = rng.normal(size=(5, channels)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_gap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[
            numpy_helper.from_array(conv, "conv_w"),
            numpy_helper.from_array(np.full(channels, 10, np.float32), "conv_b"),
            numpy_helper.from_array(fc, "fc_w"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, q


@pytest.mark.parametrize("channels", [64, 16])  # 6×6 = 36 positions: pixel / channel Gram
@pytest.mark.parametrize("ratio", [0.5, 0.999])  # λ₂/λ₁ of the centred activations
def test_eigen_heatmaps_find_the_principal_component(channels: int, ratio: float) -> None:
    """Activations with a known spectrum (rank 3, λ₂/λ₁ = ``ratio``): the in-graph Eigen-CAM
    is the known first component (sign: correlated with the channel sum), and both eigen maps
    equal the host's eigen-solver maps. At λ₂/λ₁ = 0.999 the direction itself is sensitive to
    the float32 rounding of the activations (host and graph both differ from the analytic
    answer by ~1e-4 there), hence the wider bound; too few squarings would leave a mix of the
    first two components (errors of order 1: 0.999^(2^8) = 0.77)."""
    import onnxruntime as ort

    from onnxcam import postprocess

    side, tol = 6, 1e-5 if ratio <= 0.5 else 5e-4
    model, q = _conv_gap_model(channels, side)
    rng = np.random.default_rng(7)
    patterns = rng.normal(size=(side * side, 3))
    patterns -= patterns.mean(axis=0)  # centred, orthonormal position patterns
    patterns, _ = np.linalg.qr(patterns)
    sigma = np.array([1.0, np.sqrt(ratio), 0.3]) * 5
    # image 0: patterns[:, 0] leads; image 1: the σ reversed, patterns[:, 2] leads
    x = np.stack([(patterns * s).T.reshape(3, side, side) for s in (sigma, sigma[::-1])])
    x = x.astype(np.float32)
    res = export_onnx(model, layers=["features"], heatmaps="all", heatmap_size="feature")
    assert res.targets[0].gradient_pooled
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"x": x}), strict=True))
    with Explainer(export_onnx(model, layers=["features"]).model.SerializeToString()) as host:
        ref = host.explain_tensor(x, ["eigencam", "eigengradcam"])
    for m in ("eigencam", "eigengradcam"):
        got = outs[output_name(m, 0)]
        assert np.isfinite(got).all()
        want = np.stack([r.maps[m].feature for r in ref])
        assert np.abs(got - want).max() <= tol, m
    # analytic: the centred activations are q · diag(σ) · patternsᵀ
    for i, lead in enumerate([0, 2]):
        u = patterns[:, lead]
        strength = (q @ x[i].reshape(3, -1)).sum(axis=0)  # channel sums (centred part)
        u = u if u @ strength >= 0 else -u
        want = postprocess.normalize(np.maximum(u, 0).reshape(side, side))
        assert np.abs(outs[output_name("eigencam", 0)][i] - want).max() <= 2 * tol


def test_eigen_heatmaps_of_zero_gradients_are_zero() -> None:
    """All-zero gradients (a zero classifier): EigenGrad-CAM's Gram matrix is 0 → the map is
    zeros, never NaN."""
    import onnxruntime as ort
    from onnx import numpy_helper

    model, _ = _conv_gap_model(16, 6)
    fc = next(i for i in model.graph.initializer if i.name == "fc_w")
    fc.CopyFrom(numpy_helper.from_array(np.zeros((5, 16), np.float32), "fc_w"))
    res = export_onnx(model, layers=["features"], heatmaps="eigengradcam")
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6)).astype(np.float32)
    (got,) = sess.run([output_name("eigengradcam", 0)], {"x": x})
    assert got.shape == (2, 6, 6) and np.array_equal(got, np.zeros_like(got))


def test_eigen_heatmaps_are_skipped_for_large_layers() -> None:
    """A 24×24 layer with 600 channels would square a 576² Gram matrix: asking for the eigen
    heatmap explicitly is an error that says why; "all" leaves it out and builds the rest."""
    from onnxcam.export.heatmaps import EIGEN_MAX_SIZE

    model, _ = _conv_gap_model(600, 24)
    assert EIGEN_MAX_SIZE < 24 * 24
    with pytest.raises(ExportError, match="eigencam heatmap squares a 576×576"):
        export_onnx(model, layers=["features"], heatmaps="eigencam")
    res = export_onnx(model, layers=["features"], heatmaps="all")
    assert set(res.targets[0].heatmaps) == set(HEATMAPS) - {"eigencam", "eigengradcam"}
