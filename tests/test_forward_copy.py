"""The forward copy (``export --forward-copy``, ``export/layout.py``).

The same export in two layouts must give the same numbers in every mode: the gradients (input
gradient included) and maps of mode 0, the plain model's outputs in mode 1. And the layout
must be what it claims: one top-level ``If``, each branch holding its own constants (else
onnxruntime neither prepacks nor runs them in NCHWc), the forward branch without the optional
outputs only the backward reads, the backward chains that start in NCHW anchored.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from onnxcam import Explainer, contract
from onnxcam.cli import cli
from onnxcam.contract import Contract
from onnxcam.export import export_onnx, plain_onnx
from onnxcam.export.layout import EXPLAIN_GRAPH, FORWARD_COPY, FORWARD_GRAPH, reads
from onnxcam.export.randomize import export_options, extract_forward

SIZE = 32


class Net(nn.Module):
    """A stem with MaxPool, a residual block, a strided 3×3 (its adjoint a ConvTranspose),
    ReLU6, a 16-channel map at the end and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU6())
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.block(x))
        x = torch.relu(self.down(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("forward_copy")
    net = Net().eval()
    with torch.no_grad():  # a BatchNorm that is not the identity
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    src = tmp / "net.onnx"
    src.write_bytes(plain_onnx(net, (1, 3, SIZE, SIZE)))
    kw = {"input_gradient": True, "rules": "guided", "heatmaps": "gradcam", "preset": "torch"}
    one, two = tmp / "one.onnx", tmp / "two.onnx"
    export_onnx(src, one, forward_copy=False, **kw)
    export_onnx(src, two, **kw)  # on by default with an input gradient
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    return {"src": src, "one": one, "two": two, "x": x, "tmp": tmp}


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _outputs(path, feeds) -> dict[str, np.ndarray]:
    s = _session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds), strict=True))


def test_every_output_is_the_same_in_every_mode(exports) -> None:
    x = exports["x"]
    for mode in (contract.MODE_EXPLAIN, contract.MODE_FORWARD):
        feeds = {"input": x, contract.MODE_INPUT: np.array(mode, dtype=np.int64)}
        one, two = _outputs(exports["one"], feeds), _outputs(exports["two"], feeds)
        assert one.keys() == two.keys()
        for name, want in one.items():
            got = two[name]
            assert got.shape == want.shape, (mode, name)
            scale = max(float(np.abs(want).max()), 1e-6) if want.size else 1.0
            assert np.abs(got.astype(np.float64) - want).max(initial=0) <= 1e-5 * scale, name
    plain = _session(exports["src"]).run(["logits"], {"input": x})[0]
    mode1 = {"input": x, contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    got = _session(exports["two"]).run(["logits", contract.gradient_name(1)], mode1)
    np.testing.assert_allclose(got[0], plain, rtol=1e-5, atol=1e-5)
    assert got[1].shape[0] == 0, "a forward-only run computed the input gradient"


def test_the_layout_is_one_if_whose_branches_hold_their_own_constants(exports) -> None:
    m = onnx.load(str(exports["two"]))
    (top,) = [n for n in m.graph.node if n.op_type == "If" and n.name == FORWARD_COPY]
    assert m.graph.node[-1].name == FORWARD_COPY
    assert list(top.output) == [o.name for o in m.graph.output]
    main = {t.name for t in m.graph.initializer}
    branches = {a.g.name: a.g for a in top.attribute}
    assert set(branches) == {EXPLAIN_GRAPH, FORWARD_GRAPH}
    for g in branches.values():
        outer = {i for n in g.node for i in reads(n)} & main
        assert not outer, f"{g.name} reads main-graph constants {sorted(outer)[:3]}"
    forward, explain = branches[FORWARD_GRAPH], branches[EXPLAIN_GRAPH]
    pools = [n for n in forward.node if n.op_type == "MaxPool"]
    assert pools and all(len(n.output) == 1 for n in pools), "Indices left on in the forward"
    plain = onnx.load(str(exports["src"]))
    convs = [n.name for n in plain.graph.node if n.op_type == "Conv"]
    assert [n.name for n in forward.node if n.op_type == "Conv"] == convs, "a backward Conv"
    # every backward chain start is anchored: the strided Conv's adjoint and the mean's
    # Expand, in both backward passes (exact and guided); the stem has no strided adjoint
    anchored = {n.input[0] for n in explain.node if n.name.endswith("/anchor")}
    starts = [n for n in explain.node if n.op_type in ("ConvTranspose", "Expand")]
    assert len(starts) == 4
    assert all(n.output[0] in anchored for n in starts), [n.name for n in starts]
    c = Contract.from_metadata({p.key: p.value for p in m.metadata_props})
    assert c.exporter.get("forward_copy") is True


def test_the_file_holds_the_weights_twice_and_not_three_times(exports) -> None:
    one, two = onnx.load(str(exports["one"])), onnx.load(str(exports["two"]))

    def weight_bytes(g) -> int:
        total = sum(len(t.raw_data) for t in g.initializer)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("g"):
                    total += weight_bytes(a.g)
        return total

    plain = sum(len(t.raw_data) for t in onnx.load(str(exports["src"])).graph.initializer)
    assert weight_bytes(two.graph) < weight_bytes(one.graph) + 1.5 * plain


def test_explainer_and_sanity_cascade_read_it(exports) -> None:
    x = exports["x"][:1]
    one, two = Explainer(exports["one"], device="cpu"), Explainer(exports["two"], device="cpu")
    for method in ("saliency", "guided-gradcam", "gradcam"):
        a, b = one.explain_tensor(x, method), two.explain_tensor(x, method)
        want, got = a[0].maps[method].raw, b[0].maps[method].raw
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    forward, c = extract_forward(exports["two"])
    got = ort.InferenceSession(forward.SerializeToString()).run(["logits"], {"input": x})[0]
    want = _session(exports["src"]).run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert export_options(c)["forward_copy"] is True


def test_cli_export_forward_copy(exports) -> None:
    def top_if(*flags: str) -> bool:
        out = exports["tmp"] / "cli.onnx"
        res = CliRunner().invoke(cli, ["export", str(exports["src"]), "-o", str(out), *flags])
        assert res.exit_code == 0, res.output
        return any(n.name == FORWARD_COPY for n in onnx.load(str(out)).graph.node)

    assert top_if("--input-gradient")  # the default with a pixel target
    assert not top_if("--input-gradient", "--no-forward-copy")
    assert not top_if()  # a CAM export: its branch reads one tensor, one graph is enough
    assert top_if("--forward-copy")


def test_export_verification_runs_the_forward_branch_too(exports) -> None:
    # a forward branch that computes something else must not pass the export's check
    from onnx import numpy_helper

    from onnxcam.errors import ExportError
    from onnxcam.export.verify import verify_forward

    m = onnx.load(str(exports["two"]))
    c = Contract.from_metadata({p.key: p.value for p in m.metadata_props})
    original = exports["src"].read_bytes()
    assert verify_forward(original, m, c.input) <= 1e-5
    top = next(n for n in m.graph.node if n.name == FORWARD_COPY)
    forward = next(a.g for a in top.attribute if a.g.name == FORWARD_GRAPH)
    w = next(t for t in forward.initializer if t.name.startswith("head.weight"))
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
    with pytest.raises(ExportError, match="forward-only run"):
        verify_forward(original, m, c.input)
