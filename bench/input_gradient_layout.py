"""What the ``If`` around the backward costs the input gradient: the shipped graph against
graph surgeries that are *not* shipped, one image, side by side.

onnxruntime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts
tensors back to NCHW wherever an op cannot take the blocked one — including every forward
activation that a subgraph (the gradient ``If``) reads as an outer-scope value. This script
measures how much of the saliency cost that is, on the ``--input-gradient`` export:

  * ``plain``: the unmodified model;
  * ``shipped mode 1`` / ``shipped saliency``: the export as written, forward only (mode 1)
    and one explaining run (mode 0) fetching the input gradient;
  * ``forward copy``: the export with the gradient ``If`` replaced by its empty else-branch
    (what mode 1 would cost if the forward read by no subgraph: the lower bound of a
    two-copy layout);
  * ``no If``: the ``If``'s then-branch inlined into the main graph (the explaining run with
    forward and backward in one graph, so onnxruntime keeps both in NCHWc);
  * ``no If + anchors``: the same, and every NCHW tensor that starts a backward chain
    (``ConvTranspose``, ``Expand``, ``ScatterElements`` outputs) passed through an identity
    depthwise 1×1 ``Conv``, so the chain after it — masks, sums, adjoint convolutions — stays
    in NCHWc.

All variants return the same input gradient (checked, |Δ| ≤ 1e-6 relative). The two
surgical layouts are what a two-copy export (forward-only graph + forward-and-backward graph
under one top-level ``If``) would run; onnxruntime prepacks a convolution's weights only when
they are initializers of the graph the convolution is in, so such an export needs every
convolution weight twice (docs/benchmarks.md, "The input gradient").

    python bench/input_gradient_layout.py [--repeats 20] [--models resnet50,efficientnet_lite0]
"""

from __future__ import annotations

import functools
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
CHAIN_STARTS = ("ConvTranspose", "Expand", "ScatterElements")


def _gradient_if(m):
    """(index, node, then-graph) of the main graph's largest ``If`` (the gradients')."""
    best = None
    for i, n in enumerate(m.graph.node):
        if n.op_type == "If":
            then = next(a.g for a in n.attribute if a.name == "then_branch")
            if best is None or len(then.node) > len(best[2].node):
                best = (i, n, then)
    return best


def replace_if(m, side: str):
    """A copy of ``m`` with the gradient ``If`` replaced by the nodes of one branch."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(m)
    i, node, _ = _gradient_if(out)
    body = next(a.g for a in node.attribute if a.name == f"{side}_branch")
    nodes = list(out.graph.node)
    inlined = list(body.node) + [
        helper.make_node("Identity", [inner.name], [outer])
        for inner, outer in zip(body.output, node.output, strict=True)
    ]
    del out.graph.node[:]
    out.graph.node.extend(nodes[:i] + inlined + nodes[i + 1 :])
    out.graph.initializer.extend(body.initializer)
    return out


def add_anchors(m):
    """Pass each 4-D float output of a ``CHAIN_STARTS`` node through an identity depthwise
    1×1 ``Conv`` (channels a multiple of 8: onnxruntime's NCHWc block)."""
    import onnx
    from onnx import helper, numpy_helper

    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in onnx.shape_inference.infer_shapes(m).graph.value_info
    }
    nodes, weights = [], {}
    for n in m.graph.node:
        nodes.append(n)
        shape = shapes.get(n.output[0]) if n.op_type in CHAIN_STARTS else None
        if not shape or len(shape) != 4 or shape[1] % 8:
            continue
        c = shape[1]
        if c not in weights:
            weights[c] = f"anchor/ones{c}"
            m.graph.initializer.append(
                numpy_helper.from_array(np.ones((c, 1, 1, 1), np.float32), weights[c])
            )
        raw = n.output[0] + "/before_anchor"
        nodes.append(
            helper.make_node("Conv", [raw, weights[c]], [n.output[0]], group=c, kernel_shape=[1, 1])
        )
        n.output[0] = raw
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def make_variants(name: str, tmp: Path) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    from onnxcam import contract
    from onnxcam.export import export_onnx

    net, kwargs = bench_model(name)
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    src, cam = tmp / f"{name}.onnx", tmp / f"{name}.saliency.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, torch.from_numpy(x), str(src), input_names=["input"],
            output_names=["logits"], opset_version=17, dynamo=False,
        )  # fmt: skip
    res = export_onnx(src, cam, input_gradient=True, **kwargs)
    grad = contract.gradient_name(len(res.targets) - 1)
    m = onnx.load(str(cam))
    models = {
        "forward copy": replace_if(m, "else"),
        "no If": replace_if(m, "then"),
        "no If + anchors": add_anchors(replace_if(m, "then")),
    }

    def sess(model):
        data = model if isinstance(model, str) else model.SerializeToString()
        return ort.InferenceSession(
            data, threaded_options(THREADS), providers=["CPUExecutionProvider"]
        )

    feed = {"input": x}
    mode1 = {"input": x, contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    plain, shipped = sess(str(src)), sess(str(cam))
    s = {k: sess(v) for k, v in models.items()}
    want = shipped.run([grad], feed)[0]
    for k in ("no If", "no If + anchors"):
        got = s[k].run([grad], feed)[0]
        off = float(np.abs(got - want).max() / np.abs(want).max())
        assert off <= 1e-6, f"{name} {k}: the input gradient differs by {off:.3g} (relative)"
    return {
        "plain": functools.partial(plain.run, None, feed),
        "shipped mode 1": functools.partial(shipped.run, ["logits"], mode1),
        "forward copy": functools.partial(s["forward copy"].run, ["logits"], mode1),
        "shipped saliency": functools.partial(shipped.run, [grad], feed),
        "no If": functools.partial(s["no If"].run, [grad], feed),
        "no If + anchors": functools.partial(s["no If + anchors"].run, [grad], feed),
    }


def main() -> None:
    ap = arguments(__doc__, 20, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--out", default="input_gradient_layout", help="results/<out>.json")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            times = interleaved(make_variants(name, Path(tmp)), repeats=args.repeats, warmup=2)
        base = median_ms(times["plain"])
        for variant, ts in times.items():
            t = median_ms(ts)
            rows.append({"model": name, "variant": variant, "ms": t, "vs_plain": t / base})
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
