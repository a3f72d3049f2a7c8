"""Breadth sweep: ~50 random-init timm and transformers models through ``export_torch``.

Per model (table and heavy work in ``sweep_models.py``, each model exported twice, once):

1. the default-layer export works, its grid is the model's own feature grid, and it is the
   layer a practitioner picks for the family (the rules are in ``sweep_models``);
2. its gradient — and, through ``layers=[...]``, the table module's — equal float64 torch
   autograd within 1e-4 (relative to the tensor's scale);
3. the Explainer's Grad-CAM map lies on that grid (and, for a few families, ``onnxcam run``);
4. one earlier layer per model through ``layers=[...]``: exact gradient, map on its grid.

``python bench/sweep.py`` runs the same table and writes bench/results/sweep.{json,md}.
"""

from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest
from sweep_models import CASES, case, evaluate, is_table_default
from test_cli_export import onnxcam

pytestmark = pytest.mark.model

KEYS = [c.key for c in CASES if not c.refused]
REFUSED = [c.key for c in CASES if c.refused]


@functools.cache
def result(key: str) -> dict:
    """``sweep_models.evaluate`` once per model for all tests of this file."""
    c = case(key)
    return evaluate(c, keep_default_model=c.cli)


def _exported(r: dict, which: str) -> None:
    """Fail with the exporter's own message when an export failed: ``default`` (no layers),
    ``table`` (layers=[the table's default module]) or ``earlier`` (its earlier module)."""
    if f"{which}_error" in r:
        what = {"default": "default-layer export", "table": "layers=[<default module>] export"}
        what = what.get(which, "layers=[<earlier module>] export")
        pytest.fail(f"{r['model']}: {what} failed: {r[f'{which}_error']}", pytrace=False)


def _exact(r: dict, which: str) -> dict:
    """The check of layer ``which`` (default | table | earlier): activation and gradient vs
    float64 torch autograd within 1e-4."""
    for harness in ("default_check_error", "layers_check_error"):
        assert harness not in r, r[harness]
    chk = r.get(f"{which}_check")
    assert chk is not None, f"no {which} check"
    assert chk["ok"], chk["msg"]
    return chk


def test_sweep_is_broad() -> None:
    """At least 40 timm models and the three transformers models, across families."""
    timm_models = [c for c in CASES if not c.name.startswith("hf_")]
    assert len(timm_models) >= 40
    assert {"hf_vit", "hf_resnet", "hf_convnext"} <= {c.name for c in CASES}
    assert len({c.family for c in CASES}) >= 25
    assert len(KEYS) == len(set(KEYS))


@pytest.mark.parametrize("key", REFUSED)
def test_models_onnxcam_cannot_follow_are_refused_with_candidates(key: str) -> None:
    """Never a confident wrong map: the default export stops and lists candidates, and the
    family's own layers are refused as not on the image grid."""
    r = result(key)
    assert "no default target layer" in r.get("default_error", ""), r.get("default_error")
    assert "candidates" in r["default_error"]
    assert "not a feature map on the image grid" in r.get("earlier_error", "")


@pytest.mark.parametrize("key", KEYS)
def test_default_layer(key: str) -> None:
    c, r = case(key), result(key)
    _exported(r, "default")
    d = r["default"]
    assert r["default_is_target"]
    assert d["layout"] in ("NCHW", "NHWC")
    if d["tokens"] is not None:  # token layers are published as [B, rows, cols, C]
        prefix, rows, cols = d["tokens"]
        assert d["layout"] == "NHWC" and (rows, cols) == d["spatial"] and prefix >= 0
    assert d["spatial"] == r["feature_grid"], (
        f"default {d['tensor']} is on a {d['spatial']} grid; the model's features are "
        f"{r['feature_grid']}"
    )
    assert is_table_default(r), (
        f"default is {d['tensor']} (module {r['default_scope']}); a practitioner explains the "
        f"output of {c.default!r} (activation rel. difference {r.get('default_vs_table')})"
    )


@pytest.mark.parametrize("key", KEYS)
def test_default_gradient_exact(key: str) -> None:
    r = result(key)
    _exported(r, "default")
    _exact(r, "default")  # the default vs torch at the module that made it
    _exported(r, "table")
    _exact(r, "table")  # the same layer through layers=[module]
    assert r["table_target"]["spatial"] == r["feature_grid"]


@pytest.mark.parametrize("key", KEYS)
def test_default_map_on_feature_grid(key: str) -> None:
    r = result(key)
    _exported(r, "default")
    assert r["default_map"] == r["default"]["spatial"] == r["feature_grid"]
    _exported(r, "table")
    assert r["table_map"] == r["feature_grid"]


@pytest.mark.parametrize("key", KEYS)
def test_earlier_layer(key: str) -> None:
    c, r = case(key), result(key)
    _exported(r, "earlier")
    chk = _exact(r, "earlier")
    # the exported grid is the torch module's own (activations match, so the layout is right)
    grid = r["earlier_target"]["spatial"]
    assert grid == chk["torch_grid"], (c.earlier, grid, chk["torch_grid"])
    assert r["earlier_map"] == grid


@pytest.mark.parametrize("key", [c.key for c in CASES if c.cli])
def test_cli_run(key: str, tmp_path) -> None:
    import skimage.data

    r = result(key)
    _exported(r, "default")
    model = tmp_path / "model.onnx"
    model.write_bytes(r["default_model"])
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), skimage.data.astronaut()[::4, ::3, ::-1])  # 128x171
    out = tmp_path / "out"
    p = onnxcam("run", model, image, "-o", out, "--json", "--save-tensors")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)["results"][0]
    png = res["overlays"]["gradcam"]
    assert cv2.imread(png).shape == (128, 171, 3)  # the overlay at the original resolution
    act = np.load(out / "astronaut_onnxcam_activation_0.npy")
    grid = act.shape[-2:] if r["default"]["layout"] == "NCHW" else act.shape[-3:-1]
    assert tuple(grid) == r["feature_grid"]
