"""``export_torch``: a ``torch.nn.Module`` → explainable ONNX, target layers named by module.

Module outputs are captured with forward hooks and returned as extra outputs of a wrapper
module during ``torch.onnx.export``, so the ONNX tensor of ``layer4`` is known by construction
(no guessing from generated node names). The extra outputs are then handed to ``export_onnx``
as target tensors and removed from the graph's output list.

A module called more than once per forward pass (EfficientNet-Lite reuses one ReLU6 module in
its stem, blocks and head) is explicit: ``"name"`` means its last call, ``"name@k"`` its k-th
call (0-based, negative counts from the end); the metadata records which call was used.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence

import onnx

from onnxcam.errors import ExportError, LayerNotFoundError

from .api import ExportResult, check_output_path, export_onnx

CAPTURE = "onnxcam_capture_{k}"
_CALL = re.compile(r"^(?P<name>.+?)@(?P<call>-?\d+)$")


def _parse_layer(spec: str) -> tuple[str, int | None]:
    m = _CALL.match(spec)
    return (m["name"], int(m["call"])) if m else (spec, None)


def _module_names(module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


def export_torch(
    module,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    layers: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
    dynamo: bool | None = None,
    input_dtype: str = "float32",
    **kwargs,
) -> ExportResult:
    """Export ``module`` (put in eval mode) with torch module names as target layers.

    ``layers``: module names such as ``"layer4"`` or ``"features.7"``; ``"name@k"`` picks the
    k-th call of a module used several times. Default: the exporter's default layer (the last
    feature map on the image grid before the head). Remaining keyword arguments go to
    ``export_onnx`` (``size``, ``mean``, ``std``, ``preset``, ``labels``, ...). ``dynamo``
    selects torch's exporter (default: the TorchScript exporter when available, else dynamo).
    ``input_dtype="uint8"`` traces the module with a uint8 image (pixels; a module that casts
    and normalises them itself).
    """

    check_output_path(None, output)
    was_training = module.training
    try:
        return _export_torch(
            module.eval(),
            input_shape,
            layers,
            output,
            dynamic_batch,
            opset,
            dynamo,
            input_dtype,
            kwargs,
        )
    finally:
        module.train(was_training)  # never leave the caller's model in another mode


def _export_torch(
    module, input_shape, layers, output, dynamic_batch, opset, dynamo, input_dtype, kwargs
):
    import torch

    param = next(module.parameters(), None)
    if input_dtype == "uint8":
        x = torch.randint(0, 256, tuple(input_shape), dtype=torch.uint8)
    else:
        x = torch.randn(*input_shape, dtype=param.dtype if param is not None else torch.float32)
    specs = [_parse_layer(s) for s in (layers or [])]
    known = set(_module_names(module))
    for name, _ in specs:
        if name not in known:
            close = [n for n in known if name.split(".")[-1] in n][:10]
            hint = f"; similar: {', '.join(sorted(close))}" if close else ""
            raise LayerNotFoundError(f"module {name!r} not found in {type(module).__name__}{hint}")

    calls: dict[str, list] = {name: [] for name, _ in specs}
    hooks = [
        module.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: calls[name].append(out)
        )
        for name in calls
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    chosen: list[int] = []
    notes: list[str | None] = []
    for name, call in specs:
        n = len(calls[name])
        if n == 0:
            raise LayerNotFoundError(f"module {name!r} is never called in forward()")
        k = n - 1 if call is None else call
        if not -n <= k < n:
            raise LayerNotFoundError(
                f"module {name!r} is called {n} times; valid calls: "
                + ", ".join(f"{name}@{i}" for i in range(n))
            )
        k %= n
        if not isinstance(calls[name][k], torch.Tensor) or calls[name][k].dim() not in (3, 4):
            raise LayerNotFoundError(
                f"module {name!r} (call {k}) outputs neither a 4-D feature map nor a "
                "[batch, tokens, channels] token tensor"
            )
        note = None
        if n > 1:
            note = f"torch module called {n} times per forward; call {k} is used"
            if call is None:
                warnings.warn(
                    f"onnxcam: module {name!r} is called {n} times; using its last call "
                    f"({name}@{n - 1}); pick another with '{name}@k'",
                    stacklevel=2,
                )
        chosen.append(k)
        notes.append(note)

    wrapper = _Capture(module, [n for n, _ in specs], chosen).eval()
    captures = [CAPTURE.format(k=k) for k in range(len(specs))]
    out_names = ["logits", *captures]
    buf = io.BytesIO()
    _torch_export(wrapper, x, buf, out_names, dynamic_batch, opset, dynamo)
    return export_onnx(
        onnx.load_from_string(buf.getvalue()),
        output,
        layers=captures or None,
        layer_names=[
            f"{n}@{k}" if note else n for (n, _), k, note in zip(specs, chosen, notes, strict=True)
        ]
        or None,
        layer_notes=notes or None,
        drop_outputs=captures,
        **kwargs,
    )


def plain_onnx(module, input_shape=(1, 3, 224, 224), opset: int = 17) -> bytes:
    """``module`` as a plain ONNX model — input ``input``, output ``logits``, dynamic batch —
    the file a user ships before onnxcam (benchmarks and tests start from it)."""
    import torch

    was_training = module.training
    buf = io.BytesIO()
    try:
        _torch_export(module.eval(), torch.randn(*input_shape), buf, ["logits"], True, opset, False)
    finally:
        module.train(was_training)
    return buf.getvalue()


def _torch_export(wrapper, x, f, out_names, dynamic_batch, opset, dynamo) -> None:
    import torch

    kwargs: dict = {"input_names": ["input"], "output_names": out_names, "opset_version": opset}
    if dynamo is None:
        dynamo = False
    if dynamic_batch:
        if dynamo:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
        else:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in ["input", *out_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (x,), f, dynamo=dynamo, **kwargs)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from None


def _make_capture():
    import torch

    class Capture(torch.nn.Module):
        """Returns (model output, captured module outputs...)."""

        def __init__(self, model, names: list[str], calls: list[int]) -> None:
            super().__init__()
            self.model = model
            self.names = names
            self.calls = calls

        def forward(self, x):
            seen: dict[str, list] = {n: [] for n in self.names}
            hooks = [
                self.model.get_submodule(n).register_forward_hook(
                    lambda _m, _i, out, n=n: seen[n].append(out)
                )
                for n in seen
            ]
            try:
                y = self.model(x)
            finally:
                for h in hooks:
                    h.remove()
            return (y, *[seen[n][k] for n, k in zip(self.names, self.calls, strict=True)])

    return Capture


def _Capture(model, names, calls):
    return _make_capture()(model, names, calls)
