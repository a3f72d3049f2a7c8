"""Ultralytics YOLO detectors (random init, built from their yaml) and torch references.

``build`` makes yolo11n / yolov8n with fixed seeds at a small input size and writes the plain
ONNX export (the model's own ``[1, 4 + K, N]`` output) the way ``yolo export format=onnx``
does it (Detect in export mode, ``torch.onnx.export`` with the TorchScript exporter, opset 17).
Nothing is downloaded: the yaml files ship with ultralytics (``YOLO_OFFLINE=1``).

The references are torch autograd on the Detect head alone: ``head_inputs`` captures the feature
maps entering ``model.model[-1]`` with a forward pre-hook (as ultralytics'
``class_activation_map`` does), ``head_logits`` runs the head's one-to-many branch and returns
its raw class scores ``[B, K, N]`` (the logits before the Sigmoid, what ``class_activation_map``
hooks as ``scores``), and ``head_gradients`` differentiates Σ seed · logits with respect to the
head inputs, in float64 on a copy of the head.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

MODELS = ("yolo11n", "yolov8n")
STRIDES = (8, 16, 32)


@dataclass
class Yolo:
    """One built detector: the torch model (export mode, float32), its ONNX file, its size."""

    name: str
    model: object
    """ultralytics ``DetectionModel``, eval, Detect head in export mode."""
    onnx: Path
    imgsz: int

    @property
    def head(self):
        return self.model.model[-1]

    @property
    def num_classes(self) -> int:
        return int(self.head.nc)

    @property
    def grids(self) -> list[tuple[int, int]]:
        """(h, w) of the P3/P4/P5 maps (stride 8/16/32), largest first."""
        return [(self.imgsz // s, self.imgsz // s) for s in STRIDES]

    @property
    def num_anchors(self) -> int:
        return sum(h * w for h, w in self.grids)

    def level_of(self, anchor: int) -> int:
        """The scale (0: P3 … 2: P5) an anchor index belongs to."""
        start = 0
        for k, (h, w) in enumerate(self.grids):
            start += h * w
            if anchor < start:
                return k
        raise IndexError(anchor)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's own output ``[B, 4 + K, N]`` (float32 torch)."""
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


def build(
    name: str,
    imgsz: int,
    out_dir: Path,
    seed: int = 0,
    class_bias: float = -5.0,
    dynamic: bool = False,
) -> Yolo:
    """``name`` (yolo11n, yolov8n) at random init, exported to ``out_dir/<name>.onnx``.

    Random init sets every class bias to log(5 / nc / (640 / stride)²) ≈ −11.5, so no score
    reaches a usual confidence threshold; the biases are redrawn around ``class_bias`` (one per
    class and scale, N(class_bias, 1)) so that NMS keeps a few dozen boxes at conf 0.25.
    ``dynamic``: a dynamic batch axis (``yolo export dynamic=True``; batch 1 otherwise).
    """
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = YOLO(f"{name}.yaml", verbose=False).model
    head = model.model[-1]
    gen = torch.Generator().manual_seed(seed + 1)
    calibrate_batchnorm(model, imgsz, gen)
    with torch.no_grad():
        for branch in head.cv3:
            bias = branch[-1].bias
            bias.copy_(class_bias + torch.randn(bias.shape, generator=gen))
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True
        if hasattr(m, "format"):
            m.format = "onnx"
    path = Path(out_dir) / f"{name}{'.dynamic' if dynamic else ''}.onnx"
    x = torch.rand(1, 3, imgsz, imgsz, generator=gen)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            x,
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic else None,
        )
    return Yolo(name, model, path, imgsz)


def photos(imgsz: int | None = None) -> list[np.ndarray]:
    """scikit-image's astronaut, chelsea and coffee photos, RGB uint8, resized to ``imgsz``
    square when given (else as they are: 512×512, 300×451, 400×600)."""
    import cv2
    import skimage.data

    ims = [getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee")]
    if imgsz is None:
        return ims
    return [cv2.resize(im, (imgsz, imgsz), interpolation=cv2.INTER_AREA) for im in ims]


def to_input(images: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 images at the model size → ``[B, 3, H, W]`` float32 in [0, 1], with the
    arithmetic of onnxcam's ``unit`` preset (pixel · float32(1/255))."""
    x = np.stack(images).astype(np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def calibrate_batchnorm(model, imgsz: int, gen) -> None:
    """Give the BatchNorm layers running statistics from a train-mode pass over the photos
    and noise, then switch to eval. At random init their statistics are mean 0 / variance 1,
    and the features entering the head shrink to ~1e-6 (every anchor of a scale then scores
    the same, and rankings are ties)."""
    import torch

    x = np.concatenate(
        [to_input(photos(imgsz)), torch.rand(3, 3, imgsz, imgsz, generator=gen).numpy()]
    )
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    model.eval()


def head_inputs(yolo: Yolo, x: np.ndarray) -> list[np.ndarray]:
    """The feature maps entering the Detect head (P3, P4, P5) for images ``x`` (torch float32)."""
    import torch

    captured: list[torch.Tensor] = []

    def pre_hook(_module, inputs):
        feats = inputs[0]
        captured.extend(f for f in (feats if isinstance(feats, (list, tuple)) else [feats]))

    handle = yolo.head.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            yolo.model(torch.from_numpy(x))
    finally:
        handle.remove()
    return [c.numpy().copy() for c in captured]


def _head64(yolo: Yolo):
    """A float64 copy of the Detect head (cached on the Yolo object)."""
    h = getattr(yolo, "_head64", None)
    if h is None:
        h = copy.deepcopy(yolo.head).double().eval()
        yolo._head64 = h  # type: ignore[attr-defined]
    return h


def head_logits(yolo: Yolo, feats: list, double: bool = True):
    """The head's raw class scores ``[B, K, N]`` (logits before the Sigmoid) on ``feats``
    (torch tensors, or arrays), from the one-to-many branch as the export uses it."""
    import torch

    head = _head64(yolo) if double else yolo.head
    dtype = torch.float64 if double else torch.float32
    ts = [f if isinstance(f, torch.Tensor) else torch.from_numpy(np.asarray(f)) for f in feats]
    ts = [t.to(dtype) for t in ts]
    return head.forward_head(ts, **head.one2many)["scores"]


def head_gradients(
    yolo: Yolo, feats: list[np.ndarray], seed: np.ndarray, double: bool = True
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(logits [1, K, N], [∂(Σ seed[r] · logits)/∂feats_k for every row r, shape [S, C, h, w]])
    for one image's head inputs ``feats`` (each ``[1, C, h, w]``) and ``seed`` ``[S, K, N]``."""
    import torch

    dtype = torch.float64 if double else torch.float32
    leaves = [torch.from_numpy(np.asarray(f)).to(dtype).requires_grad_(True) for f in feats]
    logits = head_logits(yolo, leaves, double)
    s = torch.from_numpy(np.asarray(seed)).to(dtype)
    rows: list[list[np.ndarray]] = []
    for r in range(len(s)):
        score = (s[r : r + 1] * logits).sum()
        grads = torch.autograd.grad(score, leaves, retain_graph=r < len(s) - 1)
        rows.append([g.detach().numpy() for g in grads])
    per_level = [np.concatenate([row[k] for row in rows]) for k in range(len(feats))]
    return logits.detach().numpy(), per_level


def one_hot_seed(pairs: list[tuple[int, int]], num_classes: int, num_anchors: int) -> np.ndarray:
    """``[S, K, N]`` float32 seed, row r one-hot at (class, anchor) = pairs[r]."""
    seed = np.zeros((len(pairs), num_classes, num_anchors), np.float32)
    for r, (c, a) in enumerate(pairs):
        seed[r, c, a] = 1.0
    return seed


def default_target(logits: np.ndarray) -> tuple[int, int]:
    """The exporter's default detection for one image's logits ``[1, K, N]`` or ``[K, N]``:
    the class of the best anchor, then that class's best anchor."""
    z = logits.reshape(-1, logits.shape[-1])
    cls = int(z.max(1).argmax())
    return cls, int(z[cls].argmax())


def layercam_levels(
    acts: list[np.ndarray], grads: list[np.ndarray], size: tuple[int, int]
) -> list[np.ndarray]:
    """ultralytics' ``class_activation_map`` per level, for one detection: relu(Σ_c relu(g)·a),
    bilinear to ``size`` (align_corners=False), divided by its max (clamped at 1e-7).
    ``acts``/``grads``: ``[1, C, h, w]`` per level. Returns ``[H, W]`` float64 per level."""
    import torch

    out = []
    for a, g in zip(acts, grads, strict=True):
        ta = torch.from_numpy(np.asarray(a, np.float64))
        tg = torch.from_numpy(np.asarray(g, np.float64))
        c = (tg.clamp(min=0) * ta).sum(1, keepdim=True).clamp(min=0)
        c = torch.nn.functional.interpolate(c, size, mode="bilinear", align_corners=False)
        out.append((c / c.amax((2, 3), keepdim=True).clamp(min=1e-7))[0, 0].numpy())
    return out


def layercam_fused(
    acts: list[np.ndarray], grads: list[np.ndarray], size: tuple[int, int]
) -> np.ndarray:
    """One detection's map as ``class_activation_map`` makes it: the max over the levels."""
    return np.max(layercam_levels(acts, grads, size), axis=0)


def ultralytics_cam(yolo: Yolo, x: np.ndarray, topk: int, conf: float = 0.0) -> np.ndarray:
    """ultralytics' own ``class_activation_map`` on ``x`` ``[1, 3, H, W]``: the uint8 map
    ``[H, W]`` it colours (captured from its ``cv2.applyColorMap`` call; nothing is kept on
    disk)."""
    import tempfile
    from unittest import mock

    import torch
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils import plotting

    model = copy.deepcopy(yolo.model)
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = False
    backend = AutoBackend(model, device=torch.device("cpu"), fuse=False, verbose=False)
    seen: list[np.ndarray] = []
    real = plotting.cv2.applyColorMap

    def capture(c, cmap):
        seen.append(np.array(c))
        return real(c, cmap)

    with (
        tempfile.TemporaryDirectory() as d,
        mock.patch.object(plotting.cv2, "applyColorMap", capture),
    ):
        plotting.class_activation_map(
            backend, torch.from_numpy(x), ["x.jpg"], Path(d), conf=conf, topk=topk
        )
    return seen[0]


def cam_targets(logits: np.ndarray, topk: int, conf: float = 0.0) -> list[tuple[int, int]]:
    """The (class, anchor) pairs ``class_activation_map`` explains for one image's logits
    ``[1, K, N]``: each anchor's best class logit, those with sigmoid ≥ conf (the best alone if
    none), the ``topk`` strongest."""
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    best = z.max(0)
    keep = (1 / (1 + np.exp(-best)) >= conf) | (best == best.max())
    order = [int(a) for a in np.argsort(-np.where(keep, best, -np.inf), kind="stable")]
    order = order[: min(int(keep.sum()), topk)]
    return [(int(z[:, a].argmax()), a) for a in order]


def full_gradients(
    yolo: Yolo, x: np.ndarray, seed: np.ndarray, double: bool = True
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Through the whole model, as ``class_activation_map`` differentiates: (logits
    ``[1, K, N]``, head inputs, [∂(Σ seed[r] · logits)/∂(head input k) for every row r,
    ``[S, C, h, w]``]) for one image ``x`` ``[1, 3, H, W]``.

    These are total derivatives: the neck computes P4 and P5 from P3 (and P5 from P4), so a
    P4/P5 detection's gradient at a larger map includes the path through the neck, which a
    head fed its inputs separately (``head_gradients``) does not see."""
    import torch

    dtype = torch.float64 if double else torch.float32
    model = getattr(yolo, "_model64", None) if double else yolo.model
    if model is None:
        model = copy.deepcopy(yolo.model).double().eval()
        yolo._model64 = model  # type: ignore[attr-defined]
    head = model.model[-1]
    acts: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []

    def pre_hook(_module, inputs):
        acts.extend(inputs[0])

    def hook(module, inputs, _output):
        scores.append(module.forward_head(list(inputs[0]), **module.one2many)["scores"])

    handles = [head.register_forward_pre_hook(pre_hook), head.register_forward_hook(hook)]
    try:
        with torch.enable_grad():
            im = torch.from_numpy(np.asarray(x)).to(dtype).requires_grad_(True)
            model(im)
    finally:
        for h in handles:
            h.remove()
    logits = scores[0]
    s = torch.from_numpy(np.asarray(seed)).to(dtype)
    rows = []
    for r in range(len(s)):
        grads = torch.autograd.grad((s[r : r + 1] * logits).sum(), acts, retain_graph=True)
        rows.append([g.numpy() for g in grads])
    per_level = [np.concatenate([row[k] for row in rows]) for k in range(len(acts))]
    return logits.detach().numpy(), [a.detach().numpy() for a in acts], per_level
