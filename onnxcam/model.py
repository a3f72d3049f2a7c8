"""Open an exported model: one onnxruntime session, its provider, and the contract it carries."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import Contract, InputSpec, ScoreSpec, TargetLayer
from .devices import DEVICES, PROVIDERS
from .errors import ContractError, DeviceError, ModelLoadError


@dataclass
class ModelInfo:
    """Everything the runtime reads from an exported model's metadata."""

    targets: list[TargetLayer]
    input: InputSpec
    logits: str
    output: str
    logits_output: str
    """The session output holding the logits (the model's output, or ``onnxcam_logits``)."""
    activation: str | None
    num_classes: int | None
    labels: list[str] | None
    has_cam_weights: bool
    extra: dict = field(default_factory=dict)
    score: ScoreSpec | None = None
    """The contract's score record (task, detector layout, seed rows)."""

    @property
    def task(self) -> str:
        return self.score.task if self.score else "classify"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities from logits [n, K], as the model's own output activation
        would give them (sigmoid for multi-label heads, softmax otherwise)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def label(self, k: int) -> str:
        if self.labels and 0 <= k < len(self.labels):
            return self.labels[k]
        return str(k)

    def class_index(self, name_or_index: int | str) -> int:
        """A class given as an index, a numeric string or a label name → its index."""
        if isinstance(name_or_index, (int,)) or str(name_or_index).lstrip("-").isdigit():
            k = int(name_or_index)
            if self.num_classes is not None and not 0 <= k < self.num_classes:
                raise ContractError(f"class {k} is out of range (0..{self.num_classes - 1})")
            return k
        if not self.labels:
            raise ContractError(f"class {name_or_index!r}: the model has no label names")
        wanted = str(name_or_index).strip().lower()
        exact = [i for i, lab in enumerate(self.labels) if lab.lower() == wanted]
        if exact:
            return exact[0]
        partial = [i for i, lab in enumerate(self.labels) if wanted in lab.lower()]
        if len(partial) == 1:
            return partial[0]
        hint = ", ".join(self.labels[i] for i in partial[:8])
        more = f"; it matches: {hint}" if partial else ""
        raise ContractError(f"no class named {name_or_index!r}{more}")


def parse_contract(meta: dict[str, str]) -> ModelInfo:
    """Graph-contract metadata (``custom_metadata_map``) → ``ModelInfo``."""
    c = Contract.from_metadata(meta)
    if not c.input.height or not c.input.width:
        raise ContractError("the model's input size is not fixed; re-export with --size H W")
    return ModelInfo(
        targets=c.targets,
        input=c.input,
        logits=c.score.logits,
        output=c.score.output,
        logits_output=c.score.logits_output,
        activation=c.score.activation,
        num_classes=c.score.num_classes,
        labels=c.labels,
        has_cam_weights=any(t.cam_weight for t in c.targets),
        score=c.score,
    )


def providers_for(device: str) -> list[str]:
    """Execution providers to ask onnxruntime for, most preferred first."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":  # CUDA when present (OpenVINO only when asked for)
        wanted = PROVIDERS["cuda"][0]
        return [wanted, "CPUExecutionProvider"] if wanted in available else ["CPUExecutionProvider"]
    provider, package = PROVIDERS[device]
    if provider not in available:
        raise DeviceError(
            f"{device} was requested but this onnxruntime has no {provider} (install {package})"
        )
    return [provider, "CPUExecutionProvider"]


def open_session(model: str | os.PathLike | bytes, device: str = "auto", options=None):
    """Create the one ``InferenceSession`` for a model; check the provider really in use.

    onnxruntime-gpu on a machine without a usable GPU imports fine and lists the CUDA provider,
    then silently runs on the CPU: the providers the *session* reports are what counts.
    """
    import onnxruntime as ort

    opts = options if options is not None else ort.SessionOptions()
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ModelLoadError(f"{model}: no such file")
    try:
        sess = ort.InferenceSession(src, opts, providers=providers_for(device))
    except (ModelLoadError, DeviceError):
        raise
    except Exception as e:
        label = "model" if isinstance(model, bytes) else str(model)
        first = (str(e).splitlines() or [""])[0][:160]
        raise ModelLoadError(f"{label}: onnxruntime cannot load it ({first})") from None
    if device in PROVIDERS and PROVIDERS[device][0] not in sess.get_providers():
        raise DeviceError(
            f"{device} was requested but onnxruntime fell back to the CPU (no usable device or "
            "libraries); use --device cpu or fix the installation"
        )
    return sess
