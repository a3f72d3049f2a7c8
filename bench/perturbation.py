"""Perturbation CAMs: onnxcam vs pytorch-grad-cam vs torchcam, side by side in one run, CPU.

Per model (ResNet-50 random init, EfficientNet-Lite0 real weights) and one photo
(scikit-image's chelsea at 224×224), wall time per image of
  * Score-CAM (every channel): onnxcam, pytorch-grad-cam ScoreCAM, torchcam ScoreCAM;
  * Ablation-CAM: onnxcam (head-only path), pytorch-grad-cam AblationCAM;
  * onnxcam occlusion, IS-CAM and SS-CAM for reference;
with the same batch size for every library (--batch-size, default 32). Peers are slow (about a
minute per image), so each variant runs --repeats times (default 1) after one warm-up of
onnxcam; the order of variants is shuffled per repeat.

    python bench/perturbation.py [--batch-size 32] [--repeats 1] [--models resnet50,lite0]
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see runtime_methods.py
sys.path.insert(0, str(Path(__file__).parent))
from harness import arguments, interleaved, markdown_table, save, session_options
from runtime_methods import build, plain_onnx


def main() -> None:
    ap = arguments(__doc__, 1, "resnet50,lite0", batches=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated methods to time (default: all)")
    args = ap.parse_args()
    only = [m for m in args.only.split(",") if m]

    import cv2
    import pytorch_grad_cam
    import skimage.data
    import torch
    import torchcam.methods

    from onnxcam import Explainer
    from onnxcam.export import export_onnx
    from onnxcam.image import preprocess
    from onnxcam.perturbation import PerturbationOptions

    torch.set_num_threads(2)
    bs = args.batch_size
    photo = cv2.resize(skimage.data.chelsea(), (224, 224)).astype(np.float32)
    rows = []
    for name in args.models.split(","):
        module, layer, _, prep = build(name)
        target = module.get_submodule(layer)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.cam.onnx"
            export_onnx(plain_onnx(module), path, **prep)
            ex = Explainer(path, session_options=session_options())
        x = preprocess([photo], ex.info.input)
        xt = torch.from_numpy(x)
        opts = PerturbationOptions(batch_size=bs, ss_samples=4, is_steps=4)

        def oc(method, opts=opts, ex=ex, x=x):
            return ex.explain_tensor(x, method, perturbation=opts)

        def pgc(cls_name, xt=xt, target=target, module=module):
            with getattr(pytorch_grad_cam, cls_name)(model=module, target_layers=[target]) as c:
                c.batch_size = bs
                c(input_tensor=xt, targets=None)

        def tc(xt=xt, module=module, layer=layer):
            with torchcam.methods.ScoreCAM(module, target_layer=layer, batch_size=bs) as c:
                with torch.no_grad():
                    scores = module(xt)
                c(scores.argmax(1).tolist(), scores)

        oc("scorecam")  # warm-up (session, caches)
        variants = {
            "onnxcam:scorecam": lambda oc=oc: oc("scorecam"),
            "pgc:scorecam": lambda pgc=pgc: pgc("ScoreCAM"),
            "torchcam:scorecam": tc,
            "onnxcam:ablationcam": lambda oc=oc: oc("ablationcam"),
            "pgc:ablationcam": lambda pgc=pgc: pgc("AblationCAM"),
            "onnxcam:occlusion": lambda oc=oc: oc("occlusion"),
            "onnxcam:iscam(4 steps)": lambda oc=oc: oc("iscam"),
            "onnxcam:sscam(4 samples)": lambda oc=oc: oc("sscam"),
        }
        if only:
            variants = {k: v for k, v in variants.items() if k.split(":")[1].split("(")[0] in only}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = interleaved(variants, repeats=args.repeats, warmup=0)
        sec = {k: float(np.median(v)) for k, v in times.items()}
        for method in (
            "scorecam",
            "ablationcam",
            "occlusion",
            "iscam(4 steps)",
            "sscam(4 samples)",
        ):
            if f"onnxcam:{method}" not in sec:
                continue
            o = sec[f"onnxcam:{method}"]
            pg, tcm = sec.get(f"pgc:{method}"), sec.get(f"torchcam:{method}")
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "batch_size": bs,
                    "onnxcam_s": o,
                    "pgc_s": pg,
                    "pgc_speedup": pg / o if pg else None,
                    "torchcam_s": tcm,
                    "torchcam_speedup": tcm / o if tcm else None,
                }
            )
            print(rows[-1], flush=True)
    cols = [
        ("model", "model"),
        ("method", "method"),
        ("batch_size", "batch"),
        ("onnxcam_s", "onnxcam s/img"),
        ("pgc_s", "pytorch-grad-cam s/img"),
        ("pgc_speedup", "speed-up vs pgc"),
        ("torchcam_s", "torchcam s/img"),
        ("torchcam_speedup", "speed-up vs torchcam"),
    ]
    print(markdown_table(rows, cols))
    name = "perturbation" + ("_" + "_".join(only) if only else "")
    print("saved", save(name, rows, {"repeats": args.repeats, "batch_size": bs}))


if __name__ == "__main__":
    main()
