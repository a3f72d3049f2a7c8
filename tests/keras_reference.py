"""Build Keras models, export them to ONNX the two ways Keras users do, and record
``tf.GradientTape`` references — run as a script in its own process (TensorFlow and torch are
not loaded into one interpreter by the tests).

    python tests/keras_reference.py OUT_DIR

Writes, for each case, ``<case>.onnx``, ``<case>.x.npy`` (the model input, NHWC) and
``<case>.npz`` with the logits and the gradients of each explained score with respect to the
target layer's output (NHWC, as TensorFlow computes it):

* ``vgg16_binary``: the background article's model — VGG16 (random init, 64×64) +
  GlobalAveragePooling2D + Dense(1, sigmoid), exported with Keras 3's
  ``model.export(format="onnx")``; target ``block5_pool``; scores z (class 1) and −z (class 0),
  z the Dense layer's pre-sigmoid logit.
* ``mobilenet_softmax``: MobileNetV2 (alpha 0.35, random init, 64×64) + Dense(5, softmax),
  converted with ``tf2onnx.convert.from_keras`` (opset 17); target ``out_relu``; the score of
  each sample's top class and of class 3.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

SIZE = 64
VGG_TARGETS = ("block5_pool", "block5_conv3", "block4_conv2")
"""Keras layers whose gradients are recorded (the first is the exporter's default)."""
MOBILENET_TARGETS = ("out_relu", "block_13_expand_relu", "block_12_add")


def _gradients(model: keras.Model, targets: list[str], x: np.ndarray, picks: dict) -> dict:
    """{"<pick>/<target>": d score / d target output} with score = Σ_b pick(z)[b], z the final
    Dense layer's pre-activation logits; and "logits". One functional model returns the
    targets' outputs and the Dense input, so the tape sees the whole path from each target."""
    dense = model.layers[-1]
    outs = keras.Model(model.input, [*(model.get_layer(t).output for t in targets), dense.input])
    result = {}
    for name, pick in picks.items():
        with tf.GradientTape() as tape:
            *acts, h = outs(tf.constant(x))
            z = h @ dense.kernel + dense.bias
            score = tf.reduce_sum(pick(z))
        for t, g in zip(targets, tape.gradient(score, acts), strict=True):
            result[f"{name}/{t}"] = g.numpy()
        result["logits"] = z.numpy()
    return result


def vgg16_binary(out: Path) -> None:
    keras.utils.set_random_seed(0)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(1, activation="sigmoid")(h))
    rng = np.random.default_rng(0)
    x = (rng.uniform(0, 255, size=(2, SIZE, SIZE, 3)) - 120.0).astype(np.float32)
    model(x[:1])
    model.export(str(out / "vgg16_binary.onnx"), format="onnx")
    np.save(out / "vgg16_binary.x.npy", x)
    grads = _gradients(
        model,
        list(VGG_TARGETS),
        x,
        {"class1": lambda z: z[:, 0], "class0": lambda z: -z[:, 0]},
    )
    np.savez(out / "vgg16_binary.npz", **grads)


def _calibrate(model: keras.Model, rng: np.random.Generator) -> None:
    """BatchNormalization statistics from data (as trained weights would have them): without
    them a random MobileNetV2's activations shrink to ~1e-11 and every map is flat."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    batch = rng.uniform(-1, 1, size=(8, SIZE, SIZE, 3)).astype(np.float32)
    model(batch, training=True)


def mobilenet_softmax(out: Path) -> None:
    import tf2onnx

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, alpha=0.35, input_shape=(SIZE, SIZE, 3)
    )
    h = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(5, activation="softmax")(h))
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, SIZE, SIZE, 3)).astype(np.float32)
    _calibrate(model, rng)
    z = _gradients(model, ["out_relu"], x, {"top": lambda z: z[:, 0]})["logits"]
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    (out / "mobilenet_softmax.onnx").write_bytes(proto.SerializeToString())
    np.save(out / "mobilenet_softmax.x.npy", x)
    top = np.argmax(z, axis=1)
    grads = _gradients(
        model,
        list(MOBILENET_TARGETS),
        x,
        {
            "top": lambda z: tf.gather(z, top, axis=1, batch_dims=1),
            "class3": lambda z: z[:, 3],
        },
    )
    grads["top_class"] = top
    np.savez(out / "mobilenet_softmax.npz", **grads)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    vgg16_binary(target)
    mobilenet_softmax(target)
    print("ok")
