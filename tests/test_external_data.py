"""Models whose weights live in an external data file, and models over protobuf's 2 GiB.

A source with external data is written back with external data (``<output>.data``), the
CLI's size report counts the data files on both sides, and a model too large for one protobuf
message is checked and verified from a path instead of from bytes (``export/storage.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxcam import contract
from onnxcam.cli import cli
from onnxcam.export import api, export_onnx, plain_onnx, storage


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _external_source(tmp_path):
    """The net saved with its weights in ``net.onnx.data``."""
    torch.manual_seed(0)
    m = onnx.load_from_string(plain_onnx(Net().eval(), (1, 3, 16, 16)))
    path = tmp_path / "net.onnx"
    onnx.save_model(
        m, str(path), save_as_external_data=True, location="net.onnx.data", size_threshold=1024
    )
    assert storage.has_external_data(onnx.load(str(path), load_external_data=False))
    return path


def _outputs(path, x) -> dict:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x}), strict=True))


def test_external_data_stays_external_and_equals_the_inline_export(tmp_path) -> None:
    src = _external_source(tmp_path)
    out = tmp_path / "out" / "net.cam.onnx"
    out.parent.mkdir()
    export_onnx(src, out)
    assert storage.data_path(out).is_file()
    assert storage.has_external_data(onnx.load(str(out), load_external_data=False))
    assert out.stat().st_size < storage.data_path(out).stat().st_size  # weights not inline
    inline = export_onnx(onnx.load(str(src)), tmp_path / "inline.cam.onnx")
    assert not storage.data_path(tmp_path / "inline.cam.onnx").exists()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    a, b = _outputs(out, x), _outputs(inline.path, x)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_cli_reports_the_size_with_the_data_files(tmp_path) -> None:
    src = _external_source(tmp_path)
    out = tmp_path / "net.cam.onnx"
    r = CliRunner().invoke(cli, ["export", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ratio = storage.file_bytes(out) / storage.file_bytes(src)
    assert 1.0 < ratio < 1.5  # the weights are shared: a few % of graph added
    assert f"{ratio:.4f}x the input size" in r.output
    assert "weights in net.cam.onnx.data" in r.output


def test_a_model_over_the_limit_is_checked_from_a_path_and_written_external(
    tmp_path, monkeypatch
) -> None:
    """The 2 GiB path, scaled down: with the limit at 10 kB an inline source (40 kB of
    weights) is verified through files and written with external data."""
    torch.manual_seed(0)
    model = onnx.load_from_string(plain_onnx(Net().eval(), (1, 3, 16, 16)))
    assert storage.weight_bytes(model) > 10_000
    monkeypatch.setattr(storage, "EXTERNAL_ABOVE", 10_000)
    seen = []
    real = api.verify_forward

    def spy(original, exported, spec, **kw):
        seen.append((type(original), type(kw["new_source"])))
        return real(original, exported, spec, **kw)

    monkeypatch.setattr(api, "verify_forward", spy)
    out = tmp_path / "big.cam.onnx"
    res = export_onnx(model, out)
    assert seen == [(str, str)]  # both graphs opened from files
    assert storage.data_path(out).is_file()
    assert res.max_output_diff == 0.0
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    got = _outputs(out, x)
    with torch.no_grad():
        torch.manual_seed(0)
        ref = Net().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got["logits"], ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got[contract.gradient_name(0)]).all()


def _huge(tmp_path, half: int):
    """Conv → global average pool → two Gemms of ``half`` classes each, concatenated: two
    16 × ``half`` weight matrices, written straight to ``huge.onnx.data`` (protobuf cannot even
    build a message over 2 GiB in memory)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "huge.onnx.data"
    inits = [numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "w_conv")]
    ramp = np.linspace(-1.0, 1.0, half, dtype=np.float32)
    with open(data, "wb") as f:
        for k in range(2):
            w = np.outer(rng.normal(size=16).astype(np.float32) * 0.1, ramp + k)
            tensor = onnx.TensorProto(name=f"w_fc{k}", data_type=TensorProto.FLOAT, dims=w.shape)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", f.tell()), ("length", w.nbytes)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            f.write(w.tobytes())
            inits.append(tensor)
            del w
    nodes = [
        helper.make_node("Conv", ["image", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc0"], ["z0"]),
        helper.make_node("Gemm", ["flat", "w_fc1"], ["z1"]),
        helper.make_node("Concat", ["z0", "z1"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "huge",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2 * half])],
        inits,
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.model
def test_a_model_over_two_gib_exports(tmp_path) -> None:
    """A real one: 2.2 GB of classifier weights (34 M classes) in an external data file."""
    half = 17_000_000
    src = _huge(tmp_path, half)
    assert storage.file_bytes(src) > storage.PROTOBUF_LIMIT
    out = tmp_path / "huge.cam.onnx"
    res = export_onnx(src, out)
    assert res.max_output_diff == 0.0
    del res
    assert storage.data_path(out).is_file() and out.stat().st_size < 1_000_000
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    cls, score, grad = s.run(
        [contract.CLASS_OUTPUT, contract.SCORE_OUTPUT, contract.gradient_name(0)], {"image": x}
    )
    assert 0 <= int(cls[0]) < 2 * half and np.isfinite(score).all() and np.abs(grad).max() > 0
