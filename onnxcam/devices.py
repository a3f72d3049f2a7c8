"""The devices the runtime runs on: names, their onnxruntime execution providers, packages.

Imported by the CLI's option declarations, so it imports nothing.
"""

from __future__ import annotations

PROVIDERS = {
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu: pip uninstall -y onnxruntime && pip "
             "install 'onnxcam[gpu]'"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino: pip uninstall -y "
                 "onnxruntime && pip install onnxruntime-openvino"),
}  # fmt: skip
"""Accelerated devices: their onnxruntime execution provider and the package that has it.
Every other node runs on the CPU provider (onnxruntime partitions the graph)."""
DEVICES = ("auto", "cpu", *PROVIDERS)
DEVICE_NAMES = {provider: device for device, (provider, _) in PROVIDERS.items()}

__all__ = ["DEVICES", "DEVICE_NAMES", "PROVIDERS"]
