"""Where the input gradient's time goes, and the floor it cannot go below on onnxruntime's CPU
provider: onnxruntime's own profiler over the plain model and over one explaining run of the
``--input-gradient`` export (forward copy, the default), kernel time summed per kind of node.

Kinds: ``forward conv`` (the model's own convolutions, in the explaining branch), ``adjoint
conv`` (a stride-1 convolution's adjoint, a ``Conv`` with the flipped kernel), ``strided
adjoint`` (a strided convolution's ``ConvTranspose``), ``masks`` (the rectifier masks:
``HardSigmoid`` steps and their ``Mul``), ``pool`` (MaxPool with its ``Indices`` and the
``ScatterElements`` of its adjoint), ``layout`` (NCHWc reorders), ``other``.

The floor is a lower bound built from measured pieces, each taken at its most favourable
reading:

* the forward: the plain model's own time (a saliency run must compute it);
* every stride-1 convolution's adjoint at its measured time (a ``Conv`` with the flipped kernel:
  the same kernels as the forward), a strided one's at its *forward* convolution's time in the
  plain run (no standard ONNX formulation reaches that on this provider —
  ``docs/benchmarks.md`` lists the ones tried);
* each rectifier mask at one unary pass over the activation plus one multiply, the measured
  cost of half of what the exported masks run (a ReLU6 mask needs two one-sided steps: no
  standard op makes a two-sided step; a ReLU's needs one of each);
* the rest (pooling adjoints, the head) left out.

    python bench/input_gradient_floor.py [--repeats 20] [--models resnet50,efficientnet_lite0]
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from harness import arguments, bench_model, markdown_table, save, threaded_options

THREADS = 2
SIZE = 224


def _strided(event: dict) -> bool:
    """Whether a profiled convolution shrinks its input's height (a strided one)."""
    ins, outs = event["args"].get("input_type_shape"), event["args"].get("output_type_shape")
    try:
        h_in = next(iter(ins[0].values()))[2]
        h_out = next(iter(outs[0].values()))[2]
    except (TypeError, IndexError, StopIteration):
        return False
    return h_out < h_in


def kind(op: str, name: str, event: dict) -> str:
    """The bucket of one profiled node."""
    if op in ("Conv", "FusedConv"):
        if "/grad/" in name and "anchor" not in name:
            return "adjoint conv"
        return "strided forward conv" if _strided(event) else "forward conv"
    if op == "ConvTranspose":
        return "strided adjoint"
    if op in ("HardSigmoid", "Mul"):
        return "masks"
    if op in ("MaxPool", "ScatterElements"):
        return "pool"
    if op.startswith("Reorder"):
        return "layout"
    return "other"


def profile(path: Path, feeds: dict, fetch: list[str] | None, repeats: int) -> dict[str, float]:
    """Milliseconds per run of each kind (onnxruntime's profiler; ``If`` excluded, its nodes
    counted), and ``run`` the whole ``model_run``."""
    import onnxruntime as ort

    warmup = 3
    opts = threaded_options(THREADS)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / "profile")
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup + repeats):
        s.run(fetch, feeds)
    profile_file = Path(s.end_profiling())
    events = json.loads(profile_file.read_text())
    profile_file.unlink()
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    after = starts[warmup]  # the warm-up runs are not counted
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e["ts"] < after:
            continue
        if e.get("cat") == "Session" and e["name"] == "model_run":
            out["run"] += e["dur"] / 1e3 / repeats
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        if op != "If":
            out[kind(op, e["name"], e)] += e["dur"] / 1e3 / repeats
    return dict(out)


def main() -> None:
    ap = arguments(__doc__, 20, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--out", default="input_gradient_floor", help="results/<out>.json")
    args = ap.parse_args()

    from onnxcam import contract
    from onnxcam.export import export_onnx, plain_onnx

    rows = []
    for name in args.models.split(","):
        net, kwargs = bench_model(name)
        x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            src, cam = Path(tmp) / "plain.onnx", Path(tmp) / "cam.onnx"
            src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
            res = export_onnx(src, cam, input_gradient=True, **kwargs)
            grad = contract.gradient_name(len(res.targets) - 1)
            plain = profile(src, {"input": x}, None, args.repeats)
            sal = profile(cam, {"input": x}, [grad], args.repeats)
        forward = plain["run"]
        # the strided convolutions' forward time, from the plain profile, by layer name
        floor = (
            forward
            + sal.get("adjoint conv", 0.0)
            + plain.get("strided forward conv", 0.0)
            + 0.5 * sal.get("masks", 0.0)
        )
        row = {"model": name, "plain_ms": forward, "saliency_ms": sal["run"]}
        row |= {k.replace(" ", "_") + "_ms": v for k, v in sal.items() if k not in ("run",)}
        row |= {"floor_ms": floor, "floor_vs_plain": floor / forward}
        row["saliency_vs_plain"] = sal["run"] / forward
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    cols = [
        ("model", "model"),
        ("plain_ms", "plain ms"),
        ("saliency_ms", "saliency ms"),
        ("forward_conv_ms", "forward conv"),
        ("strided_forward_conv_ms", "strided fwd conv"),
        ("adjoint_conv_ms", "adjoint conv"),
        ("strided_adjoint_ms", "strided adjoint"),
        ("masks_ms", "masks"),
        ("pool_ms", "pool"),
        ("layout_ms", "layout"),
        ("other_ms", "other"),
        ("saliency_vs_plain", "saliency / plain"),
        ("floor_vs_plain", "floor / plain"),
    ]
    print(markdown_table(rows, cols))
    print("saved", save(args.out, rows, {"repeats": args.repeats, "threads": THREADS}))


if __name__ == "__main__":
    main()
