"""``onnxcam eval``: faithfulness and localization of every method over a folder of images.

Annotations (optional) are one JSON file (docs/evaluation.md)::

    {"images": {"cat.jpg": {"class": 285, "boxes": [[x0, y0, x1, y1], ...]},
                "dog.png": {"class": "golden retriever", "mask": "masks/dog.png"}}}

Boxes are in the original image's pixels (x1/y1 exclusive); a mask path is relative to the
JSON file (non-zero = object). ``class`` (index or label) is the ground truth: it is explained
and used for top-1 localization accuracy. A ``random`` map is evaluated as a baseline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import metrics
from .errors import OnnxcamError
from .image import preprocess, read_image
from .localize import (
    box_iou_sweep,
    boxes_from_map,
    boxes_mask,
    energy_pointing,
    iou_boxes,
    max_box_acc,
    max_box_acc_v2,
    pixel_histograms,
    pointing_hit,
    pxap,
)
from .perturbation import PerturbationOptions
from .results import Failure
from .scoring import Scorer, image_rng

if TYPE_CHECKING:
    from .engine import Explainer, Explanation

RANDOM = "random"


@dataclass
class Annotation:
    cls: int | str | None = None
    boxes: list = field(default_factory=list)
    mask: np.ndarray | None = None

    def target(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The object as a boolean mask of the image's shape (None when not annotated)."""
        if self.mask is not None:
            m = self.mask
            if m.shape != shape:
                m = cv2.resize(
                    m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
                )
            return m.astype(bool)
        return boxes_mask(self.boxes, shape) if self.boxes else None


def load_annotations(path: str | os.PathLike) -> dict[str, Annotation]:
    """Parse the annotation JSON; keys are file names (or paths relative to the folder)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        images = doc.get("images", doc)
        out = {}
        for name, a in images.items():
            mask = None
            if a.get("mask"):
                mp = (p.parent / a["mask"]).resolve()
                m = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise OnnxcamError(f"{p}: cannot read mask {mp}")
                mask = m > 0
            boxes = []
            for b in a.get("boxes", []):
                if len(b) < 4:
                    raise OnnxcamError(
                        f"cannot read annotations {p}: {name}: a box needs 4 numbers "
                        "[x0, y0, x1, y1]"
                    )
                boxes.append([float(v) for v in b[:4]])
            out[name] = Annotation(a.get("class"), boxes, mask)
        return out
    except OnnxcamError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OnnxcamError(f"cannot read annotations {p}: {e}") from None


@dataclass
class EvalOptions:
    steps: int = 50
    baselines: tuple[str, ...] = ("zero", "blur")
    road: bool = True
    box_threshold: float = 0.2
    """The fixed threshold of mean IoU and top-1 loc. acc. (the CAM paper's 20% of the max);
    MaxBoxAcc/PxAP sweep every threshold instead."""
    pointing_tolerance: int = 15
    seed: int = 0
    batch_size: int = 32
    adcc: bool = False
    """Coherency and ADCC (Poppi et al.): one more explanation per image and method, of the
    input masked by the map."""
    arcc: bool = False
    """pytorch-grad-cam's ARCC: Coherency (as ``adcc``) and ``ROADCombined`` (8 imputations)."""
    sensitivity_samples: int = 0
    """Max-Sensitivity's noisy copies per image (0: off; Quantus uses 200), each re-explained."""
    sensitivity_radius: float = 0.2
    """Max-Sensitivity's noise: U(−r, r) per normalised input value (Quantus's default)."""
    ovx_steps: int = 0
    """OpenVINO XAI's insertion/deletion steps on the original image (0: off; theirs: 30)."""


@dataclass
class EvalResult:
    """Per image and method rows, per method means, mean curves."""

    rows: list[dict]
    summary: dict[str, dict]
    curves: dict[str, dict[str, list[float]]]
    failures: list[Failure]


def _key(ann: dict[str, Annotation], path: Path, root: Path | None) -> Annotation | None:
    for k in (
        str(path.relative_to(root)) if root and path.is_relative_to(root) else None,
        path.name,
        str(path),
    ):
        if k and k in ann:
            return ann[k]
    return None


def evaluate(
    explainer: Explainer,
    files: list[Path],
    methods: list[str],
    annotations: dict[str, Annotation] | None = None,
    options: EvalOptions | None = None,
    perturbation: PerturbationOptions | None = None,
    root: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``methods`` (and the random baseline) on every image of ``files``."""
    o = options or EvalOptions()
    info = explainer.info
    scorer = eval_scorer(explainer, o)
    rows, failures = [], []
    curves: dict[str, dict[str, list]] = {}
    sweeps: dict[str, Sweeps] = {}
    for path in files:
        ann = _key(annotations or {}, path, root)
        try:
            img = read_image(path)
            cls = None if ann is None or ann.cls is None else info.class_index(ann.cls)
            (r,) = explainer.explain([img], methods, classes=cls, perturbation=perturbation)
        except OnnxcamError as e:
            failures.append(Failure(str(path), str(e)))
            if progress:
                progress(1)
            continue
        x = preprocess([img], info.input)
        truth = None if ann is None or ann.cls is None else info.class_index(ann.cls)
        maps = eval_maps(r, x, (info.input.height, info.input.width), img.shape[:2], o.seed)
        grid = next(iter(r.maps.values())).feature.shape if r.maps else (7, 7)
        per_method = image_metrics(
            scorer, x, maps, r.target.index, ann, o, predicted=r.predictions[0].index,
            truth=truth, image=img,
            explain=reexplainer(explainer, perturbation, o.seed, grid, o.batch_size),
        )  # fmt: skip
        for m, got in per_method.items():
            row: dict = {"image": str(path), "method": m, "class": r.target.index}
            row["label"] = r.target.label
            rows.append({**row, **got.values})
            for k, scores in got.curves.items():
                curves.setdefault(m, {}).setdefault(k, []).append(scores)
            if got.pixels is not None:
                sweeps.setdefault(m, Sweeps()).extend(got.box_ious, got.pixels)
        if progress:
            progress(1)
    summary = summarize(rows)
    for m, sw in sweeps.items():
        summary[m].update(sw.summary())
    return EvalResult(rows, summary, _mean_curves(curves), failures)


def eval_scorer(explainer: Explainer, options: EvalOptions) -> Scorer:
    """The scorer the metrics perturb the input through (the explainer's session)."""
    return Scorer(
        lambda feeds, names: explainer.session.run(names, feeds), explainer.info, options.batch_size
    )


Reexplain = Callable[[str, np.ndarray, int], np.ndarray]
"""(method, model inputs [n, ...], class) → the method's maps [n, H, W] at the input size."""


def reexplainer(
    explainer: Explainer,
    perturbation: PerturbationOptions | None,
    seed: int,
    grid: tuple[int, int],
    batch_size: int = 32,
) -> Reexplain:
    """Explain preprocessed inputs again with the same session and options (Coherency's masked
    input, Max-Sensitivity's noisy copies); ``random`` is the random baseline of each input."""
    info = explainer.info
    shape = (info.input.height, info.input.width)

    def run(method: str, xs: np.ndarray, cls: int) -> np.ndarray:
        if method == RANDOM:
            return np.stack([metrics.random_map(shape, seed, xi[None], grid) for xi in xs])
        out = []
        for s in range(0, len(xs), batch_size):
            part = xs[s : s + batch_size]
            exps = explainer.explain_tensor(
                part, [method], classes=[cls] * len(part), perturbation=perturbation,
                batch_size=batch_size,
            )  # fmt: skip
            out += [e.maps[method].input for e in exps]
        return np.stack(out)

    return run


def eval_maps(
    r: Explanation,
    x: np.ndarray,
    input_shape: tuple[int, int],
    image_shape: tuple[int, int],
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An explanation's maps as (model input size, image size) pairs, and the ``random``
    baseline's (keyed by ``seed`` and the input ``x``, on the first map's feature grid)."""
    maps = {m: (r.maps[m].input, r.maps[m].original) for m in r.maps}
    grid = next(iter(r.maps.values())).feature.shape if r.maps else (7, 7)
    maps[RANDOM] = (
        metrics.random_map(input_shape, seed, x, grid),
        metrics.random_map(image_shape, seed, x, grid),
    )
    return maps


@dataclass
class ImageMetrics:
    """One image × method: the per-image metrics (``SUMMARY``'s keys that apply), the
    deletion/insertion curves, and the sweep data (``Sweeps``) when the image is annotated."""

    values: dict[str, float]
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    box_ious: np.ndarray | None = None
    """``box_iou_sweep``: [2, thresholds] (annotated with boxes)."""
    pixels: np.ndarray | None = None
    """``pixel_histograms``: [2, bins] (annotated with boxes or a mask)."""


def image_metrics(
    scorer: Scorer,
    x: np.ndarray,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    cls: int,
    annotation: Annotation | None = None,
    options: EvalOptions | None = None,
    *,
    predicted: int | None = None,
    truth: int | None = None,
    image: np.ndarray | None = None,
    explain: Reexplain | None = None,
) -> dict[str, ImageMetrics]:
    """Every per-image metric of ``onnxcam eval`` for one preprocessed input ``x`` ([1, ...])
    and its ``maps`` (method → (map at the model input size, map at the image size)) of class
    ``cls``. ``predicted``/``truth``: the top-1 and annotated classes (top-1 loc. acc.).
    ``image`` (the original, for OpenVINO XAI's insertion/deletion) and ``explain`` (for
    Coherency/ADCC/ARCC and Max-Sensitivity): the options' extra metrics need them and are
    skipped without them."""
    o = options or EvalOptions()
    layout = scorer.info.input.layout
    out = {}
    for m, (m_in, m_orig) in maps.items():
        row: dict = {}
        got = ImageMetrics(row)
        y, changed = metrics.confidence_change(scorer, x, m_in[None], np.array([cls]), layout)
        row["drop"] = float(max(0.0, y[0] - changed[0]) / (y[0] + 1e-7))
        row["increase"] = float(changed[0] > y[0])
        row["gain"] = metrics.average_gain(y, changed) / 100
        row["complexity"] = metrics.complexity_entropy(m_in)
        row["sparseness"] = metrics.sparseness_gini(m_in)
        row["complexity_l1"] = metrics.complexity_l1(m_in)
        if explain is not None and (o.adcc or o.arcc):
            masked = metrics.masked_input(x, m_in, layout)
            row["coherency"] = metrics.coherency(m_in, explain(m, masked, cls)[0])
            if o.adcc:
                row["adcc"] = metrics.adcc(row["coherency"], row["complexity_l1"], row["drop"])
            if o.arcc:
                rc = metrics.road_combined(scorer, x, m_in, cls, layout=layout, seed=o.seed)
                row["road_combined"] = rc
                row["arcc"] = metrics.arcc(row["coherency"], row["complexity_l1"], rc)
        if explain is not None and o.sensitivity_samples > 0:
            row["max_sensitivity"] = metrics.max_sensitivity(
                lambda xs, m=m: explain(m, xs, cls), x, m_in, o.sensitivity_radius,
                o.sensitivity_samples, image_rng(o.seed, x), o.batch_size,
            )  # fmt: skip
        if image is not None and o.ovx_steps > 0:
            ins, dele = metrics.ovx_insertion_deletion(
                scorer, image, m_orig, cls, scorer.info.input, o.ovx_steps, o.batch_size
            )
            row["ovx_insertion"], row["ovx_deletion"] = ins.auc, dele.auc
            got.curves["ovx_insertion"], got.curves["ovx_deletion"] = ins.scores, dele.scores
        for mode in ("deletion", "insertion"):
            for base in o.baselines:
                cv = metrics.deletion_insertion(
                    scorer, x, m_in, cls, mode, o.steps, base, layout, o.batch_size
                )
                row[f"{mode}_{base}"] = cv.auc
                got.curves[f"{mode}_{base}"] = cv.scores
        if o.road:
            for order in ("morf", "lerf"):
                rc = metrics.road(scorer, x, m_in, cls, order, layout=layout, seed=o.seed)
                row[f"road_{order}"] = float(rc.scores[1:].mean())
        target = annotation.target(m_orig.shape[:2]) if annotation else None
        if annotation is not None and target is not None:
            row["pointing"] = float(pointing_hit(m_orig, target, o.pointing_tolerance))
            row["energy_pointing"] = energy_pointing(m_orig, target)
            got.pixels = pixel_histograms(m_orig, target)
            if annotation.boxes:
                got.box_ious = box_iou_sweep(m_orig, annotation.boxes)
                pred = boxes_from_map(m_orig, o.box_threshold)
                best = (
                    max((iou_boxes(pred[0], g) for g in annotation.boxes), default=0.0)
                    if pred
                    else 0.0
                )
                row["iou"] = best
                correct = predicted == truth if truth is not None else True
                row["loc_acc"] = float(best >= 0.5 and correct)
        out[m] = got
    return out


@dataclass
class Sweeps:
    """One method's threshold sweeps over a dataset (Choe et al., CVPR 2020): the box IoUs
    per image and threshold, and the object/background pixel histograms summed."""

    boxes: list = field(default_factory=list)
    pixels: np.ndarray | None = None

    def extend(self, box_ious: np.ndarray | None, pixels: np.ndarray | None) -> None:
        """Add one image's ``box_iou_sweep`` (None: no boxes) and ``pixel_histograms``."""
        if box_ious is not None:
            self.boxes.append(np.asarray(box_ious, dtype=np.float64))
        if pixels is not None:
            h = np.asarray(pixels, dtype=np.float64)
            self.pixels = h if self.pixels is None else self.pixels + h

    def summary(self) -> dict[str, float]:
        """MaxBoxAcc (IoU ≥ 0.5), MaxBoxAccV2 (multi-contour, IoU 0.3/0.5/0.7) and PxAP."""
        out = {"pxap": pxap(self.pixels)} if self.pixels is not None else {}
        if self.boxes:
            ious = np.stack(self.boxes)  # [images, 2, T]
            out["maxboxacc"] = max_box_acc(ious[:, 0], 0.5)
            out["maxboxacc_v2"] = max_box_acc_v2(ious[:, 1])
        return out


SUMMARY = {
    "drop": ("Average Drop %", 100.0, "lower"),
    "increase": ("Increase in Confidence %", 100.0, "higher"),
    "deletion_zero": ("Deletion AUC (zero)", 1.0, "lower"),
    "deletion_blur": ("Deletion AUC (blur)", 1.0, "lower"),
    "insertion_zero": ("Insertion AUC (zero)", 1.0, "higher"),
    "insertion_blur": ("Insertion AUC (blur)", 1.0, "higher"),
    "road_morf": ("ROAD MoRF", 1.0, "lower"),
    "road_lerf": ("ROAD LeRF", 1.0, "higher"),
    "pointing": ("Pointing game", 1.0, "higher"),
    "energy_pointing": ("Energy pointing game", 1.0, "higher"),
    "maxboxacc": ("MaxBoxAcc", 1.0, "higher"),
    "maxboxacc_v2": ("MaxBoxAccV2", 1.0, "higher"),
    "pxap": ("PxAP", 1.0, "higher"),
    "iou": ("mean IoU", 1.0, "higher"),
    "loc_acc": ("Top-1 loc. acc. (IoU ≥ 0.5)", 1.0, "higher"),
    "gain": ("Average Gain %", 100.0, "higher"),
    "complexity": ("Complexity (entropy)", 1.0, "lower"),
    "sparseness": ("Sparseness (Gini)", 1.0, "higher"),
    "complexity_l1": ("Complexity (L1)", 1.0, "lower"),
}
"""metric key → (display name, scale for the summary, which direction is better): the
metrics every run computes."""

OPTIONAL = {
    "coherency": ("Coherency", 1.0, "higher"),
    "adcc": ("ADCC", 1.0, "higher"),
    "road_combined": ("ROAD combined", 1.0, "higher"),
    "arcc": ("ARCC", 1.0, "higher"),
    "max_sensitivity": ("Max-Sensitivity", 1.0, "lower"),
    "ovx_insertion": ("Insertion AUC (OpenVINO XAI)", 1.0, "higher"),
    "ovx_deletion": ("Deletion AUC (OpenVINO XAI)", 1.0, "lower"),
}
"""The metrics ``EvalOptions`` turns on (re-explaining or slower), as ``SUMMARY``."""
ALL_METRICS = {**SUMMARY, **OPTIONAL}


def metric_keys(rows: list[dict]) -> list[str]:
    """``SUMMARY``'s keys and the ``OPTIONAL`` ones some row has, in table order."""
    return [*SUMMARY, *(k for k in OPTIONAL if any(k in r for r in rows))]


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Mean of every metric per method (metrics scaled as in ``SUMMARY``)."""
    out: dict[str, dict] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        s = {"images": len(mine)}
        for k, (_, scale, _) in ALL_METRICS.items():
            vals = [r[k] for r in mine if k in r]
            if vals:
                s[k] = scale * float(np.mean(vals))
        out[m] = s
    return out


def _mean_curves(curves: dict) -> dict:
    return {m: {k: np.mean(v, axis=0).tolist() for k, v in c.items()} for m, c in curves.items()}


def table(summary: dict[str, dict]) -> str:
    """A plain-text table (methods as rows)."""
    keys = [k for k in ALL_METRICS if any(k in s for s in summary.values())]
    head = ["method", *[ALL_METRICS[k][0] for k in keys]]
    lines = [head] + [
        [m, *[f"{s[k]:.3f}" if k in s else "–" for k in keys]] for m, s in summary.items()
    ]
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            str(v).rjust(w) if i else str(v).ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    )


def write_outputs(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """metrics.csv (per image), metrics.json (summary + rows), curves.png; returns the paths."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    present = metric_keys(result.rows)
    keys = ["image", "method", "class", "label", *present]
    csv_path = out_dir / "metrics.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(result.rows)
    json_path = out_dir / "metrics.json"
    json_path.write_text(
        json.dumps(
            {
                "summary": result.summary,
                "metrics": {
                    k: {"name": ALL_METRICS[k][0], "better": ALL_METRICS[k][2]} for k in present
                },
                "rows": result.rows,
                "failures": [{"image": f.source, "error": f.error} for f in result.failures],
            },
            indent=1,
        )
    )
    png = out_dir / "curves.png"
    cv2.imwrite(str(png), plot_curves(result.curves)[..., ::-1])
    return {"csv": csv_path, "json": json_path, "curves": png}


PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (57, 59, 121),
    (99, 121, 57),
    (140, 109, 49),
    (132, 60, 57),
    (123, 65, 115),
]


def plot_curves(curves: dict, keys=("deletion_zero", "insertion_blur")) -> np.ndarray:
    """Mean deletion and insertion curves per method, drawn with OpenCV (RGB uint8)."""
    W, H, pad = 520, 380, 50
    panels = []
    for key in keys:
        img = np.full((H, W, 3), 255, np.uint8)
        x0, y0, x1, y1 = pad, 30, W - 15, H - pad
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for t in np.linspace(0, 1, 6):
            yy = int(y1 - t * (y1 - y0))
            cv2.line(img, (x0 - 4, yy), (x0, yy), (0, 0, 0), 1)
            cv2.putText(img, f"{t:.1f}", (8, yy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
            xx = int(x0 + t * (x1 - x0))
            cv2.putText(
                img, f"{t:.1f}", (xx - 10, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1
            )
        cv2.putText(
            img,
            key.replace("_", " (") + ")",
            (x0, 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (0, 0, 0),
            1,
        )
        cv2.putText(
            img,
            "fraction of pixels",
            (x0 + 150, H - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
        )
        for i, (m, c) in enumerate(curves.items()):
            if key not in c:
                continue
            ys = np.asarray(c[key])
            xs = np.linspace(0, 1, len(ys))
            pts = np.stack([x0 + xs * (x1 - x0), y1 - np.clip(ys, 0, 1) * (y1 - y0)], 1)
            color = (0, 0, 0) if m == RANDOM else PALETTE[i % len(PALETTE)]
            cv2.polylines(
                img, [pts.astype(np.int32)], False, color, 2 if m != RANDOM else 1, cv2.LINE_AA
            )
        panels.append(img)
    legend = np.full((H, 190, 3), 255, np.uint8)
    for i, m in enumerate(curves):
        color = (0, 0, 0) if m == RANDOM else PALETTE[i % len(PALETTE)]
        y = 40 + 20 * i
        cv2.line(legend, (8, y - 4), (30, y - 4), color, 3)
        cv2.putText(legend, m, (36, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return np.hstack([*panels, legend])
