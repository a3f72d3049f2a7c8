"""Training-time callbacks (``onnxcam.callbacks``): a small CNN really trains on generated
shapes while the callback exports it every epoch, explains fixed validation images and logs to
real TensorBoard, W&B (offline) and MLflow (local file store) runs, read back here with each
library's own reader; Lightning and Keras 3 drive the same recorder through their callbacks.

The shapes: a filled square, circle or triangle (the class) at a random place on a noisy
background with two thin bright lines as distractors, 32×32; the pointing game asks whether the
Grad-CAM maximum falls in the shape's box (chance = the box's share of the image, ~18 %).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

# TensorBoard imports TensorFlow whenever it is installed (~15 s, and TensorFlow beside torch);
# its own stub reads and writes the same event files.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))

from onnxcam.callbacks.core import Snapshot  # noqa: E402
from onnxcam.callbacks.torch import CamLogger, export_current  # noqa: E402

SIZE = 32
LABELS = ["square", "circle", "triangle"]
EPOCHS = 5
N_VAL = 24
KEY = "onnxcam/gradcam/pointing_game"
HAVE = {m: importlib.util.find_spec(m) is not None for m in ("tensorboard", "wandb", "mlflow")}


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """``n`` RGB uint8 images, their classes and the shapes' boxes (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    classes = rng.integers(0, 3, n)
    boxes = []
    for i in range(n):
        img = rng.normal(110, 35, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
        r = int(rng.integers(5, 8))
        cx, cy = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, 2))
        color = tuple(int(c) for c in rng.integers(160, 256, 3))
        if classes[i] == 0:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        elif classes[i] == 1:
            cv2.circle(img, (cx, cy), r, color, -1)
        else:
            tri = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [tri], color)
        for _ in range(2):  # distractors: thin bright lines, anywhere
            a, b = (tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(2))
            cv2.line(img, a, b, tuple(int(c) for c in rng.integers(160, 256, 3)), 1)
        images[i] = img
        boxes.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    return images, classes, boxes


def small_cnn() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """The model's input: [N, 3, H, W] in [0, 1] (the exporter's ``unit`` preset)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def train_epoch(model, opt, x, y, batch: int = 32) -> None:
    model.train()
    for i in range(0, len(x), batch):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()


class Collect:
    """A user's own logger: anything with ``log(snapshot)``."""

    def __init__(self) -> None:
        self.seen: list[Snapshot] = []

    def log(self, snapshot: Snapshot) -> None:
        self.seen.append(snapshot)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Train for EPOCHS epochs, logging before training (step 0) and after each epoch, to
    TensorBoard, W&B and MLflow at once; the process's CWD and temp dir are fresh folders."""
    from onnxcam.callbacks.loggers import MlflowLogger, TensorBoardLogger, WandbLogger

    root = tmp_path_factory.mktemp("callbacks")
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}
    old_env = {k: os.environ.get(k) for k in env}
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    os.environ.update(env)
    os.chdir(cwd)
    tempfile.tempdir = str(tmp)
    try:
        torch.manual_seed(0)
        x, y, _ = shapes(480, 0)
        xv, yv, bv = shapes(N_VAL, 1)
        model = small_cnn()
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        collect = Collect()
        loggers = [collect, TensorBoardLogger(root / "tb")]
        if HAVE["wandb"]:
            loggers.append(WandbLogger(project="onnxcam-test", dir=str(root), mode="offline"))
        if HAVE["mlflow"]:
            loggers.append(MlflowLogger(tracking_uri=f"file:{root / 'mlruns'}"))
        cam = CamLogger(
            xv, every=1, classes=yv, boxes=bv, loggers=loggers, preset="unit", labels=LABELS
        )
        cam.on_epoch_end(model, 0)
        xt, yt = as_tensor(x), torch.from_numpy(y)
        for epoch in range(1, EPOCHS + 1):
            train_epoch(model, opt, xt, yt)
            cam.on_epoch_end(model, epoch)
        cam.close()
        mlflow_run = next((lg.run_id for lg in loggers if hasattr(lg, "run_id")), None)
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tmp
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    chance = float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) / SIZE**2 for b in bv]))
    return {
        "root": root,
        "cwd": cwd,
        "tmp": tmp,
        "cam": cam,
        "collect": collect,
        "mlflow_run": mlflow_run,
        "chance": chance,
    }


def test_logs_every_epoch_to_a_user_logger(run):
    seen = run["collect"].seen
    assert [s.step for s in seen] == list(range(EPOCHS + 1))
    last = seen[-1]
    overlays = last.images["onnxcam/gradcam"]
    assert len(overlays) == N_VAL
    assert overlays[0].image.dtype == np.uint8 and overlays[0].image.shape[2] == 3
    assert overlays[0].image.shape[0] >= 160  # scaled up with the caption band burnt in
    assert all(c.caption.split()[0] in LABELS and "| true " in c.caption for c in overlays)
    assert {"export", "explain", "log"} <= set(last.seconds)
    assert {KEY, "onnxcam/gradcam/energy_pointing", "onnxcam/accuracy"} <= set(last.scalars)


def test_pointing_game_rises_above_chance(run):
    """Measured (seeds 0–2, 6 epochs): chance ~0.18; the pointing game ends at 0.54–0.71 (an
    untrained net already finds the bright shape on some seeds: 0.0–0.58 at step 0), the
    energy-based pointing game rises from 0.07–0.21 to 0.33–0.53, the accuracy to 0.58–0.79."""
    chance = run["chance"]
    curve = [s.scalars[KEY] for s in run["cam"].history]
    energy = [s.scalars["onnxcam/gradcam/energy_pointing"] for s in run["cam"].history]
    assert curve[-1] >= chance + 0.25, (curve, chance)
    assert energy[-1] >= chance + 0.1, (energy, chance)
    assert energy[-1] >= energy[0] + 0.1, energy
    assert run["cam"].history[-1].scalars["onnxcam/accuracy"] >= 0.5


def test_no_file_left_in_cwd_or_temp_dir(run):
    """Nothing in the CWD; in the temp dir only what the libraries keep for themselves (torch's
    compile cache folder, wandb's media and artifact staging, removed when its process exits)."""
    assert list(run["cwd"].iterdir()) == []
    ours = [
        p
        for p in run["tmp"].iterdir()
        if not p.name.startswith("torchinductor_")
        and not p.name.endswith(("wandb-media", "wandb-artifacts"))
    ]
    assert ours == []
    assert not [p for p in run["tmp"].rglob("*") if p.suffix in (".onnx", ".data", ".pb")]


@pytest.mark.skipif(not HAVE["tensorboard"], reason="tensorboard is not installed")
def test_tensorboard_event_files_hold_images_and_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["root"] / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images = acc.Images("onnxcam/gradcam")
    assert [e.step for e in images] == list(range(EPOCHS + 1))
    png = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), 1)
    assert png.shape[0] >= 160 and png.std() > 10  # a real picture, not a blank
    scalars = [(e.step, e.value) for e in acc.Scalars(KEY)]
    want = [(s.step, s.scalars[KEY]) for s in run["cam"].history]
    assert [s for s, _ in scalars] == [s for s, _ in want]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in want])


def wandb_history(path: str) -> list[dict]:
    """The history rows of a ``.wandb`` file (a LevelDB-style log of ``Record`` protos: 7-byte
    file header, 32 KiB blocks, records split in FULL/FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, block, buf = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                items = rec.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


@pytest.mark.skipif(not HAVE["wandb"], reason="wandb is not installed")
def test_wandb_offline_run_holds_images_with_captions_and_scalars(run):
    (run_dir,) = glob.glob(str(run["root"] / "wandb" / "offline-run-*"))
    (log,) = glob.glob(f"{run_dir}/run-*.wandb")
    rows = wandb_history(log)
    assert [r["_step"] for r in rows] == list(range(EPOCHS + 1))
    want = [s.scalars[KEY] for s in run["cam"].history]
    assert [r[KEY] for r in rows] == pytest.approx(want)
    last = rows[-1]
    assert last["onnxcam/gradcam/_type"] == "images/separated"
    assert last["onnxcam/gradcam/count"] == N_VAL
    captions = [c.caption for c in run["collect"].seen[-1].images["onnxcam/gradcam"]]
    assert last["onnxcam/gradcam/captions"] == captions
    for name in last["onnxcam/gradcam/filenames"]:
        assert cv2.imread(f"{run_dir}/files/{name}") is not None


@pytest.mark.skipif(not HAVE["mlflow"], reason="mlflow is not installed")
def test_mlflow_run_holds_image_steps_and_metrics(run):
    import mlflow

    client = mlflow.MlflowClient(f"file:{run['root'] / 'mlruns'}")
    rid = run["mlflow_run"]
    got = sorted((m.step, m.value) for m in client.get_metric_history(rid, KEY))
    assert [s for s, _ in got] == [s.step for s in run["cam"].history]
    assert [v for _, v in got] == pytest.approx([s.scalars[KEY] for s in run["cam"].history])
    pngs = [a.path for a in client.list_artifacts(rid, "images") if a.path.endswith(".png")]
    steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in pngs)
    assert steps == list(range(EPOCHS + 1))
    local = client.download_artifacts(rid, pngs[0], str(run["root"] / "dl"))
    assert cv2.imread(local).shape[0] >= 4 * 160  # a 4×4 grid of the 16 overlays
    captions = client.download_artifacts(
        rid, f"onnxcam/gradcam/captions_{EPOCHS}.txt", str(run["root"] / "dl")
    )
    assert Path(captions).read_text().count("| true ") == N_VAL


def _state(model: torch.nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "rng": torch.get_rng_state(),
    }


def test_export_leaves_the_training_model_untouched():
    """Mid-training (train mode, gradients present, one BatchNorm kept in eval, the first conv
    frozen): parameters, BN running statistics, gradients, requires_grad, every module's mode
    and the torch RNG are exactly as before a logging step; training then goes on."""
    torch.manual_seed(1)
    x, y, boxes = shapes(64, 2)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    xt, yt = as_tensor(x), torch.from_numpy(y)
    train_epoch(model, opt, xt, yt)
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model: must stay frozen
    model[0].weight.requires_grad_(False)
    torch.nn.functional.cross_entropy(model(xt[:8]), yt[:8]).backward()
    before = _state(model)
    cam = CamLogger(x[:4], boxes=boxes[:4], preset="unit", labels=LABELS)
    snap = cam.on_epoch_end(model, 0)
    assert snap is not None and KEY in snap.scalars
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["training"][""] and not after["training"]["1"]
    assert after["requires_grad"] == before["requires_grad"]
    assert torch.equal(after["rng"], before["rng"])
    for part in ("tensors", "grads"):
        assert after[part].keys() == before[part].keys()
        for k, v in before[part].items():
            assert torch.equal(after[part][k], v), (part, k)
    assert cam.on_epoch_end(model, 1) is not None  # every=1
    train_epoch(model, opt, xt, yt)  # training goes on
    assert CamLogger(x[:4], every=3, preset="unit").on_epoch_end(model, 2) is None


def test_export_current_is_explainable_bytes():
    from onnxcam.engine import Explainer

    model = small_cnn().eval()
    onnx_bytes = export_current(model, (1, 3, SIZE, SIZE), layer="7", preset="unit")
    with Explainer(onnx_bytes) as ex:
        assert ex.info.targets[0].name == "7"
        assert ex.info.input.height == SIZE


@pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None or not HAVE["tensorboard"],
    reason="lightning or tensorboard is not installed",
)
def test_lightning_callback_logs_through_the_trainers_tensorboard_logger(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from onnxcam.callbacks.torch import CamCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 3e-3)

    torch.manual_seed(0)
    x, y, _ = shapes(96, 3)
    xv, yv, bv = shapes(8, 4)
    data = torch.utils.data.TensorDataset(as_tensor(x), torch.from_numpy(y))
    val = torch.utils.data.TensorDataset(as_tensor(xv), torch.from_numpy(yv))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    cb = CamCallback(xv, classes=yv, boxes=bv, preset="unit", labels=LABELS)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Module(), loader, torch.utils.data.DataLoader(val, batch_size=8))
    assert [s.step for s in cb.cam.history] == [0, 1]  # the sanity check is not logged
    (events,) = {Path(p).parent for p in glob.glob(f"{tmp_path}/tb/**/events.*", recursive=True)}
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("onnxcam/gradcam")] == [0, 1]
    assert [e.step for e in acc.Scalars(KEY)] == [0, 1]
    assert "val_loss" in acc.Tags()["scalars"]  # Lightning's own scalars in the same run


@pytest.mark.skipif(
    not all(HAVE.values()) or importlib.util.find_spec("lightning") is None,
    reason="lightning, wandb or mlflow is not installed",
)
def test_from_lightning_writes_into_the_wandb_and_mlflow_loggers_runs(tmp_path, monkeypatch):
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.loggers import WandbLogger as LightningWandb

    from onnxcam.callbacks.core import CamImage
    from onnxcam.callbacks.loggers import MlflowLogger, WandbLogger, from_lightning

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    theirs = [
        LightningWandb(project="onnxcam-test", save_dir=str(tmp_path), offline=True),
        MLFlowLogger(experiment_name="cam", tracking_uri=uri),
    ]
    ours = from_lightning(theirs)
    assert [type(lg) for lg in ours] == [WandbLogger, MlflowLogger]
    assert ours[0].run is theirs[0].experiment and ours[1].run_id == theirs[1].run_id
    image = CamImage(np.full((20, 20, 3), 200, np.uint8), "circle 0.90")
    for step in (0, 1):
        snap = Snapshot(step, {"onnxcam/gradcam": [image]}, {KEY: 0.5 + step / 4})
        for lg in ours:
            lg.log(snap)
    theirs[0].experiment.finish()
    client = mlflow.MlflowClient(uri)
    got = sorted((m.step, m.value) for m in client.get_metric_history(theirs[1].run_id, KEY))
    assert got == [(0, 0.5), (1, 0.75)]
    (log,) = glob.glob(f"{tmp_path}/wandb/offline-run-*/run-*.wandb")
    rows = [r for r in wandb_history(log) if KEY in r]
    assert [(r["epoch"], r[KEY]) for r in rows] == [(0, 0.5), (1, 0.75)]
    assert rows[0]["onnxcam/gradcam/captions"] == ["circle 0.90"]


KERAS_SCRIPT = """
import os, sys, types
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
sys.path.insert(0, {tests!r})
from test_callbacks_shapes import shapes
from onnxcam.callbacks.keras import CamCallback
from onnxcam.callbacks.loggers import TensorBoardLogger

keras.utils.set_random_seed(0)
x, y, _ = shapes(256, 0)
xv, yv, bv = shapes(8, 1)
L = keras.layers
model = keras.Sequential([
    keras.Input((32, 32, 3)), L.Rescaling(1 / 255),
    L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(),
    L.Conv2D(32, 3, padding="same", activation="relu", name="last_conv"),
    L.GlobalAveragePooling2D(), L.Dense(3),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
cb = CamCallback(xv, classes=yv, boxes=bv, layer="last_conv", preset="raw",
                 labels={labels!r}, loggers=[TensorBoardLogger({log_dir!r})])
model.fit(x.astype("float32"), y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
weights = [w.copy() for w in model.get_weights()]
cb.log(99)
assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
print([s.step for s in cb.history], sorted(os.listdir(".")))
print("ok")
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="tensorflow / tf2onnx are not installed",
)
def test_keras_callback_logs_to_tensorboard(tmp_path):
    """In its own process (TensorFlow and torch are not loaded into one interpreter here)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    helper = tmp_path / "test_callbacks_shapes.py"
    src = Path(__file__).read_text()
    start, end = src.index("def shapes("), src.index("def small_cnn(")
    helper.write_text("import cv2\nimport numpy as np\nSIZE = 32\n\n" + src[start:end])
    script = KERAS_SCRIPT.format(tests=str(tmp_path), labels=LABELS, log_dir=str(tmp_path / "tb"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    assert "[0, 1, 99] []" in r.stdout  # every epoch and the manual step; nothing in the CWD
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("onnxcam/gradcam")] == [0, 1, 99]
    assert [e.step for e in acc.Scalars(KEY)] == [0, 1, 99]


def test_importing_the_package_loads_no_framework():
    code = (
        "import sys, onnxcam.callbacks, onnxcam.callbacks.loggers, onnxcam.callbacks.core\n"
        "bad = {'torch', 'tensorflow', 'keras', 'wandb', 'mlflow', 'lightning', 'tensorboard'}\n"
        "print(sorted(bad & set(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
