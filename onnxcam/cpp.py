"""numpy-friendly ctypes bindings to onnxcam's C++ post-processing core (libonnxcam_post).

The same maps, overlays and boxes as ``onnxcam.methods`` / ``onnxcam.postprocess`` /
``onnxcam.localize``, computed by the C library. ctypes keeps this module pure Python: nothing
is compiled at ``pip install`` time, the shared library is built once with CMake
(see docs/cpp.md) and looked up on first use:

1. the path in the environment variable ``ONNXCAM_CPP_LIB``;
2. the library next to this module;
3. ``cpp_bindings/build*/`` of the source checkout (the usual CMake build directories).

``onnxcam.postprocess.overlay`` uses it when ``ONNXCAM_CPP_LIB`` is set (identical bytes).

Example::

    import onnxcam.cpp as cc

    feat = cc.cam_map("gradcam", A, G)  # [B, h, w] in [0, 1]
    big = cc.resize_normalized(feat[0], 1080, 1920)
    rgb = cc.overlay(image, big, alpha=0.5)
    boxes = cc.boxes(big, threshold=0.5)
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import OnnxcamError

LIB_ENV = "ONNXCAM_CPP_LIB"

OK = 0
STATUS_NAMES = {
    0: "ok",
    1: "invalid argument",
    2: "null pointer",
    3: "bad shape",
    4: "unsupported",
    5: "out of memory",
    6: "internal error",
}
LAYOUTS = {"NCHW": 0, "NHWC": 1}
NEEDS_ACTIVATIONS, NEEDS_GRADIENTS, NEEDS_CAM_WEIGHTS = 1, 2, 4


class CppError(OnnxcamError, RuntimeError):
    """A failed library call: ``status`` is the C status code, the message the library's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message or STATUS_NAMES.get(status, f"status {status}"))
        self.status = status


class Params(ctypes.Structure):
    """``onnxcam_params`` (include/onnxcam.h); start from :func:`default_params`."""

    _fields_ = (
        ("struct_size", ctypes.c_uint32),
        ("method", ctypes.c_int32),
        ("layout", ctypes.c_int32),
        ("relu", ctypes.c_int32),
        ("normalize", ctypes.c_int32),
        ("colormap", ctypes.c_int32),
        ("alpha", ctypes.c_double),
        ("overlay_threshold", ctypes.c_double),
        ("box_fraction", ctypes.c_double),
        ("box_min_area", ctypes.c_double),
        ("box_largest", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    )


class _CBox(ctypes.Structure):
    _fields_ = (
        ("x0", ctypes.c_int32),
        ("y0", ctypes.c_int32),
        ("x1", ctypes.c_int32),
        ("y1", ctypes.c_int32),
        ("area", ctypes.c_int64),
        ("score", ctypes.c_double),
    )


class ComponentBox(NamedTuple):
    """The box of one connected component of a thresholded map, as the C library returns it
    (``localize.Box`` is the numpy side's): (x0, y0) inclusive, (x1, y1) exclusive; score =
    mean map value in the component; area = its pixel count."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    area: int

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


Box = ComponentBox
"""The older name of ``ComponentBox`` (kept for ``onnxcam_cpp`` users)."""


# ---- loading ---------------------------------------------------------------------------------
def _library_names() -> list[str]:
    if sys.platform == "win32":
        return ["onnxcam_post.dll", "libonnxcam_post.dll"]
    if sys.platform == "darwin":
        return ["libonnxcam_post.dylib"]
    return ["libonnxcam_post.so"]


def library_candidates() -> list[Path]:
    """Where :func:`load` looks, in order (the environment variable first)."""
    out: list[Path] = []
    if os.environ.get(LIB_ENV):
        out.append(Path(os.environ[LIB_ENV]))
    here = Path(__file__).resolve().parent
    root = here.parent / "cpp_bindings"  # the source checkout (editable installs)
    builds = [d for d in sorted(root.glob("build*")) if "sanitize" not in d.name]  # no ASan libs
    dirs = [here, root / "build", *builds, *(sub for d in builds for sub in sorted(d.glob("*")))]
    for d in dict.fromkeys(dirs):
        out.extend(d / n for n in _library_names())
    return out


_LIB: ctypes.CDLL | None = None
_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_SIGNATURES = {
    "onnxcam_version": (ctypes.c_char_p, []),
    "onnxcam_last_error": (ctypes.c_char_p, []),
    "onnxcam_status_string": (ctypes.c_char_p, [_I32]),
    "onnxcam_default_params": (Params, []),
    "onnxcam_method_name": (ctypes.c_char_p, [_I32]),
    "onnxcam_method_from_name": (_I32, [ctypes.c_char_p]),
    "onnxcam_method_needs": (_I32, [_I32]),
    "onnxcam_colormap_from_name": (_I32, [ctypes.c_char_p]),
    "onnxcam_cam_map": (_I32, [_P, _P, _P, _I64, _I64, _I64, _I64, ctypes.POINTER(Params), _P]),
    "onnxcam_normalize": (_I32, [_P, _I64, _I64, _I64, _P]),
    "onnxcam_resize": (_I32, [_P, _I64, _I64, _I64, _P, _I64, _I64]),
    "onnxcam_resize_normalized": (_I32, [_P, _I64, _I64, _I64, _P, _I64, _I64]),
    "onnxcam_colormap_table": (_I32, [_I32, _P]),
    "onnxcam_colorize": (_I32, [_P, _I64, _I64, _I32, _P]),
    "onnxcam_overlay": (_I32, [_P, _I64, _I64, _P, ctypes.POINTER(Params), _P]),
    "onnxcam_threshold_mask": (_I32, [_P, _I64, _I64, ctypes.c_double, _P]),
    "onnxcam_boxes": (
        _I32,
        [_P, _I64, _I64, ctypes.POINTER(Params), _P, _I64, ctypes.POINTER(_I64)],
    ),
}


def load(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Load (once) and return the shared library; ``path`` overrides the search."""
    global _LIB
    if path is None and _LIB is not None:
        return _LIB
    candidates = [Path(path)] if path is not None else library_candidates()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise OSError(
            "libonnxcam_post not found; build it (cmake -S cpp_bindings -B cpp_bindings/build "
            f"&& cmake --build cpp_bindings/build) or set {LIB_ENV}. Looked in: "
            + ", ".join(str(p) for p in candidates[:6])
        )
    lib = ctypes.CDLL(str(found))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _LIB = lib
    return lib


def _check(status: int) -> None:
    if status != OK:
        raise CppError(status, load().onnxcam_last_error().decode())


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _f32(a, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"{name} must be at least 2-D (..., height, width), got {a.shape}")
    return a


def _batch(m: np.ndarray) -> int:
    """Number of (h, w) maps in (..., h, w); 0 (rejected by the library) when empty."""
    return int(np.prod(m.shape[:-2], dtype=np.int64)) if m.size else 0


# ---- information -------------------------------------------------------------------------
def version() -> str:
    return load().onnxcam_version().decode()


def default_params() -> Params:
    return load().onnxcam_default_params()


def method_id(method: str | int) -> int:
    if isinstance(method, int):
        return method
    mid = load().onnxcam_method_from_name(method.encode())
    if mid < 0:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(methods())}")
    return mid


def methods() -> list[str]:
    """The methods the library implements (onnxcam's names)."""
    lib = load()
    names, i = [], 0
    while (name := lib.onnxcam_method_name(i)) is not None:
        names.append(name.decode())
        i += 1
    return names


def colormap_id(colormap: str | int) -> int:
    if isinstance(colormap, int):
        return colormap
    cid = load().onnxcam_colormap_from_name(colormap.encode())
    if cid < 0:
        raise ValueError(f"unknown colormap {colormap!r}")
    return cid


def colormap_table(colormap: str | int = "jet") -> np.ndarray:
    """The colormap's 256 RGB entries, [256, 3] uint8."""
    out = np.empty((256, 3), np.uint8)
    _check(load().onnxcam_colormap_table(colormap_id(colormap), _ptr(out)))
    return out


# ---- maps --------------------------------------------------------------------------------
def cam_map(
    method: str | int,
    A,
    G=None,
    w=None,
    layout: str = "NCHW",
    relu: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """Maps [B, h, w] of ``method`` from activations A and gradients G ([B, C, h, w] NCHW or
    [B, h, w, C] NHWC) and classifier weights w [B, C] (for ``cam``).

    With ``relu`` and ``normalize`` (the defaults) this is the Python runtime's
    ``CamMap.feature``; with both off it is ``onnxcam.methods``' raw map (non-finite values 0).
    """
    lib = load()
    mid = method_id(method)
    needs = lib.onnxcam_method_needs(mid)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    A = np.ascontiguousarray(A, dtype=np.float32)
    if A.ndim != 4:
        raise ValueError(f"activations must be 4-D [B, C, h, w] / [B, h, w, C], got {A.shape}")
    B = A.shape[0]
    if layout == "NCHW":
        C, h, wd = A.shape[1], A.shape[2], A.shape[3]
    else:
        h, wd, C = A.shape[1], A.shape[2], A.shape[3]
    if needs & NEEDS_GRADIENTS or G is not None:
        if G is None:
            raise ValueError(f"{method} needs gradients")
        G = np.ascontiguousarray(G, dtype=np.float32)
        if G.shape != A.shape:
            raise ValueError(f"gradients {G.shape} and activations {A.shape} differ in shape")
    if needs & NEEDS_CAM_WEIGHTS or w is not None:
        if w is None:
            raise ValueError(f"{method} needs cam weights w [B, C]")
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.shape != (B, C):
            raise ValueError(f"cam weights must be [B, C] = {(B, C)}, got {w.shape}")
    p = lib.onnxcam_default_params()
    p.method, p.layout = mid, LAYOUTS[layout]
    p.relu, p.normalize = int(bool(relu)), int(bool(normalize))
    out = np.empty((B, h, wd), np.float32)
    _check(lib.onnxcam_cam_map(_ptr(A), _ptr(G), _ptr(w), B, C, h, wd, ctypes.byref(p), _ptr(out)))
    return out


def normalize(maps) -> np.ndarray:
    """Per-image min-max over the last two axes (postprocess.normalize)."""
    m = _f32(maps, "maps")
    out = np.empty_like(m)
    h, w = m.shape[-2:]
    _check(load().onnxcam_normalize(_ptr(m), _batch(m), h, w, _ptr(out)))
    return out


def _resize(fn: str, maps, height: int, width: int) -> np.ndarray:
    m = _f32(maps, "maps")
    h, w = m.shape[-2:]
    out = np.empty((*m.shape[:-2], height, width), np.float32)
    _check(getattr(load(), fn)(_ptr(m), _batch(m), h, w, _ptr(out), height, width))
    return out


def resize(maps, height: int, width: int) -> np.ndarray:
    """Bilinear resize (OpenCV INTER_LINEAR) of (..., h, w) maps (postprocess.resize)."""
    return _resize("onnxcam_resize", maps, height, width)


def resize_normalized(maps, height: int, width: int) -> np.ndarray:
    """Resize, then min-max again (postprocess.resize_normalized)."""
    return _resize("onnxcam_resize_normalized", maps, height, width)


# ---- colour ------------------------------------------------------------------------------
def colorize(map01, colormap: str | int = "jet") -> np.ndarray:
    """A [0, 1] map (h, w) -> RGB uint8 heatmap (h, w, 3) (postprocess.colorize)."""
    m = _f32(map01, "map01")
    if m.ndim != 2:
        raise ValueError(f"map01 must be 2-D, got {m.shape}")
    out = np.empty((*m.shape, 3), np.uint8)
    _check(load().onnxcam_colorize(_ptr(m), *m.shape, colormap_id(colormap), _ptr(out)))
    return out


def overlay(
    image,
    map01,
    alpha: float = 0.5,
    colormap: str | int = "jet",
    threshold: float | None = None,
) -> np.ndarray:
    """Blend a colorized map over an RGB uint8 image (postprocess.overlay); the map is resized
    to the image first when their sizes differ (without normalising again, as in Python)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got {img.shape}")
    H, W = img.shape[:2]
    m = _f32(map01, "map01")
    if m.shape != (H, W):
        m = resize(m, H, W)
    lib = load()
    p = lib.onnxcam_default_params()
    p.alpha, p.colormap = float(alpha), colormap_id(colormap)
    # a negative threshold lets every map value in [0, 1] through: the same as none
    p.overlay_threshold = -1.0 if threshold is None or threshold < 0 else float(threshold)
    out = np.empty_like(img)
    _check(lib.onnxcam_overlay(_ptr(img), H, W, _ptr(m), ctypes.byref(p), _ptr(out)))
    return out


# ---- localization ------------------------------------------------------------------------
def threshold_mask(map01, fraction: float = 0.5) -> np.ndarray:
    """Boolean mask map >= fraction * max (empty when max <= 0)."""
    m = _f32(map01, "map01")
    out = np.empty(m.shape, np.uint8)
    _check(load().onnxcam_threshold_mask(_ptr(m), *m.shape, float(fraction), _ptr(out)))
    return out.astype(bool)


def boxes(
    map01, threshold: float = 0.5, largest: bool = True, min_area: float = 0.01
) -> list[ComponentBox]:
    """Boxes around 8-connected components of the threshold mask (localize.boxes_from_map)."""
    m = _f32(map01, "map01")
    if m.ndim != 2:
        raise ValueError(f"map01 must be 2-D, got {m.shape}")
    lib = load()
    p = lib.onnxcam_default_params()
    p.box_fraction, p.box_largest, p.box_min_area = float(threshold), int(largest), min_area
    n = _I64(0)
    _check(lib.onnxcam_boxes(_ptr(m), *m.shape, ctypes.byref(p), None, 0, ctypes.byref(n)))
    if n.value == 0:
        return []
    arr = (_CBox * n.value)()
    _check(
        lib.onnxcam_boxes(
            _ptr(m), *m.shape, ctypes.byref(p), ctypes.addressof(arr), n.value, ctypes.byref(n)
        )
    )
    return [ComponentBox(b.x0, b.y0, b.x1, b.y1, b.score, b.area) for b in arr[: n.value]]
