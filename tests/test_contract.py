"""The graph contract's records and layouts: one schema for the exporter and the runtime."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from onnxcam import contract
from onnxcam.contract import (
    NCHW,
    NHWC,
    ClassifierSpec,
    Contract,
    InputSpec,
    ScoreSpec,
    TargetLayer,
    layout_of,
)
from onnxcam.errors import ContractError


def _contract() -> Contract:
    targets = [
        TargetLayer(0, "layer4", "t4", NCHW, (None, 512, 7, 7), "Relu", cam_weight="w0"),
        TargetLayer(
            1,
            "stage3",
            "s3",
            "NHWC",
            ("batch", 14, 14, 256),
            "Add",
            head_input=contract.head_input_name(1),
            head_output=contract.head_output_name(1),
            note="called 2 times",
            heatmaps={"gradcam": contract.heatmap_name("gradcam", 1)},
            heatmap_size="input",
            gradient_pooled=True,
        ),
    ]
    return Contract(
        targets=targets,
        input=InputSpec("input", "NCHW", 224, 224, 3, "BGR", 1.0, (103.9, 116.8, 123.7), (1.0,)),
        score=ScoreSpec("logits", "probs", "softmax", 1000),
        labels=[f"c{i}" for i in range(1000)],
        classifier=ClassifierSpec("fc.weight", "fc.bias", "classes_first", 1.0, 0),
        exporter={"name": "onnxcam", "version": "0.1.0"},
    )


def test_contract_round_trips_through_metadata() -> None:
    c = _contract()
    meta = c.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert set(meta) == set(contract.ALL_META_KEYS)
    back = Contract.from_metadata(meta)
    assert back.input == c.input and back.score == c.score and back.classifier == c.classifier
    assert back.labels == c.labels and back.exporter == c.exporter
    for a, b in zip(back.targets, c.targets, strict=True):
        assert a.to_json() == b.to_json()
        assert a.shape == tuple(b.shape) and isinstance(a.layout, contract.Layout)
    assert back.to_metadata() == meta


def test_records_write_the_keys_graphs_carry() -> None:
    """The JSON keys are the ones documented in docs/graph-contract.md (v2 graphs keep working)."""
    t = _contract().targets[1].to_json()
    assert t["head_logits"] == "onnxcam_head_logits_1" and "head_output" not in t
    assert t["layout"] == "NHWC" and t["shape"] == ["batch", 14, 14, 256]
    assert t["activation"] == "onnxcam_activation_1" and t["gradient"] == "onnxcam_gradient_1"
    assert "note" not in _contract().targets[0].to_json()  # empty notes are omitted
    score = _contract().score.to_json()
    assert score["logits_output"] == contract.LOGITS_OUTPUT  # the model applies a softmax
    assert ScoreSpec("z", "z", None, 10).logits_output == "z"
    spec = json.loads(_contract().to_metadata()[contract.META_INPUT])
    assert spec["mean"] == [103.9, 116.8, 123.7] and spec["layout"] == "NCHW"


def test_reader_ignores_unknown_keys_and_rejects_broken_or_other_versions() -> None:
    meta = _contract().to_metadata()
    targets = json.loads(meta[contract.META_TARGETS])
    targets[0]["added_by_a_newer_exporter"] = 1
    meta[contract.META_TARGETS] = json.dumps(targets)
    assert Contract.from_metadata(meta).targets[0].name == "layer4"
    with pytest.raises(ContractError, match="not an onnxcam model"):
        Contract.from_metadata({})
    with pytest.raises(ContractError, match="graph contract v1"):
        Contract.from_metadata({**meta, contract.META_VERSION: "1"})
    with pytest.raises(ContractError, match="broken onnxcam metadata"):
        Contract.from_metadata({**meta, contract.META_INPUT: "{not json"})
    with pytest.raises(ContractError, match="unknown layout"):
        Contract.from_metadata(
            {
                **meta,
                contract.META_INPUT: json.dumps(
                    {"name": "x", "layout": "NCDHW", "height": 1, "width": 1}
                ),
            }
        )


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_layout_owns_axes_and_conversions(layout, rng) -> None:
    n, c, h, w = 2, 5, 3, 4
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    native = x.transpose(layout.from_nchw_perm)
    assert native.shape == layout.shape(n, c, h, w)
    assert layout.spatial(native.shape) == (h, w) and layout.channels(native.shape) == c
    np.testing.assert_array_equal(layout.to_nchw(native), x)
    np.testing.assert_array_equal(layout.from_nchw(x), native)
    np.testing.assert_array_equal(native.transpose(layout.to_nchw_perm), x)
    stacked = np.stack([native, 2 * native], axis=1)  # [B, n, ...] keeps working
    np.testing.assert_array_equal(layout.to_nchw(stacked)[:, 1], 2 * x)
    masks = rng.random((7, h, w)).astype(np.float32)
    masked = native[:1] * layout.per_position(masks)
    np.testing.assert_array_equal(layout.to_nchw(masked), x[:1] * masks[:, None])
    assert layout == str(layout) and layout_of(str(layout)) is layout
    assert pickle.loads(pickle.dumps(layout)) is layout
    assert json.loads(json.dumps({"l": layout})) == {"l": str(layout)}


def test_output_names_are_built_in_the_contract() -> None:
    assert contract.heatmap_name("gradcam++", 2) == "onnxcam_heatmap_gradcampp_2"
    assert (
        contract.heatmap_name("gradcam-elementwise", 0) == "onnxcam_heatmap_gradcam_elementwise_0"
    )
    assert contract.activation_name(3) == "onnxcam_activation_3"
    t = TargetLayer(3, "x", "x", NCHW, [1, 2, 3, 4])
    assert (t.activation, t.gradient) == (contract.activation_name(3), contract.gradient_name(3))
