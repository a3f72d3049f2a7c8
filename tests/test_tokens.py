"""Token target layers: a transformer's ``[B, P + N, C]`` tokens explained as an NHWC map.

Random-init timm ViTs (configs only, nothing is downloaded) at small image sizes: 64×64 (a
4×4 patch grid) for the full 12-block ``vit_tiny_patch16_224``, and 2-block variants for the
prefix kinds (class, class + distillation, class + 4 register tokens, none) and a non-square
input (96×64 → a 6×4 grid, rows ≠ columns). Torch references are float64 copies of the same
weights, hooked at the target module, their tokens laid out with ``TokenGrid.to_map``.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch_reference import max_rel_err, torch_layer_gradients

import onnxcam.methods  # registers the host methods in METHODS
import onnxcam.perturbation  # noqa: F401  (and the perturbation family)
from onnxcam import contract
from onnxcam.cli import cli
from onnxcam.contract import NHWC, Contract, InputSpec, ScoreSpec, TargetLayer, TokenGrid
from onnxcam.engine import Explainer
from onnxcam.errors import LayerNotFoundError, MethodError
from onnxcam.export import ExportResult, export_onnx, export_torch, list_layers, plain_onnx
from onnxcam.perturbation import PerturbationOptions
from onnxcam.registry import METHODS

timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
TINY = "vit_tiny_patch16_224"
# key → (timm model, keyword arguments); random init, 10 classes
MODELS = {
    "vit": (TINY, {"img_size": 64}),  # the real 12-block architecture, 4×4 patches
    "deit": ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 2}),
    "reg": (TINY, {"img_size": 64, "depth": 2, "reg_tokens": 4}),
    "avg": (TINY, {"img_size": 64, "depth": 2, "class_token": False, "global_pool": "avg"}),
    "rect": (TINY, {"img_size": (96, 64), "depth": 2}),  # 6 rows × 4 columns of patches
}
PREFIX = {"vit": 1, "deit": 2, "reg": 5, "avg": 0, "rect": 1}
GRADIENT_METHODS = [
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam-elementwise",
]
FAST = PerturbationOptions(batch_size=64, scorecam_topk=4, ss_samples=2, is_steps=2)
"""Perturbation knobs that keep the Score-CAM family to a few forward passes."""


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch on one thread while this module runs (restored after): on a small shared machine
    its intra-op threads contend with onnxruntime's (see tests/test_parity_tokens.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _model(key: str) -> torch.nn.Module:
    name, kw = MODELS[key]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


@functools.cache
def _double(key: str) -> torch.nn.Module:
    """The same weights in float64 (the reference for gradients and head logits)."""
    return copy.deepcopy(_model(key)).double().eval()


def _hw(key: str) -> tuple[int, int]:
    size = MODELS[key][1]["img_size"]
    return size if isinstance(size, tuple) else (size, size)


@functools.cache
def _plain(key: str) -> bytes:
    return plain_onnx(_model(key), (1, 3, *_hw(key)))


def _input(key: str, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, *_hw(key))).astype(np.float32)


def _session(res: ExportResult) -> ort.InferenceSession:
    return ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])


def _find(found, fragment: str):
    """The one candidate whose tensor name contains ``fragment``."""
    hits = [c for c in found if fragment in c.tensor]
    assert len(hits) == 1, f"{fragment}: {[c.tensor for c in hits]}"
    return hits[0]


@functools.cache
def _vit_export() -> ExportResult:
    """The 12-block ViT with two token targets: the default layer (last block's norm1) and the
    output of block 5 (a residual sum, deep inside the network)."""
    return export_torch(_model("vit"), (1, 3, 64, 64), layers=["blocks.11.norm1", "blocks.5"])


@functools.cache
def _rect_explainer() -> Explainer:
    """The non-square 2-block ViT exported with its default layer."""
    return Explainer(export_onnx(_plain("rect")).model.SerializeToString(), device="cpu")


# ---- the contract ------------------------------------------------------------------------------
def test_token_grid_round_trips_through_the_contract() -> None:
    grid = TokenGrid(prefix=2, rows=6, cols=4)
    shape = ("batch", 6, 4, 192)
    targets = [
        TargetLayer(0, "blocks.11.norm1", "/ln", NHWC, shape, "LayerNormalization", tokens=grid),
        TargetLayer(1, "layer4", "/relu", "NCHW", ("batch", 8, 6, 4), "Relu"),
    ]
    c = Contract(
        targets, InputSpec("input", "NCHW", 96, 64), ScoreSpec("logits", "logits", None, 10)
    )
    meta = c.to_metadata()
    written = json.loads(meta[contract.META_TARGETS])
    assert written[0]["tokens"] == {"prefix": 2, "rows": 6, "cols": 4}
    assert "tokens" not in written[1]  # omitted for a map
    back = Contract.from_metadata(meta)
    assert back.targets[0].tokens == grid and back.targets[1].tokens is None
    assert back.targets[0].layout == NHWC and back.targets[0].spatial == (6, 4)
    assert back.targets[0].channels == 192
    assert [t.to_json() for t in back.targets] == [t.to_json() for t in targets]
    written[0]["tokens"]["from_a_newer_exporter"] = 1  # unknown keys are ignored
    meta[contract.META_TARGETS] = json.dumps(written)
    assert Contract.from_metadata(meta).targets[0].tokens == grid


def test_token_grid_to_map_drops_the_prefix_and_reads_row_major() -> None:
    grid = TokenGrid(prefix=2, rows=3, cols=5)
    tokens = np.arange(2 * 17 * 4, dtype=np.float32).reshape(2, 17, 4)
    m = grid.to_map(tokens)
    assert m.shape == (2, 3, 5, 4)
    for r in range(3):
        for c in range(5):
            np.testing.assert_array_equal(m[:, r, c], tokens[:, 2 + r * 5 + c])


# ---- finding prefix tokens and the grid in the graph -------------------------------------------
@pytest.mark.parametrize("key", list(MODELS))
def test_prefix_tokens_and_grid_are_found_in_the_graph(key: str) -> None:
    """Class (1), class + distillation (2), class + 4 register tokens (5), none (avg-pooled),
    and a non-square grid: what timm's model says, read from the ONNX graph alone."""
    model = _model(key)
    prefix = PREFIX[key]
    assert model.num_prefix_tokens == prefix
    rows, cols = model.patch_embed.grid_size
    assert (rows * 16, cols * 16) == _hw(key)
    found = list_layers(_plain(key))
    tokens = [c for c in found if c.tokens is not None]
    # the patch embedding's tokens have no prefix yet; after the concat every tensor has it
    assert tokens[0].tokens == TokenGrid(0, rows, cols) and "patch_embed" in tokens[0].tensor
    assert {c.tokens for c in tokens} == {TokenGrid(0, rows, cols), TokenGrid(prefix, rows, cols)}
    norm1 = _find(found, "blocks.0/norm1/")
    assert norm1.tokens == TokenGrid(prefix, rows, cols) and norm1.layout == NHWC
    assert norm1.shape[1:] == (prefix + rows * cols, 192)
    assert norm1.map_shape[1:] == [rows, cols, 192]
    assert norm1.kind == f"tokens({prefix}+{rows}x{cols})"
    (default,) = [c for c in found if c.default]
    assert default.tokens == TokenGrid(prefix, rows, cols) and default.live
    if prefix:  # a class token read by the head: the last block's norm1
        assert f"blocks.{len(model.blocks) - 1}/norm1/" in default.tensor


def test_pooled_transformer_default_is_its_last_tokens() -> None:
    found = list_layers(_plain("avg"))
    (default,) = [c for c in found if c.default]
    assert default.tensor == [c for c in found if c.tokens is not None][-1].tensor


def test_non_square_grid_keeps_rows_and_columns() -> None:
    """96×64 input → 6 rows × 4 columns: the patch tokens' map equals torch's patch-embedding
    convolution output (NCHW → NHWC), and norm1's tokens map with ``TokenGrid.to_map``."""
    model = _model("rect")
    assert tuple(model.patch_embed.grid_size) == (6, 4)
    res = export_torch(model, (1, 3, 96, 64), layers=["patch_embed", "blocks.1.norm1"])
    assert [t.tokens for t in res.targets] == [TokenGrid(0, 6, 4), TokenGrid(1, 6, 4)]
    assert [list(t.shape[1:]) for t in res.targets] == [[6, 4, 192]] * 2
    x = _input("rect")
    names = [t.activation for t in res.targets]
    patches, norm1 = _session(res).run(names, {"input": x})
    captured = {}
    hook = model.blocks[1].norm1.register_forward_hook(lambda _m, _i, o: captured.update(t=o))
    try:
        with torch.no_grad():
            conv = model.patch_embed.proj(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
            model(torch.from_numpy(x))
    finally:
        hook.remove()
    assert max_rel_err(patches, conv) <= 1e-5
    assert max_rel_err(norm1, TokenGrid(1, 6, 4).to_map(captured["t"].numpy())) <= 1e-5


# ---- values: activations, gradients, liveness ---------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("classes", [None, [3, 7]])
def test_token_activations_and_gradients_match_float64_autograd(classes) -> None:
    res = _vit_export()
    assert [t.tokens for t in res.targets] == [TokenGrid(1, 4, 4)] * 2
    x = _input("vit", 2, seed=1)
    feeds = {"input": x}
    if classes is not None:
        feeds[contract.CLASS_INPUT] = np.array(classes, dtype=np.int64)
    names = [n for t in res.targets for n in (t.activation, t.gradient)]
    *got, explained = _session(res).run([*names, contract.CLASS_OUTPUT], feeds)
    cls = None if classes is None else np.array(classes)
    _, acts, grads = torch_layer_gradients(
        _double("vit"), x.astype(np.float64), ["blocks.11.norm1", "blocks.5"], cls
    )
    if classes is not None:
        np.testing.assert_array_equal(explained, classes)
    for k, t in enumerate(res.targets):
        A, G = got[2 * k], got[2 * k + 1]
        assert A.shape == G.shape == (2, 4, 4, 192)
        assert np.abs(G).max() > 0
        ref_a, ref_g = t.tokens.to_map(acts[k]), t.tokens.to_map(grads[k])
        assert max_rel_err(A, ref_a) <= 1e-4, t.name
        assert max_rel_err(G, ref_g) <= 1e-4, t.name


def test_dead_and_live_token_layers_of_a_vit() -> None:
    """After the last attention only the class token reaches the head: the last block's
    norm2 and the final norm are dead, its norm1 (which feeds that attention) is live and
    the default; an export of a dead layer is refused with a hint to the default."""
    found = list_layers(_plain("vit"))
    norm1 = _find(found, "blocks.11/norm1/")
    norm2 = _find(found, "blocks.11/norm2/")
    final = _find(found, "/norm/LayerNormalization")
    assert norm1.live and norm1.default and sum(c.default for c in found) == 1
    assert not norm2.live and not final.live
    assert _find(found, "blocks.10/norm2/").live
    last_live = [c for c in found if c.live][-1]
    assert found.index(last_live) < found.index(norm2)
    with pytest.raises(LayerNotFoundError, match="does not depend on the grid positions") as e:
        export_onnx(_plain("vit"), layers=[final.tensor])
    assert norm1.tensor in str(e.value) and "prefix tokens" in str(e.value)
    with pytest.raises(LayerNotFoundError, match="does not depend on the grid positions"):
        export_onnx(_plain("vit"), layers=[norm2.tensor])
    assert export_onnx(_plain("vit"), verify=False).targets[0].tensor == norm1.tensor


def test_dead_torch_module_is_refused() -> None:
    with pytest.raises(LayerNotFoundError, match="does not depend on the grid positions"):
        export_torch(_model("rect"), (1, 3, 96, 64), layers=["norm"])


# ---- the runtime on a token layer ------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_the_default_token_layer(method: str) -> None:
    ex = _rect_explainer()
    (t,) = ex.info.targets
    assert t.tokens == TokenGrid(1, 6, 4) and t.layout == NHWC
    assert t.producer == "LayerNormalization" and t.head_input
    x = _input("rect")
    if method == "cam":  # no GAP → Linear head after a token layer
        with pytest.raises(MethodError, match=r"CAM needs a GAP → Linear classifier head"):
            ex.explain_tensor(x, [method])
        return
    if method in ("reciprocam", "shapleycam"):  # its export flag; the head here is curved
        flag = "--reciprocam" if method == "reciprocam" else "--head-gradients"
        with pytest.raises(MethodError, match=flag):
            ex.explain_tensor(x, [method])
        return
    if METHODS[method].family == "pixel":  # an --input-gradient / --rules / --fullgrad export
        with pytest.raises(MethodError, match=r"with --(input-gradient|rules|fullgrad)"):
            ex.explain_tensor(x, [method])
        return
    exps = ex.explain_tensor(x, [method], perturbation=FAST)
    size = (96, 64) if METHODS[method].map_size == "input" else (6, 4)
    for e in exps:
        m = e.maps[method]
        assert m.raw.shape == m.feature.shape == size
        assert np.isfinite(m.raw).all() and np.isfinite(m.feature).all()
        assert m.feature.min() >= 0 and m.feature.max() <= 1 and np.ptp(m.feature) > 0
        assert m.input.shape == (96, 64)


def _logits_with_patch_tokens(key: str, x: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """float64 torch logits with the last block's norm1 output replaced (forward hook) by
    ``patches`` [m, rows, cols, C] on the patch tokens, its prefix tokens kept."""
    model, prefix = _double(key), PREFIX[key]
    seq = torch.from_numpy(patches.astype(np.float64).reshape(len(patches), -1, patches.shape[-1]))

    def hook(_m, _i, out):
        out = out.clone()
        out[:, prefix:] = seq
        return out

    handle = model.blocks[-1].norm1.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x.astype(np.float64))).numpy()
    finally:
        handle.remove()


@pytest.mark.parametrize("key", ["rect", pytest.param("vit", marks=pytest.mark.model)])
def test_head_path_of_a_token_layer_matches_torch(key: str) -> None:
    """Mode 2 (Ablation-CAM's path): the map fed to ``onnxcam_head_input_0`` replaces the
    patch tokens, the class token and the skip connection come from the image fed in the same
    run (one image for every row, or one per row). The non-square 2-block ViT's default
    layer, and the 12-block ViT's last norm1 (exported by torch module name)."""
    if key == "rect":
        sess, t = _rect_explainer().session, _rect_explainer().info.targets[0]
    else:
        res = _vit_export()
        sess, t = _session(res), res.targets[0]
    assert t.head_input == contract.head_input_name(0) and t.head_output
    x = _input(key, 2, seed=2)
    A, logits = sess.run([t.activation, "logits"], {"input": x})

    def head(image: np.ndarray, a: np.ndarray) -> np.ndarray:
        mode = np.array(contract.MODE_HEAD, dtype=np.int64)
        feeds = {"input": image, contract.MODE_INPUT: mode, t.head_input: a}
        return sess.run([t.head_output], feeds)[0]

    scale = np.abs(logits).max()
    for i in range(2):  # the unperturbed map gives the model's logits back
        assert np.abs(head(x[i : i + 1], A[i : i + 1]) - logits[i]).max() <= 1e-5 * scale
    assert np.abs(head(x, A) - logits).max() <= 1e-5 * scale
    rng = np.random.default_rng(0)
    perturbed = np.repeat(A[:1], 3, axis=0)
    perturbed[0, ..., 5] = 0  # channel 5 ablated at every patch (Ablation-CAM)
    perturbed[1, 2, 1, :] = 0  # one patch token zeroed
    perturbed[2] += rng.normal(0, 0.5, perturbed[2].shape).astype(np.float32)
    got = head(x[:1], perturbed)  # one image, three rows
    ref = _logits_with_patch_tokens(key, np.repeat(x[:1], 3, axis=0), perturbed)
    assert max_rel_err(got, ref) <= 1e-4
    moved = np.abs(ref - logits[:1]).max(axis=1)
    assert np.all(moved > 10 * 1e-4 * scale), moved  # not vacuous: well above the tolerance
    per_row = A.copy()
    per_row[..., 7] = 0
    per_row[1] += rng.normal(0, 0.5, per_row[1].shape).astype(np.float32)
    got = head(x, per_row)  # one image per row: each row's own class token and skip
    assert max_rel_err(got, _logits_with_patch_tokens(key, x, per_row)) <= 1e-4


def test_in_graph_heatmaps_on_a_token_layer_equal_the_runtime() -> None:
    res = export_onnx(_plain("rect"), heatmaps="gradcam,layercam")
    (t,) = res.targets
    assert t.tokens == TokenGrid(1, 6, 4) and set(t.heatmaps) == {"gradcam", "layercam"}
    with_maps = Explainer(res.model.SerializeToString(), device="cpu")
    methods = ["gradcam", "layercam"]
    assert all(c.graph for c in with_maps.plan(methods).calls)  # taken from the graph
    x = _input("rect")
    got = with_maps.explain_tensor(x, methods)
    ref = _rect_explainer().explain_tensor(x, methods)  # computed on the host
    for m in methods:
        a = np.stack([e.maps[m].input for e in got])
        b = np.stack([e.maps[m].input for e in ref])
        assert a.shape == (2, 96, 64)
        assert np.abs(a - b).max() <= 1e-5, m
        assert np.abs(b[0] - b[1]).max() > 0.05  # the maps depend on the image


def test_layers_cli_shows_token_layers_and_dead_ones(tmp_path) -> None:
    path = tmp_path / "vit.onnx"
    path.write_bytes(_plain("vit"))
    r = CliRunner().invoke(cli, ["layers", str(path)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    (default,) = [line for line in lines if line.startswith("*")]
    assert "blocks.11/norm1/" in default and "LayerNormalization" in default
    assert default.endswith("tokens(1+4x4)")
    final = next(line for line in lines if "/norm/LayerNormalization" in line)
    assert final.endswith("batchx17x192  tokens(1+4x4)  dead")
    assert any("patch_embed/proj" in line and line.endswith("NCHW") for line in lines)
    assert sum(line.endswith("dead") for line in lines) > 5
    r = CliRunner().invoke(cli, ["layers", str(path), "--json"])
    assert r.exit_code == 0, r.output
    listed = {c["tensor"]: c for c in json.loads(r.stdout)}
    entry = listed[next(t for t in listed if "blocks.11/norm1/" in t)]
    assert entry["default"] and entry["live"] and entry["layout"] == "tokens(1+4x4)"
    assert entry["shape"][1:] == [17, 192] and entry["map_shape"][1:] == [4, 4, 192]
    assert not listed[next(t for t in listed if "/norm/LayerNormalization" in t)]["live"]


# ---- the C++ core on a token layer's NHWC outputs ----------------------------------------------
def _compiler() -> str | None:
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


@pytest.fixture(scope="module")
def cpp(tmp_path_factory):
    """``onnxcam.cpp`` bound to a fresh build of the shared library alone (as
    tests/test_cpp_bindings.py builds it; skipped without cmake or a compiler)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if _compiler() is None:
        pytest.skip("no C++ compiler found")
    build = tmp_path_factory.mktemp("cpp_tokens")
    off = ["-DONNXCAM_BUILD_TESTS=OFF", "-DONNXCAM_BUILD_EXAMPLES=OFF"]
    for cmd in (
        ["cmake", "-S", ROOT / "cpp_bindings", "-B", build, "-DCMAKE_BUILD_TYPE=Release", *off],
        ["cmake", "--build", build, "-j", "2", "--target", "onnxcam_post"],
    ):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    from onnxcam import cpp as core

    shared = {".so", ".dylib", ".dll"}
    core.load(next(p for p in build.glob("*onnxcam_post.*") if p.suffix in shared))
    return core


@pytest.mark.model
def test_cpp_core_maps_a_token_layer_like_python(cpp) -> None:
    ex = _rect_explainer()
    (t,) = ex.info.targets
    x = _input("rect")
    A, G = ex.session.run([t.activation, t.gradient], {ex.info.input.name: x})
    assert A.shape == (2, 6, 4, 192)  # NHWC, as the graph publishes a token layer
    exps = ex.explain_tensor(x, GRADIENT_METHODS)
    for m in GRADIENT_METHODS:
        raw = np.stack([e.maps[m].raw for e in exps])
        got_raw = cpp.cam_map(m, A, G, layout="NHWC", relu=False, normalize=False)
        assert got_raw.shape == (2, 6, 4)
        assert np.abs(got_raw - raw).max() <= 1e-5 * np.abs(raw).max(), m
        feature = np.stack([e.maps[m].feature for e in exps])
        np.testing.assert_allclose(cpp.cam_map(m, A, G, layout="NHWC"), feature, atol=1e-5)
