"""The windowed backward of a detector's own detections (``export/window.py``) and the host
terms that read its gradients in windows (``onnxcam.terms.WindowTerms``).

The graph part is checked on detections chosen at the corners, edges and inside of every scale
of a random-init yolo11n (the graph's own detections cannot be placed there), for two images
in one run, against float64 torch autograd of the head alone (the direct gradient). The host
part: every formula in ``methods.WINDOWED`` gives the same map from windows as from the full
gradient, windows crossing the border included.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yolo_reference as yr
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.methods import METHODS, WINDOWED
from onnxcam.terms import Terms, WindowTerms, windows

pytest.importorskip("ultralytics")

IMGSZ = 160
TOL = 5e-4
"""Max relative error per map against float64 torch (float32 onnxruntime)."""


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> yr.Yolo:
    return yr.build("yolo11n", IMGSZ, tmp_path_factory.mktemp("window"), dynamic=True)


def _places(h: int, w: int) -> list[tuple[int, int]]:
    """Corners, edge middles, next to a corner and the centre of an h × w map."""
    return [
        (0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, w // 2), (h // 2, 0),
        (h - 1, w // 2), (h // 2, w - 1), (1, 1), (h // 2, w // 2),
    ]  # fmt: skip


def _windowed_model(yolo: yr.Yolo):
    """The plain export plus, for rows fed as inputs (image, class, anchor), the windowed
    gradients at the head inputs (outputs ``g0`` … ``g2``) and the head inputs (``x0`` …)."""
    from export import tasks, window
    from export.api import _normalize_opset
    from export.graph import GraphView
    from export.layers import find_head

    m, _ = _normalize_opset(onnx.load(str(yolo.onnx)))
    view = GraphView(m)
    head = find_head(view, None, "detect", None, None)
    wrt = tasks.head_inputs(view, head.logits)
    plan = window.plan(view, head.logits, wrt, head.num_classes)
    assert plan is not None
    names = ("image", "cls", "anchor")
    for n in names:
        m.graph.input.append(helper.make_tensor_value_info(n, TensorProto.INT64, ["rows", 1]))
    grads = window.gradients(view, plan, names, {})
    for k, (x, g) in enumerate(zip(wrt, grads, strict=True)):
        for name, t in ((f"g{k}", g), (f"x{k}", x)):
            m.graph.node.append(helper.make_node("Identity", [t], [name]))
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m, plan


def test_plan_of_yolo11(yolo):
    """Three windows: the P3/P4/P5 class branches, radius 2 (two depthwise 3 × 3), their
    anchors in the output's order."""
    _, plan = _windowed_model(yolo)
    sizes = [h * w for h, w in yolo.grids]
    assert [w.radius for w in plan] == [2, 2, 2]
    assert [w.anchor for w in plan] == [0, sizes[0], sizes[0] + sizes[1]]
    assert [(w.height, w.width) for w in plan] == yolo.grids
    assert [w.channel for w in plan] == [0, 0, 0]


def test_windowed_gradients_at_the_border(yolo):
    """Rows at the corners, edges and inside of every scale, for two images in one run (a
    dynamic batch; rows alternate between the images): each row's gradients = float64 torch
    autograd of the head on its image (zero at the other scales)."""
    m, _ = _windowed_model(yolo)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = yr.to_input(yr.photos(IMGSZ)[:2])
    rows = []
    start = 0
    for h, w in yolo.grids:
        for j, (y, xx) in enumerate(_places(h, w)):
            rows.append((j % 2, (7 * j + 3) % yolo.num_classes, start + y * w + xx))
        start += h * w
    r = np.array(rows, np.int64)
    feed = {"images": x, "image": r[:, :1], "cls": r[:, 1:2], "anchor": r[:, 2:]}
    out = s.run([*(f"g{k}" for k in range(3)), *(f"x{k}" for k in range(3))], feed)
    got, feats = out[:3], out[3:]
    for i in (0, 1):
        mine = [k for k, row in enumerate(rows) if row[0] == i]
        pairs = [rows[k][1:] for k in mine]
        seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
        _, ref = yr.head_gradients(yolo, [f[i : i + 1] for f in feats], seed)
        for level in range(3):
            for j, k in enumerate(mine):
                want = ref[level][j]
                scale = float(np.abs(want).max())
                err = float(np.abs(got[level][k] - want).max())
                if scale == 0:  # another scale's row: exactly zero
                    assert err == 0, (level, rows[k])
                else:
                    assert err <= TOL * scale, (level, rows[k], err / scale)


def test_export_records_windows(yolo, tmp_path):
    """A direct-gradient export records each head input's window; a total one none (its
    gradients reach through the neck)."""
    from onnxcam import Explainer
    from onnxcam.export import export_onnx

    for kind, radius in (("direct", 2), ("total", None)):
        path = tmp_path / f"{kind}.onnx"
        export_onnx(yolo.onnx, path, preset="unit", task="detect", detect_gradients=kind)
        targets = Explainer(path, device="cpu").info.targets
        got = [None if t.window is None else t.window.radius for t in targets]
        assert got == [radius] * 3, kind
    # a batch of two without a seed: each image's best prediction, windowed = the full
    # backward of the same rows (their one-hot seeds fed)
    s = ort.InferenceSession(str(tmp_path / "direct.onnx"), providers=["CPUExecutionProvider"])
    x = yr.to_input(yr.photos(IMGSZ)[:2])
    grads = [contract.gradient_name(k) for k in range(3)]
    rows, *windowed = s.run([contract.DETECTIONS_OUTPUT, *grads], {"images": x})
    assert len(rows) == 2
    pairs = [(int(c), int(a)) for c, a in rows[:, 5:7]]
    seed = yr.one_hot_seed(pairs, yolo.num_classes, yolo.num_anchors)
    full = s.run(grads, {"images": x, contract.SEED_INPUT: seed})
    for a, b in zip(windowed, full, strict=True):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_windowed_formulas():
    """``WINDOWED``: each formula gives the same map from the windows as from the full
    gradient (zero outside the windows), windows crossing the map's border included."""
    rng = np.random.default_rng(0)
    c, h, w, k = 6, 9, 11, 5
    A = rng.normal(size=(1, c, h, w)).astype(np.float32)
    A[:, :3] = np.abs(A[:, :3])
    origin = np.array([(-2, -2), (5, 8), (2, 3), (-1, 9)])
    G = np.zeros((len(origin), c, h, w), np.float32)
    for r, (y, x) in enumerate(origin):
        ys, xs = slice(max(y, 0), min(y + k, h)), slice(max(x, 0), min(x + k, w))
        G[r, :, ys, xs] = rng.normal(size=G[r, :, ys, xs].shape)
    for m in sorted(WINDOWED):
        formula = METHODS[m].formula
        want = formula(Terms(np.broadcast_to(A, G.shape), G))
        got = formula(WindowTerms(A, windows(G, origin, k, range(len(G))), origin))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=m)


def test_windowed_list_is_decided():
    """Every gradient method is either windowed or known to read every position."""
    gradient = {m for m, s in METHODS.items() if s.family == "gradient"}
    assert gradient - WINDOWED == {"eigengradcam"}
    assert WINDOWED.issubset(gradient)


def test_window_contract_roundtrip():
    t = contract.TargetLayer(
        0, "x", "x", "NCHW", (1, 4, 5, 5), window=contract.GradientWindow(first=25, radius=2)
    )
    back = contract.TargetLayer.from_json(t.to_json())
    assert back.window == t.window
    assert back.window.position(25 + 7, 5, 5) == (1, 2)
    assert back.window.position(24, 5, 5) is None and back.window.position(50, 5, 5) is None


def test_mode3_windows_are_the_whole_maps_windows(yolo, tmp_path):
    """Mode 3 returns the detections of mode 0 with each row's gradient window: the window of
    mode 0's whole-map gradient centred on the row's anchor (zero off the map), and no whole
    maps."""
    from onnxcam.export import export_onnx
    from onnxcam.terms import windows as cut

    path = tmp_path / "direct.onnx"
    export_onnx(yolo.onnx, path, preset="unit", task="detect")
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = yr.to_input(yr.photos(IMGSZ)[2:3])
    chosen = {
        contract.DETECT_CONF_INPUT: np.array([0.0], np.float32),
        contract.DETECT_TOP_INPUT: np.array([40], np.int64),
    }
    grads = [contract.gradient_name(k) for k in range(3)]
    wins = [contract.gradient_window_name(k) for k in range(3)]
    rows, *full = s.run([contract.DETECTIONS_OUTPUT, *grads], {"images": x, **chosen})
    mode3 = {contract.MODE_INPUT: np.array(contract.MODE_WINDOWS, np.int64)}
    rows3, *got = s.run(
        [contract.DETECTIONS_OUTPUT, *wins, *grads], {"images": x, **chosen, **mode3}
    )
    np.testing.assert_array_equal(rows3, rows)
    assert all(g.shape[0] == 0 for g in got[3:])  # no whole maps in mode 3
    start, levels = 0, []
    for h, w in yolo.grids:
        levels.append((start, h, w))
        start += h * w
    seen = set()
    for k, (first, h, w) in enumerate(levels):
        origin = (
            np.array(
                [
                    divmod(int(a) - first, w) if first <= a < first + h * w else (-99, -99)
                    for a in rows[:, 6]
                ]
            )
            - 2
        )
        want = cut(full[k], origin, 5, range(len(rows)))
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        seen |= {r for r in range(len(rows)) if np.any(got[k][r])}
    assert seen == set(range(len(rows)))  # every row has its window on one scale
