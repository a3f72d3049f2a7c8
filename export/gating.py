"""``If`` gating: appended nodes that only some runs need, behind ``If(onnxcam_mode == m)``.

A ``Branch`` is opened at the graph's current end; every node appended while it is open
belongs to it. Passes register what the branch returns (``Branch.output``); ``close`` moves
the nodes into the ``then`` branch of one ``If`` whose ``else`` branch returns empty tensors.
Only the taken branch runs, so a skipped one costs nothing; the branch reads forward tensors
and weights as outer-scope values (nothing is copied).

The pipeline (``export/pipeline.py``) keeps one branch open across consecutive passes with the
same ``Gate``: the heatmaps join the gradients' branch, which they read, so a forward-only run
skips both and an explaining run computes both in one ``If``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam import contract
from onnxcam.errors import ExportError

from .builder import NodeBuilder
from .graph import Dim, GraphView


@dataclass(frozen=True)
class Gate:
    """Which runs take a branch: those with ``onnxcam_mode == mode``. The ``If`` node is named
    ``onnxcam/<label>`` and its branches ``onnxcam_<label>`` / ``onnxcam_no_<label>``."""

    mode: int
    label: str
    nonempty: str | None = None
    """Also require this tensor to be non-empty (a head input left at its empty default is
    not run: heads with fixed reshapes, such as Swin's patch merging, fail on zero rows)."""
    also: tuple[int, ...] = ()
    """Other modes that take the branch too (ReciproCAM's maps: mode 4 alone, and mode 0 with
    the gradients, so that one run serves gradient methods and ReciproCAM together)."""


EXPLAIN = Gate(contract.MODE_EXPLAIN, "backward")
"""The gradients and the in-graph heatmaps (mode 0: explain)."""
WINDOWS = Gate(contract.MODE_WINDOWS, "windows")
"""A detector's gradient windows (mode 3)."""


def value_of(name: str) -> str:
    """The tensor holding optional input ``name``'s value: what was fed, or its default
    (``passes.optional_input``)."""
    return f"{name}/value"


def has_value(name: str) -> str:
    """The bool tensor saying whether optional input ``name`` was fed."""
    return f"{name}/has"


def branch_body(
    view: GraphView, build: Callable[[], str | list[str]], copy: str
) -> tuple[list[onnx.NodeProto], list[str]]:
    """(nodes, results) of a subgraph: ``build`` appends nodes to the graph and returns its
    result (or results); they are taken out of the graph. A result computed outside (an
    outer-scope value) is returned through an ``Identity`` named like ``copy``; one made inside
    is returned as it is (onnxruntime writes it straight into the ``If`` output)."""
    first = len(view.graph.node)
    built = build()
    body = list(view.graph.node[first:])
    del view.graph.node[first:]
    view.reindex()
    made = {o for n in body for o in n.output}
    results = []
    for result in [built] if isinstance(built, str) else built:
        if result not in made or result in results:
            name = view.unique_name(copy)
            body.append(helper.make_node("Identity", [result], [name], name=name))
            result = name
        results.append(result)
    return body, results


def if_else(
    view: GraphView,
    cond: str,
    then: Callable[[], str],
    orelse: Callable[[], str],
    dtype: int,
    shape: Sequence[Dim] | None = None,
    label: str = "onnxcam/choose",
) -> str:
    """``If(cond)`` returning ``then()`` or ``orelse()``: each callable appends the nodes of its
    branch (to the graph, moved into the branch here) and returns its result tensor; only the
    taken branch runs. Returns the ``If``'s output."""
    return if_else_many(view, cond, then, orelse, [dtype], [shape], label)[0]


def if_else_many(
    view: GraphView,
    cond: str,
    then: Callable[[], list[str]],
    orelse: Callable[[], list[str]],
    dtypes: Sequence[int],
    shapes: Sequence[Sequence[Dim] | None],
    label: str = "onnxcam/choose",
) -> list[str]:
    """``if_else`` with several results (one dtype and shape each)."""
    bodies = [branch_body(view, build, f"{label}/copy") for build in (then, orelse)]
    outs = [view.unique_name(label) for _ in dtypes]
    graphs = [
        helper.make_graph(
            body,
            f"{outs[0]}/{side}",
            [],
            [helper.make_tensor_value_info(r, d, None) for r, d in zip(rs, dtypes, strict=True)],
        )
        for (body, rs), side in zip(bodies, ("then", "else"), strict=True)
    ]
    view.add_node(
        helper.make_node(
            "If", [cond], outs, name=outs[0], then_branch=graphs[0], else_branch=graphs[1]
        )
    )
    for out, dtype, shape in zip(outs, dtypes, shapes, strict=True):
        view.dtypes[out] = dtype
        if shape is not None:
            view.shapes[out] = tuple(shape)
    return outs


def head_gate(k: int, head_input: str | None = None) -> Gate:
    """Target ``k``'s head-only path (mode 2, and ``head_input`` fed with at least one row)."""
    return Gate(contract.MODE_HEAD, f"head{k}", head_input)


def empty_shape(shape: Sequence[Dim] | None) -> list[int]:
    """The shape of the empty tensor a skipped branch returns for an output of ``shape``:
    zero rows, the static dimensions kept (1 where dynamic)."""
    return [0, *[d if isinstance(d, int) else 1 for d in list(shape or [])[1:]]]


@dataclass(frozen=True)
class _Result:
    inner: str
    outer: str
    dtype: int
    empty: list[int]


class Branch:
    """The nodes appended to ``view``'s graph since this object was made, to be gated."""

    def __init__(self, view: GraphView, gate: Gate, consts: dict) -> None:
        self.view, self.gate, self.consts = view, gate, consts
        self.first = len(view.graph.node)
        self.results: list[_Result] = []
        self.closed = False

    def output(
        self,
        inner: str,
        outer: str,
        dtype: int,
        shape: Sequence[Dim] | None,
        empty: list[int] | None = None,
    ) -> None:
        """Return ``inner`` (computed in the branch) as graph output ``outer`` of ``shape``;
        runs that skip the branch get an empty tensor (``empty``, default ``empty_shape``)."""
        if self.closed:
            raise ExportError(f"internal: the {self.gate.label!r} branch is already closed")
        dims = None if shape is None else list(shape)
        empty = empty_shape(shape) if empty is None else empty
        self.results.append(_Result(inner, outer, dtype, empty))
        self.view.graph.output.append(helper.make_tensor_value_info(outer, dtype, dims))

    def discard(self) -> None:
        """Drop the nodes appended since the branch was opened (nothing is gated)."""
        del self.view.graph.node[self.first :]
        self.view.reindex()
        self.closed = True

    def close(self) -> onnx.NodeProto | None:
        """Move the branch's nodes into ``If(onnxcam_mode == gate.mode)``; returns the ``If``
        (None when the branch is empty)."""
        if self.closed:
            raise ExportError(f"internal: the {self.gate.label!r} branch is already closed")
        self.closed = True
        view, label = self.view, self.gate.label
        body = list(view.graph.node[self.first :])
        if not self.results:
            if body:
                raise ExportError(f"internal: the {label!r} branch computes nothing it returns")
            return None
        del view.graph.node[self.first :]
        then_outs: list[onnx.ValueInfoProto] = []
        produced = {o for n in body for o in n.output}
        for r in self.results:
            name = r.inner
            if r.inner not in produced or r.inner in {o.name for o in then_outs}:
                # an outer-scope value, or a tensor already returned once (two methods with
                # provably equal maps): return a copy. Otherwise the branch returns the tensor
                # itself, so onnxruntime writes it straight into the If output (an Identity
                # here costs a copy per output: 25 µs per 224×224 heatmap).
                name = view.unique_name(f"{r.outer}/then")
                body.append(helper.make_node("Identity", [r.inner], [name], name=name))
            then_outs.append(helper.make_tensor_value_info(name, r.dtype, None))
        skipped, else_outs = [], []
        for r in self.results:
            name = view.unique_name(f"{r.outer}/else")
            empty = helper.make_tensor(name + "/value", r.dtype, r.empty, [])
            skipped.append(helper.make_node("Constant", [], [name], name=name, value=empty))
            else_outs.append(helper.make_tensor_value_info(name, r.dtype, r.empty))
        b = NodeBuilder(view, f"onnxcam/{label}", self.consts)
        mode = value_of(contract.MODE_INPUT)
        cond = b.Equal(mode, b.const(np.array(self.gate.mode, dtype=np.int64)))
        for other in self.gate.also:
            cond = b.Or(cond, b.Equal(mode, b.const(np.array(other, dtype=np.int64))))
        if self.gate.nonempty:
            zero = b.const(np.array(0, dtype=np.int64))
            cond = b.And(cond, b.Greater(b.Size(self.gate.nonempty), zero))
        node = view.add_node(
            helper.make_node(
                "If",
                [cond],
                [r.outer for r in self.results],
                name=view.unique_name(f"onnxcam/{label}"),
                then_branch=helper.make_graph(body, f"onnxcam_{label}", [], then_outs),
                else_branch=helper.make_graph(skipped, f"onnxcam_no_{label}", [], else_outs),
            )
        )
        view.reindex()
        return node


def declare_output(view: GraphView, name: str, dtype: int, shape) -> None:
    view.graph.output.append(
        helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))
    )


def optional_input(
    view: GraphView,
    name: str,
    elem: int,
    shape,
    default: np.ndarray | Callable[[], str],
    empty_is_absent: bool = False,
) -> str:
    """Graph input ``name`` of type ``optional(tensor)``: a caller may leave it out, and the
    graph then uses ``default`` — a constant, or a function appending the nodes that compute
    it (they run only when the input is absent). Returns the tensor with the value
    (``gating.value_of``); ``gating.has_value`` says whether it was fed.

    ``empty_is_absent``: an empty tensor fed counts as absent, and the input is declared with
    symbolic sizes past axis 0 — so a client that must feed every input (onnxruntime-node)
    feeds ``[0, 1, …]`` for "use the default".

    Not an input with an initializer as its default: onnxruntime logs a warning for each of
    those on every load ("Initializer … appears in graph inputs"), in every client. An optional
    input is fed like any tensor (or omitted); an ``If`` on ``OptionalHasElement`` picks the
    value or the default (microseconds per run).
    """
    declare_optional(view, name, elem, shape, empty_is_absent)
    return optional_value(view, name, elem, shape, default)


def declare_optional(
    view: GraphView, name: str, elem: int, shape, empty_is_absent: bool = False
) -> str:
    """Declare optional input ``name`` (see ``optional_input``); returns ``has_value(name)``,
    the bool tensor saying whether it was fed."""
    dims = None if shape is None else list(shape)  # a known rank (OpenVINO needs one)
    declared = dims
    if empty_is_absent and dims:
        declared = [dims[0], *(f"{name}_dim{i}" for i in range(1, len(dims)))]
    tensor = helper.make_tensor_type_proto(elem, declared)
    view.graph.input.append(helper.make_value_info(name, helper.make_optional_type_proto(tensor)))
    has = has_value(name)
    if empty_is_absent:
        present, got, size = f"{name}/present", f"{name}/got", f"{name}/size"
        view.add_node(helper.make_node("OptionalHasElement", [name], [present], name=present))
        zero = f"{name}/zero"
        nonempty = helper.make_graph(
            [
                helper.make_node("OptionalGetElement", [name], [got], name=got),
                helper.make_node("Size", [got], [size], name=size),
                helper.make_node(
                    "Constant", [], [zero], name=zero,
                    value=numpy_helper.from_array(np.array(0, np.int64), zero),
                ),
                helper.make_node("Greater", [size, zero], [f"{has}/then"], name=f"{has}/then"),
            ],
            f"{name}/nonempty",
            [],
            [helper.make_tensor_value_info(f"{has}/then", onnx.TensorProto.BOOL, [])],
        )  # fmt: skip
        false = numpy_helper.from_array(np.array(False), f"{has}/else")
        absent = helper.make_graph(
            [helper.make_node("Constant", [], [f"{has}/else"], name=f"{has}/else", value=false)],
            f"{name}/not_fed",
            [],
            [helper.make_tensor_value_info(f"{has}/else", onnx.TensorProto.BOOL, [])],
        )
        view.add_node(
            helper.make_node(
                "If", [present], [has], name=has, then_branch=nonempty, else_branch=absent
            )
        )
    else:
        view.add_node(helper.make_node("OptionalHasElement", [name], [has], name=has))
    return has


def optional_value(
    view: GraphView, name: str, elem: int, shape, default: np.ndarray | Callable[[], str]
) -> str:
    """The value of declared optional input ``name``: what was fed, or ``default`` (see
    ``optional_input``)."""
    dims = None if shape is None else list(shape)
    has = has_value(name)
    value, fed, dflt = value_of(name), f"{name}/fed", f"{name}/default"
    then = helper.make_graph(
        [helper.make_node("OptionalGetElement", [name], [fed], name=fed)],
        f"{name}/given",
        [],
        [helper.make_tensor_value_info(fed, elem, dims)],
    )
    if callable(default):  # computed in the else branch (run only when the input is absent)
        body, (dflt,) = branch_body(view, default, f"{name}/default")
    else:
        body = [
            helper.make_node(
                "Constant", [], [dflt], name=dflt, value=numpy_helper.from_array(default, dflt)
            )
        ]
    orelse = helper.make_graph(
        body, f"{name}/absent", [], [helper.make_tensor_value_info(dflt, elem, dims)]
    )
    view.add_node(
        helper.make_node("If", [has], [value], name=value, then_branch=then, else_branch=orelse)
    )
    view.shapes[value] = None if shape is None else tuple(shape)
    view.dtypes[value] = elem
    return value
