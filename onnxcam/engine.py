"""``Explainer``: one session per model; images in, predictions and CAM maps out.

A single ``session.run`` returns predictions, activations and gradients for a batch; every
gradient method is then host-side numpy on those arrays. What a request fetches and computes
is decided once, before its first batch, by its ``Plan`` (``onnxcam.plan``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import contract, detection, postprocess
from .detection import DetectionResult
from .devices import DEVICE_NAMES
from .errors import ContractError, ImageError, MethodError, OnnxcamError
from .fusion import fuse_layers
from .image import as_rgb_array, blur, preprocess, read_image
from .methods import WINDOWED
from .model import ModelInfo, TargetLayer, open_session, parse_contract
from .perturbation import PerturbationInputs, PerturbationOptions
from .plan import (
    ExplainOptions,
    LayerChoice,
    LayerInputs,
    MethodCall,
    Plan,
    make_plan,
    select_layers,
)
from .registry import METHODS, resolve_methods
from .results import CamMap, Explanation, Failure, Prediction
from .scoring import Progress, Scorer, image_rng
from .targets import ClassLogit, Detection, Region, Target
from .terms import PathGradients, Terms

ImageSource = str | os.PathLike | np.ndarray
_DEFAULT = ExplainOptions()
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (1.0, 0.9, 1.1))
"""``aug_smooth``'s (horizontal flip, input factor) pairs — pytorch-grad-cam's default
``ttach`` list (HorizontalFlip × Multiply(0.9, 1, 1.1)); the first is the input itself."""


class Explainer:
    """Explain images with an onnxcam-exported model (``onnxcam export``).

    ``device``: ``auto`` (CUDA when onnxruntime-gpu sees a usable GPU, else CPU), ``cpu``,
    ``cuda`` or ``openvino`` (onnxruntime-openvino; an error when the device is not really in
    use). A plain ONNX model without onnxcam
    metadata is exported in memory with the default target layer when ``onnx`` is installed.
    ``session_options``: an ``onnxruntime.SessionOptions`` (threads, spinning, ...).
    """

    def __init__(
        self, model: str | os.PathLike | bytes, device: str = "auto", session_options=None
    ) -> None:
        self.notes: list[str] = []
        self.model_name = "model" if isinstance(model, bytes) else Path(model).name
        self.session = open_session(model, device, session_options)
        meta = self.session.get_modelmeta().custom_metadata_map
        if contract.META_VERSION not in meta:
            self.session = open_session(self._export_in_memory(model), device, session_options)
            meta = self.session.get_modelmeta().custom_metadata_map
        self.info: ModelInfo = parse_contract(meta)
        self.provider = self.session.get_providers()[0]
        self.device = DEVICE_NAMES.get(self.provider, "cpu")
        self._outputs = {o.name for o in self.session.get_outputs()}
        topk = [
            contract.TOPK_INDEX_OUTPUT,
            contract.TOPK_PROBABILITY_OUTPUT,
            contract.TOPK_LOGIT_OUTPUT,
        ]
        self._predicting = [self.info.logits_output]
        """The outputs predictions are read from: the logits, and the graph's top-k if any."""
        if all(n in self._outputs for n in topk):
            self._predicting += topk
        seed_in = next(
            (i for i in self.session.get_inputs() if i.name == contract.SEED_INPUT), None
        )
        self._seed_dtype = np.float16 if seed_in and "float16" in seed_in.type else np.float32
        image = next(i for i in self.session.get_inputs() if i.name == self.info.input.name)
        self._fixed_batch = image.shape[0] if isinstance(image.shape[0], int) else None
        """The image input's static batch size (None: any)."""
        self._plans: dict[tuple, Plan] = {}
        """Plans by (methods, options), see ``plan``."""

    def _export_in_memory(self, model: str | os.PathLike | bytes) -> bytes:
        try:
            from onnxcam.export import export_onnx
        except ImportError:
            raise ContractError(
                f"{self.model_name} is a plain ONNX model without onnxcam outputs; export it "
                "first: onnxcam export MODEL -o MODEL.cam.onnx (needs pip install "
                "'onnxcam[export]')"
            ) from None
        res = export_onnx(model)
        t = res.targets[0]
        self.notes.append(
            f"{self.model_name} has no onnxcam outputs: exported in memory with the default "
            f"target layer {t.tensor} ({t.producer}, {t.shape}); save it with `onnxcam export`"
        )
        return res.model.SerializeToString()

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the session."""
        self.session = None  # type: ignore[assignment]

    # -- inputs ---------------------------------------------------------------------------
    @staticmethod
    def load(source: ImageSource) -> tuple[str, np.ndarray]:
        """(name, RGB float image) for a path or an array."""
        if isinstance(source, np.ndarray):
            return "<array>", as_rgb_array(source)
        return str(source), read_image(source)

    def layers(self, which: LayerChoice) -> list[TargetLayer]:
        """Target layers by index or name; None → the first; 'all' → every exported layer."""
        return select_layers(self.info.targets, which)

    def plan(self, methods: str | Sequence[str], options: ExplainOptions | None = None) -> Plan:
        """What a request for ``methods`` with ``options`` fetches and computes per batch.

        Plans are pure, so each distinct (methods, options) is planned once per Explainer: a
        server calling ``explain_tensor`` per request pays a dictionary look-up, not a plan.
        """
        options = options or _DEFAULT
        key = (methods if isinstance(methods, str) else tuple(methods), options)
        try:
            return self._plans[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable option (layers given as a list): plan it afresh
            return make_plan(methods, options, self.info, self._predicting)
        plan = make_plan(methods, options, self.info, self._predicting)
        if len(self._plans) >= 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # -- running --------------------------------------------------------------------------
    def _run(
        self,
        x: np.ndarray,
        cls: np.ndarray | None,
        fetch: Sequence[str],
        mode: int = contract.MODE_EXPLAIN,
        seed: np.ndarray | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """One ``session.run`` of ``fetch`` (distinct names) on input batch ``x``, with the
        class input, the seed (``onnxcam.targets``) and ``extra`` inputs when given. A model
        whose batch is fixed (n, often 1: a detector exported as it came) runs in chunks of n
        rows."""
        n = self._fixed_batch
        if n is not None and len(x) > n and len(x) % n == 0 and not extra:
            parts = [
                self._run(
                    x[i : i + n],
                    None if cls is None else cls[i : i + n],
                    fetch,
                    mode,
                    None if seed is None else seed[i : i + n],
                )
                for i in range(0, len(x), n)
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        feeds = {self.info.input.name: self.info.input.feed(x), **(extra or {})}
        if cls is not None:
            feeds[contract.CLASS_INPUT] = cls.astype(np.int64)
        if seed is not None:
            feeds[contract.SEED_INPUT] = seed.astype(self._seed_dtype)
        if mode != contract.MODE_EXPLAIN:
            feeds[contract.MODE_INPUT] = np.array(mode, dtype=np.int64)
        names = list(fetch)
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def _predictions(self, out: dict[str, np.ndarray], k: int) -> list[list[Prediction]]:
        """Top-k of each sample: read from the graph's top-k outputs when it has them (and k is
        within them), else ranked here from the logits."""
        index = out.get(contract.TOPK_INDEX_OUTPUT)
        logits = out[self.info.logits_output]
        if self.info.task == "segment":
            return self._region_predictions(logits)
        if index is not None and (k <= index.shape[1] or index.shape[1] == logits.shape[1]):
            label = self.info.label
            rows = zip(
                index.tolist(),
                out[contract.TOPK_PROBABILITY_OUTPUT].tolist(),
                out[contract.TOPK_LOGIT_OUTPUT].tolist(),
                strict=True,
            )
            return [
                [Prediction(j, label(j), p, z) for j, p, z in list(zip(*r, strict=True))[:k]]
                for r in rows
            ]
        return self._rank(logits, k)

    def _region_predictions(self, logits: np.ndarray) -> list[list[Prediction]]:
        """A segmenter's classes by area: probability = the fraction of pixels predicted as
        the class, logit = its mean logit over those pixels (every class present, largest
        first)."""
        result = []
        for z in logits:
            pix = np.argmax(z, axis=0)
            counts = np.bincount(pix.ravel(), minlength=z.shape[0])
            order = np.argsort(-counts, kind="stable")
            row = []
            for j in order:
                mask = pix == j
                mean = float(z[j][mask].mean()) if counts[j] else float(z[j].mean())
                row.append(Prediction(int(j), self.info.label(int(j)), counts[j] / pix.size, mean))
            result.append(row)
        return result

    def _rank(self, logits: np.ndarray, k: int) -> list[list[Prediction]]:
        """Top-k of each row of the logits (probabilities are monotone in them: a partial
        sort of the logits)."""
        k = min(k, logits.shape[1])
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), 1), 1)
        probs = self.info.probabilities(logits)
        return [
            [
                Prediction(int(j), self.info.label(int(j)), float(probs[i, j]), float(logits[i, j]))
                for j in row
            ]
            for i, row in enumerate(top)
        ]

    def predict(self, images: Iterable[ImageSource], topk: int = 5) -> list[list[Prediction]]:
        """Top-k predictions for each image (no maps)."""
        arrays = [self.load(s)[1] for s in images]
        x = preprocess(arrays, self.info.input)
        return self._predictions(self._run(x, None, self._predicting), topk)

    def embed(self, images: Iterable[ImageSource]) -> np.ndarray:
        """The model's logits (an embedding model's vectors) for each image, [n, ...]."""
        arrays = [self.load(s)[1] for s in images]
        x = preprocess(arrays, self.info.input)
        name = self.info.logits_output
        return self._run(x, None, [name], contract.MODE_FORWARD)[name].astype(np.float64)

    def explain(
        self, images: ImageSource | Iterable[ImageSource], methods="gradcam", **kw
    ) -> list[Explanation]:
        """Explain images (paths or arrays); raises ``ImageError`` on an unreadable one.

        Keyword options: ``classes`` (None = top-1, an index or label name, or one per image),
        and ``ExplainOptions``' fields: ``topk`` (explain each of the top-k classes), ``layers``
        (index, name, list or 'all'), ``fuse`` (fuse the layers' maps), ``fusion`` (mean, max,
        product), ``aug_smooth`` (test-time augmentation), ``relu``,
        ``batch_size``, ``smooth_samples``, ``smooth_noise``, ``seed``, ``perturbation``,
        ``keep_tensors``; and ``method_progress`` (see ``iter_explain``).
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        return _all_or_raise(self.iter_explain(images, methods, **kw))

    def iter_explain(
        self,
        sources: Iterable[ImageSource],
        methods: str | Sequence[str] = "gradcam",
        *,
        classes: int | str | Sequence[int | str] | None = None,
        targets: Target | Sequence[Target] | None = None,
        topk: int = _DEFAULT.topk,
        layers: LayerChoice = _DEFAULT.layers,
        fuse: bool = _DEFAULT.fuse,
        fusion: str = _DEFAULT.fusion,
        aug_smooth: bool = _DEFAULT.aug_smooth,
        relu: bool = _DEFAULT.relu,
        batch_size: int = _DEFAULT.batch_size,
        smooth_samples: int = _DEFAULT.smooth_samples,
        smooth_noise: float = _DEFAULT.smooth_noise,
        seed: int = _DEFAULT.seed,
        ig_steps: int = _DEFAULT.ig_steps,
        ig_baseline: str = _DEFAULT.ig_baseline,
        perturbation: PerturbationOptions | None = _DEFAULT.perturbation,
        keep_tensors: bool = _DEFAULT.keep_tensors,
        progress: Callable[[int], None] | None = None,
        method_progress: Progress | None = None,
    ) -> Iterator[Explanation | Failure]:
        """Like ``explain`` but yields a ``Failure`` for a bad input and goes on.

        The options are ``ExplainOptions``' fields (its defaults); ``progress(n)`` is called
        after every n inputs, ``method_progress`` by the perturbation methods' scorer.
        """
        if self.info.task == "detect":
            raise MethodError("this model is a detector: explain it with Explainer.detect")
        given = locals()  # the keyword arguments are ExplainOptions' fields, one for one
        options = ExplainOptions(**{f.name: given[f.name] for f in fields(ExplainOptions)})
        plan = self.plan(methods, options)
        if self.info.task == "segment" and targets is None and classes is not None:
            # a chosen class's predicted region may be empty: checked on the host (Region)
            pick = [classes] if isinstance(classes, (int, str)) else list(classes)
            targets = [Region(self.info.class_index(c)) for c in pick]
            targets, classes = (targets[0] if isinstance(classes, (int, str)) else targets), None
        per_target = self._targets(targets, classes, topk)
        per_image = None if classes is None or isinstance(classes, (int, str)) else list(classes)
        fixed = None if per_image is not None or classes is None else self.info.class_index(classes)
        batch: list[BatchInput] = []
        for i, src in enumerate(sources):
            try:
                name, img = self.load(src)
                cls = fixed if per_image is None else self.info.class_index(per_image[i])
                target = per_target(i)
            except (OnnxcamError, IndexError) as e:
                if progress:
                    progress(1)
                yield Failure(str(src) if not isinstance(src, np.ndarray) else "<array>", str(e))
                continue
            batch.append(BatchInput(name, img, cls, img.shape[:2], target))
            if len(batch) == batch_size:
                yield from self._explain_batch(
                    self._preprocess(batch), batch, plan, method_progress
                )
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            yield from self._explain_batch(self._preprocess(batch), batch, plan, method_progress)
            if progress:
                progress(len(batch))

    # -- detectors ------------------------------------------------------------------------------
    def detect(
        self, images: ImageSource | Iterable[ImageSource], methods="gradcam", **kw
    ) -> list[DetectionResult]:
        """Detect and explain: each image's kept detections, each with its own map (fused
        over the head's scales), in one batched head-only backward per image. Raises
        ``ImageError`` on an unreadable image; options as ``iter_detect``."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        return _all_or_raise(self.iter_detect(images, methods, **kw))

    def iter_detect(
        self,
        sources: Iterable[ImageSource],
        methods: str | Sequence[str] = "gradcam",
        *,
        top: int = 10,
        conf: float = 0.25,
        iou: float = 0.45,
        cls: int | str | None = None,
        targets: Sequence[Detection] = (),
        fuse: str = "max",
        relu: bool = True,
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[DetectionResult | Failure]:
        """Like ``detect``, yielding a ``Failure`` for a bad input and going on.

        One ``session.run`` per image: the graph keeps the ``top`` best detections (each
        anchor's best class ≥ ``conf``, only class ``cls`` if given, class-wise NMS at ``iou``)
        and returns their boxes with one gradient row each (``export/detect_graph.py``). Each
        method's maps at the head's scales are rectified (``relu``), brought to input size and
        fused (``fuse``: ``detection.FUSIONS``); the image's map fuses its detections (max).
        An image where nothing is kept gets a result with no detections and a ``note``.
        ``targets``: explain these ``Detection(anchor, class)`` of every image instead (one
        seed row each; their boxes read from the output)."""
        if self.info.task != "detect" or self.info.score is None or not self.info.score.detect:
            raise MethodError(
                f"this model was exported as a {self.info.task} model; detections need a "
                "detector exported with --task detect"
            )
        if top < 1 or not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise MethodError("top must be ≥ 1 and conf, iou within [0, 1]")
        if fuse not in detection.FUSIONS:
            raise MethodError(f"unknown fusion {fuse!r}; choose {', '.join(detection.FUSIONS)}")
        names = resolve_methods(methods, False)
        other = [m for m in names if set(METHODS[m].needs) - {"activations", "gradients"}]
        if other:
            raise MethodError(
                f"{other[0]} cannot explain a detection (it needs "
                f"{', '.join(METHODS[other[0]].needs)}); use the gradient methods or eigencam"
            )
        wanted = None if cls is None else self.info.class_index(cls)
        chosen = list(targets)
        if chosen and self._seed_shape(1)[1] != self.info.num_classes:
            raise MethodError("given detections need a YOLOv8/11-style detector (class logits)")
        for d in chosen:
            d.check(self.info.num_classes)
            if not 0 <= d.anchor < self._seed_shape(1)[-1]:
                raise MethodError(
                    f"anchor {d.anchor} is out of range (0..{self._seed_shape(1)[-1] - 1})"
                )
        batch: list[BatchInput] = []
        for src in sources:
            try:
                name, img = self.load(src)
            except OnnxcamError as e:
                if progress:
                    progress(1)
                yield Failure(str(src) if not isinstance(src, np.ndarray) else "<array>", str(e))
                continue
            batch.append(BatchInput(name, img, None, img.shape[:2]))
            if len(batch) == batch_size:
                yield from self._detect_batch(
                    batch, names, top, conf, iou, wanted, fuse, relu, chosen
                )
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            yield from self._detect_batch(batch, names, top, conf, iou, wanted, fuse, relu, chosen)
            if progress:
                progress(len(batch))

    def _detect_batch(
        self,
        batch: list[BatchInput],
        names: list[str],
        top: int,
        conf: float,
        iou: float,
        wanted: int | None,
        fuse: str,
        relu: bool,
        chosen: Sequence[Detection] = (),
    ) -> list[DetectionResult]:
        """One run per image (the graph keeps one gradient row per detection of one image;
        ``chosen``: explain these detections instead)."""
        targets = self.info.targets
        grads = [m for m in names if "gradients" in METHODS[m].needs]
        # the graph's own detections, every method readable from windows: the gradients as
        # windows (mode 3: no whole map of zeros per row and scale)
        windowed = (
            grads
            and not chosen
            and all(t.window is not None and t.window.output for t in targets)
            and set(grads) <= WINDOWED
        )
        fetch = [
            contract.DETECTIONS_OUTPUT,
            *(t.activation for t in targets),
            *((t.window.output if windowed else t.gradient for t in targets) if grads else ()),
        ]
        extra = {
            contract.DETECT_CONF_INPUT: np.array([conf], np.float32),
            contract.DETECT_IOU_INPUT: np.array([iou], np.float32),
            contract.DETECT_TOP_INPUT: np.array([top], np.int64),
        }
        mode = contract.MODE_FORWARD
        if grads:
            mode = contract.MODE_WINDOWS if windowed else contract.MODE_EXPLAIN
        cls = None if wanted is None else np.array([wanted])
        spec = self.info.score.detect
        seed = None
        if chosen:  # given detections: their seed rows; boxes decoded from the output here
            fetch.append(spec.output)
            shape = self._seed_shape(len(chosen))
            seed = np.stack([d.weights(np.zeros(shape[1:])) for d in chosen])
        x = self._preprocess(batch)
        results = []
        for i, it in enumerate(batch):
            t0 = time.perf_counter()
            out = self._run(x[i : i + 1], cls, fetch, mode, seed, extra)
            seconds = time.perf_counter() - t0
            if chosen:
                out[contract.DETECTIONS_OUTPUT] = detection.rows_of(
                    out[spec.output][0], spec, [(d.anchor, d.c) for d in chosen]
                )
            rows = out[contract.DETECTIONS_OUTPUT]
            if not rows[:, 7].any():
                note = f"no detection kept (conf {conf}, iou {iou}); lower --conf to see more"
                results.append(DetectionResult(it.name, it.image, [], {}, seconds, note))
                continue
            results.append(self._explain_detections(it, out, names, fuse, relu, seconds))
        return results

    def _explain_detections(
        self,
        it: BatchInput,
        out: dict[str, np.ndarray],
        names: list[str],
        fuse: str,
        relu: bool,
        seconds: float,
    ) -> DetectionResult:
        """One image's detections and their maps: each method on every head input (one row
        per detection), rectified, brought to input size and fused (``detection.fuse``)."""
        info = self.info
        rows = out[contract.DETECTIONS_OUTPUT]
        t0 = time.perf_counter()
        size = (info.input.height, info.input.width)
        anchors = rows[:, 6].astype(np.int64)
        per_method: dict[str, np.ndarray] = {}
        for m in names:
            levels = []
            for t in info.targets:
                A = t.layout.to_nchw(out[t.activation])
                if "gradients" not in METHODS[m].needs:  # one map for every detection
                    raw = METHODS[m].formula(Terms(A))  # (Eigen-CAM): computed once
                elif t.window is not None and m in WINDOWED:
                    given = t.window.output in out  # mode 3: the windows themselves
                    G = out[t.window.output if given else t.gradient]
                    raw = detection.window_map(METHODS[m].formula, t, A, G, anchors, given)
                else:
                    G = t.layout.to_nchw(out[t.gradient])
                    raw = METHODS[m].formula(Terms(np.broadcast_to(A, G.shape), G))
                raw = np.asarray(raw, dtype=np.float32)
                levels.append(postprocess.relu(raw) if relu else raw)
            per_method[m] = detection.fuse(levels, size, fuse, len(rows))
        dt = time.perf_counter() - t0
        found = []
        for j, row in enumerate(rows):
            maps = {
                m: CamMap(m, "fused", v[j], v[j], size, it.size, dt / len(rows))
                for m, v in per_method.items()
            }
            found.append(detection.from_row(row, size, it.size, info.label, maps))
        overall = {}
        for m, v in per_method.items():
            top = v.max(axis=0)
            overall[m] = CamMap(m, "fused", top, top, size, it.size, dt)
        return DetectionResult(it.name, it.image, found, overall, seconds)

    def explain_tensor(
        self, x: np.ndarray, methods: str | Sequence[str] = "gradcam", **kw
    ) -> list[Explanation]:
        """Explain an already preprocessed input batch (the model's own input tensor).

        For servers that do their own preprocessing; maps' "original" size is the input size
        and ``Explanation.image`` is None. Same options as ``iter_explain`` (one batch).
        """
        spec = self.info.input
        x = np.ascontiguousarray(x, dtype=np.float32)
        size = (spec.height, spec.width)
        classes = kw.pop("classes", None)
        per = [None] * len(x) if classes is None else classes
        if isinstance(per, (int, str)):
            per = [per] * len(x)
        pick = self._targets(kw.pop("targets", None), classes, kw.get("topk", 1))
        items = [
            BatchInput(
                f"<tensor {i}>",
                None,
                None if c is None else self.info.class_index(c),
                size,
                pick(i),
            )
            for i, c in zip(range(len(x)), per, strict=True)
        ]
        progress = kw.pop("method_progress", None)
        done = self._explain_batch(x, items, self.plan(methods, ExplainOptions(**kw)), progress)
        failed = [r for r in done if isinstance(r, Failure)]
        if failed:
            raise MethodError(failed[0].error)
        return done

    def _targets(
        self, targets: Target | Sequence[Target] | None, classes: object, topk: int
    ) -> Callable[[int], Target | None]:
        """Image i's target: one for all, one per image, or None (the class or top-1)."""
        if targets is None:
            return lambda i: None
        if classes is not None or topk > 1:
            raise MethodError("give targets, or classes/topk, not both")
        if isinstance(targets, Target):
            targets.check(self.info.num_classes)
            return lambda i: targets
        listed = list(targets)
        for t in listed:
            t.check(self.info.num_classes)

        def pick(i: int) -> Target:
            if i >= len(listed):
                raise MethodError(f"{len(listed)} targets given for more images")
            return listed[i]

        return pick

    def _seeds(
        self, x: np.ndarray, batch: list[BatchInput]
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """The seed rows and reported classes of a batch with targets, and the images whose
        target cannot be explained (index → why); images without a target are explained for
        their class (or top-1). A forward run first when a seed depends on the logits."""
        act = self.info.activation
        chosen = [(it.target or ClassLogit(it.cls)).for_model(act) for it in batch]
        z = None
        if any(t.needs_logits for t in chosen):
            name = self.info.logits_output
            z = self._run(x, None, [name], contract.MODE_FORWARD)[name].astype(np.float64)
        shape = self._seed_shape(len(batch))
        rows, classes, failed = [], [], {}
        for i, t in enumerate(chosen):
            zi = z[i] if z is not None else np.zeros(shape[1:])
            try:
                w = np.asarray(t.weights(zi), dtype=np.float64)
                if w.shape != tuple(shape[1:]):
                    raise MethodError(f"a seed of shape {w.shape}; the model takes {shape[1:]}")
                if not np.all(np.isfinite(w)):
                    raise MethodError("the target's seed is not finite (NaN or inf logits)")
            except MethodError as e:
                failed[i] = str(e)
                w = np.zeros(shape[1:])
            rows.append(w)
            classes.append(t.cls(zi) if i not in failed else 0)
        return np.stack(rows), np.array(classes, dtype=np.int64), failed

    def _seed_shape(self, rows: int) -> list[int]:
        """[rows, *logits.shape[1:]] (``ScoreSpec.shape``)."""
        rest = self.info.score.shape if self.info.score else None
        if rest is None:
            raise MethodError("the model's logits have dynamic sizes: no seed can be fed")
        return [rows, *rest]

    def _preprocess(self, batch: list[BatchInput]) -> np.ndarray:
        return preprocess([it.image for it in batch], self.info.input)

    def _explain_batch(
        self,
        x: np.ndarray,
        batch: list[BatchInput],
        plan: Plan,
        progress: Progress | None = None,
        augment: bool = True,
    ) -> list[Explanation | Failure]:
        """Explain one preprocessed batch; ``augment``: apply ``aug_smooth`` when asked."""
        info, opts = self.info, plan.options
        given = [it.cls for it in batch]
        cls = (
            None
            if all(c is None for c in given)
            else np.array([-1 if c is None else c for c in given])
        )
        t0 = time.perf_counter()
        seed = None
        if any(it.target is not None for it in batch):
            seed, cls, failed = self._seeds(x, batch)
            if failed:  # those images are reported; the others explained
                kept = [i for i in range(len(batch)) if i not in failed]
                done: list = [
                    Failure(batch[i].name, f"{batch[i].name}: {why}") for i, why in failed.items()
                ]
                if kept:
                    done += self._explain_batch(x[kept], [batch[i] for i in kept], plan, progress)
                return done
            scored = [c.name for c in plan.calls if c.scored]
            if scored and not all(isinstance(it.target, (ClassLogit, type(None))) for it in batch):
                raise MethodError(
                    f"{scored[0]} scores class logits; explain this target with a gradient "
                    "method (gradcam, layercam, …)"
                )
        out = self._run(x, cls, plan.fetch, plan.mode, seed)
        seconds = time.perf_counter() - t0
        k = max(opts.topk, 5)
        preds = self._predictions(out, k)
        rounds = [(out, out[contract.CLASS_OUTPUT], seconds)]
        if opts.topk > 1:  # ranks 2..k: the images again, with the class input set
            reps = np.array([[p.index for p in ps[1 : opts.topk]] for ps in preds])  # [B, k-1]
            xr = np.repeat(x, opts.topk - 1, axis=0)
            t0 = time.perf_counter()
            more = self._run(xr, reps.reshape(-1), plan.rerun_fetch, plan.mode)
            dt = time.perf_counter() - t0
            for r in range(opts.topk - 1):
                sel = {n: v[r :: opts.topk - 1] for n, v in more.items()}
                rounds.append((sel, reps[:, r], dt / (opts.topk - 1)))
        results = []
        for arrays, explained, secs in rounds:
            noisy = self._noisy_gradients(x, explained, plan, seed) if plan.noisy else None
            path = self._path_gradients(x, explained, plan, seed) if plan.path else None
            maps = self._maps(arrays, noisy, plan, batch, x, explained, progress, path)
            for i, it in enumerate(batch):
                c = int(explained[i])
                target = next((p for p in preds[i] if p.index == c), None)
                if target is None:  # not among the top-k: its own probability
                    logits = out[info.logits_output][i]
                    p = float(info.probabilities(logits[None])[0, c])
                    target = Prediction(c, info.label(c), p, float(logits[c]))
                results.append(
                    Explanation(
                        it.name,
                        it.image,
                        preds[i][:k],
                        target,
                        {m: v[i] for m, v in maps.items()},
                        secs / len(batch),
                        {n: arrays[n][i : i + 1] for n in plan.keep} if plan.keep else {},
                    )
                )
        # image-major order: each image's classes together
        n = len(batch)
        results = [results[r * n + i] for i in range(n) for r in range(len(rounds))]
        if augment and opts.aug_smooth:
            return self._aug_smooth(x, batch, plan, progress, results)
        return results

    def _aug_smooth(
        self,
        x: np.ndarray,
        batch: list[BatchInput],
        plan: Plan,
        progress: Progress | None,
        results: list[Explanation],
    ) -> list[Explanation]:
        """pytorch-grad-cam's ``aug_smooth``: every result's maps averaged with those of the
        input × 0.9, × 1.1 and the three flipped horizontally (flipped back), for the same class
        or target; the 5 augmented copies of each result run as one batch. Each averaged map
        is the mean of the maps at input size (``CamMap.input``: pytorch-grad-cam's mean, in
        ``raw``), min-maxed again (``feature``)."""
        per_image = len(results) // len(batch)
        src = [j // per_image for j in range(len(results))]
        width = self.info.input.layout.spatial_axes[1]
        xs, items = [], []
        for flip, factor in AUGMENTATIONS[1:]:
            xa = x[src] * np.float32(factor)
            xs.append(np.flip(xa, axis=width) if flip else xa)
            items += [
                BatchInput(it.name, it.image, r.target.index, it.size, it.target)
                for r, it in zip(results, (batch[i] for i in src), strict=True)
            ]
        single = replace(plan, options=replace(plan.options, topk=1, aug_smooth=False))
        x_aug = np.ascontiguousarray(np.concatenate(xs))
        augmented = self._explain_batch(x_aug, items, single, progress, augment=False)
        if len(augmented) != len(items) or any(isinstance(e, Failure) for e in augmented):
            raise MethodError("aug_smooth: a target cannot be explained on an augmented copy")
        smoothed = []
        for j, r in enumerate(results):
            copies = [
                (flip, augmented[a * len(results) + j])
                for a, (flip, _) in enumerate(AUGMENTATIONS[1:])
            ]
            maps = {}
            for m, cm in r.maps.items():
                stack = [cm.input] + [
                    (np.flip(e.maps[m].input, axis=1) if flip else e.maps[m].input)
                    for flip, e in copies
                ]
                mean = np.mean(stack, axis=0, dtype=np.float32)
                maps[m] = replace(
                    cm,
                    raw=mean,
                    feature=postprocess.normalize(mean[None])[0],
                    seconds=cm.seconds + sum(e.maps[m].seconds for _, e in copies),
                )
            smoothed.append(replace(r, maps=maps))
        return smoothed

    def _noisy_gradients(
        self, x: np.ndarray, cls: np.ndarray, plan: Plan, seed: np.ndarray | None = None
    ) -> dict:
        """Gradients of n noisy copies per image in one batched run: {name: [B, n, ...]}."""
        opts = plan.options
        n = opts.smooth_samples
        noise = [  # keyed by each image's content: its map does not depend on its batch
            image_rng(opts.seed, xi).normal(size=(n, *x.shape[1:])).astype(np.float32)
            * np.float32(opts.smooth_noise * (xi.max() - xi.min()))
            for xi in x
        ]
        xs = np.repeat(x, n, axis=0) + np.concatenate(noise)
        seeds = None if seed is None else np.repeat(seed, n, axis=0)
        out = self._run(xs, np.repeat(cls, n), plan.noisy, contract.MODE_EXPLAIN, seeds)
        return {k: v.reshape(len(x), n, *v.shape[1:]) for k, v in out.items()}

    def _path_gradients(
        self,
        x: np.ndarray,
        cls: np.ndarray,
        plan: Plan,
        seed: np.ndarray | None,
    ) -> PathGradients:
        """Integrated Gradients' runs: each image's input gradient at baseline + α_k (x −
        baseline) for the Gauss–Legendre points α_k, plus the score at the baseline and at x
        (α = 0, 1), in runs of ``batch_size`` rows."""
        opts = plan.options
        nodes, w = np.polynomial.legendre.leggauss(opts.ig_steps)
        alphas, weights = (1 + nodes) / 2, w / 2  # on [0, 1]; the weights sum to 1
        base = np.stack([self._baseline(xi, opts) for xi in x])
        a = np.concatenate([alphas, [0.0, 1.0]]).astype(np.float32)[None, :, None, None, None]
        xs = (base[:, None] + a * (x - base)[:, None]).reshape(-1, *x.shape[1:])
        n = len(alphas) + 2
        rows = np.repeat(cls, n)
        seeds = None if seed is None else np.repeat(seed, n, axis=0)
        fetch = [plan.path, contract.SCORE_OUTPUT]
        step = max(opts.batch_size, 1)
        parts = [
            self._run(
                xs[i : i + step],
                rows[i : i + step],
                fetch,
                contract.MODE_EXPLAIN,
                None if seeds is None else seeds[i : i + step],
            )
            for i in range(0, len(xs), step)
        ]
        G = np.concatenate([p[plan.path] for p in parts]).reshape(len(x), n, *x.shape[1:])
        score = np.concatenate([p[contract.SCORE_OUTPUT] for p in parts]).reshape(len(x), n)
        return PathGradients(G[:, :-2], weights, base, score[:, -2], score[:, -1])

    def _baseline(self, xi: np.ndarray, opts: ExplainOptions) -> np.ndarray:
        """Integrated Gradients' baseline for model input ``xi`` (``ig_baseline``), in the
        model's input space: black pixels, the input blurred, or uniform pixel noise."""
        spec = self.info.input
        if opts.ig_baseline == "blur":  # per channel: blur commutes with (p·scale − mean)/std
            return blur(xi, spec)
        h, w = (spec.height, spec.width)
        if opts.ig_baseline == "black":
            pixels = np.zeros((1, h, w, 3), np.float32)
        else:
            rng = image_rng(opts.seed, xi)
            pixels = rng.uniform(0, 255, size=(1, h, w, 3)).astype(np.float32)
        return preprocess(list(pixels), spec)[0]

    def _maps(
        self,
        arrays: dict[str, np.ndarray],
        noisy: dict[str, np.ndarray] | None,
        plan: Plan,
        batch: list[BatchInput],
        x: np.ndarray,
        classes: np.ndarray,
        progress: Progress | None,
        path: PathGradients | None = None,
    ) -> dict[str, list[CamMap]]:
        """Every requested method on every target layer (fused when asked) → per-image maps."""
        spec = self.info.input
        size = (spec.height, spec.width)
        sizes = [it.size for it in batch]
        opts = plan.options
        terms: dict[int, Terms] = {}  # per target layer, shared by the methods
        result: dict[str, list[CamMap]] = {}
        for call in plan.calls:
            per_layer = []
            t0 = time.perf_counter()
            stats: dict[str, np.ndarray] = {}
            for j, k in enumerate(call.layers):
                t, li = plan.targets[k], plan.inputs[k]
                if call.graph:  # computed inside the model (export --heatmaps): take it as is
                    feat = arrays[call.graph[j]]
                    per_layer.append((t, feat, feat))
                    continue
                if call.scored:
                    arg = self._perturbation_inputs(call, li, arrays, x, classes, plan, progress)
                else:
                    if k not in terms:
                        terms[k] = _terms(li, arrays, noisy, path)
                    arg = terms[k]
                raw = np.asarray(call.spec.formula(arg), dtype=np.float32)
                if call.spec.stats is not None:
                    stats = call.spec.stats(arg, raw)
                if call.spec.display == "attribution":
                    feat = postprocess.attribution(raw)
                else:
                    feat = postprocess.normalize(postprocess.relu(raw) if opts.relu else raw)
                per_layer.append((t, raw, feat))
            rule = call.spec.fusion or (opts.fusion if opts.fuse else None)
            if rule and len(per_layer) > 1:  # one map from the layers' (onnxcam.fusion)
                feat = fuse_layers([f for _, _, f in per_layer], size, rule)
                per_layer = [(None, feat, feat)]
            dt = (time.perf_counter() - t0) / len(batch)
            m = call.name
            for t, raw, feat in per_layer:
                key = m if t is None or len(per_layer) == 1 else f"{m}@{t.name}"
                layer = "fused" if t is None else t.name
                result[key] = [
                    CamMap(
                        m,
                        layer,
                        raw[i],
                        feat[i],
                        size,
                        sizes[i],
                        dt,
                        {name: float(v[i]) for name, v in stats.items()},
                    )
                    for i in range(len(batch))
                ]
        return result

    def _perturbation_inputs(
        self,
        call: MethodCall,
        li: LayerInputs,
        arrays: dict[str, np.ndarray],
        x: np.ndarray,
        classes: np.ndarray,
        plan: Plan,
        progress: Progress | None,
    ) -> PerturbationInputs:
        t = li.layer
        A = t.layout.to_nchw(arrays[li.activation]) if li.activation else None
        scorer = Scorer(
            lambda feeds, names: self.session.run(names, feeds),
            self.info,
            plan.perturbation.batch_size,
            progress,
            call.name,
        )
        G = t.layout.to_nchw(arrays[li.gradient]) if li.gradient else None
        layout = self.info.input.layout
        return PerturbationInputs(
            x, A, np.asarray(classes), t, scorer, plan.perturbation, layout, G
        )


def _all_or_raise(stream: Iterable) -> list:
    """Every result of ``stream``; the first ``Failure`` raised (``MethodError`` for a target
    that cannot be explained, ``ImageError`` otherwise)."""
    results = []
    for r in stream:
        if isinstance(r, Failure):
            raise (MethodError if r.target else ImageError)(r.error)
        results.append(r)
    return results


def _terms(
    li: LayerInputs,
    arrays: dict[str, np.ndarray],
    noisy: dict | None,
    path: PathGradients | None = None,
) -> Terms:
    """One target layer's ``Terms`` (NCHW) from a run's outputs."""
    layout = li.layer.layout  # [B, (layout)] → [B, C, h, w] (views)
    A = G = w = Gs = F = M = None
    if li.activation:
        A = layout.to_nchw(arrays[li.activation])
    if li.gradient:
        G = layout.to_nchw(arrays[li.gradient])
        if li.pooled:  # proven equal at every position: per channel [B, C, 1, 1] (see Terms)
            G = G[:, :, :1, :1]
    if li.cam_weight:
        w = arrays[li.cam_weight]
    if li.fullgrad:
        F = arrays[li.fullgrad]
    if li.reciprocam:
        M = arrays[li.reciprocam]
    if noisy is not None and li.layer.gradient in noisy:
        Gs = layout.to_nchw(noisy[li.layer.gradient])  # [B, n, C, h, w]
    R = {rule: layout.to_nchw(arrays[name]) for rule, name in li.rules}
    if path is not None and li.layer.pixels:
        path = PathGradients(
            layout.to_nchw(path.G), path.weights, layout.to_nchw(path.baseline),
            path.baseline_score, path.score,
        )  # fmt: skip
    return Terms(A, G, w, Gs, R, path if li.layer.pixels else None, F, M)


@dataclass(frozen=True)
class BatchInput:
    """One input of a batch: its name, original image (None for a tensor), the class to
    explain (None: the top-1) and its original size."""

    name: str
    image: np.ndarray | None
    cls: int | None
    size: tuple[int, int]
    target: Target | None = None


__all__ = [  # the result types live in onnxcam.results (re-exported here)
    "CamMap",
    "ExplainOptions",
    "Explainer",
    "Explanation",
    "Failure",
    "Plan",
    "Prediction",
]
