"""Detectors: ultralytics YOLO11n / YOLOv8n (random init, 320×320) through onnxcam's export
and runtime, against torch autograd and ultralytics' own LayerCAM and NMS.

References (``yolo_reference``): the Detect head's raw class scores (logits before the
Sigmoid) differentiated in float64, either through the head alone (``head_gradients``: the
head inputs independent, what the joint head-only path ``onnxcam_head_gradient_k`` computes by
the contract) or through the whole model (``full_gradients``: total derivatives, what the full
graph's ``onnxcam_gradient_k`` and ultralytics' ``class_activation_map`` compute; the neck
builds P4/P5 from P3, so the two differ at the finer maps of a P4/P5 detection).

Images: scikit-image photos at the model size (uint8 RGB; onnxcam's resize is then the
identity), so the tensors torch and onnxruntime see are the same bits.
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
HEAD_TOL = 1e-4
"""Max relative error, per map, of a head-only gradient (onnxruntime float32 on the same
activations as the float64 reference)."""
FULL_TOL = 5e-4
"""Max relative error, per map, of a full-graph gradient: the float32 forward of the whole
backbone (onnxruntime) against torch's float64 one (seen: ≤ 9e-5)."""
MAP_TOL = 1e-4
"""Max absolute difference of maps in [0, 1]."""


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=yr.MODELS)
def yolo(request, tmp_path_factory) -> yr.Yolo:
    return yr.build(request.param, IMGSZ, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def exported(yolo, tmp_path_factory):
    """The onnxcam export of ``yolo`` (task given as in the brief). Exported without the
    verification run, so that the tests below still see the graph when verification refuses
    it (``test_export_verifies`` checks that on its own)."""
    from onnxcam.export import export_onnx

    out = tmp_path_factory.mktemp(f"{yolo.name}cam") / f"{yolo.name}.cam.onnx"
    return export_onnx(yolo.onnx, out, preset="unit", task="detect", verify=False)


@pytest.fixture(scope="module")
def session(exported):
    import onnxruntime as ort

    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return yr.photos(IMGSZ)


@pytest.fixture(scope="module")
def forward(session, images) -> list[dict[str, np.ndarray]]:
    """Mode 1 (forward only) per image: activations, logits and the model's output."""
    names = [*(contract.activation_name(k) for k in range(3)), contract.LOGITS_OUTPUT, "output0"]
    mode = np.array(contract.MODE_FORWARD, dtype=np.int64)
    return [
        dict(zip(names, session.run(names, {"images": x[None], "onnxcam_mode": mode}), strict=True))
        for x in yr.to_input(images)
    ]


@pytest.fixture(scope="module")
def explainer(exported):
    from onnxcam import Explainer

    if not hasattr(Explainer, "detect"):
        pytest.skip("Explainer.detect is not there yet")
    return Explainer(exported.path, device="cpu")


@pytest.fixture(scope="module")
def detections(explainer, images):
    """``Explainer.detect`` on the photos: layercam, gradcam, eigencam, the defaults."""
    return explainer.detect(
        images, methods=["layercam", "gradcam", "eigencam"], top=TOP, conf=CONF, iou=IOU
    )


def _acts(out: dict) -> list[np.ndarray]:
    return [out[contract.activation_name(k)] for k in range(3)]


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


def _check_grads(got: list, ref: list, tol: float, what: str) -> None:
    for k, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g.shape == r.shape, f"{what}: level {k} shape {g.shape} != {r.shape}"
        if not np.any(r):
            assert not np.any(g), f"{what}: level {k} should be 0, max |g| {np.abs(g).max():.3g}"
            continue
        err = max_rel_err(g, r)
        assert err <= tol, f"{what}: level {k} max rel err {err:.3g} > {tol}"


def _run_head(session, acts: list[np.ndarray], seed: np.ndarray, repeat: bool = False) -> list:
    """Mode 2: the joint head on one image's activations (repeated per seed row if asked)."""
    feeds = {
        "images": np.zeros((1, 3, IMGSZ, IMGSZ), np.float32),
        contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64),
        contract.SEED_INPUT: seed,
    }
    for k, a in enumerate(acts):
        feeds[contract.head_input_name(k)] = np.repeat(a, len(seed), 0) if repeat else a
    names = [contract.head_output_name(0), *(contract.head_gradient_name(k) for k in range(3))]
    out = session.run(names, feeds)
    return out[0], out[1:]


# --- a. export --------------------------------------------------------------------------------
def test_export_targets(yolo, exported, images):
    """Three targets, the feature maps entering Detect (P3/P4/P5: stride 8/16/32), largest
    first; the score record says detect, YOLOv8 layout, 80 classes, seed rows."""
    feats = yr.head_inputs(yolo, yr.to_input(images[:1]))
    assert len(exported.targets) == 3
    for k, (t, f, (h, w)) in enumerate(zip(exported.targets, feats, yolo.grids, strict=True)):
        assert tuple(t.shape) == (1, f.shape[1], h, w) == f.shape, (k, t.shape, f.shape)
        assert (h, w) == (IMGSZ // yr.STRIDES[k], IMGSZ // yr.STRIDES[k])
        assert t.layout == "NCHW"
        assert t.head_input == contract.head_input_name(k)
        assert t.head_gradient == contract.head_gradient_name(k)
    record = contract.Contract.from_metadata(
        {p.key: p.value for p in exported.model.metadata_props}
    )
    score = record.score
    assert score.task == "detect"
    assert score.activation == "sigmoid"
    assert score.logits_output == contract.LOGITS_OUTPUT
    assert score.joint_head and score.seed_rows
    assert score.detect.format == "yolov8" and score.detect.num_classes == 80
    assert score.detect.output == "output0"


def test_task_from_output_rank(yolo):
    """Without --task, a [B, 4 + K, N] output is a detector."""
    from onnxcam.export import export_onnx

    res = export_onnx(yolo.onnx, preset="unit", verify=False)
    meta = {p.key: p.value for p in res.model.metadata_props}
    assert contract.Contract.from_metadata(meta).score.task == "detect"
    assert len(res.targets) == 3


def test_export_verifies(yolo, tmp_path):
    """The export with its verification run (the default) goes through."""
    from onnxcam.export import export_onnx

    res = export_onnx(yolo.onnx, tmp_path / "v.cam.onnx", preset="unit", task="detect")
    assert res.max_output_diff <= 1e-5


def test_forward_matches_torch(yolo, forward, images):
    """Mode 1: activations = torch's head inputs, logits = the head's raw scores, the model's
    own output unchanged."""
    x = yr.to_input(images)
    for i, out in enumerate(forward):
        feats = yr.head_inputs(yolo, x[i : i + 1])
        for k, (a, f) in enumerate(zip(_acts(out), feats, strict=True)):
            assert max_rel_err(a, f) <= 1e-4, (i, k, max_rel_err(a, f))
        z = yr.head_logits(yolo, feats).detach().numpy()
        assert np.abs(out[contract.LOGITS_OUTPUT] - z).max() <= 1e-4 * np.abs(z).max()
        y = yolo.forward(x[i : i + 1])
        assert max_rel_err(out["output0"], y) <= 1e-4, (i, max_rel_err(out["output0"], y))


def test_forward_mode_skips_gradients(session, images):
    """Mode 1 leaves the gradient outputs empty."""
    names = [contract.gradient_name(k) for k in range(3)]
    mode = np.array(contract.MODE_FORWARD, dtype=np.int64)
    got = session.run(names, {"images": yr.to_input(images[:1]), contract.MODE_INPUT: mode})
    assert all(g.size == 0 for g in got)


# --- b. the joint head ------------------------------------------------------------------------
def test_head_gradients_seed_rows(yolo, session, forward):
    """One mode-2 run, one seed row per (class, anchor) at every scale: each row's gradients
    equal torch autograd through the head; the same with the head inputs repeated per row."""
    out = forward[0]
    acts, z = _acts(out), out[contract.LOGITS_OUTPUT]
    pairs = [*_best_per_level(yolo, z), (3, 5), (79, yolo.num_anchors - 1)]
    assert sorted({yolo.level_of(a) for _, a in pairs}) == [0, 1, 2]
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    logits_ref, ref = yr.head_gradients(yolo, acts, seed)
    for repeat in (False, True):
        logits, got = _run_head(session, acts, seed, repeat)
        if not repeat:
            assert logits.shape == (1, yolo.num_classes, yolo.num_anchors)
            assert np.abs(logits - logits_ref).max() <= 1e-4 * np.abs(logits_ref).max()
        _check_grads(got, ref, HEAD_TOL, f"head gradients (repeat={repeat})")
        for r, (_, a) in enumerate(pairs):  # the head alone: nothing reaches the other scales
            for k in range(3):
                assert np.any(got[k][r]) == (k == yolo.level_of(a)), (r, a, k)


def test_head_logits_of_repeated_inputs(yolo, session, forward):
    """Head inputs repeated per row: the head's logits have one row per input row, the shape
    the graph declares (``[head_batch, K, N]``)."""
    acts = _acts(forward[0])
    seed = yr.one_hot_seed([(0, 0), (1, 1), (2, 2)], yolo.num_classes, yolo.num_anchors)
    logits, _ = _run_head(session, acts, seed, repeat=True)
    assert logits.shape == (3, yolo.num_classes, yolo.num_anchors)
    for r in range(3):
        assert np.abs(logits[r] - forward[0][contract.LOGITS_OUTPUT][0]).max() <= 1e-4


def test_head_seed_weights_are_linear(yolo, session, forward):
    """A seed row mixing two detections (+1, −0.5) gives the same mix of their gradients."""
    acts = _acts(forward[2])
    pairs = _best_per_level(yolo, forward[2][contract.LOGITS_OUTPUT])[:2]
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    mixed = seed[:1] - 0.5 * seed[1:]
    _, rows = _run_head(session, acts, seed)
    _, got = _run_head(session, acts, mixed)
    for k in range(3):
        want = rows[k][:1] - 0.5 * rows[k][1:]
        assert np.abs(got[k] - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30)


# --- c. the full graph ------------------------------------------------------------------------
@pytest.mark.parametrize("image", [0, 1, 2])
def test_full_graph_default_seed(yolo, session, images, image):
    """Mode 0, no seed: the best anchor of the top class; its gradients are torch's through
    the whole model."""
    x = yr.to_input(images[image : image + 1])
    names = [
        contract.CLASS_OUTPUT,
        contract.SCORE_OUTPUT,
        contract.LOGITS_OUTPUT,
        *(contract.gradient_name(k) for k in range(3)),
    ]
    cls, score, z, *grads = session.run(names, {"images": x})
    c, a = yr.default_target(z)
    assert int(cls[0]) == c
    assert score[0] == pytest.approx(z[0, c, a], rel=1e-6)
    _, _, ref = yr.full_gradients(
        yolo, x, yr.one_hot_seed([(c, a)], yolo.num_classes, yolo.num_anchors)
    )
    _check_grads(grads, ref, FULL_TOL, f"mode 0, default seed ({c}, {a})")


def test_full_graph_seed_at_every_scale(yolo, session, images, forward):
    """Mode 0 with a seed: the best detection of each scale; the full graph's gradients are
    total derivatives (a P4/P5 detection reaches P3 through the neck), as torch's."""
    x = yr.to_input(images[:1])
    names = [contract.gradient_name(k) for k in range(3)]
    pairs = _best_per_level(yolo, forward[0][contract.LOGITS_OUTPUT])
    seeds = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    _, _, ref = yr.full_gradients(yolo, x, seeds)
    for r, (c, a) in enumerate(pairs):
        got = session.run(names, {"images": x, contract.SEED_INPUT: seeds[r : r + 1]})
        _check_grads(got, [g[r : r + 1] for g in ref], FULL_TOL, f"mode 0 seed ({c}, {a})")


def test_head_path_equals_full_graph(yolo, session, images, forward):
    """The joint head (mode 2) and the full graph (mode 0) explain the same detection the
    same way, at every scale (the export's own verification, ``_verify_joint_head``, expects
    it; ultralytics' LayerCAM uses the full graph's gradients)."""
    x = yr.to_input(images[:1])
    acts = _acts(forward[0])
    pairs = _best_per_level(yolo, forward[0][contract.LOGITS_OUTPUT])
    seeds = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    _, head = _run_head(session, acts, seeds)
    names = [contract.gradient_name(k) for k in range(3)]
    bad = []
    for r, (c, a) in enumerate(pairs):
        full = session.run(names, {"images": x, contract.SEED_INPUT: seeds[r : r + 1]})
        for k in range(3):
            h, f = head[k][r : r + 1], full[k]
            err = max_rel_err(h, f) if np.any(f) else float(np.abs(h).max())
            if err > FULL_TOL:
                bad.append(f"P{k + 3} of ({c}, {a}) on P{yolo.level_of(a) + 3}: {err:.3g}")
    assert not bad, "mode 2 != mode 0 gradients (max rel err): " + "; ".join(bad)


# --- d. Explainer.detect ------------------------------------------------------------------------
def test_reference_is_ultralytics_cam(yolo, images):
    """The reference LayerCAM (``yolo_reference.layercam_fused`` on full-graph gradients) is
    ultralytics' ``class_activation_map``: same uint8 map, top 10 predictions, conf 0."""
    x = yr.to_input(images[:1])
    z, acts, _ = yr.full_gradients(
        yolo, x, np.zeros((1, yolo.num_classes, yolo.num_anchors), np.float32)
    )
    pairs = yr.cam_targets(z, TOP)
    _, _, grads = yr.full_gradients(
        yolo, x, yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    )
    cams = [
        yr.layercam_fused(acts, [g[r : r + 1] for g in grads], (IMGSZ, IMGSZ))
        for r in range(len(pairs))
    ]
    ours = (np.max(cams, axis=0) * 255).astype(np.uint8)
    theirs = yr.ultralytics_cam(yolo, x, TOP)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # uint8 truncation of equal floats


def _nms_reference(yolo, image: np.ndarray, conf: float, iou: float, top: int):
    """ultralytics' NMS on the plain model's output for ``image`` (preprocessed as onnxcam
    does): (anchors, classes, scores, boxes xyxy in original pixels) of the ``top`` best."""
    import onnxruntime as ort
    import torch
    from ultralytics.utils.nms import non_max_suppression

    from onnxcam.contract import InputSpec
    from onnxcam.image import as_rgb_array, preprocess

    spec = InputSpec("images", "NCHW", IMGSZ, IMGSZ, **contract.PRESETS["unit"])
    x = preprocess([as_rgb_array(image)], spec)
    plain = ort.InferenceSession(str(yolo.onnx), providers=["CPUExecutionProvider"])
    (y,) = plain.run(None, {"images": x})
    dets, idx = non_max_suppression(torch.from_numpy(y), conf, iou, return_idxs=True)
    d, idx = dets[0][:top].numpy().astype(np.float64), idx[0][:top].numpy()
    boxes = np.clip(d[:, :4], 0, IMGSZ)
    h, w = image.shape[:2]
    boxes *= [w / IMGSZ, h / IMGSZ, w / IMGSZ, h / IMGSZ]
    return idx.astype(int), d[:, 5].astype(int), d[:, 4], boxes


@pytest.mark.parametrize(("conf", "iou", "top"), [(CONF, IOU, TOP), (0.1, 0.7, 20)])
def test_detect_boxes_match_ultralytics_nms(yolo, explainer, conf, iou, top):
    """Kept detections (anchor, class, score, box in original pixels) = ultralytics'
    ``non_max_suppression`` on the same raw output, same conf/iou, the best ``top``;
    the photos at their own sizes (512×512, 300×451, 400×600)."""
    originals = yr.photos()
    results = explainer.detect(originals, methods="gradcam", top=top, conf=conf, iou=iou)
    assert len(results) == len(originals)
    for im, res in zip(originals, results, strict=True):
        anchors, classes, scores, boxes = _nms_reference(yolo, im, conf, iou, top)
        got = res.detections
        assert [d.anchor for d in got] == anchors.tolist()
        assert [d.index for d in got] == classes.tolist()
        assert [d.label for d in got] == [str(c) for c in classes]
        np.testing.assert_allclose([d.score for d in got], scores, rtol=1e-6)
        if len(got):
            np.testing.assert_allclose([d.box for d in got], boxes, atol=1e-3)


def _layercam_refs(yolo, res, acts, grads) -> list[np.ndarray]:
    """Reference LayerCAM per detection of ``res`` from ``grads`` [S, C, h, w] per level."""
    return [
        yr.layercam_fused(acts, [g[j : j + 1] for g in grads], (IMGSZ, IMGSZ))
        for j in range(len(res.detections))
    ]


def _detection_seed(yolo, res) -> np.ndarray:
    pairs = [(d.index, d.anchor) for d in res.detections]
    return yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)


def test_detect_layercam_is_head_layercam(yolo, detections, forward):
    """Each detection's LayerCAM = ultralytics' recipe (relu(Σ relu(g)·a) per scale, bilinear
    to the input, each scale over its max, max over scales) on the joint head's gradients
    (torch, through the head), and the image's map = the max over its detections."""
    assert sum(len(r.detections) for r in detections) >= 10
    for out, res in zip(forward, detections, strict=True):
        if not res.detections:
            continue
        acts = _acts(out)
        _, grads = yr.head_gradients(yolo, acts, _detection_seed(yolo, res))
        refs = _layercam_refs(yolo, res, acts, grads)
        for d, ref in zip(res.detections, refs, strict=True):
            got = d.maps["layercam"].feature
            assert got.shape == ref.shape == (IMGSZ, IMGSZ)
            assert np.abs(got - ref).max() <= MAP_TOL, (d.index, d.anchor)
        overall = res.maps["layercam"].feature
        assert np.abs(overall - np.max(refs, axis=0)).max() <= MAP_TOL


def test_detect_layercam_is_ultralytics_layercam(yolo, detections, images):
    """Each detection's LayerCAM = ultralytics' ``class_activation_map`` for that prediction
    (its gradients through the whole model: a P4/P5 detection's map at P3 included)."""
    x = yr.to_input(images)
    bad = []
    for i, res in enumerate(detections):
        if not res.detections:
            continue
        _, acts, grads = yr.full_gradients(yolo, x[i : i + 1], _detection_seed(yolo, res))
        refs = _layercam_refs(yolo, res, acts, grads)
        for d, ref in zip(res.detections, refs, strict=True):
            err = float(np.abs(d.maps["layercam"].feature - ref).max())
            if err > MAP_TOL:
                bad.append(f"image {i} class {d.index} anchor {d.anchor} "
                           f"(P{yolo.level_of(d.anchor) + 3}): {err:.3g}")  # fmt: skip
    assert not bad, "maps differ from ultralytics' LayerCAM: " + "; ".join(bad)


def test_detect_every_method(yolo, explainer, images):
    """Every gradient method and Eigen-CAM explain detections: finite maps in [0, 1] at the
    input size, one per detection and one for the image; Eigen-CAM's is the same for all."""
    from onnxcam.methods import METHODS

    methods = [m for m, s in METHODS.items() if s.family == "gradient"] + ["eigencam"]
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
        if m == "eigencam":
            assert all(np.array_equal(v, maps[0]) for v in maps)
    for d in res.detections:
        assert d.maps["gradcam"].original.shape == images[2].shape[:2]


@pytest.mark.parametrize("method", ["smoothgradcam++", "scorecam", "cam"])
def test_detect_refuses_other_methods(explainer, images, method):
    with pytest.raises(MethodError) as e:
        explainer.detect(images[0], methods=method)
    assert "\n" not in str(e.value)


# --- e. bad input -------------------------------------------------------------------------------
def test_export_as_classifier_is_refused(yolo):
    from onnxcam.export import export_onnx

    with pytest.raises(ExportError) as e:
        export_onnx(yolo.onnx, task="classify", verify=False)
    msg = str(e.value)
    assert "\n" not in msg and "--task detect" in msg, msg


def test_seed_of_wrong_shape(yolo, session, forward):
    """onnxruntime refuses a seed that is not [rows, K, N] (raw session)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    acts = _acts(forward[0])
    for shape in [(1, yolo.num_classes - 1, yolo.num_anchors), (1, yolo.num_classes)]:
        with pytest.raises(InvalidArgument, match="onnxcam_seed"):
            _run_head(session, acts, np.zeros(shape, np.float32))


def test_target_seed_of_wrong_shape(yolo, exported, images):
    """Through the runtime: a target whose seed is not [K, N], or an anchor out of range, is
    a one-line onnxcam error (``explain`` reports a per-image failure: ``iter_explain`` yields
    a ``Failure``, ``explain`` raises it)."""
    from onnxcam import Explainer
    from onnxcam.targets import Detection, Target

    class Wrong(Target):
        def weights(self, z):
            return np.zeros(z.shape[:1])

        def cls(self, z):
            return 0

    ex = Explainer(exported.path, device="cpu")
    for target, words in [
        (Wrong(), "a seed of shape"),
        (Detection(anchor=yolo.num_anchors, c=0), "out of range"),
    ]:
        with pytest.raises(OnnxcamError, match=words) as e:
            ex.explain(images[0], "gradcam", targets=target)
        assert "\n" not in str(e.value)


def test_detect_nothing_kept(explainer, images):
    """conf 0.99 on a random model keeps nothing: an empty result with a note, no error."""
    results = explainer.detect(images, methods="layercam", conf=0.99)
    assert len(results) == len(images)
    for r in results:
        assert r.detections == [] and r.maps == {}
        assert "no detection kept" in r.note


def test_detect_refuses_a_classifier(tiny_cam, images):
    from onnxcam import Explainer

    ex = Explainer(tiny_cam, device="cpu")
    if not hasattr(ex, "detect"):
        pytest.skip("Explainer.detect is not there yet")
    with pytest.raises(MethodError, match="--task detect"):
        ex.detect(images[0])


def test_detect_bad_options(explainer, images):
    for kw in [{"top": 0}, {"conf": 1.5}, {"iou": -0.1}, {"fuse": "min"}]:
        with pytest.raises(MethodError):
            explainer.detect(images[0], **kw)
