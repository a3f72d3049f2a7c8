"""`onnxcam run --ray`: Ray Data actors, resumable Parquet shards, nothing lost or doubled.

Real Ray (one local cluster for the module, 2 CPUs), real onnxruntime, real faults: an actor
that SIGKILLs itself mid-run, a driver interrupted (SIGINT) then killed (SIGKILL), corrupt
files. The maps are compared row by row with the single-process `onnxcam run`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
from test_cli_export import assert_one_line_error, onnxcam

from onnxcam.errors import OnnxcamError
from onnxcam.scale import (
    STAGING,
    ExplainActor,
    as_uri,
    decode_map,
    encode_map,
    explain_dataset,
    list_sources,
    read_results,
    shard_name,
)

METHODS = ["gradcam", "layercam"]
CORRUPT = {
    "broken.jpg": b"\xff\xd8\xff\xe0 truncated jpeg",
    "empty.png": b"",
    "text.png": b"plain text, not a PNG",
}


class KillOnce(ExplainActor):
    """Writes its staged shard, then SIGKILLs its own process: once per ``marker`` file (which
    records the PID). Ray must restart the actor and retry the batch."""

    marker = ""

    def __call__(self, batch):
        out = super().__call__(batch)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return out
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        return out


class FailOn(ExplainActor):
    """Raises (like a bug or an image onnxruntime cannot take) on any batch with img007."""

    def explain(self, todo):
        if any("img007" in source for source, _, _ in todo):
            raise RuntimeError("cannot take this one")
        return super().explain(todo)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module; its address (for the CLI's --ray ADDRESS)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce, by value
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos) -> Path:
    """300 generated 64×64 images, scikit-image's two photos and three corrupt files."""
    d = tmp_path_factory.mktemp("scale") / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(d / f"img{i:03d}.png"), cv2.GaussianBlur(img, (9, 9), 3))
    for p in photos.values():
        shutil.copy(p, d / p.name)
    for name, data in CORRUPT.items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture(scope="module")
def explained(cluster, images, tiny_cam, tmp_path_factory):
    """The folder explained with top-2 classes, boxes and overlays, by one actor that kills
    itself after its first shard."""
    tmp = tmp_path_factory.mktemp("explained")
    KillOnce.marker = str(tmp / "killed")
    failures = []
    res = explain_dataset(
        tiny_cam, images, tmp / "out", METHODS, topk=2, boxes=0.5, overlays=tmp / "png",
        shard_size=32, batch_size=8, actors=1, actor=KillOnce, on_failure=failures.append,
    )  # fmt: skip
    return res, tmp, failures


def _keys(table) -> Counter:
    return Counter(
        zip(*(table.column(c).to_pylist() for c in ("source", "class", "method")), strict=True)
    )


def test_a_killed_actor_is_retried_and_no_row_is_lost_or_doubled(explained, images) -> None:
    res, tmp, _ = explained
    pid = int((tmp / "killed").read_text())
    with pytest.raises(ProcessLookupError):  # the actor really died
        os.kill(pid, 0)
    assert (res.explained, res.failed, res.skipped, res.images) == (302, 3, 0, 305)
    table = read_results(tmp / "out")
    counts = _keys(table)
    assert set(counts.values()) == {1}  # (image, class, method) once each, the retry included
    sources = {str(p) for p in images.iterdir()}
    assert {s for s, _, _ in counts} == sources
    assert len(table) == 302 * 2 * 2 + 3 == res.rows
    assert res.in_output == 305
    out = tmp / "out"
    assert not list((out / STAGING).iterdir())  # the killed attempt's staged shard is gone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len(list(out.glob("part-*.parquet"))) == res.shards


def test_rows_equal_the_single_process_run(explained, images, tiny_cam, tmp_path) -> None:
    from onnxcam.postprocess import resize_normalized
    from onnxcam.runner import run_images

    _, tmp, _ = explained
    single = run_images(
        tiny_cam, [images], methods=METHODS, topk=2, out_dir=tmp_path, save_npy=True,
        box_threshold=0.5,
    )  # fmt: skip
    table = read_results(tmp / "out").to_pylist()
    rows = {(r["source"], r["class"], r["method"]): r for r in table if r["error"] is None}
    assert len(single.rows) * 2 == len(rows) == 302 * 2 * 2
    ranks = Counter()
    for s in single.rows:
        for m in METHODS:
            r = rows[(s["image"], s["class"], m)]
            assert r["label"] == s["label"]
            assert abs(r["probability"] - s["probability"]) < 1e-5
            assert abs(r["score"] - s["score"]) < 1e-5
            assert r["box"] == (s["boxes"][m][0] if s["boxes"][m] else None)
            heat = decode_map(r["map"], r["map_height"], r["map_width"], r["map_dtype"])
            assert (r["map_height"], r["map_width"]) == (8, 8)  # feature resolution
            npy = Path(s["overlays"][m]).with_suffix(".npy")
            np.testing.assert_allclose(resize_normalized(heat, 32, 32), np.load(npy), atol=1e-5)
            ranks[r["rank"]] += 1
    assert ranks == {1: 302 * 2, 2: 302 * 2}
    assert {f.source for f in single.failures} == {str(images / n) for n in CORRUPT}


def test_corrupt_files_are_rows_with_their_error(explained, images) -> None:
    _, tmp, failures = explained
    table = read_results(tmp / "out").to_pylist()
    errors = {r["source"]: r for r in table if r["error"] is not None}
    assert set(errors) == {str(images / n) for n in CORRUPT} == {f.source for f in failures}
    assert "not a decodable image" in errors[str(images / "broken.jpg")]["error"]
    assert "empty file" in errors[str(images / "empty.png")]["error"]
    for r in errors.values():
        assert r["map"] is None and r["class"] is None and len(r["sha256"]) == 64


def test_overlays_are_written_once_per_image_class_and_method(explained, images) -> None:
    _, tmp, _ = explained
    pngs = list((tmp / "png").iterdir())
    assert len(pngs) == 302 * 2 * 2 and all(p.suffix == ".png" for p in pngs)
    chelsea = [p for p in pngs if p.name.startswith("chelsea-")]
    assert len(chelsea) == 4
    assert cv2.imread(str(chelsea[0])).shape == cv2.imread(str(images / "chelsea.jpg")).shape


def test_a_rerun_skips_what_is_done(explained, images, tiny_cam) -> None:
    """Resumed from a ray.data.Dataset read through a file:// URI: the same keys."""
    _, tmp, _ = explained
    out = tmp / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    ds = ray.data.read_binary_files(f"file://{images}", include_paths=True)
    res = explain_dataset(tiny_cam, ds, out, METHODS, topk=2, shard_size=64)
    assert (res.skipped, res.explained, res.failed, res.shards) == (305, 0, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == before


def test_an_image_that_breaks_its_batch_is_one_error_row(cluster, images, tiny_cam, tmp_path):
    res = explain_dataset(tiny_cam, f"{images}/img00?.png", tmp_path, "gradcam", actor=FailOn)
    assert (res.explained, res.failed) == (9, 1)  # a glob: img000..img009, one batch
    (bad,) = [r for r in read_results(tmp_path).to_pylist() if r["error"]]
    assert bad["source"] == str(images / "img007.png")
    assert bad["error"].endswith("img007.png: RuntimeError: cannot take this one")
    assert res.failures[0].error == bad["error"]


def test_eval_summary_equals_onnxcam_eval_and_a_resume_counts_once(
    cluster, images, tiny_cam, tmp_path
) -> None:
    """--eval: the per-row metrics aggregated over OUT are `evaluate()`'s summary (means,
    MaxBoxAcc/V2 and PxAP from the summed sweep data), after a resumed job too."""
    import json

    from onnxcam.engine import Explainer
    from onnxcam.evaluate import EvalOptions, evaluate, load_annotations

    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(images.glob("img*.png"))[:5]:
        shutil.copy(p, src / p.name)
    (tmp_path / "ann").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 20:60] = 255
    cv2.imwrite(str(tmp_path / "ann" / "m.png"), mask)
    doc = {
        "img000.png": {"boxes": [[4, 4, 40, 40]]},
        "img001.png": {"class": 1, "boxes": [[10, 10, 60, 50], [0, 0, 20, 20]]},
        "img002.png": {"class": "class3", "mask": "m.png"},
        "img003.png": {"class": 2},
    }
    ann = tmp_path / "ann" / "ann.json"
    ann.write_text(json.dumps({"images": doc}))
    opts = EvalOptions(steps=6)
    out = tmp_path / "out"
    kw = {"evaluation": opts, "annotations": ann, "batch_size": 1, "shard_size": 2}
    first = explain_dataset(tiny_cam, f"{src}/img00[0-2].png", out, METHODS, **kw)
    assert set(first.summary) == {*METHODS, "random"}
    assert {s["images"] for s in first.summary.values()} == {3}
    res = explain_dataset(tiny_cam, src, out, METHODS, **kw)  # resumed: 2 more images
    assert (res.skipped, res.explained) == (3, 2)

    files = sorted(src.iterdir())
    single = evaluate(Explainer(tiny_cam), files, METHODS, load_annotations(ann), opts, root=src)
    assert list(res.summary) == list(single.summary) == [*METHODS, "random"]
    for m, want in single.summary.items():
        got = res.summary[m]
        assert set(got) == set(want) and got["images"] == want["images"] == 5
        assert {"pxap", "maxboxacc", "maxboxacc_v2", "iou", "road_lerf"} <= set(want)
        for k, v in want.items():
            assert abs(got[k] - v) < 1e-6, (m, k, got[k], v)
    written = json.loads((out / "_eval" / "summary.json").read_text())
    assert written["summary"] == json.loads(json.dumps(res.summary))
    rows = read_results(out).to_pylist()
    assert len(rows) == 5 * 3 and {r["class"] for r in rows if "img001" in r["source"]} == {1}
    rnd = [r for r in rows if r["method"] == "random"]
    assert len(rnd) == 5 and all(r["map"] is None and r["drop"] is not None for r in rnd)
    plain = [r for r in rows if "img004" in r["source"]]
    assert all(r["pointing"] is None and r["pixel_histogram"] is None for r in plain)


def _wait_for_shards(out: Path, n: int, proc: subprocess.Popen, deadline: float) -> int:
    while time.time() < deadline and proc.poll() is None:
        found = len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0
        if found >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} shards in time (exit {proc.poll()})")


def test_an_interrupted_then_killed_cli_job_resumes(cluster, images, tiny_cam, tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(images.glob("img*.png"))[:60]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(CORRUPT["broken.jpg"])
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "onnxcam.cli", "run", str(tiny_cam), f"file://{src}",
        "-m", "smoothgradcam++", "--smooth-samples", "100", "--batch-size", "4",
        "--ray", cluster, "--shard-size", "4", "-o", str(out),
    ]  # fmt: skip
    logs = []

    def start() -> subprocess.Popen:
        log = (tmp_path / f"log{len(logs)}.txt").open("w+")
        logs.append(log)
        # SIGINT as an interactive shell leaves it (a background test run inherits it ignored)
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip

    proc = start()  # 1. Ctrl-C once two shards are committed
    n1 = _wait_for_shards(out, 2, proc, time.time() + 120)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    text = Path(logs[0].name).read_text()
    assert "Interrupted" in text and "Traceback" not in text, text
    n1 = len(list(out.glob("part-*.parquet")))
    proc = start()  # 2. SIGKILL once two more are committed: no clean-up at all
    _wait_for_shards(out, n1 + 2, proc, time.time() + 120)
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL
    n2 = len(list(out.glob("part-*.parquet")))
    proc = start()  # 3. to the end
    assert proc.wait(180) == 1  # broken.jpg's error row (from any of the runs) sets it
    text = Path(logs[2].name).read_text()
    assert "holds 61 image(s), 1 with an error" in text and "Traceback" not in text, text
    files = {str(p) for p in src.iterdir()}
    assert 2 <= n1 < n2 < len(files) // 4
    table = read_results(out)
    sources = Counter(table.column("source").to_pylist())
    assert set(sources) == files and set(sources.values()) == {1}  # every image exactly once
    assert table.column("error").null_count == len(files) - 1
    assert not list((out / STAGING).iterdir())


# --- no cluster needed ------------------------------------------------------------------------
def test_sources_folders_globs_and_uris(tmp_path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    for name in ("x.png", "y.JPG", "notes.txt", ".hidden.png", "sub/z.png"):
        (a / name).write_bytes(b"x")

    def names(*src, **kw) -> list[str]:
        loc, files = list_sources([str(s) for s in src], **kw)
        assert loc.prefix == ""
        return [str(Path(f).relative_to(a)) for f in files]

    assert names(a) == ["x.png", "y.JPG"]
    assert names(a, recursive=True) == ["sub/z.png", "x.png", "y.JPG"]
    assert names(f"{a}/*.png") == ["x.png"]
    assert names(f"{a}/**/*.png") == ["sub/z.png", "x.png"]
    assert names(f"file://{a}", a / "y.JPG") == ["x.png", "y.JPG"]  # one key, however named
    assert names(f"file://{a}/s*/?.png") == ["sub/z.png"]
    assert as_uri(Path("s3://bucket/k.jpg")) == "s3://bucket/k.jpg"  # click's Path collapses //
    assert as_uri(Path(f"file://{a}")) == f"file://{a}"
    with pytest.raises(OnnxcamError, match="no such file or folder"):
        list_sources([tmp_path / "missing"])
    with pytest.raises(OnnxcamError, match="no images found"):
        list_sources([f"{a}/*.gif"])


def test_map_encodings_round_trip() -> None:
    m = np.random.default_rng(1).random((7, 9)).astype(np.float32)
    for dtype, tol in (("float32", 0), ("float16", 2.5e-4), ("uint8", 1 / 510 + 1e-7)):
        back = decode_map(encode_map(m, dtype), 7, 9, dtype)
        assert back.dtype == np.float32 and np.abs(back - m).max() <= tol


def test_shard_names_depend_only_on_the_keys() -> None:
    keys = [("a.png", "1" * 64), ("b.png", "2" * 64)]
    assert shard_name(keys) == shard_name(keys[::-1])
    assert shard_name(keys) != shard_name(keys[:1])


def test_the_runtime_never_imports_ray() -> None:
    code = "import sys, onnxcam.scale, onnxcam.cli; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_ray_options_are_checked_before_any_cluster_starts(tiny_cam, images, tmp_path) -> None:
    img = images / "img000.png"
    r = onnxcam("run", tiny_cam, img, "--actors", "2", "-o", tmp_path)
    assert r.returncode == 2 and "--actors applies to --ray runs only" in r.stderr
    assert_one_line_error(
        onnxcam("run", tiny_cam, img, "--ray", "--save-npy", "-o", tmp_path), "--save-npy"
    )
    assert not list(tmp_path.iterdir())
