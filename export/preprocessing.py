"""What the image input takes: its element type, and whether the graph normalises it itself.

The contract's ``InputSpec`` tells the runtime how to turn pixels into the model input. It
comes from the caller (``preset``, ``mean``/``std``/``scale``/``color``) or, when the caller
says nothing, from the graph:

* a **uint8** input takes pixels as they are (the ``raw`` preset; nothing else is possible);
* arithmetic with constants right after the input (``Cast``, ``Div``/``Mul``/``Sub``/``Add``
  by constants — a Keras ``Rescaling`` or ``Normalization`` layer, a torch wrapper with its
  mean and std) means the graph **normalises its input itself**: with a division by ~255
  (or a multiplication by ~1/255, or 1/127.5) the graph expects 0–255 pixels (``raw``);
  otherwise the range it expects cannot be told from the graph and the export stops with
  the choices (never a guess that normalises twice);
* otherwise the ``torch`` preset (ImageNet mean/std on [0, 1] RGB), the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from onnxcam.contract import PRESETS
from onnxcam.errors import ExportError

from .graph import GraphView

PASS_THROUGH = {"Cast", "Transpose", "Identity", "Reshape", "Unsqueeze", "Squeeze"}
ARITHMETIC = {"Sub", "Div", "Mul", "Add"}
PIXEL_SCALES = (255.0, 127.5)
"""Divisors that show a graph takes 0–255 pixels (x / 255 → [0, 1], x / 127.5 − 1 → [−1, 1])."""


@dataclass(frozen=True)
class InGraph:
    """Normalisation found right after the image input."""

    ops: tuple[str, ...]
    """The arithmetic ops, in order (e.g. ("Div", "Sub", "Div"))."""
    pixels: bool
    """A division by 255 or 127.5 (or the multiplication by its inverse) is among them."""


def input_dtype(view: GraphView, image: str) -> str:
    """float32 or uint8 (other types are refused)."""
    elem = view.dtype(image)
    if elem == TensorProto.UINT8:
        return "uint8"
    if elem == TensorProto.FLOAT:
        return "float32"
    raise ExportError(
        f"image input {image!r} has element type {TensorProto.DataType.Name(elem)}; onnxcam "
        "feeds float32 or uint8 images"
    )


def in_graph_normalization(view: GraphView, image: str) -> InGraph | None:
    """The constant arithmetic the graph applies to the image before anything else, or None."""
    ops: list[str] = []
    pixels = False
    t = image
    while True:
        users = view.consumers.get(t, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in PASS_THROUGH:
            t = node.output[0]
            continue
        if node.op_type not in ARITHMETIC:
            break
        other = [i for i in node.input if i != t]
        const = view.const(other[0]) if len(other) == 1 else None
        if const is None:
            break
        ops.append(node.op_type)
        pixels |= _is_pixel_scale(node.op_type, np.asarray(const, dtype=np.float64))
        t = node.output[0]
    return InGraph(tuple(ops), pixels) if ops else None


def _is_pixel_scale(op: str, c: np.ndarray) -> bool:
    if c.size == 0 or not np.all(c == c.reshape(-1)[0]):
        return False
    v = float(c.reshape(-1)[0])
    scales = np.array(PIXEL_SCALES)
    if op == "Div":
        return bool(np.any(np.isclose(v, scales, rtol=1e-3)))
    return op == "Mul" and bool(np.any(np.isclose(v, 1 / scales, rtol=1e-3)))


def resolve(view: GraphView, image: str, preset: str | None, given: dict) -> tuple[str, dict]:
    """(input dtype, the InputSpec preprocessing fields): the caller's ``preset`` and explicit
    ``given`` values (color, mean, std, scale; None = not given) win; otherwise the graph's
    (see the module docstring). Contradictions are ``ExportError``s."""
    dtype = input_dtype(view, image)
    explicit = {k: v for k, v in given.items() if v is not None}
    if preset is not None and preset not in PRESETS:
        raise ExportError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    if dtype == "uint8":
        if (preset not in (None, "raw")) or any(k in explicit for k in ("mean", "std", "scale")):
            raise ExportError(
                f"image input {image!r} is uint8: it takes 0–255 pixels as they are (preset "
                "raw); a mean, std, scale or another preset cannot apply"
            )
        preset = "raw"
    if preset is None and not ({"mean", "std", "scale"} & explicit.keys()):
        found = in_graph_normalization(view, image)
        if found is not None and found.pixels:
            preset = "raw"
        elif found is not None:
            raise ExportError(
                f"the graph normalises its input itself ({', '.join(found.ops)} by constants "
                f"after {image!r}) but does not show which pixel range it expects; say it: "
                "--preset raw (0–255), --preset unit ([0, 1]), --preset tf ([−1, 1]) or "
                "--scale/--mean/--std"
            )
    fields = dict(PRESETS[preset]) if preset is not None else {}
    fields.update(explicit)
    return dtype, fields


__all__ = ["InGraph", "in_graph_normalization", "input_dtype", "resolve"]
