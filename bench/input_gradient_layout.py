"""The input gradient in the two layouts: the default export (one forward in the main graph,
the backward in an ``If``) and ``export --forward-copy`` (``export/layout.py``: forward-only
and explaining runs as two graphs), one image, side by side.

onnxruntime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts back to
NCHW every tensor a subgraph reads from outside — in the main graph, on every run. The input
gradient's backward reads every activation (one ReLU mask each), so in the default layout
forward-only runs pay those conversions and the backward's chains fall apart into NCHW pieces.
Variants:

  * ``plain``: the unmodified model;
  * ``one graph mode 1`` / ``forward copy mode 1``: forward only (mode 1);
  * ``one graph saliency`` / ``forward copy saliency``: one explaining run (mode 0) fetching
    the input gradient.

The input gradients agree (checked, ≤ 1e-5 relative); the file sizes are reported. The source
model has a dynamic batch (``plain_onnx``), as users' models do.

    python bench/input_gradient_layout.py [--repeats 20] [--models resnet50,efficientnet_lite0]
"""

from __future__ import annotations

import functools
import sys
import tempfile
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


def make_variants(name: str, tmp: Path) -> tuple[dict, dict]:
    import onnxruntime as ort

    from onnxcam import contract
    from onnxcam.export import export_onnx, plain_onnx

    net, kwargs = bench_model(name)
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    src, one, two = (tmp / f"{name}.{k}.onnx" for k in ("plain", "one", "two"))
    src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    res = export_onnx(src, one, input_gradient=True, forward_copy=False, **kwargs)
    export_onnx(src, two, input_gradient=True, forward_copy=True, **kwargs)
    grad = contract.gradient_name(len(res.targets) - 1)
    feed = {"input": x}

    def sess(model):
        data = model if isinstance(model, str) else model.SerializeToString()
        cpu = ["CPUExecutionProvider"]
        return ort.InferenceSession(data, threaded_options(THREADS), providers=cpu)

    mode1 = {"input": x, contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    plain, s1, s2 = sess(str(src)), sess(str(one)), sess(str(two))
    want = s1.run([grad], feed)[0]
    off = float(np.abs(s2.run([grad], feed)[0] - want).max() / np.abs(want).max())
    assert off <= 1e-5, f"{name}: the forward copy's input gradient differs by {off:.3g}"
    sizes = {k: p.stat().st_size / 1e6 for k, p in (("plain", src), ("one", one), ("two", two))}
    return {
        "plain": functools.partial(plain.run, None, feed),
        "one graph mode 1": functools.partial(s1.run, ["logits"], mode1),
        "forward copy mode 1": functools.partial(s2.run, ["logits"], mode1),
        "one graph saliency": functools.partial(s1.run, [grad], feed),
        "forward copy saliency": functools.partial(s2.run, [grad], feed),
    }, sizes


def main() -> None:
    ap = arguments(__doc__, 20, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--out", default="input_gradient_layout", help="results/<out>.json")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            variants, sizes = make_variants(name, Path(tmp))
            times = interleaved(variants, repeats=args.repeats, warmup=2)
        print(f"{name} file MB: " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
        base = median_ms(times["plain"])
        for variant, ts in times.items():
            t = median_ms(ts)
            row = {"model": name, "variant": variant, "ms": t, "vs_plain": t / base}
            rows.append(row | {f"{k}_mb": v for k, v in sizes.items()})
            print(f"{name} {variant:18s} {t:8.1f} ms  ({t / base:5.2f}x plain)", flush=True)
    cols = [
        ("model", "model"),
        ("variant", "variant"),
        ("ms", "median ms"),
        ("vs_plain", "/ plain"),
    ]
    print(markdown_table(rows, cols))
    extra = {"repeats": args.repeats, "threads": THREADS, "size": SIZE}
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
