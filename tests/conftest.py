"""Shared fixtures: small real models exported through onnxcam, built fresh per session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)


@pytest.fixture(scope="session")
def tiny_torch_model():
    """A small GAP→Linear CNN with BN, max-pool and a residual add (random init, eval mode)."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.block = nn.Sequential(
                nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1)
            )
            self.head_conv = nn.Conv2d(8, 16, 1)
            self.act = nn.ReLU()
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = self.pool(self.stem(x))
            x = self.act(x + self.block(x))
            x = self.act(self.head_conv(x))
            return self.fc(torch.flatten(self.gap(x), 1))

    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_torch_model) -> Path:
    """The tiny model as a plain ONNX file (dynamic batch), written by torch.onnx.export."""
    from onnxcam.export import plain_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    path.write_bytes(plain_onnx(tiny_torch_model, (1, 3, 32, 32)))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_cam(tmp_path_factory, tiny_onnx) -> Path:
    """The tiny model exported through onnxcam (labels class0..class4)."""
    from onnxcam.export import export_onnx

    out = tmp_path_factory.mktemp("tinycam") / "tiny.cam.onnx"
    export_onnx(tiny_onnx, out, labels=[f"class{i}" for i in range(5)])
    return out


@pytest.fixture(scope="session")
def lite0_cam(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights, exported through onnxcam."""
    return _lite0(tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.cam.onnx")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-image's photos written as files (chelsea.jpg, coffee.png)."""
    import cv2
    import skimage.data

    d = tmp_path_factory.mktemp("photos")
    files = {"chelsea": d / "chelsea.jpg", "coffee": d / "coffee.png"}
    for name, path in files.items():
        cv2.imwrite(str(path), getattr(skimage.data, name)()[..., ::-1])
    return files


@pytest.fixture(scope="session")
def lite0_heatmaps(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (real weights) exported with every in-graph heatmap."""
    return _lite0(tmp_path_factory.mktemp("lite0h") / "lite0.heatmaps.cam.onnx", heatmaps="all")


def _lite0(out: Path, **kwargs) -> Path:
    """Export the pretrained EfficientNet-Lite0 recipe to ``out``."""
    import warnings

    from onnxcam.models import efficientnet_lite0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        efficientnet_lite0.export(out, **kwargs)
    return out
