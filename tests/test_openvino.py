"""``--device openvino``: onnxruntime's OpenVINO execution provider runs exported graphs.

onnxruntime-openvino replaces the ``onnxruntime`` module, so it lives in its own venv
(``.ci/run`` makes ``.venv-openvino`` with onnxcam installed without dependencies and points
``ONNXCAM_OPENVINO_PYTHON`` at it; ~440 MB, ~25 s). The model is exported here; the OpenVINO
process explains it and the maps must equal the CPU provider's.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
import torchvision

from onnxcam.engine import Explainer
from onnxcam.errors import DeviceError
from onnxcam.export import export_torch

PYTHON = os.environ.get("ONNXCAM_OPENVINO_PYTHON")
METHODS = "gradcam,gradcam++,layercam,scorecam"

EXPLAIN = """
import sys, numpy as np
from onnxcam.engine import Explainer
ex = Explainer(sys.argv[1], device="openvino")
assert ex.device == "openvino", ex.provider
x = np.load(sys.argv[2])
exps = ex.explain_tensor(x, sys.argv[3], batch_size=16)
np.savez(sys.argv[4], classes=[e.target.index for e in exps],
         **{m: np.stack([e.maps[m].feature for e in exps]) for m in sys.argv[3].split(",")})
print("ok")
"""


def test_openvino_is_refused_with_what_to_install_when_missing() -> None:
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the OpenVINO provider")
    with pytest.raises(DeviceError, match="onnxruntime-openvino"):
        Explainer(b"", device="openvino")


@pytest.mark.model
@pytest.mark.skipif(not PYTHON, reason="ONNXCAM_OPENVINO_PYTHON is not set (see .ci/run)")
def test_openvino_maps_equal_the_cpu_provider(tmp_path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.cam.onnx"
    export_torch(model, (1, 3, 64, 64), output=path, heatmaps="gradcam")
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "maps.npz"
    r = subprocess.run(
        [PYTHON, "-c", EXPLAIN, str(path), str(tmp_path / "x.npy"), METHODS, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    got = np.load(out)
    exps = Explainer(path, device="cpu").explain_tensor(x, METHODS, batch_size=16)
    assert got["classes"].tolist() == [e.target.index for e in exps]
    for m in METHODS.split(","):
        ref = np.stack([e.maps[m].feature for e in exps])
        np.testing.assert_allclose(got[m], ref, atol=1e-4, err_msg=m)
