"""Video: explain every frame of a clip or a camera and write an overlay video.

Three threads with bounded queues, so decoding, inference and encoding overlap::

    reader thread          main thread                      writer thread
    cv2.VideoCapture ──►  Explainer.explain_tensor  ──►  overlay + label ──► cv2.VideoWriter
    + preprocess (batch)   (+ EMA of the maps)              (in frame order)

``explain_video`` is the first two (a generator of ``VideoFrame``: the Python API),
``write_video`` adds the writer, ``run_videos`` is ``onnxcam run`` for video inputs. The maps
are the ones ``Explainer.explain`` gives for each frame alone (batching does not change them);
the in-graph maps are used when the model was exported with ``--heatmaps`` for the method.
Ctrl-C stops reading, lets the writer finish the frames already explained and releases the
file, so it stays playable; ``interrupted`` is set on the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import image as _image  # (also silences OpenCV's own log)
from .engine import Explainer
from .errors import ImageError, MethodError, OnnxcamError
from .postprocess import COLORMAPS, normalize
from .results import CamMap, Failure, Prediction
from .targets import TargetRequest

# FFmpeg prints its own errors ("moov atom not found") on stderr when OpenCV opens a broken
# file; onnxcam reports unreadable videos itself, on one line. OpenCV reads this variable when
# it first loads FFmpeg (the first VideoCapture/VideoWriter), so setting it here is in time.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
    ".ts", ".mts", ".gif",
}  # fmt: skip
"""Input files read as videos (``cv2.VideoCapture``, FFmpeg); a GIF is a video here."""
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
"""Output container (suffix) → FourCC of ``cv2.VideoWriter``."""
DEFAULT_FPS = 25.0
"""The frame rate written when the source does not say (some cameras, some streams)."""
_CAMERA = re.compile(r"^cam(?:era)?:(\d+)$")

Source = str | os.PathLike | int
"""A video file, or a camera index (``cam:0`` on the command line)."""
Progress = Callable[[int, int], None]
"""progress(done, total): ``done`` more frames of ``total`` (0: unknown) finished."""


class VideoError(ImageError):
    """A video input cannot be opened or decoded, or an output cannot be written."""


# -- inputs ----------------------------------------------------------------------------------
def camera_index(source: Source) -> int | None:
    """``cam:N`` / ``camera:N`` (or an int) → the camera index N; None for anything else."""
    if isinstance(source, int):
        return source
    m = _CAMERA.match(str(source))
    return int(m.group(1)) if m else None


def is_video(source: Source) -> bool:
    """A camera, or a file whose suffix is a video container's."""
    return camera_index(source) is not None or Path(source).suffix.lower() in VIDEO_SUFFIXES


def split_inputs(
    paths: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[Source], list[Path]]:
    """(videos, the other inputs): videos and cameras given directly, plus the video files
    inside given folders (sorted; the folders themselves stay in the others for their
    images)."""
    videos: list[Source] = []
    others: list[Path] = []
    for p in paths:
        cam = camera_index(p)
        if cam is not None:
            videos.append(cam)
            continue
        path = Path(p)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = [f for f in path.glob(pattern) if f.is_file() and is_video(f)]
            videos.extend(sorted(found))
            others.append(path)
        elif is_video(path):
            videos.append(path)
        else:
            others.append(path)
    return videos, others


def source_name(source: Source) -> str:
    cam = camera_index(source)
    return f"cam:{cam}" if cam is not None else str(source)


class VideoClip:
    """An open ``cv2.VideoCapture`` whose first frame was decoded (so a broken file fails
    here, in one line, before anything is written). Frame size, frame rate and frame count
    (None when the container or camera does not say) are known from then on."""

    def __init__(self, source: Source) -> None:
        self.name = source_name(source)
        cam = camera_index(source)
        if cam is None:
            p = Path(source)
            if not p.is_file():
                raise VideoError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
            self.capture = cv2.VideoCapture(str(p))
        else:
            self.capture = cv2.VideoCapture(cam)
        self.camera = cam is not None
        if not self.capture.isOpened():
            what = "camera cannot be opened" if self.camera else "not a readable video"
            raise VideoError(f"{self.name}: {what}")
        ok, first = self.capture.read()
        if not ok or first is None or first.size == 0:
            self.capture.release()
            raise VideoError(f"{self.name}: no decodable frame (corrupt or empty video)")
        self._first: np.ndarray | None = first
        self.height, self.width = first.shape[:2]
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps_known = math.isfinite(fps) and 0 < fps <= 1000
        self.fps = float(fps) if self.fps_known else DEFAULT_FPS
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frames: int | None = count if count > 0 and not self.camera else None

    def read(self) -> np.ndarray | None:
        """The next frame (BGR uint8, as decoded), None at the end."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self.capture.read()
        return frame if ok and frame is not None else None

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> VideoClip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- results ---------------------------------------------------------------------------------
@dataclass
class VideoFrame:
    """One explained frame: the decoded frame, the predictions, and each method's map
    (smoothed over time with ``smooth_time``; ``CamMap.original`` is at the frame's size)."""

    index: int
    bgr: np.ndarray
    """The frame as decoded (BGR uint8)."""
    predictions: list[Prediction]
    target: Prediction
    """The class that was explained."""
    maps: dict[str, CamMap]
    inference_seconds: float = 0.0

    def overlay(self, method: str, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
        """``method``'s map blended over the frame (BGR uint8, the frame's size)."""
        return overlay_bgr(self.bgr, self.maps[method].feature, alpha, colormap)


class _Ema:
    """The exponential moving average of each map over a clip's frames, at the resolution
    the maps come in (feature resolution; an in-graph map's own): s₀ = m₀,
    sₜ = α·sₜ₋₁ + (1 − α)·mₜ, returned min-max normalised (as every map is)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)
        self.state: dict[str, np.ndarray] = {}

    def __call__(self, key: str, m: np.ndarray) -> np.ndarray:
        prev = self.state.get(key)
        s = m.astype(np.float32) if prev is None else self.alpha * prev + (1 - self.alpha) * m
        self.state[key] = s
        return normalize(s)


# -- the pipeline ----------------------------------------------------------------------------
_END = object()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first (a bounded queue blocks the producer)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _reader(
    clip: VideoClip,
    spec: Any,
    batch_size: int,
    max_frames: int | None,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """The reader thread: decode frames, preprocess them in batches, queue (frames, x)."""
    try:
        n = 0
        frames: list[np.ndarray] = []
        while not stop.is_set() and (max_frames is None or n < max_frames):
            f = clip.read()
            if f is None:
                break
            frames.append(f)
            n += 1
            if len(frames) == batch_size:
                if not _put(out, (frames, _preprocess(frames, spec)), stop):
                    return
                frames = []
        if frames:
            _put(out, (frames, _preprocess(frames, spec)), stop)
    except BaseException as e:  # handed to the main thread, raised there
        _put(out, e, stop)
    finally:
        _put(out, _END, stop)


def _preprocess(frames: list[np.ndarray], spec: Any) -> np.ndarray:
    """BGR uint8 frames → the model's input batch, exactly as ``Explainer.explain`` prepares
    an RGB array (float 0–255, then ``image.preprocess``)."""
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(np.float32) for f in frames]
    return _image.preprocess(rgb, spec)


def explain_video(
    explainer: Explainer,
    source: Source | VideoClip,
    methods: str | Sequence[str] = "gradcam",
    *,
    batch_size: int = 8,
    smooth_time: float = 0.0,
    max_frames: int | None = None,
    **options: Any,
) -> Iterator[VideoFrame]:
    """Explain each frame of a video file or camera, in batches of ``batch_size`` frames read
    and preprocessed by a reader thread while the previous batch runs.

    ``smooth_time`` α ∈ [0, 1): each map is the exponential moving average sₜ = α·sₜ₋₁ +
    (1 − α)·mₜ of the clip's maps so far (0: none; the state starts with each call, so two
    clips never mix). ``options``: ``Explainer.explain_tensor``'s (``classes``, ``targets``,
    ``layers``, ``fuse``, ``perturbation``, …). Close the generator (or finish it) to stop the
    reader and release the capture.
    """
    if not 0 <= smooth_time < 1:
        raise MethodError(f"smooth_time must be in [0, 1), got {smooth_time}")
    if batch_size < 1:
        raise MethodError("batch_size must be at least 1")
    if options.get("topk", 1) != 1:
        raise MethodError("a video explains one class per frame: topk must be 1")
    if explainer.info.task == "detect":
        raise MethodError("videos are explained with classifiers; this model is a detector")
    clip = source if isinstance(source, VideoClip) else VideoClip(source)
    own = clip is not source
    ema = _Ema(smooth_time) if smooth_time > 0 else None
    size = (clip.height, clip.width)
    batches: queue.Queue = queue.Queue(maxsize=1)  # the next batch waits while one runs
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader,
        args=(clip, explainer.info.input, batch_size, max_frames, batches, stop),
        name="onnxcam-video-reader",
        daemon=True,
    )
    reader.start()
    index = 0
    try:
        while True:
            item = batches.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            frames, x = item
            results = explainer.explain_tensor(x, methods, **options)
            for bgr, r in zip(frames, results, strict=True):
                maps = {}
                for key, cam in r.maps.items():
                    feat = cam.feature if ema is None else ema(key, cam.feature)
                    maps[key] = dataclasses.replace(cam, feature=feat, original_size=size)
                yield VideoFrame(index, bgr, r.predictions, r.target, maps, r.inference_seconds)
                index += 1
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a reader waiting on a full queue
                batches.get_nowait()
        reader.join()
        if own:
            clip.close()


# -- writing ---------------------------------------------------------------------------------
def overlay_bgr(bgr: np.ndarray, cam: np.ndarray, alpha: float, colormap: str) -> np.ndarray:
    """``postprocess.overlay`` of a map at any resolution on a BGR uint8 frame, in OpenCV's
    uint8 ops: the map is resized to the frame (bilinear) and min-max scaled to 0–255 in one
    pass (as ``CamMap.original``), colorized and blended (equal within one grey level)."""
    h, w = bgr.shape[:2]
    m = np.asarray(cam, dtype=np.float32)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi, _, _ = cv2.minMaxLoc(m)
    if hi > lo:
        u8 = cv2.convertScaleAbs(m, alpha=255.0 / (hi - lo), beta=-255.0 * lo / (hi - lo))
    else:  # a constant map shows as zeros (``postprocess.normalize``)
        u8 = np.zeros((h, w), np.uint8)
    # cv2.applyColorMap's colours, looked up as one packed 32-bit word per pixel (2-3x faster)
    bgra = np.take(_colormap_lut(colormap), u8).view(np.uint8).reshape(h, w, 4)
    heat = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    return cv2.addWeighted(bgr, 1.0 - alpha, heat, alpha, 0.0)


@functools.cache
def _colormap_lut(colormap: str) -> np.ndarray:
    """The OpenCV colormap as 256 little-endian words B | G << 8 | R << 16."""
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS[colormap])
    b, g, r = (bgr[:, 0, k].astype("<u4") for k in range(3))
    return b | (g << 8) | (r << 16)


def _caption(img: np.ndarray, text: str, bottom: bool = False) -> None:
    """Burn ``text`` into ``img`` (in place): white on a dark box, scaled with the frame."""
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 500)
    thick = max(1, round(scale * 1.6))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    pad = max(2, round(4 * scale))
    y0 = h - th - base - 2 * pad if bottom else 0
    cv2.rectangle(img, (0, y0), (min(w, tw + 2 * pad), y0 + th + base + 2 * pad), (0, 0, 0), -1)
    org = (pad, y0 + pad + th)
    cv2.putText(img, text, org, font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the tiled layout of ``n`` maps: as square as possible, wider first."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def render(frame: VideoFrame, keys: Sequence[str], alpha: float, colormap: str) -> np.ndarray:
    """The output frame: the overlay of the one map, or a grid of tiles (one per map, its
    method in the corner), each with the label and probability burnt in."""
    text = f"{frame.target.label} {frame.target.probability:.2f}"
    tiles = []
    for key in keys:
        tile = frame.overlay(key, alpha, colormap)
        _caption(tile, text)
        if len(keys) > 1:
            _caption(tile, key, bottom=True)
        tiles.append(tile)
    if len(tiles) == 1:
        return tiles[0]
    rows, cols = grid_shape(len(tiles))
    tiles += [np.zeros_like(tiles[0])] * (rows * cols - len(tiles))
    return np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])


def _part_path(output: Path) -> Path:
    """Where a video is written until it is complete (same suffix: it picks the container)."""
    return output.with_name(f".{output.stem}.part{output.suffix}")


@dataclass
class VideoResult:
    """What ``write_video`` did for one source."""

    source: str
    output: Path
    frames: int = 0
    """Frames written (each explained), the output's frame count."""
    size: tuple[int, int] = (0, 0)
    """Input frame (width, height)."""
    fps_in: float = 0.0
    seconds: float = 0.0
    """Wall time from the first frame read to the file released."""
    interrupted: bool = False
    maps: dict[str, str] = field(default_factory=dict)
    """method → ``graph`` (in-graph heatmap) or ``host``."""
    per_frame: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "video": self.source,
            "output": str(self.output),
            "frames": self.frames,
            "size": list(self.size),
            "fps_in": round(self.fps_in, 3),
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "maps": self.maps,
            "interrupted": self.interrupted,
            "notes": self.notes,
            "per_frame": self.per_frame,
        }


def _writer(
    writer: cv2.VideoWriter,
    frames: queue.Queue,
    keys: list[str],
    alpha: float,
    colormap: str,
    done: list,
    npy: dict[str, list[np.ndarray]] | None,
) -> None:
    """The writer thread: render and encode each frame in order; ``done`` collects the count
    and an error, if any. The writer is released here, whatever happens."""
    try:
        while True:
            f = frames.get()
            if f is _END:
                break
            writer.write(render(f, keys, alpha, colormap))
            done[0] += 1
            if npy is not None:
                for k in keys:
                    npy[k].append(f.maps[k].input)
    except BaseException as e:
        done[1] = e
        with contextlib.suppress(queue.Empty):  # unblock the main thread
            while True:
                frames.get_nowait()
    finally:
        writer.release()


def write_video(
    explainer: Explainer,
    source: Source | VideoClip,
    output: str | os.PathLike,
    methods: str | Sequence[str] = "gradcam",
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    batch_size: int = 8,
    smooth_time: float = 0.0,
    max_frames: int | None = None,
    save_npy: bool = False,
    progress: Progress | None = None,
    on_frame: Callable[[VideoFrame], None] | None = None,
    **options: Any,
) -> VideoResult:
    """Explain a video and write the overlay video to ``output`` (``.mp4``/``.mov``/``.m4v``:
    mp4v, ``.avi``/``.mkv``: MJPG), same frame rate and size as the input (several maps: a
    grid of tiles). ``save_npy``: also ``<output stem>_<map>.npy``, the maps [frames, H, W]
    at the model-input size. ``on_frame`` is called with each explained frame. Ctrl-C
    (``KeyboardInterrupt``) ends the file cleanly: the result has ``interrupted`` set.

    The file is written under a hidden ``.part`` name and renamed when complete (interrupted
    runs included), so the final name never holds a broken video. OpenCV's thread pool is set
    to one thread for the duration of the call (``cv2.setNumThreads``, process-wide).
    """
    output = Path(output)
    fourcc = CODECS.get(output.suffix.lower())
    if fourcc is None:
        raise VideoError(
            f"{output}: unsupported output video format; use {', '.join(sorted(CODECS))}"
        )
    if colormap not in COLORMAPS:
        raise OnnxcamError(
            f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}"
        )
    clip = source if isinstance(source, VideoClip) else VideoClip(source)
    threads = cv2.getNumThreads()
    # OpenCV's own pool: its workers spin after each call and take the cores onnxruntime
    # needs; the pipeline's threads already keep the cores busy (0.3-0.7 ms CPU/frame saved)
    cv2.setNumThreads(1)
    try:
        return _write(
            explainer, clip, output, fourcc, methods, alpha, colormap, batch_size, smooth_time,
            max_frames, save_npy, progress, on_frame, options,
        )  # fmt: skip
    finally:
        cv2.setNumThreads(threads)
        if clip is not source:
            clip.close()


def _write(
    explainer: Explainer,
    clip: VideoClip,
    output: Path,
    fourcc: str,
    methods: str | Sequence[str],
    alpha: float,
    colormap: str,
    batch_size: int,
    smooth_time: float,
    max_frames: int | None,
    save_npy: bool,
    progress: Progress | None,
    on_frame: Callable[[VideoFrame], None] | None,
    options: dict[str, Any],
) -> VideoResult:
    plan = explainer.plan(methods, _plan_options(options))
    keys = _map_keys(plan)
    res = VideoResult(clip.name, output, size=(clip.width, clip.height), fps_in=clip.fps)
    res.maps = {c.name: "graph" if c.graph else "host" for c in plan.calls}
    if not clip.fps_known:
        res.notes.append(f"{clip.name}: no frame rate given; written at {DEFAULT_FPS:g} fps")
    rows, cols = grid_shape(len(keys))
    part = _part_path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create {output.parent}: {e.strerror}") from None
    writer = cv2.VideoWriter(
        str(part),
        cv2.VideoWriter_fourcc(*fourcc),
        clip.fps,
        (cols * clip.width, rows * clip.height),
    )
    if not writer.isOpened():
        part.unlink(missing_ok=True)
        raise VideoError(f"{output}: OpenCV cannot write a {fourcc} video there")
    total = clip.frames if max_frames is None else min(clip.frames or max_frames, max_frames)
    npy: dict[str, list[np.ndarray]] | None = {k: [] for k in keys} if save_npy else None
    frames: queue.Queue = queue.Queue(maxsize=batch_size)
    done: list = [0, None]
    thread = threading.Thread(
        target=_writer,
        args=(writer, frames, keys, alpha, colormap, done, npy),
        name="onnxcam-video-writer",
    )
    t0 = time.perf_counter()
    thread.start()
    completed = False
    try:
        if progress:
            progress(0, total or 0)
        stream = explain_video(
            explainer, clip, methods, batch_size=batch_size, smooth_time=smooth_time,
            max_frames=max_frames, **options,
        )  # fmt: skip
        with contextlib.closing(stream):
            for f in stream:
                while thread.is_alive():
                    try:
                        frames.put(f, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done[1] is not None:
                    break
                res.per_frame.append(_row(f))
                if progress:
                    progress(1, total or 0)
                if on_frame:
                    on_frame(f)
        completed = True
    except KeyboardInterrupt:
        res.interrupted = True
    finally:
        while thread.is_alive():  # the frames already explained, then the file is released
            try:
                frames.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        while thread.is_alive():  # a second Ctrl-C: the writer has at most a batch left
            try:
                thread.join()
            except KeyboardInterrupt:
                res.interrupted = True
        res.seconds = time.perf_counter() - t0
        res.frames = done[0]
        del res.per_frame[res.frames :]
        if (completed or res.interrupted) and done[1] is None and res.frames:
            os.replace(part, output)
        else:
            part.unlink(missing_ok=True)
    if done[1] is not None:
        e = done[1]
        raise VideoError(f"{output}: writing failed ({type(e).__name__}: {e})") from None
    if not res.frames and not res.interrupted:
        raise VideoError(f"{clip.name}: no frame could be explained")
    if not res.interrupted and clip.frames and max_frames is None and res.frames < clip.frames - 1:
        res.notes.append(
            f"{clip.name}: {res.frames} of the {clip.frames} frames the file announces were "
            "decodable (truncated or corrupt file?)"
        )
    if npy is not None and res.frames:
        for k, maps in npy.items():
            np.save(output.with_name(f"{output.stem}_{_slug(k)}.npy"), np.stack(maps))
    return res


def _plan_options(options: dict[str, Any]):
    """The ``ExplainOptions`` part of ``explain_tensor``'s keyword options."""
    from .plan import ExplainOptions

    names = {f.name for f in dataclasses.fields(ExplainOptions)}
    return ExplainOptions(**{k: v for k, v in options.items() if k in names})


def _map_keys(plan) -> list[str]:
    """The keys of a frame's maps (``Explainer._maps``'s naming: ``method`` or
    ``method@layer`` when several layers are not fused)."""
    keys = []
    for c in plan.calls:
        layers = [plan.targets[k] for k in c.layers]
        if len(layers) == 1 or plan.options.fuse:
            keys.append(c.name)
        else:
            keys += [f"{c.name}@{t.name}" for t in layers]
    return keys


def _row(f: VideoFrame) -> dict:
    return {
        "frame": f.index,
        "class": f.target.index,
        "label": f.target.label,
        "probability": round(f.target.probability, 5),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:60] or "x"


# -- `onnxcam run` on videos -------------------------------------------------------------------
@dataclass
class VideosResult:
    """What ``run_videos`` did: one ``VideoResult`` per video written, the failures."""

    model: str
    provider: str
    videos: list[VideoResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def to_json(self) -> list[dict]:
        return [v.to_json() for v in self.videos]


def output_path(source: Source, output: Path, methods: Sequence[str], single: bool) -> Path:
    """Where a source's video goes: ``output`` itself when it names a video file (one source),
    else ``output/<stem>_<methods>.mp4`` (``.avi`` for an AVI source)."""
    if output.suffix.lower() in CODECS:
        if not single:
            raise OnnxcamError(
                f"-o {output} names one video file; give a folder for several inputs"
            )
        return output
    cam = camera_index(source)
    stem = f"cam{cam}" if cam is not None else Path(source).stem
    suffix = ".avi" if cam is None and Path(source).suffix.lower() == ".avi" else ".mp4"
    return output / f"{_slug(stem)}_{'_'.join(_slug(m) for m in methods)}{suffix}"


def _session_options():
    """onnxruntime options for the video pipeline: idle workers sleep instead of spinning, so
    the reader and writer threads get the cores between runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _no_bar(name: str) -> AbstractContextManager[Progress]:
    return contextlib.nullcontext(lambda done, total: None)


def run_videos(
    model: str | os.PathLike | bytes,
    sources: Sequence[Source],
    *,
    output: Path,
    methods: str | Sequence[str] = "gradcam",
    target: TargetRequest | int | str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    smooth_time: float = 0.0,
    max_frames: int | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    save_npy: bool = False,
    note: Callable[[str], None] = lambda text: None,
    on_failure: Callable[[Failure], None] = lambda f: None,
    progress: Callable[[str], AbstractContextManager[Progress]] = _no_bar,
    **options: Any,
) -> VideosResult:
    """Explain each video (or camera) with one session; write one overlay video per source
    (``output_path``). A source that cannot be read is a ``Failure`` and the others go on;
    Ctrl-C finishes the current file and stops (``interrupted``). ``progress(name)`` gives a
    context manager: the progress callback of that source. ``target``: a class (index or
    name) or a ``TargetRequest`` (the command line's target flags); ``options``:
    ``explain_tensor``'s (``layers``, ``fuse``, ``perturbation``, …)."""
    t0 = time.perf_counter()
    explainer = Explainer(model, device=device, session_options=_session_options())
    for text in explainer.notes:
        note(text)
    request = target if isinstance(target, TargetRequest) else TargetRequest(cls=target)
    chosen = request.build(explainer)
    options = {**options, "targets": chosen, "classes": None if chosen else request.cls}
    plan = explainer.plan(methods, _plan_options(options))  # checks them before any file
    res = VideosResult(str(model), explainer.provider)
    names = [c.name for c in plan.calls]
    outs = [output_path(s, output, names, len(sources) == 1) for s in sources]
    for src, out in zip(sources, outs, strict=True):
        try:
            clip = VideoClip(src)
        except VideoError as e:
            f = Failure(source_name(src), str(e))
            res.failures.append(f)
            on_failure(f)
            continue
        try:
            with clip, progress(clip.name) as bar:
                v = write_video(
                    explainer, clip, out, methods, alpha=alpha, colormap=colormap,
                    batch_size=batch_size, smooth_time=smooth_time, max_frames=max_frames,
                    save_npy=save_npy, progress=bar, **options,
                )  # fmt: skip
        except VideoError as e:
            f = Failure(clip.name, str(e))
            res.failures.append(f)
            on_failure(f)
            continue
        for text in v.notes:
            note(text)
        res.videos.append(v)
        if v.interrupted:
            res.interrupted = True
            break
    res.seconds = time.perf_counter() - t0
    return res
