"""A detector's default seed, in the graph: the kept detections, one backward row each.

For one image (batch 1) the graph decodes the boxes, keeps each anchor's best class, runs
ONNX ``NonMaxSuppression`` (class-wise, boxes as centre/size) and keeps the ``top`` best; the
seed gets one row per kept detection (the one-hot of its class at its anchor, over the
differentiated tensor), so one ``session.run`` returns the detections and, per detection, the
gradients at every head input — the forward runs once, the backward once per row
(``ScoreSpec.seed_rows``). When nothing passes ``conf`` the single best prediction is explained
and marked not kept (as ultralytics' LayerCAM does). For a batch of several images each image
gets one row: its best prediction.

The thresholds are optional inputs (``contract.DETECT_*``); ``onnxcam_target_class`` (≥ 0)
restricts an image's detections to that class. The result is ``onnxcam_detections``
``[rows, 8]``: x1, y1, x2, y2 (input pixels), score, class, anchor, kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.contract import DetectSpec

from .builder import NodeBuilder
from .gating import declare_output, if_else, optional_input


def _int(b: NodeBuilder, v: int) -> str:
    return b.const(np.array(v, dtype=np.int64))


def _filled(b: NodeBuilder, like: str, value: int) -> str:
    """An int64 tensor of ``like``'s shape filled with ``value`` (YOLOv5's objectness column
    index, one per row)."""
    return b.Expand(b.const(np.array(value, np.int64)), b.Shape(like))


def boxes_and_scores(b: NodeBuilder, spec: DetectSpec, output: str) -> tuple[str, str]:
    """(boxes ``[B, N, 4]`` centre x, centre y, w, h; class scores ``[B, K, N]``) of the
    model's output, as ``DetectSpec`` lays them out."""
    k = spec.num_classes
    if not spec.anchors_first:  # [B, 4 + K, N]
        boxes = b.Transpose(b.Slice(output, b.ints(0), b.ints(4), b.ints(1)), perm=[0, 2, 1])
        return boxes, b.Slice(output, b.ints(4), b.ints(4 + k), b.ints(1))
    boxes = b.Slice(output, b.ints(0), b.ints(4), b.ints(2))  # [B, N, C]
    first = 5 if spec.objectness else 4
    scores = b.Slice(output, b.ints(first), b.ints(first + k), b.ints(2))
    if spec.objectness:
        scores = b.Mul(scores, b.Slice(output, b.ints(4), b.ints(5), b.ints(2)))
    return boxes, b.Transpose(scores, perm=[0, 2, 1])


def add_detections(
    st, b: NodeBuilder, sel: str
) -> tuple[str, Callable[[], str], Callable[[], str]]:
    """The detections output; returns (classes of the rows, functions appending the default
    seed's and the default score's nodes — run only when no seed is fed)."""
    view, spec, logits = st.view, st.head.detect, st.head.logits
    dtype = view.dtype(logits)
    f32 = TensorProto.FLOAT
    conf = optional_input(view, contract.DETECT_CONF_INPUT, f32, [1], np.array([0.25], np.float32))
    iou = optional_input(view, contract.DETECT_IOU_INPUT, f32, [1], np.array([0.45], np.float32))
    top = optional_input(view, contract.DETECT_TOP_INPUT, TensorProto.INT64, [1], np.array([10]))
    boxes, scores = boxes_and_scores(b, spec, spec.output)
    scores = b.Cast(scores, to=f32)
    boxes = b.Cast(boxes, to=f32)
    best_k = b.ArgMax(scores, axis=1, keepdims=1)  # [B, 1, N]: each anchor's best class
    best = b.GatherElements(scores, best_k, axis=1)  # and its score (half a TopK's time),
    # kept if the class input (≥ 0) is that class (ultralytics' NMS ``classes`` filter)
    wanted = b.Reshape(sel, b.ints([-1, 1, 1]))  # [B or 1, 1, 1]
    ok = b.Or(b.Less(wanted, _int(b, 0)), b.Equal(best_k, wanted))
    nms_scores = b.Mul(best, b.Cast(ok, to=f32))  # [B, 1, N]
    per_anchor = b.Squeeze(nms_scores, b.ints(1))  # [B, N]
    best_class = b.Squeeze(best_k, b.ints(1))  # [B, N]
    batch = b.Shape(scores, start=0, end=1)

    def rows_at(image: str, anchor: str) -> str:
        """[S, 3] rows (image, class, anchor) of anchors [S, 1] of images [S, 1]."""
        c = b.GatherND(best_class, b.Concat(image, anchor, axis=1))
        return b.Concat(image, b.Unsqueeze(c, b.ints(1)), anchor, axis=1)

    def best_rows() -> str:
        """Each image's best (class, anchor): [B, 3] rows (image, class, anchor)."""
        anchor = b.ArgMax(per_anchor, axis=1, keepdims=1)  # [B, 1]
        images = b.Unsqueeze(
            b.Range(_int(b, 0), b.Squeeze(batch, b.ints(0)), _int(b, 1)), b.ints(1)
        )
        return rows_at(images, anchor)

    def kept_rows() -> str:
        """One image: the ``top`` best after class-wise NMS, or its best prediction.

        Class-wise NMS as one NMS over each anchor's best class (ultralytics' own): every
        box is moved by its class times ``span`` (more than any box's extent), so boxes of
        different classes never overlap — the same boxes kept as one NMS per class, in one
        pass over the anchors instead of one per class."""
        span = 4.0 * max(st.spec.height, st.spec.width)
        off = b.Mul(
            b.Cast(b.Transpose(best_k, perm=[0, 2, 1]), to=f32),
            b.const(np.array([span, span, 0, 0], np.float32)),
        )  # [B, N, 4]: centres moved, sizes kept
        chosen = b.NonMaxSuppression(
            b.Add(boxes, off), nms_scores, top, iou, conf, center_point_box=1
        )  # [M, 3]: (image, 0, anchor)
        count = b.Shape(chosen, start=0, end=1)

        def ranked() -> str:
            image, _, anchor = b.Split(chosen, b.ints([1, 1, 1]), axis=1, outputs=3)
            values = b.GatherND(per_anchor, b.Concat(image, anchor, axis=1))
            _, order = b.TopK(values, b.Min(top, count), axis=0, outputs=2)
            picked = b.Gather(chosen, order, axis=0)
            image, _, anchor = b.Split(picked, b.ints([1, 1, 1]), axis=1, outputs=3)
            return rows_at(image, anchor)

        empty = b.Equal(count, b.ints(0))
        return if_else(view, b.Squeeze(empty, b.ints(0)), best_rows, ranked, TensorProto.INT64)

    one = b.Squeeze(b.Equal(batch, b.ints(1)), b.ints(0))
    rows = if_else(view, one, kept_rows, best_rows, TensorProto.INT64, ["rows", 3], "onnxcam/rows")
    image, cls, anchor = b.Split(rows, b.ints([1, 1, 1]), axis=1, outputs=3)  # [S, 1] each
    st.detect_rows = (image, cls, anchor)
    xywh = b.GatherND(boxes, b.Concat(image, anchor, axis=1))  # [S, 4]
    centre, size = b.Split(xywh, b.ints([2, 2]), axis=1, outputs=2)
    half = b.Mul(size, b.const(np.array(0.5, np.float32)))
    score = b.GatherND(scores, rows)  # [S]
    at = b.GatherND(per_anchor, b.Concat(image, anchor, axis=1))
    passed = b.Greater(b.Unsqueeze(at, b.ints(1)), conf)
    kept = b.Cast(passed, to=f32)  # NMS's own test (> conf), on the filtered best class
    columns = [
        b.Sub(centre, half),
        b.Add(centre, half),
        b.Unsqueeze(score, b.ints(1)),
        b.Cast(cls, to=f32),
        b.Cast(anchor, to=f32),
        kept,
    ]
    name = contract.DETECTIONS_OUTPUT
    view.add_node(helper.make_node("Concat", columns, [name], name=name, axis=1))
    declare_output(view, name, f32, ["rows", 8])
    seed = functools.partial(_seed, b, st, spec, rows, image, cls, anchor, dtype)
    score = functools.partial(_score, b, st, spec, image, cls, anchor)
    return b.Squeeze(cls, b.ints(1)), seed, score


def _score(b: NodeBuilder, st, spec: DetectSpec, image, cls, anchor) -> str:
    """Each row's score without a fed seed, read directly: its class logit (or score), or
    objectness · p[c] (YOLOv5)."""
    logits, shape = st.head.logits, st.view.shape(st.head.logits)
    if not spec.anchors_first:
        c = b.Add(cls, _int(b, shape[1] - spec.num_classes))
        return b.GatherND(logits, b.Concat(image, c, anchor, axis=1))
    first = 5 if spec.objectness else 4
    p = b.GatherND(logits, b.Concat(image, anchor, b.Add(cls, _int(b, first)), axis=1))
    if not spec.objectness:
        return p
    obj = b.GatherND(logits, b.Concat(image, anchor, _filled(b, cls, 4), axis=1))
    return b.Mul(p, obj)


def _seed(b: NodeBuilder, st, spec: DetectSpec, rows, image, cls, anchor, dtype) -> str:
    """One row per detection over the differentiated tensor: its class logit at its anchor
    (YOLOv8/11: the class logits ``[K, N]``, or the output's score rows), or the gradient of
    objectness · p[c] (YOLOv5: p[c] at the objectness column, objectness at the class's).
    Built as a product of two one-hots (one pass over the [rows, …] seed)."""
    view, logits = st.view, st.head.logits
    shape = view.shape(logits)

    def onehot(index: str, size: int, axis: int) -> str:
        """[S, 1, 1] index → [S, size, 1] or [S, 1, size] (``axis`` 1 or 2) one-hot."""
        place = [1, 1, 1]
        place[axis] = -1
        grid = b.Reshape(b.Range(_int(b, 0), _int(b, size), _int(b, 1)), b.ints(place))
        return b.Cast(b.Equal(b.Unsqueeze(index, b.ints(2)), grid), to=dtype)

    if not spec.anchors_first:  # [S, C, N]: C = K, or 4 + K for the output itself
        c = b.Add(cls, _int(b, shape[1] - spec.num_classes))
        return b.Mul(onehot(c, shape[1], 1), onehot(anchor, shape[2], 2))
    first = 5 if spec.objectness else 4
    column = b.Add(cls, _int(b, first))
    at_anchor = onehot(anchor, shape[1], 1)  # [S, N, 1]
    if not spec.objectness:
        return b.Mul(at_anchor, onehot(column, shape[2], 2))
    four = _filled(b, column, 4)
    p = b.GatherND(logits, b.Concat(image, anchor, column, axis=1))  # the output [B, N, 5 + K]
    obj = b.GatherND(logits, b.Concat(image, anchor, four, axis=1))
    cols = b.Add(
        b.Mul(onehot(four, shape[2], 2), b.Reshape(p, b.ints([-1, 1, 1]))),
        b.Mul(onehot(column, shape[2], 2), b.Reshape(obj, b.ints([-1, 1, 1]))),
    )  # [S, 1, C]: ∂(obj · p)/∂obj = p, ∂(obj · p)/∂p = obj
    return b.Mul(at_anchor, cols)
