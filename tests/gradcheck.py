"""Check one VJP rule: onnxcam's gradient graph in onnxruntime vs float64 finite differences.

For a single-op model y = op(x, ...), the scalar checked is f(x) = Σ ⟨c_k, y_k⟩ with random
seeds c_k. The gradient subgraph built by the walker gives ∂f/∂x = Jᵀc (run in onnxruntime,
float32); the reference is central differences of f computed by ``onnx.reference`` in float64,
element by element, plus the dot-product test ⟨t, Jᵀc⟩ ≈ (f(x + h t) − f(x − h t)) / 2h.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcam.export.autodiff import build_backward
from onnxcam.export.graph import GraphView


@dataclass
class Case:
    """One row of the OP_CASES table."""

    id: str
    op: str
    inputs: list[Any]
    """Per input: a shape tuple (random float input, differentiated), an ndarray (constant),
    or None (optional input left out)."""
    attrs: dict = field(default_factory=dict)
    sampler: str = "normal"
    """normal | positive | distinct (no ties, for max-like ops) | kinks:a,b (keep away from)."""
    outputs: int = 1
    opset: int = 17
    rtol: float = 2e-4
    seed: int = 0


def _sample(case: Case, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    n = int(np.prod(shape))
    if case.sampler == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if case.sampler == "distinct":
        return (rng.permutation(n) - n / 2).reshape(shape) * 0.1 + rng.uniform(-0.01, 0.01, shape)
    x = rng.normal(size=shape)
    if case.sampler.startswith("kinks:"):
        kinks = [float(k) for k in case.sampler[6:].split(",")]
        for k in kinks:  # push samples near a kink at least 0.05 away from it
            near = np.abs(x - k) < 0.05
            x[near] = k + np.sign(x[near] - k + 1e-12) * 0.05
        x = x * 4 if max(abs(k) for k in kinks) > 1 else x
    return x


def build_forward(case: Case, dtype: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The single-op model and its random inputs (x0, x1, ... for the shape entries)."""
    rng = np.random.default_rng(case.seed)
    np_dt = helper.tensor_dtype_to_np_dtype(dtype)
    graph_inputs, inits, feeds, names = [], [], {}, []
    for k, spec in enumerate(case.inputs):
        if spec is None:
            names.append("")
        elif isinstance(spec, tuple):
            name = f"x{k}"
            graph_inputs.append(helper.make_tensor_value_info(name, dtype, list(spec)))
            feeds[name] = _sample(case, spec, rng).astype(np_dt)
            names.append(name)
        else:
            name = f"c{k}"
            arr = np.asarray(spec)
            if arr.dtype.kind == "f":
                arr = arr.astype(np_dt)
            inits.append(numpy_helper.from_array(arr, name))
            names.append(name)
    outs = [f"y{k}" for k in range(case.outputs)]
    node = helper.make_node(case.op, names, outs, name="op", **case.attrs)
    graph = helper.make_graph(
        [node],
        "case",
        graph_inputs,
        [helper.make_tensor_value_info(o, dtype, None) for o in outs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    return model, feeds


def _run_shapes_where_not_inferred(
    view: GraphView, model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    """Output shapes ONNX shape inference leaves open (GroupNormalization, a context-dependent
    function, gets none) are read from one onnxruntime run of the forward model."""
    outs = [o.name for o in model.graph.output if view.static_shape(o.name) is None]
    if outs:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for name, y in zip(outs, sess.run(outs, feeds), strict=True):
            view.shapes[name] = tuple(y.shape)


def gradient_model(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]]:
    """Forward model plus the walker's backward nodes; seeds are extra graph inputs."""
    model, feeds = build_forward(case, TensorProto.FLOAT)
    view = GraphView(model)
    _run_shapes_where_not_inferred(view, model, feeds)
    for out in model.graph.output:  # declare the inferred output shapes
        out.CopyFrom(
            helper.make_tensor_value_info(out.name, TensorProto.FLOAT, view.shape(out.name))
        )
    rng = np.random.default_rng(case.seed + 1)
    seeds = {}
    for k in range(case.outputs):
        y = f"y{k}"
        shape = view.static_shape(y)
        assert shape is not None, f"{case.id}: output shape not inferred"
        seed = f"seed{k}"
        model.graph.input.append(helper.make_tensor_value_info(seed, TensorProto.FLOAT, shape))
        feeds[seed] = rng.normal(size=shape).astype(np.float32)
        seeds[y] = seed
    wrt = [n for n in feeds if n.startswith("x")]
    grads = build_backward(view, seeds, wrt)
    for x in wrt:
        model.graph.output.append(
            helper.make_tensor_value_info(grads[x], TensorProto.FLOAT, view.shape(x))
        )
    onnx.checker.check_model(model, full_check=True)
    return model, feeds, [grads[x] for x in wrt]


def check_case(case: Case) -> dict[str, float]:
    """Run the case; return the worst relative errors (finite differences, dot product)."""
    gmodel, feeds, grad_names = gradient_model(case)
    sess = ort.InferenceSession(gmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(grad_names, sess.run(grad_names, feeds), strict=True))

    fmodel, _ = build_forward(case, TensorProto.DOUBLE)
    ref = ReferenceEvaluator(fmodel)
    x64 = {k: v.astype(np.float64) for k, v in feeds.items() if k.startswith("x")}
    seeds = [feeds[f"seed{k}"].astype(np.float64) for k in range(case.outputs)]

    def f(xs: dict[str, np.ndarray]) -> float:
        ys = ref.run(None, xs)
        return float(
            sum(np.sum(np.asarray(y, np.float64) * s) for y, s in zip(ys, seeds, strict=True))
        )

    h = 1e-6
    worst_fd = worst_dot = 0.0
    wrt = [n for n in feeds if n.startswith("x")]
    for x, gname in zip(wrt, grad_names, strict=True):
        g = got[gname].astype(np.float64)
        assert g.shape == x64[x].shape, f"{case.id}: gradient shape {g.shape} != {x64[x].shape}"
        fd = np.zeros_like(x64[x])
        for i in range(fd.size):
            plus, minus = dict(x64), dict(x64)
            plus[x] = x64[x].copy()
            minus[x] = x64[x].copy()
            plus[x].flat[i] += h
            minus[x].flat[i] -= h
            fd.flat[i] = (f(plus) - f(minus)) / (2 * h)
        assert np.isfinite(g).all(), f"{case.id}: gradient of {x} is not finite"
        scale = max(np.abs(fd).max(), 1e-3)
        worst_fd = max(worst_fd, float(np.abs(g - fd).max() / scale))
        t = np.random.default_rng(7).normal(size=fd.shape)
        plus, minus = dict(x64), dict(x64)
        plus[x] = x64[x] + h * t
        minus[x] = x64[x] - h * t
        jt = (f(plus) - f(minus)) / (2 * h)
        jtc = float(np.sum(t * g))
        worst_dot = max(worst_dot, abs(jt - jtc) / max(abs(jt), np.abs(t).sum() * scale * 1e-3))
    return {"fd": worst_fd, "dot": worst_dot}
