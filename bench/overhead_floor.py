"""How low can "all gradient maps at once" go? The parts of its cost that do not depend on how
the maps are computed, side by side with plain inference (onnxruntime CPU, one run).

Per model and batch, median latency per image of
  * ``plain``: the unmodified model (the floor of every ratio);
  * ``plain+host``: the same plus the least a Python runtime does with the result (top-1 of the
    logits and one small Python object per image) — code that runs cold after the network;
  * ``graph``: the onnxcam graph without heatmaps, fetching prediction, class, A and G;
  * ``graph-forward``: the same graph in mode 1 (the gradient branch skipped): ``graph`` −
    ``graph-forward`` is what the gradient itself costs (for a ViT, the backward through its
    last block, which the default layer — the last ``norm1`` — sits before);
  * ``graph+tiny``: that run plus a second, trivial session run (a [B, 1, 1] MatMul): the fixed
    cost of the second call in the next variant;
  * ``graph+writes``: that graph's run plus, in a second small session fed with a constant, the
    writing of eight [B, 224, 224] float32 maps by one MatMul each (the last step of any
    in-graph or host resize; ``graph+writes`` − ``graph+tiny`` is a lower bound for producing
    the maps at input resolution after the network);
  * ``graph+heatmaps``: the graph exported with the eight heatmaps (run only);
  * ``all+heatmaps``: the Python runtime returning the eight maps from that graph.

    python bench/overhead_floor.py [--repeats 40] [--models lite0,resnet50]
    python bench/overhead_floor.py --models vit_tiny,vit_small,swin_tiny --batches 1 \
        --out overhead_floor_tokens
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))
from harness import arguments, interleaved, markdown_table, median_ms, save, session
from runtime_methods import explainers


def writes_model(batch: int, maps: int = 8, size: int = 224, feature: int = 7) -> bytes:
    """A graph whose only work is ``maps`` MatMuls [B, size, feature] @ [feature, size]."""
    from onnx import TensorProto, helper, numpy_helper

    rxt = numpy_helper.from_array(np.full((feature, size), 0.1, np.float32), "rxt")
    nodes = [helper.make_node("MatMul", ["tall", "rxt"], [f"map{i}"]) for i in range(maps)]
    graph = helper.make_graph(
        nodes,
        "writes",
        [helper.make_tensor_value_info("tall", TensorProto.FLOAT, [batch, size, feature])],
        [helper.make_tensor_value_info(f"map{i}", TensorProto.FLOAT, None) for i in range(maps)],
        initializer=[rxt],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_variants(plain, ex, ex_heat, maps: list[str], x: np.ndarray) -> dict:
    """name → zero-argument callable doing one batch ``x`` (see the module docstring)."""
    batch = len(x)
    t = ex.info.targets[0]
    fetch = [ex.info.logits_output, "onnxcam_class", t.activation, t.gradient]
    heat_fetch = [ex_heat.info.logits_output, "onnxcam_class"]
    heat_fetch += [ex_heat.info.targets[0].heatmaps[m] for m in maps]
    writes = session(writes_model(batch))
    tall = np.full((batch, 224, 7), 0.5, np.float32)
    tiny = session(writes_model(batch, maps=1, size=1, feature=1))
    small = np.full((batch, 1, 1), 0.5, np.float32)

    mode1 = np.array(1, dtype=np.int64)

    def plain_host():
        logits = plain.run(None, {"input": x})[0]
        return [(int(k), "label") for k in np.argmax(logits, axis=1)]

    def graph_writes():
        ex.session.run(fetch, {"input": x})
        writes.run(None, {"tall": tall})

    def graph_tiny():
        ex.session.run(fetch, {"input": x})
        tiny.run(None, {"tall": small})

    def all_heat():
        for r in ex_heat.explain_tensor(x, maps):
            for m in r.maps.values():
                _ = m.input

    return {
        "plain": lambda: plain.run(None, {"input": x}),
        "plain+host": plain_host,
        "graph": lambda: ex.session.run(fetch, {"input": x}),
        "graph-forward": lambda: ex.session.run(fetch[:3], {"input": x, "onnxcam_mode": mode1}),
        "graph+tiny": graph_tiny,
        "graph+writes": graph_writes,
        "graph+heatmaps": lambda: ex_heat.session.run(heat_fetch, {"input": x}),
        "all+heatmaps": all_heat,
    }


def main() -> None:
    ap = arguments(__doc__, 40, "lite0,resnet50")
    ap.add_argument("--out", default="overhead_floor", help="results/<out>.json")
    args = ap.parse_args()

    ort.set_default_logger_severity(3)
    rows = []
    for name in args.models.split(","):
        _, _, _, plain_bytes, ex, ex_heat, maps = explainers(name)
        plain = session(plain_bytes)
        for batch in map(int, args.batches.split(",")):
            x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
            variants = make_variants(plain, ex, ex_heat, maps, x)
            times = interleaved(variants, repeats=args.repeats, warmup=3)
            base = median_ms(times["plain"])
            row = {"model": name, "batch": batch, "plain_ms": base / batch}
            for k in variants:
                if k != "plain":
                    row[k] = median_ms(times[k]) / base
            rows.append(row)
            print(row, flush=True)
    cols = [("model", "model"), ("batch", "batch"), ("plain_ms", "plain ms/img")]
    cols += [(k, f"{k} / plain") for k in rows[0] if k not in ("model", "batch", "plain_ms")]
    print(markdown_table(rows, cols))
    print("saved", save(args.out, rows, {"repeats": args.repeats, "models": args.models}))


if __name__ == "__main__":
    main()
