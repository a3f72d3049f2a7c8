"""The forward copy (``export --forward-copy``): explaining and forward-only runs in two graphs.

The default export keeps one forward in the main graph and the backward in an ``If``
(``gating.py``). onnxruntime's CPU provider runs convolutions in a blocked layout (NCHWc) and
converts every tensor a subgraph reads from outside back to NCHW — in the main graph, on
every run, whether the ``If`` is taken or not. A backward that reads every activation (the
input gradient: one ReLU mask per activation) so makes forward-only runs 1.3–1.5× plain and
breaks its own chains into NCHW pieces (docs/benchmarks.md, "The input gradient").

``split_forward`` rewrites the finished export as one top-level ``If`` on the explaining
condition (``onnxcam_mode == 0``):

* the *explaining* branch: the whole graph with the gradients' branch inlined, so forward and
  backward are one graph and stay in NCHWc; ``add_anchors`` starts each backward chain that
  begins in NCHW (a strided adjoint's ``ConvTranspose``, a pooling's ``Expand``) with an
  identity depthwise 1×1 ``Conv``, which onnxruntime runs in NCHWc, so the masks, sums and
  adjoint convolutions after it stay there too;
* the *forward* branch: the whole graph with the gradients' branch left out (its outputs
  empty) and the optional outputs only the backward read switched off again (MaxPool's
  ``Indices``): what a plain model runs, plus the other modes' ``If``s.

onnxruntime prepacks a weight, and rewrites a convolution to NCHWc, only when its constants are
initializers of the graph the node is in (``api._localize_weights``, ``localize_all``), so each
branch holds its own copy of the weights: **the file grows by the model's weights once more**.
That is the trade: on by default for exports with a pixel target, an option otherwise.
``unsplit`` gives back a one-graph model of the forward branch (for
``randomize.extract_forward`` and ``probe.original_forward``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from onnxcam.errors import ExportError

FORWARD_COPY = "onnxcam/forward_copy"
"""The name of the top-level ``If``."""
EXPLAIN_GRAPH, FORWARD_GRAPH = "onnxcam_explain_graph", "onnxcam_forward_graph"
"""The names of its branches (taken: mode 0; otherwise)."""
SUFFIX = {EXPLAIN_GRAPH: "/explain", FORWARD_GRAPH: "/forward"}
"""What a graph output's producer is renamed to inside each branch (+ this suffix)."""
CHAIN_STARTS = ("ConvTranspose", "Expand")
"""Backward ops whose output onnxruntime keeps in NCHW; an anchor after each."""
Shapes = Callable[[onnx.NodeProto, dict], "tuple | None"]
"""(node, producer of each tensor in its graph) → the node's output shape as far as known
(ints, dim_param strings, None where unknown), or None."""


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes (an ``If``'s branches, a ``Loop``'s body)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else list(a.graphs))]


def reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs, and those its subgraphs read from outside."""
    names = [i for i in node.input if i]
    for sub in subgraphs(node):
        made = {o for n in sub.node for o in n.output} | {t.name for t in sub.initializer}
        made |= {i.name for i in sub.input}
        names += [i for n in sub.node for i in reads(n) if i not in made]
        names += [o.name for o in sub.output if o.name not in made]
    return names


def rename(nodes: list[onnx.NodeProto], mapping: dict[str, str]) -> None:
    """Rename values in ``nodes`` (outputs, inputs, and outer-scope reads of their subgraphs)."""
    for n in nodes:
        for k, i in enumerate(n.input):
            n.input[k] = mapping.get(i, i)
        for k, o in enumerate(n.output):
            n.output[k] = mapping.get(o, o)
        for sub in subgraphs(n):
            rename(list(sub.node), mapping)
            for o in sub.output:
                o.name = mapping.get(o.name, o.name)


def _branch(if_node: onnx.NodeProto, side: str) -> onnx.GraphProto:
    return next(a.g for a in if_node.attribute if a.name == f"{side}_branch")


def _inline(if_node: onnx.NodeProto, side: str) -> list[onnx.NodeProto]:
    """The nodes of one branch of ``if_node``, writing the ``If``'s outputs."""
    body = _branch(if_node, side)
    nodes = [copy.deepcopy(n) for n in body.node]
    made = {o for n in nodes for o in n.output}
    mapping, extra = {}, []
    for inner, outer in zip(body.output, if_node.output, strict=True):
        if inner.name in made and inner.name not in mapping:
            mapping[inner.name] = outer
        else:  # an outer-scope value, or one returned twice
            extra.append(helper.make_node("Identity", [inner.name], [outer], name=outer))
    rename(nodes, mapping)
    if body.initializer:
        consts = [helper.make_node("Constant", [], [t.name], value=t) for t in body.initializer]
        nodes = consts + nodes
    return nodes + extra


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> tuple[list, set[str]]:
    """(the nodes of topologically ordered ``nodes`` that ``outputs`` need, in order; every
    name those nodes and ``outputs`` read) — one pass from the end."""
    used, kept = set(outputs), []
    for n in reversed(nodes):
        if any(o in used for o in n.output if o):
            kept.append(n)
            used.update(reads(n))
    kept.reverse()
    return kept, used


def _prune(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is read, and unread optional trailing outputs."""
    nodes, used = live_nodes(nodes, outputs)
    for n in nodes:
        try:
            schema = defs.get_schema(n.op_type, domain="" if n.domain == "ai.onnx" else n.domain)
        except defs.SchemaError:
            continue
        outs = list(n.output)
        while len(outs) > 1 and outs[-1] not in used:
            formal = schema.outputs[min(len(outs) - 1, len(schema.outputs) - 1)]
            if formal.option != defs.OpSchema.FormalParameterOption.Optional:
                break
            outs.pop()
        if len(outs) != len(n.output):
            del n.output[:]
            n.output.extend(outs)
    return nodes


def add_anchors(nodes: list[onnx.NodeProto], shapes: Shapes):
    """After each backward ``CHAIN_STARTS`` node with a known channel count that is a multiple
    of 8 (onnxruntime's NCHWc block), an identity depthwise 1×1 ``Conv``. Returns the nodes, the
    weight initializers (ones) to add, and the value infos of the anchored tensors whose whole
    shape is known: onnxruntime keeps a mask's ``Mul`` in NCHWc only when it can show that both
    operands have the same shape, which with a dynamic batch needs the same ``dim_param`` on
    the backward side as on the forward side — and shape inference cannot see through the
    ``Expand`` to a ``Shape`` that starts a pooling's adjoint."""
    out, weights, infos = [], {}, []
    producer = {o: n for n in nodes for o in n.output if o}
    for n in nodes:
        out.append(n)
        if n.op_type not in CHAIN_STARTS or "/grad/" not in n.name:
            continue
        shape = shapes(n, producer)
        c = shape[1] if shape is not None and len(shape) == 4 else None
        if not isinstance(c, int) or c % 8:
            continue
        if c not in weights:
            ones = np.ones((c, 1, 1, 1), np.float32)
            weights[c] = numpy_helper.from_array(ones, f"onnxcam/anchor{c}")
        raw = f"{n.output[0]}/unanchored"
        anchor = helper.make_node(
            "Conv", [raw, weights[c].name], [n.output[0]], name=f"{n.name}/anchor",
            group=c, kernel_shape=[1, 1],
        )  # fmt: skip
        if all(d is not None for d in shape):
            for t in (raw, n.output[0]):
                infos.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, list(shape)))
        n.output[0] = raw
        out.append(anchor)
    return out, list(weights.values()), infos


def split_forward(
    m: onnx.ModelProto,
    gate_graph: str,
    shapes: Shapes = lambda n, producer: None,
) -> None:
    """Rewrite ``m`` (a finished export) as the two-branch layout of this module's docstring.
    The gradients' ``If`` is the main graph's ``If`` whose then-branch is named ``gate_graph``;
    ``shapes`` gives a backward node's output shape as far as known (``add_anchors``)."""
    g = m.graph
    gate = next(
        (n for n in g.node if n.op_type == "If" and _branch(n, "then").name == gate_graph), None
    )
    if gate is None:
        raise ExportError("--forward-copy: this export computes no gradients to separate")
    producer = {o: n for n in g.node for o in n.output if o}
    prefix: set[int] = set()
    stack = [gate.input[0]]
    while stack:  # the nodes the explaining condition depends on stay in the main graph
        node = producer.get(stack.pop())
        if node is not None and id(node) not in prefix:
            prefix.add(id(node))
            stack.extend(reads(node))
    rest = [n for n in g.node if id(n) not in prefix]
    types = {o.name: o.type.tensor_type.elem_type for o in g.output}
    explain, weights = _branch_graph(rest, gate, "then", EXPLAIN_GRAPH, types, shapes)
    forward, _ = _branch_graph(rest, gate, "else", FORWARD_GRAPH, types, None)
    top = helper.make_node(
        "If", [gate.input[0]], list(types), name=FORWARD_COPY,
        then_branch=explain, else_branch=forward,
    )  # fmt: skip
    kept = [n for n in g.node if id(n) in prefix]
    del g.node[:]
    g.node.extend([*kept, top])
    made = {o for n in kept for o in n.output}
    info = [v for v in g.value_info if v.name in made]
    del g.value_info[:]
    g.value_info.extend(info)
    g.initializer.extend(weights)


def _branch_graph(
    rest: list[onnx.NodeProto],
    gate: onnx.NodeProto,
    side: str,
    name: str,
    types: dict[str, int],
    shapes: Shapes | None,
) -> tuple[onnx.GraphProto, list[onnx.TensorProto]]:
    """One branch of the forward copy: copies of ``rest`` with ``gate``'s ``side`` branch
    inlined, anchored when ``shapes`` is given, returning every graph output (``types``) under
    its name + ``SUFFIX[name]``, pruned. Returns it and the anchors' weights."""
    nodes: list[onnx.NodeProto] = []
    for n in rest:
        nodes.extend(_inline(n, side) if n is gate else [copy.deepcopy(n)])
    weights, infos = [], []
    if shapes is not None:
        nodes, weights, infos = add_anchors(nodes, shapes)
    made = {o for n in nodes for o in n.output}
    inner = {o: o + SUFFIX[name] for o in types}
    renamed = {o: inner[o] for o in types if o in made}
    rename(nodes, renamed)
    nodes += [
        helper.make_node("Identity", [o], [inner[o]], name=inner[o]) for o in types if o not in made
    ]
    nodes = _prune(nodes, set(inner.values()))
    made = {o for n in nodes for o in n.output}
    for v in infos:
        v.name = renamed.get(v.name, v.name)
    results = [helper.make_tensor_value_info(inner[o], t, None) for o, t in types.items()]
    known = [v for v in infos if v.name in made]
    return helper.make_graph(nodes, name, [], results, value_info=known), weights


def localize_all(m: onnx.ModelProto) -> None:
    """Give each branch of the forward copy its own copy of every main-graph initializer it
    reads (after ``api._localize_weights`` has placed the convolution kernels): onnxruntime
    rewrites a convolution to NCHWc only when its bias too is a constant of its graph, and
    prepacks a Gemm's or MatMul's weight, or folds a BatchNormalization, only then. Nested
    subgraphs read the branch's copy."""
    top = next((n for n in m.graph.node if n.name == FORWARD_COPY), None)
    if top is None:
        return
    main = {t.name: t for t in m.graph.initializer}
    inputs = {i.name for i in m.graph.input}
    for side in ("then", "else"):
        body = _branch(top, side)
        wanted = {i for n in body.node for i in reads(n) if i in main and i not in inputs}
        mapping = {}
        for name in sorted(wanted):
            t = onnx.TensorProto()
            t.CopyFrom(main[name])
            t.name = mapping[name] = f"{name}/in/{body.name}"
            body.initializer.append(t)
        rename(list(body.node), mapping)
        for o in body.output:
            o.name = mapping.get(o.name, o.name)


def unsplit(m: onnx.ModelProto) -> onnx.ModelProto:
    """A one-graph model of a forward-copy export's forward branch (names as in the source
    model: the outputs' suffix and the branch's weight copies' names undone); ``m`` itself
    when it is not such an export."""
    top = next((n for n in m.graph.node if n.name == FORWARD_COPY), None)
    if top is None:
        return m
    body = _branch(top, "else")
    local = f"/in/{body.name}"
    mapping = {o.name: o.name[: -len(SUFFIX[FORWARD_GRAPH])] for o in body.output}
    mapping |= {t.name: t.name[: -len(local)] for t in body.initializer if t.name.endswith(local)}
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = [copy.deepcopy(n) for n in body.node]
    rename(nodes, mapping)
    kept = [n for n in out.graph.node if n.name != FORWARD_COPY]
    del out.graph.node[:]
    out.graph.node.extend(kept + nodes)
    for t in body.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = mapping.get(t.name, t.name)
        out.graph.initializer.append(c)
    return out
