"""Zero-pad folding in the backward walk (``autodiff.fold_zero_pads``).

TensorFlow's "same" padding, as torch exports it (EfficientNet-Lite's ``static_padding``), is a
constant zero ``Pad`` before a ``Conv`` with no pads of its own. The walker treats the pair as one
``Conv`` with those pads, so the adjoint does not compute the padded border only for a ``Slice``
to crop it. The input gradient must still equal float64 torch autograd, and the backward must
hold no such ``Slice`` — unless the pair cannot be folded (the Pad's output read twice, a
non-zero fill value, padding on the channel axis), where the ordinary rules run.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnxcam import contract
from onnxcam.export import export_onnx, plain_onnx

SIZE = 19  # odd: the strided windows do not reach the last row, so the adjoint needs its pads


class PadConv(nn.Module):
    """Pad → Conv pairs: a dense stride-2 stem, a depthwise stride-1 and a depthwise stride-2
    Conv, each behind an asymmetric zero Pad; ``mode`` makes one pair unfoldable."""

    def __init__(self, mode: str = "fold") -> None:
        super().__init__()
        self.mode = mode
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.dw1 = nn.Conv2d(16, 16, 5, groups=16)
        self.dw2 = nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(F.pad(x, (0, 1, 0, 1))))
        p = F.pad(x, (2, 2, 1, 3), value=0.5 if self.mode == "value" else 0.0)
        y = F.relu(self.dw1(p))
        if self.mode == "shared":  # the padded tensor is read twice: not foldable
            y = y + p[:, :, 1:-3, 2:-2]
        y = F.relu(self.dw2(F.pad(y, (1, 1, 0, 1))))
        return self.head(y.mean(dim=(2, 3)))


def _backward_slices(path) -> int:
    """Slice nodes the exporter wrote (the forward's own Pads export no Slice)."""
    m = onnx.load(str(path))

    def walk(g):
        for n in g.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)

    return sum(1 for n in walk(m.graph) if n.op_type == "Slice" and "/grad/" in n.name)


@pytest.mark.parametrize(("mode", "slices"), [("fold", 0), ("shared", 1), ("value", 1)])
def test_input_gradient_through_folded_pads_equals_autograd(tmp_path, mode, slices):
    torch.manual_seed(0)
    net = PadConv(mode).eval()
    src = tmp_path / "m.onnx"
    src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    out = tmp_path / "m.cam.onnx"
    export_onnx(src, out, input_gradient=True, mean=[0.0] * 3, std=[1.0] * 3)
    assert _backward_slices(out) == slices

    x = np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    k = _pixel_target(s)
    cls, g = s.run([contract.CLASS_OUTPUT, contract.gradient_name(k)], {"input": x})

    xt = torch.from_numpy(x).double().requires_grad_(True)
    logits = net.double()(xt)
    logits[torch.arange(2), torch.from_numpy(cls.astype(np.int64))].sum().backward()
    want = xt.grad.numpy()
    assert np.abs(g - want).max() <= 1e-5 * np.abs(want).max()


def _pixel_target(s: ort.InferenceSession) -> int:
    """The pixel target is the last one: the highest k among the gradient outputs."""
    names = {o.name for o in s.get_outputs()}
    return max(k for k in range(64) if contract.gradient_name(k) in names)
