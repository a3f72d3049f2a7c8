"""Post-processing written once: ReLU → per-image min-max → bilinear resize → colormap → threshold.

Conventions (shared with pytorch-grad-cam so maps are comparable): maps are rectified, then
min-max normalised per image at feature resolution, then resized bilinearly (OpenCV
``INTER_LINEAR``, half-pixel centres) and normalised again, so a map spans [0, 1] at every
resolution (bilinear upsampling alone would leave the peak slightly below 1). A constant map
normalises to zeros, never NaN; NaN or inf in a raw map are treated as 0.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

COLORMAPS = {
    name.removeprefix("COLORMAP_").lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}
"""OpenCV colormaps by lower-case name ("jet", "turbo", "viridis", "inferno", ...)."""


def relu(maps: np.ndarray) -> np.ndarray:
    return np.maximum(maps, 0)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] over the last two axes; constant maps become zeros."""
    m = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(m).all():  # (checking first is ~10x cheaper than nan_to_num)
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    return _minmax(m)


def attribution(maps: np.ndarray, outlier_perc: float = 2.0) -> np.ndarray:
    """Signed pixel attributions [B, H, W] → [0, 1] as captum's ``visualize_image_attr``
    shows them by default (``sign="absolute_value"``, ``outlier_perc=2``): |a| divided by the
    value where the cumulative sum of the sorted |a| reaches 98% of the total, clipped to 1.
    An all-zero map stays zero."""
    m = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    out = np.zeros_like(m)
    for src, dst in zip(m.reshape(-1, *m.shape[-2:]), out.reshape(-1, *m.shape[-2:]), strict=True):
        values = np.sort(src, axis=None)
        cum = np.cumsum(values, dtype=np.float64)
        if cum[-1] <= 0:
            continue
        threshold = values[np.searchsorted(cum, cum[-1] * 0.01 * (100 - outlier_perc))]
        np.minimum(src / threshold, 1, out=dst)
    return out


def _minmax(m: np.ndarray) -> np.ndarray:
    """Min-max of finite float32 maps (the caller guarantees finiteness), map by map:
    OpenCV's ``minMaxLoc`` for the extremes (one SIMD pass), then (m − lo) / span in float32 in
    place — the same bits as the C++ core (``cpp_bindings``), ~4x faster than numpy's
    reductions over the last two axes at 224×224."""
    return _minmax_inplace(np.array(m, dtype=np.float32, order="C", copy=True))


def _minmax_inplace(out: np.ndarray) -> np.ndarray:
    """``_minmax`` of a C-contiguous float32 array the caller owns, in place."""
    for dst in out.reshape(-1, *out.shape[-2:]):
        lo, hi, _, _ = cv2.minMaxLoc(dst)
        lo, span = np.float32(lo), np.float32(hi) - np.float32(lo)
        if not span > 0:
            dst[...] = 0
        elif np.isfinite(span):
            np.subtract(dst, lo, out=dst)
            np.divide(dst, span, out=dst)
        else:  # the span overflows float32: divide in double (as the C++ core)
            dst[...] = (dst.astype(np.float64) - float(lo)) / (float(hi) - float(lo))
    return out


def bilinear_sources(
    n_out: int, n_in: int, align_corners: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_out`` output positions along one axis: the two source indices j0 ≤ j1
    it interpolates and the weight f of j1. Half-pixel centres clamped at the border (OpenCV's
    ``INTER_LINEAR``) by default; ``align_corners`` as torch's ``interpolate``."""
    if align_corners:
        s = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    else:
        s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    j0 = np.floor(s).astype(np.int64)
    return j0, np.minimum(j0 + 1, n_in - 1), s - j0


def interpolation_matrix(n_out: int, n_in: int, align_corners: bool = False) -> np.ndarray:
    """[n_out, n_in] float64 bilinear weights along one axis (``bilinear_sources``): a resize
    is ``R_h · m · R_wᵀ``."""
    j0, j1, f = bilinear_sources(n_out, n_in, align_corners)
    R = np.zeros((n_out, n_in))
    np.add.at(R, (np.arange(n_out), j0), 1 - f)
    np.add.at(R, (np.arange(n_out), j1), f)
    return R


def resize(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one map (h, w) or a stack (..., h, w) to (height, width)."""
    m = np.asarray(maps, dtype=np.float32)
    if m.shape[-2:] == (height, width):
        return m.copy()
    if m.ndim == 2:
        return cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.stack([cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR) for x in flat])
    return out.reshape(*m.shape[:-2], height, width)


def resize_normalized(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a normalised (finite) map, then min-max it again (as every returned map is)."""
    out = resize(maps, height, width)  # a new float32 array: normalise it in place
    return _minmax_inplace(np.ascontiguousarray(out, dtype=np.float32))


def colorize(map01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map → RGB uint8 heatmap with an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(
            f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}"
        )
    u8 = np.uint8(np.clip(map01, 0, 1) * 255 + 0.5)
    return cv2.applyColorMap(u8, COLORMAPS[colormap])[..., ::-1]


_CPP: object = None


def _cpp():
    """onnxcam's C++ core (``onnxcam.cpp``) when ``ONNXCAM_CPP_LIB`` names a built
    ``libonnxcam_post``; None otherwise (or if it cannot be loaded)."""
    global _CPP
    if _CPP is None:
        _CPP = False
        if os.environ.get("ONNXCAM_CPP_LIB"):
            try:
                from . import cpp

                cpp.load()
                _CPP = cpp
            except (OSError, AttributeError):
                _CPP = False
    return _CPP or None


def overlay(
    image: np.ndarray,
    map01: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    threshold: float | None = None,
) -> np.ndarray:
    """Blend a colorized map over an RGB image (map resized to the image); RGB uint8 out.

    ``alpha`` is the heatmap's weight. With ``threshold``, pixels whose map value is below it
    keep the plain image.
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
    m = resize(map01, img.shape[0], img.shape[1])
    accel = _cpp()
    if accel is not None:  # the C++ core: the same bytes, ~15x faster at 1080p
        u8 = img.astype(np.uint8)
        if np.array_equal(u8, img):  # it blends 8-bit images (decoded photos are)
            return accel.overlay(u8, m, alpha=alpha, colormap=colormap, threshold=threshold)
    heat = colorize(m, colormap).astype(np.float32)
    blend = (1 - alpha) * img + alpha * heat
    if threshold is not None:
        blend = np.where((m >= threshold)[..., None], blend, img)
    return np.uint8(np.clip(blend + 0.5, 0, 255))


def threshold_mask(map01: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of pixels ≥ ``fraction`` of the map's maximum."""
    return (
        map01 >= fraction * float(np.max(map01, initial=0.0))
        if np.max(map01) > 0
        else np.zeros_like(map01, bool)
    )
