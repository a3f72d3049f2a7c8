"""A read-mostly view over an ONNX graph: producers, consumers, shapes, dtypes and constants.

Passes ask this view questions ("who produces x?", "what is x's static shape?", "is x a
constant, and what is its value?") instead of walking protobufs themselves. New nodes and
initializers are appended through ``add_node`` / ``add_initializer`` so the indices stay valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import ExportError

Dim = int | str | None
"""A static dimension: an int, a symbolic name, or None when unknown."""

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def _dims(type_proto: onnx.TypeProto) -> tuple[Dim, ...] | None:
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


class GraphView:
    """Indexes a ``ModelProto``'s main graph; the model is edited in place by the passes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.initializers: dict[str, onnx.TensorProto] = {i.name: i for i in self.graph.initializer}
        self._const_cache: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[Dim, ...] | None] = {}
        self.dtypes: dict[str, int] = {}
        self.taken: set[str] = {i.name for i in self.graph.input} | set(self.initializers)
        for n in self.graph.node:
            self._index(n)
        self.folded: dict[str, np.ndarray] = fold_constants(model, set(self.graph_inputs))
        self.refresh_shapes()

    # -- indexing -----------------------------------------------------------------------------
    def _index(self, node: onnx.NodeProto) -> None:
        self.taken.add(node.name)
        self.taken.update(node.output)
        for o in node.output:
            if o:
                self.producer[o] = node
        for i in node.input:
            if i:
                self.consumers.setdefault(i, []).append(node)

    def reindex(self) -> None:
        """Rebuild producer/consumer indices after nodes were moved (e.g. into an ``If``)."""
        self.producer.clear()
        self.consumers.clear()
        for n in self.graph.node:
            self._index(n)

    def refresh_shapes(self) -> None:
        """Re-run ONNX shape inference and record every tensor's static shape and dtype."""
        # Declared output shapes may be vaguer than what inference finds (torch marks every
        # dim of an extra output symbolic): infer with the outputs' shapes left open.
        # Constant subgraphs (e.g. pads computed by the TorchScript exporter through
        # Concat/Transpose/Cast) are replaced by their folded values in that copy only.
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        for o in probe.graph.output:
            o.type.tensor_type.ClearField("shape")
        if self.folded:
            keep = [n for n in probe.graph.node if not any(o in self.folded for o in n.output)]
            del probe.graph.node[:]
            probe.graph.node.extend(keep)
            probe.graph.initializer.extend(
                numpy_helper.from_array(v, k) for k, v in self.folded.items()
            )
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        except Exception:  # inference is best effort; fall back to what the model declares
            inferred = self.model
        g = inferred.graph
        for vi in [*self.graph.output, *g.input, *g.value_info, *g.output]:
            if vi.type.HasField("tensor_type"):
                self.shapes[vi.name] = _dims(vi.type)
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        for init in self.graph.initializer:
            self.shapes[init.name] = tuple(int(d) for d in init.dims)
            self.dtypes[init.name] = init.data_type

    def add_node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """Append a node to the graph and to the indices."""
        self.graph.node.append(node)
        added = self.graph.node[-1]
        self._index(added)
        return added

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        """Append a constant tensor under ``name`` (which must be new)."""
        if name in self.initializers or name in self.producer:
            raise ExportError(f"internal: tensor name {name!r} is already taken")
        t = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(t)
        self.initializers[name] = self.graph.initializer[-1]
        self.taken.add(name)
        self.shapes[name] = tuple(int(d) for d in t.dims)
        self.dtypes[name] = t.data_type
        return name

    # -- questions ----------------------------------------------------------------------------
    @property
    def graph_inputs(self) -> list[str]:
        """Real inputs (graph inputs that are not initializers)."""
        return [i.name for i in self.graph.input if i.name not in self.initializers]

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """Static shape of a tensor, or None when not even its rank is known."""
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape when every dimension is a known int, else None."""
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(int(d) for d in s)  # type: ignore[arg-type]

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dtype(self, name: str) -> int:
        """ONNX elem type of a tensor (FLOAT when unknown)."""
        return self.dtypes.get(name, onnx.TensorProto.FLOAT)

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name)))

    def is_float(self, name: str) -> bool:
        if name in self.dtypes:
            return self.dtypes[name] in FLOAT_TYPES
        return True

    def is_const(self, name: str) -> bool:
        """True for initializers (not overridable inputs) and outputs of Constant nodes."""
        if name in self.initializers:
            return name not in {i.name for i in self.graph.input}
        if name in self.folded:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const(self, name: str) -> np.ndarray | None:
        """Value of a constant tensor, or None if ``name`` is not a constant."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value: np.ndarray | None = None
        if self.is_const(name) and name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif name in self.folded:
            value = self.folded[name]
        else:
            p = self.producer.get(name)
            if p is not None and p.op_type == "Constant":
                value = _constant_node_value(p)
        if value is not None:
            self._const_cache[name] = value
        return value

    def topo_order(self) -> list[onnx.NodeProto]:
        """Nodes in the order they appear (ONNX requires a topologically sorted node list)."""
        return list(self.graph.node)

    def ancestors(self, names: Iterable[str], data_only: bool = False) -> set[str]:
        """Every tensor that ``names`` depend on (inclusive).

        ``data_only`` follows float edges only, so ``Reshape(x, Shape(input))`` does not make
        the input an ancestor through its shape.
        """

        def inputs(t: str) -> list[str]:
            p = self.producer.get(t)
            return [i for i in p.input if i] if p is not None else []

        return self._reach(names, inputs, data_only)

    def descendants(self, names: Iterable[str], data_only: bool = False) -> set[str]:
        """Every tensor computed from ``names`` (inclusive); ``data_only``: float edges only."""

        def outputs(t: str) -> list[str]:
            return [o for c in self.consumers.get(t, []) for o in c.output if o]

        return self._reach(names, outputs, data_only)

    def _reach(
        self, names: Iterable[str], step: Callable[[str], list[str]], data_only: bool
    ) -> set[str]:
        """The tensors reached from ``names`` by repeating ``step`` (inclusive)."""
        seen: set[str] = set()
        stack = [n for n in names if n]
        while stack:
            t = stack.pop()
            if t in seen or (data_only and not self.is_float(t)):
                continue
            seen.add(t)
            stack.extend(step(t))
        return seen

    def unique_name(self, base: str) -> str:
        """A tensor/node name not used anywhere in the graph yet."""
        if base not in self.taken:
            self.taken.add(base)
            return base
        k = 1
        while f"{base}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{base}_{k}")
        return f"{base}_{k}"


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute's Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def node_label(node: onnx.NodeProto) -> str:
    """How a node is named in messages: its name, else its first output."""
    return node.name or (node.output[0] if node.output else "<unnamed>")


def input_or_none(node: onnx.NodeProto, k: int) -> str | None:
    """The k-th input name, or None when absent or empty (optional input left out)."""
    return node.input[k] if len(node.input) > k and node.input[k] else None


def ints(values: Sequence[int] | np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


FOLD_MAX_ELEMENTS = 4096
"""Only small tensors are folded: shape arithmetic, pads, axes — never weights."""

_NOT_FOLDABLE = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
}


def fold_constants(model: onnx.ModelProto, graph_inputs: set[str]) -> dict[str, np.ndarray]:
    """Values of small tensors computed only from constants (evaluated with onnx.reference).

    The graph itself is not changed; the values serve shape inference and ``GraphView.const``.
    """
    from onnx.reference import ReferenceEvaluator

    sizes = {
        i.name: int(np.prod(i.dims)) for i in model.graph.initializer if i.name not in graph_inputs
    }
    known = {k for k, n in sizes.items() if n <= FOLD_MAX_ELEMENTS}
    nodes = []
    for node in model.graph.node:
        if node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            value = _constant_node_value(node)
            if value is not None and value.size <= FOLD_MAX_ELEMENTS:
                known.add(node.output[0])
            continue
        if any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            continue
        if all(not i or i in known for i in node.input) and any(node.input):
            nodes.append(node)
            known.update(o for o in node.output if o)
    if not nodes:
        return {}
    needed = {i for n in nodes for i in n.input if i}
    produced = {o for n in nodes for o in n.output if o}
    consts = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in needed]
    inits = [i for i in model.graph.initializer if i.name in needed]
    outs = sorted(produced)
    graph = helper.make_graph(
        consts + nodes, "fold", [], [helper.make_empty_tensor_value_info(o) for o in outs], inits
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    try:
        values = ReferenceEvaluator(sub).run(outs, {})
    except Exception:  # folding is an optimisation of the analysis, never a requirement
        return {}
    return {
        name: np.asarray(v)
        for name, v in zip(outs, values, strict=True)
        if v is not None and np.asarray(v).size <= FOLD_MAX_ELEMENTS
    }
