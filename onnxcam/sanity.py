"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps",
arXiv:1810.03292): does a map change when the model it explains is destroyed?

* **Cascading model-parameter randomisation** (``cascading_randomization``): the model's
  parameterised layers are re-initialised from the logits down to the input, in ``steps``
  cascade steps; after each step the same images are explained again (the class explained
  on the original model) and compared with the original maps. A map that depends on what the
  model learned decorrelates (towards 0); one that does not (Guided Backprop: it mostly
  reconstructs the image) stays similar.
* **Random-logit test**: each image is explained for a random other class (seeded); a
  class-sensitive map changes.

Per method, image and step: the Spearman rank correlation with the original map of its
*magnitude* (``spearman_abs``: |attribution| for pixel-space methods, the rectified CAM for
CAM methods), of the *signed* map (``spearman_signed``: the raw map before ReLU/abs; only for
methods whose raw maps take both signs on the original images), and the SSIM of the maps as
shown (``ssim``: ``CamMap.input`` in [0, 1], Wang et al. 2004, 11×11 Gaussian window, σ 1.5),
all at the model-input resolution.

The randomised models come from ``onnxcam.export.randomize`` (needs ``onnx``): the plain
forward is extracted from the exported model, randomised, and exported again with the options
its metadata records — the backward's derived constants (flipped kernels, branch copies) are
derived again, never left stale (docs/evaluation.md, "Sanity checks").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .engine import Explainer, Explanation
from .errors import MethodError, OnnxcamError
from .image import preprocess
from .registry import METHODS, resolve_methods
from .results import CamMap

ImageSource = str | os.PathLike | np.ndarray
ModelSource = str | os.PathLike | bytes
METRICS = ("spearman_abs", "spearman_signed", "ssim")
RANDOM_LOGIT = "random-logit"


# --- similarity ---------------------------------------------------------------------------------
def rank(a: np.ndarray) -> np.ndarray:
    """1-based ranks of the flattened ``a``, ties sharing their average rank (float64)."""
    _, inverse, counts = np.unique(np.ravel(a), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (ties averaged); 0 when either is constant."""
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb) / denom if denom > 0 else 0.0


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two maps: 11×11 Gaussian window with
    σ 1.5, K1 0.01, K2 0.03, mirrored borders, the window's half-width cropped from the mean —
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def blur(m: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(m, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def _magnitude(cam: CamMap) -> np.ndarray:
    """The map's magnitude at input size: |attribution| for a pixel-space method, the shown
    (rectified) map for a CAM."""
    if METHODS[cam.method].display == "attribution":
        return np.abs(cam.raw)
    return cam.input


def _signed(cam: CamMap) -> np.ndarray:
    """The raw map (before ReLU / abs) at input size (bilinear, half-pixel centres)."""
    raw = np.asarray(cam.raw, np.float32)
    h, w = cam.input_size
    return raw if raw.shape == (h, w) else cv2.resize(raw, (w, h), interpolation=cv2.INTER_LINEAR)


def compare(original: CamMap, other: CamMap, signed: bool) -> dict[str, float | None]:
    """``METRICS`` of ``other`` against ``original`` (``spearman_signed`` None unless
    ``signed``)."""
    return {
        "spearman_abs": spearman(_magnitude(original), _magnitude(other)),
        "spearman_signed": spearman(_signed(original), _signed(other)) if signed else None,
        "ssim": ssim(original.input, other.input),
    }


# --- results ------------------------------------------------------------------------------------
@dataclass
class SanityStep:
    """One cascade step: how many layers are randomised so far and which."""

    index: int
    """1-based."""
    layers: int
    """Layers randomised so far (top first)."""
    first: str
    """The top-most layer this step randomised."""
    lowest: str
    """The lowest layer randomised so far (the step's name)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """export (randomise + export_onnx), session (onnxruntime load), explain."""


@dataclass
class SanityResult:
    """Per method, the mean of each ``METRICS`` over the images after every cascade step and
    for the random logit; the per-image rows; what was randomised."""

    model: str
    methods: list[str]
    images: list[str]
    classes: list[int]
    """The explained class of each image (the original model's, or the given one)."""
    random_classes: list[int]
    steps: list[SanityStep]
    total_layers: int
    seed: int
    cascade: dict[str, list[dict[str, float | None]]]
    """method → one dict of mean ``METRICS`` per step."""
    random_logit: dict[str, dict[str, float | None]]
    rows: list[dict]
    seconds: float = 0.0
    forward: str = ""
    """Where the plain forward came from, and how well it reproduced the exported outputs."""

    def to_json(self) -> dict:
        """The document written as sanity.json."""
        return {
            "paper": "Adebayo et al., Sanity Checks for Saliency Maps, arXiv:1810.03292",
            "model": self.model,
            "forward": self.forward,
            "seed": self.seed,
            "methods": self.methods,
            "images": self.images,
            "classes": self.classes,
            "random_classes": self.random_classes,
            "total_layers": self.total_layers,
            "steps": [asdict(s) for s in self.steps],
            "metrics": {
                "spearman_abs": "Spearman rank correlation with the original map, of |map|",
                "spearman_signed": "of the signed raw map (null: the method has no sign)",
                "ssim": "SSIM of the shown maps in [0, 1] at the model-input size",
            },
            "cascade": self.cascade,
            "random_logit": self.random_logit,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
        }


def _means(rows: list[dict], method: str, step: int | str) -> dict[str, float | None]:
    """Each of ``METRICS`` averaged over the images' rows of one method and step (None where
    the method has no such value)."""
    mine = [r for r in rows if r["method"] == method and r["step"] == step]
    out = {}
    for key in METRICS:
        vals = [r[key] for r in mine if r.get(key) is not None]
        out[key] = round(float(np.mean(vals)), 4) if vals else None
    return out


# --- the checks -----------------------------------------------------------------------------------
StepProgress = Callable[[int, int], None]
"""progress(done, total): ``done`` more of ``total`` explain passes finished (first: 0)."""


def cascading_randomization(
    model: ModelSource,
    images: Sequence[ImageSource],
    methods: str | Sequence[str] = "gradcam",
    steps: int = 8,
    seed: int = 0,
    *,
    source: ModelSource | None = None,
    random_logit: bool = True,
    classes: Sequence[int | str] | None = None,
    device: str = "auto",
    verify: bool = False,
    progress: StepProgress | None = None,
    **explain: object,
) -> SanityResult:
    """Adebayo et al.'s cascading randomisation and random-logit tests of ``methods`` on
    ``images`` for an exported model (a path or its bytes).

    ``steps`` cascade steps from the logits layer alone to every layer (``randomize.
    cascade_counts``); ``seed`` seeds the new weights and the random classes; ``source`` the
    plain model (default: extracted from ``model``; either way it must reproduce the exported
    model's outputs on ``images``); ``classes`` the class explained per image (default: the
    original model's top-1); ``verify`` runs the exporter's forward verification at every step
    (~3× the export time; the extraction itself is always checked); ``explain``: options for
    ``Explainer.explain`` (``batch_size``, ``ig_steps``, ``smooth_samples``, ``layers`` ...).
    """
    from onnxcam.export.randomize import Cascade, cascade_counts

    t_start = time.perf_counter()
    if isinstance(model, Explainer):
        raise OnnxcamError("give the exported model's path or bytes: the cascade re-exports it")
    if steps < 1:
        raise OnnxcamError(f"the cascade needs at least 1 step, not {steps}")
    if not images:
        raise OnnxcamError("no images to explain")
    data = model if isinstance(model, bytes) else _read(model)
    label = "model" if isinstance(model, bytes) else str(model)
    base = Explainer(data, device=device)
    if base.info.task != "classify":
        raise MethodError("the randomisation sanity checks explain classifiers")
    names = resolve_methods(methods, base.info.has_cam_weights)
    loaded = [base.load(s) for s in images]
    arrays = [a for _, a in loaded]
    cascade = Cascade(data, source=source, seed=seed)
    counts = cascade_counts(len(cascade.layers), steps)
    total = 1 + len(counts) + int(random_logit)
    tick = progress or (lambda _d, _t: None)
    tick(0, total)
    original = base.explain(arrays, names, classes=classes, **explain)
    tick(1, total)
    picked = [r.target.index for r in original]
    forward = _check_forward(base, cascade, arrays, "given" if source is not None else "extracted")
    signed = {m: any(float(np.min(r.maps[m].raw)) < 0 for r in original) for m in names}
    rows: list[dict] = []
    result_steps: list[SanityStep] = []
    prev = 0
    for i, k in enumerate(counts, 1):
        t0 = time.perf_counter()
        exported = cascade.export(k, verify=verify)
        t1 = time.perf_counter()
        ex = Explainer(exported, device=device)
        t2 = time.perf_counter()
        again = ex.explain(arrays, names, classes=picked, **explain)
        t3 = time.perf_counter()
        step = SanityStep(i, k, cascade.layers[prev].node, cascade.layers[k - 1].node)
        step.seconds = {
            "export": round(t1 - t0, 3),
            "session": round(t2 - t1, 3),
            "explain": round(t3 - t2, 3),
        }
        result_steps.append(step)
        rows += _rows(original, again, names, signed, loaded, i)
        prev = k
        tick(1, total)
    random_classes: list[int] = []
    if random_logit:
        random_classes = _random_classes(base, picked, seed)
        other = base.explain(arrays, names, classes=random_classes, **explain)
        rows += _rows(original, other, names, signed, loaded, RANDOM_LOGIT)
        tick(1, total)
    return SanityResult(
        model=label,
        methods=names,
        images=[n for n, _ in loaded],
        classes=picked,
        random_classes=random_classes,
        steps=result_steps,
        total_layers=len(cascade.layers),
        seed=seed,
        cascade={m: [_means(rows, m, s.index) for s in result_steps] for m in names},
        random_logit={m: _means(rows, m, RANDOM_LOGIT) for m in names} if random_logit else {},
        rows=rows,
        seconds=time.perf_counter() - t_start,
        forward=forward,
    )


def _read(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise OnnxcamError(f"{p}: no such file")
    return p.read_bytes()


def _check_forward(base: Explainer, cascade, arrays: list[np.ndarray], how: str) -> str:
    """The plain forward must give the exported model's own outputs on the images (the
    extraction kept the forward nodes, or ``source`` is this model); a one-line error if not."""
    import onnxruntime as ort

    spec = base.info.input
    x = spec.feed(preprocess(arrays, spec))
    plain = ort.InferenceSession(
        cascade.forward.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in plain.get_outputs()]
    exported = {o.name for o in base.session.get_outputs()}
    if not set(names) <= exported:
        raise OnnxcamError(
            f"the {how} plain model's outputs ({', '.join(names)}) are not the exported "
            "model's own outputs; give the model it was exported from"
        )
    got = plain.run(names, {spec.name: x})
    feeds = {spec.name: x}
    if "onnxcam_mode" in {i.name for i in base.session.get_inputs()}:
        feeds["onnxcam_mode"] = np.array(1, dtype=np.int64)
    want = base.session.run(names, feeds)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        scale = max(float(np.abs(w).max()), 1e-12)
        worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()) / scale)
    if not worst <= 1e-4:
        raise OnnxcamError(
            f"the {how} plain model does not reproduce the exported model's outputs "
            f"(relative difference {worst:.2g}); give the model it was exported from"
        )
    return f"{how}; reproduces the exported outputs within {worst:.1e} (relative)"


def _random_classes(base: Explainer, classes: list[int], seed: int) -> list[int]:
    """A random class other than each image's explained one (seeded)."""
    n = base.info.num_classes or (len(base.info.labels) if base.info.labels else None)
    if not n or n < 2:
        raise MethodError("the random-logit test needs a model with two classes or more")
    rng = np.random.default_rng([seed, 1810_03292])
    out = []
    for c in classes:
        r = int(rng.integers(n - 1))
        out.append(r + (r >= c))
    return out


def _rows(
    original: list[Explanation],
    other: list[Explanation],
    names: list[str],
    signed: dict[str, bool],
    loaded: list[tuple[str, np.ndarray]],
    step: int | str,
) -> list[dict]:
    rows = []
    for (name, _), a, b in zip(loaded, original, other, strict=True):
        for m in names:
            rows.append(
                {
                    "image": name,
                    "method": m,
                    "step": step,
                    "class": b.target.index,
                    **{
                        k: (None if v is None else round(v, 5))
                        for k, v in compare(a.maps[m], b.maps[m], signed[m]).items()
                    },
                }
            )
    return rows


# --- outputs --------------------------------------------------------------------------------------
def table(result: SanityResult, metric: str = "spearman_abs") -> str:
    """Methods × cascade steps (and the random logit) of one metric's means, with the steps'
    legend."""
    head = ["method", *[f"s{s.index}" for s in result.steps]]
    if result.random_logit:
        head.append("rand.logit")
    lines = [head]
    for m in result.methods:
        vals = [v[metric] for v in result.cascade[m]]
        if result.random_logit:
            vals.append(result.random_logit[m][metric])
        lines.append([m, *["–" if v is None else f"{v:.3f}" for v in vals]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            v.rjust(w) if i else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    )


def report(result: SanityResult) -> str:
    """The plain text the CLI prints: the steps, then a table per metric."""
    out = [
        f"sanity checks (Adebayo et al., arXiv:1810.03292): {len(result.images)} image(s), "
        f"{result.total_layers} parameterised layers randomised top-down in "
        f"{len(result.steps)} steps, seed {result.seed}"
    ]
    for s in result.steps:
        out.append(f"  s{s.index}: {s.layers:>3} layers, down to {s.lowest}")
    titles = {
        "spearman_abs": "Spearman rank correlation with the original map (|map|)",
        "spearman_signed": "Spearman rank correlation, signed map ('–': no sign)",
        "ssim": "SSIM with the original map",
    }
    for k in METRICS:
        out += ["", titles[k], table(result, k)]
    return "\n".join(out)


def plot(result: SanityResult, metrics: Sequence[str] = ("spearman_abs", "ssim")) -> np.ndarray:
    """Correlation vs cascade step per method (step 0: the original model, 1), one panel per
    metric, the random logit as a separate point on the right; drawn with OpenCV (RGB)."""
    from .evaluate import PALETTE

    W, H, pad = 560, 380, 56
    n = len(result.steps)
    panels = []
    for metric in metrics:
        img = np.full((H, W, 3), 255, np.uint8)
        x0, y0, x1, y1 = pad, 34, W - 20, H - pad
        slots = n + (2 if result.random_logit else 1)

        def px(i: float, x0=x0, x1=x1, slots=slots) -> int:
            return int(x0 + (x1 - x0) * i / max(slots - 1, 1))

        def py(v: float, y0=y0, y1=y1) -> int:
            return int(y1 - (np.clip(v, -0.5, 1.0) + 0.5) / 1.5 * (y1 - y0))

        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for v in (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0):
            cv2.line(img, (x0 - 4, py(v)), (x0, py(v)), (0, 0, 0), 1)
            cv2.putText(img, f"{v:.2f}", (4, py(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1)
        cv2.line(img, (x0, py(0)), (x1, py(0)), (200, 200, 200), 1)
        ticks = ["orig", *[f"s{s.index}" for s in result.steps]]
        ticks += ["logit"] if result.random_logit else []
        for i, t in enumerate(ticks):
            cv2.putText(img, t, (px(i) - 12, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1)
        title = {"spearman_abs": "Spearman rank corr. (|map|)", "ssim": "SSIM"}.get(metric, metric)
        cv2.putText(img, title, (x0, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
        cv2.putText(
            img, "layers randomised from the logits down", (x0 + 90, H - 10),
            cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
        )  # fmt: skip
        for j, m in enumerate(result.methods):
            color = PALETTE[j % len(PALETTE)]
            vals = [1.0, *[v[metric] for v in result.cascade[m]]]
            pts = [(px(i), py(v)) for i, v in enumerate(vals) if v is not None]
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
            v = result.random_logit.get(m, {}).get(metric) if result.random_logit else None
            if v is not None:
                cv2.drawMarker(img, (px(n + 1), py(v)), color, cv2.MARKER_TILTED_CROSS, 10, 2)
        panels.append(img)
    legend = np.full((H, 200, 3), 255, np.uint8)
    for j, m in enumerate(result.methods):
        y = 40 + 20 * j
        cv2.line(legend, (8, y - 4), (30, y - 4), PALETTE[j % len(PALETTE)], 3)
        cv2.putText(legend, m, (36, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    if result.random_logit:
        y = 40 + 20 * len(result.methods) + 10
        cv2.drawMarker(legend, (19, y - 4), (0, 0, 0), cv2.MARKER_TILTED_CROSS, 10, 2)
        cv2.putText(legend, "random logit", (36, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1)
    return np.hstack([*panels, legend])


def write_outputs(result: SanityResult, out_dir: Path) -> dict[str, Path]:
    """sanity.json and sanity.png in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "sanity.json"
    js.write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
    png = out_dir / "sanity.png"
    if not cv2.imwrite(str(png), plot(result)[..., ::-1]):
        raise OnnxcamError(f"cannot write {png}")
    return {"sanity_json": js, "sanity_png": png}


__all__ = [
    "METRICS",
    "SanityResult",
    "SanityStep",
    "cascading_randomization",
    "compare",
    "plot",
    "rank",
    "report",
    "spearman",
    "ssim",
    "table",
    "write_outputs",
]
