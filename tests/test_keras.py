"""Keras/TensorFlow models: the path a Keras user takes, checked against ``tf.GradientTape``.

``tests/keras_reference.py`` runs in its own process (TensorFlow and torch stay in separate
interpreters): it builds the background article's VGG16 + GlobalAveragePooling2D +
Dense(1, sigmoid) and exports it with Keras 3's ``model.export(format="onnx")``, converts a
MobileNetV2 + Dense(5, softmax) with ``tf2onnx.convert.from_keras``, and records the gradients
of the explained scores with respect to three layers of each. Here each model is exported by
onnxcam (default layer, then the other two through ``layers=``), explained for each class, and
its gradients compared with TensorFlow's (NHWC there; tf2onnx's graphs hold NCHW maps between
its transposes, and the exporter finds which from the data flow).

TensorFlow is a test dependency (tensorflow-cpu + tf2onnx: ~1.2 GB installed, ~45 s to install;
the reference script takes ~20 s).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxcam import contract
from onnxcam.engine import Explainer
from onnxcam.export import export_onnx, list_layers

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed"
    ),
]

TOL = 1e-4
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras")
    script = Path(__file__).parent / "keras_reference.py"
    r = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    return out


def _tensor_of(model: Path, keras_layer: str) -> str:
    """The ONNX candidate tensor that is Keras layer ``keras_layer``'s output (the last one
    whose name carries the layer's name scope)."""
    found = [c.tensor for c in list_layers(model) if f"/{keras_layer}_1/" in c.tensor]
    assert found, f"no candidate for {keras_layer}"
    return found[-1]


def _check(model: Path, case: str, layers: tuple[str, ...], scores: dict, **kw) -> list:
    x = np.load(model.with_suffix(".x.npy"))
    ref = np.load(model.with_suffix(".npz"))
    default = export_onnx(model, preset="raw", **kw)
    assert f"/{layers[0]}_1/" in default.targets[0].tensor  # the default is the last map
    tensors = [_tensor_of(model, k) for k in layers]
    res = export_onnx(model, layers=tensors, preset="raw", **kw)
    assert res.input.layout == "NHWC"
    ex = Explainer(res.model.SerializeToString())
    errors = []
    for score, cls in scores.items():
        for k, (t, keras_layer) in enumerate(zip(res.targets, layers, strict=True)):
            exps = ex.explain_tensor(x, "gradcam", classes=cls, layers=k, keep_tensors=True)
            got = np.concatenate([e.tensors[t.gradient] for e in exps])
            got = t.layout.to_nchw(got).transpose(0, 2, 3, 1)  # → NHWC like TensorFlow
            want = ref[f"{score}/{keras_layer}"]
            err = float(np.abs(got - want).max() / np.abs(want).max())
            errors.append((case, score, keras_layer, err))
            assert err <= TOL, errors[-1]
            assert all(np.isfinite(e.maps["gradcam"].feature).all() for e in exps)
    return errors


def test_keras_export_vgg16_binary_both_classes(keras_dir) -> None:
    from keras_reference import VGG_TARGETS

    model = keras_dir / "vgg16_binary.onnx"
    res = export_onnx(model, preset="caffe", labels=["dog"])
    assert res.head.binary and res.input.color == "BGR"
    _check(model, "vgg16_binary", VGG_TARGETS, {"class1": 1, "class0": 0})
    ex = Explainer(res.model.SerializeToString())
    x = np.load(keras_dir / "vgg16_binary.x.npy")
    z = np.load(keras_dir / "vgg16_binary.npz")["logits"][:, 0]
    (e,) = ex.explain_tensor(x[:1], "gradcam")
    assert e.target.label == ("dog" if z[0] >= 0 else "not dog")


def test_tf2onnx_mobilenet_softmax(keras_dir) -> None:
    from keras_reference import MOBILENET_TARGETS

    model = keras_dir / "mobilenet_softmax.onnx"
    ref = np.load(keras_dir / "mobilenet_softmax.npz")
    ex = Explainer(export_onnx(model, preset="tf").model.SerializeToString())
    x = np.load(keras_dir / "mobilenet_softmax.x.npy")
    exps = ex.explain_tensor(x, "gradcam")
    assert [e.target.index for e in exps] == ref["top_class"].tolist()
    np.testing.assert_allclose(
        [e.target.logit for e in exps], ref["logits"].max(axis=1), rtol=1e-4, atol=1e-5
    )
    _check(model, "mobilenet_softmax", MOBILENET_TARGETS, {"top": None, "class3": 3})
    assert contract.VERSION == 3
