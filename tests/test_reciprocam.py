"""ReciproCAM in the graph (``export --reciprocam``, arXiv 2209.14074).

Checked against an independent torch computation (a forward hook that replaces the layer's
output by its h·w one-position copies, the whole model re-run on them), for the GAP shortcut,
the masked-copy head, a head with a skip connection around the target, batch > 1; and against
OpenVINO XAI's ``ReciproCAM`` on the same ONNX model when its venv is there
(``ONNXCAM_OVXAI_PYTHON``, made by ``.ci/run``: openvino-xai 1.1 pins numpy 1.x and openvino
2024.4).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from onnxcam import contract
from onnxcam.engine import Explainer
from onnxcam.errors import MethodError
from onnxcam.export import export_torch, plain_onnx

OVXAI = os.environ.get("ONNXCAM_OVXAI_PYTHON")


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(model: torch.nn.Module, layer: str, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """M[b, j] = logit_c of the model whose ``layer`` output is replaced by copy j (a hook)."""
    module = dict(model.named_modules())[layer]
    out = []
    for b in range(len(x)):
        with torch.no_grad():
            seen = {}
            h = module.register_forward_hook(lambda m, i, o: seen.setdefault("A", o))
            model(torch.from_numpy(x[b : b + 1]))
            h.remove()
            _, _, hh, ww = seen["A"].shape
            masks = torch.eye(hh * ww).reshape(hh * ww, 1, hh, ww)
            h = module.register_forward_hook(lambda m, i, o: o * masks)
            logits = model(torch.from_numpy(np.repeat(x[b : b + 1], hh * ww, axis=0)))
            h.remove()
        out.append(logits[:, cls[b]].reshape(hh, ww).numpy())
    return np.stack(out)


def _maps(path, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    cls, m = _session(path).run(
        [contract.CLASS_OUTPUT, contract.reciprocam_name(k)],
        {"input": x, contract.MODE_INPUT: np.array(contract.MODE_RECIPROCAM)},
    )
    return cls, m


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("rc") / "r18.cam.onnx"
    res = export_torch(model, (1, 3, 64, 64), output=path, layers=["layer4", "layer3"],
                       reciprocam=True)  # fmt: skip
    return model, path, res


def test_maps_equal_masked_copies_through_the_model(resnet) -> None:
    model, path, res = resnet
    assert [t.reciprocam_gap for t in res.targets] == [True, False]  # layer4 → GAP → fc
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    for k, layer in enumerate(["layer4", "layer3"]):
        cls, m = _maps(path, x, k)
        ref = _reference(model, layer, x, cls)
        assert m.shape == ref.shape == (2, *res.targets[k].spatial)
        np.testing.assert_allclose(m, ref, atol=2e-5, rtol=1e-5, err_msg=layer)
        # batch > 1 is per image: each image alone gives the same map
        np.testing.assert_allclose(_maps(path, x[1:2], k)[1], m[1:2], atol=1e-5)


def test_modes_4_and_0_return_the_maps_and_the_contract_records_it(resnet) -> None:
    """Mode 4 (no backward) and mode 0 (beside the gradients) return the same maps; the
    forward-only mode 1 pays nothing for them."""
    _, path, _ = resnet
    s = _session(path)
    x = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)

    def maps(mode: int) -> np.ndarray:
        feeds = {"input": x, contract.MODE_INPUT: np.array(mode)}
        return s.run([contract.reciprocam_name(0)], feeds)[0]

    assert maps(contract.MODE_FORWARD).shape[0] == 0
    np.testing.assert_array_equal(maps(contract.MODE_EXPLAIN), maps(contract.MODE_RECIPROCAM))
    meta = contract.Contract.from_metadata(s.get_modelmeta().custom_metadata_map)
    assert [t.reciprocam for t in meta.targets] == ["onnxcam_reciprocam_0", "onnxcam_reciprocam_1"]
    assert meta.targets[0].reciprocam_gap and not meta.targets[1].reciprocam_gap


def test_explainer_reads_reciprocam_from_its_one_run(resnet) -> None:
    """``-m reciprocam`` alone is one mode-4 run; with a gradient method, one mode-0 run."""
    from onnxcam.engine import Explainer

    _, path, _ = resnet
    ex = Explainer(path, device="cpu")
    assert ex.plan("reciprocam").mode == contract.MODE_RECIPROCAM
    assert ex.plan("reciprocam,gradcam").mode == contract.MODE_EXPLAIN
    runs: list = []
    ex.session = _Counting(ex.session, runs)
    x = np.random.default_rng(4).normal(size=(2, 3, 64, 64)).astype(np.float32)
    alone = ex.explain_tensor(x, "reciprocam")
    assert len(runs) == 1
    both = ex.explain_tensor(x, "reciprocam,gradcam")
    assert len(runs) == 2
    for a, b in zip(alone, both, strict=True):
        np.testing.assert_allclose(a.maps["reciprocam"].raw, b.maps["reciprocam"].raw, atol=1e-6)


class _Counting:
    """A session stand-in that records each ``run``."""

    def __init__(self, session, runs: list) -> None:
        self._s, self.runs = session, runs

    def run(self, names, feeds, *args):
        self.runs.append(names)
        return self._s.run(names, feeds, *args)

    def __getattr__(self, name: str):
        return getattr(self._s, name)


def test_skip_connection_around_the_target_is_repeated_per_image(
    tiny_torch_model, tmp_path
) -> None:
    """Target inside a residual block: the head reads the block's input from the image's own
    run, image i's for its h·w copies."""
    path = tmp_path / "tiny.cam.onnx"
    export_torch(tiny_torch_model, (1, 3, 32, 32), output=path, layers=["block.1"],
                 reciprocam=True)  # fmt: skip
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    cls, m = _maps(path, x, 0)
    ref = _reference(tiny_torch_model, "block.1", x, cls)
    np.testing.assert_allclose(m, ref, atol=2e-5, rtol=1e-5)


def test_runtime_method_reads_the_graph_and_asks_for_the_flag(resnet, tiny_onnx) -> None:
    _, path, _ = resnet
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    exps = Explainer(path).explain_tensor(x, "reciprocam")
    _, m = _maps(path, x, 0)
    for e, mi in zip(exps, m, strict=True):
        want = (mi - mi.min()) / (mi.max() - mi.min())  # OpenVINO XAI's per-map min-max
        np.testing.assert_allclose(e.maps["reciprocam"].feature, want, atol=1e-5)
    with pytest.raises(MethodError, match="--reciprocam"):
        Explainer(tiny_onnx).explain_tensor(np.zeros((1, 3, 32, 32), np.float32), "reciprocam")


# --- ViT-ReciproCAM (token layers) -----------------------------------------------------------
class _Block(torch.nn.Module):
    """A pre-norm transformer block whose reshapes keep the batch as -1 (no ``x.shape``
    reads: OpenVINO XAI's ViT parser wants the residual stream read by norm1 and the Add only)."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.n, self.d = heads, tokens, dim
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim)
        )

    def forward(self, x):
        n, d, e = self.n, self.d, self.d // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(-1, n, 3, self.heads, e).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) * e**-0.5, dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(-1, n, d))
        return x + self.mlp(self.norm2(x))


class _TinyViT(torch.nn.Module):
    def __init__(self, size: int = 32, patch: int = 8, dim: int = 32) -> None:
        super().__init__()
        tokens = 1 + (size // patch) ** 2
        self.patch = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = torch.nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
        self.blocks = torch.nn.Sequential(*[_Block(dim, 2, tokens) for _ in range(2)])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def _vit_reference(model: _TinyViT, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """OpenVINO XAI's ViT-ReciproCAM in torch: copy j weighs the patch tokens of the last
    block's input X *and* of its norm1 output by a 3×3 Gaussian centred on patch j (class
    token kept), and the rest of the model runs on them."""
    block = model.blocks[-1]
    side = round((block.n - 1) ** 0.5)
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    grid = torch.zeros(side * side, 1, side, side)
    grid.view(side * side, -1)[torch.arange(side * side), torch.arange(side * side)] = 1
    g = torch.nn.functional.conv2d(grid, kernel[None, None], padding=1).reshape(side * side, -1)
    mask = torch.cat([torch.ones(side * side, 1), g], dim=1)[:, :, None]  # [n, 1 + n, 1]
    out = []
    for b in range(len(x)):
        with torch.no_grad():
            seen = {}
            hooks = [
                block.register_forward_pre_hook(lambda m, i: seen.setdefault("X", i[0])),
                block.norm1.register_forward_hook(lambda m, i, o: seen.setdefault("T", o)),
            ]
            model(torch.from_numpy(x[b : b + 1]))
            for hk in hooks:
                hk.remove()
            hooks = [
                block.register_forward_pre_hook(lambda m, i: (seen["X"] * mask,)),
                block.norm1.register_forward_hook(lambda m, i, o: seen["T"] * mask),
            ]
            logits = model(torch.from_numpy(np.repeat(x[b : b + 1], len(mask), axis=0)))
            for hk in hooks:
                hk.remove()
        out.append(logits[:, cls[b]].reshape(side, side).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    model = _TinyViT().eval()
    tmp = tmp_path_factory.mktemp("vit")
    plain = tmp / "vit.onnx"
    plain.write_bytes(plain_onnx(model, (1, 3, 32, 32)))
    path = tmp / "vit.cam.onnx"
    res = export_torch(model, (1, 3, 32, 32), output=path, reciprocam=True)
    return model, plain, path, res


def test_vit_reciprocam_masks_the_tokens_and_the_residual(vit) -> None:
    model, _, path, res = vit
    t = res.targets[0]
    assert t.tokens is not None and "blocks.1/norm1" in t.tensor  # the default token layer
    x = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
    cls, m = _maps(path, x, 0)
    np.testing.assert_allclose(m, _vit_reference(model, x, cls), atol=2e-5, rtol=1e-5)


# --- parity with OpenVINO XAI ----------------------------------------------------------------
OV_SCRIPT = """
import sys, numpy as np, openvino as ov, openvino_xai as xai
model = ov.Core().read_model(sys.argv[1])
target = sys.argv[2] or None
method = getattr(xai.Method, sys.argv[5])
mx = xai.insert_xai(model, task=xai.Task.CLASSIFICATION, explain_method=method,
                    target_layer=target, embed_scaling=False)
# float32: the CPU plugin's default precision hint is bf16 where the CPU has it (AMX/AVX-512)
cm = ov.Core().compile_model(mx, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
x = np.load(sys.argv[3])
# the inserted branch reshapes to [1, classes, h, w]: one image per inference
maps = np.concatenate([cm(x[i:i + 1])["saliency_map"] for i in range(len(x))])
np.save(sys.argv[4], maps)
print("ok")
"""


def _ovxai(tmp_path, onnx_path, target: str, x: np.ndarray, method: str = "RECIPROCAM"):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "ov.npy"
    r = subprocess.run(
        [
            OVXAI,
            "-c",
            OV_SCRIPT,
            str(onnx_path),
            target,
            str(tmp_path / "x.npy"),
            str(out),
            method,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    return np.load(out)


@pytest.mark.skipif(not OVXAI, reason="ONNXCAM_OVXAI_PYTHON is not set (see .ci/run)")
@pytest.mark.parametrize(
    ("net", "size", "layer", "ov_target"),
    [
        ("resnet18", 64, "layer4", ""),  # OpenVINO XAI's own choice: the last spatial node
        ("resnet18", 64, "layer3", "/layer3/layer3.1/relu_1/Relu"),
        ("mobilenet_v3_small", 96, "features", ""),
    ],
)
def test_parity_with_openvino_xai(tmp_path, net, size, layer, ov_target) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, net)(num_classes=10).eval()
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(plain_onnx(model, (1, 3, size, size)))
    path = tmp_path / "m.cam.onnx"
    export_torch(model, (1, 3, size, size), output=path, layers=[layer], reciprocam=True)
    x = np.random.default_rng(3).normal(size=(2, 3, size, size)).astype(np.float32)
    cls, m = _maps(path, x, 0)
    ov = _ovxai(tmp_path, plain, ov_target, x)  # [B, classes, h, w], raw logits
    got = ov[np.arange(len(x)), cls]
    np.testing.assert_allclose(m, got, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not OVXAI, reason="ONNXCAM_OVXAI_PYTHON is not set (see .ci/run)")
def test_vit_parity_with_openvino_xai(tmp_path, vit) -> None:
    """ViTReciproCAM's defaults (Gaussian masks, class token kept, the block before the last
    one's output as its target) against onnxcam's default token layer (the last norm1)."""
    _, plain, path, _ = vit
    x = np.random.default_rng(5).normal(size=(2, 3, 32, 32)).astype(np.float32)
    cls, m = _maps(path, x, 0)
    ov = _ovxai(tmp_path, plain, "", x, "VITRECIPROCAM")
    np.testing.assert_allclose(m, ov[np.arange(len(x)), cls], atol=1e-4, rtol=1e-4)
