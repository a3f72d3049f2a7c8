"""Edge builds of EfficientNet-Lite0 (real ImageNet weights): float32 vs float16 vs INT8 QDQ.

Each build is exported with onnxcam and explained on the same photos (scikit-image's colour
photos and their mirror images, resized to 224): top-1 agreement with the float32 model, the
Pearson correlation of its Grad-CAM maps (7×7, before normalisation) with the float32 maps, and
the batch-1 latency of plain inference of that build vs one explaining run (Grad-CAM map
included), measured side by side (bench/harness.py, round-robin).

* float16: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``.
* INT8: ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel int8 weights,
  uint8 activations) calibrated on the same photos (the photos are the calibration set, as an
  edge team with a few dozen representative images would do).

    python bench/edge_models.py [--repeats 30]
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import (
    arguments,
    interleaved,
    markdown_table,
    median_ms,
    save,
    session,
    session_options,
)

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
)


def photos() -> list[np.ndarray]:
    """scikit-image's colour photos and their mirror images: RGB float32 0–255."""
    import skimage.data

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)[..., :3]
        out += [img, img[:, ::-1].copy()]
    return out


def builds(workdir: Path, images: list[np.ndarray]) -> dict[str, Path]:
    """name → exported onnxcam graph of each build."""
    import onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from onnxcam.export import export_onnx, plain_onnx
    from onnxcam.image import preprocess
    from onnxcam.models import efficientnet_lite0

    prep = efficientnet_lite0.PREPROCESSING
    fp32 = workdir / "lite0.onnx"
    fp32.write_bytes(plain_onnx(efficientnet_lite0.build(), (1, 3, 224, 224)))
    fp16 = workdir / "lite0_fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), fp16)
    cam = export_onnx(fp32, workdir / "fp32.cam.onnx", **prep)

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            x = preprocess(images, cam.input)
            self.batches = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.batches, None)

    int8 = workdir / "lite0_int8.onnx"
    quantize_static(
        str(fp32),
        str(int8),
        Photos(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    out = {"float32": cam.path}
    for name, src in (("float16", fp16), ("int8-qdq", int8)):
        out[name] = export_onnx(src, workdir / f"{name}.cam.onnx", **prep).path
    out["_plain"] = {"float32": fp32, "float16": fp16, "int8-qdq": int8}
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> None:
    args = arguments(__doc__, 30, "lite0").parse_args()
    warnings.simplefilter("ignore")
    from onnxcam.engine import Explainer
    from onnxcam.image import preprocess

    images = photos()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        paths = builds(Path(d), images)
        plain_paths = paths.pop("_plain")
        results = {}
        for name, path in paths.items():
            ex = Explainer(path, session_options=session_options())
            exps = ex.explain(images, "gradcam", relu=False, keep_tensors=True)
            results[name] = (ex, exps)
        ref = results["float32"][1]
        x1 = preprocess(images[:1], results["float32"][0].info.input)
        variants = {}
        for name, (ex, _) in results.items():
            plain = session(plain_paths[name].read_bytes())
            variants[f"{name}:plain"] = lambda p=plain: p.run(None, {"input": x1})
            variants[f"{name}:explain"] = lambda e=ex: e.explain_tensor(x1, "gradcam")
        times = interleaved(variants, repeats=args.repeats, warmup=3)
        for name, (_, exps) in results.items():
            agree = np.mean(
                [e.target.index == r.target.index for e, r in zip(exps, ref, strict=True)]
            )
            # maps of the float32 model's class, so that a flipped top-1 does not hide a map
            same = [
                pearson(e.maps["gradcam"].feature, r.maps["gradcam"].feature)
                for e, r in zip(exps, ref, strict=True)
                if e.target.index == r.target.index
            ]
            plain_ms = median_ms(times[f"{name}:plain"])
            explain_ms = median_ms(times[f"{name}:explain"])
            rows.append(
                {
                    "build": name,
                    "photos": len(exps),
                    "top1_agreement": float(agree),
                    "map_corr_mean": float(np.mean(same)) if same else None,
                    "map_corr_min": float(np.min(same)) if same else None,
                    "plain_ms": plain_ms,
                    "explain_ms": explain_ms,
                    "explain_vs_plain": explain_ms / plain_ms,
                    "plain_vs_float32": plain_ms / median_ms(times["float32:plain"]),
                }
            )
            print(rows[-1], flush=True)
    cols = [
        ("build", "build"),
        ("photos", "photos"),
        ("top1_agreement", "top-1 = float32"),
        ("map_corr_mean", "Grad-CAM corr. (mean)"),
        ("map_corr_min", "Grad-CAM corr. (min)"),
        ("plain_ms", "plain ms"),
        ("explain_ms", "explain ms"),
        ("explain_vs_plain", "explain / plain"),
        ("plain_vs_float32", "plain / float32 plain"),
    ]
    print(markdown_table(rows, cols))
    print("saved", save("edge_models", rows, {"repeats": args.repeats}))


if __name__ == "__main__":
    main()
