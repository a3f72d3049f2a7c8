"""What an explain request returns: predictions, CAM maps, explanations and failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import postprocess
from .errors import MethodError


@dataclass(frozen=True)
class Prediction:
    """A class with its label, probability and pre-softmax score."""

    index: int
    label: str
    probability: float
    logit: float


@dataclass
class CamMap:
    """One method's map for one image: raw, and normalised at three resolutions."""

    method: str
    layer: str
    raw: np.ndarray
    """Feature resolution, before ReLU and normalisation."""
    feature: np.ndarray
    """Feature resolution, rectified (unless relu=False) and min-max normalised to [0, 1]."""
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    seconds: float = 0.0
    """Host time this method took per image (inference not included)."""
    stats: dict[str, float] = field(default_factory=dict)
    """The method's own checks for this image (Integrated Gradients: ``completeness_error``,
    Σ attributions − (S(x) − S(baseline)), and ``completeness_relative``)."""

    @cached_property
    def input(self) -> np.ndarray:
        """The map at the model-input resolution (resized, then min-max normalised again)."""
        if self.feature.shape == tuple(self.input_size):  # e.g. an in-graph heatmap
            return self.feature  # already normalised: min-max would give it back unchanged
        return postprocess.resize_normalized(self.feature, *self.input_size)

    @cached_property
    def original(self) -> np.ndarray:
        """The map at the original image resolution (resized, then min-max normalised again)."""
        if self.feature.shape == tuple(self.original_size):
            return self.feature
        return postprocess.resize_normalized(self.feature, *self.original_size)


@dataclass
class Explanation:
    """One image explained for one class."""

    source: str
    image: np.ndarray | None
    """The original image, RGB float32 in [0, 255] (None when explained from a tensor)."""
    predictions: list[Prediction]
    """The model's top-k predictions."""
    target: Prediction
    """The class that was explained."""
    maps: dict[str, CamMap] = field(default_factory=dict)
    inference_seconds: float = 0.0
    """This image's share of the session.run time(s)."""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    """Raw graph outputs of this image (activations, gradients, CAM weights) when asked for
    with ``keep_tensors=True``."""

    def overlay(
        self,
        method: str,
        alpha: float = 0.5,
        colormap: str = "jet",
        threshold: float | None = None,
    ) -> np.ndarray:
        """The map of ``method`` blended over the original image (RGB uint8)."""
        if method not in self.maps:
            raise MethodError(f"no map for {method!r}; have {', '.join(self.maps)}")
        if self.image is None:
            raise MethodError("no original image to overlay (explained from a tensor)")
        return postprocess.overlay(
            self.image, self.maps[method].original, alpha, colormap, threshold
        )


@dataclass(frozen=True)
class Failure:
    """An input that could not be explained, and why (one line)."""

    source: str
    error: str
    target: bool = False
    """The image was read but its target cannot be explained (``explain`` raises a
    ``MethodError`` for it, an ``ImageError`` otherwise)."""
