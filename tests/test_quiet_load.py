"""Exported graphs load and run in a plain onnxruntime session without a single log line.

A C++ or Triton server logs whatever onnxruntime prints on each load, so the graph itself
must not trigger warnings (no client-side silencing: each check runs in a fresh process at
onnxruntime's default log level). What used to warn, and what the exporter does instead, is in
docs/graph-contract.md (optional-typed inputs, unused constants dropped, weights read in the
If branches by the names onnxruntime keeps).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from onnxcam.export import export_torch

LOAD_AND_RUN = """
import sys
import numpy as np
import onnxruntime as ort

for path in sys.argv[1:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    image = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in image.shape]
    s.run(None, {image.name: np.random.default_rng(0).normal(size=shape).astype(np.float32)})
print("ok")
"""


def _load_and_run(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
    )


class Binary(nn.Module):
    """A small CNN ending in Linear(…, 1) + sigmoid (a one-logit head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(self.conv(x).mean((2, 3))))


def test_the_check_can_fail(tmp_path) -> None:
    """A graph with an initializer among its inputs (what onnxcam no longer writes) warns."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(__import__("numpy").zeros(1, "float32"), "b")],
    )
    path = tmp_path / "warns.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    r = _load_and_run(path)
    assert r.returncode == 0 and "appears in graph inputs" in r.stderr


@pytest.mark.model
def test_exported_graphs_load_silently(tiny_cam, lite0_cam, lite0_heatmaps, tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    paths = [tiny_cam, lite0_cam, lite0_heatmaps]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64)
    paths.append(tmp_path / "vit.cam.onnx")
    export_torch(vit.eval(), (1, 3, 64, 64), output=paths[-1], heatmaps="gradcam")
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, img_size=64, window_size=2
    )
    paths.append(tmp_path / "swin.cam.onnx")
    export_torch(swin.eval(), (1, 3, 64, 64), layers=["layers.2", "norm"], output=paths[-1])
    paths.append(tmp_path / "binary.cam.onnx")
    export_torch(Binary().eval(), (1, 3, 32, 32), output=paths[-1], heatmaps="all")
    r = _load_and_run(*paths)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"
    assert r.stderr == "", r.stderr[-3000:]
