"""C++ core (through ctypes) vs the numpy runtime: Grad-CAM post-processing to a Full-HD overlay.

Workload (one image): activations and gradients [1, 2048, 7, 7] (a ResNet-50 layer4) ->
Grad-CAM weights and map, ReLU, min-max -> resize to 1080x1920 and min-max again -> JET
colormap and overlay on a 1080x1920x3 image. Stages are timed separately and end to end, the
two implementations side by side (bench/harness.py: each repeat runs every variant once in a
new seeded order; medians). The numpy side is onnxcam.methods / onnxcam.postprocess (cv2 for the
resize and the colormap, with OpenCV's own threads); the C++ side is single-threaded and
includes the ctypes call overhead (a few microseconds).

    cmake -S cpp_bindings -B cpp_bindings/build && cmake --build cpp_bindings/build -j2
    python cpp_bindings/bench/bench_post.py [--repeats 50] [--lib path/to/libonnxcam_post.so]

Writes bench/results/cpp_post.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(HERE.parent / "python"))

import harness  # noqa: E402
import onnxcam_cpp as cc  # noqa: E402

from onnxcam import methods, postprocess  # noqa: E402

H, W = 1080, 1920
SHAPE = (1, 2048, 7, 7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--lib", help="libonnxcam_post path (default: ONNXCAM_CPP_LIB / build dirs)")
    args = ap.parse_args()
    lib = cc.load(args.lib)

    rng = np.random.default_rng(0)
    A = np.maximum(rng.standard_normal(SHAPE), 0).astype(np.float32)  # post-ReLU activations
    G = (rng.standard_normal(SHAPE) * 1e-3).astype(np.float32)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)

    def py_map():
        return postprocess.normalize(postprocess.relu(methods.gradcam(A, G)))

    def cpp_map():
        return cc.cam_map("gradcam", A, G)

    feat = py_map()

    def py_resize():
        return postprocess.resize_normalized(feat[0], H, W)

    def cpp_resize():
        return cc.resize_normalized(feat[0], H, W)

    big = py_resize()

    def py_overlay():
        return postprocess.overlay(image, big)

    def cpp_overlay():
        return cc.overlay(image, big)

    def py_total():
        f = postprocess.normalize(postprocess.relu(methods.gradcam(A, G)))
        return postprocess.overlay(image, postprocess.resize_normalized(f[0], H, W))

    def cpp_total():
        f = cc.cam_map("gradcam", A, G)
        return cc.overlay(image, cc.resize_normalized(f[0], H, W))

    stages = {
        "map (weights + map + normalise)": (py_map, cpp_map),
        "resize to 1080x1920 + normalise": (py_resize, cpp_resize),
        "colormap + overlay": (py_overlay, cpp_overlay),
        "total": (py_total, cpp_total),
    }
    variants = {}
    for name, (py, cpp) in stages.items():
        variants[f"numpy|{name}"] = py
        variants[f"cpp|{name}"] = cpp
    times = harness.interleaved(variants, repeats=args.repeats, warmup=args.warmup)

    rows = []
    for name in stages:
        py_t, cpp_t = times[f"numpy|{name}"], times[f"cpp|{name}"]
        py_ms, cpp_ms = harness.median_ms(py_t), harness.median_ms(cpp_t)
        rows.append(
            {
                "stage": name,
                "numpy_ms": py_ms,
                "cpp_ms": cpp_ms,
                "speedup": py_ms / cpp_ms,
                "numpy_iqr_ms": _iqr_ms(py_t),
                "cpp_iqr_ms": _iqr_ms(cpp_t),
            }
        )
    ov_py, ov_cpp = py_total(), cpp_total()
    diff = np.abs(ov_py.astype(int) - ov_cpp)
    parity = {
        "feature_max_abs_diff": float(np.abs(py_map() - cpp_map()).max()),
        "overlay_max_abs_diff": int(diff.max()),
        "overlay_pixels_differing": float((diff.max(axis=2) > 0).mean()),
    }
    columns = [
        ("stage", "stage"),
        ("numpy_ms", "numpy + cv2 (ms)"),
        ("cpp_ms", "C++ via ctypes (ms)"),
        ("speedup", "speedup"),
        ("numpy_iqr_ms", "numpy IQR"),
        ("cpp_iqr_ms", "C++ IQR"),
    ]
    print(f"Grad-CAM {SHAPE} -> {W}x{H} overlay, median of {args.repeats} (ms)")
    print(harness.markdown_table(rows, columns))
    print(f"cv2 threads: {cv2.getNumThreads()}; library: {lib._name}; parity: {parity}")
    path = harness.save(
        "cpp_post",
        rows,
        {
            "workload": f"gradcam {list(SHAPE)} -> {H}x{W} overlay (jet, alpha 0.5)",
            "repeats": args.repeats,
            "cv2_threads": cv2.getNumThreads(),
            "cv2": cv2.__version__,
            "numpy": np.__version__,
            "cpp_library": os.path.basename(lib._name),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "parity": parity,
        },
    )
    print(f"wrote {path}")


def _iqr_ms(samples: list[float]) -> float:
    q = statistics.quantiles(samples, n=4)
    return 1000.0 * (q[2] - q[0])


if __name__ == "__main__":
    main()
