"""ReciproCAM: onnxcam's in-graph maps next to OpenVINO XAI's, batch 1 and 8.

EfficientNet-Lite0 (ImageNet weights) and ResNet-50 (random init) at 224×224, 2 threads, the
same plain ONNX file (``plain_onnx``, dynamic batch) on both sides; each call returns the
predictions and the maps of every image:
  * ``onnxruntime:plain`` / ``openvino:plain``: the unmodified model (each runtime's floor);
  * ``onnxcam:reciprocam``: one mode-4 ``session.run`` of the ``--reciprocam`` export fetching
    the logits and ``onnxcam_reciprocam_0`` (the maps of the explained classes);
  * ``onnxcam:explain``: ``Explainer.explain_tensor(x, "reciprocam")`` (that one mode-4 run,
    the classes taken from it, plus the host's normalisation of the maps);
  * ``openvino-xai:reciprocam``: OpenVINO XAI 1.1 ``insert_xai(..., Method.RECIPROCAM,
    embed_scaling=False)`` compiled for CPU (f32 precision hint, 2 threads), in its own venv
    (``--ovxai-python``, default ``$ONNXCAM_OVXAI_PYTHON``); its branch reshapes to
    ``[1, classes, h, w]``, so a batch is one inference per image. It maps every class.

OpenVINO XAI cannot insert into the plain torch export of EfficientNet-Lite0 ("Model references
undeclared parameters"): the head's ``x.view(x.size(0), -1)`` reads the batch from the input,
and the inserted branch's clone still refers to it. On its side the Reshape's shape is made the
constant ``[0, -1]`` first (``constant_batch_reshapes``; same numbers). The OpenVINO timings
come from a subprocess (interleaved among themselves), the onnxruntime ones from this one.
Both sides' maps are compared (max |Δ| of the explained class's map, raw logits).

    python bench/reciprocam.py [--repeats 10] [--models efficientnet_lite0,resnet50]
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
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

OV_SCRIPT = """
import json, sys, time, random
import numpy as np, openvino as ov, openvino_xai as xai
path, x_path, out, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
threads = sys.argv[5]
cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
       "PERFORMANCE_HINT": "LATENCY"}
core = ov.Core()
model = core.read_model(path)
plain = core.compile_model(model, "CPU", cfg)
mx = xai.insert_xai(core.read_model(path), task=xai.Task.CLASSIFICATION,
                    explain_method=xai.Method.RECIPROCAM, embed_scaling=False)
cm = core.compile_model(mx, "CPU", cfg)
x = np.load(x_path)
def run_plain():
    return plain(x)
def run_xai():  # one image per inference (the branch is [1, classes, h, w])
    return [cm(x[i:i + 1]) for i in range(len(x))]
variants = {"openvino:plain": run_plain, "openvino-xai:reciprocam": run_xai}
for _ in range(2):
    for f in variants.values(): f()
times = {n: [] for n in variants}
rnd = random.Random(0)
for _ in range(repeats):
    order = list(variants); rnd.shuffle(order)
    for n in order:
        t0, c0 = time.perf_counter(), time.process_time()
        variants[n]()
        times[n].append((time.perf_counter() - t0, time.process_time() - c0))
maps = np.concatenate([r["saliency_map"] for r in run_xai()])
np.save(out, maps)
print(json.dumps({"times": times, "openvino": ov.__version__}))
"""


def constant_batch_reshapes(src: Path, dst: Path) -> int:
    """Copy ``src`` with each Reshape whose target is Concat(Unsqueeze(Gather(Shape(·), 0)),
    constants…) given the constant target ``[0, constants…]`` (0: keep the batch). Returns how
    many were changed."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    changed = 0
    for n in g.node:
        cat = producer.get(n.input[1]) if n.op_type == "Reshape" else None
        if cat is None or cat.op_type != "Concat" or not all(i in consts for i in cat.input[1:]):
            continue
        unsq = producer.get(cat.input[0])
        gather = producer.get(unsq.input[0]) if unsq is not None else None
        if (
            gather is None
            or gather.op_type != "Gather"
            or producer[gather.input[0]].op_type != ("Shape")
        ):
            continue
        target = np.concatenate([[0], *(consts[i].reshape(-1) for i in cat.input[1:])])
        name = f"{n.name}/constant_shape"
        g.initializer.append(numpy_helper.from_array(target.astype(np.int64), name))
        n.input[1] = name
        changed += 1
    onnx.save(m, str(dst))
    return changed


def measure(name: str, batches: list[int], repeats: int, ovxai: str | None, tmp: Path) -> list:
    import onnxruntime as ort

    from onnxcam import Explainer, contract
    from onnxcam.export import export_onnx, plain_onnx

    net, kw = bench_model(name)
    src, cam = tmp / f"{name}.onnx", tmp / f"{name}.cam.onnx"
    src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    res = export_onnx(src, cam, reciprocam=True, **kw)
    t = res.targets[0]
    ov_src = tmp / f"{name}.ov.onnx"
    fixed = constant_batch_reshapes(src, ov_src)
    cpu = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(src), threaded_options(THREADS), providers=cpu)
    s = ort.InferenceSession(str(cam), threaded_options(THREADS), providers=cpu)
    ex = Explainer(cam, device="cpu", session_options=threaded_options(THREADS))
    mode4 = np.array(contract.MODE_RECIPROCAM, dtype=np.int64)
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
        variants = {
            "onnxruntime:plain": functools.partial(plain.run, None, {"input": x}),
            "onnxcam:reciprocam": functools.partial(
                s.run, ["logits", t.reciprocam], {"input": x, contract.MODE_INPUT: mode4}
            ),
            "onnxcam:explain": functools.partial(ex.explain_tensor, x, "reciprocam"),
        }
        times = interleaved(variants, repeats=repeats, warmup=2, cpu=True)
        extra = {"target": t.name, "gap_shortcut": t.reciprocam_gap, "reshapes_fixed": fixed}
        if ovxai:
            np.save(tmp / "x.npy", x)
            r = subprocess.run(
                [ovxai, "-c", OV_SCRIPT, str(ov_src), str(tmp / "x.npy"), str(tmp / "ov.npy"),
                 str(repeats), str(THREADS)],
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            got = json.loads(r.stdout.strip().splitlines()[-1])
            times |= got["times"]
            cls, m = s.run([contract.CLASS_OUTPUT, t.reciprocam], {"input": x,
                           contract.MODE_INPUT: mode4})  # fmt: skip
            ov = np.load(tmp / "ov.npy")[np.arange(batch), cls]
            extra["max_abs_diff_vs_ovxai"] = float(np.abs(ov - m).max())
            extra["map_scale"] = float(np.abs(m).max())
        wall = {v: [w for w, _ in ts] for v, ts in times.items()}
        cpu = {v: [c for _, c in ts] for v, ts in times.items()}
        for variant in times:
            ms = median_ms(wall[variant])
            rows.append(
                {"model": name, "batch": batch, "variant": variant, "ms": ms,
                 "ms_per_image": ms / batch, "cpu_ms": median_ms(cpu[variant]), **extra}
            )  # fmt: skip
            print(f"{name} b{batch} {variant:26s} {ms:8.1f} ms  cpu {median_ms(cpu[variant]):8.1f}"
                  f" ms", flush=True)  # fmt: skip
        print(extra, flush=True)
    return rows


def main() -> None:
    ap = arguments(__doc__, 10, "efficientnet_lite0,resnet50")
    ap.add_argument("--ovxai-python", default=os.environ.get("ONNXCAM_OVXAI_PYTHON"))
    ap.add_argument("--out", default="reciprocam", help="results/<out>.json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(name, batches, args.repeats, args.ovxai_python, Path(tmp))
    cols = [
        ("model", "model"),
        ("batch", "batch"),
        ("variant", "variant"),
        ("ms", "median ms"),
        ("ms_per_image", "ms / image"),
        ("cpu_ms", "median CPU ms"),
    ]
    print(markdown_table(rows, cols))
    extra = {"repeats": args.repeats, "threads": THREADS, "size": SIZE}
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
