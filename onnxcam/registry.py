"""The method registry: ``METHODS`` (name → ``MethodSpec``), the ``method`` decorator that fills
it, and the vocabulary of ``MethodSpec.needs`` as data (``NEEDS``).

Both method families register here on import — the host family in ``onnxcam.methods``, the
perturbation family in ``onnxcam.perturbation`` — and this module imports neither. Everything
the engine does for a method follows from its spec: what each entry of ``needs`` fetches
(``NEEDS``), whether ``all`` includes it (``in_all``), where its map lives (``map_size``); the
engine never branches on a family or a method name. ``onnxcam.methods.METHODS`` (and
``onnxcam.METHODS``) is this registry with every family registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MethodError


@dataclass(frozen=True)
class Need:
    """What one entry of ``MethodSpec.needs`` asks of a run, and how the method receives it."""

    output: str | None = None
    """The per-layer graph output it reads: a ``TargetLayer`` field (``activation``,
    ``gradient``, ``cam_weight``, ``fullgrad``), or None."""
    term: str | None = None
    """The ``Terms`` field it arrives in (``A``, ``G``, ``w``, ``Gs``); None for a need that is
    met by ``PerturbationInputs``."""
    gradients: bool = False
    """The run must compute gradients (graph mode 0, not the forward-only mode 1)."""
    noisy: bool = False
    """A second run on noisy copies of the inputs (their gradients)."""
    scored: bool = False
    """The method scores perturbed inputs: it gets ``PerturbationInputs`` instead of ``Terms``."""
    missing: str = ""
    """The error when a target layer lacks ``output`` (``{layer}``: the layer's name)."""
    pixels: bool = False
    """Read at the model input (the pixel target, ``export --input-gradient``): the method runs
    there, not at the feature layers."""
    rule: str = ""
    """The input gradient under this ReLU rule (``contract.RULE_SETS``), into ``Terms.R``."""
    path: bool = False
    """A second run along a path from a baseline to the input (Integrated Gradients)."""
    mode: str = ""
    """The graph mode that returns ``output`` without the gradients, by name (``reciprocam``:
    ``contract.MODE_RECIPROCAM``; the plan maps it); "" for every mode, or mode 0 when
    ``gradients``. Mode 0 returns it too."""


_NO_PIXELS = (
    "{method} explains pixels: it needs the input gradient; export the model with --input-gradient"
)
_NO_RULE = "{method} needs the {rule} input gradient; export the model with --rules {rule}"
_NO_FULLGRAD = "{method} needs the bias gradients of every layer; export the model with --fullgrad"
_NO_RECIPROCAM = (
    "{method} is computed in the graph; export the model with --reciprocam "
    "(layer {layer!r} has no onnxcam_reciprocam output)"
)

NEEDS: dict[str, Need] = {
    "activations": Need("activation", "A"),
    "gradients": Need("gradient", "G", gradients=True),
    "cam_weights": Need(
        "cam_weight",
        "w",
        missing="CAM needs a GAP → Linear head after layer {layer!r}; use gradcam",
    ),
    "noisy_gradients": Need(None, "Gs", noisy=True),
    "perturbation": Need("activation", scored=True),
    "perturbation_gradients": Need("gradient", gradients=True, scored=True),
    "input": Need("activation", "A", pixels=True, missing=_NO_PIXELS),
    "input_gradients": Need("gradient", "G", gradients=True, pixels=True, missing=_NO_PIXELS),
    "noisy_input_gradients": Need(None, "Gs", noisy=True, pixels=True, missing=_NO_PIXELS),
    "path_gradients": Need(None, "Gp", path=True, pixels=True, missing=_NO_PIXELS),
    "guided_gradients": Need(None, "R", True, pixels=True, rule="guided", missing=_NO_RULE),
    "deconvnet_gradients": Need(None, "R", True, pixels=True, rule="deconvnet", missing=_NO_RULE),
    "guided_input": Need(None, "R", gradients=True, rule="guided", missing=_NO_RULE),
    "fullgrad_bias": Need("fullgrad", "F", gradients=True, pixels=True, missing=_NO_FULLGRAD),
    "reciprocam_maps": Need("reciprocam", "M", mode="reciprocam", missing=_NO_RECIPROCAM),
}
"""Every name a method may list in ``needs``: the target activations ``A``, the gradients of
the explained score ``G = dScore/dA``, the explained class's classifier row ``w``, gradients of
noisy copies of the input ``Gs``, and ``perturbation`` (model inputs, activations, a scorer);
at the model input (the pixel target): the input ``A`` and its gradient ``G``, noisy copies'
``Gs``, gradients along a path from a baseline ``Gp``, and the gradients under other ReLU rules
``R`` (also for a feature layer's method: ``guided_input``, Guided Grad-CAM), and FullGrad's
bias map ``F`` [B, H, W]; ReciproCAM's in-graph maps ``M`` [B, h, w] (mode 4, or mode 0)."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, what it needs, and how the engine treats it."""

    fn: Callable[..., np.ndarray]
    """Callable on the arrays of ``needs`` in order (``gradcam(A, G)``), or on a
    ``PerturbationInputs`` for a scored method."""
    needs: tuple[str, ...]
    """Keys of ``NEEDS``; the engine fetches exactly what the requested methods need."""
    family: str
    """gradient | activation | classifier | sampling | perturbation | pixel (for people: docs and
    tests group methods by it; the engine never reads it). A perturbation method scores
    perturbed inputs on the host, or is computed in the graph (ReciproCAM)."""
    paper: str
    formula: Callable[[Any], np.ndarray] | None = None
    """What the engine calls: with the layer's shared ``Terms`` (host methods) or
    ``PerturbationInputs`` (scored methods); None means ``fn``."""
    in_all: bool = True
    """Whether ``all`` includes it (perturbation methods are opt-in: many forward passes)."""
    map_size: str = "feature"
    """Where its raw map lives: ``feature`` (the target layer's resolution) or ``input``."""
    stats: Callable[[Any, np.ndarray], dict[str, np.ndarray]] | None = None
    """Checks reported with its maps (``CamMap.stats``): f(terms, raw maps) → name → [B]
    (Integrated Gradients' completeness error)."""
    display: str = "cam"
    """How its map is shown: ``cam`` (ReLU, then min-max to [0, 1]) or ``attribution`` (a
    signed pixel attribution: its absolute value over the 98th percentile of the cumulative
    sum, clipped to [0, 1]: captum's ``visualize_image_attr`` default)."""
    fusion: str | None = None
    """A multi-layer method: its maps of several target layers are always fused by this rule
    (``onnxcam.fusion``: RefineCAM's ``product``); None: fused only when asked (``fuse``)."""

    scored: bool = field(init=False)
    """It gets ``PerturbationInputs`` (it scores perturbed inputs; from ``needs``)."""

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"unknown needs {unknown}; known: {', '.join(NEEDS)}")
        if self.formula is None:
            object.__setattr__(self, "formula", self.fn)
        object.__setattr__(self, "scored", any(NEEDS[n].scored for n in self.needs))

    @property
    def pixels(self) -> bool:
        """It explains pixels: it runs at the model input (the pixel target)."""
        return any(NEEDS[n].pixels for n in self.needs)


METHODS: dict[str, MethodSpec] = {}
"""name → spec. Listing order (``all``, the CLI's choices): the methods ``all`` runs, then the
opt-in ones (pixel-space, then perturbation), each in registration order — whichever family
module is imported first (``_listing_key``)."""


def _listing_key(item: tuple[str, MethodSpec]) -> tuple[bool, bool]:
    """``METHODS``' order: the methods ``all`` runs, then the opt-in pixel-space ones, then
    the perturbation ones (each in registration order), whichever module registers first."""
    spec = item[1]
    return (not spec.in_all, spec.scored)


def method(
    name: str,
    needs: tuple[str, ...],
    family: str,
    paper: str,
    *,
    in_all: bool = True,
    map_size: str = "feature",
    formula: Callable[[Any], np.ndarray] | None = None,
    display: str = "cam",
    stats: Callable[[Any, np.ndarray], dict[str, np.ndarray]] | None = None,
    fusion: str | None = None,
):
    """Register the decorated function under ``name`` (``formula``: what the engine calls
    instead, when the decorated function is an array-level wrapper of it)."""

    def register(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        METHODS[name] = MethodSpec(
            fn, needs, family, paper, formula, in_all, map_size, stats, display, fusion
        )
        ordered = sorted(METHODS.items(), key=_listing_key)  # stable
        METHODS.clear()
        METHODS.update(ordered)
        return fn

    return register


def resolve_methods(names: str | Sequence[str], has_cam_weights: bool) -> list[str]:
    """'gradcam,layercam' | 'all' | list → registered method names (validated)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        key = n.lower()
        if key == "all":
            out += [
                m
                for m, s in METHODS.items()
                if s.in_all and (has_cam_weights or "cam_weights" not in s.needs)
            ]
            continue
        if key not in METHODS:
            raise MethodError(f"unknown method {n!r}; choose from {', '.join(METHODS)} or all")
        out.append(key)
    if not has_cam_weights and any("cam_weights" in METHODS[m].needs for m in out):
        raise MethodError(
            "CAM needs a GAP → Linear classifier head directly after the target layer, and this "
            "model's export has none (no onnxcam_cam_weight output); use gradcam instead"
        )
    return list(dict.fromkeys(out))
