"""Cost of the exported graph vs the original model, onnxruntime CPU, side by side.

For ResNet-50 (random init) and EfficientNet-Lite0 (real ImageNet weights), batch 1 and 8:
median latency of the original model, of the onnxcam graph with *all* outputs fetched
(prediction + class + score + activations + gradients + CAM weights), of the graph with the
seven channel/element-weighted in-graph heatmaps (``--heatmaps`` gradcam … cam: finished maps
at 224×224), and with every heatmap (``--heatmaps all``: those plus the two eigen maps), and
the file-size ratios.

    python bench/export_overhead.py [--repeats 20] [--models ResNet-50,EfficientNet-Lite0]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from harness import GRADIENT_MAPS, arguments, interleaved, markdown_table, median_ms, save, session

WEIGHTED = [m for m in GRADIENT_MAPS if not m.startswith("eigen")] + ["cam"]
"""The in-graph heatmaps other than the eigen maps."""


def plain_onnx(module, size: int = 224) -> bytes:
    from onnxcam.export import plain_onnx as export_plain

    return export_plain(module, (1, 3, size, size))


def models() -> dict:
    import torchvision

    from onnxcam.models import efficientnet_lite0

    return {
        "ResNet-50": (torchvision.models.resnet50(weights=None), {}),
        "EfficientNet-Lite0": (efficientnet_lite0.build(), efficientnet_lite0.PREPROCESSING),
    }


def main() -> None:
    args = arguments(__doc__, 20, "ResNet-50,EfficientNet-Lite0", batches=None).parse_args()
    wanted = args.models.split(",")
    from onnxcam.export import export_onnx

    ort.set_default_logger_severity(3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, prep) in models().items():
            if name not in wanted:
                continue
            src = Path(tmp) / "plain.onnx"
            src.write_bytes(plain_onnx(module, 224))
            dst = Path(tmp) / "cam.onnx"
            res = export_onnx(src, dst, **prep)
            hm = Path(tmp) / "heatmaps.cam.onnx"
            export_onnx(src, hm, heatmaps="all", **prep)
            hm7 = Path(tmp) / "heatmaps7.cam.onnx"
            export_onnx(src, hm7, heatmaps=",".join(WEIGHTED), **prep)
            size_ratio = dst.stat().st_size / src.stat().st_size
            plain, cam, heat, heat7 = session(src), session(dst), session(hm), session(hm7)
            for batch in (1, 8):
                x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
                times = interleaved(
                    {
                        "plain": lambda x=x, s=plain: s.run(None, {"input": x}),
                        "onnxcam": lambda x=x, s=cam: s.run(None, {"input": x}),
                        "heatmaps": lambda x=x, s=heat: s.run(None, {"input": x}),
                        "heatmaps7": lambda x=x, s=heat7: s.run(None, {"input": x}),
                    },
                    repeats=args.repeats,
                )
                p, c = median_ms(times["plain"]), median_ms(times["onnxcam"])
                h, h7 = median_ms(times["heatmaps"]), median_ms(times["heatmaps7"])
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "target": res.targets[0].tensor,
                        "plain_ms": p,
                        "onnxcam_ms": c,
                        "ratio": c / p,
                        "heatmaps7_ms": h7,
                        "heatmaps7_ratio": h7 / p,
                        "heatmaps_ms": h,
                        "heatmaps_ratio": h / p,
                        "size_ratio": size_ratio,
                        "heatmaps_size_ratio": hm.stat().st_size / src.stat().st_size,
                    }
                )
                print(
                    f"{name} b{batch}: plain {p:.1f} ms, onnxcam {c:.1f} ms ({c / p:.3f}x)",
                    flush=True,
                )
    cols = [
        ("model", "model"),
        ("batch", "batch"),
        ("plain_ms", "plain ORT (ms)"),
        ("onnxcam_ms", "onnxcam graph, all outputs (ms)"),
        ("ratio", "latency ratio"),
        ("heatmaps7_ms", "+ 7 weighted in-graph heatmaps (ms)"),
        ("heatmaps7_ratio", "ratio"),
        ("heatmaps_ms", "+ all 9 in-graph heatmaps (ms)"),
        ("heatmaps_ratio", "ratio with heatmaps"),
        ("size_ratio", "file size ratio"),
    ]
    print(markdown_table(rows, cols))
    name = "export_overhead" + ("" if len(wanted) == 2 else "_" + "_".join(wanted))
    print("saved", save(name, rows, {"repeats": args.repeats}))


if __name__ == "__main__":
    main()
