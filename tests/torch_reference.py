"""Reference gradients from torch autograd, and the torchvision models the tests export."""

from __future__ import annotations

import numpy as np
import torch

# (torchvision constructor, last feature block, one block earlier, input size)
TORCHVISION_CASES = {
    "resnet18": ("resnet18", "layer4", "layer3", 224),
    "resnet50": ("resnet50", "layer4", "layer3", 224),
    "vgg16": ("vgg16", "features", "features.23", 224),
    "mobilenet_v2": ("mobilenet_v2", "features.18", "features.17", 224),
    "mobilenet_v3_small": ("mobilenet_v3_small", "features.12", "features.11", 224),
    "efficientnet_b0": ("efficientnet_b0", "features.8", "features.7", 224),
    "densenet121": ("densenet121", "features", "features.denseblock4", 224),
    "convnext_tiny": ("convnext_tiny", "features.7", "features.5", 224),
    "squeezenet1_1": ("squeezenet1_1", "features", "features.10", 224),
}


def torchvision_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-init torchvision model in eval mode, with in-place activations switched off
    (``kwargs`` go to its constructor, e.g. ``num_classes``)."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    with torch.no_grad():  # random-init BN statistics make a degenerate net; give them spread
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


def forward_capturing(
    model: torch.nn.Module, x: np.ndarray, layers: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits of ``x`` (cast to the model's dtype) and each named layer's output, kept in
    the autograd graph (forward hooks)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
        for name in layers
    ]
    try:
        param = next(model.parameters())
        logits = model(torch.from_numpy(x).to(param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return logits, captured


def torch_layer_gradients(
    model: torch.nn.Module, x: np.ndarray, layers: list[str], classes: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Logits, activations and d(score)/d(activation) per layer; score = logit of the class
    (top-1 per sample unless ``classes`` is given), summed over the batch."""
    logits, captured = forward_capturing(model, x, layers)
    cls = logits.argmax(1) if classes is None else torch.from_numpy(classes)
    score = logits.gather(1, cls[:, None]).sum()
    acts = [captured[n] for n in layers]
    grads = torch.autograd.grad(score, acts)
    return (
        logits.detach().numpy(),
        [a.detach().numpy() for a in acts],
        [g.numpy() for g in grads],
    )


def max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got − ref| / max |ref|  (relative to the tensor's scale, not element-wise)."""
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def assert_gradients_close(got: np.ndarray, ref: np.ndarray, tol: float, what: str) -> None:
    """Max relative error ≤ tol, except isolated float32 ReLU-mask flips.

    Two float32 forward passes (onnxruntime vs torch) can disagree on the sign of a
    pre-activation within ~1e-6 of a ReLU kink; on an element-wise path (e.g. DenseNet's final
    BN → ReLU → GAP) that zeroes the gradient of one element on one side only. Such an element
    is recognisable (exactly one side is 0) and is tolerated when it is one of at most 0.001%
    of the elements; every other element must meet ``tol``.
    """
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    err = np.abs(got.astype(np.float64) - ref) / scale
    bad = err > tol
    flips = bad & ((got == 0) ^ (ref == 0))
    assert not np.any(bad & ~flips), f"{what}: max relative error {err[bad & ~flips].max():.3g}"
    assert flips.sum() <= max(1, 1e-5 * got.size), f"{what}: {int(flips.sum())} ReLU-mask flips"


def calibrate_batchnorm(model: torch.nn.Module, batches) -> torch.nn.Module:
    """Recompute BN running statistics on the given input batches (affine parameters kept).

    Random-init MobileNetV3 is degenerate even with torchvision_model's spread BN statistics:
    torch's kaiming fan_out init ignores ``groups``, so depthwise convs shrink the signal ~3×
    per block; at features.12 two different images differ by 7e-8, every map is nearly
    constant, and min-max normalisation amplifies float32 rounding ~70×. Data-dependent BN
    statistics restore a healthy network.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()


def worst_per_image(got: np.ndarray, ref: np.ndarray) -> list[float]:
    """Max |got − ref| per image of two [B, H, W] map stacks."""
    return np.abs(np.asarray(got, np.float64) - ref).max(axis=(1, 2)).tolist()


def check_maps(what: str, got: np.ndarray, ref: np.ndarray, tol: float) -> float:
    """Assert two map stacks agree within ``tol`` per image; print and return the worst."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    worst = worst_per_image(got, ref)
    print(f"{what}: worst |Δ| per image {[f'{w:.2g}' for w in worst]}")
    assert max(worst) <= tol, f"{what}: worst |Δ| per image {worst} > {tol}"
    return max(worst)


def blob_images(size: int, seed: int = 0, n: int = 2) -> list[np.ndarray]:
    """Smooth random colour blobs plus noise: float64 (size, size, 3) RGB in [0, 255] — images
    whose maps differ between samples, for comparisons with the peer libraries."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, size=(7, 7, 3))
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(img + rng.normal(0, 20, img.shape), 0, 255))
    return out


def normalized_tensor(images: list[np.ndarray], mean: float, std: float) -> torch.Tensor:
    """The torch NCHW input onnxcam's preprocessing builds from ``images`` with ``scale=1``
    and a single ``mean``/``std`` (the same float32 values on both sides)."""
    x = (np.stack(images).astype(np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def pytorch_grad_cam_methods() -> tuple[dict, dict]:
    """onnxcam method name → pytorch-grad-cam class: (gradient methods, eigen methods)."""
    import pytorch_grad_cam as pgc

    gradient = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "hirescam": pgc.HiResCAM,
        "gradcam-elementwise": pgc.GradCAMElementWise,
    }
    return gradient, {"eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM}


def torchvision_classifier(name: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    """``torchvision_model`` with ``num_classes`` outputs (small heads for fast tests)."""
    return torchvision_model(name, seed, num_classes=num_classes)


def torch_score_gradients(
    model: torch.nn.Module, x: np.ndarray, layers: list[str], score
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Logits, per-row scores and d(Σ rows' scores)/d(activation) per layer, where
    ``score(logits)`` maps the [B, K] logits tensor to the [B] scores (any differentiable
    function of the logits; a float64 model gives a float64 reference)."""
    logits, captured = forward_capturing(model, x, layers)
    s = score(logits)
    grads = torch.autograd.grad(s.sum(), [captured[n] for n in layers])
    return logits.detach().numpy(), s.detach().numpy(), [g.numpy() for g in grads]
