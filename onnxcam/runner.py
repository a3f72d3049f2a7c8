"""What ``onnxcam run``, ``report`` and ``eval`` do, as functions: explain files and folders,
write overlays, a report or metrics, and return what happened.

No click and no printing here: the caller passes callbacks (``note``, ``on_failure``, ``progress``,
``method_progress``) and gets a result back; ``cli.py`` does the echoing and the exit codes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np

from .detection import DetectionResult
from .engine import Explainer, Explanation, Failure
from .errors import OnnxcamError
from .image import list_images
from .localize import boxes_from_map, draw_boxes
from .perturbation import PerturbationOptions
from .postprocess import COLORMAPS, overlay
from .targets import TargetRequest

if TYPE_CHECKING:
    from .evaluate import EvalOptions, EvalResult
    from .sanity import SanityResult

Note = Callable[[str], None]
"""note(text): something the user should know (e.g. a fallback to the CPU)."""
MethodProgress = Callable[[int, int, str], None]
"""method_progress(done, total, label): perturbed inputs scored by a long method."""
ImagesProgress = Callable[[int, int], None]
"""progress(done, total): ``done`` more of ``total`` images finished (first call: ``done=0``)."""


def _ignore(*_: Any) -> None:
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:60] or "x"


def _layer_selection(layer: int | str | None) -> int | str | None:
    """'2' → 2, 'all' and names as they are (the ``--layer`` value of the commands)."""
    if isinstance(layer, str) and layer.isdigit():
        return int(layer)
    return layer


def _images(images: Sequence[str | os.PathLike], recursive: bool) -> list[Path]:
    files = list_images(images, recursive)
    if not files:
        raise OnnxcamError("no images found in " + ", ".join(map(str, images)))
    return files


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically: a partial file never carries the final name (an
    interrupted or killed run leaves only complete overlays)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OnnxcamError(f"cannot encode {path.name}")
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_bytes(buf.tobytes())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@dataclass
class RunResult:
    """What ``run_images`` did: one row per explanation, the images that failed, the time."""

    model: str
    provider: str
    out_dir: Path
    images: int
    """Images found (explained or failed)."""
    rows: list[dict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    """Ctrl-C stopped the run; ``rows`` are the explanations written before it."""

    def to_json(self) -> dict:
        """The document ``onnxcam run --json`` prints."""
        return {
            "model": self.model,
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
            "results": self.rows,
            "failures": [{"image": f.source, "error": f.error} for f in self.failures],
        }


def run_images(
    model: str | os.PathLike | bytes,
    images: Sequence[str | os.PathLike],
    *,
    methods: str | Sequence[str] = "gradcam",
    target: TargetRequest | int | str | None = None,
    topk: int = 1,
    out_dir: Path = Path("out"),
    device: str = "auto",
    layer: int | str | None = None,
    fuse: bool = False,
    alpha: float = 0.5,
    colormap: str = "jet",
    save_npy: bool = False,
    recursive: bool = False,
    perturbation: PerturbationOptions | None = None,
    box_threshold: float | None = None,
    save_tensors: bool = False,
    top: int = 10,
    conf: float = 0.25,
    iou: float = 0.45,
    scale_fusion: str = "max",
    sampling: dict[str, Any] | None = None,
    note: Note = _ignore,
    on_failure: Callable[[Failure], None] = _ignore,
    progress: ImagesProgress = _ignore,
    method_progress: MethodProgress | None = None,
) -> RunResult:
    """Explain every image; write ``<stem>[_<class>]_<method>.png`` to ``out_dir``.

    ``target``: a class (index or name), or a ``TargetRequest`` (``onnxcam run``'s target
    flags). A detector's images get ``<stem>_detections_<method>.png`` (every kept box over
    the fusion of their maps) and ``<stem>_det<j>-<label>_<method>.png`` per detection
    (``top``, ``conf``, ``iou``, ``scale_fusion``: ``Explainer.iter_detect``). ``sampling``:
    the sampled methods' options (``smooth_samples``, ``smooth_noise``, ``ig_steps``,
    ``ig_baseline``: ``ExplainOptions``).

    The batch size is ``perturbation.batch_size``. Ctrl-C stops after the files already written
    (they stay): the result comes back with ``interrupted`` set.
    """
    perturbation = perturbation or PerturbationOptions()
    if colormap not in COLORMAPS:
        raise OnnxcamError(
            f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}"
        )
    files = _images(images, recursive)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OnnxcamError(f"cannot create output directory {out_dir}: {e.strerror}") from None
    t_start = time.perf_counter()
    explainer = Explainer(model, device=device)
    for text in explainer.notes:
        note(text)
    res = RunResult(str(model), explainer.provider, out_dir, len(files))
    stems: dict = {}
    request = target if isinstance(target, TargetRequest) else TargetRequest(cls=target)
    if explainer.info.task == "detect":
        return _run_detections(
            explainer, files, methods, res, request, top, conf, iou, scale_fusion, alpha,
            colormap, perturbation.batch_size, on_failure, progress, t_start,
        )  # fmt: skip
    chosen = request.build(explainer)
    try:
        progress(0, len(files))
        stream = explainer.iter_explain(
            files,
            methods,
            classes=None if chosen is not None else request.cls,
            targets=chosen,
            topk=topk,
            layers=_layer_selection(layer),
            fuse=fuse,
            batch_size=perturbation.batch_size,
            progress=lambda n: progress(n, len(files)),
            perturbation=perturbation,
            method_progress=method_progress,
            keep_tensors=save_tensors,
            **(sampling or {}),
        )
        for r in stream:
            if isinstance(r, Failure):
                res.failures.append(r)
                on_failure(r)
                continue
            res.rows.append(
                _save(r, out_dir, stems, topk, alpha, colormap, save_npy, box_threshold)
            )
    except KeyboardInterrupt:
        res.interrupted = True
    res.seconds = time.perf_counter() - t_start
    return res


def _run_detections(
    explainer: Explainer,
    files: list[Path],
    methods: str | Sequence[str],
    res: RunResult,
    request: TargetRequest,
    top: int,
    conf: float,
    iou: float,
    fusion: str,
    alpha: float,
    colormap: str,
    batch_size: int,
    on_failure: Callable[[Failure], None],
    progress: ImagesProgress,
    t_start: float,
) -> RunResult:
    """``run_images`` for a detector: every image's kept detections, explained and drawn."""
    if request.given():
        raise OnnxcamError("a detector explains its detections: the target flags do not apply")

    try:
        progress(0, len(files))
        stream = explainer.iter_detect(
            files, methods, top=top, conf=conf, iou=iou, cls=request.cls, fuse=fusion,
            batch_size=batch_size, progress=lambda n: progress(n, len(files)),
        )  # fmt: skip
        for r in stream:
            if isinstance(r, Failure):
                res.failures.append(r)
                on_failure(r)
                continue
            if not r.detections:
                f = Failure(r.source, f"{r.source}: {r.note or 'no detection kept'}")
                res.failures.append(f)
                on_failure(f)
                continue
            res.rows.append(_save_detections(r, res.out_dir, alpha, colormap))
    except KeyboardInterrupt:
        res.interrupted = True
    res.seconds = time.perf_counter() - t_start
    return res


def _save_detections(r: DetectionResult, out_dir: Path, alpha: float, colormap: str) -> dict:
    """Write a detector image's overlays; its row of the results."""
    from .detection import draw

    base = _slug(Path(r.source).stem)
    rgb = np.clip(r.image, 0, 255).astype(np.uint8) if r.image is not None else None
    files: dict[str, str] = {}
    for m, cam in r.maps.items():
        png = draw(overlay(rgb, cam.original, alpha=alpha, colormap=colormap), r.detections)
        path = out_dir / f"{base}_detections_{_slug(m)}.png"
        _write_png(path, png)
        files[m] = str(path)
    rows = []
    for j, d in enumerate(r.detections):
        det_files = {}
        for m, cam in d.maps.items():
            png = draw(overlay(rgb, cam.original, alpha=alpha, colormap=colormap), [d])
            path = out_dir / f"{base}_det{j + 1}-{_slug(d.label)}_{_slug(m)}.png"
            _write_png(path, png)
            det_files[m] = str(path)
        rows.append(
            {
                "class": d.index,
                "label": d.label,
                "score": round(d.score, 5),
                "box": [round(v, 1) for v in d.box],
                "anchor": d.anchor,
                "overlays": det_files,
            }
        )
    return {
        "image": r.source,
        "detections": rows,
        "inference_ms": round(1000 * r.inference_seconds, 3),
        "overlays": files,
    }


def _save(
    r: Explanation,
    out_dir: Path,
    stems: dict,
    topk: int,
    alpha: float,
    colormap: str,
    save_npy: bool,
    box_threshold: float | None = None,
) -> dict:
    base = _slug(Path(r.source).stem)
    key = (r.source, r.target.index)
    if key not in stems:
        n = sum(1 for k in stems if _slug(Path(k[0]).stem) == base and k[0] != r.source)
        stems[key] = n
    if stems[key]:
        base = f"{base}-{stems[key]}"
    if topk > 1:
        base = f"{base}_{r.target.index}-{_slug(r.target.label)}"
    files = {}
    boxes = {}
    for name, t in r.tensors.items():  # --save-tensors: <stem>_onnxcam_activation_0.npy ...
        np.save(out_dir / f"{base}_{name}.npy", t)
    for name, m in r.maps.items():
        path = out_dir / f"{base}_{_slug(name)}.png"
        png = r.overlay(name, alpha=alpha, colormap=colormap)
        if box_threshold is not None:
            found = boxes_from_map(m.original, box_threshold)
            png = draw_boxes(png, found, thickness=max(2, round(max(png.shape[:2]) / 200)))
            boxes[name] = [b.as_list() for b in found]
        _write_png(path, png)
        files[name] = str(path)
        if save_npy:
            np.save(out_dir / f"{base}_{_slug(name)}.npy", m.input)
    return {
        "image": r.source,
        "class": r.target.index,
        "label": r.target.label,
        "probability": round(r.target.probability, 5),
        "score": round(r.target.logit, 5),
        "top5": [
            {"class": p.index, "label": p.label, "probability": round(p.probability, 5)}
            for p in r.predictions[:5]
        ],
        "methods_ms": {k: round(1000 * m.seconds, 3) for k, m in r.maps.items()},
        "inference_ms": round(1000 * r.inference_seconds, 3),
        "overlays": files,
        **({"boxes": boxes} if box_threshold is not None else {}),
        **(
            {"checks": {k: m.stats for k, m in r.maps.items() if m.stats}}
            if any(m.stats for m in r.maps.values())
            else {}
        ),
    }


def table(rows: list[dict]) -> str:
    """The plain-text table of ``run_images`` rows ('' for none)."""
    if not rows:
        return ""
    if "detections" in rows[0]:  # a detector: one line per image, its detections
        return "\n".join(
            f"{Path(r['image']).name}  {len(r['detections'])} detection(s): "
            + ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"][:8])
            + ("…" if len(r["detections"]) > 8 else "")
            for r in rows
        )
    w_img = min(max(len(Path(r["image"]).name) for r in rows), 40)
    w_cls = min(max(len(f"{r['class']} {r['label']}") for r in rows), 32)
    lines = [f"{'image':<{w_img}}  {'class':<{w_cls}}  {'prob':>6}  {'time ms':>8}  methods"]
    for r in rows:
        ms = r["inference_ms"] + sum(r["methods_ms"].values())
        cls = f"{r['class']} {r['label']}"[:w_cls]
        lines.append(
            f"{Path(r['image']).name[:w_img]:<{w_img}}  {cls:<{w_cls}}  "
            f"{r['probability']:>6.3f}  {ms:>8.1f}  {','.join(r['methods_ms'])}"
        )
    return "\n".join(lines)


class ReportResult(NamedTuple):
    """What ``report_images`` wrote: the HTML path, one result per image, the time."""

    path: Path
    results: list[Explanation | Failure]
    seconds: float

    @property
    def failures(self) -> list[Failure]:
        return [r for r in self.results if isinstance(r, Failure)]


def report_images(
    model: str | os.PathLike | bytes,
    images: Sequence[str | os.PathLike],
    out_html: Path,
    *,
    methods: str | Sequence[str] = "all",
    target: int | str | None = None,
    topk: int = 1,
    device: str = "auto",
    layer: int | str | None = None,
    perturbation: PerturbationOptions | None = None,
    per_page: int = 10,
    alpha: float = 0.5,
    colormap: str = "jet",
    recursive: bool = False,
    pngs_dir: Path | None = None,
    notes: Sequence[str] = (),
    method_progress: MethodProgress | None = None,
) -> ReportResult:
    """Explain images and write one self-contained HTML report (and optionally the PNGs).

    The batch size is ``perturbation.batch_size``. Broken images become error cards."""
    from .report import ReportInfo, write

    perturbation = perturbation or PerturbationOptions()
    files = _images(images, recursive)
    t0 = time.perf_counter()
    explainer = Explainer(model, device=device)
    layers = _layer_selection(layer)
    results = list(
        explainer.iter_explain(
            files,
            methods,
            classes=target,
            topk=topk,
            layers=layers,
            batch_size=perturbation.batch_size,
            perturbation=perturbation,
            method_progress=method_progress,
        )
    )
    stems: dict = {}
    if pngs_dir is not None:
        pngs_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            if not isinstance(r, Failure):
                _save(r, pngs_dir, stems, topk, alpha, colormap, False)
    seconds = time.perf_counter() - t0
    names = sorted({k for r in results if not isinstance(r, Failure) for k in r.maps})
    info = ReportInfo(
        model=Path(str(model)).name if not isinstance(model, bytes) else "model",
        layers=[t.name for t in explainer.layers(layers)],
        provider=explainer.provider,
        methods=names,
        seconds=seconds,
        notes=[*explainer.notes, *notes],
    )
    path = write(out_html, results, info, per_page=per_page, alpha=alpha, colormap=colormap)
    return ReportResult(path, results, seconds)


class EvalRun(NamedTuple):
    """What ``evaluate_folder`` computed and the files it wrote (csv, json, curves)."""

    result: EvalResult
    paths: dict[str, Path]


def evaluate_folder(
    model: str | os.PathLike | bytes,
    folder: Path,
    out_dir: Path,
    *,
    annotations: Path | None = None,
    methods: str | Sequence[str] = "all",
    options: EvalOptions | None = None,
    perturbation: PerturbationOptions | None = None,
    device: str = "auto",
    recursive: bool = False,
    progress: ImagesProgress = _ignore,
) -> EvalRun:
    """Faithfulness and localization metrics of ``methods`` over the images of ``folder``;
    writes metrics.csv, metrics.json and curves.png to ``out_dir``."""
    from .evaluate import evaluate, load_annotations, write_outputs
    from .methods import resolve_methods

    files = list_images([folder], recursive)
    if not files:
        raise OnnxcamError(f"no images found in {folder}")
    ann = load_annotations(annotations) if annotations else None
    explainer = Explainer(model, device=device)
    names = resolve_methods(methods, explainer.info.has_cam_weights)
    progress(0, len(files))
    result = evaluate(
        explainer,
        files,
        names,
        ann,
        options,
        perturbation,
        root=folder if folder.is_dir() else None,
        progress=lambda n: progress(n, len(files)),
    )
    return EvalRun(result, write_outputs(result, out_dir))


class SanityRun(NamedTuple):
    """What ``sanity_folder`` computed, the files it wrote and the images it could not read."""

    result: SanityResult
    paths: dict[str, Path]
    failures: list[Failure]


def sanity_folder(
    model: str | os.PathLike,
    folder: Path,
    out_dir: Path,
    *,
    methods: str | Sequence[str] = "all",
    steps: int = 8,
    seed: int = 0,
    source: str | os.PathLike | None = None,
    device: str = "auto",
    recursive: bool = False,
    batch_size: int = 32,
    progress: ImagesProgress = _ignore,
) -> SanityRun:
    """Adebayo et al.'s sanity checks (``onnxcam.sanity``) of ``methods`` over the images of
    ``folder``: cascading randomisation in ``steps`` steps and the random logit; writes
    sanity.json and sanity.png to ``out_dir``. ``progress(done, total)`` counts explain passes
    (the original model, each step, the random logit). Unreadable images are ``failures``."""
    from .image import read_image
    from .sanity import cascading_randomization, write_outputs

    files = list_images([folder], recursive)
    if not files:
        raise OnnxcamError(f"no images found in {folder}")
    images, failures = [], []
    for f in files:
        try:
            read_image(f)
            images.append(f)
        except OnnxcamError as e:
            failures.append(Failure(str(f), str(e)))
    if not images:
        raise OnnxcamError(f"no readable image in {folder}")
    result = cascading_randomization(
        model, images, methods, steps, seed,
        source=source, device=device, progress=progress, batch_size=batch_size,
    )  # fmt: skip
    return SanityRun(result, write_outputs(result, out_dir), failures)
