"""Any onnxruntime client gets the maps: the in-graph heatmaps run in Node.js
(onnxruntime-node from the npm registry) and equal the Python runtime's maps."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnxcam import Explainer
from onnxcam.image import preprocess

EXAMPLE = Path(__file__).parent.parent / "examples" / "javascript"
METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam"]


@pytest.fixture(scope="session")
def node_example(tmp_path_factory) -> Path:
    """examples/javascript with onnxruntime-node installed (npm, no install scripts)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js/npm not available")
    d = tmp_path_factory.mktemp("js")
    for f in ("package.json", "heatmap.mjs"):
        shutil.copy(EXAMPLE / f, d / f)
    r = subprocess.run(
        ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return d


@pytest.mark.model
def test_node_heatmaps_equal_python(node_example, lite0_heatmaps, photos, tmp_path) -> None:
    with Explainer(lite0_heatmaps) as ex:
        r = ex.explain(photos["chelsea"], METHODS)[0]
        from onnxcam.image import read_image

        x = preprocess([read_image(photos["chelsea"])], ex.info.input)
    x.astype("<f4").tofile(tmp_path / "input.f32")
    out = tmp_path / "out.json"
    res = subprocess.run(
        [
            "node",
            "heatmap.mjs",
            str(lite0_heatmaps),
            str(tmp_path / "input.f32"),
            *map(str, x.shape),
            str(out),
        ],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["class"] == [r.target.index]
    for m in METHODS:
        name = "onnxcam_heatmap_" + m.replace("+", "p").replace("-", "_") + "_0"
        js = np.asarray(doc["heatmaps"][name]["data"], np.float32).reshape(
            doc["heatmaps"][name]["dims"]
        )
        assert js.shape == (1, 224, 224)
        np.testing.assert_allclose(js[0], r.maps[m].input, atol=1e-5, err_msg=m)
