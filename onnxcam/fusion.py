"""Fusing one method's maps of several target layers into one map (``ExplainOptions.fusion``,
and methods that always fuse, like RefineCAM's product: ``MethodSpec.fusion``).

Each layer's map (rectified and min-max normalised at its own resolution: ``CamMap.feature``)
is resized to the model input, the layers are combined, and the result is min-maxed again:

* ``mean`` — pytorch-grad-cam's ``aggregate_multi_layers`` (bilinear resize, mean).
* ``max`` — torchcam's ``fuse_cams`` and ultralytics' multi-scale maps (bilinear resize, max).
* ``product`` — pytorch-grad-cam's ``RefineCAM``: each layer's resized map is min-maxed again
  (it is that library's whole single-layer output) before the product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import postprocess
from .errors import MethodError

FUSIONS = ("mean", "max", "product")


def check_fusion(rule: str) -> str:
    """``rule`` if it is a known fusion, else a ``MethodError``."""
    if rule not in FUSIONS:
        raise MethodError(f"unknown fusion {rule!r}; choose {', '.join(FUSIONS)}")
    return rule


def fuse_layers(maps: Sequence[np.ndarray], size: tuple[int, int], rule: str) -> np.ndarray:
    """Layers' normalised maps (each [B, h_l, w_l]) → one [B, H, W] map in [0, 1]."""
    check_fusion(rule)
    if rule == "product":
        up = np.stack([postprocess.resize_normalized(m, *size) for m in maps])
        return postprocess.normalize(np.prod(up, axis=0))
    up = np.stack([postprocess.resize(m, *size) for m in maps])
    return postprocess.normalize(up.mean(axis=0) if rule == "mean" else up.max(axis=0))
