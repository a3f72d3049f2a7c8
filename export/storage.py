"""Where a model's bytes live: inline in the ``.onnx`` file, or in an external data file.

A model whose weights came in an external data file is written back the same way (its
weights in ``<output>.data`` beside the output), and so is any model too large for one
protobuf message (2 GiB): ``onnx.checker`` and onnxruntime then read it from a path instead
of from bytes (``model_source``). ``file_bytes`` is the size of a model on disk with its data
files, for the CLI's size report.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx import external_data_helper

from onnxcam.errors import ExportError

PROTOBUF_LIMIT = 2**31 - 1
"""One protobuf message (a whole inline ``.onnx``) cannot exceed this many bytes."""
EXTERNAL_ABOVE = 1_800_000_000
"""Weights above this many bytes are written as external data (the graph the exporter appends
must fit beside them in one message otherwise)."""
SIZE_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the external data file (smaller stay inline)."""


def has_external_data(m: onnx.ModelProto) -> bool:
    """``m`` (loaded without its external data) refers to an external data file."""
    return any(external_data_helper.uses_external_data(t) for t in _tensors(m))


def weight_bytes(m: onnx.ModelProto) -> int:
    """Bytes of the initializers' data held in memory."""
    return sum(len(t.raw_data) for t in _tensors(m))


def is_large(m: onnx.ModelProto) -> bool:
    """Too large to be written or checked as one inline message."""
    return weight_bytes(m) > EXTERNAL_ABOVE


def data_path(out: Path) -> Path:
    """The external data file written beside ``out``."""
    return out.with_name(out.name + ".data")


def file_bytes(path: Path) -> int:
    """Size of the model at ``path`` on disk, with every external data file it refers to."""
    m = onnx.load(str(path), load_external_data=False)
    files = {
        external_data_helper.ExternalDataInfo(t).location
        for t in _tensors(m)
        if external_data_helper.uses_external_data(t)
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def save(m: onnx.ModelProto, out: Path, external: bool) -> None:
    """Write ``m`` to ``out`` atomically (``.partial`` renamed into place); with ``external``,
    its weights go to ``data_path(out)`` and ``m`` keeps them in memory afterwards."""
    tmp = out.with_name(out.name + ".partial")
    data = data_path(out)
    try:
        data.unlink(missing_ok=True)  # a stale data file of an earlier export; onnx appends
        if not external:
            onnx.save(m, str(tmp))
        else:  # the data file gets its final name; the .onnx is renamed into place last
            write_external(m, tmp, data.name)
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror}") from None


def write_external(m: onnx.ModelProto, path: Path, location: str | None = None) -> str:
    """Write ``m`` to ``path`` with its weights in ``location`` beside it (default
    ``<path>.data``) and keep them in memory (``onnx.save_model`` moves them out of the proto;
    they are read back). No copy of ``m`` is made: protobuf cannot copy a message over 2 GiB."""
    onnx.save_model(
        m,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location or path.name + ".data",
        size_threshold=SIZE_THRESHOLD,
        convert_attribute=False,
    )
    onnx.load_external_data_for_model(m, str(path.parent))
    return str(path)


@contextmanager
def model_source(m: onnx.ModelProto):
    """What ``onnx.checker`` and onnxruntime can open ``m`` from: its bytes, or — when it is
    too large for one message — the path of a temporary copy with external data."""
    if not is_large(m):
        yield m.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxcam-") as d:
        yield write_external(m, Path(d) / "exported.onnx")


def _tensors(m: onnx.ModelProto):
    return external_data_helper._get_all_tensors(m)  # initializers and Constant attributes


__all__ = [
    "EXTERNAL_ABOVE",
    "PROTOBUF_LIMIT",
    "data_path",
    "file_bytes",
    "has_external_data",
    "is_large",
    "model_source",
    "save",
    "weight_bytes",
    "write_external",
]
