"""What a detector or a segmenter explains: its score tensor, its boxes and its default layers.

A classifier's head is found in ``layers.find_head``; the other tasks start here. Every choice
is read from the graph or refused with the choices listed (never guessed):

- **detect**: the output ``[B, 4 + K, N]`` (YOLOv8/11: box rows, then class scores) or
  ``[B, N, 5 + K]`` / ``[B, N, 4 + K]`` (YOLOv5 with objectness / SSD-style). The differentiated
  tensor is the class logits before the output's ``Sigmoid`` when the graph has one (what
  ultralytics' own LayerCAM differentiates), else the output itself. The default target layers
  are the feature maps entering the head at every scale: walking back from the scores, the
  input of each first ``Conv`` whose input is shared (by the box and class branches, or the
  next neck layer).
- **segment**: the output ``[B, K, H, W]``; the default layer is the feature map entering the
  classifier (the data input of the last ``Conv`` before the logits).
"""

from __future__ import annotations

from onnxcam.contract import DETECT_FORMATS, DetectSpec
from onnxcam.errors import ExportError

from .graph import GraphView, attr

TASK_RANKS = {"classify": 2, "detect": 3, "segment": 4}
"""The rank of each task's model output."""

_SHAPES = {
    2: "[batch, classes]",
    3: "[batch, 4+K, anchors] or [batch, anchors, 4+K]",
    4: "[batch, classes, H, W]",
}


def task_of(view: GraphView, output: str, task: str | None) -> str:
    """The task of ``output`` (given, or from its rank); a mismatch is a one-line error."""
    shape = view.shape(output)
    rank = len(shape) if shape is not None else None
    by_rank = {r: t for t, r in TASK_RANKS.items()}
    if task is None:
        if rank not in by_rank:
            raise ExportError(
                f"model output {output!r} has shape {list(shape) if shape else 'unknown'}: "
                "not a classifier, detector or segmenter output (--task classify|detect|segment)"
            )
        return by_rank[rank]
    if task not in TASK_RANKS:
        raise ExportError(f"unknown task {task!r}; choose one of {', '.join(TASK_RANKS)}")
    if rank != TASK_RANKS[task]:
        hint = (
            f" — a {by_rank[rank]} output: export with --task {by_rank[rank]}"
            if rank in by_rank
            else ""
        )
        raise ExportError(
            f"--task {task} needs a {_SHAPES[TASK_RANKS[task]]} output; model output {output!r} "
            f"is {list(shape) if shape else 'of unknown shape'}{hint}"
        )
    return task


def detect_format(
    view: GraphView, output: str, fmt: str | None, num_labels: int | None
) -> DetectSpec:
    """The detector output's layout (``contract.DETECT_FORMATS``) and class count."""
    shape = view.shape(output) or ()
    a, b = (shape[1], shape[2]) if len(shape) == 3 else (None, None)
    if not isinstance(a, int) or not isinstance(b, int):
        raise ExportError(
            f"detector output {output!r} needs static sizes, got {list(shape)}: export with --size"
        )
    if fmt is None:
        fits = []
        if a < b and a > 4:
            fits.append(("yolov8", a - 4))
        if b < a:
            fits += [f for f in (("yolov5", b - 5), ("anchors", b - 4)) if f[1] > 0]
        if num_labels is not None:
            fits = [f for f in fits if f[1] == num_labels]
        if len(fits) != 1:
            choices = ", ".join(f"{f} ({k} classes)" for f, k in fits) or ", ".join(DETECT_FORMATS)
            raise ExportError(
                f"cannot tell the layout of detector output {output!r} {list(shape)}: choose "
                f"--detect-format from {choices} (or give --labels)"
            )
        fmt = fits[0][0]
    if fmt not in DETECT_FORMATS:
        raise ExportError(
            f"unknown --detect-format {fmt!r}; choose one of {', '.join(DETECT_FORMATS)}"
        )
    k = a - 4 if fmt == "yolov8" else b - (5 if fmt == "yolov5" else 4)
    if k < 1 or (num_labels is not None and num_labels != k):
        raise ExportError(
            f"detector output {output!r} {list(shape)} as {fmt} has {k} classes"
            + (f", but {num_labels} labels were given" if num_labels is not None else "")
        )
    return DetectSpec(output, fmt, k)


def class_logits(view: GraphView, spec: DetectSpec) -> tuple[str, str | None]:
    """(differentiated tensor, activation) of a detector: for a YOLOv8-style output made as
    ``Concat(boxes, Sigmoid(z))`` on axis 1, the class logits z ``[B, K, N]`` (sigmoid);
    else the output itself (its scores are taken as they are)."""
    t = spec.output
    while (p := view.producer.get(t)) is not None and p.op_type == "Identity":
        t = p.input[0]
    p = view.producer.get(t)
    if (
        spec.format == "yolov8"
        and p is not None
        and p.op_type == "Concat"
        and attr(p, "axis") in (1, -2)
    ):
        last = p.input[-1]
        shape = view.shape(last)
        if shape is not None and len(shape) == 3 and shape[1] == spec.num_classes:
            s = view.producer.get(last)
            if s is not None and s.op_type == "Sigmoid":
                return s.input[0], "sigmoid"
            return last, None
    return t, None


def head_inputs(view: GraphView, scores: str) -> list[str]:
    """The feature maps entering a detection head, largest first: walking back from
    ``scores`` over the head's nodes, the data input of each ``Conv`` that is shared (read by
    another branch too). An error when the walk reaches the image."""
    found: list[str] = []
    todo, seen = [scores], set()
    inputs = set(view.graph_inputs)
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in inputs:
            raise ExportError(
                "cannot find the feature maps entering the detection head (the walk back from "
                "the scores reached the image); choose them with --layer"
            )
        p = view.producer.get(t)
        if p is None:
            continue
        data = [i for i in p.input if i and view.is_data(i) and view.is_float(i)]
        if p.op_type == "Conv" and data and len(view.consumers.get(data[0], [])) >= 2:
            if data[0] not in found:
                found.append(data[0])
            continue
        todo.extend(data)
    if not found:
        raise ExportError("no feature map enters the detection head; choose layers with --layer")
    return sorted(found, key=lambda x: -_positions(view, x))


def classifier_input(view: GraphView, logits: str) -> str:
    """The feature map entering a segmenter's classifier: the data input of the last ``Conv``
    before ``logits``."""
    t = logits
    while (p := view.producer.get(t)) is not None:
        data = [i for i in p.input if i and view.is_data(i) and view.is_float(i)]
        if not data:
            break
        if p.op_type == "Conv":
            return data[0]
        t = data[0]
    raise ExportError("no Conv before the segmentation logits: choose the layer with --layer")


def _positions(view: GraphView, t: str) -> int:
    shape = view.shape(t) or ()
    n = 1
    for d in shape[2:]:
        n *= d if isinstance(d, int) else 1
    return n
