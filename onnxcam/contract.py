"""Graph contract v2: every name the exporter writes and the runtime reads, defined once.

The exporter (``onnxcam.export``) appends these inputs, outputs and ``metadata_props`` to a
model; the runtime reads them through ``session.get_modelmeta().custom_metadata_map`` and the
session's input/output lists, so it needs neither ``onnx`` nor any name guessing.
See ``docs/graph-contract.md`` for the meaning of every entry.
"""

from __future__ import annotations

VERSION = 2
"""Contract version; bumped whenever a name or a meaning below changes.

v2: the ``onnxcam_mode`` input (gradients behind an ``If``: forward-only runs skip them) and
per-target head-only paths (``onnxcam_head_input_k`` → ``onnxcam_head_logits_k``)."""

# --- inputs ---------------------------------------------------------------------------------
CLASS_INPUT = "onnxcam_target_class"
"""int64 ``[batch]``: class to explain per sample; absent (default ``[-1]``) or negative = top-1."""

MODE_INPUT = "onnxcam_mode"
"""int64 scalar, default 0. What a run computes besides the model's own outputs:
0 (``MODE_EXPLAIN``) activations + gradients; 1 (``MODE_FORWARD``) activations only, the
gradient subgraph is skipped (gradient outputs are empty); 2 (``MODE_HEAD``) additionally runs
each target's head on ``onnxcam_head_input_k``."""
MODE_EXPLAIN = 0
MODE_FORWARD = 1
MODE_HEAD = 2
HEAD_INPUT = "onnxcam_head_input_{k}"
"""float ``[m, C, h, w]`` (target layout): activations to push through target k's head (mode 2)."""

# --- outputs --------------------------------------------------------------------------------
CLASS_OUTPUT = "onnxcam_class"
"""int64 ``[batch]``: the class that was explained for each sample."""
LOGITS_OUTPUT = "onnxcam_logits"
"""float ``[batch, classes]``: the pre-activation logits, only when the model's own output is
not them (it applies Softmax / LogSoftmax / Sigmoid); otherwise that output is the logits."""
SCORE_OUTPUT = "onnxcam_score"
"""float ``[batch]``: the explained class's pre-softmax score (the value being differentiated)."""
ACTIVATION_OUTPUT = "onnxcam_activation_{k}"
"""float, the target layer ``k``'s activations, in the layout recorded in the metadata."""
GRADIENT_OUTPUT = "onnxcam_gradient_{k}"
"""float, d score / d activations of target layer ``k``, same shape as the activations."""
HEAD_OUTPUT = "onnxcam_head_logits_{k}"
"""float ``[m, classes]``: logits of the head of target k on ``onnxcam_head_input_k`` (mode 2;
empty otherwise). The layers before the target are not run for these."""
TOPK_INDEX_OUTPUT = "onnxcam_topk_index"
"""int64 ``[batch, K]``: the K best classes of each sample, best first (ties: lower index first);
K = min(``TOPK``, classes). Optional (absent when the class count is dynamic)."""
TOPK_LOGIT_OUTPUT = "onnxcam_topk_logit"
"""float ``[batch, K]``: their logits."""
TOPK_PROBABILITY_OUTPUT = "onnxcam_topk_probability"
"""float ``[batch, K]``: their probabilities — the softmax over all logits, or the sigmoid of each
for a multi-label (Sigmoid) head, as ``ModelInfo.probabilities`` computes them."""
TOPK = 5
"""How many classes the top-k outputs hold (the runtime always reports at least five)."""
CAM_WEIGHT_OUTPUT = "onnxcam_cam_weight_{k}"
"""float ``[batch, C]``: classifier weights of the explained class (only for a GAP→Linear head)."""

# --- metadata_props keys --------------------------------------------------------------------
META_PREFIX = "onnxcam."
META_VERSION = "onnxcam.contract_version"
"""str(int): the contract version the graph was written with."""
META_EXPORTER = "onnxcam.exporter"
"""JSON: exporter name/version, source model, opset, the time it took."""
META_TARGETS = "onnxcam.targets"
"""JSON list, one object per target layer: see ``TargetInfo`` keys in docs/graph-contract.md."""
META_INPUT = "onnxcam.input"
"""JSON object: the image input spec (name, layout, size, color order, scale, mean, std)."""
META_SCORE = "onnxcam.score"
"""JSON object: which tensor is differentiated (logits), the model output it came from, softmax."""
META_LABELS = "onnxcam.labels"
"""JSON list of class names (optional)."""
META_CLASSIFIER = "onnxcam.classifier"
"""JSON object: classifier weight initializer of a GAP→Linear head (optional; enables CAM)."""

ALL_META_KEYS = (
    META_VERSION,
    META_EXPORTER,
    META_TARGETS,
    META_INPUT,
    META_SCORE,
    META_LABELS,
    META_CLASSIFIER,
)

# --- values used inside the metadata ---------------------------------------------------------
LAYOUT_NCHW = "NCHW"
LAYOUT_NHWC = "NHWC"
LAYOUTS = (LAYOUT_NCHW, LAYOUT_NHWC)
COLOR_ORDERS = ("RGB", "BGR", "GRAY")


def activation_name(k: int) -> str:
    """Output name of target layer ``k``'s activations."""
    return ACTIVATION_OUTPUT.format(k=k)


def gradient_name(k: int) -> str:
    """Output name of target layer ``k``'s gradients."""
    return GRADIENT_OUTPUT.format(k=k)


def head_input_name(k: int) -> str:
    """Input name of target layer ``k``'s head-only path."""
    return HEAD_INPUT.format(k=k)


def head_output_name(k: int) -> str:
    """Output name of target layer ``k``'s head-only logits."""
    return HEAD_OUTPUT.format(k=k)


def cam_weight_name(k: int) -> str:
    """Output name of target layer ``k``'s per-sample CAM class weights."""
    return CAM_WEIGHT_OUTPUT.format(k=k)
