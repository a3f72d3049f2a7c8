"""Inside the network: a layer's activation maps and what its channels respond to.

After Chollet's "visualizing what convnets learn" (Deep Learning with Python, ch. 5.4 / 9.4):

* **activation maps** — the layer's channels on one image, the top N by mean activation (or the
  channels asked for), each normalised to its own range;
* **filter visualisation** — for the same channels, the input that maximises the channel's
  mean activation, found by gradient ascent from a grey image (Erhan et al. 2009; the jitter
  and blur regularisers of Yosinski et al. 2015, arXiv:1506.06579), all channels in one batch.

Both read one graph, the layer's *probe* (``onnxcam.export.probe``): the model cut at the layer,
its channel means as "logits", exported with the input gradient — so the class input picks the
channel per batch row and one ``session.run`` returns the activations and every channel's
∂ mean / ∂ input. Building the probe needs ``onnx`` (imported lazily); running it needs only
onnxruntime.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import __version__, contract, postprocess
from .engine import Explainer
from .errors import ContractError, MethodError
from .image import preprocess, read_image
from .report import CSS, _jpeg
from .runner import _write_png

PIXEL_RANGE = (0.0, 255.0)
"""The valid pixel values (what the image is clipped to during the ascent)."""
GREY = 128.0
"""The ascent's starting image (plus ``AscentOptions.noise``)."""


@dataclass(frozen=True)
class AscentOptions:
    """Gradient ascent on the input pixels, one channel per batch row (all rows in one run).

    Each step: the image rolled by a random (dy, dx) of at most ``jitter`` pixels, the
    gradient of the channel's mean taken there and rolled back, divided by its mean |g| (per
    image), a step of ``step_size`` pixel levels (mean |Δ|), clipped to 0–255; every
    ``blur_every`` steps a Gaussian blur of σ = ``blur_sigma`` pixels. Randomness is drawn per
    (``seed``, channel), so a channel's image does not depend on the others in its batch."""

    steps: int = 64
    """Gradient ascent steps (one run of the probe each, all channels batched)."""
    step_size: float = 4.0
    """Mean |change| of a pixel per step, in pixel levels (0–255)."""
    jitter: int = 4
    """Largest random roll of the image per step, in pixels (undone on the gradient)."""
    blur_every: int = 4
    """Blur the image every this many steps (0: never)."""
    blur_sigma: float = 0.5
    """The blur's Gaussian σ, in pixels."""
    noise: float = 10.0
    """Standard deviation of the start image's noise, in pixel levels (around grey 128)."""
    seed: int = 0
    """Seeds the start noise and the jitter (per channel)."""

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "step_size": self.step_size > 0,
            "jitter": self.jitter >= 0,
            "blur_every": self.blur_every >= 0,
            "blur_sigma": self.blur_sigma >= 0,
            "noise": self.noise >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            value = getattr(self, bad[0])
            raise MethodError(
                f"{bad[0]} = {value} is out of range (steps ≥ 1, step_size > 0, the others ≥ 0)"
            )


@dataclass
class Filters:
    """The ascent's result for ``channels``: the images in pixels (model channel order,
    ``[n, C, H, W]``, 0–255), their display RGB, and each channel's mean activation on the
    start image and on the result."""

    channels: list[int]
    pixels: np.ndarray
    rgb: np.ndarray
    start: np.ndarray
    final: np.ndarray
    seconds: float


class Probe:
    """A layer probe (``onnxcam.export.probe.probe_model``) open in onnxruntime."""

    def __init__(self, model: str | os.PathLike | bytes, device: str = "auto") -> None:
        self.explainer = Explainer(model, device=device)
        info = self.explainer.info
        if len(info.targets) != 2 or not info.targets[1].pixels:
            raise ContractError("not an onnxcam layer probe (build one with Probe.build)")
        self.layer, self.pixels = info.targets
        self.spec = info.input
        self.channels: int = int(self.layer.channels)
        self.binary = bool(info.score and info.score.binary)
        """One channel: the contract explains it as class 1 (class 0 is its negative)."""

    @classmethod
    def build(
        cls,
        model: str | os.PathLike | bytes,
        layer: str,
        device: str = "auto",
        preset: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> Probe:
        """Probe ``layer`` (ONNX tensor or node name) of a plain or onnxcam-exported model."""
        try:
            from onnxcam.export.probe import probe_model
        except ImportError:
            raise ContractError(
                "inspect builds a probe graph with the exporter: pip install 'onnxcam[export]'"
            ) from None
        probe = probe_model(model, layer, size=size, preset=preset)
        return cls(probe.SerializeToString(), device)

    @property
    def provider(self) -> str:
        return self.explainer.provider

    # -- the model input <-> pixels -----------------------------------------------------------
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per input channel, [1, C, 1, 1]: model input = a · pixel + b."""
        s = self.spec
        std = np.broadcast_to(np.asarray(s.std, np.float64), (s.channels,))
        mean = np.broadcast_to(np.asarray(s.mean, np.float64), (s.channels,))
        a, b = s.scale / std, -mean / std
        return (
            a.astype(np.float32).reshape(1, -1, 1, 1),
            b.astype(np.float32).reshape(1, -1, 1, 1),
        )

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels ``[n, C, H, W]`` in the model's channel order → the model input (its layout)."""
        a, b = self._affine()
        return self.spec.layout.from_nchw(pixels * a + b)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """The model input → pixels ``[n, C, H, W]`` in the model's channel order."""
        a, b = self._affine()
        return (self.spec.layout.to_nchw(x) - b) / a

    def display(self, pixels: np.ndarray, percentiles: tuple[float, float] = (1, 99)) -> np.ndarray:
        """Pixels ``[n, C, H, W]`` → RGB uint8 ``[n, H, W, 3]``, each image's contrast stretched
        between its ``percentiles`` (an ascent's image spans a narrow range)."""
        rgb = pixels.transpose(0, 2, 3, 1)
        if self.spec.color == "BGR":
            rgb = rgb[..., ::-1]
        elif rgb.shape[-1] == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        out = np.empty(rgb.shape, np.uint8)
        for src, dst in zip(rgb, out, strict=True):
            lo, hi = np.percentile(src, percentiles)
            span = hi - lo if hi > lo else 1.0
            dst[...] = np.clip((src - lo) / span * 255 + 0.5, 0, 255).astype(np.uint8)
        return out

    # -- runs -----------------------------------------------------------------------------
    def _classes(self, channels: Sequence[int]) -> np.ndarray:
        """The class input that picks each channel (a one-channel layer is class 1)."""
        c = np.asarray(channels, dtype=np.int64)
        return c + 1 if self.binary else c

    def activations(self, x: np.ndarray) -> np.ndarray:
        """The layer's activations ``[n, C, h, w]`` (NCHW) for model inputs ``x``."""
        name = self.layer.activation
        out = self.explainer._run(x, None, [name], contract.MODE_FORWARD)
        return self.layer.layout.to_nchw(out[name])

    def channel_means(self, pixels: np.ndarray, channels: Sequence[int]) -> np.ndarray:
        """Mean activation of ``channels[i]`` on image ``pixels[i]`` (the probe's score)."""
        x = self.to_input(pixels)
        out = self.explainer._run(
            x, self._classes(channels), [contract.SCORE_OUTPUT], contract.MODE_FORWARD
        )
        return out[contract.SCORE_OUTPUT].astype(np.float64)

    def gradients(self, pixels: np.ndarray, channels: Sequence[int]) -> np.ndarray:
        """∂ mean(channel i) / ∂ pixels of image i, ``[n, C, H, W]`` (one ``session.run``)."""
        out = self.explainer._run(
            self.to_input(pixels), self._classes(channels), [self.pixels.gradient]
        )
        a, _ = self._affine()
        return self.spec.layout.to_nchw(out[self.pixels.gradient]) * a  # chain rule: dx/dp = a

    def check_channels(self, channels: Sequence[int]) -> list[int]:
        """``channels`` as ints, each within the layer (else a one-line ``MethodError``)."""
        out = [int(c) for c in channels]
        bad = [c for c in out if not 0 <= c < self.channels]
        if bad:
            raise MethodError(
                f"channel {bad[0]} is out of range: layer {self.layer.name!r} has "
                f"{self.channels} channels (0..{self.channels - 1})"
            )
        if not out:
            raise MethodError("no channels given")
        return out

    def visualize(
        self,
        channels: Sequence[int],
        options: AscentOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Filters:
        """Gradient ascent for each channel (``AscentOptions``), all channels batched:
        ``steps`` runs of the probe in all."""
        opts = options or AscentOptions()
        channels = self.check_channels(channels)
        t0 = time.perf_counter()
        rngs = [np.random.default_rng([opts.seed, c]) for c in channels]
        shape = (self.spec.channels, self.spec.height, self.spec.width)
        start = np.stack([GREY + opts.noise * r.standard_normal(shape) for r in rngs])
        p = np.clip(start, *PIXEL_RANGE).astype(np.float32)
        first = self.channel_means(p, channels)
        j = max(int(opts.jitter), 0)
        for step in range(opts.steps):
            shifts = np.stack([r.integers(-j, j + 1, size=2) for r in rngs])
            g = _roll(self.gradients(_roll(p, shifts), channels), -shifts)
            size = np.abs(g).mean(axis=(1, 2, 3), keepdims=True)
            g = g / np.where(size > 0, size, 1.0)
            p = np.clip(p + np.float32(opts.step_size) * g, *PIXEL_RANGE).astype(np.float32)
            if opts.blur_every and (step + 1) % opts.blur_every == 0 and opts.blur_sigma > 0:
                p = _blur(p, opts.blur_sigma)
            if progress is not None:
                progress(1, opts.steps)
        final = self.channel_means(p, channels)
        return Filters(channels, p, self.display(p), first, final, time.perf_counter() - t0)


def _roll(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each image ``[n, C, H, W]`` rolled by its own (rows, columns) shift ``[n, 2]``."""
    return np.stack(
        [np.roll(im, tuple(s), axis=(1, 2)) for im, s in zip(images, shifts.tolist(), strict=True)]
    )


def _blur(p: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each image ``[n, C, H, W]`` over its rows and columns."""
    out = np.empty_like(p)
    for src, dst in zip(p, out, strict=True):
        hwc = cv2.GaussianBlur(
            np.ascontiguousarray(src.transpose(1, 2, 0)), (0, 0), sigma,
            borderType=cv2.BORDER_REFLECT,
        )  # fmt: skip
        dst[...] = hwc.reshape(src.shape[1], src.shape[2], -1).transpose(2, 0, 1)
    return out


def parse_channel_ids(text: str | Sequence[int] | None) -> list[int] | None:
    """'3,17,42' (or a list) → [3, 17, 42]; None stays None."""
    if text is None or not isinstance(text, str):
        return None if text is None else [int(c) for c in text]
    try:
        return [int(c) for c in text.replace(" ", ",").split(",") if c.strip()]
    except ValueError:
        raise MethodError(
            f"channel ids must be integers separated by commas, got {text!r}"
        ) from None


def top_channels(means: np.ndarray, n: int) -> list[int]:
    """The ``n`` channels of largest mean (ties: the lower index first)."""
    order = np.argsort(-np.asarray(means, dtype=np.float64), kind="stable")
    return [int(c) for c in order[:n]]


# -- pictures ---------------------------------------------------------------------------------
def _fit(img: np.ndarray, side: int) -> np.ndarray:
    """Scale an image so its longer side is ``side``: nearest when enlarging (a feature map's
    cells stay visible), area when shrinking."""
    h, w = img.shape[:2]
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if s >= 1 else cv2.INTER_AREA)


def activation_tiles(maps: np.ndarray, colormap: str = "viridis", side: int = 128) -> np.ndarray:
    """Maps ``[n, h, w]`` → RGB tiles ``[n, side', side'', 3]``, each map min-max normalised
    to its own range (a constant map is uniform) and coloured."""
    norm = postprocess.normalize(maps)
    return np.stack([_fit(postprocess.colorize(m, colormap), side) for m in norm])


def grid(tiles: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4) -> np.ndarray:
    """Tiles (RGB, one size) in a near-square grid, each under a strip with its label."""
    n = len(tiles)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = tiles[0].shape[:2]
    strip = 16
    cell_h, cell_w = h + strip + gap, w + gap
    out = np.full((rows * cell_h + gap, cols * cell_w + gap, 3), 255, np.uint8)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        y, x = gap + (i // cols) * cell_h, gap + (i % cols) * cell_w
        scale = min(0.4, 0.4 * w / max(1, 8 * len(label)))
        cv2.putText(out, label, (x + 2, y + strip - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (20, 20, 20), 1, cv2.LINE_AA)  # fmt: skip
        out[y + strip : y + strip + h, x : x + w] = tile
    return out


# -- the command --------------------------------------------------------------------------------
@dataclass
class ChannelRow:
    """One shown channel: its index, its rank by mean activation on the image (1 = largest),
    its mean there, and — with filters — its mean on the ascent's start and result images."""

    index: int
    rank: int
    mean: float
    start: float | None = None
    final: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class InspectResult:
    """What ``inspect_image`` wrote."""

    model: str
    layer: str
    tensor: str
    shape: tuple
    provider: str
    channels: list[ChannelRow]
    written: dict[str, Path]
    seconds: float
    filter_seconds: float | None = None
    options: AscentOptions | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "layer": self.layer,
            "tensor": self.tensor,
            "shape": list(self.shape),
            "provider": self.provider,
            "channels": [c.to_json() for c in self.channels],
            "written": {k: str(v) for k, v in self.written.items()},
            "seconds": round(self.seconds, 3),
            "filter_seconds": self.filter_seconds,
            "ascent": None if self.options is None else self.options.__dict__,
        }


def inspect_image(
    model: str | os.PathLike,
    image: str | os.PathLike,
    layer: str,
    out_dir: str | os.PathLike,
    *,
    channels: int = 16,
    channel_ids: str | Sequence[int] | None = None,
    filters: bool = False,
    options: AscentOptions | None = None,
    device: str = "auto",
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    colormap: str = "viridis",
    progress: Callable[[int, int], None] | None = None,
) -> InspectResult:
    """Write ``activations.png``, with ``filters`` ``filters.png``, and ``inspect.html`` for
    ``layer`` of ``model`` on ``image`` into ``out_dir``: the top ``channels`` channels by mean
    activation, or ``channel_ids``."""
    t0 = time.perf_counter()
    if colormap not in postprocess.COLORMAPS:
        raise MethodError(f"unknown colormap {colormap!r}; e.g. viridis, jet, turbo, inferno")
    wanted = parse_channel_ids(channel_ids)
    photo = read_image(image)  # before the probe: a bad image fails fast
    probe = Probe.build(model, layer, device, preset=preset, size=size)
    x = preprocess([photo], probe.spec)
    A = probe.activations(x)[0]  # [C, h, w]
    means = A.mean(axis=(1, 2), dtype=np.float64)
    ranked = top_channels(means, probe.channels)
    rank = {c: i + 1 for i, c in enumerate(ranked)}
    chosen = probe.check_channels(wanted) if wanted is not None else ranked[:channels]
    rows = [ChannelRow(c, rank[c], float(means[c])) for c in chosen]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"#{r.index} {r.mean:.3g}" for r in rows]
    act_tiles = activation_tiles(A[chosen], colormap)
    written = {"activations": out / "activations.png"}
    _write_png(written["activations"], grid(list(act_tiles), labels))
    found = None
    if filters:
        found = probe.visualize(chosen, options, progress)
        for r, s, f in zip(rows, found.start, found.final, strict=True):
            r.start, r.final = float(s), float(f)
        side = max(96, min(224, max(found.rgb.shape[1:3])))
        filter_tiles = [_fit(img, side) for img in found.rgb]
        written["filters"] = out / "filters.png"
        _write_png(written["filters"], grid(filter_tiles, [f"#{c}" for c in chosen]))
    res = InspectResult(
        Path(model).name,
        probe.layer.name,
        probe.layer.tensor,
        tuple(probe.layer.shape),
        probe.provider,
        rows,
        written,
        0.0,
        None if found is None else found.seconds,
        (options or AscentOptions()) if filters else None,
    )
    html_path = out / "inspect.html"
    res.seconds = time.perf_counter() - t0
    html_path.write_text(
        render_html(res, photo, act_tiles, None if found is None else found.rgb), encoding="utf-8"
    )
    written["html"] = html_path
    return res


EXTRA_CSS = """
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
.tiles img{image-rendering:pixelated}.filt img{image-rendering:auto}
p.note{color:var(--mute);margin:0 0 10px}
"""


def render_html(
    res: InspectResult,
    photo: np.ndarray,
    act_tiles: np.ndarray,
    filter_rgb: np.ndarray | None,
) -> str:
    """``inspect.html``: the image, the activation maps and the filter images, captioned with
    their channel indices; one self-contained file (JPEG data URIs, ``report.CSS``)."""
    esc = html.escape

    def figures(images, captions, cls: str) -> str:
        figs = "".join(
            f'<figure><img alt="channel {r.index}" src="{_jpeg(img, 256)}">'
            f"<figcaption><b>#{r.index}</b><span>{esc(c)}</span></figcaption></figure>"
            for img, r, c in zip(images, res.channels, captions, strict=True)
        )
        return f'<div class="tiles {cls}">{figs}</div>'

    acts = figures(act_tiles, [f"mean {r.mean:.3g}" for r in res.channels], "acts")
    cards = [
        f'<article class="card"><h2>Image</h2><div class="orig">'
        f'<img alt="image" src="{_jpeg(photo, 300)}"></div></article>',
        f'<article class="card"><h2>Activation maps — {esc(res.layer)}</h2>'
        '<p class="note">Each channel on this image, normalised to its own range (rank by mean '
        f"activation: {', '.join(f'#{r.index}={r.rank}' for r in res.channels)}).</p>"
        f"{acts}</article>",
    ]
    if filter_rgb is not None and res.options is not None:
        o = res.options
        caps = [f"{r.start:.3g} → {r.final:.3g}" for r in res.channels]
        cards.append(
            '<article class="card"><h2>Filter visualisation</h2><p class="note">The input '
            f"that maximises each channel's mean activation: {o.steps} steps of gradient "
            f"ascent from grey, jitter ±{o.jitter} px, blur σ={o.blur_sigma} every "
            f"{o.blur_every} steps, seed {o.seed}; caption: mean activation at the start → at "
            f"the end ({res.filter_seconds or 0:.1f} s).</p>"
            f"{figures(filter_rgb, caps, 'filt')}</article>"
        )
    shape = "×".join(str(d) for d in res.shape)
    tensor = "" if res.tensor == res.layer else f"{res.tensor}, "
    layer = f"{res.layer} ({tensor}{shape})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>onnxcam inspect — {esc(res.model)} {esc(res.layer)}</title>
<style>{CSS}{EXTRA_CSS}</style></head>
<body><header><h1>onnxcam inspect</h1><dl>
<dt>model</dt><dd>{esc(res.model)}</dd>
<dt>layer</dt><dd>{esc(layer)}</dd>
<dt>channels</dt><dd>{esc(", ".join(str(r.index) for r in res.channels))}</dd>
<dt>provider</dt><dd>{esc(res.provider)}</dd>
<dt>total time</dt><dd>{res.seconds:.1f} s</dd>
</dl></header>
<main>{"".join(cards)}</main>
<footer>onnxcam {__version__} · {time.strftime("%Y-%m-%d %H:%M")} · self-contained, offline
</footer></body></html>
"""


__all__ = [
    "AscentOptions",
    "ChannelRow",
    "Filters",
    "InspectResult",
    "Probe",
    "activation_tiles",
    "grid",
    "inspect_image",
    "parse_channel_ids",
    "render_html",
    "top_channels",
]
