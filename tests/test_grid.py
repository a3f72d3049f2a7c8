"""Which tensors are feature maps on the image grid: from data flow, never from shapes.

Token models must not be explained through an attention internal: the default layer is either
a real map on the image's rows and columns or a refusal that lists the candidates.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from onnxcam.contract import TokenGrid
from onnxcam.errors import ExportError, LayerNotFoundError
from onnxcam.export import export_onnx, list_layers, plain_onnx
from onnxcam.export.graph import GraphView
from onnxcam.export.grid import spatial_grids
from onnxcam.export.layers import image_input, input_layout


class TinyViT(nn.Module):
    """Patch embedding (4×4 patches of 32×32 → 8×8 tokens), a class token, one attention
    block, the class token into a linear head — the ViT recipe, small."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 65, dim))
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 64, C]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        b, n, c = t.shape
        qkv = self.qkv(self.norm(t)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, d]
        attn = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        t = t + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return self.head(self.norm(t)[:, 0])


class TokensToGrid(nn.Module):
    """Tokens viewed back as a channels-last grid (Swin-style), then convolved and pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        t = self.mix(self.patch(x).flatten(2).transpose(1, 2))  # [B, 64, 8] tokens
        g = t.reshape(x.shape[0], 8, 8, 8)  # [B, H, W, C]
        y = torch.relu(self.conv(g.permute(0, 3, 1, 2)))
        return self.fc(y.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle between two convolutions: the grid survives it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))


def _onnx(module: nn.Module, shape=(1, 3, 32, 32)) -> bytes:
    torch.manual_seed(0)
    return plain_onnx(module.eval(), shape)


def _grids(model: bytes):
    view = GraphView(onnx.load_from_string(model))
    image = image_input(view)
    return view, spatial_grids(view, image, input_layout(view, image))


def test_vit_default_is_the_last_live_token_layer_and_attention_is_refused() -> None:
    """The patch tokens stop reaching the score at the last attention (the head reads the class
    token): the default is the normalised tokens that feed it; later token tensors are dead
    and refused; attention internals are never candidates."""
    torch.manual_seed(0)
    model = _onnx(TinyViT())
    view, _ = _grids(model)
    found = list_layers(model)
    default = next(c for c in found if c.default)
    assert default.tokens == TokenGrid(1, 8, 8) and default.op == "LayerNormalization"
    assert default.live and default.map_shape[1:] == [8, 8, 16]
    final = [c for c in found if c.op == "LayerNormalization"][-1]  # the head's norm
    assert final.tokens is not None and not final.live
    with pytest.raises(LayerNotFoundError, match="does not depend on the grid positions"):
        export_onnx(model, layers=[final.tensor])
    assert export_onnx(model).targets[0].tensor == default.tensor
    computed = lambda n: not any(view.is_const(i) for i in n.input)  # noqa: E731
    for op in ("Softmax", "MatMul"):  # attention probabilities, q·kᵀ
        attention = next(n.output[0] for n in view.graph.node if n.op_type == op and computed(n))
        with pytest.raises(LayerNotFoundError, match="feature map"):
            export_onnx(model, layers=[attention])


def test_token_axis_records_the_class_token_as_prefix() -> None:
    view, grids = _grids(_onnx(TinyViT()))
    tokens = [g for t, g in grids.items() if g.tokens and view.rank(t) == 3]
    assert {g.prefix for g in tokens} == {0, 1}  # patch tokens alone, then with the class token
    assert all(g.size == (8, 8) for g in tokens)


def test_tokens_viewed_as_a_grid_are_channels_last_on_the_right_grid() -> None:
    model = _onnx(TokensToGrid())
    found = {c.tensor: c for c in list_layers(model)}
    nhwc = [c for c in found.values() if c.layout == "NHWC" and c.tokens is None]
    assert nhwc and all(c.shape[1:] == (8, 8, 8) for c in nhwc)
    tokens = [c for c in found.values() if c.tokens is not None]  # before the view: tokens
    assert tokens and all(c.tokens == TokenGrid(0, 8, 8) and c.live for c in tokens)
    res = export_onnx(model, layers=[nhwc[0].tensor])
    t = res.targets[0]
    assert t.layout == "NHWC" and t.spatial == (8, 8)
    default = export_onnx(model).targets[0]
    assert default.layout == "NCHW" and default.producer == "Relu"


def test_channel_shuffle_keeps_the_grid() -> None:
    found = list_layers(_onnx(ChannelShuffle()))
    ops = [c.op for c in found]
    assert "Reshape" in ops  # the shuffled map itself is a candidate, NCHW, on the 32×32 grid
    shuffled = next(c for c in found if c.op == "Reshape")
    assert shuffled.layout == "NCHW" and shuffled.shape[2:] == (32, 32)
    assert found[-1].default and found[-1].op == "Relu"


def test_shapes_alone_never_make_a_feature_map() -> None:
    """A [B, 8, 4, 4] tensor made by reshaping a vector is not on the image grid, whatever
    its shape looks like."""

    class VectorToMap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.lin, self.fc = nn.Linear(4, 128), nn.Linear(8, 3)

        def forward(self, x):
            v = self.lin(torch.relu(self.conv(x)).mean((2, 3)))
            m = self.conv2(v.reshape(x.shape[0], 8, 4, 4))
            return self.fc(m.mean((2, 3)))

    found = list_layers(_onnx(VectorToMap(), (1, 3, 16, 16)))
    assert all(c.shape[2:] == (16, 16) for c in found)
    assert not any(c.default for c in found)  # a map-shaped tensor from a vector follows
    with pytest.raises(ExportError, match="no default target layer"):
        export_onnx(_onnx(VectorToMap(), (1, 3, 16, 16)))
