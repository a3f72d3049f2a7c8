"""Video: onnxcam's frame rate against plain onnxruntime inference of the same clip.

Two clips written here with OpenCV (mp4v, 25 fps, 320×240): ``shapes`` (150 frames: squares
and discs moving over a gradient) and ``photos`` (scikit-image's chelsea, coffee, astronaut and
rocket, each shown for 40 frames with a slow pan: 160 frames). Models: torchvision's
MobileNetV3-Small (random init) and EfficientNet-Lite0 (its ImageNet weights), each exported
with ``--heatmaps gradcam``; 2 onnxruntime threads, spinning off (``harness.session``).

Variants, each one full pass over the clip, timed side by side (``harness.interleaved``):
  * ``plain``: the unmodified model, a plain loop — decode (``cv2.VideoCapture.read``),
    preprocess (``onnxcam.image.preprocess``: the same code onnxcam runs), ``session.run``
    per batch; no thread, no writing;
  * ``explain``: ``onnxcam.video.explain_video`` — decode + preprocess in the reader thread,
    ``explain_tensor`` (Grad-CAM from the graph) in the main thread; no writing;
  * ``write``: ``onnxcam.video.write_video`` (what ``onnxcam run MODEL clip.mp4 -m gradcam
    -o out.mp4`` runs) — the above plus, in the writer thread, the overlay at the frame's
    size, the label and probability burnt in and mp4v encoding.
``plain`` runs twice, with OpenCV's thread pool at its default and at one thread (what
``write_video`` sets), and the faster is the baseline. Besides frames per second (wall time),
the CPU time of the whole process per frame is recorded: on a shared machine, where other
processes take cores, it says what each variant costs independently of how many cores it
got. A profile phase times each stage alone, sequentially, per frame.

    python bench/video.py --repeats 7 --example docs/video-example.jpg
    python bench/video.py --repeats 9 --models mobilenet_v3_small --breakdown --out video_mobilenet
    python bench/video.py [--repeats 7] [--models mobilenet_v3_small,lite0] [--batches 8]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import arguments, interleaved, markdown_table, save, session_options

W, H, FPS = 320, 240, 25.0
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def shapes_clip(path: Path, frames: int = 150) -> Path:
    """Squares and discs crossing a colour gradient."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(frames):
        f = np.zeros((H, W, 3), np.uint8)
        f[..., 0] = (xx * 255 // W).astype(np.uint8)
        f[..., 2] = (yy * 255 // H).astype(np.uint8)
        x = 10 + i * (W - 80) // frames
        cv2.rectangle(f, (x, 40), (x + 60, 100), (255, 255, 255), -1)
        cv2.circle(f, (W - 40 - i * (W - 80) // frames, 170), 30, (0, 220, 255), -1)
        out.write(f)
    out.release()
    return path


def photos_clip(path: Path, per_photo: int = 40) -> Path:
    """scikit-image photos, each for ``per_photo`` frames, a 320×240 window panning across a
    copy scaled to 1.3× the frame."""
    import skimage.data

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        big = cv2.resize(rgb[..., :3][..., ::-1], (round(W * 1.3), round(H * 1.3)))
        for i in range(per_photo):
            x = i * (big.shape[1] - W) // per_photo
            y = i * (big.shape[0] - H) // per_photo
            out.write(np.ascontiguousarray(big[y : y + H, x : x + W]))
    out.release()
    return path


def models(names: list[str], tmp: Path) -> dict[str, tuple[bytes, Path]]:
    """name → (plain ONNX bytes, onnxcam graph exported with --heatmaps gradcam)."""
    import torch
    import torchvision

    from onnxcam.export import export_onnx, plain_onnx

    out = {}
    for name in names:
        torch.manual_seed(0)
        if name == "mobilenet_v3_small":
            module, prep = torchvision.models.mobilenet_v3_small(weights=None).eval(), {}
        else:
            from onnxcam.models import efficientnet_lite0, imagenet_labels

            module = efficientnet_lite0.build()
            prep = {**efficientnet_lite0.PREPROCESSING, "labels": imagenet_labels()}
        plain = plain_onnx(module, (1, 3, 224, 224))
        path = tmp / f"{name}.cam.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(plain, path, heatmaps="gradcam", **prep)
        out[name] = (plain, path)
    return out


def plain_pass(sess, spec, clip: Path, batch: int) -> int:
    """The baseline: decode, preprocess, run the plain model per batch; frames done."""
    from onnxcam.image import preprocess

    cap = cv2.VideoCapture(str(clip))
    name = sess.get_inputs()[0].name
    n, frames = 0, []
    while True:
        ok, f = cap.read()
        if ok:
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(np.float32))
        if frames and (len(frames) == batch or not ok):
            sess.run(None, {name: preprocess(frames, spec)})
            n, frames = n + len(frames), []
        if not ok:
            break
    cap.release()
    return n


def profile(ex, sess, clip: Path, batch: int, out: Path) -> dict[str, float]:
    """Each stage alone, sequentially, OpenCV on one thread (as in ``write_video``): ms per
    frame."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return _profile(ex, sess, clip, batch, out)
    finally:
        cv2.setNumThreads(threads)


def _profile(ex, sess, clip: Path, batch: int, out: Path) -> dict[str, float]:
    from onnxcam.image import preprocess
    from onnxcam.video import VideoClip, VideoFrame, render

    spec = ex.info.input
    t: dict[str, float] = dict.fromkeys(
        ["decode", "preprocess", "plain run", "explain", "overlay+label", "encode"], 0.0
    )
    frames = []
    with VideoClip(clip) as c:
        t0 = time.perf_counter()
        while (f := c.read()) is not None:
            frames.append(f)
        t["decode"] = time.perf_counter() - t0
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    name = sess.get_inputs()[0].name
    for i in range(0, len(frames), batch):
        part = frames[i : i + batch]
        t0 = time.perf_counter()
        x = preprocess([cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(np.float32) for f in part], spec)
        t1 = time.perf_counter()
        sess.run(None, {name: x})
        t2 = time.perf_counter()
        res = ex.explain_tensor(x, "gradcam")
        t3 = time.perf_counter()
        drawn = []
        for f, r in zip(part, res, strict=True):
            cam = dataclasses.replace(r.maps["gradcam"], original_size=(H, W))
            vf = VideoFrame(0, f, r.predictions, r.target, {"gradcam": cam})
            drawn.append(render(vf, ["gradcam"], 0.5, "jet"))
        t4 = time.perf_counter()
        for d in drawn:
            writer.write(d)
        t5 = time.perf_counter()
        for k, a, b in [
            ("preprocess", t0, t1),
            ("plain run", t1, t2),
            ("explain", t2, t3),
            ("overlay+label", t3, t4),
            ("encode", t4, t5),
        ]:
            t[k] += b - a
    writer.release()
    return {k: 1000 * v / len(frames) for k, v in t.items()}


def example(ex, clip: Path, png: Path) -> None:
    """Frames 20, 60, 100 of ``clip`` explained with Grad-CAM and Eigen-CAM, as written by
    ``write_video`` (tiles), one above the other in one image (JPEG quality 88 for .jpg)."""
    from onnxcam.video import write_video

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "example.mp4"
        write_video(ex, clip, out, ["gradcam", "eigencam"], batch_size=8, smooth_time=0.5)
        cap = cv2.VideoCapture(str(out))
        frames = []
        for i in range(101):
            ok, f = cap.read()
            if ok and i in (20, 60, 100):
                frames.append(f)
    cv2.imwrite(str(png), np.vstack(frames), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print("wrote", png)


def cpu_timed(run: Callable[[], object], into: list[float]) -> Callable[[], None]:
    """``run``, appending the CPU seconds it took (all threads of this process) to ``into``."""

    def timed() -> None:
        c0 = time.process_time()
        run()
        into.append(time.process_time() - c0)

    return timed


def variants(sess, ex, clip: Path, batch: int, out: Path) -> dict[str, Callable[[], object]]:
    """name → one full pass over ``clip``: plain, explain (no writing), write."""
    from onnxcam.video import explain_video, write_video

    threads = cv2.getNumThreads()

    def one_cv2_thread(run: Callable[[], object]) -> Callable[[], None]:
        def wrapped() -> None:
            cv2.setNumThreads(1)  # as write_video does
            try:
                run()
            finally:
                cv2.setNumThreads(threads)

        return wrapped

    def explain() -> None:
        for _ in explain_video(ex, clip, "gradcam", batch_size=batch):
            pass

    def plain() -> None:
        plain_pass(sess, ex.info.input, clip, batch)

    return {
        "plain": plain,
        "plain_cv1": one_cv2_thread(plain),
        "explain": one_cv2_thread(explain),
        "write": lambda: write_video(ex, clip, out, "gradcam", batch_size=batch),
    }


class _NullWriter:
    """A ``cv2.VideoWriter`` stand-in that encodes nothing (``breakdown`` only)."""

    def __init__(self, path: str, *args: object) -> None:
        Path(path).touch()

    def isOpened(self) -> bool:
        return True

    def write(self, frame: np.ndarray) -> None:
        pass

    def release(self) -> None:
        pass


def breakdown(ex, clip: Path, batch: int, out: Path, repeats: int) -> list[dict]:
    """What the writer thread costs inside the pipeline: ``write_video`` with drawing and/or
    encoding replaced by nothing (the frame as decoded; ``_NullWriter``), interleaved with
    ``explain_video``; frames/s and CPU ms per frame."""
    from onnxcam import video

    real_render, real_writer = video.render, cv2.VideoWriter
    threads = cv2.getNumThreads()

    def write(draw: bool, encode: bool) -> Callable[[], None]:
        def run() -> None:
            video.render = real_render if draw else (lambda f, *a: f.bgr)
            cv2.VideoWriter = real_writer if encode else _NullWriter
            try:
                video.write_video(ex, clip, out, "gradcam", batch_size=batch)
            finally:
                video.render, cv2.VideoWriter = real_render, real_writer

        return run

    def explain() -> None:
        cv2.setNumThreads(1)
        try:
            for _ in video.explain_video(ex, clip, "gradcam", batch_size=batch):
                pass
        finally:
            cv2.setNumThreads(threads)

    runs = {
        "explain_video": explain,
        "writer thread, nothing drawn or encoded": write(False, False),
        "drawing only": write(True, False),
        "encoding only": write(False, True),
        "write_video": write(True, True),
    }
    cpu: dict[str, list[float]] = {}
    timed = {k: cpu_timed(v, cpu.setdefault(k, [])) for k, v in runs.items()}
    n = sum(1 for _ in video.explain_video(ex, clip, "gradcam", batch_size=batch))
    times = interleaved(timed, repeats=repeats, warmup=1)
    return [
        {
            "variant": k,
            "fps": n / float(np.median(times[k])),
            "cpu_ms": 1000 * float(np.median(cpu[k][1:])) / n,
        }
        for k in runs
    ]


def main() -> None:
    ap = arguments(__doc__, 7, "mobilenet_v3_small,lite0", "8")
    ap.add_argument("--out", default="video", help="results/<out>.json")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="Also time write_video with drawing and/or encoding left out (first model, "
        "shapes clip).",
    )
    ap.add_argument(
        "--example",
        default=None,
        help="Also write an image of three frames of the last model's photos video (docs/).",
    )
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    torch.set_num_threads(2)
    from onnxcam.engine import Explainer

    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clips = {"shapes": shapes_clip(tmp / "shapes.mp4"), "photos": photos_clip(tmp / "p.mp4")}
        built = models(args.models.split(","), tmp)
        for name, (plain_bytes, cam_path) in built.items():
            opts = session_options()
            opts.intra_op_num_threads = 2
            sess = ort.InferenceSession(plain_bytes, opts, providers=["CPUExecutionProvider"])
            ex = Explainer(cam_path, session_options=opts)
            spec = ex.info.input
            for clip_name, clip in clips.items():
                for batch in map(int, args.batches.split(",")):
                    n = plain_pass(sess, spec, clip, batch)
                    cpu: dict[str, list[float]] = {}
                    runs = {
                        k: cpu_timed(v, cpu.setdefault(k, []))
                        for k, v in variants(sess, ex, clip, batch, tmp / "out.mp4").items()
                    }
                    times = interleaved(runs, repeats=args.repeats, warmup=1)
                    fps = {k: n / float(np.median(v)) for k, v in times.items()}
                    cpu_ms = {k: 1000 * float(np.median(v[1:])) / n for k, v in cpu.items()}
                    best = max(("plain", "plain_cv1"), key=fps.__getitem__)
                    fps["plain"], cpu_ms["plain"] = fps[best], cpu_ms[best]  # the faster one
                    row = {
                        "model": name,
                        "clip": clip_name,
                        "frames": n,
                        "batch": batch,
                        "baseline": "cv2 1 thread" if best == "plain_cv1" else "cv2 default",
                        "plain_fps": fps["plain"],
                        "explain_fps": fps["explain"],
                        "write_fps": fps["write"],
                        "explain_vs_plain": fps["explain"] / fps["plain"],
                        "write_vs_plain": fps["write"] / fps["plain"],
                        "plain_cpu_ms": cpu_ms["plain"],
                        "explain_cpu_ms": cpu_ms["explain"],
                        "write_cpu_ms": cpu_ms["write"],
                        "cpu_plain_vs_write": cpu_ms["plain"] / cpu_ms["write"],
                        "load": os.getloadavg()[0],
                    }
                    rows.append(row)
                    print(
                        f"{name} {clip_name} b{batch}: plain {fps['plain']:.1f} fps, explain "
                        f"{fps['explain']:.1f} ({row['explain_vs_plain']:.2f}x), write "
                        f"{fps['write']:.1f} ({row['write_vs_plain']:.2f}x); CPU ms/frame "
                        + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ms.items())
                        + f" (baseline: {row['baseline']})"
                        + f"; load {row['load']:.1f}",
                        flush=True,
                    )
                    prof = profile(ex, sess, clip, batch, tmp / "prof.mp4")
                    profiles.append({"model": name, "clip": clip_name, "batch": batch, **prof})
                    print(
                        "  profile ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in prof.items())
                    )
        if args.example:
            example(ex, clips["photos"], Path(args.example))
        if args.breakdown:
            first = next(iter(built.values()))[1]
            opts = session_options()
            opts.intra_op_num_threads = 2
            ex = Explainer(first, session_options=opts)
            batch = int(args.batches.split(",")[0])
            parts = breakdown(ex, clips["shapes"], batch, tmp / "b.mp4", args.repeats)
            print(
                markdown_table(
                    parts, [("variant", "variant"), ("fps", "fps"), ("cpu_ms", "CPU ms/frame")]
                )
            )
    cols = [
        ("model", "model"),
        ("clip", "clip"),
        ("frames", "frames"),
        ("batch", "batch"),
        ("plain_fps", "plain ORT fps (decode+preprocess+infer)"),
        ("explain_fps", "onnxcam fps, no writing"),
        ("explain_vs_plain", "ratio"),
        ("write_fps", "onnxcam fps, overlay video written"),
        ("write_vs_plain", "ratio"),
        ("plain_cpu_ms", "plain CPU ms/frame"),
        ("write_cpu_ms", "onnxcam written CPU ms/frame"),
        ("cpu_plain_vs_write", "CPU ratio"),
    ]
    print(markdown_table(rows, cols))
    pcols = [("model", "model"), ("clip", "clip"), ("batch", "batch")] + [
        (k, f"{k} ms") for k in profiles[0] if k not in ("model", "clip", "batch")
    ]
    print(markdown_table(profiles, pcols))
    extra = {"repeats": args.repeats, "models": args.models, "profile_ms_per_frame": profiles}
    if args.breakdown:
        extra["breakdown"] = parts
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
