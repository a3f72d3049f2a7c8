"""Image input with OpenCV: any size, grayscale, RGBA, 16-bit, EXIF orientation → model tensor."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import cv2.utils.logging
import numpy as np

from .contract import NCHW, InputSpec
from .errors import ImageError

# onnxcam reports unreadable images itself, on one line: keep OpenCV's own log quiet
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB float32 in [0, 255], shape (H, W, 3); EXIF orientation applied.

    8- and 16-bit, grayscale and RGBA files are accepted (alpha is composited over black,
    16-bit is scaled to 0–255). Raises ``ImageError`` with the reason when the file is
    missing, empty or not decodable.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(p))


def decode_image(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """An encoded image's bytes (a file's content) → RGB float32 in [0, 255], as ``read_image``
    (which reads the file and calls this); ``ImageError`` names ``name`` when it cannot."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if data.size == 0:
        raise ImageError(f"{name}: empty file")
    # ANYDEPTH|ANYCOLOR keeps 16-bit and grayscale and still applies EXIF orientation
    # (IMREAD_UNCHANGED would ignore the orientation tag).
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None or img.size == 0:
        raise ImageError(f"{name}: not a decodable image")
    rgb = to_rgb(img)
    if _may_have_alpha(data):  # composite over black; the colour decode above drops alpha
        full = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        has = full is not None and full.ndim == 3 and full.shape[2] == 4
        if has and full.shape[:2] == rgb.shape[:2]:
            rgb = rgb * (_to_float255(full[..., 3])[..., None] / 255.0)
    return rgb


def _may_have_alpha(data: np.ndarray) -> bool:
    head = data[:12].tobytes()
    return head.startswith(b"\x89PNG") or head[8:12] == b"WEBP" or head[:2] in (b"II", b"MM")


def _to_float255(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 257.0
    if np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        return np.clip(f * 255.0 if f.max(initial=0) <= 1.0 else f, 0, 255)
    return np.clip(a.astype(np.float32), 0, 255)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV BGR/BGRA/gray array (any depth) → RGB float32 in [0, 255]."""
    f = _to_float255(img)
    if f.ndim == 2:
        return np.repeat(f[..., None], 3, axis=2)
    if f.shape[2] == 1:
        return np.repeat(f, 3, axis=2)
    return np.ascontiguousarray(f[..., 2::-1]) if f.shape[2] >= 3 else f


def as_rgb_array(image: np.ndarray) -> np.ndarray:
    """A caller's array (H, W), (H, W, 1|3|4) in RGB(A), uint8/uint16/float → RGB float 0–255."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or a.size == 0:
        raise ImageError(f"expected an image array (H, W[, 1|3|4]), got shape {a.shape}")
    f = _to_float255(a)
    if f.ndim == 2:
        return np.repeat(f[..., None], 3, axis=2)
    if f.shape[2] == 1:
        return np.repeat(f, 3, axis=2)
    if f.shape[2] == 4:
        return f[..., :3] * (f[..., 3:] / 255.0)
    return f


def preprocess(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """RGB float images → the model's input batch per the recorded spec.

    Each image is resized (bilinear; area when shrinking) to the model size, converted to the
    model's colour order, then ``(pixel · scale − mean) / std``, in the spec's layout. Written
    straight into the batch, channel by channel for NCHW (one multiply-add pass per plane;
    the temporaries and the final transpose of the NHWC form cost ~8 ms at 640×640)."""
    h, w, c = spec.height, spec.width, spec.channels
    std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (c,))
    mul = (spec.scale / std).astype(np.float32)
    add = (-np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (c,)) / std).astype(np.float32)
    planar = spec.layout == NCHW
    batch = np.empty((len(images), c, h, w) if planar else (len(images), h, w, c), np.float32)
    for i, img in enumerate(images):
        r = img
        if img.shape[:2] != (h, w):
            shrink = img.shape[0] > h and img.shape[1] > w
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            r = cv2.resize(img, (w, h), interpolation=interp)
        if spec.color == "BGR":
            r = r[..., ::-1]
        elif spec.color == "GRAY":
            r = (r @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        if planar:
            for k in range(c):
                np.multiply(r[..., k], mul[k], out=batch[i, k])
                batch[i, k] += add[k]
        else:
            np.multiply(r, mul, out=batch[i])
            batch[i] += add
    return batch


def blur(x: np.ndarray, spec: InputSpec, fraction: float = 0.05) -> np.ndarray:
    """One model input ``x`` (the spec's layout) blurred per channel by a Gaussian of σ =
    ``fraction`` of its width (Integrated Gradients' blur baseline). A blur commutes with the
    per-channel ``(p · scale − mean) / std``, so this is the preprocessed blurred image."""
    planar = spec.layout == NCHW
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0) if planar else x)
    sigma = fraction * hwc.shape[1]
    out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    out = out.reshape(hwc.shape)
    return np.ascontiguousarray(out.transpose(2, 0, 1) if planar else out, dtype=np.float32)


def list_images(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files given directly, plus image files inside given folders (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(
                sorted(
                    f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            found.append(p)
    return found
