"""The export pipeline as data: ``PASSES``, in the order ``run_passes`` applies them.

``export_onnx`` loads the model, upgrades it to opset ≥ 17 and resolves the image input, the
logits and the target layers (``api.build_state``); then the passes append, in this order
(each entry is the pass's name and the first line of its docstring; ``tests/test_passes.py``
checks this list against ``describe()``):

1. ``add_mode_input``: The ``onnxcam_mode`` input (int64 scalar, default 0: explain).
2. ``expose_activations``: Each target tensor as output ``onnxcam_activation_k``.
3. ``add_binary_logits``: A one-logit head as two classes: logits ``[−z, z]`` (class 0: negative).
4. ``add_score``: The class and seed inputs, the explained class and the score Σ seed · logits.
5. ``add_topk``: The top-K classes with their logits and probabilities (K = min(5, classes)).
6. ``add_cam_weights``: The explained score's CAM weights ``onnxcam_cam_weight_k`` (GAP → Linear).
7. ``add_backward`` (in If mode 0): The gradients dScore/dA_k as outputs ``onnxcam_gradient_k``.
8. ``add_heatmaps`` (in If mode 0): The requested CAM maps as ``onnxcam_heatmap_<method>_k``.
9. ``add_rule_gradients`` (in If mode 0): The input gradient under another ReLU rule.
10. ``add_fullgrad_bias`` (in If mode 0): FullGrad's input bias map ``onnxcam_fullgrad_bias_k``.
11. ``add_windows`` (in If mode 3): Each detection's gradient window: ``onnxcam_gradient_window_k``.
12. ``add_reciprocam`` (in If mode 4): ReciproCAM's map per target: ``onnxcam_reciprocam_k``.
13. ``add_heads``: The head alone per target: ``onnxcam_head_input_k`` → ``onnxcam_head_logits_k``.

Consecutive passes with the same ``Gate`` share one ``If`` branch, opened before the first
and closed after the last: the heatmaps are computed in the gradients' branch (one ``If``, no
copies), so a forward-only run (mode 1) skips both. After the passes ``export_onnx`` checks
that every forward node is unchanged, rewrites the graph as a forward copy where asked
(``export/layout.py``: forward-only and explaining runs as two branches of one top-level
``If``; the default with an input gradient), gives the branches their own weights
(``api._localize_weights``), writes the contract metadata (``passes.write_metadata``), checks
the graph with ``onnx.checker``, runs old and new graphs in onnxruntime (``export/verify.py``)
and writes the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .gating import EXPLAIN, WINDOWS, Branch, Gate
from .passes import (
    ExportState,
    add_backward,
    add_binary_logits,
    add_cam_weights,
    add_fullgrad_bias,
    add_heads,
    add_heatmaps,
    add_mode_input,
    add_reciprocam,
    add_rule_gradients,
    add_score,
    add_topk,
    add_windows,
    expose_activations,
)
from .reciprocam import RECIPROCAM


@dataclass(frozen=True)
class Pass:
    """One step of the pipeline: a function of the ``ExportState`` that appends to the graph,
    and the ``Gate`` of the ``If`` branch its nodes go into (None: the main graph)."""

    run: Callable[[ExportState], None]
    gate: Gate | None = None

    @property
    def name(self) -> str:
        return self.run.__name__

    @property
    def summary(self) -> str:
        """The first line of the pass's docstring."""
        return (self.run.__doc__ or "").strip().splitlines()[0]


PASSES: tuple[Pass, ...] = (
    Pass(add_mode_input),
    Pass(expose_activations),
    Pass(add_binary_logits),
    Pass(add_score),
    Pass(add_topk),
    Pass(add_cam_weights),
    Pass(add_backward, EXPLAIN),
    Pass(add_heatmaps, EXPLAIN),
    Pass(add_rule_gradients, EXPLAIN),
    Pass(add_fullgrad_bias, EXPLAIN),
    Pass(add_windows, WINDOWS),
    Pass(add_reciprocam, RECIPROCAM),
    Pass(add_heads),
)


def describe(passes: Sequence[Pass] = PASSES) -> str:
    """The numbered list of ``passes`` as the module docstring shows it."""
    lines = []
    for i, p in enumerate(passes, 1):
        gate = f" (in If mode {p.gate.mode})" if p.gate else ""
        lines.append(f"{i}. ``{p.name}``{gate}: {p.summary}")
    return "\n".join(lines)


def run_passes(st: ExportState, passes: Sequence[Pass] = PASSES) -> None:
    """Run ``passes`` in order on ``st``, opening and closing their ``If`` branches."""
    for p in passes:
        if st.branch is not None and st.branch.gate != p.gate:
            _close(st)
        if p.gate is not None and st.branch is None:
            st.branch = Branch(st.view, p.gate, st.consts)
        p.run(st)
    _close(st)


def _close(st: ExportState) -> None:
    if st.branch is not None:
        st.branch.close()
        st.branch = None


__all__ = ["PASSES", "Pass", "describe", "run_passes"]
