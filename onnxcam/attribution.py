"""The pixel-space methods: attributions to the input pixels, from the gradient of the explained
score with respect to the model input (``export --input-gradient``), one formula each.

They run at the pixel target (``TargetLayer.pixels``): ``t.A`` is the model's input batch
``x`` [B, C, H, W] (as the model sees it, preprocessed), ``t.G`` = ∂score/∂x, ``t.Gs`` the
gradients of noisy copies [B, n, C, H, W], ``t.path`` the gradients along baseline → input
paths (``terms.PathGradients``), ``t.R[rule]`` the input gradient under another ReLU rule
(``contract.RULE_SETS``). Each returns the *signed* attribution summed over the input
channels ``[B, H, W]`` (captum's ``visualize_image_attr`` sums them the same way); the shown
map is its absolute value over the 98th percentile of the cumulative sum, clipped to [0, 1]
(``postprocess.attribution``: captum's default). Parity with captum on the same models:
``tests/test_attribution.py``.
"""

from __future__ import annotations

import numpy as np

from .terms import Terms, host_method


def _attribution(name: str, needs: tuple[str, ...], paper: str, stats=None):
    """Register a pixel-space formula on ``Terms`` (``terms.host_method``): its map at the
    input's resolution, shown as an attribution; opt-in (``all`` is the CAM methods: these
    need an ``--input-gradient`` export)."""
    return host_method(
        name, needs, "pixel", paper,
        in_all=False, map_size="input", display="attribution", stats=stats,
    )  # fmt: skip


def _channels(a: np.ndarray) -> np.ndarray:
    """Σ over the input channels: [B, C, H, W] → [B, H, W]."""
    return a.sum(axis=1, dtype=np.float32)


@_attribution("saliency", ("input_gradients",), "arXiv:1312.6034")
def saliency(t: Terms) -> np.ndarray:
    """Saliency (Simonyan et al. 2013): |∂S/∂x| (captum ``Saliency``, abs=True), summed over
    the channels (the paper takes their maximum)."""
    return _channels(np.abs(t.G))


@_attribution("gradient-input", ("input", "input_gradients"), "arXiv:1605.01713")
def gradient_input(t: Terms) -> np.ndarray:
    """Gradient × Input (Shrikumar et al. 2016): x ⊙ ∂S/∂x (captum ``InputXGradient``)."""
    return _channels(t.A * t.G)


@_attribution("smoothgrad", ("noisy_input_gradients",), "arXiv:1706.03825")
def smoothgrad(t: Terms) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): mean_n ∂S/∂x at x + N(0, σ²), n noisy copies
    (``smooth_samples``, σ = ``smooth_noise`` × the input's range; captum ``NoiseTunnel``
    ``smoothgrad`` over ``Saliency(abs=False)``)."""
    return _channels(t.Gs.mean(axis=1))


@_attribution("smoothgrad-sq", ("noisy_input_gradients",), "arXiv:1806.10758")
def smoothgrad_sq(t: Terms) -> np.ndarray:
    """SmoothGrad² (Hooker et al. 2019): mean_n (∂S/∂x)² of the noisy copies (captum
    ``smoothgrad_sq``)."""
    return _channels((t.Gs**2).mean(axis=1))


@_attribution("vargrad", ("noisy_input_gradients",), "arXiv:1810.03307")
def vargrad(t: Terms) -> np.ndarray:
    """VarGrad (Adebayo et al. 2018): var_n ∂S/∂x of the noisy copies (captum ``vargrad``)."""
    return _channels(t.Gs.var(axis=1))


def completeness(t: Terms, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Integrated Gradients' check, per image: Σ attributions − (S(x) − S(x′)), and its size
    relative to |S(x) − S(x′)|."""
    gap = t.path.score - t.path.baseline_score
    err = raw.sum(axis=(1, 2), dtype=np.float64) - gap
    return {
        "completeness_error": err,
        "completeness_relative": np.abs(err) / np.maximum(np.abs(gap), 1e-12),
    }


@_attribution("integrated-gradients", ("input", "path_gradients"), "arXiv:1703.01365", completeness)
def integrated_gradients(t: Terms) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017): (x − x′) ⊙ ∫₀¹ ∂S/∂x(x′ + α(x − x′)) dα,
    the integral by Gauss–Legendre quadrature over ``ig_steps`` points (captum's default
    method), x′ the baseline (``ig_baseline``: black, blur or uniform noise). Completeness:
    Σ attributions = S(x) − S(x′) up to the quadrature error (``completeness``)."""
    p = t.path
    integral = np.einsum("bnchw,n->bchw", p.G, p.weights.astype(np.float32))
    return _channels((t.A - p.baseline) * integral)


@_attribution("guided-backprop", ("guided_gradients",), "arXiv:1412.6806")
def guided_backprop(t: Terms) -> np.ndarray:
    """Guided Backpropagation (Springenberg et al. 2014): the input gradient with each ReLU's
    backward as [x > 0] · max(g, 0) (captum ``GuidedBackprop``; ``export --rules guided``)."""
    return _channels(t.R["guided"])


@_attribution("deconvnet", ("deconvnet_gradients",), "arXiv:1311.2901")
def deconvnet(t: Terms) -> np.ndarray:
    """Deconvnet (Zeiler & Fergus 2013): each ReLU's backward as max(g, 0) (captum
    ``Deconvolution``; ``export --rules deconvnet``)."""
    return _channels(t.R["deconvnet"])


@host_method(
    "guided-gradcam",
    ("activations", "gradients", "guided_input"),
    "pixel",
    "arXiv:1610.02391",
    in_all=False,
    map_size="input",
    display="attribution",
)
def guided_gradcam(t: Terms) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backpropagation ⊙ the layer's
    ReLU(Grad-CAM) upsampled to the input by nearest neighbour (captum ``GuidedGradCam``'s
    default), summed over the input channels."""
    guided = t.R["guided"]
    cam = np.maximum(t.weighted_sum(t.mean_g), 0)
    return _channels(guided) * _nearest(cam, guided.shape[2:])


FULLGRAD_EPS = np.float32(1e-7)
"""pytorch-grad-cam's ``scale_cam_image``: (t − min) / (1e-7 + max − min)."""


@host_method(
    "fullgrad",
    ("input", "input_gradients", "fullgrad_bias"),
    "pixel",
    "arXiv:1905.00780",
    in_all=False,
    map_size="input",
)
def fullgrad(t: Terms) -> np.ndarray:
    """FullGrad (Srinivas & Fleuret 2019): Σ_c ψ(x ⊙ ∂S/∂x)_c + Σ_layers Σ_c resize(ψ(b ⊙ ∂S/∂z))
    over the layers z = Conv(…) + b and BatchNorm outputs, ψ = |·| then min-max per image and
    channel — pytorch-grad-cam's ``FullGrad``; the bias sum is the graph's (``export
    --fullgrad``). Shown as a CAM (min-max of the sum, as its final ``scale_cam_image``)."""
    a = np.abs(t.A * t.G)
    a -= a.min(axis=(2, 3), keepdims=True)
    a /= FULLGRAD_EPS + a.max(axis=(2, 3), keepdims=True)
    return _channels(a) + t.F


def _nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, h, w] → [B, H, W] by nearest neighbour, as torch's ``interpolate(mode="nearest")``:
    output pixel i reads floor(i · h / H)."""
    h, w = maps.shape[1:]
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return maps[:, rows][:, :, cols]
