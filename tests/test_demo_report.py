"""`onnxcam demo` and `onnxcam report`: real model, real photos, one HTML file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from onnxcam import contract
from onnxcam.methods import METHODS


def _cli(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxcam.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.model
def test_demo_explains_chelsea_with_every_method(tmp_path) -> None:
    env = {**os.environ, "ONNXCAM_CACHE": str(tmp_path / "cache")}
    r = _cli("demo", "--photos", "chelsea", "--out", tmp_path / "demo", env=env)
    assert r.returncode == 0, r.stderr
    assert "cat" in r.stdout.lower() and "(built in" in r.stdout
    name = f"efficientnet_lite0.contract-v{contract.VERSION}.pixels-fullgrad-reciprocam.cam.onnx"
    cached = tmp_path / "cache" / name
    assert cached.is_file()  # the cache name carries the contract version: a new one rebuilds
    page = (tmp_path / "demo" / "report.html").read_text()
    for m in METHODS:  # every registered method applies to EfficientNet-Lite0
        assert f"<b>{m}</b>" in page, m
        assert (tmp_path / "demo" / "overlays" / f"chelsea_{m}.png").is_file()
    assert "Egyptian cat" in page or "tabby" in page or "tiger cat" in page
    # a second run reuses the cached model
    r2 = _cli("demo", "--photos", "coffee", "-m", "gradcam", "--out", tmp_path / "d2", env=env)
    assert r2.returncode == 0 and "(cached)" in r2.stdout
    assert re.search(r"coffee\.jpg\s+(espresso|cup)", r2.stdout), r2.stdout


def _images(folder, n: int) -> list:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def test_report_has_every_method_for_every_image_and_an_error_card(tiny_cam, tmp_path) -> None:
    imgs = _images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "r.html"
    methods = ["gradcam", "layercam", "scorecam", "ablationcam", "occlusion"]
    r = _cli(
        "report",
        tiny_cam,
        tmp_path / "in",
        "--out",
        out,
        "-m",
        ",".join(methods),
        "--batch-size",
        "4",
    )
    assert r.returncode == 1  # one image failed; the report is still written
    page = out.read_text()
    cards = page.split('<article class="card')[1:]
    assert len(cards) == 4
    errors = [c for c in cards if c.startswith(' error"')]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    for c in cards:
        if c.startswith(' error"'):
            continue
        for m in methods:
            assert f"<b>{m}</b>" in c
        assert len(re.findall(r'class="pred(?: explained)?"', c)) == 5  # top-5 bars
    assert all(p.name in page for p in imgs)
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/jpeg;base64,") == 3 * (1 + len(methods))


def test_long_reports_are_paginated(tiny_cam, tmp_path) -> None:
    _images(tmp_path / "in", 23)
    out = tmp_path / "r.html"
    r = _cli("report", tiny_cam, tmp_path / "in", "--out", out, "-m", "gradcam", "--per-page", "10")
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert page.count('<section class="page"') == 3
    assert 'data-label="21–23"' in page


@pytest.mark.skipif(
    not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
    reason="no Chromium (apt install chromium)",
)
def test_report_renders_in_headless_chromium(tiny_cam, tmp_path) -> None:
    _images(tmp_path / "in", 2)
    png = tmp_path / "shot.png"
    r = _cli(
        "report",
        tiny_cam,
        tmp_path / "in",
        "--out",
        tmp_path / "r.html",
        "-m",
        "gradcam,layercam",
        "--screenshot",
        png,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 800
    assert img.std() > 20  # real content, not a blank page
    header = img[:60, :, :].reshape(-1, 3).mean(axis=0)  # the dark blue header bar rendered
    assert header[0] > header[2] and header.mean() < 120
