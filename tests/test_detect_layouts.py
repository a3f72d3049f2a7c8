"""Detector layouts other than YOLOv8/11's: ``[B, N, 5 + K]`` (YOLOv5: objectness) and
``[B, N, 4 + K]`` (SSD-style), on a tiny two-scale torch detector whose last scale feeds
nothing but its prediction conv (YOLOv5's head: the head inputs cannot be found by sharing
alone).

Checked: the layout is read from the shape and the labels (refused when ambiguous), the head
inputs are the two scales' maps, the graph's detections equal the host's decode + OpenCV NMS
(``onnxcam.detection``), and each detection's gradient rows equal float64 torch autograd of
its score (objectness · p[c] for YOLOv5, p[c] otherwise).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxcam import contract, detection
from onnxcam.errors import ExportError
from onnxcam.export import export_torch

SIZE = 64
K = 3


class TinyDetector(nn.Module):
    """Two scales (stride 4 and 8), one 1×1 prediction conv each; output [B, N, 4 (+1) + K]:
    centre/size in input pixels, then sigmoid scores."""

    def __init__(self, objectness: bool) -> None:
        super().__init__()
        self.objectness = objectness
        c = 4 + int(objectness) + K
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()
        )
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.head1 = nn.Conv2d(16, c, 1)
        self.head2 = nn.Conv2d(16, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = self.stem(x)
        p2 = self.down(p1)
        outs = []
        for p, head, stride in ((p1, self.head1, 4), (p2, self.head2, 8)):
            y = head(p)
            h, w = y.shape[2:]
            y = y.flatten(2).transpose(1, 2)  # [B, h·w, C]
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([gx, gy], -1).reshape(1, h * w, 2).to(y.dtype)
            xy = (torch.sigmoid(y[..., :2]) + grid) * stride
            wh = torch.exp(y[..., 2:4].clamp(max=3)) * stride
            outs.append(torch.cat([xy, wh, torch.sigmoid(y[..., 4:])], -1))
        return torch.cat(outs, 1)


@functools.cache
def _case(fmt: str, gradients: str = "total"):
    torch.manual_seed(3)
    model = TinyDetector(objectness=fmt == "yolov5").eval()
    with torch.no_grad():  # scores that vary between anchors and classes
        for head in (model.head1, model.head2):
            head.weight.mul_(4)
    labels = [f"c{i}" for i in range(K)]
    res = export_torch(
        model, (1, 3, SIZE, SIZE), scale=1 / 255, mean=[0.0], std=[1.0], labels=labels,
        detect_gradients=gradients,
    )  # fmt: skip
    session = ort.InferenceSession(
        res.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return model, res, session


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["yolov5", "anchors"])
def test_layout_and_head_inputs(fmt: str) -> None:
    _, res, _ = _case(fmt)
    assert res.head.task == "detect" and res.head.detect.format == fmt
    assert res.head.detect.num_classes == K and res.head.detect.anchors_first
    assert [tuple(t.shape[2:]) for t in res.targets] == [(16, 16), (8, 8)]


def test_ambiguous_layout_is_refused_with_the_choices() -> None:
    """[B, N, 8] is YOLOv5 with 3 classes or SSD-style with 4: without labels the export
    stops and lists both."""
    model = TinyDetector(objectness=True).eval()
    with pytest.raises(ExportError, match=r"yolov5 \(3 classes\).*anchors \(4 classes\)"):
        export_torch(model, (1, 3, SIZE, SIZE), scale=1 / 255, mean=[0.0], std=[1.0])


@pytest.mark.parametrize("fmt", ["yolov5", "anchors"])
def test_graph_detections_equal_the_host_decode_and_opencv_nms(fmt: str) -> None:
    _, res, session = _case(fmt)
    x = _image()
    feeds = {
        "input": x,
        contract.DETECT_CONF_INPUT: np.array([0.3], np.float32),
        contract.DETECT_IOU_INPUT: np.array([0.5], np.float32),
        contract.DETECT_TOP_INPUT: np.array([6], np.int64),
        contract.MODE_INPUT: np.array(1, np.int64),
    }
    out_name = res.head.detect.output
    dets, y = session.run([contract.DETECTIONS_OUTPUT, out_name], feeds)
    boxes, scores = detection.decode(y[0], res.head.detect)
    kept = detection.keep(boxes, scores, 0.3, 0.5, 6)
    assert len(kept) >= 2, "the test model should keep a few boxes"
    assert dets[:, 6].astype(int).tolist() == [a for a, _, _ in kept]
    assert dets[:, 5].astype(int).tolist() == [c for _, c, _ in kept]
    np.testing.assert_allclose(dets[:, 4], [s for _, _, s in kept], rtol=1e-5)
    np.testing.assert_allclose(dets[:, :4], boxes[[a for a, _, _ in kept]], atol=1e-3)
    assert dets[:, 7].all()


@pytest.mark.parametrize("fmt", ["yolov5", "anchors"])
def test_detection_gradients_match_float64_autograd(fmt: str) -> None:
    """One run: the kept detections, one gradient row each; every row equals autograd of
    its score (YOLOv5: objectness · p[c]) at both head inputs (total gradients)."""
    model, _res, session = _case(fmt)
    x = _image(1)
    names = [contract.DETECTIONS_OUTPUT, contract.gradient_name(0), contract.gradient_name(1)]
    feeds = {"input": x, contract.DETECT_CONF_INPUT: np.array([0.2], np.float32)}
    dets, g0, g1 = session.run(names, feeds)
    assert len(dets) >= 2 and dets[:, 7].all()
    m64 = copy.deepcopy(model).double()
    captured = {}
    m64.stem.register_forward_hook(lambda _m, _i, o: captured.__setitem__("p1", o))
    m64.down.register_forward_hook(lambda _m, _i, o: captured.__setitem__("p2", o))
    y = m64(torch.from_numpy(x).double())[0]
    first = 5 if fmt == "yolov5" else 4
    for r, row in enumerate(dets):
        a, c = int(row[6]), int(row[5])
        score = y[a, first + c] * (y[a, 4] if fmt == "yolov5" else 1.0)
        assert float(score.detach()) == pytest.approx(float(row[4]), rel=1e-4)
        ref = torch.autograd.grad(score, [captured["p1"], captured["p2"]], retain_graph=True)
        for got, want in ((g0[r], ref[0][0]), (g1[r], ref[1][0])):
            want = want.numpy()
            scale = max(np.abs(want).max(), 1e-12)
            assert np.abs(got - want).max() / scale < 1e-4, (fmt, r)


def test_direct_gradients_hold_the_other_scale_fixed() -> None:
    """``direct``: a detection at the coarse scale has no gradient at the fine one (the path
    through ``down`` is not walked); at its own scale it equals the total gradient. Seed rows
    at a fine and a coarse anchor."""
    _, _res, direct = _case("anchors", "direct")
    _, _, total = _case("anchors", "total")
    fine = 16 * 16
    seed = np.zeros((2, fine + 8 * 8, 4 + K), np.float32)
    seed[0, 37, 4 + 1] = 1.0  # fine scale, class 1
    seed[1, fine + 20, 4 + 2] = 1.0  # coarse scale, class 2
    names = [contract.gradient_name(0), contract.gradient_name(1)]
    feeds = {"input": _image(1), contract.SEED_INPUT: seed}
    d0, d1 = direct.run(names, feeds)
    t0, t1 = total.run(names, feeds)
    assert not d1[0].any() and not t1[0].any()  # the fine detection never reads the coarse map
    np.testing.assert_allclose(d0[0], t0[0], rtol=1e-5, atol=1e-7)
    assert not d0[1].any() and t0[1].any()  # direct: no path through ``down``
    np.testing.assert_allclose(d1[1], t1[1], rtol=1e-5, atol=1e-7)
