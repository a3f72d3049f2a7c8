"""Every registered method, alone, on one image: its cost against plain inference and its runs.

For ResNet-50 (random init) and EfficientNet-Lite0 (real weights), 224×224, batch 1, 2 threads:
each method of ``onnxcam.METHODS`` is timed as ``Explainer.explain_tensor(x, method)`` (the
run(s), the method on the host, the map at the input size) on the *smallest* export that serves
it — the flags follow from its needs (``export_flags``: ``--input-gradient`` for a pixel need,
``--rules R`` for a rule's, ``--fullgrad``, ``--reciprocam``), since an exported extra (the input
gradient, FullGrad, ReciproCAM) is computed on every explain run — interleaved with plain
onnxruntime inference of the unmodified model. Recorded per method:

  * ``ms`` (median) and ``vs_plain``: the cost of one explanation in plain inferences;
  * ``runs``: ``session.run`` calls per image, and ``rows``: the image rows those runs fed
    (a batched run of 64 masked copies is one run and 64 rows);
  * the method's family and paper (from the registry).

A method costing more than ``SLOW`` plain inferences in its first call (the sampled and
perturbation families) is timed by that one call, with plain inference timed right before and
after it. Their sample counts are ``--perturbation`` options (``PerturbationOptions``; default
here: SS-CAM 2 noise samples, IS-CAM 3 steps, RISE 1000 masks — the costs scale linearly).

    python bench/method_table.py [--repeats 15] [--models resnet50,efficientnet_lite0]
        [--export reciprocam=true] [--perturbation ss_samples=2 is_steps=3 rise_masks=1000]
        [--methods saliency,gradient-input]
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from harness import (
    arguments,
    bench_model,
    interleaved,
    markdown_table,
    median_ms,
    save,
    threaded_options,
)

THREADS = 2
SIZE = 224
SLOW = 4.0
"""A method costing more than this many plain inferences in the first, short pass is timed in
the slow pass."""


class CountingSession:
    """An ``InferenceSession`` stand-in that counts ``run`` calls and the image rows fed."""

    def __init__(self, session, image: str) -> None:
        self._s, self._image = session, image
        self.runs = 0
        self.rows = 0

    def run(self, names, feeds, *args, **kwargs):
        self.runs += 1
        self.rows += int(np.shape(feeds[self._image])[0]) if self._image in feeds else 0
        return self._s.run(names, feeds, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._s, name)


def _parse(pairs: list[str]) -> dict:
    """``key=value`` options (true/false become booleans, numbers numbers)."""
    out: dict = {}
    for p in pairs:
        k, _, v = p.partition("=")
        value: object = {"true": True, "false": False}.get(v.lower(), v)
        for kind in (int, float):
            try:
                value = kind(v)
                break
            except ValueError:
                pass
        out[k] = value
    return out


def export_flags(spec) -> dict:
    """The ``export_onnx`` flags a method's needs ask for (its smallest export)."""
    from onnxcam.registry import NEEDS

    flags: dict = {}
    for n in (NEEDS[k] for k in spec.needs):
        if n.pixels:
            flags["input_gradient"] = True
        if n.rule:
            flags["rules"] = n.rule
        if n.output in ("fullgrad", "reciprocam"):
            flags[n.output] = True
    return flags


def measure(
    name: str, tmp: Path, repeats: int, extra: dict, sampling: dict, only: list[str] | None = None
) -> list[dict]:
    import time

    import onnxruntime as ort

    from onnxcam import METHODS, Explainer
    from onnxcam.export import export_onnx, plain_onnx
    from onnxcam.perturbation import PerturbationOptions

    net, kwargs = bench_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = plain_onnx(net, (1, 3, SIZE, SIZE))
    explainers: dict[str, tuple] = {}

    def explainer(method: str) -> tuple:
        """(Explainer, its counting session) of the smallest export that serves ``method``."""
        flags = {**export_flags(METHODS[method]), **extra}
        key = ",".join(f"{k}={v}" for k, v in sorted(flags.items())) or "plain"
        if key not in explainers:
            cam = tmp / f"{name}.{len(explainers)}.cam.onnx"
            export_onnx(src, cam, **kwargs, **flags)
            ex = Explainer(cam, device="cpu", session_options=threaded_options(THREADS))
            ex.session = CountingSession(ex.session, ex.info.input.name)
            explainers[key] = (ex, ex.session, key)
        return explainers[key]

    plain = ort.InferenceSession(src, threaded_options(THREADS), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    feeds = {plain.get_inputs()[0].name: x}

    opts = PerturbationOptions(**{"batch_size": 64, **sampling})

    def call(method: str):
        ex = explainer(method)[0]
        return lambda: ex.explain_tensor(x, method, perturbation=opts)

    def plain_ms(n: int = 5) -> float:
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            plain.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        return median_ms(ts)

    usable, refused, first = {}, {}, {}
    plain_ms()  # warm
    for m in only or METHODS:
        counter = explainer(m)[1]
        counter.runs = counter.rows = 0
        before = plain_ms()
        t0 = time.perf_counter()
        try:
            call(m)()
        except Exception as e:  # a method this export cannot serve is reported, not timed
            refused[m] = str(e).splitlines()[0]
            continue
        first[m] = (1000 * (time.perf_counter() - t0), (before + plain_ms()) / 2)
        usable[m] = (counter.runs, counter.rows)
        print(f"{name} {m:22s} first call {first[m][0]:9.1f} ms  runs {usable[m]}", flush=True)

    fast = [m for m in usable if first[m][0] < SLOW * first[m][1]]
    slow = [m for m in usable if m not in fast]
    base = {"plain": lambda: plain.run(None, feeds)}
    times = interleaved({**base, **{m: call(m) for m in fast}}, repeats=repeats, warmup=1)
    rows = []
    for group in (fast, slow):
        for m in group:
            if m in fast:
                ms, p_ms = median_ms(times[m]), median_ms(times["plain"])
            else:
                ms, p_ms = first[m]
            spec = METHODS[m]
            rows.append(
                {
                    "model": name,
                    "method": m,
                    "family": spec.family,
                    "paper": spec.paper,
                    "runs": usable[m][0],
                    "rows": usable[m][1],
                    "ms": ms,
                    "plain_ms": p_ms,
                    "vs_plain": ms / p_ms,
                    "timed": "interleaved" if m in fast else "one call",
                    "in_all": spec.in_all,
                    "export": explainer(m)[2],
                }
            )
            print(f"{name} {m:22s} {rows[-1]['vs_plain']:7.2f}x plain  runs {usable[m]}")
    for m, why in refused.items():
        rows.append({"model": name, "method": m, "refused": why})
        print(f"{name} {m:22s} refused: {why}")
    return rows


def main() -> None:
    ap = arguments(__doc__, 15, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--export", nargs="*", default=[], help="extra export options key=value")
    ap.add_argument(
        "--perturbation",
        nargs="*",
        default=["ss_samples=2", "is_steps=3", "rise_masks=1000"],
        help="PerturbationOptions key=value",
    )
    ap.add_argument("--out", default="method_table", help="results/<out>.json")
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    args = ap.parse_args()
    only = args.methods.split(",") if args.methods else None
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(
                name, Path(tmp), args.repeats, _parse(args.export), _parse(args.perturbation), only
            )
    cols = [
        ("model", "model"),
        ("method", "method"),
        ("family", "family"),
        ("runs", "runs"),
        ("rows", "rows"),
        ("ms", "median ms"),
        ("vs_plain", "/ plain"),
    ]
    print(markdown_table([r for r in rows if "refused" not in r], cols))
    extra = {"repeats": args.repeats, "size": SIZE, "perturbation": _parse(args.perturbation)}
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
