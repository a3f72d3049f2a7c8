"""Gradient-family CAMs: onnxcam vs plain inference vs pytorch-grad-cam vs torchcam, one run.

For ResNet-50 (random init), EfficientNet-Lite0 (real weights) and, with ``--models``, the token
models ViT-Tiny/16, ViT-Small/16 and Swin-Tiny (timm, random init; onnxcam explains its default
layer: the last block's ``norm1`` tokens for the ViTs, the final NHWC norm for Swin), batch 1
and 8, CPU: median latency **per image** of
  * plain onnxruntime inference of the unmodified model (the floor),
  * onnxcam: one ``session.run`` + the method(s) on the host + maps resized to the input size,
    per method and for all gradient methods at once,
  * pytorch-grad-cam and torchcam doing the same method (forward + backward + map), per method;
    their "all" is the sum of their per-method times (each method re-runs the model);
  * onnxcam "all+heatmaps": the same eight maps from a graph exported with ``--heatmaps`` and
    exactly those eight methods (they all come finished out of the graph; the graph computes
    every exported heatmap on each run, so a deployment exports the maps it uses).
Two phases per model and batch, in the same process (bench/harness.py, round-robin):
  A. onnxruntime only: plain inference and every onnxcam variant (ratios vs plain come from here:
     torch's heavy runs in between inflate small ORT timings on this 2-core machine);
  B. the peers, with plain inference and onnxcam "all" as anchors (speed-ups vs the peers use
     phase A's onnxcam numbers; the anchors show how much phase B's load shifted ORT timings).

    python bench/runtime_methods.py [--repeats 20] [--peer-repeats 5] [--models resnet50,lite0]
    python bench/runtime_methods.py --models vit_tiny,vit_small,swin_tiny --out runtime_tokens

pytorch-grad-cam gets the reshape it documents for these models (``reshape_transform``: drop the
class token and lay the tokens on the 14×14 grid; Swin's NHWC map to NCHW). torchcam has no
hook for token or channels-last layers (it reads the hooked tensor as NCHW), so on the token
models its timings are of the same computation on the unreshaped tensor — a cost reference,
not a usable map.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

# torch's OpenMP workers spin-wait after each op by default and steal the cores from the next
# (onnxruntime) variant of an interleaved run; make them sleep instead (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))
from harness import (
    GRADIENT_MAPS,
    arguments,
    interleaved,
    markdown_table,
    median_ms,
    save,
    session,
    session_options,
)

PGC = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "eigengradcam": "EigenGradCAM",
    "eigencam": "EigenCAM",
}
TORCHCAM = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "smoothgradcam++": "SmoothGradCAMpp",
    "cam": "CAM",
}


TIMM = {
    "vit_tiny": ("vit_tiny_patch16_224", "blocks.11.norm1", "head"),
    "vit_small": ("vit_small_patch16_224", "blocks.11.norm1", "head"),
    "swin_tiny": ("swin_tiny_patch4_window7_224", "norm", "head.fc"),
}
"""bench name → (timm model, the module onnxcam's default layer is the output of, its
classifier Linear)."""


def build(name: str):
    """(torch module, torch target module name, classifier name, onnxcam export kwargs)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval(), "layer4", "fc", {}
    if name in TIMM:
        import timm

        model, layer, fc = TIMM[name]
        return timm.create_model(model, pretrained=False).eval(), layer, fc, {}
    from onnxcam.models import efficientnet_lite0

    # the head's ReLU6 module is reused in every block; peers hook the last BN before it
    return efficientnet_lite0.build(), "_bn1", "_fc", efficientnet_lite0.PREPROCESSING


def reshape_transform(name: str):
    """pytorch-grad-cam's ``reshape_transform`` for ``name`` (None: the layer is NCHW)."""
    if name.startswith("vit"):
        return lambda t: t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)
    if name.startswith("swin"):
        return lambda t: t.permute(0, 3, 1, 2)
    return None


def plain_onnx(module, size: int = 224) -> bytes:
    from onnxcam.export import plain_onnx as export_plain

    return export_plain(module, (1, 3, size, size))


def explainers(name: str):
    """(torch module, its target module name, its classifier name, plain ONNX bytes, Explainer
    of the onnxcam graph, Explainer of the graph exported with the heatmaps of all gradient
    maps, those maps' names) for ``build(name)``."""
    from onnxcam.engine import Explainer
    from onnxcam.export import export_onnx

    module, layer, fc, prep = build(name)
    plain_bytes = plain_onnx(module)
    with tempfile.TemporaryDirectory() as tmp:
        cam_path, heat_path = Path(tmp) / "m.cam.onnx", Path(tmp) / "m.heatmaps.cam.onnx"
        export_onnx(plain_bytes, cam_path, **prep)
        ex = Explainer(cam_path, session_options=session_options())
        maps = [m for m in [*GRADIENT_MAPS, "cam"] if m != "cam" or ex.info.has_cam_weights]
        export_onnx(plain_bytes, heat_path, heatmaps=",".join(maps), **prep)
        ex_heat = Explainer(heat_path, session_options=session_options())
    return module, layer, fc, plain_bytes, ex, ex_heat, maps


def _maps_at_input(ex, x, methods) -> None:
    """One onnxcam call: every method's map at the input resolution (like pytorch-grad-cam)."""
    for r in ex.explain_tensor(x, methods, smooth_samples=4):
        for m in r.maps.values():
            _ = m.input


def make_variants(module, layer, fc, ex, plain, x, onnx_methods, all_grad, reshape=None) -> dict:
    """name → zero-argument callable doing one batch, for every library and method."""
    import pytorch_grad_cam
    import torch
    import torchcam.methods

    xt = torch.from_numpy(x)
    target = module.get_submodule(layer)

    def oc(methods):
        _maps_at_input(ex, x, methods)

    def pgc(cls_name):
        cam = getattr(pytorch_grad_cam, cls_name)
        with cam(model=module, target_layers=[target], reshape_transform=reshape) as c:
            c(input_tensor=xt, targets=None)

    def tc(cls_name):
        kw = {"fc_layer": fc} if cls_name == "CAM" else {}
        if cls_name == "SmoothGradCAMpp":
            kw["num_samples"] = 4
        with getattr(torchcam.methods, cls_name)(module, target_layer=layer, **kw) as c:
            with torch.set_grad_enabled(cls_name != "CAM"):
                scores = module(xt)
            c(scores.argmax(1).tolist(), scores)

    variants = {
        "plain": lambda: plain.run(None, {"input": x}),
        "onnxcam:all": lambda: oc(all_grad),
    }
    for m in onnx_methods:
        variants[f"onnxcam:{m}"] = lambda m=m: oc([m])
    peers = {f"pgc:{m}": (lambda c=c: pgc(c)) for m, c in PGC.items()}
    for m, c in TORCHCAM.items():
        if m != "cam" or ex.info.has_cam_weights:
            peers[f"torchcam:{m}"] = lambda c=c: tc(c)
    for name, run in peers.items():
        try:  # a peer that cannot handle this layer (torchcam on Swin's NHWC map) is left out
            run()
        except Exception as e:
            print(f"{name}: fails on this model ({type(e).__name__}: {str(e)[:80]})")
            continue
        variants[name] = run
    return variants


def main() -> None:
    ap = arguments(__doc__, 20, "resnet50,lite0")
    ap.add_argument("--peer-repeats", type=int, default=5)
    ap.add_argument("--out", default="runtime_methods", help="results/<out>.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    rows = []
    for name in args.models.split(","):
        module, layer, fc, plain_bytes, ex, ex_heat, all_grad = explainers(name)
        plain = session(plain_bytes)
        onnx_methods = [
            m
            for m in [*GRADIENT_MAPS, "eigencam", "smoothgradcam++", "cam"]
            if m != "cam" or ex.info.has_cam_weights
        ]
        for batch in map(int, args.batches.split(",")):
            x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
            variants = make_variants(
                module, layer, fc, ex, plain, x, onnx_methods, all_grad, reshape_transform(name)
            )
            variants["onnxcam:all+heatmaps"] = functools.partial(
                _maps_at_input, ex_heat, x, all_grad
            )
            ort_only = {
                k: v for k, v in variants.items() if k == "plain" or k.startswith("onnxcam")
            }
            peers = {k: v for k, v in variants.items() if k not in ort_only}
            peers |= {
                "anchor:plain": variants["plain"],
                "anchor:onnxcam:all": variants["onnxcam:all"],
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                times = interleaved(ort_only, repeats=args.repeats, warmup=2)
                times |= interleaved(peers, repeats=args.peer_repeats, warmup=1)
            per_img = {k: median_ms(v) / batch for k, v in times.items()}
            base = per_img["plain"]
            for m in [*onnx_methods, "all", "all+heatmaps"]:
                pg = (
                    sum(per_img[f"pgc:{k}"] for k in all_grad if f"pgc:{k}" in per_img)
                    if m.startswith("all")
                    else per_img.get(f"pgc:{m}")
                )
                tcm = (
                    sum(per_img[f"torchcam:{k}"] for k in all_grad if f"torchcam:{k}" in per_img)
                    if m.startswith("all")
                    else per_img.get(f"torchcam:{m}")
                )
                o = per_img[f"onnxcam:{m}"]
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "method": m,
                        "plain_ms": base,
                        "onnxcam_ms": o,
                        "vs_plain": o / base,
                        "pgc_ms": pg,
                        "pgc_speedup": pg / o if pg else None,
                        "torchcam_ms": tcm,
                        "torchcam_speedup": tcm / o if tcm else None,
                    }
                )
                print(
                    f"{name} b{batch} {m:20s} onnxcam {o:7.2f}  plain {base:6.2f} "
                    f"({o / base:.2f}x)  pgc {pg or float('nan'):7.1f}  "
                    f"torchcam {tcm or float('nan'):7.1f}",
                    flush=True,
                )
    cols = [
        ("model", "model"),
        ("batch", "batch"),
        ("method", "method"),
        ("plain_ms", "plain ORT ms/img"),
        ("onnxcam_ms", "onnxcam ms/img"),
        ("vs_plain", "onnxcam / plain"),
        ("pgc_ms", "pytorch-grad-cam ms/img"),
        ("pgc_speedup", "speed-up vs pgc"),
        ("torchcam_ms", "torchcam ms/img"),
        ("torchcam_speedup", "speed-up vs torchcam"),
    ]
    print(markdown_table(rows, cols))
    print("saved", save(args.out, rows, {"repeats": args.repeats, "models": args.models}))


if __name__ == "__main__":
    main()
