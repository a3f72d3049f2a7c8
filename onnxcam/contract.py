"""Graph contract v3: every name and record the exporter writes and the runtime reads, once.

The exporter (``onnxcam.export``) appends these inputs, outputs and ``metadata_props`` to a
model; the runtime reads them through ``session.get_modelmeta().custom_metadata_map`` and the
session's input/output lists, so it needs neither ``onnx`` nor any name guessing.

Three kinds of definitions live here and nowhere else: the *names* (inputs, outputs, metadata
keys, with the functions that build the per-layer ones), the *layouts* (``Layout``: which axes
hold channels and positions, and the conversions), and the *records* written as JSON metadata
(``InputSpec``, ``TargetLayer``, ``ScoreSpec``, ``ClassifierSpec``, gathered in ``Contract``),
each with ``to_json``/``from_json`` used by both sides.
See ``docs/graph-contract.md`` for the meaning of every entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import ContractError

VERSION = 3
"""Contract version; bumped whenever a name or a meaning below changes.

v2: the ``onnxcam_mode`` input (gradients behind an ``If``: forward-only runs skip them) and
per-target head-only paths (``onnxcam_head_input_k`` → ``onnxcam_head_logits_k``).
v3: the ``onnxcam_seed`` input (the explained score is Σ seed · logits: any target), tasks
(``ScoreSpec.task``: classify, detect, segment) and a detector's in-graph detections
(``onnxcam_detections``, one gradient row per detection)."""

NAME_PREFIX = "onnxcam_"
"""Every input and output name the contract adds starts with this."""

# --- inputs ---------------------------------------------------------------------------------
CLASS_INPUT = "onnxcam_target_class"
"""int64 ``[batch]``: class to explain per sample; absent (default ``[-1]``) or negative = top-1."""

SEED_INPUT = "onnxcam_seed"
"""float ``[rows, *logits.shape[1:]]``: weights w over the logits (``ScoreSpec.logits``); the
explained score of row r is Σ w[r] · logits[r] (``onnxcam_score``), so its gradients are the
gradients of that weighted sum — the backward pass is linear in the seed, and one graph serves
every target: a class (one-hot), a contrast (+1/−1), a sum of classes, a region of a
segmentation map, one detection, or ∇_z S(z) of any differentiable function S of the logits
(the runtime's targets, ``onnxcam.targets``). Absent: the task's default (``ScoreSpec.task``):
the one-hot of ``onnxcam_class`` (classify), that class over its predicted region (segment),
one row per kept detection (detect: ``onnxcam_detections``). Rows: one per image; with one
image and ``ScoreSpec.seed_rows``, any number (several targets of one image in one run)."""

DETECT_CONF_INPUT = "onnxcam_detect_conf"
"""float ``[1]``, default 0.25: the class score a detection must reach (a detector)."""
DETECT_IOU_INPUT = "onnxcam_detect_iou"
"""float ``[1]``, default 0.45: the IoU above which NMS drops the weaker box."""
DETECT_TOP_INPUT = "onnxcam_detect_top"
"""int64 ``[1]``, default 10: how many detections one image explains (the best first)."""

MODE_INPUT = "onnxcam_mode"
"""int64 scalar, default 0. What a run computes besides the model's own outputs:
0 (``MODE_EXPLAIN``) activations + gradients; 1 (``MODE_FORWARD``) activations only, the
gradient subgraph is skipped (gradient outputs are empty); 2 (``MODE_HEAD``) additionally runs
each target's head on ``onnxcam_head_input_k``; 3 (``MODE_WINDOWS``, a detector whose targets
have a ``GradientWindow``) activations + the graph's own detections with each row's gradient
in its window only (``onnxcam_gradient_window_k``; the full gradient outputs are empty);
4 (``MODE_RECIPROCAM``, an ``export --reciprocam`` graph) activations + the ReciproCAM maps
(``onnxcam_reciprocam_k``), the gradient subgraph skipped (mode 0 returns the maps too)."""
MODE_EXPLAIN = 0
MODE_FORWARD = 1
MODE_HEAD = 2
MODE_WINDOWS = 3
MODE_RECIPROCAM = 4
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
"""float, d score / d activations of target layer ``k``, same shape as the activations (a
detector: one row per detection)."""
RULE_SETS = ("guided", "deconvnet")
"""Other backward rules for ReLU, for the input gradient (``export --rules``): ``guided``
(Guided Backpropagation, Springenberg et al., arXiv 1412.6806: dx = [x > 0] · max(g, 0)) and
``deconvnet`` (Zeiler & Fergus, arXiv 1311.2901: dx = max(g, 0)); every other op keeps its
exact rule. As captum's ``GuidedBackprop``/``Deconvolution`` and pytorch-grad-cam's
``GuidedBackpropReLUModel``, which override ``nn.ReLU`` only."""
RULE_GRADIENT_OUTPUT = "onnxcam_gradient_{rule}_{k}"
"""float, the input's shape: target ``k``'s (the input's) gradient under ReLU rule ``rule``."""
FULLGRAD_BIAS_OUTPUT = "onnxcam_fullgrad_bias_{k}"
"""float ``[batch, H, W]`` (``export --fullgrad``), for the pixel target ``k``: FullGrad's bias
part (Srinivas & Fleuret, arXiv 1905.00780) as pytorch-grad-cam's ``FullGrad`` computes it,
Σ over the layers z = Conv(…) + b (a bias input) and z = BatchNormalization(…) (bias
β − μγ/√(σ² + ε)) on the path of Σ_c resize(ψ(b_c · ∂score/∂z_c)), ψ = |·| then min-max per
image and channel (t − min) / (10⁻⁷ + max − min), resize bilinear with half-pixel centres to
the input size (OpenCV ``INTER_LINEAR``); empty in modes other than 0."""
GRADIENT_WINDOW_OUTPUT = "onnxcam_gradient_window_{k}"
"""float ``[rows, C, 2r + 1, 2r + 1]`` (mode 3): each detection's gradient at target ``k`` in
its window (``GradientWindow``: centred on the row's anchor, zero off the map and for the rows
of other maps); the rows are the graph's own detections (a fed seed is not read)."""
DETECTIONS_OUTPUT = "onnxcam_detections"
"""float ``[rows, 8]`` (a detector): x1, y1, x2, y2 (model-input pixels), score, class, anchor,
kept — the rows the gradients and the score have. One image: the ``top`` best detections
after each anchor's best class and class-wise NMS (ONNX ``NonMaxSuppression``), or, when none
reaches ``conf``, its best prediction with kept = 0. Several images: each one's best
prediction. ``onnxcam_class`` and ``onnxcam_score`` then have these rows too."""
RECIPROCAM_OUTPUT = "onnxcam_reciprocam_{k}"
"""float ``[batch, h, w]`` (``export --reciprocam``, modes 4 and 0; empty in others): ReciproCAM
(Byun & Lee, arXiv 2209.14074) at target ``k`` as OpenVINO XAI computes it — at position j,
the explained class's pre-softmax logit of the head run on the activations with every position
but j zeroed, M_j = z_c(head(A ⊙ e_j)); raw (not min-max scaled). A token layer: ViT-ReciproCAM
(arXiv 2310.02588), the patch tokens and the residual stream weighted by a 3×3 Gaussian centred
on patch j, the class token kept."""
HEAD_OUTPUT = "onnxcam_head_logits_{k}"
"""float ``[m, classes]``: logits of the head of target k on ``onnxcam_head_input_k`` (mode 2;
empty otherwise). The layers before the target are not run for these."""
HEAD_GRADIENT = "onnxcam_head_gradient_{k}"
"""float ``[m, C, h, w]`` (the head input's shape and layout; ``export --head-gradients``, mode
2, empty otherwise): ∂ Σ_r s_r / ∂ onnxcam_head_input_k, s_r = Σ seed_r · head_logits_r the
score of head row r — seed = one-hot of ``onnxcam_class`` (or the fed ``onnxcam_seed``) of the
image the row belongs to (rows grouped by image: with B images and m = r·B rows, rows
i·r … i·r + r − 1 are image i's). What ShapleyCAM's Hessian-vector product differentiates."""
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
HEATMAP_OUTPUT = "onnxcam_heatmap_{method}_{k}"
"""float ``[batch, H, W]``: the finished map of ``method`` for target k (export ``--heatmaps``);
``method`` spelled with ``+`` → ``p`` and ``-`` → ``_`` (see ``heatmap_name``)."""

# --- metadata_props keys --------------------------------------------------------------------
META_PREFIX = "onnxcam."
META_VERSION = "onnxcam.contract_version"
"""str(int): the contract version the graph was written with."""
META_EXPORTER = "onnxcam.exporter"
"""JSON: exporter name/version, source model, opset, the time it took."""
META_TARGETS = "onnxcam.targets"
"""JSON list, one ``TargetLayer`` object per target layer (keys in docs/graph-contract.md)."""
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


def activation_name(k: int) -> str:
    """Output name of target layer ``k``'s activations."""
    return ACTIVATION_OUTPUT.format(k=k)


def gradient_name(k: int) -> str:
    """Output name of target layer ``k``'s gradients."""
    return GRADIENT_OUTPUT.format(k=k)


def gradient_window_name(k: int) -> str:
    """Output name of target layer ``k``'s gradient windows (mode 3)."""
    return GRADIENT_WINDOW_OUTPUT.format(k=k)


def fullgrad_bias_name(k: int) -> str:
    """Output name of the pixel target ``k``'s FullGrad bias map."""
    return FULLGRAD_BIAS_OUTPUT.format(k=k)


def reciprocam_name(k: int) -> str:
    """Output name of target layer ``k``'s ReciproCAM map (mode 4)."""
    return RECIPROCAM_OUTPUT.format(k=k)


def head_input_name(k: int) -> str:
    """Input name of target layer ``k``'s head-only path."""
    return HEAD_INPUT.format(k=k)


def head_output_name(k: int) -> str:
    """Output name of target layer ``k``'s head-only logits."""
    return HEAD_OUTPUT.format(k=k)


def head_gradient_name(k: int) -> str:
    """Output name of target layer ``k``'s head-only gradient (mode 2)."""
    return HEAD_GRADIENT.format(k=k)


def cam_weight_name(k: int) -> str:
    """Output name of target layer ``k``'s per-sample CAM class weights."""
    return CAM_WEIGHT_OUTPUT.format(k=k)


def heatmap_name(method: str, k: int) -> str:
    """Output name of target layer ``k``'s in-graph ``method`` heatmap (gradcam++ → gradcampp)."""
    return HEATMAP_OUTPUT.format(method=method.replace("+", "p").replace("-", "_"), k=k)


# --- layouts ---------------------------------------------------------------------------------
class Layout(str):
    """A feature-map or image layout: the string written in the metadata (``"NCHW"``), plus
    the axes it puts channels and positions on and the conversions to and from NCHW.

    A ``Layout`` *is* its name (``NCHW == "NCHW"``, JSON writes it as that string), so records
    read from older graphs and code that compares names keep working. The conversions use
    negative axes, so they work on ``[B, ...]`` and on stacked ``[B, n, ...]`` arrays alike.
    Token layouts (a sequence with prefix tokens and a patch grid) get their own value here.
    """

    channel_axis: int
    spatial_axes: tuple[int, int]
    to_nchw_perm: tuple[int, int, int, int]
    from_nchw_perm: tuple[int, int, int, int]

    def __new__(cls, name: str, channel_axis: int, spatial_axes: tuple[int, int]) -> Layout:
        self = super().__new__(cls, name)
        self.channel_axis, self.spatial_axes = channel_axis, spatial_axes
        order = (0, channel_axis, *spatial_axes)  # where N, C, H, W live
        self.to_nchw_perm = order  # type: ignore[assignment]
        self.from_nchw_perm = tuple(order.index(i) for i in range(4))  # type: ignore[assignment]
        return self

    def spatial(self, shape: Sequence) -> tuple:
        """(h, w) of a 4-D shape in this layout."""
        return (shape[self.spatial_axes[0]], shape[self.spatial_axes[1]])

    def channels(self, shape: Sequence):
        """The channel count of a 4-D shape in this layout."""
        return shape[self.channel_axis]

    def shape(self, n, c, h, w) -> tuple:
        """A 4-D shape in this layout from its N, C, H, W sizes."""
        nchw = (n, c, h, w)
        return tuple(nchw[i] for i in self.from_nchw_perm)

    def to_nchw(self, a: np.ndarray) -> np.ndarray:
        """``[..., (layout)]`` → ``[..., C, H, W]`` (a view; the last three axes move)."""
        if self.channel_axis == 1:
            return a
        lead = tuple(range(a.ndim - 3))
        return a.transpose(*lead, *(len(lead) + i - 1 for i in self.to_nchw_perm[1:]))

    def from_nchw(self, a: np.ndarray) -> np.ndarray:
        """``[..., C, H, W]`` → this layout (a view)."""
        if self.channel_axis == 1:
            return a
        lead = tuple(range(a.ndim - 3))
        return a.transpose(*lead, *(len(lead) + i - 1 for i in self.from_nchw_perm[1:]))

    def per_position(self, masks: np.ndarray) -> np.ndarray:
        """Masks ``[m, H, W]`` → broadcastable over this layout's channels."""
        return np.expand_dims(masks, self.channel_axis)

    def __reduce__(self):
        return (layout_of, (str(self),))


NCHW = Layout("NCHW", 1, (2, 3))
NHWC = Layout("NHWC", 3, (1, 2))
LAYOUT_NCHW = NCHW
LAYOUT_NHWC = NHWC
LAYOUTS = (NCHW, NHWC)
COLOR_ORDERS = ("RGB", "BGR", "GRAY")


def layout_of(name: str) -> Layout:
    """The ``Layout`` for a metadata value; unknown values are a ``ContractError``."""
    for lay in LAYOUTS:
        if name == lay:
            return lay
    raise ContractError(f"unknown layout {name!r}; this onnxcam reads {', '.join(LAYOUTS)}")


# --- records (the JSON metadata, read and written through these classes only) --------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, dict] = {
    "torch": {"color": "RGB", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "caffe": {"color": "BGR", "scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0,)},
    "tf": {"color": "RGB", "scale": 1 / 127.5, "mean": (1.0,), "std": (1.0,)},
    "unit": {"color": "RGB", "scale": 1 / 255, "mean": (0.0,), "std": (1.0,)},
    "raw": {"color": "RGB", "scale": 1.0, "mean": (0.0,), "std": (1.0,)},
}
"""Preprocessing conventions by name (``export --preset``): ``torch`` ImageNet mean/std on
[0, 1] RGB (torchvision, timm; the default); ``caffe`` BGR with the ImageNet channel means
subtracted from 0–255 pixels (Keras VGG16/ResNet50 ``preprocess_input``); ``tf`` [−1, 1]
(Keras MobileNet/EfficientNet-V1-style ``x / 127.5 − 1``); ``unit`` [0, 1]; ``raw`` 0–255 pixels
as they are (a model that normalises inside its graph, or takes uint8)."""
INPUT_DTYPES = ("float32", "uint8")


def _known(cls, d: dict) -> dict:
    """The entries of ``d`` that are fields of ``cls`` (newer exporters may add keys)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class InputSpec:
    """How images become the model input: (pixel·scale − mean) / std, in ``color`` order.

    ``height``/``width`` are None while an exporter has not fixed a dynamic size; the runtime
    refuses such a model (``Contract.from_metadata``)."""

    name: str
    layout: Layout
    height: int | None
    width: int | None
    channels: int = 3
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dtype: str = "float32"
    """The input's element type: float32, or uint8 (pixels fed as they are; scale 1, mean 0,
    std 1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", layout_of(self.layout))
        if self.dtype not in INPUT_DTYPES:
            raise ContractError(f"input dtype {self.dtype!r}: this onnxcam feeds float32 or uint8")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def size(self) -> tuple[int | None, int | None]:
        """(height, width)."""
        return (self.height, self.width)

    def shape(self, batch: int) -> tuple:
        """The input tensor's shape for ``batch`` images."""
        return self.layout.shape(batch, self.channels, self.height, self.width)

    def feed(self, x: np.ndarray) -> np.ndarray:
        """A float input batch as the model takes it (uint8: rounded and clipped to 0–255)."""
        if self.dtype == "uint8":
            return np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return x.astype(np.float32, copy=False)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "layout": str(self.layout),
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "dtype": self.dtype,
        }

    @classmethod
    def from_json(cls, d: dict) -> InputSpec:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class TokenGrid:
    """How a token target becomes a map: the target tensor is ``[B, prefix + rows·cols, C]``
    (a transformer's tokens); its activations and gradients are published as its patch tokens
    laid out on their grid, ``[B, rows, cols, C]`` (NHWC): the ``prefix`` tokens (class,
    distillation, register tokens) are dropped and the rest read row-major. The same
    convention as pytorch-grad-cam's ``vit_reshape_transform``, computed in the graph."""

    prefix: int
    rows: int
    cols: int

    def to_map(self, tokens: np.ndarray) -> np.ndarray:
        """``[B, prefix + rows·cols, C]`` → ``[B, rows, cols, C]`` (the graph's computation)."""
        return tokens[:, self.prefix :].reshape(len(tokens), self.rows, self.cols, -1)

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "rows": self.rows, "cols": self.cols}

    @classmethod
    def from_json(cls, d: dict) -> TokenGrid:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class GradientWindow:
    """A detector's head input whose gradient rows are local (``export/window.py``): a
    detection row's gradient there is zero unless the row's anchor is one of this map's
    (``first`` … ``first + h·w − 1``, row-major), and then zero outside the
    (2·``radius`` + 1)² positions centred on it. A property of the head (its class branch
    mixes positions within ``radius`` only), so it holds for every seed row that weighs one
    anchor: the graph's own detections, a ``Detection`` target; not for a seed spread over
    anchors."""

    first: int
    radius: int
    output: str = ""
    """The mode-3 output holding the windows (``onnxcam_gradient_window_k``)."""

    @property
    def size(self) -> int:
        """2·radius + 1: the window's side."""
        return 2 * self.radius + 1

    def position(self, anchor: int, height: int, width: int) -> tuple[int, int] | None:
        """(row, column) of ``anchor`` on this ``height`` × ``width`` map, or None when the
        anchor is another map's (its gradient here is zero)."""
        a = anchor - self.first
        return divmod(a, width) if 0 <= a < height * width else None

    def to_json(self) -> dict:
        return {"first": self.first, "radius": self.radius, "output": self.output}

    @classmethod
    def from_json(cls, d: dict) -> GradientWindow:
        return cls(**_known(cls, d))


@dataclass(eq=False)
class TargetLayer:
    """One target layer: the tensor explained and the contract names that expose it.

    The exporter fills it pass by pass (``export/passes.py``); the runtime reads it back from
    ``onnxcam.targets``. ``heatmaps`` maps a method to its in-graph heatmap output."""

    index: int
    name: str
    """What the user asked for (ONNX tensor/node name, or torch module name)."""
    tensor: str
    """The graph tensor explained (for a token layer: the token tensor, see ``tokens``)."""
    layout: Layout
    """The layout of the activation and gradient outputs."""
    shape: Sequence
    """Their shape (ints, or dim names where dynamic): a list while exporting, a tuple when
    read."""
    producer: str = ""
    activation: str = ""
    gradient: str = ""
    cam_weight: str | None = None
    head_input: str | None = None
    head_output: str | None = None
    head_note: str | None = None
    """Why the layer has no head-only path (when it has none)."""
    head_gradient: str | None = None
    """Its head-only gradient output (``HEAD_GRADIENT``, mode 2; ``export --head-gradients``),
    None without it."""
    head_linear: bool = False
    """The head (target → logits) is piecewise linear in the target (ReLU, max/average
    pooling, convolutions, BatchNorm, Linear …): its Hessian is 0 almost everywhere, so
    ShapleyCAM's H·A is 0 (what autograd gives) and ShapleyCAM is Grad-CAM."""
    note: str | None = None
    heatmaps: dict[str, str] = field(default_factory=dict)
    heatmap_size: str | None = None
    """'input' (model-input resolution) or 'feature'."""
    gradient_pooled: bool = False
    """The gradient is the same at every position (the layer feeds a global average pool):
    the runtime then uses its first position only."""
    tokens: TokenGrid | None = None
    """For a token layer (``tensor`` is ``[B, P + N, C]``): how its patch tokens were laid out
    on the image grid to make the NHWC activation and gradient outputs; None for a map."""
    window: GradientWindow | None = None
    """A detector's head input whose detection rows have local gradients (``GradientWindow``)."""
    pixels: bool = False
    """The model input itself (``export --input-gradient``): ``tensor`` is the image input (or
    the float tensor its cast makes), the activation output the input, the gradient output
    ∂score/∂input — what the pixel-space methods read (``methods.PIXEL``)."""
    rules: dict[str, str] = field(default_factory=dict)
    """The pixel target's gradients under other ReLU rules (``RULE_SETS``): rule → output."""
    fullgrad: str | None = None
    """The pixel target's FullGrad bias map output (``FULLGRAD_BIAS_OUTPUT``; ``export
    --fullgrad``), None without it."""
    fullgrad_layers: int = 0
    """How many biased layers (Conv, BatchNormalization) its bias map sums (0 without it)."""
    reciprocam: str | None = None
    """Its ReciproCAM map output (``RECIPROCAM_OUTPUT``, mode 4; ``export --reciprocam``), None
    without it."""
    reciprocam_gap: bool = False
    """The map is computed past the global average pool that starts the head (exact)."""

    _JSON_KEYS = {"head_output": "head_logits"}  # noqa: RUF012 (a class constant)
    """Field → JSON key where they differ (the key is the name graphs have carried since v2)."""
    _OMIT_EMPTY = (
        "note", "head_note", "tokens", "window", "pixels", "rules", "fullgrad", "fullgrad_layers",
        "reciprocam", "reciprocam_gap", "head_gradient", "head_linear",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.layout = layout_of(self.layout)
        self.activation = self.activation or activation_name(self.index)
        self.gradient = self.gradient or gradient_name(self.index)

    @property
    def spatial(self) -> tuple:
        """(h, w) of the layer (ints, or None where dynamic)."""
        return self.layout.spatial(self.shape)

    @property
    def channels(self):
        return self.layout.channels(self.shape)

    def to_json(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self._OMIT_EMPTY and not v:
                continue
            if isinstance(v, (TokenGrid, GradientWindow)):
                v = v.to_json()
            d[self._JSON_KEYS.get(f.name, f.name)] = (
                list(v) if isinstance(v, tuple) else (str(v) if f.name == "layout" else v)
            )
        return d

    @classmethod
    def from_json(cls, d: dict) -> TargetLayer:
        back = {v: k for k, v in cls._JSON_KEYS.items()}
        d = {back.get(k, k): v for k, v in d.items()}
        d["heatmaps"] = d.get("heatmaps") or {}
        d["gradient_pooled"] = bool(d.get("gradient_pooled", False))
        d["pixels"] = bool(d.get("pixels", False))
        d["head_linear"] = bool(d.get("head_linear", False))
        d["rules"] = d.get("rules") or {}
        d["shape"] = tuple(d["shape"])
        if d.get("tokens"):
            d["tokens"] = TokenGrid.from_json(d["tokens"])
        if d.get("window"):
            d["window"] = GradientWindow.from_json(d["window"])
        return cls(**_known(cls, d))


TASKS = ("classify", "detect", "segment")
DETECT_FORMATS = ("yolov8", "yolov5", "anchors")
"""Detector output layouts: ``yolov8`` ``[B, 4 + K, N]`` (box xywh rows, then K class
scores: YOLOv8/11), ``yolov5`` ``[B, N, 5 + K]`` (xywh, objectness, K class scores) and
``anchors`` ``[B, N, 4 + K]`` (xywh, K class scores: SSD-style); boxes in input pixels."""


@dataclass(frozen=True)
class DetectSpec:
    """Where a detector's boxes and scores are in its output."""

    output: str
    """The model output holding boxes and scores."""
    format: str
    """One of ``DETECT_FORMATS``."""
    num_classes: int
    box: str = "xywh"
    """Box encoding: centre x, centre y, width, height (input pixels)."""

    def __post_init__(self) -> None:
        if self.format not in DETECT_FORMATS:
            raise ContractError(f"unknown detection format {self.format!r}: {DETECT_FORMATS}")

    @property
    def objectness(self) -> bool:
        return self.format == "yolov5"

    @property
    def anchors_first(self) -> bool:
        """Anchors on axis 1 (``[B, N, C]``), else on axis 2 (``[B, C, N]``)."""
        return self.format != "yolov8"

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict) -> DetectSpec:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class ScoreSpec:
    """Which tensor is differentiated (the logits), the model output it feeds, and how the
    model turns logits into probabilities (``activation``: softmax | log_softmax | sigmoid |
    None)."""

    logits: str
    output: str
    activation: str | None
    num_classes: int | None
    logits_output: str = ""
    """The session output holding the logits: the model's output, or ``onnxcam_logits``."""
    binary: bool = False
    """The model outputs one logit z; the contract explains it as two classes (logits
    ``[−z, z]`` in ``onnxcam_logits``, class 0 the negative, probabilities by sigmoid)."""
    class_input: str = CLASS_INPUT
    class_output: str = CLASS_OUTPUT
    score_output: str = SCORE_OUTPUT
    task: str = "classify"
    """classify (logits ``[B, K]``), segment (``[B, K, H, W]``) or detect (class logits
    ``[B, K, N]`` over N anchors; ``detect`` says where the boxes are)."""
    seed_input: str = SEED_INPUT
    shape: tuple | None = None
    """The logits' sizes past the batch axis (the seed's row shape): ``[K]``, ``[K, H, W]``,
    ``[K, N]``."""
    seed_rows: bool = False
    """With one image, the seed may have any number of rows (a detector's detections: the
    forward runs once, the backward once per row); the exporter checked that the gradients of
    several rows on one image equal those of separate runs."""
    detect: DetectSpec | None = None
    gradients: str = "total"
    """What the gradient outputs of several targets are: ``total`` derivatives (every path
    from a target to the score, as autograd gives for a hooked tensor), or ``direct`` ones —
    each target's gradient with the other targets held fixed: a detector's default, where each
    scale's head reads its own input (a detection's score depends on its own scale's input
    only, so there the two agree; ``total`` adds, at the finer scales, the neck paths into a
    coarser scale's detection — ultralytics' LayerCAM convention — at several times the cost
    per detection)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ContractError(f"unknown task {self.task!r}; this onnxcam reads {TASKS}")
        if isinstance(self.detect, dict):
            object.__setattr__(self, "detect", DetectSpec.from_json(self.detect))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        if not self.logits_output:
            logits_output = LOGITS_OUTPUT if self.activation is not None else self.output
            object.__setattr__(self, "logits_output", logits_output)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["detect"] = self.detect.to_json() if self.detect else None
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> ScoreSpec:
        d = dict(d)
        d.setdefault("logits_output", d.get("output"))
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class ClassifierSpec:
    """The classifier weight of a GAP → Linear head after target ``target`` (enables CAM)."""

    weight: str
    bias: str | None
    weight_layout: str
    """classes_first (W: [K, C]) | channels_first (W: [C, K])"""
    alpha: float
    target: int

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict) -> ClassifierSpec:
        return cls(**_known(cls, d))


@dataclass
class Contract:
    """All of a graph's onnxcam metadata; ``to_metadata``/``from_metadata`` are the only places
    the ``metadata_props`` are written and read."""

    targets: list[TargetLayer]
    input: InputSpec
    score: ScoreSpec
    labels: list[str] | None = None
    classifier: ClassifierSpec | None = None
    exporter: dict = field(default_factory=dict)
    version: int = VERSION

    def to_metadata(self) -> dict[str, str]:
        """``metadata_props`` entries (key → JSON text)."""
        meta = {
            META_VERSION: str(self.version),
            META_EXPORTER: json.dumps(self.exporter),
            META_TARGETS: json.dumps([t.to_json() for t in self.targets]),
            META_INPUT: json.dumps(self.input.to_json()),
            META_SCORE: json.dumps(self.score.to_json()),
        }
        if self.labels is not None:
            meta[META_LABELS] = json.dumps(list(self.labels))
        if self.classifier is not None:
            meta[META_CLASSIFIER] = json.dumps(self.classifier.to_json())
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> Contract:
        """Read a graph's ``custom_metadata_map``; a missing, newer or broken contract is a
        ``ContractError`` that says what to do."""
        version = meta.get(META_VERSION)
        if version is None:
            raise ContractError("not an onnxcam model (no onnxcam.contract_version metadata)")
        if int(version) != VERSION:
            raise ContractError(
                f"the model uses graph contract v{version}; this onnxcam reads v{VERSION} "
                "(re-export it with this version's `onnxcam export`)"
            )
        try:
            labels = json.loads(meta[META_LABELS]) if META_LABELS in meta else None
            classifier = (
                ClassifierSpec.from_json(json.loads(meta[META_CLASSIFIER]))
                if META_CLASSIFIER in meta
                else None
            )
            return cls(
                targets=[TargetLayer.from_json(t) for t in json.loads(meta[META_TARGETS])],
                input=InputSpec.from_json(json.loads(meta[META_INPUT])),
                score=ScoreSpec.from_json(json.loads(meta[META_SCORE])),
                labels=labels,
                classifier=classifier,
                exporter=json.loads(meta.get(META_EXPORTER, "{}")),
                version=int(version),
            )
        except ContractError:
            raise
        except (KeyError, ValueError, TypeError) as e:
            raise ContractError(f"broken onnxcam metadata: {e}") from None
