"""The input gradient (saliency) in the graph vs captum and onnx-ad, one image, side by side.

For each model (ResNet-50 random init, EfficientNet-Lite0 with its real weights; 224×224,
batch 1, 2 threads, interleaved, median):
  * ``plain``: onnxruntime inference of the unmodified ONNX export (the floor);
  * ``onnxcam:forward``: the ``--input-gradient --rules guided`` export in mode 1 (forward only:
    the gradient branch skipped; what a forward-only client pays for having it);
  * ``onnxcam:saliency``: one mode-0 run of the ``--input-gradient`` export fetching the input
    gradient (the prediction, the class, the gradient at the layer and at the input);
  * ``onnxcam:explain``: ``Explainer.explain_tensor(x, "saliency")`` (that run + the map);
  * ``onnxcam:guided``: one mode-0 run of the ``--rules guided`` export (two backward passes:
    the exact one and Guided Backprop's);
  * ``onnx-ad``: onnx-ad's reverse pass of the plain model (``reverse``: x, adj_logits →
    logits, adj_input), fed the same one-hot seed;
  * ``captum``: captum ``Saliency`` on the torch model (2 threads);
  * ``torch:forward``: the torch model's forward (2 threads).
Ratios: each variant over ``plain``.

Threading: by default onnxruntime's workers sleep between parallel sections (spin-waiting
off, ``harness.session_options``), so that interleaved variants do not steal each other's
cores. ``--spinning`` keeps onnxruntime's own default (workers spin-wait, what
``Explainer`` and a plain ``InferenceSession`` use) and times each variant in blocks of 4
calls, the first of each block discarded: a backward of a few hundred small nodes pays a
worker wake-up per node when they sleep, so the two settings bracket the ratio.

    python bench/input_gradient.py [--repeats 20] [--models resnet50,efficientnet_lite0]
        [--spinning]
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


def make_variants(name: str, tmp: Path, spinning: bool = False) -> dict:
    import onnx
    import onnxruntime as ort
    import torch
    from captum.attr import Saliency
    from onnx_ad import reverse

    from onnxcam import Explainer, contract
    from onnxcam.export import export_onnx

    net, kwargs = bench_model(name)
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
    cam, guided = tmp / f"{name}.saliency.onnx", tmp / f"{name}.guided.onnx"
    export_onnx(src, cam, input_gradient=True, **kwargs)
    export_onnx(src, guided, rules="guided", **kwargs)

    cpu = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(src), threaded_options(THREADS, spinning), providers=cpu)
    s = ort.InferenceSession(str(cam), threaded_options(THREADS, spinning), providers=cpu)
    g = ort.InferenceSession(str(guided), threaded_options(THREADS, spinning), providers=cpu)
    ex = Explainer(cam, device="cpu", session_options=threaded_options(THREADS, spinning))
    k = len(ex.info.targets) - 1
    grad = contract.gradient_name(k)
    rule = contract.RULE_GRADIENT_OUTPUT.format(rule="guided", k=k)
    mode1 = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}

    m = onnx.load(str(src))
    adjoint = reverse(onnx.shape_inference.infer_shapes(m))
    ad = ort.InferenceSession(adjoint.SerializeToString(), threaded_options(THREADS, spinning))
    cls = int(plain.run(None, {"input": x})[0].argmax())
    seed = np.zeros((1, int(plain.get_outputs()[0].shape[1])), np.float32)
    seed[0, cls] = 1

    sal = Saliency(net)
    xt = torch.from_numpy(x)

    def captum_saliency():
        sal.attribute(xt, target=cls, abs=False)

    def torch_forward():
        with torch.inference_mode():
            net(xt)

    return {
        "plain": functools.partial(plain.run, None, {"input": x}),
        "onnxcam:forward": functools.partial(g.run, ["logits"], {"input": x, **mode1}),
        "onnxcam:saliency": functools.partial(s.run, [grad], {"input": x}),
        "onnxcam:explain": functools.partial(ex.explain_tensor, x, "saliency"),
        "onnxcam:guided": functools.partial(g.run, [grad, rule], {"input": x}),
        "onnx-ad": functools.partial(ad.run, ["adj_input"], {"input": x, "adj_logits": seed}),
        "captum": captum_saliency,
        "torch:forward": torch_forward,
    }


def main() -> None:
    ap = arguments(__doc__, 20, "resnet50,efficientnet_lite0", batches=None)
    ap.add_argument("--out", default="input_gradient", help="results/<out>.json")
    ap.add_argument("--spinning", action="store_true", help="onnxruntime's default threading")
    args = ap.parse_args()

    import captum
    import torch

    torch.set_num_threads(THREADS)
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            variants = make_variants(name, Path(tmp), args.spinning)
            block = 4 if args.spinning else 1
            times = interleaved(variants, repeats=args.repeats, warmup=2, block=block)
        base = median_ms(times["plain"])
        for variant, ts in times.items():
            t = median_ms(ts)
            rows.append(
                {
                    "model": name,
                    "variant": variant,
                    "ms": t,
                    "p25_ms": 1000 * float(np.percentile(ts, 25)),
                    "p75_ms": 1000 * float(np.percentile(ts, 75)),
                    "vs_plain": t / base,
                }
            )
            print(f"{name} {variant:18s} {t:8.1f} ms  ({t / base:5.2f}x plain)", flush=True)
    cols = [
        ("model", "model"),
        ("variant", "variant"),
        ("ms", "median ms"),
        ("p25_ms", "p25 ms"),
        ("p75_ms", "p75 ms"),
        ("vs_plain", "/ plain"),
    ]
    print(markdown_table(rows, cols))
    extra = {
        "repeats": args.repeats,
        "threads": THREADS,
        "size": SIZE,
        "spinning": args.spinning,
        "captum": captum.__version__,
        "torch": torch.__version__,
    }
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
