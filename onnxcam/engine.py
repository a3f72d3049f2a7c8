"""``Explainer``: one session per model; images in, predictions and CAM maps out.

A single ``session.run`` returns predictions, activations and gradients for a batch; every
gradient method is then host-side numpy on those arrays. Only the outputs the requested
methods need are fetched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import contract, postprocess
from .errors import ContractError, ImageError, MethodError, OnnxcamError
from .image import as_rgb_array, preprocess, read_image
from .methods import METHODS, resolve_methods
from .model import ModelInfo, TargetLayer, open_session, parse_contract
from .perturbation import PerturbationInputs, PerturbationOptions, Progress, Scorer, image_rng

ImageSource = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """A class with its label, probability and pre-softmax score."""

    index: int
    label: str
    probability: float
    logit: float


@dataclass
class CamMap:
    """One method's map for one image: raw, and normalised at three resolutions."""

    method: str
    layer: str
    raw: np.ndarray
    """Feature resolution, before ReLU and normalisation."""
    feature: np.ndarray
    """Feature resolution, rectified (unless relu=False) and min-max normalised to [0, 1]."""
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    seconds: float = 0.0
    """Host time this method took per image (inference not included)."""

    @cached_property
    def input(self) -> np.ndarray:
        """The map at the model-input resolution (resized, then min-max normalised again)."""
        if self.feature.shape == tuple(self.input_size):  # e.g. an in-graph heatmap
            return self.feature  # already normalised: min-max would give it back unchanged
        return postprocess.resize_normalized(self.feature, *self.input_size)

    @cached_property
    def original(self) -> np.ndarray:
        """The map at the original image resolution (resized, then min-max normalised again)."""
        if self.feature.shape == tuple(self.original_size):
            return self.feature
        return postprocess.resize_normalized(self.feature, *self.original_size)


@dataclass
class Explanation:
    """One image explained for one class."""

    source: str
    image: np.ndarray | None
    """The original image, RGB float32 in [0, 255] (None when explained from a tensor)."""
    predictions: list[Prediction]
    """The model's top-k predictions."""
    target: Prediction
    """The class that was explained."""
    maps: dict[str, CamMap] = field(default_factory=dict)
    inference_seconds: float = 0.0
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    """Raw graph outputs of this image (activations, gradients, CAM weights) when asked for
    with ``keep_tensors=True``."""
    """This image's share of the session.run time(s)."""

    def overlay(
        self,
        method: str,
        alpha: float = 0.5,
        colormap: str = "jet",
        threshold: float | None = None,
    ) -> np.ndarray:
        """The map of ``method`` blended over the original image (RGB uint8)."""
        if method not in self.maps:
            raise MethodError(f"no map for {method!r}; have {', '.join(self.maps)}")
        if self.image is None:
            raise MethodError("no original image to overlay (explained from a tensor)")
        return postprocess.overlay(
            self.image, self.maps[method].original, alpha, colormap, threshold
        )


@dataclass(frozen=True)
class Failure:
    """An input that could not be explained, and why (one line)."""

    source: str
    error: str


class Explainer:
    """Explain images with an onnxcam-exported model (``onnxcam export``).

    ``device``: ``auto`` (CUDA when onnxruntime-gpu sees a usable GPU, else CPU), ``cpu`` or
    ``cuda`` (an error when CUDA is not really in use). A plain ONNX model without onnxcam
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
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
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

    def layers(self, which: int | str | Sequence[int | str] | None) -> list[TargetLayer]:
        """Target layers by index or name; None → the first; 'all' → every exported layer."""
        targets = self.info.targets
        if which is None:
            return [targets[0]]
        if which == "all":
            return list(targets)
        out = []
        for w in [which] if isinstance(which, (int, str)) else which:
            hit = [t for t in targets if w in (t.index, t.name, t.tensor, str(t.index))]
            if not hit:
                names = ", ".join(f"{t.index}:{t.name}" for t in targets)
                raise MethodError(f"no exported layer {w!r}; the model has {names}")
            out.append(hit[0])
        return out

    # -- running --------------------------------------------------------------------------
    def _run(
        self, x: np.ndarray, cls: np.ndarray | None, fetch: list[str], mode: int | None = None
    ) -> dict[str, np.ndarray]:
        feeds = {self.info.input.name: x}
        if cls is not None:
            feeds[contract.CLASS_INPUT] = cls.astype(np.int64)
        if mode is not None and mode != contract.MODE_EXPLAIN:
            feeds[contract.MODE_INPUT] = np.array(mode, dtype=np.int64)
        names = list(dict.fromkeys(fetch))
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def _predictions(self, out: dict[str, np.ndarray], k: int) -> list[list[Prediction]]:
        """Top-k of each sample: read from the graph's top-k outputs when it has them (and k is
        within them), else ranked here from the logits."""
        index = out.get(contract.TOPK_INDEX_OUTPUT)
        logits = out[self.info.logits_output]
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

    def explain(
        self, images: ImageSource | Iterable[ImageSource], methods="gradcam", **kw
    ) -> list[Explanation]:
        """Explain images (paths or arrays); raises ``ImageError`` on an unreadable one.

        Keyword options: ``classes`` (None = top-1, an index or label name, or one per image),
        ``topk`` (explain each of the top-k classes), ``layers`` (index, name, list or 'all'),
        ``fuse`` (average the layers' maps), ``relu``, ``batch_size``, ``smooth_samples``,
        ``smooth_noise``, ``seed``.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        results = []
        for r in self.iter_explain(images, methods, **kw):
            if isinstance(r, Failure):
                raise ImageError(r.error)
            results.append(r)
        return results

    def iter_explain(
        self,
        sources: Iterable[ImageSource],
        methods: str | Sequence[str] = "gradcam",
        *,
        classes: int | str | Sequence[int | str] | None = None,
        topk: int = 1,
        layers: int | str | Sequence[int | str] | None = None,
        fuse: bool = False,
        relu: bool = True,
        batch_size: int = 8,
        smooth_samples: int = 8,
        smooth_noise: float = 0.15,
        seed: int = 0,
        perturbation: PerturbationOptions | None = None,
        keep_tensors: bool = False,
        progress: Callable[[int], None] | None = None,
        method_progress: Progress | None = None,
    ) -> Iterator[Explanation | Failure]:
        """Like ``explain`` but yields a ``Failure`` for a bad input and goes on."""
        if batch_size < 1:
            raise MethodError("batch_size must be at least 1")
        opts = self._options(
            methods,
            topk=topk,
            layers=layers,
            fuse=fuse,
            relu=relu,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            seed=seed,
            perturbation=perturbation,
            method_progress=method_progress,
            keep_tensors=keep_tensors,
        )
        per_image = None if classes is None or isinstance(classes, (int, str)) else list(classes)
        fixed = None if per_image is not None or classes is None else self.info.class_index(classes)
        batch: list[_Item] = []
        for i, src in enumerate(sources):
            try:
                name, img = self.load(src)
                cls = fixed if per_image is None else self.info.class_index(per_image[i])
            except (OnnxcamError, IndexError) as e:
                if progress:
                    progress(1)
                yield Failure(str(src) if not isinstance(src, np.ndarray) else "<array>", str(e))
                continue
            batch.append(_Item(name, img, cls, img.shape[:2]))
            if len(batch) == batch_size:
                yield from self._explain_batch(self._preprocess(batch), batch, opts)
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            yield from self._explain_batch(self._preprocess(batch), batch, opts)
            if progress:
                progress(len(batch))

    def explain_tensor(
        self, x: np.ndarray, methods: str | Sequence[str] = "gradcam", **kw
    ) -> list[Explanation]:
        """Explain an already preprocessed input batch (the model's own input tensor).

        For servers that do their own preprocessing; maps' "original" size is the input size
        and ``Explanation.image`` is None. Same options as ``iter_explain`` (one batch).
        """
        spec = self.info.input
        x = np.ascontiguousarray(x, dtype=np.float32)
        items = [
            _Item(f"<tensor {i}>", None, None, (spec.height, spec.width)) for i in range(len(x))
        ]
        classes = kw.pop("classes", None)
        if classes is not None:
            per = [classes] * len(x) if isinstance(classes, (int, str)) else list(classes)
            items = [
                _Item(it.name, None, self.info.class_index(c), it.size)
                for it, c in zip(items, per, strict=True)
            ]
        return self._explain_batch(x, items, self._options(methods, **kw))

    def _preprocess(self, batch: list[_Item]) -> np.ndarray:
        return preprocess([it.image for it in batch], self.info.input)

    def _explain_batch(
        self, x: np.ndarray, batch: list[_Item], opts: _RunOptions
    ) -> list[Explanation]:
        info = self.info
        given = [it.cls for it in batch]
        cls = (
            None
            if all(c is None for c in given)
            else np.array([-1 if c is None else c for c in given])
        )
        host = [m for m in opts.methods if not self._graph_heatmaps(m, opts)]
        needs = {n for m in host for n in METHODS[m].needs}
        from_graph = [h for m in opts.methods for h in self._graph_heatmaps(m, opts)]
        if from_graph:
            needs.add("gradients")  # the heatmaps live in the gradient branch (mode 0)
        if opts.keep_tensors:
            host = host or ["keep"]  # fetch the raw tensors even when every map is in-graph
            needs |= {"activations", "gradients"}
        predicting = self._predicting
        fetch = [
            *predicting,
            contract.CLASS_OUTPUT,
            *self._fetch_for(needs - {"gradients"} if not host else needs, opts.targets),
            *from_graph,
            *([t.cam_weight for t in opts.targets if t.cam_weight] if opts.keep_tensors else []),
        ]
        # no gradient needed → skip the gradient subgraph (graph contract v2 mode input)
        mode = contract.MODE_EXPLAIN if "gradients" in needs else contract.MODE_FORWARD
        t0 = time.perf_counter()
        out = self._run(x, cls, fetch, mode)
        seconds = time.perf_counter() - t0
        k = max(opts.topk, 5)
        preds = self._predictions(out, k)
        rounds = [(out, out[contract.CLASS_OUTPUT], seconds)]
        if opts.topk > 1:  # ranks 2..k: the images again, with the class input set
            reps = np.array([[p.index for p in ps[1 : opts.topk]] for ps in preds])  # [B, k-1]
            xr = np.repeat(x, opts.topk - 1, axis=0)
            t0 = time.perf_counter()
            more = self._run(xr, reps.reshape(-1), fetch[len(predicting) :], mode)
            dt = time.perf_counter() - t0
            for r in range(opts.topk - 1):
                sel = {n: v[r :: opts.topk - 1] for n, v in more.items()}
                rounds.append((sel, reps[:, r], dt / (opts.topk - 1)))
        results = []
        for arrays, explained, secs in rounds:
            noisy = None
            if "noisy_gradients" in needs:
                noisy = self._noisy_gradients(x, explained, opts)
            maps = self._maps(arrays, noisy, opts, batch, x, explained)
            for i, it in enumerate(batch):
                c = int(explained[i])
                logits = out[info.logits_output][i]
                target = next(
                    (p for p in preds[i] if p.index == c),
                    Prediction(
                        c,
                        info.label(c),
                        float(info.probabilities(logits[None])[0, c]),
                        float(logits[c]),
                    ),
                )
                results.append(
                    Explanation(
                        it.name,
                        it.image,
                        preds[i][: max(opts.topk, 5)],
                        target,
                        {m: v[i] for m, v in maps.items()},
                        secs / len(batch),
                        self._tensors_of(arrays, opts, i) if opts.keep_tensors else {},
                    )
                )
        # image-major order: each image's classes together
        n = len(batch)
        return [results[r * n + i] for i in range(n) for r in range(len(rounds))]

    @staticmethod
    def _tensors_of(arrays: dict, opts: _RunOptions, i: int) -> dict[str, np.ndarray]:
        """Image i's raw activations / gradients / CAM weights, keyed by output name."""
        names = [n for t in opts.targets for n in (t.activation, t.gradient, t.cam_weight) if n]
        return {n: arrays[n][i : i + 1] for n in names if n in arrays}

    def _options(
        self,
        methods,
        *,
        topk=1,
        layers=None,
        fuse=False,
        relu=True,
        smooth_samples=8,
        smooth_noise=0.15,
        seed=0,
        perturbation=None,
        method_progress=None,
        keep_tensors=False,
    ) -> _RunOptions:
        if topk < 1 or smooth_samples < 1:
            raise MethodError("topk and smooth_samples must be at least 1")
        names = resolve_methods(methods, self.info.has_cam_weights)
        return _RunOptions(
            names,
            self.layers(layers),
            fuse,
            relu,
            smooth_samples,
            smooth_noise,
            seed,
            topk,
            perturbation or PerturbationOptions(seed=seed),
            method_progress,
            keep_tensors,
        )

    def _graph_heatmaps(self, m: str, opts: _RunOptions) -> list[str]:
        """In-graph heatmap outputs that can stand in for method ``m`` (else [])."""
        if not opts.relu or (opts.fuse and len(opts.targets) > 1):
            return []
        names = [t.heatmaps.get(m) for t in opts.targets if t.heatmap_size == "input"]
        return names if len(names) == len(opts.targets) and all(names) else []

    def _fetch_for(self, needs: set[str], targets: list[TargetLayer]) -> list[str]:
        names = []
        for t in targets:
            if needs & {"activations", "noisy_gradients", "perturbation"}:
                names.append(t.activation)
            if "gradients" in needs:
                names.append(t.gradient)
            if "cam_weights" in needs:
                if not t.cam_weight:
                    raise MethodError(
                        f"CAM needs a GAP → Linear head after layer {t.name!r}; use gradcam"
                    )
                names.append(t.cam_weight)
        return names

    def _noisy_gradients(self, x: np.ndarray, cls: np.ndarray, opts: _RunOptions) -> dict:
        """Gradients of n noisy copies per image in one batched run: {name: [B, n, ...]}."""
        n = opts.smooth_samples
        noise = [  # keyed by each image's content: its map does not depend on its batch
            image_rng(opts.seed, xi).normal(size=(n, *x.shape[1:])).astype(np.float32)
            * np.float32(opts.smooth_noise * (xi.max() - xi.min()))
            for xi in x
        ]
        xs = np.repeat(x, n, axis=0) + np.concatenate(noise)
        names = [t.gradient for t in opts.targets]
        out = self._run(xs, np.repeat(cls, n), names)
        return {k: v.reshape(len(x), n, *v.shape[1:]) for k, v in out.items()}

    def _maps(
        self, arrays: dict, noisy: dict | None, opts: _RunOptions, batch, x, classes
    ) -> dict[str, list[CamMap]]:
        """Every requested method on every target layer (fused when asked) → per-image maps."""
        spec = self.info.input
        sizes = [it.size for it in batch]
        result: dict[str, list[CamMap]] = {}
        for m in opts.methods:
            s = METHODS[m]
            per_layer = []
            t0 = time.perf_counter()
            graph = self._graph_heatmaps(m, opts)
            for t in opts.targets:
                if graph:  # computed inside the model (export --heatmaps): take it as is
                    feat = arrays[t.heatmaps[m]]
                    per_layer.append((t, feat, feat))
                    continue
                if s.family == "perturbation":
                    kwargs = [self._perturbation_inputs(m, t, arrays, x, classes, opts)]
                else:
                    kwargs = self._method_inputs(s.needs, t, arrays, noisy)
                raw = np.asarray(s.fn(*kwargs), dtype=np.float32)
                feat = postprocess.normalize(postprocess.relu(raw) if opts.relu else raw)
                per_layer.append((t, raw, feat))
            if opts.fuse and len(per_layer) > 1:  # pytorch-grad-cam's multi-layer aggregation
                up = np.stack(
                    [postprocess.resize(f, spec.height, spec.width) for _, _, f in per_layer]
                )
                feat = postprocess.normalize(up.mean(axis=0))
                per_layer = [(None, feat, feat)]
            dt = (time.perf_counter() - t0) / len(batch)
            for t, raw, feat in per_layer:
                key = m if t is None or len(per_layer) == 1 else f"{m}@{t.name}"
                layer = "fused" if t is None else t.name
                result[key] = [
                    CamMap(m, layer, raw[i], feat[i], (spec.height, spec.width), sizes[i], dt)
                    for i in range(len(batch))
                ]
        return result

    def _perturbation_inputs(self, m, t, arrays, x, classes, opts) -> PerturbationInputs:
        A = arrays.get(t.activation)
        if A is not None and t.layout == contract.LAYOUT_NHWC:
            A = A.transpose(0, 3, 1, 2)
        scorer = Scorer(
            lambda feeds, names: self.session.run(names, feeds),
            self.info,
            opts.perturbation.batch_size,
            opts.method_progress,
            m,
        )
        nchw = self.info.input.layout == contract.LAYOUT_NCHW
        return PerturbationInputs(x, A, np.asarray(classes), t, scorer, opts.perturbation, nchw)

    @staticmethod
    def _method_inputs(needs, t: TargetLayer, arrays: dict, noisy: dict | None) -> list[np.ndarray]:
        nhwc = t.layout == contract.LAYOUT_NHWC

        def nchw(a: np.ndarray) -> np.ndarray:
            return a.transpose(0, 3, 1, 2) if nhwc else a

        args = []
        for need in needs:
            if need == "activations":
                args.append(nchw(arrays[t.activation]))
            elif need == "gradients":
                G = nchw(arrays[t.gradient])
                # proven equal at every position: per channel ([B, C, 1, 1]), see methods._pooled
                args.append(G[:, :, :1, :1] if t.gradient_pooled else G)
            elif need == "cam_weights":
                args.append(arrays[t.cam_weight])
            elif need == "noisy_gradients":
                g = noisy[t.gradient]
                args.append(g.transpose(0, 1, 4, 2, 3) if nhwc else g)
        return args


@dataclass(frozen=True)
class _Item:
    """One input of a batch: its name, original image (or None), class and original size."""

    name: str
    image: np.ndarray | None
    cls: int | None
    size: tuple[int, int]


@dataclass(frozen=True)
class _RunOptions:
    methods: list[str]
    targets: list[TargetLayer]
    fuse: bool
    relu: bool
    smooth_samples: int
    smooth_noise: float
    seed: int
    topk: int
    perturbation: PerturbationOptions
    method_progress: Progress | None
    keep_tensors: bool = False
