"""What a detector or a segmenter explains: its score tensor, its boxes and its default layers.

A classifier's head is found in ``layers.find_head``; the other tasks start here. Every choice
is read from the graph or refused with the choices listed (never guessed):

- **detect**: the output ``[B, 4 + K, N]`` (YOLOv8/11: box rows, then class scores) or
  ``[B, N, 5 + K]`` / ``[B, N, 4 + K]`` (YOLOv5 with objectness / SSD-style). The differentiated
  tensor is the class logits before the output's ``Sigmoid`` when the graph has one (what
  ultralytics' own LayerCAM differentiates), else the output itself. The default target layers
  are the feature maps entering the head at every scale (``head_inputs``).
- **segment**: the output ``[B, K, H, W]``; the default layer is the feature map entering the
  classifier (the data input of the last ``Conv`` before the logits).
"""

from __future__ import annotations

import onnx

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
    """The feature maps entering a detection head, one per scale, largest first.

    Walking back from ``scores``, each first ``Conv`` reached is a scale's prediction conv;
    from it, a chain of convs leads back to a map the scale's branch shares with others (read
    by two or more convs: the box and class branches, the next neck layer). The head is as
    deep as its shallowest such chain (every scale's head has the same layers), and a scale's
    head input is the input of that many convs back on its chain — YOLOv8/11's five-conv class
    branch, YOLOv5's single conv (whose last scale feeds nothing else). Refused unless the
    inputs are distinct maps of different sizes."""
    inputs = set(view.graph_inputs)

    def data_of(node: onnx.NodeProto) -> list[str]:
        return _data_inputs(view, node)

    def convs_before(t: str) -> list[onnx.NodeProto]:
        """The first Conv on each data path back from t (not crossing a Conv)."""
        found, todo, seen = [], [t], set()
        while todo:
            x = todo.pop()
            if x in seen:
                continue
            seen.add(x)
            if x in inputs:
                raise ExportError(
                    "cannot find the feature maps entering the detection head (the walk back "
                    "from the scores reached the image); choose them with --layer"
                )
            p = view.producer.get(x)
            if p is None:
                continue
            if p.op_type == "Conv":
                if p not in found:
                    found.append(p)
                continue
            todo.extend(data_of(p))
        return found

    def shared(t: str) -> bool:
        return sum(c.op_type == "Conv" for c in view.consumers.get(t, [])) >= 2

    chains = []
    for conv in convs_before(scores):
        chain = [conv]
        while not shared(data_of(chain[-1])[0]) and len(chain) < 64:
            before = convs_before(data_of(chain[-1])[0])
            if len(before) != 1:
                break
            chain.append(before[0])
        chains.append(chain)
    if not chains:
        raise ExportError("no feature map enters the detection head; choose layers with --layer")
    depth = min(len(c) for c in chains)
    found = list(dict.fromkeys(data_of(c[depth - 1])[0] for c in chains))
    sizes = [_positions(view, x) for x in found]
    if len(found) != len(chains) or len(set(sizes)) != len(sizes):
        raise ExportError(
            "cannot tell the feature maps entering the detection head apart (found "
            f"{', '.join(found)}); choose them with --layer"
        )
    return sorted(found, key=lambda x: -_positions(view, x))


def classifier_input(view: GraphView, logits: str) -> str:
    """The feature map entering a segmenter's classifier: the data input of the last ``Conv``
    before ``logits``."""
    t = logits
    while (p := view.producer.get(t)) is not None:
        data = _data_inputs(view, p)
        if not data:
            break
        if p.op_type == "Conv":
            return data[0]
        t = data[0]
    raise ExportError("no Conv before the segmentation logits: choose the layer with --layer")


def _data_inputs(view: GraphView, node: onnx.NodeProto) -> list[str]:
    """The float data tensors ``node`` reads (not weights' shapes, indices or the like)."""
    return [i for i in node.input if i and view.is_data(i) and view.is_float(i)]


def _positions(view: GraphView, t: str) -> int:
    shape = view.shape(t) or ()
    n = 1
    for d in shape[2:]:
        n *= d if isinstance(d, int) else 1
    return n
