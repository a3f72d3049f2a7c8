"""What ``onnxcam run`` does, as a function: explain files/folders, write overlays, report.

Kept out of ``cli.py`` so the CLI stays a thin layer of options over this and the API.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np

from .engine import Explainer, Explanation, Failure
from .errors import OnnxcamError
from .image import list_images
from .localize import boxes_from_map, draw_boxes
from .postprocess import COLORMAPS


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:60] or "x"


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


class _MethodProgress:
    """One self-overwriting stderr line for long perturbation methods (terminals only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or total < 64:
            return
        end = "\r" + " " * 60 + "\r" if done >= total else ""
        click.echo(f"\r  {label}: {done}/{total} perturbed inputs scored{end}", nl=False, err=True)


def run_images(
    model,
    images,
    *,
    methods="gradcam",
    target=None,
    topk=1,
    out_dir=Path("out"),
    device="auto",
    batch_size=32,
    layer=None,
    fuse=False,
    alpha=0.5,
    colormap="jet",
    save_npy=False,
    recursive=False,
    as_json=False,
    perturbation=None,
    box_threshold=None,
    save_tensors=False,
) -> list[Failure]:
    """Explain every image; write ``<stem>[_<class>]_<method>.png``; return the failures.

    Ctrl-C stops after the files already written (they stay) and exits with code 130.
    """
    if colormap not in COLORMAPS:
        raise OnnxcamError(
            f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}"
        )
    files = list_images(images, recursive)
    if not files:
        raise OnnxcamError("no images found in " + ", ".join(map(str, images)))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OnnxcamError(f"cannot create output directory {out_dir}: {e.strerror}") from None
    t_start = time.perf_counter()
    explainer = Explainer(model, device=device)
    for note in explainer.notes:
        click.echo(f"note: {note}", err=True)
    layers = (
        None
        if layer is None
        else ("all" if layer == "all" else (int(layer) if layer.isdigit() else layer))
    )
    stems: dict[str, int] = {}
    rows, failures = [], []
    show_bar = len(files) > 1 and sys.stderr.isatty() and not as_json
    try:
        with click.progressbar(
            length=len(files), label="explaining", file=sys.stderr, hidden=not show_bar
        ) as bar:
            stream = explainer.iter_explain(
                files,
                methods,
                classes=target,
                topk=topk,
                layers=layers,
                fuse=fuse,
                batch_size=batch_size,
                progress=bar.update,
                perturbation=perturbation,
                method_progress=_MethodProgress(sys.stderr.isatty() and not as_json),
                keep_tensors=save_tensors,
            )
            for r in stream:
                if isinstance(r, Failure):
                    failures.append(r)
                    click.echo(f"error: {r.error}", err=True)
                    continue
                rows.append(
                    _save(r, out_dir, stems, topk, alpha, colormap, save_npy, box_threshold)
                )
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted: {len(rows)} explanation(s) written to {out_dir}.", err=True)
        raise click.exceptions.Exit(130) from None
    total = time.perf_counter() - t_start
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": str(model),
                    "provider": explainer.provider,
                    "seconds": round(total, 3),
                    "results": rows,
                    "failures": [{"image": f.source, "error": f.error} for f in failures],
                },
                indent=1,
            )
        )
    else:
        _table(rows)
        click.echo(
            f"{len(rows)} explanation(s) of {len(files) - len(failures)} image(s) in "
            f"{total:.1f}s on {explainer.provider}; overlays in {out_dir}"
            + (f"; {len(failures)} failed" if failures else "")
        )
    return failures


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
    }


def _table(rows: list[dict]) -> None:
    if not rows:
        return
    w_img = min(max(len(Path(r["image"]).name) for r in rows), 40)
    w_cls = min(max(len(f"{r['class']} {r['label']}") for r in rows), 32)
    click.echo(f"{'image':<{w_img}}  {'class':<{w_cls}}  {'prob':>6}  {'time ms':>8}  methods")
    for r in rows:
        ms = r["inference_ms"] + sum(r["methods_ms"].values())
        cls = f"{r['class']} {r['label']}"[:w_cls]
        click.echo(
            f"{Path(r['image']).name[:w_img]:<{w_img}}  {cls:<{w_cls}}  "
            f"{r['probability']:>6.3f}  {ms:>8.1f}  {','.join(r['methods_ms'])}"
        )


def report_images(
    model,
    images,
    out_html: Path,
    *,
    methods="all",
    target=None,
    topk=1,
    device="auto",
    batch_size=32,
    layer=None,
    perturbation=None,
    per_page=10,
    alpha=0.5,
    colormap="jet",
    recursive=False,
    pngs_dir: Path | None = None,
    notes=(),
) -> tuple[Path, list, float]:
    """Explain images and write one self-contained HTML report (and optionally the PNGs).

    Returns (report path, results, seconds). Broken images become error cards."""
    from .report import ReportInfo, write

    files = list_images(images, recursive)
    if not files:
        raise OnnxcamError("no images found in " + ", ".join(map(str, images)))
    t0 = time.perf_counter()
    explainer = Explainer(model, device=device)
    layers = (
        None
        if layer is None
        else ("all" if layer == "all" else (int(layer) if str(layer).isdigit() else layer))
    )
    progress = _MethodProgress(sys.stderr.isatty())
    results = list(
        explainer.iter_explain(
            files,
            methods,
            classes=target,
            topk=topk,
            layers=layers,
            batch_size=batch_size,
            perturbation=perturbation,
            method_progress=progress,
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
    return path, results, seconds
