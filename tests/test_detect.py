"""Detectors: ultralytics YOLO11n / YOLOv8n (random init, 320×320) through onnxcam's export
and runtime, against torch autograd and ultralytics' own LayerCAM and NMS.

Each model is exported twice: with ``detect_gradients="direct"`` (the default: each scale's
gradient holds the other scales fixed, as if each scale's head read its own input) and
``"total"`` (every path, through the neck too: what autograd gives for the hooked head inputs,
ultralytics' ``class_activation_map`` convention). The references (``yolo_reference``)
differentiate the Detect head's raw class scores (the logits before the Sigmoid) in float64:
through the head alone on onnxruntime's activations (``head_gradients``: direct) or through
the whole model (``full_gradients``: total). The two differ only at the finer scales of a
P4/P5 detection (the neck builds P4 from P3 and P5 from P4).

Images: scikit-image photos at the model size (uint8 RGB; onnxcam's resize is then the
identity), so torch and onnxruntime see the same input bits.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ultralytics")
pytest.importorskip("skimage")

import yolo_reference as yr
from torch_reference import max_rel_err

from onnxcam import contract
from onnxcam.errors import ExportError, MethodError, OnnxcamError

pytestmark = pytest.mark.model

IMGSZ = 320
CONF, IOU, TOP = 0.25, 0.45, 10
KINDS = ("direct", "total")
GRAD_TOL = 5e-4
"""Max relative error, per map, of a gradient against the float64 reference: the float32
forward of the backbone (onnxruntime) against torch's float64 one (seen: ≤ 9e-5)."""
MAP_TOL = 1e-4
"""Max absolute difference of maps in [0, 1]."""


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=yr.MODELS)
def yolo(request, tmp_path_factory) -> yr.Yolo:
    return yr.build(request.param, IMGSZ, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module", params=KINDS)
def cam(request, yolo, tmp_path_factory):
    """(gradient kind, the onnxcam export of ``yolo`` with it; verified, as by default)."""
    from onnxcam.export import export_onnx

    out = tmp_path_factory.mktemp(f"{yolo.name}-{request.param}") / f"{yolo.name}.cam.onnx"
    res = export_onnx(yolo.onnx, out, preset="unit", task="detect", detect_gradients=request.param)
    return request.param, res


@pytest.fixture(scope="module")
def session(cam):
    import onnxruntime as ort

    return ort.InferenceSession(str(cam[1].path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return yr.photos(IMGSZ)


@pytest.fixture(scope="module")
def forward(session, images) -> list[dict[str, np.ndarray]]:
    """Mode 1 (forward only) per image: activations, logits and the model's output."""
    names = [*(contract.activation_name(k) for k in range(3)), contract.LOGITS_OUTPUT, "output0"]
    return [
        dict(zip(names, session.run(names, {"images": x[None], **_mode(1)}), strict=True))
        for x in yr.to_input(images)
    ]


@pytest.fixture(scope="module")
def explainer(cam):
    from onnxcam import Explainer

    if not hasattr(Explainer, "detect"):
        pytest.skip("Explainer.detect is not there yet")
    return Explainer(cam[1].path, device="cpu")


@pytest.fixture(scope="module")
def detections(explainer, images):
    """``Explainer.detect`` on the photos: layercam and gradcam; conf/iou/top as ultralytics'
    NMS defaults."""
    return explainer.detect(images, methods=["layercam", "gradcam"], top=TOP, conf=CONF, iou=IOU)


# --- helpers --------------------------------------------------------------------------------
def _mode(m: int) -> dict:
    return {contract.MODE_INPUT: np.array(m, dtype=np.int64)}


def _acts(out: dict) -> list[np.ndarray]:
    return [out[contract.activation_name(k)] for k in range(3)]


GRADS = [contract.gradient_name(k) for k in range(3)]


def _reference(yolo, kind: str, x: np.ndarray, acts: list, seed: np.ndarray) -> list:
    """The float64 gradients of every seed row [S, C, h, w] per scale, for ``kind``."""
    if kind == "direct":
        return yr.head_gradients(yolo, acts, seed)[1]
    return yr.full_gradients(yolo, x, seed)[2]


def _best_per_level(yolo: yr.Yolo, logits: np.ndarray) -> list[tuple[int, int]]:
    """(class, anchor) of the best-scoring anchor of each scale."""
    z = logits.reshape(yolo.num_classes, -1)
    pairs, start = [], 0
    for h, w in yolo.grids:
        level = z[:, start : start + h * w]
        a = int(level.max(0).argmax())
        pairs.append((int(level[:, a].argmax()), start + a))
        start += h * w
    return pairs


def _check_grads(got: list, ref: list, what: str, tol: float = GRAD_TOL) -> None:
    for k, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g.shape == r.shape, f"{what}: P{k + 3} shape {g.shape} != {r.shape}"
        for row in range(len(r)):
            gr, rr = g[row], r[row]
            if not np.any(rr):
                assert not np.any(gr), f"{what}: row {row} P{k + 3} should be 0"
                continue
            err = max_rel_err(gr, rr)
            assert err <= tol, f"{what}: row {row} P{k + 3} max rel err {err:.3g} > {tol}"


def _nms(y: np.ndarray, conf: float, iou: float, top: int, classes=None):
    """ultralytics' ``non_max_suppression`` on one image's raw output ``[1, 4 + K, N]``:
    (anchors, classes, scores, boxes xyxy in input pixels, unclipped) of the ``top`` best."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    dets, idx = non_max_suppression(
        torch.from_numpy(y), conf, iou, classes=classes, return_idxs=True
    )
    d, idx = dets[0][:top].numpy().astype(np.float64), idx[0][:top].numpy()
    return idx.astype(int), d[:, 5].astype(int), d[:, 4], d[:, :4]


def _layercam_refs(acts: list, grads: list, rows: int) -> list[np.ndarray]:
    """ultralytics' LayerCAM of each seed row (``yolo_reference.layercam_fused``)."""
    return [
        yr.layercam_fused(acts, [g[j : j + 1] for g in grads], (IMGSZ, IMGSZ)) for j in range(rows)
    ]


# --- a. export --------------------------------------------------------------------------------
def test_export_targets(yolo, cam, session, images):
    """Three targets, the feature maps entering Detect (P3/P4/P5: stride 8/16/32), largest
    first; the score record: detect, YOLOv8 layout, 80 classes, seed rows, the gradient kind;
    the detection inputs and outputs are declared."""
    kind, res = cam
    feats = yr.head_inputs(yolo, yr.to_input(images[:1]))
    assert len(res.targets) == 3
    for k, (t, f, (h, w)) in enumerate(zip(res.targets, feats, yolo.grids, strict=True)):
        assert tuple(t.shape) == (1, f.shape[1], h, w) == f.shape, (k, t.shape, f.shape)
        assert (h, w) == (IMGSZ // yr.STRIDES[k], IMGSZ // yr.STRIDES[k])
        assert t.layout == "NCHW"
        assert t.head_input is None and t.head_note  # no head-only path: it says why
    meta = {p.key: p.value for p in res.model.metadata_props}
    score = contract.Contract.from_metadata(meta).score
    assert score.task == "detect"
    assert score.activation == "sigmoid"
    assert score.logits_output == contract.LOGITS_OUTPUT
    assert score.seed_rows
    assert score.gradients == kind
    assert score.detect.format == "yolov8" and score.detect.num_classes == 80
    assert score.detect.output == "output0"
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert score.shape == (yolo.num_classes, yolo.num_anchors)  # the seed's row shape
    assert inputs[contract.SEED_INPUT][0] == "seed_rows" and len(inputs[contract.SEED_INPUT]) == 3
    for name in (contract.DETECT_CONF_INPUT, contract.DETECT_IOU_INPUT, contract.DETECT_TOP_INPUT):
        assert inputs[name] == [1]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs[contract.DETECTIONS_OUTPUT] == ["rows", 8]
    for k, (h, w) in enumerate(yolo.grids):
        assert outputs[contract.gradient_name(k)][1:] == [feats[k].shape[1], h, w]


def test_task_from_output_rank(yolo):
    """Without --task, a [B, 4 + K, N] output is a detector."""
    from onnxcam.export import export_onnx

    res = export_onnx(yolo.onnx, preset="unit", verify=False)
    meta = {p.key: p.value for p in res.model.metadata_props}
    assert contract.Contract.from_metadata(meta).score.task == "detect"
    assert len(res.targets) == 3


def test_forward_matches_torch(yolo, forward, images):
    """Mode 1: activations = torch's head inputs, logits = the head's raw scores, the model's
    own output unchanged."""
    x = yr.to_input(images)
    for i, out in enumerate(forward):
        feats = yr.head_inputs(yolo, x[i : i + 1])
        for k, (a, f) in enumerate(zip(_acts(out), feats, strict=True)):
            assert max_rel_err(a, f) <= 1e-4, (i, k, max_rel_err(a, f))
        z = yr.head_logits(yolo, feats).detach().numpy()
        assert max_rel_err(out[contract.LOGITS_OUTPUT], z) <= 1e-4
        y = yolo.forward(x[i : i + 1])
        assert max_rel_err(out["output0"], y) <= 1e-4, (i, max_rel_err(out["output0"], y))


def test_forward_mode_skips_gradients(session, images):
    """Mode 1 leaves the gradient outputs empty."""
    got = session.run(GRADS, {"images": yr.to_input(images[:1]), **_mode(1)})
    assert all(g.size == 0 for g in got)


# --- b. seed rows ---------------------------------------------------------------------------
def test_seed_rows_at_every_scale(yolo, cam, session, forward, images):
    """One mode-0 run, one seed row per (class, anchor) at every scale: each row's gradients
    equal torch autograd (direct: through the head; total: through the whole model), and its
    score is that logit."""
    kind = cam[0]
    x = yr.to_input(images[:1])
    out = forward[0]
    z = out[contract.LOGITS_OUTPUT]
    pairs = [*_best_per_level(yolo, z), (3, 5), (79, yolo.num_anchors - 1)]
    assert sorted({yolo.level_of(a) for _, a in pairs}) == [0, 1, 2]
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    score, *got = session.run([contract.SCORE_OUTPUT, *GRADS], {"images": x, "onnxcam_seed": seed})
    np.testing.assert_allclose(score, [z[0, c, a] for c, a in pairs], rtol=1e-5, atol=1e-5)
    _check_grads(got, _reference(yolo, kind, x, _acts(out), seed), f"{kind} seed rows")
    for r, (_, a) in enumerate(pairs):  # which scales a detection's gradient reaches
        level = yolo.level_of(a)
        reached = [k for k in range(3) if np.any(got[k][r])]
        assert reached == ([level] if kind == "direct" else list(range(level + 1))), (r, a)


def test_seed_rows_equal_separate_runs(yolo, session, images, forward):
    """``seed_rows``: several rows on one image = one run per row."""
    x = yr.to_input(images[2:3])
    pairs = _best_per_level(yolo, forward[2][contract.LOGITS_OUTPUT])
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    together = session.run(GRADS, {"images": x, "onnxcam_seed": seed})
    for r in range(len(pairs)):
        alone = session.run(GRADS, {"images": x, "onnxcam_seed": seed[r : r + 1]})
        for k in range(3):
            scale = max(float(np.abs(alone[k]).max()), 1e-30)
            assert np.abs(together[k][r : r + 1] - alone[k]).max() <= 1e-5 * scale, (r, k)


def test_seed_is_linear(yolo, session, images, forward):
    """A seed row mixing two detections (+1, −0.5) gives the same mix of their gradients."""
    x = yr.to_input(images[2:3])
    pairs = _best_per_level(yolo, forward[2][contract.LOGITS_OUTPUT])[:2]
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    rows = session.run(GRADS, {"images": x, "onnxcam_seed": seed})
    got = session.run(GRADS, {"images": x, "onnxcam_seed": seed[:1] - 0.5 * seed[1:]})
    for k in range(3):
        want = rows[k][:1] - 0.5 * rows[k][1:]
        assert np.abs(got[k] - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30)


# --- c. the default seed: the graph's own detections ------------------------------------------
OUT = [
    contract.DETECTIONS_OUTPUT,
    contract.CLASS_OUTPUT,
    contract.SCORE_OUTPUT,
    contract.LOGITS_OUTPUT,
    "output0",
    *(contract.activation_name(k) for k in range(3)),
    *GRADS,
]


@pytest.mark.parametrize("image", [0, 1, 2])
def test_default_seed_rows_are_the_detections(yolo, cam, session, images, image):
    """Mode 0, no seed: one row per kept detection (ultralytics' NMS at conf 0.25, iou 0.45,
    the 10 best), its class, its logit as the score and its gradients = torch's; an image
    where nothing passes conf (chelsea) explains its best prediction, marked not kept."""
    kind = cam[0]
    x = yr.to_input(images[image : image + 1])
    dets, cls, score, z, y, *rest = session.run(OUT, {"images": x})
    acts, grads = rest[:3], rest[3:]
    anchors, classes, scores, boxes = _nms(y, CONF, IOU, TOP)
    if len(anchors):
        assert dets[:, 7].tolist() == [1.0] * len(anchors)
    else:  # the best prediction, not kept
        c, a = yr.default_target(z)
        anchors, classes = np.array([a]), np.array([c])
        scores = 1 / (1 + np.exp(-z[0, c, [a]].astype(np.float64)))
        boxes = dets[:, :4]
        assert dets[:, 7].tolist() == [0.0]
    assert dets[:, 6].astype(int).tolist() == anchors.tolist()
    assert dets[:, 5].astype(int).tolist() == classes.tolist() == cls.tolist()
    np.testing.assert_allclose(dets[:, 4], scores, rtol=1e-5)
    np.testing.assert_allclose(dets[:, :4], boxes, atol=1e-3)
    np.testing.assert_allclose(score, z[0, classes, anchors], rtol=1e-5, atol=1e-5)
    seed = yr.one_hot_seed(list(zip(classes, anchors)), yolo.num_classes, yolo.num_anchors)
    _check_grads(grads, _reference(yolo, kind, x, acts, seed), f"{kind} default seed")


@pytest.mark.parametrize(("conf", "iou", "top"), [(0.1, 0.7, 20), (CONF, IOU, 3)])
def test_detection_inputs(yolo, session, images, conf, iou, top):
    """``onnxcam_detect_conf/iou/top`` set the graph's NMS as ultralytics' arguments do."""
    x = yr.to_input(images[2:3])
    feeds = {
        "images": x,
        contract.DETECT_CONF_INPUT: np.array([conf], np.float32),
        contract.DETECT_IOU_INPUT: np.array([iou], np.float32),
        contract.DETECT_TOP_INPUT: np.array([top], np.int64),
    }
    dets, y, g0 = session.run([contract.DETECTIONS_OUTPUT, "output0", GRADS[0]], feeds)
    anchors, classes, scores, boxes = _nms(y, conf, iou, top)
    assert len(anchors) == len(dets) == len(g0)
    assert dets[:, 6].astype(int).tolist() == anchors.tolist()
    assert dets[:, 5].astype(int).tolist() == classes.tolist()
    np.testing.assert_allclose(dets[:, 4], scores, rtol=1e-5)
    np.testing.assert_allclose(dets[:, :4], boxes, atol=1e-3)


def test_class_input_restricts_detections(session, images):
    """``onnxcam_target_class`` keeps the anchors whose best class it is — ultralytics' NMS
    ``classes`` filter on the same output."""
    x = yr.to_input(images[2:3])
    dets = session.run([contract.DETECTIONS_OUTPUT], {"images": x})[0]
    c = int(dets[-1, 5])  # a class that is not the best one
    feeds = {"images": x, contract.CLASS_INPUT: np.array([c], np.int64)}
    got, y = session.run([contract.DETECTIONS_OUTPUT, "output0"], feeds)
    anchors, classes, scores, boxes = _nms(y, CONF, IOU, TOP, classes=[c])
    assert len(anchors) and set(classes.tolist()) == {c}
    assert got[:, 6].astype(int).tolist() == anchors.tolist()
    assert got[:, 5].astype(int).tolist() == classes.tolist()
    np.testing.assert_allclose(got[:, 4], scores, rtol=1e-5)
    np.testing.assert_allclose(got[:, :4], boxes, atol=1e-3)


# --- d. Explainer.detect ------------------------------------------------------------------------
def test_reference_is_ultralytics_cam(yolo, images):
    """The reference LayerCAM (``yolo_reference.layercam_fused`` on full-graph gradients) is
    ultralytics' ``class_activation_map``: the same uint8 map for its top-10 predictions."""
    x = yr.to_input(images[:1])
    seed0 = np.zeros((1, yolo.num_classes, yolo.num_anchors), np.float32)
    z, acts, _ = yr.full_gradients(yolo, x, seed0)
    pairs = yr.cam_targets(z, TOP)
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    _, _, grads = yr.full_gradients(yolo, x, seed)
    ours = (np.max(_layercam_refs(acts, grads, len(pairs)), axis=0) * 255).astype(np.uint8)
    theirs = yr.ultralytics_cam(yolo, x, TOP)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # uint8 truncation of equal floats


@pytest.mark.parametrize(("conf", "iou", "top"), [(CONF, IOU, TOP), (0.1, 0.7, 20)])
def test_detect_boxes_match_ultralytics_nms(yolo, explainer, conf, iou, top):
    """Kept detections (anchor, class, label, score, box clipped, in original pixels) =
    ultralytics' ``non_max_suppression`` on the plain model's output for the same input, the
    best ``top``; the photos at their own sizes (512×512, 300×451, 400×600)."""
    import onnxruntime as ort

    from onnxcam.image import preprocess

    plain = ort.InferenceSession(str(yolo.onnx), providers=["CPUExecutionProvider"])
    originals = yr.photos()
    results = explainer.detect(originals, methods="gradcam", top=top, conf=conf, iou=iou)
    assert len(results) == len(originals)
    for im, res in zip(originals, results, strict=True):
        x = preprocess([im.astype(np.float32)], explainer.info.input)
        (y,) = plain.run(None, {"images": x})
        anchors, classes, scores, boxes = _nms(y, conf, iou, top)
        h, w = im.shape[:2]
        boxes = np.clip(boxes, 0, IMGSZ) * [w / IMGSZ, h / IMGSZ, w / IMGSZ, h / IMGSZ]
        got = res.detections
        assert [d.anchor for d in got] == anchors.tolist()
        assert [d.index for d in got] == classes.tolist()
        assert [d.label for d in got] == [str(c) for c in classes]
        if got:
            np.testing.assert_allclose([d.score for d in got], scores, rtol=1e-5)
            np.testing.assert_allclose([d.box for d in got], boxes, atol=1e-3)
        else:
            assert "no detection kept" in res.note


def test_detect_layercam(yolo, cam, detections, forward, images):
    """Each detection's LayerCAM = ultralytics' recipe (relu(Σ relu(g)·a) per scale, bilinear
    to the input, each scale over its max, max over scales) on the reference gradients — for
    ``total``, ultralytics' ``class_activation_map`` of that prediction; the image's map = the
    max over its detections."""
    kind = cam[0]
    x = yr.to_input(images)
    assert sum(len(r.detections) for r in detections) >= 10
    assert any(yolo.level_of(d.anchor) > 0 for r in detections for d in r.detections)
    bad = []
    for i, (out, res) in enumerate(zip(forward, detections, strict=True)):
        if not res.detections:
            continue
        acts = _acts(out)
        pairs = [(d.index, d.anchor) for d in res.detections]
        seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
        refs = _layercam_refs(acts, _reference(yolo, kind, x[i : i + 1], acts, seed), len(pairs))
        for d, ref in zip(res.detections, refs, strict=True):
            got = d.maps["layercam"].feature
            assert got.shape == ref.shape == (IMGSZ, IMGSZ)
            err = float(np.abs(got - ref).max())
            if err > MAP_TOL:
                bad.append(
                    f"image {i} ({d.index}, {d.anchor}) P{yolo.level_of(d.anchor) + 3}: {err:.3g}"
                )
        overall = res.maps["layercam"].feature
        assert np.abs(overall - np.max(refs, axis=0)).max() <= MAP_TOL
    assert not bad, f"{kind} LayerCAM differs: " + "; ".join(bad)


def test_detect_given_targets(yolo, cam, explainer, images, forward):
    """``targets``: explain given (anchor, class) detections, in that order, whatever their
    score; boxes from the model's output."""
    from onnxcam.targets import Detection

    kind = cam[0]
    pairs = _best_per_level(yolo, forward[1][contract.LOGITS_OUTPUT])  # chelsea: none kept
    chosen = [Detection(anchor=a, c=c) for c, a in pairs]
    (res,) = explainer.detect(images[1], methods="layercam", targets=chosen)
    assert [(d.index, d.anchor) for d in res.detections] == pairs
    x = yr.to_input(images[1:2])
    acts = _acts(forward[1])
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    refs = _layercam_refs(acts, _reference(yolo, kind, x, acts, seed), len(pairs))
    for d, ref in zip(res.detections, refs, strict=True):
        assert np.abs(d.maps["layercam"].feature - ref).max() <= MAP_TOL, (d.index, d.anchor)
        p = 1 / (1 + np.exp(-float(forward[1][contract.LOGITS_OUTPUT][0, d.index, d.anchor])))
        assert d.score == pytest.approx(p, rel=1e-5)


def test_detect_class_filter(explainer, images):
    (everything,) = explainer.detect(images[2], methods="gradcam")
    c = everything.detections[-1].index
    (only,) = explainer.detect(images[2], methods="gradcam", cls=c)
    assert only.detections and {d.index for d in only.detections} == {c}


def test_detect_every_method(yolo, explainer, images):
    """Every gradient method explains detections: finite maps in [0, 1] at the input size,
    one per detection and one for the image (the max of theirs)."""
    from onnxcam.methods import METHODS

    methods = [m for m, s in METHODS.items() if s.family == "gradient"]
    (res,) = explainer.detect(images[2], methods=methods, top=4, conf=CONF, iou=IOU)
    assert len(res.detections) == 4
    for m in methods:
        maps = [d.maps[m].feature for d in res.detections]
        for v in [*maps, res.maps[m].feature]:
            assert v.shape == (IMGSZ, IMGSZ), m
            assert np.all(np.isfinite(v)), m
            assert v.min() >= 0 and v.max() <= 1 + 1e-6, m
        assert np.abs(res.maps[m].feature - np.max(maps, axis=0)).max() <= 1e-6, m
        assert any(v.max() > 0.5 for v in maps), m
    for d in res.detections:
        assert d.maps["gradcam"].original.shape == images[2].shape[:2]


@pytest.mark.parametrize("method", ["smoothgradcam++", "scorecam", "cam"])
def test_detect_refuses_other_methods(explainer, images, method):
    with pytest.raises(MethodError) as e:
        explainer.detect(images[0], methods=method)
    assert "\n" not in str(e.value)


def test_detect_nothing_kept(explainer, images):
    """conf 0.99 on a random model keeps nothing: an empty result with a note, no error."""
    results = explainer.detect(images, methods="layercam", conf=0.99)
    assert len(results) == len(images)
    for r in results:
        assert r.detections == [] and r.maps == {}
        assert "no detection kept" in r.note


def test_detect_bad_options(yolo, explainer, images):
    from onnxcam.targets import Detection

    for kw in [
        {"top": 0},
        {"conf": 1.5},
        {"iou": -0.1},
        {"fuse": "min"},
        {"targets": [Detection(anchor=yolo.num_anchors, c=0)]},
        {"targets": [Detection(anchor=0, c=80)]},
    ]:
        with pytest.raises(MethodError) as e:
            explainer.detect(images[0], **kw)
        assert "\n" not in str(e.value), kw


def test_detect_refuses_a_classifier(tiny_cam, images):
    from onnxcam import Explainer

    ex = Explainer(tiny_cam, device="cpu")
    if not hasattr(ex, "detect"):
        pytest.skip("Explainer.detect is not there yet")
    with pytest.raises(MethodError, match="--task detect"):
        ex.detect(images[0])


# --- e. bad input -------------------------------------------------------------------------------
def test_export_as_classifier_is_refused(yolo):
    from onnxcam.export import export_onnx

    with pytest.raises(ExportError) as e:
        export_onnx(yolo.onnx, task="classify", verify=False)
    msg = str(e.value)
    assert "\n" not in msg and "--task detect" in msg, msg


def test_export_bad_gradient_kind(yolo):
    from onnxcam.export import export_onnx

    with pytest.raises(ExportError, match="direct"):
        export_onnx(yolo.onnx, task="detect", detect_gradients="partial", verify=False)


def test_seed_of_wrong_shape(yolo, session, images):
    """onnxruntime refuses a seed that is not [rows, K, N] (raw session): the wrong rank at
    the input; wrong sizes (declared symbolic, so that an empty seed means "the default") in
    the backward."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    x = yr.to_input(images[:1])
    seed = np.zeros((1, yolo.num_classes), np.float32)
    with pytest.raises(InvalidArgument, match="onnxcam_seed"):
        session.run(GRADS, {"images": x, "onnxcam_seed": seed})
    for shape in [
        (1, yolo.num_classes - 1, yolo.num_anchors),
        (2, yolo.num_classes, yolo.num_anchors + 1),
    ]:
        with pytest.raises((Fail, InvalidArgument)):
            session.run(GRADS, {"images": x, "onnxcam_seed": np.zeros(shape, np.float32)})


def test_explain_refuses_a_detector(yolo, cam, images):
    """``explain`` (one class per image) sends a detector to ``detect``: a one-line error."""
    from onnxcam import Explainer
    from onnxcam.targets import Detection

    ex = Explainer(cam[1].path, device="cpu")
    for kw in [{}, {"targets": Detection(anchor=0, c=0)}]:
        with pytest.raises(OnnxcamError, match="detect") as e:
            ex.explain(images[0], "gradcam", **kw)
        assert "\n" not in str(e.value)


def test_detect_eigencam(explainer, images):
    """Eigen-CAM (no gradients) on several detections: the same finite map for each."""
    (res,) = explainer.detect(images[2], methods="eigencam", top=3)
    assert len(res.detections) == 3
    maps = [d.maps["eigencam"].feature for d in res.detections]
    assert maps[0].shape == (IMGSZ, IMGSZ) and np.all(np.isfinite(maps[0]))
    assert maps[0].min() >= 0 and maps[0].max() == pytest.approx(1)
    assert all(np.array_equal(m, maps[0]) for m in maps)
    assert np.array_equal(res.maps["eigencam"].feature, maps[0])
