"""The README's pixel-space picture: EfficientNet-Lite0 (its real ImageNet weights) exported
with ``--rules guided`` (the input gradient and Guided Backprop's), explaining scikit-image
photos with Grad-CAM, Guided Grad-CAM and Integrated Gradients.

    python -m models.pixel_example docs/pixel-example.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "coffee", "astronaut")
METHODS = ("gradcam", "guided-gradcam", "integrated-gradients")


def main(out: str = "docs/pixel-example.png") -> Path:
    import cv2
    from skimage import data

    from onnxcam import Explainer
    from onnxcam.postprocess import overlay

    from . import efficientnet_lite0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lite0.cam.onnx"
        efficientnet_lite0.export(path, rules="guided")
        ex = Explainer(path, device="cpu")
        rows = []
        for name in PHOTOS:
            image = getattr(data, name)()
            (r,) = ex.explain(image, ",".join(METHODS), ig_steps=32, ig_baseline="black")
            rgb = np.clip(r.image, 0, 255).astype(np.uint8)
            tiles = [rgb]
            for m in METHODS:
                cam = r.maps[m]
                if cam.layer == "input" or m == "guided-gradcam":  # an attribution: grey on black
                    g = np.uint8(np.clip(cam.original, 0, 1) * 255)
                    tiles.append(np.repeat(g[..., None], 3, axis=2))
                else:
                    tiles.append(overlay(rgb, cam.original, alpha=0.5))
            tiles = [cv2.resize(t, (256, 256), interpolation=cv2.INTER_AREA) for t in tiles]
            rows.append(np.concatenate(tiles, axis=1))
            print(
                f"{name}: {r.target.label} ({r.target.probability:.2f}); IG completeness "
                f"{r.maps['integrated-gradients'].stats['completeness_relative']:.3f}"
            )
    picture = np.concatenate(rows, axis=0)
    dest = Path(out)
    cv2.imwrite(str(dest), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return dest


if __name__ == "__main__":
    print("wrote", main(*sys.argv[1:]))
