"""Benchmark harness: interleaved timing, medians, a printed table and a JSON record.

Machines here are shared and noisy, so variants are timed *side by side*: each repeat runs
every variant once, in rotating order, and we compare medians measured in the same run.
Never used by tests; run the scripts under ``bench/`` by hand (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from onnxcam.methods import METHODS

RESULTS = Path(__file__).parent / "results"

GRADIENT_MAPS = [m for m, spec in METHODS.items() if spec.family == "gradient"]
"""The gradient methods whose maps "all gradient maps at once" means (with ``cam`` where the
model has a GAP → Linear head)."""


def arguments(
    description: str | None, repeats: int, models: str, batches: str | None = "1,8"
) -> argparse.ArgumentParser:
    """The options every script shares: ``--repeats``, ``--models`` and (unless None)
    ``--batches``; scripts add their own before ``parse_args``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--models", default=models)
    if batches is not None:
        ap.add_argument("--batches", default=batches)
    return ap


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    cpu: bool = False,
    block: int = 1,
) -> dict[str, list]:
    """Seconds per call for each variant: every repeat runs each variant once, in a new
    (seeded) random order, so no variant always follows the same one (a heavy variant's
    after-effects, e.g. freed memory faulted back in, would otherwise land on one neighbour).
    ``cpu``: (wall, process CPU) seconds per call instead — the figure to read on a loaded
    machine. ``block`` > 1: each turn runs a variant ``block`` times and keeps all but the
    first call (for sessions that spin-wait: the previous variant's spinning workers then
    slow only the discarded call)."""
    import random

    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list] = {n: [] for n in names}
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        order = list(names)
        shuffle(order)
        for n in order:
            for i in range(block):
                t0, c0 = time.perf_counter(), time.process_time()
                variants[n]()
                wall = time.perf_counter() - t0
                if block == 1 or i > 0:
                    times[n].append((wall, time.process_time() - c0) if cpu else wall)
    return times


def session_options():
    """SessionOptions used for every timed session (spin-waiting off, quiet)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def threaded_options(threads: int = 2, spinning: bool = False):
    """``session_options`` with ``threads`` intra-op threads and one inter-op thread;
    ``spinning``: onnxruntime's default spin-waiting workers instead."""
    opts = session_options()
    if spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def bench_model(name: str):
    """(torch module in eval mode, ``export_onnx`` keyword arguments) of a benchmark model:
    EfficientNet-Lite0 with its ImageNet weights, else a torchvision model at random init
    (seed 0)."""
    import torch
    import torchvision

    if name == "efficientnet_lite0":
        from models import efficientnet_lite0

        return efficientnet_lite0.build(), dict(efficientnet_lite0.PREPROCESSING)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval(), {"preset": "torch"}


def session(model, providers: list[str] | None = None):
    """An onnxruntime session for side-by-side timing.

    Spin-waiting is off: with it on, a session's idle worker threads keep spinning after its
    run and steal the cores from the next variant, which biases interleaved comparisons.
    """
    import onnxruntime as ort

    opts = session_options()
    src = model if isinstance(model, (bytes, str)) else str(model)
    return ort.InferenceSession(src, opts, providers=providers or ["CPUExecutionProvider"])


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime as ort

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows → a markdown table; columns are (key, header); floats get 3 significant digits."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def save(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Write ``bench/results/<name>.json`` with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **(extra or {}), "rows": rows}, indent=1))
    return path
