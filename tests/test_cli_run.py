"""`onnxcam run` as a user runs it: folders, a corrupt file among good ones, JSON, options."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from test_cli_export import assert_one_line_error, onnxcam


@pytest.fixture
def folder(tmp_path, photos):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(d / f"noise{i}.png"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def test_folder_with_a_corrupt_image_explains_the_rest(tiny_cam, folder, tmp_path) -> None:
    out = tmp_path / "out"
    r = onnxcam("run", tiny_cam, folder, "-m", "gradcam,layercam", "-o", out, "--batch-size", "2")
    assert r.returncode == 1  # non-zero at the end because one image failed
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    for i in range(3):
        for m in ("gradcam", "layercam"):
            png = out / f"noise{i}_{m}.png"
            assert png.is_file()
            assert cv2.imread(str(png)).shape == (40, 50, 3)  # original resolution
    assert "noise0.png" in r.stdout and "1 failed" in r.stdout


def test_json_output_and_npy(tiny_cam, folder, tmp_path) -> None:
    out = tmp_path / "o"
    r = onnxcam(
        "run",
        tiny_cam,
        folder / "noise0.png",
        folder / "broken.jpg",
        "--json",
        "--save-npy",
        "-m",
        "all",
        "-o",
        out,
    )
    doc = json.loads(r.stdout)
    assert r.returncode == 1
    assert doc["provider"] == "CPUExecutionProvider"
    (res,) = doc["results"]
    assert res["label"].startswith("class") and len(res["top5"]) == 5
    assert set(res["methods_ms"]) >= {"cam", "gradcam", "gradcam++", "eigencam"}
    assert doc["failures"][0]["image"].endswith("broken.jpg")
    m = np.load(out / "noise0_gradcam.npy")
    assert m.shape == (32, 32) and np.isfinite(m).all()


def test_class_by_label_and_topk_file_names(tiny_cam, folder, tmp_path) -> None:
    out = tmp_path / "o"
    r = onnxcam("run", tiny_cam, folder / "noise1.png", "--class", "class2", "-o", out, "--json")
    assert json.loads(r.stdout)["results"][0]["class"] == 2
    r = onnxcam("run", tiny_cam, folder / "noise1.png", "--topk", "2", "-o", out)
    assert r.returncode == 0
    assert len(list(out.glob("noise1_*-class*_gradcam.png"))) == 2


def test_bad_options_are_one_line_errors(tiny_cam, folder, tmp_path) -> None:
    img = folder / "noise0.png"
    assert_one_line_error(
        onnxcam("run", tiny_cam, img, "-m", "bogus", "-o", tmp_path),
        "unknown method 'bogus'",
        "gradcam++",
    )
    assert_one_line_error(
        onnxcam("run", tiny_cam, img, "--class", "zebra", "-o", tmp_path), "no class named"
    )
    assert_one_line_error(
        onnxcam("run", tmp_path / "none.onnx", img, "-o", tmp_path), "no such file"
    )
    # a missing image is that image's failure: reported on its own line, exit code 1
    r = onnxcam("run", tiny_cam, tmp_path / "missing.png", img, "-o", tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {tmp_path / 'missing.png'}: no such file"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(onnxcam("run", tiny_cam, empty, "-o", tmp_path), "no images found")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert_one_line_error(
            onnxcam("run", tiny_cam, img, "--device", "cuda", "-o", tmp_path), "CUDA"
        )


def test_method_choices_come_from_the_registry() -> None:
    from onnxcam.methods import METHODS

    r = onnxcam("run", "--help")
    flat = " ".join(r.stdout.split()).replace("- ", "-")  # help wraps after a name's hyphen
    for name in METHODS:
        assert name in flat


@pytest.mark.model
def test_real_photo_run(lite0_cam, photos, tmp_path) -> None:
    shutil.copy(photos["chelsea"], tmp_path / "cat.jpg")
    r = onnxcam("run", lite0_cam, tmp_path / "cat.jpg", "-m", "all", "-o", tmp_path / "o", "--json")
    res = json.loads(r.stdout)["results"][0]
    assert "cat" in res["label"]
    assert len(res["overlays"]) >= 9


def test_perturbation_methods_from_the_cli(tiny_cam, folder, tmp_path) -> None:
    out = tmp_path / "o"
    r = onnxcam(
        "run",
        tiny_cam,
        folder / "noise0.png",
        "-m",
        "scorecam,ablationcam,occlusion",
        "--batch-size",
        "5",
        "--occlusion-patch",
        "8",
        "--occlusion-stride",
        "4",
        "--scorecam-topk",
        "4",
        "-o",
        out,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert set(res["overlays"]) == {"scorecam", "ablationcam", "occlusion"}
    for png in res["overlays"].values():
        assert cv2.imread(png).shape == (40, 50, 3)


@pytest.mark.model
def test_ctrl_c_stops_cleanly_and_keeps_what_was_written(lite0_cam, photos, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):  # ~2 s of Score-CAM each: the run is far from done at the 1st image
        shutil.copy(photos["chelsea"], src / f"cat{i}.jpg")
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxcam.cli",
            "run",
            str(lite0_cam),
            str(src),
            "-m",
            "scorecam",
            "--batch-size",
            "1",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background by a non-interactive shell inherits SIGINT
        # *ignored* (POSIX, for asynchronous commands), and so would the CLI — then Python
        # installs no KeyboardInterrupt handler and Ctrl-C does nothing, as it should for a
        # background job. Give the CLI the disposition of an interactive run.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*.png")):  # wait for the 1st image
        time.sleep(0.2)
    assert list(out.glob("*.png")), "no image finished in time"
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    written = sorted(out.glob("*.png"))
    why = f"exit {proc.returncode}, {len(written)} PNGs; stderr {stderr[-1500:]!r}; {stdout!r}"
    assert proc.returncode == 130, why
    assert "Traceback" not in stderr and "Interrupted" in stderr, why
    assert 1 <= len(written) < 4, why
    assert all(cv2.imread(str(p)) is not None for p in written)  # complete, readable files
    assert not list(out.glob(".*.part"))  # PNGs are written atomically, nothing left over


def test_save_tensors_writes_the_raw_graph_outputs(tiny_cam, folder, tmp_path) -> None:
    out = tmp_path / "o"
    r = onnxcam("run", tiny_cam, folder / "noise2.png", "--save-tensors", "-o", out)
    assert r.returncode == 0, r.stderr
    a = np.load(out / "noise2_onnxcam_activation_0.npy")
    g = np.load(out / "noise2_onnxcam_gradient_0.npy")
    w = np.load(out / "noise2_onnxcam_cam_weight_0.npy")
    assert a.shape == g.shape == (1, 16, 8, 8) and w.shape == (1, 16)
    # Grad-CAM recomputed from the saved tensors equals the saved map's overlay source
    from onnxcam.methods import gradcam
    from onnxcam.postprocess import normalize, relu

    assert np.isfinite(normalize(relu(gradcam(a, g)))).all()
