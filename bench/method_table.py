"""Every registered method, alone, on one image: its cost against plain inference and its runs.

For ResNet-50 (random init) and EfficientNet-Lite0 (real weights), 224×224, batch 1, 2 threads:
the model is exported once with everything any method needs (``--input-gradient``,
``--fullgrad``, ``--rules guided,deconvnet``, plus ``--export`` options given here), and each
method of ``onnxcam.METHODS`` is timed as ``Explainer.explain_tensor(x, method)`` (the run(s),
the method on the host, the map at the input size), interleaved with plain onnxruntime
inference of the unmodified model. Recorded per method:

  * ``ms`` (median) and ``vs_plain``: the cost of one explanation in plain inferences;
  * ``runs``: ``session.run`` calls per image, and ``rows``: the image rows those runs fed
    (a batched run of 64 masked copies is one run and 64 rows);
  * the method's family and paper (from the registry).

Methods whose cost is many inferences (the sampled and perturbation families) are timed with
``--slow-repeats`` (default 3) in their own interleaved pass with plain inference.

    python bench/method_table.py [--repeats 15] [--slow-repeats 3]
        [--models resnet50,efficientnet_lite0] [--export reciprocam=true]
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from harness import arguments, interleaved, markdown_table, median_ms, save, session_options

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


def ort_options():
    opts = session_options()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return opts


def model(name: str):
    """(torch module in eval mode, export keyword arguments)."""
    import torch
    import torchvision

    if name == "efficientnet_lite0":
        from models import efficientnet_lite0

        return efficientnet_lite0.build(), dict(efficientnet_lite0.PREPROCESSING)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval(), {"preset": "torch"}


def _parse(pairs: list[str]) -> dict:
    """``key=value`` export options (true/false become booleans)."""
    out = {}
    for p in pairs:
        k, _, v = p.partition("=")
        out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out


def measure(name: str, tmp: Path, repeats: int, slow_repeats: int, extra: dict) -> list[dict]:
    import onnxruntime as ort

    from onnxcam import METHODS, Explainer
    from onnxcam.export import export_onnx, plain_onnx

    net, kwargs = model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = plain_onnx(net, (1, 3, SIZE, SIZE))
    cam = tmp / f"{name}.cam.onnx"
    export_onnx(
        src, cam, input_gradient=True, fullgrad=True, rules="guided,deconvnet", **kwargs, **extra
    )
    plain = ort.InferenceSession(src, ort_options(), providers=["CPUExecutionProvider"])
    ex = Explainer(cam, device="cpu", session_options=ort_options())
    counter = CountingSession(ex.session, ex.info.input.name)
    ex.session = counter
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    feeds = {plain.get_inputs()[0].name: x}

    def call(method: str):
        return lambda: ex.explain_tensor(x, method)

    usable, refused = {}, {}
    for m in METHODS:
        counter.runs = counter.rows = 0
        try:
            ex.explain_tensor(x, m)
        except Exception as e:  # a method this export cannot serve is reported, not timed
            refused[m] = str(e).splitlines()[0]
            continue
        usable[m] = (counter.runs, counter.rows)

    base = {"plain": lambda: plain.run(None, feeds)}
    first = interleaved({**base, **{m: call(m) for m in usable}}, repeats=1, warmup=0)
    fast = [m for m in usable if first[m][0] < SLOW * first["plain"][0]]
    slow = [m for m in usable if m not in fast]
    times = interleaved({**base, **{m: call(m) for m in fast}}, repeats=repeats, warmup=2)
    slow_times = interleaved({**base, **{m: call(m) for m in slow}}, repeats=slow_repeats, warmup=0)
    rows = []
    for group, ts in ((fast, times), (slow, slow_times)):
        plain_ms = median_ms(ts["plain"])
        for m in group:
            spec = METHODS[m]
            rows.append(
                {
                    "model": name,
                    "method": m,
                    "family": spec.family,
                    "paper": spec.paper,
                    "runs": usable[m][0],
                    "rows": usable[m][1],
                    "ms": median_ms(ts[m]),
                    "plain_ms": plain_ms,
                    "vs_plain": median_ms(ts[m]) / plain_ms,
                    "in_all": spec.in_all,
                }
            )
            print(f"{name} {m:22s} {rows[-1]['vs_plain']:7.2f}x plain  runs {usable[m]}")
    for m, why in refused.items():
        rows.append({"model": name, "method": m, "refused": why})
        print(f"{name} {m:22s} refused: {why}")
    return rows


def main() -> None:
    ap = arguments(__doc__, 15, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--slow-repeats", type=int, default=3)
    ap.add_argument("--export", nargs="*", default=[], help="extra export options key=value")
    ap.add_argument("--out", default="method_table", help="results/<out>.json")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(name, Path(tmp), args.repeats, args.slow_repeats, _parse(args.export))
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
    extra = {"repeats": args.repeats, "slow_repeats": args.slow_repeats, "size": SIZE}
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
