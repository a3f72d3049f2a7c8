"""The model sweep: random-init timm and transformers models, exported through onnxcam.

One row per model (``CASES``): family, how to build it (small variant, small input, 10
classes, never a download), the module a practitioner would explain by default, one earlier
module, and how to read the model's own feature grid. ``evaluate`` does the heavy work once
per model (two exports, onnxruntime, a float64 torch reference, the Explainer) and returns a
plain summary; ``tests/test_model_sweep.py`` asserts on it and ``bench/sweep.py`` tabulates it.

Per model:

* export **A**: ``export_torch(model, (1, 3, H, W))``, the exporter's default layer;
* export **B**: ``export_torch(model, ..., layers=[default, earlier])``, the table's modules;
* the reference: ``torch.autograd.grad`` in float64 (the same weights cast to double) of the
  explained logit (onnxruntime's top-1 per sample, summed over the batch) w.r.t. the module
  outputs, caught with forward hooks; token outputs laid out with ``TokenGrid.to_map``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
from torch_reference import max_rel_err

TOL = 1e-4
"""Max relative error (max |Δ| / max |ref|) of exported activations and gradients."""
BATCH = 2
SEEDS = (1, 2)
"""Input seeds: the second is used only where the first meets a float32 ReLU/max kink."""


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    """timm model name, or ``hf_vit`` / ``hf_resnet`` / ``hf_convnext`` (transformers)."""
    size: int
    default: str
    """The module a practitioner explains (its output must be the exporter's default)."""
    earlier: str
    """One earlier module, exported through ``layers=[...]``."""
    grid: str
    """How to read the model's own feature grid from ``forward_features`` (``grid_of``)."""
    kwargs: dict = field(default_factory=dict)
    id: str = ""
    """Test id (defaults to ``name``)."""
    cli: bool = False
    """Also run the real ``onnxcam run`` CLI on the default export."""
    refused: str = ""
    """Why onnxcam refuses this model (it cannot follow the grid; it must say so, never
    explain a wrong tensor): the tests check the refusal instead of the maps."""

    @property
    def key(self) -> str:
        return self.id or self.name


# Family rules for the default layer (what a practitioner picks; pytorch-grad-cam's advice):
#   CNN                         the last feature map before global pooling (the last stage's
#                               output, or the head conv/norm that still sits before the pool)
#   class-token ViT/DeiT/EVA    the last block's norm1 (the patch tokens stop reaching the score
#                               at the last attention; its input norm is the last live tokens)
#   CaiT / XCiT                 the last class-attention block's norm1 (patch tokens reach the
#                               score only through the class-attention blocks' keys/values)
#   avg-pooled tokens           the last tokens before pooling (the last block's output, or the
#   (BEiT, EVA-02, GAP ViTs,    final norm where it is applied to the tokens before the pool)
#    Mixer, ResMLP, LeViT)
#   Swin / MaxViT / CoAtNet /   the last stage's output, or the final norm before the pool
#   PVT / DaViT                 (NHWC for timm Swin, NCHW for the others)
#   hybrids                     the last feature map / tokens before pooling
# fmt: off
CASES: list[Case] = [
    # -- CNNs: the last feature map before the global pool --------------------------------
    Case("resnet", "resnet18", 128, "layer4", "layer3", "nchw", cli=True),
    Case("resnet", "resnet50", 96, "layer4", "layer3", "nchw"),
    Case("resnext", "resnext26ts", 128, "stages.3", "stages.2", "nchw"),
    Case("regnet", "regnetx_002", 128, "s4", "s3", "nchw"),
    Case("regnet", "regnety_002", 128, "s4", "s3", "nchw"),
    # EfficientNet / MobileNetV2: conv_head → bn2 (+act) still runs before the pool
    Case("efficientnet", "efficientnet_b0", 128, "bn2", "blocks.5", "nchw"),
    Case("mobilenetv2", "mobilenetv2_050", 128, "bn2", "blocks.5", "nchw"),
    # MobileNetV3/V4, LCNet: pool → conv_head → flatten → classifier; the map is the last block
    Case("mobilenetv3", "mobilenetv3_small_050", 128, "blocks", "blocks.4", "nchw"),
    Case("mobilenetv3", "mobilenetv3_large_075", 128, "blocks", "blocks.5", "nchw"),
    Case("mobilenetv4", "mobilenetv4_conv_small", 128, "blocks", "blocks.3", "nchw"),
    Case("lcnet", "lcnet_050", 128, "blocks", "blocks.4", "nchw"),
    Case("convnext", "convnext_atto", 128, "stages.3", "stages.2", "nchw"),
    Case("densenet", "densenet121", 64, "features", "features.denseblock3", "nchw"),
    Case("ghostnet", "ghostnet_050", 128, "blocks", "blocks.6", "nchw"),
    Case("repvgg", "repvgg_a0", 128, "stages.3", "stages.2", "nchw"),
    Case("hgnet", "hgnetv2_b0", 128, "stages.3", "stages.2", "nchw"),
    # EfficientViT (MIT): head.in_conv, a 1x1 conv on the map, runs before the head's pool
    Case("efficientvit", "efficientvit_b0", 128, "head.in_conv", "stages.2", "nchw"),
    Case("byobnet", "test_byobnet", 128, "final_conv", "stages.2", "nchw"),
    Case("nfnet", "test_nfnet", 128, "final_act", "stages.2", "nchw"),
    # -- class-token transformers: the last block's norm1 ---------------------------------
    Case("vit", "vit_tiny_patch16_224", 64, "blocks.11.norm1", "blocks.5.norm1", "patch",
         {"img_size": 64}),
    Case("deit", "deit_tiny_patch16_224", 64, "blocks.11.norm1", "blocks.5", "patch",
         {"img_size": 64}),
    # distilled: class + distillation token (2 prefix tokens)
    Case("deit", "deit_tiny_distilled_patch16_224", 64, "blocks.11.norm1", "blocks.5.norm1",
         "patch", {"img_size": 64}, cli=True),
    # class token + 4 register tokens (5 prefix tokens)
    Case("vit-reg", "vit_tiny_patch16_224", 64, "blocks.11.norm1", "blocks.5.norm1", "patch",
         {"img_size": 64, "reg_tokens": 4}, id="vit_tiny_patch16_224-reg4"),
    Case("eva", "eva02_tiny_patch14_224", 56, "blocks.5.norm1", "blocks.2.norm1", "patch",
         {"img_size": 56, "depth": 6, "global_pool": "token"}, id="eva02_tiny_patch14_224-token"),
    # CaiT / XCiT: patch tokens reach the score only through the class-attention blocks, whose
    # norm1 normalises [class token, patch tokens]: the last one's is the last live tokens
    Case("cait", "cait_xxs24_224", 64, "blocks_token_only.1.norm1", "blocks.3.norm1", "patch",
         {"img_size": 64, "depth": 6}),
    Case("xcit", "xcit_nano_12_p16_224", 64, "cls_attn_blocks.1.norm1", "blocks.5", "tokens:1",
         {"img_size": 64}),
    # -- avg-pooled token models: the last tokens before the pool -------------------------
    # GAP ViT: blocks → norm (Identity: fc_norm is used) → mean of the patch tokens → fc_norm
    Case("vit-gap", "vit_tiny_patch16_224", 64, "blocks.11", "blocks.5.norm1", "patch",
         {"img_size": 64, "global_pool": "avg"}, id="vit_tiny_patch16_224-gap"),
    # 4 register tokens, no class token, GAP
    Case("vit-reg", "vit_little_patch16_reg4_gap_256", 64, "blocks.7", "blocks.3", "patch",
         {"img_size": 64, "depth": 8}),
    # BEiT and EVA-02 pool by mean by default (fc_norm after the pool)
    Case("beit", "beit_base_patch16_224", 64, "blocks.3", "blocks.1.norm1", "patch",
         {"img_size": 64, "embed_dim": 192, "depth": 4, "num_heads": 3}),
    Case("eva", "eva02_tiny_patch14_224", 56, "blocks.5", "blocks.2.norm1", "patch",
         {"img_size": 56, "depth": 6}),
    # MLP models: the final norm runs on the tokens, before the mean
    Case("mlp-mixer", "mixer_s16_224", 64, "norm", "blocks.3", "stem", {"img_size": 64}),
    Case("resmlp", "resmlp_12_224", 64, "norm", "blocks.5", "stem", {"img_size": 64}),
    Case("gmlp", "gmlp_ti16_224", 64, "norm", "blocks.5", "stem", {"img_size": 64}),
    # -- hierarchical transformers: the final norm / last stage output --------------------
    Case("swin", "swin_tiny_patch4_window7_224", 128, "norm", "layers.2", "nhwc",
         {"img_size": 128, "window_size": 4, "depths": (2, 2, 2, 2)}, cli=True),
    Case("swin", "swinv2_tiny_window8_256", 128, "norm", "layers.2", "nhwc",
         {"img_size": 128, "window_size": 4, "depths": (2, 2, 2, 2)}),
    Case("swin", "swinv2_cr_tiny_224", 128, "stages.3", "stages.2", "nchw",
         {"img_size": 128, "window_size": 4, "depths": (2, 2, 2, 2)}),
    Case("maxvit", "maxvit_rmlp_pico_rw_256", 128, "norm", "stages.2", "nchw", {"img_size": 128}),
    Case("coatnet", "coatnet_nano_rw_224", 128, "norm", "stages.2", "nchw", {"img_size": 128}),
    Case("pvt-v2", "pvt_v2_b0", 128, "stages.3", "stages.2", "nchw"),
    Case("davit", "davit_tiny", 128, "stages.3", "stages.2", "nchw"),
    # -- hybrids: the last feature map / tokens before the pool ---------------------------
    Case("mobilevit", "mobilevit_xxs", 128, "final_conv", "stages.3", "nchw"),
    Case(
        "mobilevit",
        "mobilevitv2_050",
        128,
        "stages.4",
        "stages.2",
        "nchw",
        refused="its unfold/fold (pixels within 2×2 patches moved to their own axis, then "
        "back) is not followed by the grid analysis; the transformer stages lose the grid",
    ),
    # EfficientFormer: the last stage is flattened to tokens [B, 49, C] → norm → mean
    Case("efficientformer", "efficientformer_l1", 224, "norm", "stages.2", "tokens:0"),
    Case("efficientformer", "efficientformerv2_s0", 128, "norm", "stages.2", "nchw",
         {"img_size": 128}),
    # LeViT: tokens [B, N, C] in every stage; the last stage's tokens are averaged
    Case("levit", "levit_128s", 128, "stages.2", "stages.1", "tokens:0", {"img_size": 128}),
    Case("fastvit", "fastvit_t8", 128, "final_conv", "stages.2", "nchw"),
    Case("edgenext", "edgenext_xx_small", 128, "stages.3", "stages.2", "nchw"),
    Case("poolformer", "poolformerv2_s12", 128, "stages.3", "stages.2", "nchw"),
    # -- transformers, random init from small configs (``_hf``) ---------------------------
    Case("hf-vit", "hf_vit", 64, "vit.layers.3.layernorm_before", "vit.layers.1.layernorm_before",
         "hf_vit", cli=True),
    Case("hf-resnet", "hf_resnet", 128, "resnet.encoder.stages.3", "resnet.encoder.stages.2",
         "hf_hidden"),
    Case("hf-convnext", "hf_convnext", 128, "convnext.encoder.stages.3",
         "convnext.encoder.stages.2", "hf_hidden"),
]
# fmt: on


def case(key: str) -> Case:
    return next(c for c in CASES if c.key == key)


def _hf(name: str):
    import transformers as tf

    if name == "hf_vit":
        cfg = tf.ViTConfig(
            image_size=64, patch_size=16, hidden_size=192, num_hidden_layers=4,
            num_attention_heads=3, intermediate_size=384, num_labels=10,
        )  # fmt: skip
        return tf.ViTForImageClassification(cfg)
    if name == "hf_resnet":
        cfg = tf.ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
            layer_type="basic", num_labels=10,
        )  # fmt: skip
        return tf.ResNetForImageClassification(cfg)
    if name == "hf_convnext":
        cfg = tf.ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=10)
        return tf.ConvNextForImageClassification(cfg)
    raise KeyError(name)


def build(c: Case):
    """The model, random init (seed 0), eval mode, in-place ops off (forward hooks must see
    the module outputs unmodified), BatchNorm statistics calibrated on random inputs (random
    init BN statistics make near-constant maps; ``torch_reference.calibrate_batchnorm``)."""
    import torch
    from torch_reference import calibrate_batchnorm

    torch.manual_seed(0)
    if c.name.startswith("hf_"):
        model = _hf(c.name)
    else:
        import timm

        model = timm.create_model(c.name, pretrained=False, num_classes=10, **c.kwargs)
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(8, 3, c.size, c.size, generator=g) for _ in range(2)]
        calibrate_batchnorm(model, batches)
    return model.eval()


def grid_of(c: Case, model) -> tuple[int, int]:
    """The model's own feature grid (never read from the export)."""
    import torch

    x = torch.zeros(1, 3, c.size, c.size)
    if c.grid == "patch":  # timm token models: the patch embedding's grid
        return tuple(int(v) for v in model.patch_embed.grid_size)
    if c.grid == "stem":  # timm MLP-Mixer family
        return tuple(int(v) for v in model.stem.grid_size)
    if c.grid == "hf_vit":
        n = model.config.image_size // model.config.patch_size
        return (n, n)
    with torch.no_grad():
        if c.grid == "hf_hidden":  # transformers CNNs: the last hidden state [B, C, h, w]
            base = getattr(model, model.base_model_prefix)
            f = base(x).last_hidden_state
            return tuple(f.shape[2:])
        f = model.forward_features(x)
    if c.grid == "nchw":
        return tuple(f.shape[2:])
    if c.grid == "nhwc":
        return tuple(f.shape[1:3])
    if c.grid.startswith("tokens:"):  # [B, prefix + n², C], a square grid
        n = math.isqrt(f.shape[1] - int(c.grid.split(":")[1]))
        return (n, n)
    raise KeyError(c.grid)


def module_of(tensor: str, names: set[str]) -> str | None:
    """The module whose scope made an ONNX tensor (TorchScript exporter names): e.g.
    ``/model/blocks/blocks.11/norm1/LayerNormalization_output_0`` → ``blocks.11.norm1``
    (``/model`` is ``export_torch``'s capture wrapper). None when not a module's scope."""
    parts = tensor.strip("/").split("/")[:-1]
    if parts and parts[0] == "model":
        parts = parts[1:]
    path: list[str] = []
    for p in parts:  # children of Sequential/ModuleList carry the parent's name: blocks.11
        if path and p.startswith(path[-1] + "."):
            path[-1] = p
        else:
            path.append(p)
    name = ".".join(path)
    return name if name in names else None


def to_map(arr: np.ndarray, target) -> np.ndarray:
    """A torch module output laid out as the target's exported map. Token targets: the
    module's patch tokens — its last rows·cols tokens (class, distillation and register tokens
    come first) — on their grid; that is ``TokenGrid.to_map`` when the target is the module
    output itself, and also covers a target that is those patch tokens already sliced off
    (e.g. the tokens a GAP head averages). A module's NCHW output explained through the NHWC
    tensor it is a transposed copy of (Swin-v2-cr stages) is transposed to NHWC."""
    nchw_copy = arr.ndim == 4 and target.layout != "NCHW" and target.tokens is None
    if nchw_copy and arr.shape[1] == target.channels and tuple(arr.shape[2:]) == target.spatial:
        return target.layout.from_nchw(arr)
    if target.tokens is None or arr.ndim != 3:
        return arr
    t = target.tokens
    if arr.shape[1] == t.prefix + t.rows * t.cols:
        return t.to_map(arr)
    return arr[:, arr.shape[1] - t.rows * t.cols :].reshape(len(arr), t.rows, t.cols, -1)


def spatial_of(arr: np.ndarray, layout: str) -> tuple[int, int]:
    return tuple(arr.shape[2:4]) if layout == "NCHW" else tuple(arr.shape[1:3])


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _compare(got: dict, ref: dict, what: str) -> dict:
    """Relative errors of exported activation/gradient vs the torch reference, and whether
    ``assert_gradients_close`` (which tolerates isolated ReLU-mask flips) accepts them."""
    from torch_reference import assert_gradients_close

    out = {"act_err": None, "grad_err": None, "ok": False, "msg": ""}
    if got["act"].shape != ref["act"].shape:
        out["msg"] = f"{what}: shape {got['act'].shape} != torch {ref['act'].shape}"
        return out
    out["act_err"] = max_rel_err(got["act"], ref["act"])
    out["grad_err"] = max_rel_err(got["grad"], ref["grad"])
    try:
        assert out["act_err"] <= TOL, f"{what}: activation max relative error {out['act_err']:.3g}"
        assert_gradients_close(got["grad"], ref["grad"], TOL, f"{what} gradient")
        out["ok"] = True
    except AssertionError as e:
        out["msg"] = str(e)
    return out


def _run_ort(sess, res, x: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    from onnxcam import contract

    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
    layers = [{"act": out[t.activation], "grad": out[t.gradient]} for t in res.targets]
    return out[contract.CLASS_OUTPUT], layers


def torch_gradients(
    model64, x: np.ndarray, modules: list[str], classes: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Module outputs and d(score)/d(output), float64; score = the logit of ``classes`` summed
    over the batch (``torch_reference.torch_layer_gradients``, for transformers' outputs too)."""
    import torch

    captured: dict = {}
    hooks = [
        model64.get_submodule(m).register_forward_hook(
            lambda _m, _i, out, m=m: captured.__setitem__(m, out)
        )
        for m in modules
    ]
    try:
        out = model64(torch.from_numpy(x.astype(np.float64)))
    finally:
        for h in hooks:
            h.remove()
    logits = out.logits if hasattr(out, "logits") else out
    score = logits.gather(1, torch.from_numpy(classes).long()[:, None]).sum()
    acts = [captured[m] for m in modules]
    grads = torch.autograd.grad(score, acts)
    return {
        m: {"act": a.detach().numpy(), "grad": g.numpy()}
        for m, a, g in zip(modules, acts, grads, strict=True)
    }


def torch_activation(model64, x: np.ndarray, module: str) -> np.ndarray:
    """The output of ``module`` (its last call) in a float64 forward pass."""
    import torch

    seen: list = []
    h = model64.get_submodule(module).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model64(torch.from_numpy(x.astype(np.float64)))
    finally:
        h.remove()
    return seen[-1].numpy()


def _check_layers(ex, res, model64, modules: list[str], what: list[str]) -> list[dict]:
    """Exported layers ``res.targets`` (run in the Explainer's session) vs torch hooks on
    ``modules``: on input seed 1, and where that fails (a float32 kink flip is input-specific)
    also seed 2; a layer passes when one input passes."""
    results: list[dict | None] = [None] * len(modules)
    for seed in SEEDS:
        x = np.random.default_rng(seed).normal(size=(BATCH, 3, *_hw(res))).astype(np.float32)
        classes, got = _run_ort(ex.session, res, x)
        ref = torch_gradients(model64, x, modules, classes)
        for k, (t, m) in enumerate(zip(res.targets, modules, strict=True)):
            if results[k] is not None and results[k]["ok"]:
                continue
            r = {key: to_map(v, t) for key, v in ref[m].items()}
            cmp = _compare(got[k], r, what[k])
            cmp["seed"] = seed
            cmp["torch_grid"] = spatial_of(r["act"], str(t.layout)) if r["act"].ndim == 4 else None
            if results[k] is not None:
                cmp["msg"] = f"seed {SEEDS[0]}: {results[k]['msg']}; seed {seed}: {cmp['msg']}"
            results[k] = cmp
        if all(r["ok"] for r in results):
            break
    return results


def _hw(res) -> tuple[int, int]:
    return res.input.height, res.input.width


def _explainer(res):
    from onnxcam import Explainer

    return Explainer(res.model.SerializeToString(), device="cpu")


def _map_shape(ex, x: np.ndarray, layer: int | None) -> tuple[int, int]:
    """``Explainer.explain_tensor``'s Grad-CAM map at feature resolution, first image."""
    e = ex.explain_tensor(x, "gradcam", layers=layer)[0]
    return tuple(e.maps["gradcam"].feature.shape)


def _target_info(t) -> dict:
    return {
        "tensor": t.tensor,
        "layout": str(t.layout),
        "shape": list(t.shape),
        "spatial": tuple(t.spatial),
        "tokens": None if t.tokens is None else [t.tokens.prefix, t.tokens.rows, t.tokens.cols],
    }


def is_table_default(r: dict) -> bool:
    """The default export's activation is the output of the table's module (same values,
    whatever the tensor is called)."""
    v = r.get("default_vs_table")
    return v is not None and v <= TOL


def evaluate(c: Case, keep_default_model: bool = False) -> dict:
    """Everything the sweep asserts, for one model, as plain data (errors as strings).

    Keys: ``feature_grid``; export A: ``default`` (target), ``default_scope`` (the module
    whose scope made the tensor), ``default_map``, ``default_check`` (vs torch at that
    module), ``default_vs_table`` (activation rel. difference to the table module's output),
    or ``default_error``; export B: ``table_target``/``earlier_target``, ``..._check``,
    ``..._map``; where B fails (``layers_error``), each layer is exported alone, and
    ``table_error``/``earlier_error`` say which failed; ``seconds`` per phase.
    """
    from onnxcam.contract import TargetLayer
    from onnxcam.export import export_torch

    r: dict = {"family": c.family, "model": c.key, "default_module": c.default}
    r["earlier_module"] = c.earlier
    sec = r["seconds"] = {}
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        sec[phase] = sec.get(phase, 0.0) + now - clock[0]
        clock[0] = now

    model = build(c)
    names = {n for n, _ in model.named_modules() if n}
    r["feature_grid"] = grid_of(c, model)
    model64 = copy.deepcopy(model).double()
    shape = (1, 3, c.size, c.size)
    x = np.random.default_rng(0).normal(size=(BATCH, 3, c.size, c.size)).astype(np.float32)
    lap("build")

    # A: the exporter's default layer
    try:
        a = export_torch(model, shape)
    except Exception as e:
        a = None
        r["default_error"] = _short(e)
    lap("export_default")
    if a is not None:
        t = a.targets[0]
        r["default"] = _target_info(t)
        r["default_is_target"] = isinstance(t, TargetLayer)
        r["default_scope"] = module_of(t.tensor, names)
        ex = _explainer(a)
        r["default_map"] = _map_shape(ex, x, None)
        if keep_default_model:
            r["default_model"] = a.model.SerializeToString()
        # the default's own activation/gradient vs torch at the module that made it, and its
        # activation vs the table's module (the practitioner's pick)
        try:
            mods = [r["default_scope"] or c.default]
            (r["default_check"],) = _check_layers(ex, a, model64, mods, ["default"])
            _, (got,) = _run_ort(ex.session, a, x)
            ref = torch_activation(model64, x, c.default)
            ref = to_map(ref, t)
            r["default_vs_table"] = (
                max_rel_err(got["act"], ref) if got["act"].shape == ref.shape else None
            )
        except Exception as e:
            r["default_check_error"] = _short(e)
        del ex
    lap("check_default")

    # B: the table's default and earlier modules through layers=[...]; where that fails,
    # each on its own, so that a failure is attributed to its layer
    exports = []
    try:
        exports.append(
            (["table", "earlier"], export_torch(model, shape, layers=[c.default, c.earlier]))
        )
    except Exception as e:
        r["layers_error"] = _short(e)
        for key, module in (("table", c.default), ("earlier", c.earlier)):
            try:
                exports.append(([key], export_torch(model, shape, layers=[module])))
            except Exception as e:
                r[f"{key}_error"] = _short(e)
    lap("export_layers")
    for keys, b in exports:
        mods = [{"table": c.default, "earlier": c.earlier}[k] for k in keys]
        ex = _explainer(b)
        try:
            checks = _check_layers(ex, b, model64, mods, mods)
        except Exception as e:
            checks = [None] * len(keys)
            r["layers_check_error"] = _short(e)
        for k, (key, t, chk) in enumerate(zip(keys, b.targets, checks, strict=True)):
            r[f"{key}_target"] = _target_info(t)
            r[f"{key}_check"] = chk
            r[f"{key}_map"] = _map_shape(ex, x, k)
    lap("check_layers")
    return r
