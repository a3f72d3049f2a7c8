"""``NodeBuilder``: emit ONNX nodes with one call each, named after where they come from.

``b.Mul(x, y)`` appends a default-domain ``Mul`` node and returns its output name;
``b.Split(g, sizes, axis=1, outputs=3)`` returns a list. Every node the exporter appends is
built here: gradients, the score and top-k, CAM weights, heatmaps, head copies. Every name is
``<label>/grad/<n>``, the label being the forward node a gradient node differentiates (so a
viewer such as Netron shows where it comes from) or the pass's own (``onnxcam/score``,
``onnxcam/heatmap0``). Constants are deduplicated model-wide and stored as small initializers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import ExportError

from .graph import Dim, GraphView, node_label


class NodeBuilder:
    """Appends nodes to ``view``'s graph under the name prefix ``<label>/grad`` (the prefix
    every exported graph has carried since v1, kept for stable node names)."""

    def __init__(self, view: GraphView, label: str, consts: dict | None = None) -> None:
        self.view = view
        self.prefix = f"{label}/grad"
        self._consts: dict[tuple, str] = consts if consts is not None else {}
        self._n = 0

    @classmethod
    def for_node(cls, view: GraphView, node: onnx.NodeProto, consts: dict) -> NodeBuilder:
        return cls(view, node_label(node), consts)

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return functools.partial(self.op, op_type)

    # -- nodes ------------------------------------------------------------------------------
    def _fresh(self) -> str:
        name = self.view.unique_name(f"{self.prefix}/{self._n}")
        self._n += 1
        return name

    def op(self, op_type: str, *inputs: str | None, outputs: int = 1, **attrs: Any) -> Any:
        """Append ``op_type(*inputs, **attrs)``; return its output name (or list of names)."""
        outs = [self._fresh() for _ in range(outputs)]
        ins = ["" if i is None else i for i in inputs]
        while ins and ins[-1] == "":
            ins.pop()
        node = helper.make_node(op_type, ins, outs, name=outs[0], **attrs)
        self.view.add_node(node)
        return outs[0] if outputs == 1 else outs

    # -- constants --------------------------------------------------------------------------
    def const(self, value: Any, dtype: np.dtype | type | None = None) -> str:
        """A constant tensor (deduplicated across the whole export)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = self.view.unique_name(f"onnxcam/const/{len(self._consts)}")
            self.view.add_initializer(name, arr)
            self._consts[key] = name
        return name

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant with the float dtype of tensor ``like``."""
        return self.const(np.array(value, dtype=self.view.np_dtype(like)))

    def ints(self, values: Sequence[int] | int) -> str:
        """A 1-D int64 constant (for axes, shapes, starts, pads ...)."""
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1))

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """``op`` (ReduceMax, ReduceMean, ReduceLogSumExp, ...) over ``axes`` in the model's
        opset: axes became an input in opset 18 (ReduceSum already in 13)."""
        if op == "ReduceSum" or self.view.opset >= 18:
            return self.op(op, x, self.ints(list(axes)), keepdims=keepdims)
        return self.op(op, x, axes=list(axes), keepdims=keepdims)

    def zeros(self, shape: str, like: str) -> str:
        """A zero tensor of runtime shape ``shape`` (an int64 tensor) with ``like``'s dtype."""
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.view.np_dtype(like)))
        return self.ConstantOfShape(shape, value=zero)

    def zeros_like(self, x: str) -> str:
        """A zero tensor with ``x``'s runtime shape and dtype."""
        return self.zeros(self.Shape(x), x)

    seed_rows = False
    """Gradients may have more rows (axis 0) than the forward tensors: a head run on one
    image with several seed rows (``ScoreSpec.seed_rows``; ``build_backward(seed_rows=True)``)."""

    def reshape_like(self, g: str, x: str) -> str:
        """Reshape ``g`` to ``x``'s runtime shape (with ``seed_rows``: its rows kept)."""
        rank = self.view.rank(x)
        if not self.seed_rows or rank is None or rank == 0:
            return self.Reshape(g, self.Shape(x))
        rows = self.Shape(g, start=0, end=1)
        return self.Reshape(g, self.Concat(rows, self.Shape(x, start=1), axis=0))

    def unbroadcast(self, g: str, g_shape: Sequence[Dim] | None, x: str) -> str:
        """Sum ``g`` (whose static shape is ``g_shape``) back down to ``x``'s shape.

        Static shapes give a plain ``ReduceSum`` over the broadcast axes; when a dimension is
        unknown the axes are found at run time (``Shape``/``Equal``/``NonZero``).
        """
        xs = self.view.shape(x)
        if xs is None or g_shape is None:
            raise ExportError(f"internal: rank of {x!r} unknown, cannot un-broadcast its gradient")
        lead = len(g_shape) - len(xs)
        axes, dynamic = list(range(lead)), False
        for i, d in enumerate(xs):
            gd = g_shape[lead + i]
            if d == 1 and gd != 1:
                axes.append(lead + i)
            elif d is None or (not isinstance(d, int) and d != gd):
                dynamic = True
        if dynamic:
            sx = self.Shape(x)
            if lead:
                sx = self.Concat(self.ints([1] * lead), sx, axis=0)
            found = self.Reshape(self.NonZero(self.Equal(sx, self.ints(1))), self.ints(-1))
            return self.reshape_like(
                self.ReduceSum(g, found, keepdims=1, noop_with_empty_axes=1), x
            )
        if axes:
            g = self.ReduceSum(g, self.ints(axes), keepdims=1)
        return self.reshape_like(g, x) if lead else g

    def enable_optional_output(self, node: onnx.NodeProto, k: int, why: str) -> str:
        """Switch on optional output ``k`` of a forward node (the one allowed forward edit)."""
        while len(node.output) <= k:
            node.output.append("")
        if not node.output[k]:
            name = self.view.unique_name(f"{node_label(node)}/onnxcam_output_{k}")
            node.output[k] = name
            self.view.producer[name] = node
            self.view.taken.add(name)
            note = f"onnxcam: enabled optional output {k} ({why})."
            node.doc_string = f"{node.doc_string}\n{note}".strip()
        return node.output[k]
