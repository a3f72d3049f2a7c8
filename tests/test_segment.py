"""Semantic segmentation: ``[B, K, H, W]`` outputs explained for a class over a region.

The reference is pytorch-grad-cam's ``SemanticSegmentationTarget`` (the class's logits summed
over a mask) on the *same* torch model and layer: its Grad-CAM maps, and float64 autograd of
the same sum for the raw gradients. Models: torchvision DeepLabV3-MobileNetV3 and FCN-ResNet50
(random init, small class counts and inputs) and a transformers SegFormer from a tiny config.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch_reference import blob_images, calibrate_batchnorm, check_maps, normalized_tensor

from onnxcam.engine import Explainer
from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.export import export_torch
from onnxcam.targets import Region

pytestmark = pytest.mark.model

SIZE = 96
MEAN, STD = 128.0, 64.0
K = 4


class _Out(torch.nn.Module):
    """torchvision's segmentation models return {"out": ...}: the tensor alone."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)["out"]


def _torchvision(name: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    build = getattr(torchvision.models.segmentation, name)
    model = _Out(build(weights=None, weights_backbone=None, num_classes=K, aux_loss=False))
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    batches = [normalized_tensor(blob_images(SIZE, s, 4), MEAN, STD) for s in (50, 51)]
    return calibrate_batchnorm(model, batches)


MODELS = {
    # name → (builder, the layer compared with pytorch-grad-cam)
    "deeplabv3_mobilenet_v3_large": "m.classifier.0",
    "fcn_resnet50": "m.backbone.layer4",
}


@functools.cache
def _case(name: str) -> tuple[torch.nn.Module, Explainer, str]:
    model = _torchvision(name)
    layer = MODELS[name]
    res = export_torch(
        model, (1, 3, SIZE, SIZE), layers=[layer], scale=1.0, mean=[MEAN] * 3, std=[STD] * 3
    )
    assert res.head.task == "segment"
    return model, Explainer(res.model.SerializeToString(), device="cpu"), layer


def _images() -> list[np.ndarray]:
    return blob_images(SIZE, 3, 2)


def _pgc(model: torch.nn.Module, layer: str, x: torch.Tensor, targets) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM, run on a float64 copy of the model: in float32 its maps of
    random-init FCN-ResNet50's layer4 are 2e-3 away from float64 (measured), onnxcam's 6e-5."""
    m64 = copy.deepcopy(model).double()
    with GradCAM(model=m64, target_layers=[m64.get_submodule(layer)]) as cam:
        return cam(input_tensor=x.double(), targets=targets)


@pytest.mark.parametrize("name", list(MODELS))
def test_predicted_region_matches_pytorch_grad_cam(name: str) -> None:
    """No class given: the class of the largest predicted region, over that region (one run:
    the graph's default seed) — pytorch-grad-cam's ``SemanticSegmentationTarget`` with the
    mask of the pixels predicted as that class."""
    model, ex, layer = _case(name)
    images = _images()
    x = normalized_tensor(images, MEAN, STD)
    with torch.no_grad():
        pix = model(x).argmax(1).numpy()
    classes = [int(np.bincount(p.ravel(), minlength=K).argmax()) for p in pix]
    exps = ex.explain(images, "gradcam")
    assert [e.target.index for e in exps] == classes
    # the predictions are the classes by area, the explained one first
    for e, p in zip(exps, pix, strict=True):
        assert e.predictions[0].index == e.target.index
        assert e.target.probability == pytest.approx((p == e.target.index).mean())
    targets = [
        SemanticSegmentationTarget(c, (p == c).astype(np.float32))
        for c, p in zip(classes, pix, strict=True)
    ]
    ref = _pgc(model, layer, x, targets)
    got = np.stack([e.maps["gradcam"].input for e in exps])
    check_maps(f"{name} predicted region", got, ref, 1e-4)


def test_given_class_and_mask_match_autograd() -> None:
    """A class over a user's mask: the raw gradients equal float64 autograd of
    Σ_mask logits[c]; a class given by index uses its predicted region."""
    model, ex, layer = _case("deeplabv3_mobilenet_v3_large")
    images = _images()
    rng = np.random.default_rng(0)
    mask = (rng.random((SIZE, SIZE)) > 0.5).astype(np.float64)
    c = 2
    (e,) = ex.explain(images[:1], "gradcam", targets=Region(c, mask), keep_tensors=True)
    assert e.target.index == c
    m64 = copy.deepcopy(model).double()
    captured = {}
    m64.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("a", out)
    )
    logits = m64(normalized_tensor(images[:1], MEAN, STD).double())
    score = (logits[0, c] * torch.from_numpy(mask)).sum()
    (g,) = torch.autograd.grad(score, captured["a"])
    got = e.tensors["onnxcam_gradient_0"]
    ref = g.numpy()
    err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err < 1e-4, err
    assert np.abs(ref).max() > 0


def test_empty_region_is_a_one_line_error_and_the_other_images_go_on() -> None:
    """A class with no predicted pixel cannot be explained over its predicted region: that
    image fails with one line; the rest of the batch is explained."""
    model, ex, _ = _case("deeplabv3_mobilenet_v3_large")
    images = _images()
    x = normalized_tensor(images, MEAN, STD)
    with torch.no_grad():
        pix = model(x).argmax(1).numpy()
    absent = [c for c in range(K) if not (pix[0] == c).any()]
    present = int(np.bincount(pix[1].ravel(), minlength=K).argmax())
    if not absent:
        pytest.skip("every class is predicted somewhere in image 0")
    out = list(ex.iter_explain(images, "gradcam", targets=[Region(absent[0]), Region(present)]))
    failures = [r for r in out if not hasattr(r, "maps")]
    assert len(failures) == 1 and "no pixel" in failures[0].error
    assert "\n" not in failures[0].error
    assert [r.target.index for r in out if hasattr(r, "maps")] == [present]
    with pytest.raises(ImageError, match="no pixel"):
        ex.explain(images[:1], "gradcam", classes=absent[0])


def test_perturbation_methods_are_refused_for_segmenters() -> None:
    _, ex, _ = _case("deeplabv3_mobilenet_v3_large")
    with pytest.raises(OnnxcamError):
        ex.explain(_images()[:1], "ablationcam")


def test_segformer_exports_and_its_map_lies_on_the_decoder_grid() -> None:
    """A transformers SegFormer from a tiny config: the task is found from the output rank,
    the default layer is the map entering the classifier, the map lies on its grid."""
    transformers = pytest.importorskip("transformers")

    class Logits(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).logits

    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        decoder_hidden_size=32,
        num_labels=K,
    )
    model = Logits(transformers.SegformerForSemanticSegmentation(config)).eval()
    res = export_torch(model, (1, 3, 64, 64), scale=1.0, mean=[MEAN] * 3, std=[STD] * 3)
    assert res.head.task == "segment"
    t = res.targets[0]
    assert tuple(t.shape[2:]) == (16, 16)  # the decoder fuses at 1/4 of the input
    ex = Explainer(res.model.SerializeToString(), device="cpu")
    (e,) = ex.explain(blob_images(64, 5, 1), "gradcam,layercam")
    for m in ("gradcam", "layercam"):
        feat = e.maps[m].feature
        assert feat.shape == (16, 16) and np.isfinite(feat).all() and feat.max() > 0
