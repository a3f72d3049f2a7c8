"""The head-only path of a target layer: the nodes from the target activations to the logits,
copied so that they read a new input instead of the target tensor.

Perturbation methods that change the target activations (Ablation-CAM) then run only the
head, never the layers before the target. The copy reuses every weight (initializers are
outer-scope values of the ``If`` branch it lives in). A head exists when the target is a *cut*
of the graph: every float tensor the head reads is on the target → logits path or a constant.
Shape arithmetic that reads the batch size from an earlier tensor (``x.view(x.size(0), -1)``)
is redirected to the head input's batch; its other dimensions are static.

A float tensor computed before the target that the head also reads (a skip connection around
the target: a residual block's input, a transformer block's ``x`` around its ``norm1``) comes
from the image fed in the same run, broadcast to the head's rows — what replacing the layer's
output with a forward hook does in PyTorch. So the runner feeds the image the activations
came from (one image, or one per row).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcam.errors import ExportError

from .autodiff import path_nodes, path_tensors
from .builder import NodeBuilder
from .graph import GraphView, attr, node_label

SUFFIX = "/onnxcam_head{k}"
HEAD_BATCH = "head_batch"
"""The head input's batch dimension (m rows)."""


def per_head_row(b: NodeBuilder, x: str, head_input: str) -> str:
    """``x`` ``[B, ...]`` (one row per image of the run) → ``[m, ...]``, m = r·B the head
    input's rows: image i's row repeated for head rows i·r … i·r + r − 1 (B = 1: every row;
    B = m: the rows as they are)."""
    rows = b.Shape(head_input, start=0, end=1)
    images = b.Shape(x, start=0, end=1)
    rest = b.Shape(x, start=1)
    shape = b.Concat(images, b.Div(rows, images), rest, axis=0)
    tiled = b.Expand(b.Unsqueeze(x, b.ints(1)), shape)
    return b.Reshape(tiled, b.Concat(b.ints(-1), rest, axis=0))


class _Copier:
    """Copies nodes under new names; substitutes ``Shape`` of out-of-head tensors."""

    def __init__(
        self,
        view: GraphView,
        k: int,
        head_input: str,
        target: str,
        consts: dict,
        repeats: int = 1,
        label: str = "head",
        skip_mask: tuple[str, tuple] | None = None,
    ) -> None:
        self.view = view
        self.k = k
        self.head_input = head_input
        self.repeats = repeats
        self.skip_mask = skip_mask
        self.suffix = SUFFIX.replace("head", label).format(k=k)
        self.renamed: dict[str, str] = {target: head_input}
        self.nodes: list[onnx.NodeProto] = []
        self.b = NodeBuilder(view, f"onnxcam/{label}{k}", consts)

    def name(self, t: str) -> str:
        if t not in self.renamed:
            self.renamed[t] = self.view.unique_name(t + self.suffix)
        return self.renamed[t]

    def copy(self, node: onnx.NodeProto) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = self.view.unique_name((node.name or node.output[0]) + self.suffix)
        del new.input[:]
        new.input.extend(self.renamed.get(i, i) if i else "" for i in node.input)
        del new.output[:]
        new.output.extend(self.name(o) if o else "" for o in node.output)
        self.nodes.append(new)

    def from_image(self, x: str) -> None:
        """A tensor before the target (batch on axis 0): the image's, one copy per head row
        (``per_head_row``: B images, r·B rows, image i's for rows i·r … i·r + r − 1) — or,
        with a static ``repeats`` r > 1, the same grouping with the skip mask (ReciproCAM's
        copies)."""
        b = self.b
        if self.repeats > 1:
            rest = b.Shape(x, start=1)
            shape = b.Concat(b.Shape(x, start=0, end=1), b.ints(self.repeats), rest, axis=0)
            tiled = b.Expand(b.Unsqueeze(x, b.ints(1)), shape)
            if self.skip_mask and tuple((self.view.shape(x) or ())[1:]) == self.skip_mask[1]:
                tiled = b.Mul(tiled, self.skip_mask[0])  # [B, r, ...] × [1, r, ...] masks
            self.renamed[x] = b.Reshape(tiled, b.Concat(b.ints(-1), rest, axis=0))
            return
        self.renamed[x] = per_head_row(b, x, self.head_input)
        shape = self.view.shape(x)
        if shape is not None:
            self.view.shapes[self.renamed[x]] = (HEAD_BATCH, *shape[1:])
            self.view.dtypes[self.renamed[x]] = self.view.dtype(x)

    def fake_shape(self, node: onnx.NodeProto) -> None:
        """``Shape(x)`` of a tensor before the target → (head batch, x's static other dims)."""
        x = node.input[0]
        dims = self.view.shape(x)
        if dims is None or any(not isinstance(d, int) for d in dims[1:]):
            raise ExportError(f"the head reads the shape of {x!r}, which is not static")
        start = self.view.unique_name(self.suffix + "_batch")
        self.nodes.append(helper.make_node("Shape", [self.head_input], [start], name=start, end=1))
        rest = self.b.const(np.asarray(dims[1:], dtype=np.int64))
        full = self.view.unique_name(node.output[0] + self.suffix)
        self.nodes.append(helper.make_node("Concat", [start, rest], [full], name=full, axis=0))
        lo, hi = attr(node, "start", 0), attr(node, "end")
        out = self.name(node.output[0])
        if lo == 0 and hi is None:
            self.nodes.append(helper.make_node("Identity", [full], [out], name=out))
        else:
            ends = [hi if hi is not None else len(dims)]
            self.nodes.append(
                helper.make_node(
                    "Slice", [full, self.b.ints(lo), self.b.ints(ends)], [out], name=out
                )
            )


def build_head(
    view: GraphView,
    target: str,
    logits: str,
    k: int,
    head_input: str,
    consts: dict,
    repeats: int = 1,
    label: str = "head",
    skip_mask: tuple[str, tuple] | None = None,
) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing the logits from ``head_input`` instead of ``target``; returns
    (nodes, name of the copied logits). Raises ``ExportError`` with the reason when the
    target is not a cut of the graph. ``repeats``: the head input holds r rows per image of
    the run (skip tensors are repeated per image, ``_Copier.from_image``); ``label`` names
    the copy (``onnxcam/<label>k``); ``skip_mask`` (mask [1, r, ...], shape past axis 0):
    repeated skip tensors of that shape are multiplied by it (ViT-ReciproCAM masks the
    residual stream like the target tokens)."""
    on_path = path_tensors(view, [target], [logits]) | {target}
    data_nodes = path_nodes(view, on_path)
    inside = {o for n in data_nodes for o in n.output}
    copier = _Copier(view, k, head_input, target, consts, repeats, label, skip_mask)
    needed: list[onnx.NodeProto] = []  # integer side computations the head reads
    skips: list[str] = []  # float tensors before the target, read from the image's run
    seen: set[str] = set()

    inputs = set(view.graph_inputs)

    def require(t: str) -> None:
        """Make tensor t (read by the head, not on the data path) available in the copy."""
        if not t or t in seen or t in inside or t == target or view.is_const(t):
            return
        if not view.ancestors([t]) & inputs:  # computed from weights only (a QDQ weight's
            return  # DequantizeLinear): the same for every row, read from the outer scope
        seen.add(t)
        if view.is_data(t):
            if not _batch_first(view, t):
                raise ExportError(
                    f"the head after {target!r} also reads {t!r}, computed before the target, "
                    "whose batch is not on axis 0 (it cannot be broadcast to the head's rows)"
                )
            skips.append(t)
            return
        p = view.producer.get(t)
        if p is None:
            raise ExportError(f"the head reads graph input {t!r}")
        if p.op_type != "Shape":
            for i in p.input:
                require(i)
        needed.append(p)

    for n in data_nodes:
        for i in n.input:
            require(i)
    for t in skips:
        copier.from_image(t)
    order = {id(n): i for i, n in enumerate(view.graph.node)}
    for node in sorted([*needed, *data_nodes], key=lambda n: order[id(n)]):
        if node.op_type == "Shape" and node.input[0] not in inside and node.input[0] != target:
            copier.fake_shape(node)
        elif node.op_type in ("If", "Loop", "Scan"):
            raise ExportError(f"the head contains control flow ({node_label(node)!r})")
        else:
            copier.copy(node)
    if logits not in copier.renamed:
        raise ExportError(f"no path from {target!r} to the logits")
    for orig, new in copier.renamed.items():  # the copies' types: the originals', m rows
        if orig == target or new in view.shapes:
            continue
        shape = view.shape(orig)
        if orig in view.dtypes:
            view.dtypes[new] = view.dtypes[orig]
        if shape is not None:
            view.shapes[new] = (HEAD_BATCH, *shape[1:]) if _batch_first(view, orig) else shape
        if orig in view.folded:  # shape arithmetic that does not depend on the batch
            view.folded[new] = view.folded[orig]
    return copier.nodes, copier.renamed[logits]


PIECEWISE_LINEAR = frozenset(
    {
        "Relu", "LeakyRelu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "BatchNormalization", "Add", "Sub", "Neg", "Sum", "Max", "Min",
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice", "Split",
        "Gather", "Pad", "Identity", "Dropout", "ReduceMean", "ReduceSum", "ReduceMax",
        "ReduceMin", "Expand", "Tile", "Resize", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip
"""Ops whose output is piecewise linear in their inputs (second derivative 0 almost everywhere
— autograd's convention at the kinks too)."""
LINEAR_IN_ONE = frozenset({"Mul", "MatMul", "Gemm", "Conv", "ConvTranspose", "PRelu", "Einsum"})
"""Ops linear in each input: linear on the path when at most one input depends on the target
(``Div`` too, when only its numerator does)."""


def head_is_piecewise_linear(view: GraphView, target: str, logits: str) -> bool:
    """The head (target → logits) is piecewise linear in the target: every op on the path is
    (``PIECEWISE_LINEAR``, or ``LINEAR_IN_ONE`` with one input on the path) — a ReLU CNN's
    head. Its Hessian is then 0 almost everywhere (what autograd gives: ShapleyCAM's H·A = 0)."""
    on_path = path_tensors(view, [target], [logits]) | {target}
    for n in path_nodes(view, on_path):
        if n.domain not in ("", "ai.onnx"):
            return False
        reads = [i in on_path for i in n.input]
        if n.op_type in PIECEWISE_LINEAR:
            continue
        if n.op_type in LINEAR_IN_ONE and sum(reads) <= 1:
            continue
        if n.op_type == "Div" and not reads[1]:
            continue
        return False
    return True


def _batch_first(view: GraphView, t: str) -> bool:
    """Axis 0 of ``t`` is the batch: the analysis saw it follow the batch it probed with."""
    dims = view.shape(t)
    return dims is not None and len(dims) > 0 and not isinstance(dims[0], int)
