"""One-logit (binary) heads and multi-label sigmoid heads: every class is explainable.

A single logit z — raw, or through a sigmoid as in Keras' ``Dense(1, activation="sigmoid")`` —
is explained as two classes: 1 (score z) and 0, the negative (score −z, pytorch-grad-cam's
``BinaryClassifierOutputTarget``). Gradients are checked against float64 torch autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnxcam import contract
from onnxcam.engine import Explainer
from onnxcam.errors import ContractError, ExportError
from onnxcam.export import export_torch

SHAPE = (1, 3, 32, 32)


class Net(nn.Module):
    """Two convolutions, global average pool, a Linear to ``k`` logits, then ``out``."""

    def __init__(self, k: int = 1, out: str | None = "sigmoid") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, k)
        self.out = out

    def forward(self, x):
        z = self.fc(self.features(x).mean((2, 3)))
        if self.out == "sigmoid":
            return torch.sigmoid(z)
        if self.out == "softmax":
            return torch.softmax(z, 1)
        return z


def _inputs(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def _model(k: int = 1, out: str | None = "sigmoid", x: np.ndarray | None = None) -> Net:
    """A seeded net; for one logit, the bias puts the median input at z = 0 so that both
    classes are predicted."""
    torch.manual_seed(0)
    m = Net(k, out).eval()
    if k == 1 and x is not None:
        with torch.no_grad():
            z = m.fc(m.features(torch.from_numpy(x)).mean((2, 3)))[:, 0]
            m.fc.bias -= z.median() + 1e-3
    return m


def _logits(m: Net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m.fc(m.features(torch.from_numpy(x)).mean((2, 3))).numpy().astype(np.float64)


def _torch_gradient(m: Net, x: np.ndarray, cls: int, binary: bool) -> np.ndarray:
    """d score / d (the last ReLU's output), float64; score = ±z for a binary head."""
    m64 = Net(m.fc.out_features, m.out).double().eval()
    m64.load_state_dict(m.state_dict())
    a = m64.features(torch.from_numpy(x).double())
    z = m64.fc(a.mean((2, 3)))
    score = (z[:, 0] if cls == 1 else -z[:, 0]) if binary else z[:, cls]
    (g,) = torch.autograd.grad(score.sum(), a)
    return g.numpy()


def _explainer(m: Net, **kw) -> Explainer:
    res = export_torch(m, SHAPE, layers=["features.3"], **kw)
    return Explainer(res.model.SerializeToString())


@pytest.mark.parametrize("out", ["sigmoid", None])
def test_both_classes_of_one_logit_are_explained_exactly(out) -> None:
    x = _inputs()
    m = _model(1, out, x)
    ex = _explainer(m)
    assert ex.info.num_classes == 2 and ex.info.activation == "sigmoid"
    z = _logits(m, x)[:, 0]
    maps = {}
    for cls in (0, 1):
        exps = ex.explain_tensor(x, "gradcam,cam", classes=cls, keep_tensors=True)
        assert [e.target.index for e in exps] == [cls] * len(x)
        got_score = np.array([e.target.logit for e in exps])
        np.testing.assert_allclose(got_score, z if cls else -z, rtol=1e-5, atol=1e-6)
        got = np.stack([e.tensors[contract.gradient_name(0)] for e in exps])
        ref = _torch_gradient(m, x, cls, binary=True)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        maps[cls] = np.stack([e.maps["gradcam"].feature for e in exps])
        for e in exps:  # CAM uses ±w: the same map as Grad-CAM on a GAP → Linear head
            np.testing.assert_allclose(e.maps["cam"].feature, e.maps["gradcam"].feature, atol=1e-5)
    # the negative class's gradient is the positive's negated: its maps differ
    assert np.abs(maps[0] - maps[1]).max() > 0.1


def test_top1_follows_p_at_least_one_half_and_probabilities_are_sigmoids() -> None:
    x = _inputs(8)
    m = _model(1, "sigmoid", x)
    ex = _explainer(m)
    z = _logits(m, x)[:, 0]
    assert (z > 0).any() and (z < 0).any()  # both classes occur
    exps = ex.explain_tensor(x, "gradcam")
    p = 1 / (1 + np.exp(-z))
    assert [e.target.index for e in exps] == [int(v >= 0.5) for v in p]
    for e, pk in zip(exps, p, strict=True):
        probs = {q.index: q.probability for q in e.predictions}
        assert probs[1] == pytest.approx(pk, abs=1e-5)
        assert probs[0] == pytest.approx(1 - pk, abs=1e-5)


def test_labels_of_a_binary_head() -> None:
    m = _model(1, "sigmoid", _inputs())
    assert _explainer(m, labels=["dog"]).info.labels == ["not dog", "dog"]
    ex = _explainer(m, labels=["cat", "dog"])
    assert ex.info.labels == ["cat", "dog"]
    assert ex.explain_tensor(_inputs(1), "gradcam", classes="cat")[0].target.index == 0
    with pytest.raises(ExportError, match="binary"):
        _explainer(m, labels=["a", "b", "c"])
    with pytest.raises(ContractError, match="out of range"):
        ex.explain_tensor(_inputs(1), "gradcam", classes=2)


def test_softmax_over_one_logit_is_refused() -> None:
    with pytest.raises(ExportError, match="softmax over one logit"):
        _explainer(_model(1, "softmax"))


def test_multilabel_sigmoid_head_explains_each_requested_label() -> None:
    x = _inputs(3)
    m = _model(4, "sigmoid")
    ex = _explainer(m)
    assert ex.info.num_classes == 4
    z = _logits(m, x)
    for cls in (0, 3):
        exps = ex.explain_tensor(x, "gradcam", classes=cls, keep_tensors=True)
        np.testing.assert_allclose([e.target.logit for e in exps], z[:, cls], rtol=1e-5)
        got = np.stack([e.tensors[contract.gradient_name(0)] for e in exps])
        ref = _torch_gradient(m, x, cls, binary=False)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        probs = [{q.index: q.probability for q in e.predictions}[cls] for e in exps]
        np.testing.assert_allclose(probs, 1 / (1 + np.exp(-z[:, cls])), atol=1e-5)
