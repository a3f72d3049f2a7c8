"""`onnxcam run` on videos: real clips written and read back with OpenCV, real onnxruntime.

The clip is a bright square moving across a dark background, then frames of noise. Maps are
compared with ``Explainer.explain`` of each decoded frame alone, smoothing with an EMA computed
here, and interrupted runs by counting the frames of the file they leave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from test_cli_export import assert_one_line_error, onnxcam

from onnxcam import postprocess
from onnxcam.engine import Explainer
from onnxcam.video import (
    VideoClip,
    explain_video,
    grid_shape,
    overlay_bgr,
    split_inputs,
    write_video,
)

FPS = 10.0
SIZE = (64, 48)  # (width, height)
MOVING, NOISE = 22, 6


def _square_clip(path, frames: int = MOVING, noise: int = NOISE, fourcc: str = "mp4v") -> None:
    """A bright square crossing a dark frame, then ``noise`` frames of uniform noise."""
    w, h = SIZE
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (w, h))
    assert out.isOpened()
    for i in range(frames):
        f = np.full((h, w, 3), 16, np.uint8)
        x = 2 + i * (w - 18) // max(frames - 1, 1)
        f[16:32, x : x + 16] = (230, 240, 250)
        out.write(f)
    rng = np.random.default_rng(1)
    for _ in range(noise):
        out.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out.release()


def _decoded(path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from ``path`` (BGR)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    _square_clip(path)
    return path


@pytest.fixture(scope="module")
def tiny_heatmaps(tmp_path_factory, tiny_onnx):
    """The tiny model exported with in-graph Grad-CAM and Layer-CAM maps."""
    from onnxcam.export import export_onnx

    out = tmp_path_factory.mktemp("tinyh") / "tiny.heatmaps.cam.onnx"
    export_onnx(tiny_onnx, out, heatmaps="gradcam,layercam", labels=[f"c{i}" for i in range(5)])
    return out


def test_the_clip_decodes_as_written(clip) -> None:
    frames = _decoded(clip)
    assert len(frames) == MOVING + NOISE and frames[0].shape == (SIZE[1], SIZE[0], 3)
    with VideoClip(clip) as c:
        assert (c.width, c.height, c.fps, c.frames) == (*SIZE, FPS, MOVING + NOISE)


@pytest.mark.parametrize("model", ["tiny_cam", "tiny_heatmaps"])
def test_batched_frames_have_the_maps_of_each_frame_alone(model, clip, request) -> None:
    """Batches of 4 (and a last batch of 0 < n < 4) give each frame the maps, class and
    probability Explainer.explain gives that decoded frame alone (in-graph maps, and host)."""
    path = request.getfixturevalue(model)
    frames = _decoded(clip)
    with Explainer(path) as ex:
        graph = ex.plan(["gradcam", "layercam"]).calls[0].graph
        assert bool(graph) == (model == "tiny_heatmaps")  # the in-graph path when exported
        got = list(explain_video(ex, clip, ["gradcam", "layercam"], batch_size=4))
        assert [f.index for f in got] == list(range(len(frames)))
        for f, bgr in zip(got, frames, strict=True):
            assert np.array_equal(f.bgr, bgr)
            (alone,) = ex.explain(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ["gradcam", "layercam"])
            assert f.target.index == alone.target.index
            assert f.target.probability == pytest.approx(alone.target.probability, abs=1e-6)
            for m in ("gradcam", "layercam"):
                np.testing.assert_allclose(f.maps[m].feature, alone.maps[m].feature, atol=1e-5)
                # at the frame's own size, as the overlay uses it
                assert f.maps[m].original.shape == (SIZE[1], SIZE[0])
                np.testing.assert_allclose(f.maps[m].original, alone.maps[m].original, atol=1e-5)


def test_smooth_time_is_the_ema_of_the_frame_maps_and_restarts_per_clip(tiny_cam, clip) -> None:
    alpha = 0.7
    with Explainer(tiny_cam) as ex:
        plain = [f.maps["gradcam"].feature for f in explain_video(ex, clip, batch_size=5)]
        smooth = [
            f.maps["gradcam"].feature
            for f in explain_video(ex, clip, batch_size=3, smooth_time=alpha)
        ]
        again = next(explain_video(ex, clip, smooth_time=alpha))  # a new clip: no carry-over
    s = None
    for m, got in zip(plain, smooth, strict=True):
        s = m if s is None else alpha * s + (1 - alpha) * m
        want = postprocess.normalize(s)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(smooth[MOVING - 1], plain[MOVING - 1], atol=1e-3)  # it did smooth
    np.testing.assert_allclose(again.maps["gradcam"].feature, plain[0], atol=1e-6)


def test_cli_writes_a_video_of_the_same_frames_size_and_fps(tiny_heatmaps, clip, tmp_path):
    out = tmp_path / "out.mp4"
    r = onnxcam("run", tiny_heatmaps, clip, "-m", "gradcam", "-o", out, "--save-npy", "--json")
    assert r.returncode == 0, r.stderr
    (doc,) = json.loads(r.stdout)["videos"]
    assert doc["frames"] == MOVING + NOISE and doc["maps"] == {"gradcam": "graph"}
    assert doc["fps"] > 0 and len(doc["per_frame"]) == doc["frames"]
    written = _decoded(out)
    assert len(written) == MOVING + NOISE and written[0].shape == (SIZE[1], SIZE[0], 3)
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert not list(tmp_path.glob(".*.part*"))  # renamed once complete
    # --save-npy: the maps at the model-input size, equal to the Python API's
    maps = np.load(tmp_path / "out_gradcam.npy")
    with Explainer(tiny_heatmaps) as ex:
        api = np.stack([f.maps["gradcam"].input for f in explain_video(ex, clip)])
        first = next(explain_video(ex, clip))
    assert maps.shape == (MOVING + NOISE, 32, 32)
    np.testing.assert_allclose(maps, api, atol=1e-6)
    # each frame is the overlay of its map with the label burnt in (top-left corner)
    plain = first.overlay("gradcam")  # from the 32x32 map, resized and scaled in one pass
    rgb = postprocess.overlay(first.bgr[..., ::-1], first.maps["gradcam"].original)
    assert np.abs(plain.astype(int) - rgb[..., ::-1]).max() <= 1  # the host overlay's pixels
    at_frame_size = first.maps["gradcam"].original
    assert np.array_equal(plain, overlay_bgr(first.bgr, at_frame_size, 0.5, "jet"))
    from onnxcam.video import render

    frame0 = render(first, ["gradcam"], 0.5, "jet")
    assert not np.array_equal(frame0[:8, :24], plain[:8, :24])  # the caption
    assert np.array_equal(frame0[-16:, -24:], plain[-16:, -24:])  # the rest is the overlay
    assert doc["per_frame"][0]["label"] == first.target.label


def test_several_methods_are_tiles_and_avi_is_mjpg(tiny_cam, clip, tmp_path) -> None:
    avi = tmp_path / "square.avi"
    _square_clip(avi, frames=8, noise=2, fourcc="MJPG")
    out = tmp_path / "o"
    r = onnxcam("run", tiny_cam, clip, avi, "-m", "gradcam,layercam,xgradcam", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "2 video(s), 38 frame(s)" in r.stdout and "frames/s" in r.stdout
    rows, cols = grid_shape(3)
    mp4 = _decoded(out / "square_gradcam_layercam_xgradcam.mp4")
    assert len(mp4) == MOVING + NOISE
    assert mp4[0].shape == (rows * SIZE[1], cols * SIZE[0], 3) == (96, 128, 3)
    assert mp4[0][SIZE[1] :, SIZE[0] :].mean() < 4  # the 4th tile of the 2x2 grid is empty
    cap = cv2.VideoCapture(str(out / "square_gradcam_layercam_xgradcam.avi"))
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") == b"MJPG"
    assert len(_decoded(out / "square_gradcam_layercam_xgradcam.avi")) == 10


def test_images_and_videos_in_one_run(tiny_cam, clip, tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "still.png"), np.full((40, 50, 3), 90, np.uint8))
    (d / "clip.mp4").write_bytes(clip.read_bytes())
    videos, others = split_inputs([d, "cam:0"])
    assert videos == [d / "clip.mp4", 0] and others == [d]
    out = tmp_path / "o"
    r = onnxcam("run", tiny_cam, d, "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out / "still_gradcam.png").is_file()
    assert len(_decoded(out / "clip_gradcam.mp4")) == MOVING + NOISE
    assert_one_line_error(
        onnxcam("run", tiny_cam, d, "-o", tmp_path / "x.mp4"), "names a video file"
    )
    assert_one_line_error(
        onnxcam("run", tiny_cam, clip, "--topk", "2", "-o", tmp_path), "--topk", "images only"
    )


def test_corrupt_missing_and_absent_camera_are_one_line_errors(tiny_cam, clip, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[:200])  # no moov atom: nothing to decode
    for src, why in [
        (bad, "not a readable video"),
        (truncated, "not a readable video"),
        (tmp_path / "none.mp4", "no such file"),
        ("cam:9", "camera cannot be opened"),  # the camera path, through the same code
    ]:
        r = onnxcam("run", tiny_cam, src, "-o", tmp_path / "o")
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], lines
    assert not (tmp_path / "o").exists()  # nothing was written for them


def test_a_truncated_file_gives_its_decodable_frames_and_says_so(tiny_cam, tmp_path) -> None:
    avi = tmp_path / "whole.avi"
    _square_clip(avi, frames=40, noise=0, fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    with Explainer(tiny_cam) as ex:
        res = write_video(ex, cut, tmp_path / "cut_out.avi")
    assert 0 < res.frames < 40 and len(_decoded(tmp_path / "cut_out.avi")) == res.frames
    assert any(f"{res.frames} of the 40 frames" in n for n in res.notes), res.notes


def test_ctrl_c_from_a_frame_callback_leaves_a_playable_file(tiny_cam, clip, tmp_path) -> None:
    out = tmp_path / "stopped.mp4"

    def stop_at_ten(f) -> None:
        if f.index == 9:
            raise KeyboardInterrupt

    with Explainer(tiny_cam) as ex:
        res = write_video(ex, clip, out, "gradcam", batch_size=4, on_frame=stop_at_ten)
    assert res.interrupted and res.frames == 10  # the frames explained before Ctrl-C
    frames = _decoded(out)
    assert len(frames) == res.frames == len(res.per_frame)
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)


def test_sigint_to_the_cli_finalises_the_video(tiny_cam, tmp_path) -> None:
    """A real Ctrl-C (SIGINT) in the middle of a run: exit 130, and the file holds exactly the
    frames the CLI says it wrote."""
    src = tmp_path / "long.mp4"
    w, h, n = 320, 240, 400
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0], f[..., 1] = (xx + 3 * i) % 256, (2 * yy + i) % 256
        f[100:140, (5 * i) % 280 : (5 * i) % 280 + 40] = 255
        writer.write(f)
    writer.release()
    out = tmp_path / "out.mp4"
    part = tmp_path / ".out.part.mp4"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "onnxcam.cli", "run", str(tiny_cam), str(src)),
            *("-o", str(out), "-m", "gradcam,layercam,scorecam", "--batch-size", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a background test run inherits SIGINT ignored (see test_cli_run's Ctrl-C test)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (part.exists() and part.stat().st_size > 100_000):
        time.sleep(0.05)  # the encoder has flushed frames: the run is under way
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    why = f"exit {proc.returncode}; stderr {stderr[-800:]!r}; stdout {stdout[-300:]!r}"
    assert proc.returncode == 130 and "Traceback" not in stderr, why
    said = int(stderr.split("Interrupted: ")[1].split(" frame")[0])
    assert 0 < said < n, why
    assert len(_decoded(out)) == said, why
    assert not part.exists()
