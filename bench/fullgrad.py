"""What FullGrad costs next to plain inference and saliency, one image.

ResNet-50 (random init), 224×224, batch 1, 2 threads, interleaved, median:
  * ``plain``: onnxruntime inference of the unmodified ONNX export (the floor);
  * ``onnxcam:forward``: the ``--fullgrad`` export in mode 1 (forward only: what a client that
    does not explain pays for having the branch);
  * ``onnxcam:saliency``: one mode-0 run of the ``--input-gradient`` export fetching the input
    gradient (the full backward);
  * ``onnxcam:fullgrad-run``: one mode-0 run of the ``--fullgrad`` export fetching the input
    gradient and the bias map (the same backward plus ψ of every Conv bias term);
  * ``onnxcam:fullgrad``: ``Explainer.explain_tensor(x, "fullgrad")`` (that run + the input term
    and the normalisation on the host);
  * ``pytorch-grad-cam``: its ``FullGrad`` on the torch model (2 threads), timed after the
    others, 3 runs (it resizes every channel of every layer with OpenCV: seconds per image).
Ratios: each variant over ``plain``. Besides wall time, each call's process CPU time (all
threads; spinning is off) is recorded: on a shared, loaded machine the wall times of one run
spread by ±50% while the CPU time a call needs stays put, so the CPU-time ratios are the
comparison to read there.

    python bench/fullgrad.py [--repeats 15] [--models resnet50]
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's workers sleep between variants
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from harness import arguments, interleaved, markdown_table, median_ms, save, session_options

THREADS = 2
SIZE = 224


def ort_options():
    opts = session_options()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return opts


def make_variants(name: str, tmp: Path) -> tuple[dict, dict, int]:
    """The interleaved callables, the slow peer's, and how many layers the bias map sums."""
    import onnxruntime as ort
    import torch
    import torchvision
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from onnxcam import Explainer, contract
    from onnxcam.export import export_onnx

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    src = tmp / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.from_numpy(x),
            str(src),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    sal, full = tmp / f"{name}.saliency.onnx", tmp / f"{name}.fullgrad.onnx"
    export_onnx(src, sal, input_gradient=True, preset="torch")
    res = export_onnx(src, full, fullgrad=True, preset="torch")
    pixel = res.targets[-1]

    def session(path: Path):
        return ort.InferenceSession(str(path), ort_options(), providers=["CPUExecutionProvider"])

    plain, s, f = session(src), session(sal), session(full)
    ex = Explainer(full, device="cpu", session_options=ort_options())
    mode1 = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    cls = int(plain.run(None, {"input": x})[0].argmax())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "target_layers is ignored in FullGrad"
        fg = FullGrad(net, [])
    xt, targets = torch.from_numpy(x), [ClassifierOutputTarget(cls)]

    variants = {
        "plain": functools.partial(plain.run, None, {"input": x}),
        "onnxcam:forward": functools.partial(f.run, ["logits"], {"input": x, **mode1}),
        "onnxcam:saliency": functools.partial(s.run, [pixel.gradient], {"input": x}),
        "onnxcam:fullgrad-run": functools.partial(
            f.run, [pixel.gradient, pixel.fullgrad], {"input": x}
        ),
        "onnxcam:fullgrad": functools.partial(ex.explain_tensor, x, "fullgrad"),
    }
    peer = {"pytorch-grad-cam": functools.partial(fg, xt, targets)}
    return variants, peer, pixel.fullgrad_layers


def main() -> None:
    ap = arguments(__doc__, 15, "resnet50", batches=None)
    ap.add_argument("--out", default="fullgrad", help="results/<out>.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    rows = []
    layers = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            variants, peer, layers[name] = make_variants(name, Path(tmp))
            times = interleaved(variants, repeats=args.repeats, warmup=2, cpu=True)
            times |= interleaved(peer, repeats=min(3, args.repeats), warmup=1, cpu=True)
        wall = {v: [w for w, _ in ts] for v, ts in times.items()}
        cpu = {v: [c for _, c in ts] for v, ts in times.items()}
        base, base_cpu = median_ms(wall["plain"]), median_ms(cpu["plain"])
        for variant in times:
            t, c = median_ms(wall[variant]), median_ms(cpu[variant])
            rows.append(
                {
                    "model": name,
                    "variant": variant,
                    "ms": t,
                    "p25_ms": 1000 * float(np.percentile(wall[variant], 25)),
                    "p75_ms": 1000 * float(np.percentile(wall[variant], 75)),
                    "vs_plain": t / base,
                    "cpu_ms": c,
                    "cpu_vs_plain": c / base_cpu,
                }
            )
            print(
                f"{name} {variant:22s} {t:8.1f} ms ({t / base:5.2f}x)  cpu {c:8.1f} ms "
                f"({c / base_cpu:5.2f}x plain)",
                flush=True,
            )
    cols = [
        ("model", "model"),
        ("variant", "variant"),
        ("ms", "median ms"),
        ("p25_ms", "p25 ms"),
        ("p75_ms", "p75 ms"),
        ("vs_plain", "/ plain"),
        ("cpu_ms", "median CPU ms"),
        ("cpu_vs_plain", "CPU / plain"),
    ]
    print(markdown_table(rows, cols))
    extra = {
        "repeats": args.repeats,
        "threads": THREADS,
        "size": SIZE,
        "batch": 1,
        "bias_layers": layers,
        "torch": torch.__version__,
    }
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
