"""Cost of one training-time logging step (``onnxcam.callbacks``), split into its phases.

A torchvision ResNet-18 (random init, in train mode as mid-training) at 224×224; each step
exports it in memory (``export_torch``: torch.onnx.export + the onnxcam passes + the forward
check), explains 16 fixed images with Grad-CAM on onnxruntime CPU (session creation included)
and logs the 16 captioned overlays plus the scalars to TensorBoard, W&B (offline) and MLflow
(local file store), each logger timed on its own; the export is also timed without the
exporter's forward check (``verify=False``, not counted in the total). Median wall and
process-CPU seconds over the repeats (the first step is a warm-up and not counted); the CPU
figure is the one to read on a loaded machine.

    python bench/callbacks.py [--repeats 5] [--images 16]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import arguments, markdown_table, save

sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))  # no TensorFlow


class Timed:
    """A logger wrapped to record its wall and CPU seconds per call."""

    def __init__(self, name: str, logger) -> None:
        self.name, self.logger, self.times = name, logger, []

    def log(self, snapshot) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.logger.log(snapshot)
        self.times.append((time.perf_counter() - w, time.process_time() - c))

    def close(self) -> None:
        self.logger.close()


def main() -> None:
    ap = arguments(__doc__, 5, "ResNet-18", batches=None)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import torch
    import torchvision

    from onnxcam.callbacks.core import CamRecorder
    from onnxcam.callbacks.loggers import MlflowLogger, TensorBoardLogger, WandbLogger
    from onnxcam.callbacks.torch import export_current

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).train()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    boxes = [(56, 56, 168, 168)] * args.images
    rows_raw: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loggers = [
            Timed("tensorboard", TensorBoardLogger(Path(tmp) / "tb")),
            Timed("wandb", WandbLogger(project="bench", dir=tmp, mode="offline")),
            Timed("mlflow", MlflowLogger(tracking_uri=f"file:{Path(tmp) / 'mlruns'}")),
        ]
        rec = CamRecorder(images, ("gradcam",), boxes=boxes, loggers=loggers)
        for step in range(args.repeats + 1):
            w, c = time.perf_counter(), time.process_time()
            onnx_bytes = export_current(model, (1, 3, 224, 224), "layer4")
            export = (time.perf_counter() - w, time.process_time() - c)
            w, c = time.perf_counter(), time.process_time()
            export_current(model, (1, 3, 224, 224), "layer4", verify=False)
            unverified = (time.perf_counter() - w, time.process_time() - c)
            w, c = time.perf_counter(), time.process_time()
            snap = rec.record(onnx_bytes, step)
            whole = (time.perf_counter() - w, time.process_time() - c)
            logs = {lg.name: lg.times[-1] for lg in loggers}
            log_wall = sum(t[0] for t in logs.values())
            log_cpu = sum(t[1] for t in logs.values())
            if step == 0:
                continue
            sample = {
                "export": export,
                "export (verify=False)": unverified,
                "explain": (snap.seconds["explain"], whole[1] - log_cpu),
                **{f"log: {k}": v for k, v in logs.items()},
                "total": (export[0] + whole[0], export[1] + whole[1]),
            }
            assert abs(log_wall - snap.seconds["log"]) < 0.05
            for k, (wall, cpu) in sample.items():
                rows_raw.setdefault(k, []).append((wall, cpu))
        rec.close()
    rows = [
        {
            "phase": k,
            "wall_s": float(np.median([v[0] for v in vals])),
            "cpu_s": float(np.median([v[1] for v in vals])),
        }
        for k, vals in rows_raw.items()
    ]
    print(markdown_table(rows, [("phase", "phase"), ("wall_s", "wall s"), ("cpu_s", "CPU s")]))
    extra = {
        "model": "torchvision resnet18 (random init), 224x224, layer4, train mode",
        "images": args.images,
        "methods": ["gradcam"],
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
    }
    print(save("callbacks", rows, extra))


if __name__ == "__main__":
    main()
