"""`onnxcam export` and `onnxcam layers` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def onnxcam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxcam.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ")
    for f in fragments:
        assert f in lines[0], lines[0]


def test_export_and_layers_happy_path(tiny_onnx, tmp_path) -> None:
    out = tmp_path / "tiny.cam.onnx"
    r = onnxcam("export", tiny_onnx, "-o", out, "--mean", "0.5,0.5,0.5", "--std", "0.2 0.2 0.2")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "target 0" in r.stdout
    assert out.is_file()
    r = onnxcam("layers", tiny_onnx)
    assert r.returncode == 0
    marked = [line for line in r.stdout.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and "Relu" in marked[0]
    listed = json.loads(onnxcam("layers", tiny_onnx, "--json").stdout)
    assert sum(c["default"] for c in listed) == 1
    # a node name works as --layer too
    r = onnxcam("export", tiny_onnx, "-o", tmp_path / "b.onnx", "--layer", listed[0]["node"])
    assert r.returncode == 0, r.stderr


def test_not_onnx_file(tmp_path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    assert_one_line_error(onnxcam("export", bad, "-o", tmp_path / "o.onnx"), "not a readable ONNX")


def test_truncated_file(tiny_onnx, tmp_path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[:2000])
    assert_one_line_error(onnxcam("export", cut, "-o", tmp_path / "o.onnx"), "cut.onnx")


def test_missing_file(tmp_path) -> None:
    r = onnxcam("export", tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(r, "no such file")


def test_model_without_4d_tensor(tmp_path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.ones((4, 3), np.float32), "w")],
    )
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert_one_line_error(onnxcam("export", path, "-o", tmp_path / "o.onnx"), "4-D")


def test_unknown_layer_lists_candidates(tiny_onnx, tmp_path) -> None:
    r = onnxcam("export", tiny_onnx, "-o", tmp_path / "o.onnx", "--layer", "layer99")
    assert_one_line_error(r, "unknown layer 'layer99'", "candidates")


def test_output_equal_to_input_is_refused_and_input_untouched(tiny_onnx, tmp_path) -> None:
    copy = tmp_path / "model.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    before = copy.stat().st_mtime_ns, copy.read_bytes()
    assert_one_line_error(onnxcam("export", copy, "-o", copy), "refusing to overwrite")
    assert (copy.stat().st_mtime_ns, copy.read_bytes()) == before
    # the same file through another spelling of the path
    r = onnxcam("export", copy, "-o", tmp_path / "." / "model.onnx")
    assert_one_line_error(r, "refusing to overwrite")


@pytest.mark.parametrize("where", ["missing-dir", "unwritable"])
def test_unwritable_output_directory(tiny_onnx, tmp_path, where) -> None:
    if where == "missing-dir":
        target = tmp_path / "no" / "such" / "dir" / "o.onnx"
        fragment = "does not exist"
    else:  # a read-only mount refuses even root; a chmod'ed dir refuses other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = "/sys/o.onnx" if _is_root() else ro / "o.onnx"
        fragment = "not writable"
    assert_one_line_error(onnxcam("export", tiny_onnx, "-o", target), fragment)


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_bad_mean_is_a_usage_error(tiny_onnx, tmp_path) -> None:
    r = onnxcam("export", tiny_onnx, "-o", tmp_path / "o.onnx", "--mean", "a,b,c")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = onnxcam("export", tiny_onnx, "-o", tmp_path / "o.onnx", "--mean", "1,2")
    assert_one_line_error(r, "mean needs 1 or 3 values")
