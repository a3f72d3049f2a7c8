"""A small YOLO11n shape detector trained here from scratch, explained by onnxcam.

It makes the README's detection example (``docs/detect-example.png``) without pretrained
weights or downloads:

1. generates a synthetic YOLO-format dataset (320×320 images on textured, noisy backgrounds,
   1–4 shapes each of three classes: circle, square, triangle);
2. trains ``YOLO("yolo11n.yaml")`` on it from scratch, on the CPU, with fixed seeds;
3. exports the best weights to ONNX (``yolo_shapes.onnx``, output ``[1, 7, 2100]``);
4. runs ``onnxcam export … --preset unit --labels labels.txt`` and ``onnxcam run … -m
   hirescam`` on a fresh test image (a circle, a square, two triangles), and puts the
   all-detections overlay next to two single-detection overlays in the figure. HiResCAM
   weighs each position by its own gradient, so each detection's map stays on its shape;
   Grad-CAM averages each channel's gradient over the map, so channels that respond to every
   shape light all of them (``--method gradcam --figure docs/detect-example-gradcam.png``).

Run it from the repository root (ultralytics is not a dependency of onnxcam)::

    YOLO_OFFLINE=1 python models/yolo_shapes.py --out /tmp/yolo_shapes

The default run (300 train / 60 val images, 20 epochs at 320 px, batch 8, AdamW 0.004) took
13 minutes on a 2-core machine (ultralytics trains on cpu_count − 1 threads: one thread there,
~40 s an epoch) and reached val mAP50 0.97 (mAP50-95 0.79); seeds are fixed and a rerun gave
the same numbers. ``--weights …/best.pt`` skips the training (under a minute).
Everything large (dataset, runs, weights, ONNX files, overlays) goes to ``--out`` (default: a
new temporary directory); only the figure is written into the repository. Nothing is
downloaded: ``YOLO_OFFLINE`` is set, AMP and plots are off, and the dataset check's Arial
font fetch is stubbed out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no network checks

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle")
REPO = Path(__file__).resolve().parent.parent
FIGURE = REPO / "docs" / "detect-example.png"
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


# ---------------------------------------------------------------------------- synthetic data


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured BGR background: smooth colour field, stripes or a grid, clutter, noise."""
    k = int(rng.integers(2, 6))
    low = rng.uniform(40, 215, (k, k, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # stripes
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 30)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        img += wave[..., None] * rng.uniform(8, 30)
    elif kind == 1:  # checker/grid texture
        period = rng.uniform(8, 40)
        wave = np.sign(np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period))
        img += wave[..., None] * rng.uniform(5, 20)
    for _ in range(int(rng.integers(0, 6))):  # thin clutter lines
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    img += rng.normal(0, rng.uniform(4, 14), img.shape).astype(np.float32)
    return img


def _shape_points(cls: int, cx: float, cy: float, r: float, tilt: float) -> np.ndarray:
    """Polygon (N×2 float) of an upright square or triangle of circumradius ``r``, tilted."""
    n = 4 if cls == 1 else 3
    t = tilt + (np.pi / 4 if n == 4 else -np.pi / 2) + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _colour(rng: np.random.Generator, under: np.ndarray) -> tuple[float, ...]:
    """A saturated colour that stands out from the mean colour ``under`` it."""
    for _ in range(50):
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 256)]]])
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        if np.abs(bgr - under).sum() > 180:
            break
    return tuple(float(v) for v in bgr)


def make_image(
    rng: np.random.Generator, size: int = 320, n_min: int = 1, n_max: int = 4,
    classes: list[int] | None = None,
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:  # fmt: skip
    """One BGR image and its YOLO labels ``(class, cx, cy, w, h)`` (normalised).

    ``classes``: the classes to draw, in order (default: 1–4 random ones).
    """
    img = _background(rng, size)
    if classes is None:
        classes = [int(c) for c in rng.integers(0, len(CLASSES), rng.integers(n_min, n_max + 1))]
    boxes: list[tuple[float, float, float, float]] = []
    labels = []
    for cls in classes:
        for _ in range(100):  # place without (much) overlap
            r = rng.uniform(0.07, 0.17) * size
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            tilt = rng.uniform(-0.35, 0.35)  # ±20°: squares stay squares, not diamonds
            if cls == 0:
                x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
            else:
                pts = _shape_points(cls, cx, cy, r, tilt)
                (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            if all(x1 < b[0] - 4 or x0 > b[2] + 4 or y1 < b[1] - 4 or y0 > b[3] + 4 for b in boxes):
                break
        else:
            continue
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        x1, y1 = min(x1, size - 1.0), min(y1, size - 1.0)
        under = img[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].reshape(-1, 3).mean(0)
        colour = _colour(rng, under)
        if cls == 0:
            cv2.circle(img, (round(cx * 16), round(cy * 16)), round(r * 16), colour, -1,
                       cv2.LINE_AA, shift=4)  # fmt: skip
        else:
            pts = np.round(_shape_points(cls, cx, cy, r, tilt) * 16).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, shift=4)
        boxes.append((x0, y0, x1, y1))
        labels.append(
            (cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
        )
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # noise over the shapes too
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.1, 0.9))
    return np.clip(img, 0, 255).astype(np.uint8), labels


def make_dataset(root: Path, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Write ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml``; its path."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = make_image(rng, size)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.jpg"), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])  # fmt: skip
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    yaml = root / "data.yaml"
    yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return yaml


# ---------------------------------------------------------------------------- training, export


def _quiet_ultralytics() -> None:
    """Offline: never try to fetch the Arial font that dataset checks ask for."""
    import ultralytics.data.utils as data_utils

    data_utils.check_font = lambda *a, **k: None


def train(
    data: Path, out: Path, epochs: int, imgsz: int, seed: int, batch: int, lr0: float
) -> Path:
    """Train YOLO11n from scratch on the CPU; the path of ``best.pt``."""
    from ultralytics import YOLO

    _quiet_ultralytics()
    model = YOLO("yolo11n.yaml")
    model.train(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device="cpu", workers=0,
        seed=seed, deterministic=True, pretrained=False, amp=False, plots=False,
        project=str(out / "runs"), name="train", exist_ok=True, close_mosaic=max(epochs // 5, 1),
        warmup_epochs=1, val=False, patience=epochs, optimizer="AdamW", lr0=lr0, cls=1.0, scale=0.3,
        verbose=False,
    )  # fmt: skip
    return Path(model.trainer.best)


def validate(weights: Path, data: Path, imgsz: int) -> dict:
    """Val mAP50 and mAP50-95 of ``weights`` (per class too)."""
    from ultralytics import YOLO

    _quiet_ultralytics()
    m = YOLO(str(weights)).val(
        data=str(data), imgsz=imgsz, batch=16, device="cpu", workers=0, plots=False,
        verbose=False, project=str(weights.parent.parent), name="val", exist_ok=True,
    )  # fmt: skip
    per_class = {
        CLASSES[c]: round(float(m.box.ap50[i]), 4) for i, c in enumerate(m.box.ap_class_index)
    }
    return {"map50": round(float(m.box.map50), 4), "map50_95": round(float(m.box.map), 4),
            "ap50": per_class}  # fmt: skip


def export_onnx(weights: Path, dest: Path, imgsz: int) -> Path:
    """ONNX export of the trained detector (ultralytics', else ``torch.onnx.export``)."""
    from ultralytics import YOLO

    yolo = YOLO(str(weights))
    try:
        f = yolo.export(format="onnx", imgsz=imgsz, dynamic=False, simplify=False, device="cpu")
        shutil.copyfile(f, dest)
    except Exception as e:  # e.g. an exporter requirement that cannot be installed offline
        import torch

        print(f"ultralytics export failed ({e}); using torch.onnx.export")
        m = yolo.model.float().eval()
        for mod in m.modules():
            if hasattr(mod, "export"):
                mod.export = True
            if hasattr(mod, "format"):
                mod.format = "onnx"
        x = torch.zeros(1, 3, imgsz, imgsz)
        torch.onnx.export(m, x, str(dest), opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["output0"])  # fmt: skip
    return dest


# ---------------------------------------------------------------------------- onnxcam


def _onnxcam() -> list[str]:
    exe = Path(sys.executable).parent / "onnxcam"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from onnxcam.cli import main; main()"]


def _sh(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((28, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def figure(row: dict, dest: Path, method: str = "gradcam") -> None:
    """All detections' map next to two single detections' maps, captioned."""
    gap = np.full((320 + 28, 6, 3), 255, np.uint8)
    all_dets = cv2.imread(row["overlays"][method])
    panels = [_caption(all_dets, f"all detections ({METHOD_NAMES.get(method, method)})")]
    dets = sorted(row["detections"], key=lambda d: -d["score"])
    picked: list[dict] = []
    for d in dets:  # two detections of different classes when there are
        if len(picked) < 2 and all(p["label"] != d["label"] for p in picked):
            picked.append(d)
    picked += [d for d in dets if d not in picked][: 2 - len(picked)]
    for d in picked:
        img = cv2.imread(d["overlays"][method])
        j = row["detections"].index(d) + 1
        panels.append(_caption(img, f"detection {j} only: {d['label']} {d['score']:.2f}"))
    h = max(p.shape[0] for p in panels)
    panels = [np.vstack([p, np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)])
              for p in panels]  # fmt: skip
    out = panels[0]
    for p in panels[1:]:
        out = np.hstack([out, gap[:h], p])
    dest.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dest), out, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr0", type=float, default=0.004, help="AdamW learning rate")
    ap.add_argument("--train-images", type=int, default=300)
    ap.add_argument("--val-images", type=int, default=60)
    ap.add_argument("--weights", type=Path, default=None, help="trained best.pt: skip training")
    ap.add_argument("--figure", type=Path, default=FIGURE, help="where the figure is written")
    ap.add_argument(
        "--method",
        default="hirescam",
        help="onnxcam method of the figure (docs/detect-example-gradcam.png: gradcam)",
    )
    args = ap.parse_args(argv)

    out = (args.out or Path(tempfile.mkdtemp(prefix="yolo_shapes-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    summary: dict = {"out": str(out)}

    t = time.perf_counter()
    data = make_dataset(out / "data", args.train_images, args.val_images, args.imgsz, args.seed)
    summary["dataset_s"] = round(time.perf_counter() - t, 1)
    weights = args.weights
    if weights is None:
        t = time.perf_counter()
        weights = train(data, out, args.epochs, args.imgsz, args.seed, args.batch, args.lr0)
        summary["train_s"] = round(time.perf_counter() - t, 1)
    summary["weights"] = str(weights)
    summary["val"] = validate(weights, data, args.imgsz)
    print("val:", summary["val"], flush=True)

    onnx_path = export_onnx(weights, out / "yolo_shapes.onnx", args.imgsz)
    labels = out / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    test_img, test_labels = make_image(
        np.random.default_rng(args.seed + 1000), args.imgsz, classes=[0, 1, 2, 2]
    )
    test = out / "test.jpg"
    cv2.imwrite(str(test), test_img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    s = args.imgsz
    summary["test_truth"] = [
        {
            "label": CLASSES[c],
            "box": [round(v * s, 1) for v in (x - w / 2, y - h / 2, x + w / 2, y + h / 2)],
        }
        for c, x, y, w, h in test_labels
    ]

    cam = out / "yolo_shapes.cam.onnx"
    _sh([*_onnxcam(), "export", str(onnx_path), "-o", str(cam), "--preset", "unit",
         "--labels", str(labels)])  # fmt: skip
    res = json.loads(_sh([*_onnxcam(), "run", str(cam), str(test), "-m", args.method,
                          "-o", str(out / "cam"), "--json"]))  # fmt: skip
    if not res["results"]:
        raise SystemExit(f"onnxcam run kept no detection: {res['failures']}")
    row = res["results"][0]
    summary["detections"] = [
        {"label": d["label"], "score": d["score"], "box": d["box"]} for d in row["detections"]
    ]
    figure(row, args.figure, args.method)
    summary["figure"] = str(args.figure)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
