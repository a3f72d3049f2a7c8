"""A read-mostly view over an ONNX graph: producers, consumers, shapes, dtypes and constants.

Passes ask this view questions ("who produces x?", "what is x's static shape?", "is x a
constant, and what is its value?") instead of walking protobufs themselves. New nodes and
initializers are appended through ``add_node`` / ``add_initializer`` so the indices stay valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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

    def __init__(self, model: onnx.ModelProto, analyse: bool = True) -> None:
        """``analyse=False`` skips the static analysis (``refresh_shapes``): only the types
        the model declares (inputs, outputs, value_info, initializers) are known."""
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
        self.folded: dict[str, np.ndarray] = {}
        self.probe_batches: tuple[int, ...] = ()
        if analyse:
            self.refresh_shapes()
        else:
            self.shapes, self.dtypes = _read_types(model)

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
        """Re-run the static analysis (``analyse_shapes``): every tensor's static shape and
        dtype, and the values of the small tensors the graph computes from constants and from
        static shapes (shape arithmetic, pads, axes) that do not depend on the batch size."""
        found = analyse_shapes(self.model)
        self.folded = found.values
        self.probe_batches = found.probe_batches
        self._const_cache.clear()
        # Declared output shapes may be vaguer than what inference finds (torch marks every
        # dim of an extra output symbolic): the analysis infers with the outputs left open.
        for vi in self.graph.output:
            if vi.type.HasField("tensor_type"):
                self.shapes[vi.name] = _dims(vi.type)
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        self.shapes.update(found.shapes)
        self.dtypes.update(found.dtypes)
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

    def is_data(self, name: str) -> bool:
        """Carries the network's values: a float tensor, or a QDQ model's quantized
        activation (the output of a QuantizeLinear, read back by a DequantizeLinear)."""
        if self.is_float(name):
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "QuantizeLinear"

    def is_const(self, name: str) -> bool:
        """True for initializers (not overridable inputs) and outputs of Constant nodes."""
        if name in self.initializers:
            return name not in {i.name for i in self.graph.input}
        if name in self.folded:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def is_weight(self, name: str) -> bool:
        """A constant, or a QDQ model's dequantized constant (``DequantizeLinear`` of
        constants: the same value on every run)."""
        if self.is_const(name):
            return True
        p = self.producer.get(name)
        return (
            p is not None
            and p.op_type == "DequantizeLinear"
            and all(self.is_const(i) for i in p.input if i)
        )

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

    def size_hint(self, name: str) -> str:
        """`` (fix the input size with --size H W)`` when ``name`` is computed from a graph
        input that has a dynamic dimension besides the batch (so its value could not be
        resolved statically), else ``""``: for error messages about non-constant shapes."""
        dynamic = {
            i
            for i in self.graph_inputs
            if any(not isinstance(d, int) for d in (self.shapes.get(i) or ())[1:])
        }
        if dynamic and dynamic & self.ancestors([name]):
            return " (fix the input size with --size H W)"
        return ""

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
        """Every tensor computed from ``names`` (inclusive); ``data_only``: data edges only
        (``is_data``: float tensors and quantized activations)."""

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
            if t in seen or (data_only and not self.is_data(t)):
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


def reduce_axes(view: GraphView, node: onnx.NodeProto, rank: int = 4) -> tuple[int, ...] | None:
    """The sorted, non-negative axes a Reduce* node reduces on a ``rank``-D input (from its
    attribute or its constant second input); None when they are not known."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = view.const(node.input[1])
    return None if axes is None else tuple(sorted({int(a) % rank for a in ints(axes)}))


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

PROBE_BATCHES = (3, 7)
"""Batch sizes the analysis fixes a dynamic batch at (two, so that what depends on the batch
shows; neither is 1, so that a batch cannot pass for a broadcast axis)."""

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

_GROWING = {
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Range",
    "Resize",
    "Upsample",
    "Pad",
    "OneHot",
    "EyeLike",
    "Gather",
    "GatherElements",
    "GatherND",
    "MatMul",
    "Einsum",
}
"""Ops whose output can be much larger than their inputs: folded only once inference has
shown their output is small."""


@dataclass
class ShapeAnalysis:
    """What ``analyse_shapes`` found about a model."""

    values: dict[str, np.ndarray]
    """Small tensors with a static value (computed from constants and static shapes)."""
    shapes: dict[str, tuple[Dim, ...] | None]
    dtypes: dict[str, int]
    probe_batches: tuple[int, ...] = ()
    """The batch sizes the dynamic batch was fixed at (empty when it was left open)."""


def analyse_shapes(model: onnx.ModelProto) -> ShapeAnalysis:
    """Static shapes, dtypes and small constant values of a model; the model is not changed.

    On a weight-free copy, ONNX shape inference (with data propagation) and then one pass of
    folding and node-by-node inference (``_propagate``): a ``Shape``/``Size`` of a tensor whose
    shape is static is a constant, so is what is computed from constants (``onnx.reference``),
    and a node reading such values gets its output shapes inferred again. This resolves the
    ``Shape → Gather → Div → Concat → Reshape`` arithmetic torch's exporters emit.

    A dynamic batch would stop that at the first ``Shape`` of an activation (and leaves the
    ``-1`` of a ``Reshape`` unknown), so the analysis runs twice, with the batch fixed at each
    of ``PROBE_BATCHES``: a value equal in both runs is a constant, a dimension equal in both
    is static, and one that takes the two batch sizes is the batch (named as in the input).
    What differs otherwise (a reshape target holding the batch, a window batch ``B·nW``) is
    not a constant / unknown, so gradient rules read it from the runtime tensors. Other
    dynamic input dimensions stay dynamic, and so does what depends on them. When inference
    fails with the batch fixed, the batch is left open instead.
    """
    base, real_inputs = _skeleton(model)
    batched = _batched_inputs(base, real_inputs)
    if batched:
        symbols = {(_dims(vi.type) or (None,))[0] for vi in base.graph.input if vi.name in batched}
        symbol = symbols.pop() if len(symbols) == 1 else None
        try:
            runs = [_propagate(_with_batch(base, batched, b), strict=True) for b in PROBE_BATCHES]
        except _ProbeError:
            pass
        else:
            return _merge(runs, PROBE_BATCHES, symbol)  # type: ignore[arg-type]
    return _propagate(base, strict=False)


class _ProbeError(Exception):
    """Inference failed with the batch fixed."""


def _skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` without its large initializers (declared as inputs of the same
    type instead: inference needs their shapes only), outputs' shapes left open; and the
    names of the model's real inputs."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    real = [i.name for i in g.input if i.name not in inits]
    probe = onnx.ModelProto()
    probe.ir_version = model.ir_version
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    pg = probe.graph
    pg.name = g.name
    pg.node.extend(g.node)
    pg.input.extend(g.input)
    pg.output.extend(g.output)
    for o in pg.output:
        o.type.tensor_type.ClearField("shape")
    pg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    for init in g.initializer:
        if int(np.prod(init.dims)) <= FOLD_MAX_ELEMENTS:
            pg.initializer.append(init)
        elif init.name not in declared:
            pg.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return probe, real


def _batched_inputs(base: onnx.ModelProto, real: list[str]) -> list[str]:
    """Real inputs whose leading (batch) dimension is not a fixed number."""
    out = []
    for vi in base.graph.input:
        dims = _dims(vi.type) if vi.name in real and vi.type.HasField("tensor_type") else None
        if dims and not isinstance(dims[0], int):
            out.append(vi.name)
    return out


def _with_batch(base: onnx.ModelProto, names: list[str], batch: int) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(base)
    for vi in probe.graph.input:
        if vi.name in names:
            d = vi.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_value = batch
    return probe


def _propagate(probe: onnx.ModelProto, strict: bool) -> ShapeAnalysis:
    """Shapes and small values of ``probe``: ONNX shape inference (data propagation on), then
    one pass over the nodes in order.

    In that pass a ``Shape``/``Size`` of a static shape is a value; a node whose inputs are all
    values is evaluated (onnx.reference); and a node with an input that became a value or more
    static is inferred again (``infer_node_outputs``, the values as its constant inputs). This
    follows what ONNX's data propagation alone does not (integer ``Div``, ``Identity``, ``Mod``
    on shapes, as in ``c // 2``) through any depth of the graph in a single pass.

    ``strict``: a failing inference raises ``_ProbeError``; else the declared types are used.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # inference is best effort
        if strict:
            raise _ProbeError from None
        inferred = probe
    types = _types(inferred)
    opsets = {o.domain or "": o.version for o in probe.opset_import}
    inits = {i.name: i for i in probe.graph.initializer}  # the skeleton keeps small ones only
    known: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    improved: set[str] = set()

    def value(name: str) -> np.ndarray | None:
        if name not in known and name in inits:
            known[name] = numpy_helper.to_array(inits[name])
        return known.get(name)

    for node in probe.graph.node:
        outs = [o for o in node.output if o]
        if not outs or node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDABLE:
            continue
        if any(a.type in _SUBGRAPH_ATTRS for a in node.attribute):
            continue
        if node.op_type == "Constant":
            v = _constant_node_value(node)
            if v is not None and v.size <= FOLD_MAX_ELEMENTS:
                known[outs[0]] = v
            continue
        given = {i: v for i in node.input if i and (v := value(i)) is not None}
        if any(i in improved or i in values for i in node.input) and not all(
            _is_static(types.get(o)) for o in outs
        ):
            _reinfer(node, types, given, opsets, improved)
        if node.op_type in ("Shape", "Size"):
            t = types.get(node.input[0])
            v = _shape_value(node, _dims(t) if t is not None else None)
            got = None if v is None else [v]
        elif given and all(not i or i in given for i in node.input) and _small_outputs(node, types):
            got = _run(node, [given.get(i) if i else None for i in node.input], opsets)
        else:
            continue
        for o, v in zip(node.output, got or [], strict=False):
            if not o or v is None or v.size > FOLD_MAX_ELEMENTS:
                continue
            known[o] = values[o] = v
            t = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            if o not in types or _dims(types[o]) != _dims(t):
                types[o] = t
                improved.add(o)
    shapes = {k: _dims(t) for k, t in types.items()}
    dtypes = {k: t.tensor_type.elem_type for k, t in types.items()}
    return ShapeAnalysis(values, shapes, dtypes)


_SUBGRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _is_static(t: onnx.TypeProto | None) -> bool:
    dims = _dims(t) if t is not None else None
    return dims is not None and all(isinstance(d, int) for d in dims)


def _types(m: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor types of a model's inputs, value_info, outputs and initializers."""
    g = m.graph
    out = {
        vi.name: vi.type
        for vi in [*g.input, *g.value_info, *g.output]
        if vi.type.HasField("tensor_type")
    }
    for init in g.initializer:
        out[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return out


def _reinfer(
    node: onnx.NodeProto,
    types: dict[str, onnx.TypeProto],
    given: dict[str, np.ndarray],
    opsets: dict[str, int],
    improved: set[str],
) -> None:
    """Infer ``node``'s output types again from its inputs' current types and values; keep
    what is more static than before (``improved`` gets the outputs that changed)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get("", 0), "")
        found = onnx.shape_inference.infer_node_outputs(
            schema,
            node,
            {i: types[i] for i in node.input if i in types},
            {i: numpy_helper.from_array(v, i) for i, v in given.items()},
            opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        )
    except Exception:  # no schema, or the op's inference needs more: keep what we have
        return
    for o, t in found.items():
        if not t.HasField("tensor_type"):
            continue
        merged = _more_static(types.get(o), t)
        if merged is not None:
            types[o] = merged
            improved.add(o)


def _more_static(old: onnx.TypeProto | None, new: onnx.TypeProto) -> onnx.TypeProto | None:
    """``old`` with the dimensions that ``new`` knows as numbers where ``old`` does not; None
    when that changes nothing."""
    new_dims = _dims(new)
    old_dims = _dims(old) if old is not None else None
    if new_dims is None:
        return None
    if old_dims is None or len(old_dims) != len(new_dims):
        merged = new_dims
    else:
        merged = tuple(
            n if isinstance(n, int) else o for o, n in zip(old_dims, new_dims, strict=True)
        )
    if merged == old_dims:
        return None
    elem = old.tensor_type.elem_type if old is not None else 0
    return helper.make_tensor_type_proto(elem or new.tensor_type.elem_type, list(merged))


_OP_CLASSES: dict[tuple[str, int], Any] = {}


def _run(node: onnx.NodeProto, inputs: list, opsets: dict[str, int]) -> list | None:
    """``node``'s outputs on ``inputs`` (onnx.reference), None when it cannot be evaluated."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops import load_op

    version = opsets.get("", 0)
    params = {
        "log": lambda *_: None,
        "opsets": opsets,
        "verbose": 0,
        "new_ops": None,
        "existing_functions": {},
        "evaluator_cls": ReferenceEvaluator,
    }
    try:
        key = (node.op_type, version)
        if key not in _OP_CLASSES:
            _OP_CLASSES[key] = load_op("", node.op_type, version)
        got = _OP_CLASSES[key](node, params).run(*inputs)
    except Exception:  # folding is an optimisation of the analysis, never a requirement
        return None
    return [None if v is None else np.asarray(v) for v in got]


def _read_types(m: onnx.ModelProto) -> tuple[dict[str, tuple[Dim, ...] | None], dict[str, int]]:
    shapes: dict[str, tuple[Dim, ...] | None] = {}
    dtypes: dict[str, int] = {}
    g = m.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            shapes[vi.name] = _dims(vi.type)
            dtypes[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        dtypes[init.name] = init.data_type
    return shapes, dtypes


def _merge(
    runs: list[ShapeAnalysis], batches: tuple[int, int], symbol: str | None
) -> ShapeAnalysis:
    """One analysis from two runs at different batch sizes (see ``analyse_shapes``)."""
    a, b = runs
    values = {
        k: v
        for k, v in a.values.items()
        if k in b.values and v.dtype == b.values[k].dtype and np.array_equal(v, b.values[k])
    }
    shapes: dict[str, tuple[Dim, ...] | None] = {}
    for name, sa in a.shapes.items():
        sb = b.shapes.get(name)
        if sa is None or sb is None or len(sa) != len(sb):
            shapes[name] = None
            continue
        shapes[name] = tuple(
            x if x == y else (symbol if (x, y) == batches else None)
            for x, y in zip(sa, sb, strict=True)
        )
    return ShapeAnalysis(values, shapes, a.dtypes, tuple(batches))


def _shape_value(node: onnx.NodeProto, shape: tuple[Dim, ...] | None) -> np.ndarray | None:
    """The value of a ``Shape`` or ``Size`` node when the dimensions it reads are static."""
    if shape is None:
        return None
    if node.op_type == "Size":
        if all(isinstance(d, int) for d in shape):
            return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
        return None
    r = len(shape)
    start, end = int(attr(node, "start", 0)), int(attr(node, "end", r))
    start, end = (min(max(v + r if v < 0 else v, 0), r) for v in (start, end))
    dims = shape[start:end]
    if any(not isinstance(d, int) for d in dims):
        return None
    return np.array(dims, dtype=np.int64)


def _small_outputs(node: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> bool:
    """Whether the node's outputs are known to be small enough to fold (an op that can grow
    its input, such as ``ConstantOfShape``, only once its output shape is known)."""
    for o in node.output:
        t = types.get(o) if o else None
        s = _dims(t) if t is not None else (() if not o else None)
        if s is None or any(not isinstance(d, int) for d in s):
            if node.op_type in _GROWING:
                return False
        elif int(np.prod(s)) > FOLD_MAX_ELEMENTS:  # type: ignore[arg-type]
            return False
    return True
