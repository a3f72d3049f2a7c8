"""Reverse-mode autodiff over an ONNX graph, emitted as standard ONNX ops.

The walker owns everything that is not op-specific:

1. **path pruning** — only float tensors that depend on a ``wrt`` tensor *and* feed a seeded
   tensor are visited, so the layers before the target and side branches cost nothing;
2. **fan-out** — a tensor consumed k times gets the ``Sum`` of its k incoming gradients;
3. **un-broadcasting** — for ops in ``BROADCASTING`` every input gradient is summed back to
   that input's shape (``NodeBuilder.unbroadcast``, written once);
4. **dispatch** — one VJP rule per op type from ``VJP_RULES``; a missing rule is an
   ``UnsupportedOpError`` naming the op, the node and the supported ops;
5. **zero-pad folding** — a constant zero ``Pad`` of the spatial axes read only by a ``Conv``
   (TensorFlow's "same" padding as torch exports it) is walked as one ``Conv`` with those pads
   (``fold_zero_pads``): the same sums, and the adjoint is one op instead of an adjoint that
   computes the padded border and a ``Slice`` that crops it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxcam.errors import ExportError, UnsupportedOpError

from .builder import NodeBuilder
from .graph import GraphView, attr, node_label
from .rules import BROADCASTING, VJP_RULES, supported_ops


def path_tensors(view: GraphView, wrt: Sequence[str], outputs: Sequence[str]) -> set[str]:
    """Float tensors that depend on ``wrt`` and that ``outputs`` depend on."""
    return view.descendants(wrt, data_only=True) & view.ancestors(outputs, data_only=True)


def path_nodes(view: GraphView, on_path: set[str]) -> list[onnx.NodeProto]:
    """Nodes with an input and an output on the path, in topological order."""
    return [
        n
        for n in view.topo_order()
        if any(o in on_path for o in n.output) and any(i in on_path for i in n.input)
    ]


def _zero_spatial_pads(view: GraphView, pad: onnx.NodeProto, rank: int) -> list[int] | None:
    """``[begin…, end…]`` over the spatial axes when ``pad`` adds zeros (≥ 0) to those axes
    only; else None."""
    if pad.op_type != "Pad" or attr(pad, "mode", "constant") != "constant":
        return None
    inputs = [*pad.input, "", "", ""]
    pads = view.const(inputs[1]) if inputs[1] else None
    value = view.const(inputs[2]) if inputs[2] else np.zeros(())
    axes_v = view.const(inputs[3]) if inputs[3] else np.arange(rank)
    if pads is None or value is None or axes_v is None or np.any(value != 0):
        return None
    full = np.zeros(2 * rank, np.int64)
    axes = [int(a) % rank for a in np.asarray(axes_v).reshape(-1)]
    for j, a in enumerate(axes):
        full[a], full[rank + a] = pads[j], pads[len(axes) + j]
    if np.any(full < 0) or np.any(full[[0, 1, rank, rank + 1]] != 0):
        return None
    return [int(v) for v in (*full[2:rank], *full[rank + 2 :])]


def fold_zero_pads(
    view: GraphView, nodes: list[onnx.NodeProto], protected: set[str]
) -> list[onnx.NodeProto]:
    """``nodes`` with each constant zero ``Pad`` → ``Conv`` pair (the Pad's output read by that
    Conv alone, not in ``protected``) walked as one ``Conv`` reading the Pad's input, its
    ``pads`` grown by the Pad's. The forward graph is not edited: only the walk sees the pair as
    one node (onnxruntime fuses the same pair in the forward)."""
    fused: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for pad in nodes:
        y = pad.output[0] if pad.op_type == "Pad" else ""
        users = view.consumers.get(y, [])
        if not y or y in protected or len(users) != 1 or users[0].op_type != "Conv":
            continue
        conv = users[0]
        rank = view.rank(y)
        grow = _zero_spatial_pads(view, pad, rank) if rank else None
        if (
            grow is None
            or conv.input[0] != y
            or attr(conv, "auto_pad", "NOTSET")
            not in (
                "NOTSET",
                "",
                "VALID",
            )
        ):
            continue
        old = attr(conv, "pads") if attr(conv, "auto_pad", "NOTSET") != "VALID" else None
        old = list(old or [0] * (rank - 2) * 2)
        node = onnx.NodeProto()
        node.CopyFrom(conv)
        node.input[0] = pad.input[0]
        del node.attribute[:]
        node.attribute.extend(a for a in conv.attribute if a.name not in ("pads", "auto_pad"))
        node.attribute.append(
            helper.make_attribute("pads", [a + b for a, b in zip(old, grow, strict=True)])
        )
        fused[id(conv)] = node
        dropped.add(id(pad))
    return [fused.get(id(n), n) for n in nodes if id(n) not in dropped]


def _rule_for(node: onnx.NodeProto, table: Mapping = VJP_RULES):
    rule = table.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        raise UnsupportedOpError(
            f"no gradient rule for op {op!r} (node {node_label(node)!r}) on the path from the "
            f"target layer to the score; supported ops: {', '.join(supported_ops())}"
        )
    return rule


def build_backward(
    view: GraphView,
    seeds: Mapping[str, str],
    wrt: Sequence[str],
    consts: dict | None = None,
    seed_rows: bool = False,
    direct: bool = False,
    rules: Mapping | None = None,
    keep: Sequence[str] = (),
) -> dict[str, str]:
    """Append nodes computing ∂(Σ_y ⟨seed_y, y⟩)/∂x for every x in ``wrt``.

    ``seed_rows``: the seeds may have more rows than the forward tensors (one image, several
    targets; ``NodeBuilder.seed_rows``) — checked numerically by the exporter before the
    contract claims it (``verify.seed_rows_hold``).

    ``direct``: each x's gradient holds the other ``wrt`` tensors fixed (a partial
    derivative): paths from one x through another are not walked — a detector's head inputs,
    each read by its own scale's head, without the neck between them.

    ``rules``: op type → rule, replacing ``VJP_RULES``' for those ops (``rules.RULE_SETS``:
    Guided Backpropagation's ReLU).

    ``keep``: tensors on the walked path whose (total) gradient is returned too, for free —
    the walk computes it on the way to ``wrt`` (FullGrad's layer outputs); one the walk does
    not reach is left out of the result.

    ``seeds`` maps forward tensors y to the tensors holding their incoming gradient (for a
    class score that is the one-hot of the explained class over the logits). Returns
    ``{x: name of its gradient tensor}`` for ``wrt`` and the reached ``keep``.
    """
    consts = {} if consts is None else consts
    on_path = path_tensors(view, wrt, list(seeds)) | set(seeds)
    if direct and len(wrt) > 1:  # what computes one wrt tensor from another is not walked
        on_path -= view.ancestors(wrt, data_only=True) - set(wrt)
    for x in wrt:
        if x not in on_path or not (view.descendants([x], data_only=True) & set(seeds)):
            raise ExportError(f"tensor {x!r} does not influence the score: no gradient path")
    grads: dict[str, list[str]] = {y: [g] for y, g in seeds.items()}
    acc = NodeBuilder(view, "onnxcam/accumulate", consts)
    table = VJP_RULES if rules is None else {**VJP_RULES, **rules}

    def total(t: str) -> str | None:
        parts = grads.get(t)
        if not parts:
            return None
        if len(parts) > 1:  # fan-out: sum once, then reuse the sum
            grads[t] = [acc.Sum(*parts)]
        g = grads[t][0]
        if g not in view.shapes and view.shape(t) is not None:
            view.shapes[g] = view.shape(t)  # a gradient has its tensor's shape
        return g

    protected = set(wrt) | set(keep) | set(seeds)
    for node in reversed(fold_zero_pads(view, path_nodes(view, on_path), protected)):
        gy = [total(o) if o in on_path else None for o in node.output]
        if all(g is None for g in gy):
            continue
        need = [bool(i) and i in on_path for i in node.input]
        rule = _rule_for(node, table)
        b = NodeBuilder.for_node(view, node, consts)
        b.seed_rows = seed_rows
        gx = [*rule(b, node, gy, need), *[None] * len(need)][: len(need)]
        out_shape = view.shape(node.output[0])
        for name, flag, g in zip(node.input, need, gx, strict=True):
            if not flag or g is None:
                continue
            if node.op_type in BROADCASTING:
                g = b.unbroadcast(g, out_shape, name)
            grads.setdefault(name, []).append(g)
    result = {}
    for x in wrt:
        g = total(x)
        if g is None:
            raise ExportError(f"tensor {x!r} received no gradient")
        result[x] = g
    for z in keep:  # every consumer of z was visited before its producer: the sum is complete
        g = total(z) if z in on_path else None
        if g is not None:
            result.setdefault(z, g)
    return result


def spatially_constant_source(view: GraphView, g: str, spatial_axes: tuple[int, int]) -> str | None:
    """The tensor gradient ``g`` is an ``Expand`` of, when that tensor has size 1 on both
    ``spatial_axes`` — i.e. every position of the layer gets the same gradient, as when the
    layer feeds a global average pool directly (GAP's or ReduceMean's rule broadcasts). None
    otherwise. Used to compute per-channel gradient terms once instead of at every position."""
    node = view.producer.get(g)
    while node is not None and node.op_type == "Identity":
        node = view.producer.get(node.input[0])
    if node is None or node.op_type != "Expand":
        return None
    shape = _static_shape_of(view, node.input[0])
    if shape is None or len(shape) != 4 or any(shape[a] != 1 for a in spatial_axes):
        return None
    return node.input[0]


def _static_shape_of(view: GraphView, name: str, depth: int = 8) -> tuple | None:
    """Shape of ``name`` from the view, or propagated through the few ops gradient rules put
    between a pooled gradient and its ``Expand`` (element-wise arithmetic, Unsqueeze)."""
    known = view.shape(name)
    node = view.producer.get(name)
    if known is not None or node is None or depth == 0:
        return known
    ins = [_static_shape_of(view, i, depth - 1) if i else None for i in node.input]
    if node.op_type == "Identity":
        return ins[0]
    if node.op_type in ("Mul", "Div", "Add", "Sub"):
        if any(s is None for s in ins):
            return None
        rank = max(len(s) for s in ins)
        padded = [(1,) * (rank - len(s)) + tuple(s) for s in ins]
        out = []
        for dims in zip(*padded, strict=True):
            rest = {d for d in dims if d != 1}
            out.append(rest.pop() if len(rest) == 1 else (1 if not rest else None))
        return tuple(out)
    if node.op_type == "Unsqueeze" and ins[0] is not None:
        axes = view.const(node.input[1]) if len(node.input) > 1 else None
        axes = [int(a) for a in (axes if axes is not None else attr(node, "axes", []))]
        out = list(ins[0])
        rank = len(out) + len(axes)
        for a in sorted(a % rank for a in axes):
            out.insert(a, 1)
        return tuple(out)
    return None
