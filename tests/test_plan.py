"""The request plan (``onnxcam.plan``): what a request fetches, in which mode, which maps come
from the graph and what each method is called with — built from hand-made model records, no
session and no onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam import contract
from onnxcam.contract import NCHW, NHWC, InputSpec, TargetLayer
from onnxcam.errors import MethodError
from onnxcam.model import ModelInfo
from onnxcam.perturbation import PerturbationOptions
from onnxcam.plan import ExplainOptions, make_plan, select_layers
from onnxcam.registry import METHODS, NEEDS, resolve_methods
from onnxcam.terms import Terms

ACT0, GRAD0, CW0 = "onnxcam_activation_0", "onnxcam_gradient_0", "onnxcam_cam_weight_0"
ACT1, GRAD1 = "onnxcam_activation_1", "onnxcam_gradient_1"
HM = "onnxcam_heatmap_gradcam_{k}"
TOPK = [contract.TOPK_INDEX_OUTPUT, contract.TOPK_PROBABILITY_OUTPUT, contract.TOPK_LOGIT_OUTPUT]


def _layer(k: int, **kw) -> TargetLayer:
    return TargetLayer(k, f"layer{k}", f"t{k}", kw.pop("layout", NCHW), (1, 16, 7, 7), **kw)


def _info(*targets: TargetLayer) -> ModelInfo:
    targets = targets or (_layer(0, cam_weight=CW0, gradient_pooled=True),)
    return ModelInfo(
        targets=list(targets),
        input=InputSpec("input", NCHW, 32, 32),
        logits="logits",
        output="logits",
        logits_output="logits",
        activation=None,
        num_classes=5,
        labels=None,
        has_cam_weights=any(t.cam_weight for t in targets),
    )


def _heatmap_layer(k: int, size: str = "input") -> TargetLayer:
    return _layer(k, heatmaps={"gradcam": HM.format(k=k)}, heatmap_size=size, cam_weight=CW0)


def test_gradcam_fetches_activation_and_gradient_in_explain_mode() -> None:
    plan = make_plan("gradcam", ExplainOptions(), _info())
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0, GRAD0)
    assert plan.mode == contract.MODE_EXPLAIN
    (call,) = plan.calls
    assert call.name == "gradcam" and call.graph == () and not call.scored
    (li,) = plan.inputs
    assert (li.activation, li.gradient, li.cam_weight, li.pooled) == (ACT0, GRAD0, None, True)
    assert plan.noisy == () and plan.keep == ()


def test_eigencam_runs_forward_only() -> None:
    plan = make_plan("eigencam", ExplainOptions(), _info())
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0)
    assert plan.mode == contract.MODE_FORWARD
    assert plan.inputs[0].gradient is None


def test_cam_fetches_the_class_weights_and_needs_them_on_every_layer() -> None:
    plan = make_plan("cam", ExplainOptions(), _info())
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0, CW0)
    assert plan.mode == contract.MODE_FORWARD
    info = _info(_layer(0), _layer(1, cam_weight=CW0))
    with pytest.raises(MethodError, match=r"GAP → Linear head after layer 'layer0'"):
        make_plan("cam", ExplainOptions(layers="all"), info)
    with pytest.raises(MethodError, match="GAP"):  # no layer has them: refused by name
        make_plan("cam", ExplainOptions(), _info(_layer(0)))


def test_in_graph_heatmaps_are_fetched_instead_of_the_tensors() -> None:
    plan = make_plan("gradcam", ExplainOptions(), _info(_heatmap_layer(0)))
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, HM.format(k=0))
    assert plan.mode == contract.MODE_EXPLAIN  # the heatmaps live in the gradient branch
    assert plan.calls[0].graph == (HM.format(k=0),)
    assert plan.inputs[0].activation is None and plan.inputs[0].gradient is None


@pytest.mark.parametrize(
    ("options", "layers"),
    [
        (ExplainOptions(relu=False), 1),  # the in-graph maps are rectified
        (ExplainOptions(layers="all", fuse=True), 2),  # fused maps are averaged on the host
    ],
)
def test_heatmaps_stand_in_only_for_the_maps_they_are(options, layers) -> None:
    info = _info(_heatmap_layer(0), _heatmap_layer(1))
    plan = make_plan("gradcam", options, info)
    assert plan.calls[0].graph == ()
    assert plan.fetch[2:] == (ACT0, GRAD0, ACT1, GRAD1)[: 2 * layers]


def test_feature_size_heatmaps_and_a_layer_without_one_are_computed_on_the_host() -> None:
    plan = make_plan("gradcam", ExplainOptions(), _info(_heatmap_layer(0, size="feature")))
    assert plan.calls[0].graph == () and GRAD0 in plan.fetch
    mixed = _info(_heatmap_layer(0), _layer(1))
    plan = make_plan("gradcam", ExplainOptions(layers="all"), mixed)
    assert plan.calls[0].graph == () and plan.fetch[2:] == (ACT0, GRAD0, ACT1, GRAD1)


def test_heatmap_and_host_methods_together() -> None:
    plan = make_plan("gradcam,eigencam", ExplainOptions(), _info(_heatmap_layer(0)))
    assert [c.graph for c in plan.calls] == [(HM.format(k=0),), ()]
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0, HM.format(k=0))
    assert plan.mode == contract.MODE_EXPLAIN


def test_keep_tensors_fetches_the_raw_outputs_even_when_every_map_is_in_the_graph() -> None:
    plan = make_plan("gradcam", ExplainOptions(keep_tensors=True), _info(_heatmap_layer(0)))
    assert plan.calls[0].graph == (HM.format(k=0),)
    assert plan.keep == (ACT0, GRAD0, CW0)
    assert set(plan.keep) <= set(plan.fetch) and len(set(plan.fetch)) == len(plan.fetch)
    assert plan.mode == contract.MODE_EXPLAIN


def test_perturbation_methods_get_activations_in_forward_mode() -> None:
    opts = PerturbationOptions(batch_size=4)
    plan = make_plan(["scorecam", "occlusion"], ExplainOptions(perturbation=opts), _info())
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0)
    assert plan.mode == contract.MODE_FORWARD
    assert all(c.scored for c in plan.calls)
    assert plan.perturbation is opts
    seeded = make_plan("scorecam", ExplainOptions(seed=7), _info())
    assert seeded.perturbation == PerturbationOptions(seed=7)


def test_smooth_gradcam_pp_plans_a_noisy_gradient_run() -> None:
    plan = make_plan("smoothgradcam++", ExplainOptions(layers="all"), _info(_layer(0), _layer(1)))
    assert plan.noisy == (GRAD0, GRAD1)
    assert plan.fetch == ("logits", contract.CLASS_OUTPUT, ACT0, ACT1)
    assert plan.mode == contract.MODE_FORWARD  # the main run needs no gradient


def test_the_graph_top_k_outputs_are_fetched_first_and_not_again_for_ranks_2_to_k() -> None:
    predicting = ["logits", *TOPK]
    plan = make_plan("gradcam", ExplainOptions(topk=3), _info(), predicting)
    assert plan.fetch[:4] == tuple(predicting) and plan.predicting == 4
    assert plan.rerun_fetch == (contract.CLASS_OUTPUT, ACT0, GRAD0)


def test_layers_are_chosen_by_index_name_or_tensor() -> None:
    info = _info(_layer(0), _layer(1, layout=NHWC))
    assert [t.index for t in select_layers(info.targets, None)] == [0]
    assert [t.index for t in select_layers(info.targets, "all")] == [0, 1]
    assert [t.index for t in select_layers(info.targets, ["t1", "layer0", "1"])] == [1, 0, 1]
    with pytest.raises(MethodError, match="no exported layer 'nope'; the model has 0:layer0"):
        select_layers(info.targets, "nope")
    plan = make_plan("gradcam", ExplainOptions(layers=1), info)
    assert plan.targets[0].layout == NHWC and plan.fetch[2:] == (ACT1, GRAD1)


def test_options_are_validated_once_in_the_options_object() -> None:
    with pytest.raises(MethodError, match="batch_size"):
        ExplainOptions(batch_size=0)
    with pytest.raises(MethodError, match="topk, smooth_samples and ig_steps"):
        ExplainOptions(topk=0)
    with pytest.raises(MethodError, match="unknown ig_baseline 'grey'"):
        ExplainOptions(ig_baseline="grey")
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        make_plan("gradcam,nope", ExplainOptions(), _info())


def test_all_runs_the_host_methods_and_cam_only_with_class_weights() -> None:
    everything = resolve_methods("all", has_cam_weights=True)
    assert everything == [m for m, s in METHODS.items() if s.in_all]
    assert "cam" in everything and "scorecam" not in everything
    assert "cam" not in resolve_methods("all", has_cam_weights=False)
    # ``all`` is what one inference call gives: nothing that runs n copies or perturbs
    plan = make_plan("all", ExplainOptions(), _info())
    assert not plan.noisy and "smoothgradcam++" not in everything
    assert all(not METHODS[m].scored and not METHODS[m].pixels for m in everything)
    assert resolve_methods("GradCAM, gradcam,layercam", True) == ["gradcam", "layercam"]


def test_every_method_is_described_by_data() -> None:
    """What the engine does for a method follows from its spec, never from its family."""
    for name, spec in METHODS.items():
        assert set(spec.needs) <= set(NEEDS), name
        assert spec.paper and spec.fn.__doc__, name
        # a scored method perturbs; a perturbation method is scored on the host, or computed in
        # the graph (ReciproCAM: its masked copies run inside the explain run)
        assert not spec.scored or spec.family == "perturbation", name
        # `all` is the CAM methods of the one run: not the scored ones, not the sampled ones
        # (n copies per image), not the pixel-space ones (they need an --input-gradient export),
        # not the graph-computed perturbation ones (ReciproCAM: an --reciprocam export)
        one_run = not spec.scored and spec.family not in ("pixel", "sampling", "perturbation")
        assert spec.in_all == one_run, name
        # pixel maps are signed attributions, shown as captum shows them — but FullGrad's is
        # non-negative and shown as pytorch-grad-cam shows it (min-max, a CAM)
        signed = spec.family == "pixel" and name != "fullgrad"
        assert (spec.display == "attribution") == signed, name
    at_input = {m for m, s in METHODS.items() if s.map_size == "input"}
    pixel = {m for m, s in METHODS.items() if s.family == "pixel"}
    assert at_input == {"occlusion", "rise"} | pixel
    # the methods `all` runs are listed first, whichever family registered first
    flags = [s.in_all for s in METHODS.values()]
    assert flags == sorted(flags, reverse=True)


def test_terms_share_their_terms_and_take_the_arrays_in_needs_order() -> None:
    rng = np.random.default_rng(0)
    A = rng.uniform(size=(2, 4, 3, 3)).astype(np.float32)
    G = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    t = Terms.of(("activations", "gradients"), (A, G))
    assert t.A is A and t.G is G and t.w is None
    assert t.sum_a is t.sum_a and t.ga is t.ga  # computed once
    np.testing.assert_allclose(t.sum_ga, (G * A).sum(axis=(2, 3)), rtol=1e-5)
    pooled = Terms(A, G[:, :, :1, :1])
    full = Terms(A, np.broadcast_to(G[:, :, :1, :1], A.shape).copy())
    assert pooled.pooled and not full.pooled
    for reduce in ("position_sum", "product_sum", "relu_product_sum"):
        got = getattr(pooled, reduce)(pooled.relu_g)
        want = getattr(full, reduce)(full.relu_g)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=reduce)
