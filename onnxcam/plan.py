"""The plan of an explain request, computed once from (methods, layers, options, model) before
any image runs, and pure: no session, so it is unit-tested without onnxruntime.

It holds every decision a batch would otherwise re-derive: the outputs the run fetches and its
mode (``needs`` of the host methods through ``registry.NEEDS``), which maps the graph already
computed (an ``--heatmaps`` export), and what each method is called with — its layer's
``Terms`` (``LayerInputs`` says where their arrays are) or ``PerturbationInputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import contract
from .contract import TargetLayer
from .errors import MethodError
from .fusion import check_fusion
from .methods import resolve_methods
from .model import ModelInfo
from .perturbation import PerturbationOptions
from .registry import METHODS, NEEDS, MethodSpec, Need

LayerChoice = int | str | Sequence[int | str] | None
"""Target layers by index or name; None → the first; 'all' → every exported layer."""

LAYER_OUTPUTS = ("activation", "gradient", "cam_weight", "fullgrad", "reciprocam")
"""The per-layer graph outputs a method may read (``TargetLayer`` fields), in fetch order."""
IG_BASELINES = ("black", "blur", "uniform")


@dataclass(frozen=True)
class ExplainOptions:
    """The options of an explain request, with their defaults (set here and nowhere else)."""

    topk: int = 1
    """Explain each of the top-k classes (the class input set for ranks 2..k)."""
    layers: LayerChoice = None
    fuse: bool = False
    """Fuse the layers' maps into one at input resolution (by ``fusion``)."""
    fusion: str = "mean"
    """How ``fuse`` combines the layers' maps: ``mean`` (pytorch-grad-cam), ``max`` (torchcam,
    ultralytics) or ``product`` (pytorch-grad-cam's RefineCAM); see ``onnxcam.fusion``."""
    aug_smooth: bool = False
    """Test-time augmentation (pytorch-grad-cam's ``aug_smooth``): each map is the mean of the
    maps of the input × (0.9, 1, 1.1), each also flipped horizontally, flipped back — 6× the
    runs, the 5 extra inputs in one batched run; the explained class is the plain input's."""
    relu: bool = True
    batch_size: int = 8
    """Images per ``session.run``."""
    smooth_samples: int = 8
    """Noisy copies per image for Smooth Grad-CAM++ and SmoothGrad."""
    smooth_noise: float = 0.15
    """Their noise σ, as a fraction of each image's value range."""
    seed: int = 0
    ig_steps: int = 32
    """Integrated Gradients' quadrature points (Gauss–Legendre, captum's default method)."""
    ig_baseline: str = "black"
    """Integrated Gradients' baseline: ``black`` (pixels 0), ``blur`` (the input blurred,
    Gaussian σ = 1/20 of its width) or ``uniform`` (uniform noise over the pixel range, seeded
    by the image)."""
    perturbation: PerturbationOptions | None = None
    """Knobs of the perturbation methods (None: the defaults, seeded with ``seed``)."""
    keep_tensors: bool = False
    """Return each image's raw activations, gradients and CAM weights (``Explanation.tensors``)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise MethodError("batch_size must be at least 1")
        if self.topk < 1 or self.smooth_samples < 1 or self.ig_steps < 1:
            raise MethodError("topk, smooth_samples and ig_steps must be at least 1")
        check_fusion(self.fusion)
        if self.ig_baseline not in IG_BASELINES:
            raise MethodError(
                f"unknown ig_baseline {self.ig_baseline!r}; choose {', '.join(IG_BASELINES)}"
            )


@dataclass(frozen=True)
class LayerInputs:
    """Where one target layer's method inputs are in a run's outputs (None: not fetched)."""

    layer: TargetLayer
    activation: str | None = None
    gradient: str | None = None
    cam_weight: str | None = None
    fullgrad: str | None = None
    """FullGrad's bias map (the pixel target)."""
    reciprocam: str | None = None
    """ReciproCAM's in-graph map (``export --reciprocam``)."""
    pooled: bool = False
    """The gradient is the same at every position: methods get it per channel [B, C, 1, 1]."""
    rules: tuple[tuple[str, str], ...] = ()
    """(rule, output) of the input gradients under other ReLU rules it reads (``Terms.R``)."""


@dataclass(frozen=True)
class MethodCall:
    """One requested method: where its map comes from and what it is called with."""

    name: str
    spec: MethodSpec
    graph: tuple[str, ...] = ()
    """The in-graph heatmap output of each target layer; empty: computed on the host."""
    scored: bool = False
    """Called with ``PerturbationInputs`` (else with its layer's ``Terms``)."""
    layers: tuple[int, ...] = ()
    """The ``Plan.targets`` it runs at: the chosen feature layers, or the pixel target."""


@dataclass(frozen=True)
class Plan:
    """What every batch of one request fetches, runs and computes."""

    options: ExplainOptions
    targets: tuple[TargetLayer, ...]
    calls: tuple[MethodCall, ...]
    fetch: tuple[str, ...]
    """Outputs of the main run (no repeats), the prediction outputs first."""
    predicting: int
    """How many of ``fetch`` are prediction outputs (the reruns for ranks 2..k skip them)."""
    mode: int
    """``contract.MODE_EXPLAIN``; ``MODE_FORWARD`` when no gradient is needed;
    ``MODE_RECIPROCAM`` when ReciproCAM's maps are read and no gradient is (``_mode``)."""
    inputs: tuple[LayerInputs, ...]
    """Per target layer: where its ``Terms`` arrays are."""
    noisy: tuple[str, ...] = ()
    """Gradient outputs of the noisy copies (Smooth Grad-CAM++, SmoothGrad); empty: no such
    run."""
    path: str | None = None
    """The input gradient output read along a baseline → input path (Integrated Gradients);
    None: no such run."""
    keep: tuple[str, ...] = ()
    """Outputs returned per image in ``Explanation.tensors`` (``keep_tensors``)."""
    perturbation: PerturbationOptions = field(default_factory=PerturbationOptions)
    """The perturbation methods' options (``options.perturbation`` or the seeded defaults)."""

    @property
    def rerun_fetch(self) -> tuple[str, ...]:
        """What the runs for ranks 2..k fetch (the predictions come from the first run)."""
        return self.fetch[self.predicting :]


def select_layers(targets: Sequence[TargetLayer], which: LayerChoice) -> list[TargetLayer]:
    """Target layers by index or name; None → the first; 'all' → every exported layer."""
    if which is None:
        return [targets[0]]
    if which == "all":
        return list(targets)
    if isinstance(which, str) and "," in which:  # --layer layer4,layer3
        which = [int(w) if w.strip().isdigit() else w.strip() for w in which.split(",")]
    out = []
    for w in [which] if isinstance(which, (int, str)) else which:
        hit = [t for t in targets if w in (t.index, t.name, t.tensor, str(t.index))]
        if not hit:
            names = ", ".join(f"{t.index}:{t.name}" for t in targets)
            raise MethodError(f"no exported layer {w!r}; the model has {names}")
        out.append(hit[0])
    return out


def graph_heatmaps(
    method: str, targets: Sequence[TargetLayer], options: ExplainOptions
) -> tuple[str, ...]:
    """In-graph heatmap outputs (one per target) that stand in for ``method``, else ().

    They are finished maps (rectified, at input size), so only when ReLU is on and the layers'
    maps are not fused."""
    if not options.relu or (options.fuse and len(targets) > 1):
        return ()
    names = [t.heatmaps.get(method) for t in targets if t.heatmap_size == "input"]
    return tuple(names) if len(names) == len(targets) and all(names) else ()


def make_plan(
    methods: str | Sequence[str],
    options: ExplainOptions,
    info: ModelInfo,
    predicting: Sequence[str] = (),
) -> Plan:
    """The plan of one request. ``predicting``: the outputs predictions are read from (the
    logits, plus the graph's top-k when it has them; default the logits alone).

    Raises ``MethodError`` for an unknown method or layer, or a method a layer cannot serve
    (CAM without a GAP → Linear head).
    """
    names = resolve_methods(methods, info.has_cam_weights)
    features = [t for t in info.targets if not t.pixels]
    pixel = next((t for t in info.targets if t.pixels), None)
    at_pixels = [m for m in names if METHODS[m].pixels]
    if at_pixels and pixel is None:  # the flag that adds what the method needs most
        need = [NEEDS[n] for n in METHODS[at_pixels[0]].needs if NEEDS[n].pixels][-1]
        raise MethodError(_missing(need, at_pixels[0], ""))
    chosen = select_layers(features, options.layers) if len(at_pixels) < len(names) else []
    targets = tuple(chosen + ([pixel] if at_pixels else []))
    feature_ids = tuple(range(len(chosen)))
    calls = tuple(
        MethodCall(
            m,
            METHODS[m],
            () if METHODS[m].pixels else graph_heatmaps(m, chosen, options),
            METHODS[m].scored,
            (len(chosen),) if METHODS[m].pixels else feature_ids,
        )
        for m in names
    )
    host = [c for c in calls if not c.graph]
    from_graph = [h for c in calls for h in c.graph]
    per_target: list[list[tuple[str, Need]]] = [[] for _ in targets]
    for c in host:
        for n in c.spec.needs:
            for k in c.layers:
                per_target[k].append((c.name, NEEDS[n]))
    if options.keep_tensors:  # the raw tensors, even when every map is in the graph
        for found in per_target:
            found += [("", NEEDS["activations"]), ("", NEEDS["gradients"])]
    inputs = tuple(
        _layer_inputs(t, found, pixel) for t, found in zip(targets, per_target, strict=True)
    )
    kept = (
        [n for li in inputs for n in (li.activation, li.gradient, li.layer.cam_weight) if n]
        if options.keep_tensors
        else []
    )
    predicting = tuple(predicting) or (info.logits_output,)
    fetch = [
        *predicting,
        contract.CLASS_OUTPUT,
        *(getattr(li, f) for li in inputs for f in LAYER_OUTPUTS if getattr(li, f)),
        *(name for li in inputs for _, name in li.rules),
        *from_graph,  # the heatmaps live in the gradient branch (mode 0)
        *kept,
    ]
    needs = [n for found in per_target for _, n in found]
    gradients = bool(from_graph) or any(n.gradients for n in needs)
    noisy = [
        t.gradient
        for t, found in zip(targets, per_target, strict=True)
        if any(n.noisy for _, n in found)
    ]
    return Plan(
        options=options,
        targets=targets,
        calls=calls,
        fetch=tuple(dict.fromkeys(fetch)),
        predicting=len(predicting),
        mode=_mode(gradients, needs),
        inputs=inputs,
        noisy=tuple(noisy),
        path=pixel.gradient if any(n.path for n in needs) else None,
        keep=tuple(kept),
        perturbation=options.perturbation or PerturbationOptions(seed=options.seed),
    )


_MODES = {"reciprocam": contract.MODE_RECIPROCAM}
"""``Need.mode`` names → graph modes."""


def _mode(gradients: bool, needs: list[Need]) -> int:
    """The graph mode of the plan's run: explain (0) when anything needs gradients, else the
    one mode every output read comes from (ReciproCAM's maps: 4), else forward only (1)."""
    if gradients:
        return contract.MODE_EXPLAIN
    modes = {_MODES[n.mode] for n in needs if n.mode}
    if len(modes) > 1:  # no such needs today; mode 0 returns every output
        return contract.MODE_EXPLAIN
    return modes.pop() if modes else contract.MODE_FORWARD


def _missing(need: Need, method: str, layer: str) -> str:
    return need.missing.format(layer=layer, method=method, rule=need.rule)


def _layer_inputs(
    t: TargetLayer, found: list[tuple[str, Need]], pixel: TargetLayer | None
) -> LayerInputs:
    """Where ``t``'s arrays are, for the (method, need) pairs its methods read."""
    names = {}
    reads = {n.output for _, n in found}
    for f in LAYER_OUTPUTS:
        if f in reads:
            name = getattr(t, f)
            if not name:
                method, need = next((m, n) for m, n in found if n.output == f)
                raise MethodError(_missing(need, method, t.name))
            names[f] = name
    rules = {}
    for method, need in found:
        if need.rule:  # the input's gradient under that rule (a feature layer reads the input's)
            owner = t if t.pixels else pixel
            if owner is None or need.rule not in owner.rules:
                raise MethodError(_missing(need, method, t.name))
            rules[need.rule] = owner.rules[need.rule]
    return LayerInputs(t, **names, pooled=t.gradient_pooled, rules=tuple(rules.items()))
