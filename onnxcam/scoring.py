"""``Scorer``: batched "score these perturbed inputs" against a model's one session.

Shared by the perturbation methods (``onnxcam.perturbation``) and the faithfulness metrics
(``onnxcam.metrics``). Perturbed *images* run with ``onnxcam_mode = 1`` (the gradient subgraph
is skipped); perturbed *activations* run through a target's head-only path with
``onnxcam_mode = 2`` (the layers before the target are not run at all).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import contract
from .contract import TargetLayer
from .errors import MethodError
from .model import ModelInfo

Progress = Callable[[int, int, str], None]
"""progress(done, total, label): called after every scored batch."""


def image_rng(seed: int, x: np.ndarray) -> np.random.Generator:
    """A generator keyed by the seed and the image's content (batch-independent draws)."""
    digest = zlib.crc32(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return np.random.default_rng([seed, digest])


@dataclass
class Scores:
    """Per scored input: the explained class's logit and probability."""

    logit: np.ndarray
    prob: np.ndarray


@dataclass
class Scorer:
    """Batched "score these perturbed inputs" against one session (``run(feeds, names)``)."""

    run: Callable[[dict, list[str]], list[np.ndarray]]
    info: ModelInfo
    batch_size: int = 32
    progress: Progress | None = None
    label: str = ""
    _done: int = field(default=0, init=False)

    def _probs(self, logits: np.ndarray, cls: np.ndarray) -> np.ndarray:
        return self.info.probabilities(logits)[np.arange(len(cls)), cls]

    def images(self, batches: Iterator[np.ndarray], total: int, cls: int) -> Scores:
        """Score perturbed model inputs (mode 1, no gradients); ``batches`` yields chunks."""
        logits, probs = [], []
        self._done = 0
        for x in batches:
            c = np.full(len(x), cls, dtype=np.int64)
            feeds = {
                self.info.input.name: self.info.input.feed(x),
                contract.CLASS_INPUT: c,
                contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64),
            }
            out, score = self.run(feeds, [self.info.logits_output, contract.SCORE_OUTPUT])
            logits.append(score)
            probs.append(self._probs(out, c))
            self._tick(len(x), total)
        return Scores(np.concatenate(logits), np.concatenate(probs))

    def head(
        self,
        layer: TargetLayer,
        acts: Iterator[np.ndarray],
        total: int,
        cls: int,
        image: np.ndarray | None = None,
    ) -> Scores:
        """Score perturbed activations of ``layer`` through its head only (mode 2).

        ``image`` ([1, ...] model input) is the image the activations came from: a token
        layer's head takes its prefix tokens (class token) from it; other heads ignore it."""
        if not layer.head_input:
            raise MethodError(
                f"layer {layer.name!r} has no head-only path in this export "
                f"({layer.head_note or 're-export with this onnxcam version'})"
            )
        spec = self.info.input
        if image is None:  # the image branch is not what is scored (unless tokens need it)
            if layer.tokens is not None and layer.tokens.prefix:
                raise MethodError(f"the head of token layer {layer.name!r} needs the image")
            image = np.zeros(spec.shape(1), np.float32)
        logits, probs = [], []
        self._done = 0
        for a in acts:
            feeds = {
                spec.name: spec.feed(image),
                contract.MODE_INPUT: np.array(contract.MODE_HEAD, dtype=np.int64),
                layer.head_input: a.astype(np.float32, copy=False),
            }
            (rows,) = self.run(feeds, [layer.head_output])
            c = np.full(len(a), cls, dtype=np.int64)
            logits.append(rows[np.arange(len(a)), c])
            probs.append(self._probs(rows, c))
            self._tick(len(a), total)
        return Scores(np.concatenate(logits), np.concatenate(probs))

    def _tick(self, n: int, total: int) -> None:
        self._done += n
        if self.progress:
            self.progress(self._done, total, self.label)
