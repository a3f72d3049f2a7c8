"""The ``onnxcam`` command-line options, each declared once (the way rasterio's ``rio/options.py``
does it).

A command takes its options from here and its body stays parse → library call → echo. Values are
parsed in click callbacks (comma-separated numbers, the method list checked against the registry).
The perturbation options are generated from the fields of ``PerturbationOptions``, so their
defaults live in the dataclass only. Old spellings stay accepted as hidden aliases (``--out`` for
``-o/--output``). Nothing here imports the engine until a command runs or shows its help, so
``onnxcam --version`` stays cheap.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import itertools
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .devices import DEVICES
from .errors import OnnxcamError

F = TypeVar("F", bound=Callable[..., Any])
ParamFactory = Callable[[], list[click.Parameter]]

_DEFERRED = "__onnxcam_deferred_params__"
_PERTURBATION = "perturbation__"  # prefix of the generated options' parameter names


class Option(click.Option):
    """A click option with hidden alias spellings and help that may be computed when shown.

    ``aliases`` are accepted on the command line but left out of ``--help`` and error hints;
    ``help`` may be a function (called once, when the help is first shown).
    """

    def __init__(
        self,
        param_decls: Sequence[str],
        *,
        aliases: Sequence[str] = (),
        help: str | Callable[[], str] | None = None,
        **attrs: Any,
    ) -> None:
        self.aliases = tuple(aliases)
        self._help_fn = help if callable(help) else None
        super().__init__(
            [*param_decls, *self.aliases], help=None if callable(help) else help, **attrs
        )

    @contextlib.contextmanager
    def _visible(self) -> Iterator[None]:
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [o for o in opts if o not in self.aliases]
        self.secondary_opts = [o for o in secondary if o not in self.aliases]
        try:
            yield
        finally:
            self.opts, self.secondary_opts = opts, secondary

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self._help_fn is not None:
            self.help, self._help_fn = self._help_fn(), None
        with self._visible():
            return super().get_help_record(ctx)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        with self._visible():
            return super().get_error_hint(ctx)


class Command(click.Command):
    """A click command whose generated options (``perturbation_options``) are built on first use
    (parsing, help or completion), not when the CLI module is imported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: list[ParamFactory] = []
        super().__init__(*args, **kwargs)
        self._pending = list(getattr(self.callback, _DEFERRED, ()))

    @property
    def params(self) -> list[click.Parameter]:  # type: ignore[override]
        while self._pending:
            self._params.extend(self._pending.pop(0)())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


# --- callbacks --------------------------------------------------------------------------------
def floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """'0.485,0.456,0.406' or '0.485 0.456 0.406' → floats."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(
            f"expected numbers separated by commas, got {value!r}", ctx, param
        ) from None


def methods(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """'gradcam,layercam' | 'all' → the names, checked against the registry (one-line error)."""
    if value is None:
        return None
    from .methods import resolve_methods

    names = [n.strip() for n in value.split(",") if n.strip()]
    try:
        resolve_methods(names, has_cam_weights=True)  # whether CAM applies depends on the model
    except OnnxcamError as e:
        raise click.ClickException(str(e)) from None
    return names


def floats_option(flag: str, metavar: str, help: str) -> Callable[[F], F]:
    """An option taking numbers separated by commas or spaces (a list reaches the command)."""
    return click.option(flag, metavar=metavar, default=None, callback=floats, help=help)


def _methods_help() -> str:
    from .methods import METHODS

    return "Comma-separated methods or 'all': " + ", ".join(METHODS) + "."


# --- arguments and options shared by two or more commands --------------------------------------
model_argument = click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
images_argument = click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))


def output_option(*, file: bool | None, default: Path | None = None, help: str) -> Callable[[F], F]:
    """``-o/--output`` (one spelling everywhere; the old ``--out`` is a hidden alias).

    ``file``: the output is a file, a directory (False) or either (None: ``onnxcam run``
    writes a folder of overlays or one video); no ``default`` makes it required."""
    return click.option(
        "-o",
        "--output",
        "output",
        cls=Option,
        aliases=("--out",),
        type=click.Path(dir_okay=file is not True, file_okay=file is not False, path_type=Path),
        required=default is None,
        show_default=default is not None,
        help=help,
        # no default=None: click 8.5 would take an explicit None as the value of a required option
        **({} if default is None else {"default": default}),
    )


def methods_option(default: str | None, help: str | None = None) -> Callable[[F], F]:
    """``-m/--method``: comma-separated method names or 'all' (a list reaches the command)."""
    return click.option(
        "-m",
        "--method",
        "methods",
        cls=Option,
        default=default,
        show_default=default is not None,
        callback=methods,
        help=help or _methods_help,
    )


class_option = click.option(
    "--class",
    "target",
    default=None,
    metavar="K|NAME",
    help="Class to explain: an index or a label name (default: top-1).",
)
topk_option = click.option(
    "--topk",
    type=click.IntRange(1, 50),
    default=1,
    show_default=True,
    help="Explain each of the top-K classes.",
)
device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="auto: CUDA when onnxruntime-gpu sees a usable GPU, else CPU; openvino needs "
    "onnxruntime-openvino.",
)
recursive_option = click.option("--recursive", is_flag=True, help="Search folders recursively.")
layer_option = click.option(
    "--layer",
    default=None,
    metavar="K|NAME|all",
    help="Exported target layer to use (default: the first).",
)
task_option = click.option(
    "--task",
    type=click.Choice(["classify", "detect", "segment"]),
    default=None,
    help="What the model's output is (default: from its rank — [B,K] classify, [B,4+K,N] "
    "detect, [B,K,H,W] segment).",
)
detect_format_option = click.option(
    "--detect-format",
    type=click.Choice(["yolov8", "yolov5", "anchors"]),
    default=None,
    help="A detector's output layout: yolov8 [B,4+K,N] (YOLOv8/11), yolov5 [B,N,5+K] "
    "(objectness), anchors [B,N,4+K] (default: from the shape and --labels; refused when "
    "ambiguous).",
)
detect_gradients_option = click.option(
    "--detect-gradients",
    type=click.Choice(["direct", "total"]),
    default="direct",
    show_default=True,
    help="A detector's gradients at the head inputs: direct (each scale's head reading its "
    "own input; a detection's own scale is the same either way) or total (also the neck "
    "paths into coarser scales, ultralytics' convention; several times slower per detection).",
)
model_output_option = click.option(
    "--model-output",
    default=None,
    metavar="NAME",
    help="Which model output holds the class scores (default: the first).",
)


def json_option(help: str) -> Callable[[F], F]:
    """``--json``: machine-readable output (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


# --- perturbation options, generated from PerturbationOptions ----------------------------------
_FIELD_CLI: dict[str, dict[str, Any]] = {
    # command-line presentation only (flag aliases, metavars, bounds); defaults are the dataclass's
    "batch_size": {"type": click.IntRange(1, 4096)},
    "scorecam_convention": {"aliases": ("--score-convention",), "metavar": "NAME"},
    "scorecam_topk": {"metavar": "K"},
    "occlusion_baseline": {"metavar": "PIXEL"},
    "fusion": {"type": click.Choice(["mean", "max", "product"])},
}


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string literal under a field), whitespace-folded."""
    try:
        tree = ast.parse(inspect.getsource(cls).lstrip())
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(hint: Any) -> Any:
    """``int | None`` → int."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _checked(cls: type, name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that lets the dataclass validate one field (its errors become usage errors)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            dataclasses.replace(cls(), **{name: value})
        except OnnxcamError as e:
            raise click.BadParameter(str(e), ctx, param) from None
        return value

    return check


def dataclass_options(
    cls: type,
    prefix: str,
    help: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
) -> list[Option]:
    """One option per field of ``cls`` (or of its fields ``only``): ``--field-name``, the
    field's type and default, help from ``help``, the field's metadata ("help") or its
    docstring, in that order."""
    help = help or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or (only is not None and f.name not in only):
            continue
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        extra = dict(_FIELD_CLI.get(f.name, {}))
        if kind is bool:
            decls = [f"{flag}/--no-{flag[2:]}", prefix + f.name]
        elif kind in (int, float, str):
            decls = [flag, prefix + f.name]
            extra.setdefault("type", kind)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for {kind!r}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: an option needs the field's default")
        out.append(
            Option(
                decls,
                default=default,
                show_default=default is not None,
                callback=_checked(cls, f.name),
                help=help.get(f.name) or f.metadata.get("help") or docs.get(f.name),
                **extra,
            )
        )
    return out


def _option_group(
    prefix: str, factory: ParamFactory, name: str, build: Callable[[dict[str, Any]], Any]
) -> Callable[[F], F]:
    """A decorator adding the options ``factory`` makes (parameter names ``prefix`` + field),
    built when the command is first parsed or shown (``Command``); the command receives them
    as one ``name=build({field: value})`` argument."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fields = {k[len(prefix) :]: kwargs.pop(k) for k in list(kwargs) if k.startswith(prefix)}
            return f(*args, **{name: build(fields)}, **kwargs)

        setattr(wrapper, _DEFERRED, [*getattr(f, _DEFERRED, ()), factory])
        return typing.cast(F, wrapper)

    return decorate


def perturbation_options(help: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Every ``PerturbationOptions`` field as an option (``--batch-size``, ``--scorecam-topk``,
    ``--ss-samples`` ...); the command receives them as one ``perturbation=`` object.

    The options are built when the command is first parsed or shown (``Command``), and appear
    after the command's other options; ``help`` overrides a field's help for this command."""

    def factory() -> list[click.Parameter]:
        from .perturbation import PerturbationOptions

        return list(dataclass_options(PerturbationOptions, _PERTURBATION, help))

    def build(fields: dict[str, Any]) -> Any:
        from .perturbation import PerturbationOptions

        return PerturbationOptions(**fields)

    return _option_group(_PERTURBATION, factory, "perturbation", build)


_SAMPLING = "sampling__"
SAMPLING_FIELDS = (
    "smooth_samples",
    "smooth_noise",
    "ig_steps",
    "ig_baseline",
    "fusion",
    "aug_smooth",
)
"""The ``ExplainOptions`` fields of the sampled methods (Smooth Grad-CAM++, SmoothGrad,
Integrated Gradients), the layer fusion rule (``--fusion``, with ``--fuse``) and test-time
augmentation (``--aug-smooth``) that ``onnxcam run`` exposes."""


def _sampling_params() -> list[click.Parameter]:
    from .plan import ExplainOptions

    return list(dataclass_options(ExplainOptions, _SAMPLING, only=SAMPLING_FIELDS))


sampling_options = _option_group(_SAMPLING, _sampling_params, "sampling", dict)
"""``--smooth-samples --smooth-noise --ig-steps --ig-baseline``, built like
``perturbation_options`` from ``ExplainOptions``' fields (defaults, types, help); the command
receives them as one ``sampling=`` dict."""


# --- what to explain (onnxcam.targets.TargetRequest) ------------------------------------------
_TARGET = "target__"


def target_options() -> Callable[[F], F]:
    """``--class`` and the target flags (``--probability``, ``--finer``, ``--contrast``,
    ``--sum``, ``--similar-to``, ``--mask``); the command receives one ``target=``
    ``TargetRequest`` (resolved against the model by ``TargetRequest.build``)."""
    flags = [
        click.option(
            "--class",
            _TARGET + "cls",
            default=None,
            metavar="K|NAME",
            help="Class to explain: an index or a label name (default: top-1; a segmenter: "
            "the largest predicted region).",
        ),
        click.option(
            "--probability",
            _TARGET + "probability",
            is_flag=True,
            help="Explain the class's probability (softmax, or sigmoid) instead of its logit.",
        ),
        click.option(
            "--finer",
            _TARGET + "finer",
            default=None,
            is_flag=False,
            flag_value="",
            metavar="[K,K,...]",
            help="FinerCAM: the class against similar classes (these, or the closest by logit).",
        ),
        click.option(
            "--finer-alpha",
            _TARGET + "finer_alpha",
            type=float,
            default=0.6,
            show_default=True,
            help="FinerCAM's comparison strength.",
        ),
        click.option(
            "--finer-weighting",
            _TARGET + "finer_weighting",
            type=click.Choice(["mean", "softmax"]),
            default="mean",
            show_default=True,
            help="mean: torchcam's FinerCAM; softmax: pytorch-grad-cam's.",
        ),
        click.option(
            "--contrast",
            _TARGET + "contrast",
            default=None,
            metavar="K|NAME",
            help="Explain --class against this class (logit difference).",
        ),
        click.option(
            "--sum",
            _TARGET + "classes",
            default=None,
            metavar="K,K,...",
            help="Explain the sum of these classes' logits.",
        ),
        click.option(
            "--similar-to",
            _TARGET + "similar_to",
            default=None,
            metavar="IMAGE|FILE.npy",
            help="Embedding models: explain the cosine similarity of the output to this image's "
            "output or to a saved vector.",
        ),
        click.option(
            "--mask",
            _TARGET + "mask",
            default=None,
            metavar="IMAGE",
            help="Segmenters: explain --class summed over this mask (non-zero pixels).",
        ),
    ]

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from .targets import TargetRequest

            given = {
                k[len(_TARGET) :]: kwargs.pop(k) for k in list(kwargs) if k.startswith(_TARGET)
            }
            return f(*args, target=TargetRequest(**given), **kwargs)

        for flag in reversed(flags):
            wrapper = flag(wrapper)
        return typing.cast(F, wrapper)

    return decorate


detection_options = [
    click.option(
        "--top",
        type=click.IntRange(1, 300),
        default=10,
        show_default=True,
        help="Detectors: explain the best N detections.",
    ),
    click.option(
        "--conf",
        type=click.FloatRange(0, 1),
        default=0.25,
        show_default=True,
        help="Detectors: the class score a box must reach.",
    ),
    click.option(
        "--iou",
        type=click.FloatRange(0, 1),
        default=0.45,
        show_default=True,
        help="Detectors: the IoU above which NMS drops the weaker box.",
    ),
    click.option(
        "--scales",
        "scale_fusion",
        type=click.Choice(["max", "mean"]),
        default="max",
        show_default=True,
        help="Detectors: how the maps of the head's scales are fused (max: ultralytics').",
    ),
]


def detect_options(f: F) -> F:
    """``--top``, ``--conf``, ``--iou``, ``--scales`` (used when the model is a detector)."""
    for flag in reversed(detection_options):
        f = flag(f)
    return f


video_flags = [
    click.option(
        "--smooth-time",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.0,
        show_default=True,
        metavar="ALPHA",
        help="Videos: smooth each map over time, s = ALPHA·s_prev + (1-ALPHA)·map (an "
        "exponential moving average at feature resolution; 0: off, 0.8: strong; per clip).",
    ),
    click.option(
        "--max-frames",
        type=click.IntRange(1),
        default=None,
        metavar="N",
        help="Videos and cameras: stop after N frames (a camera runs until Ctrl-C otherwise).",
    ),
]


def video_options(f: F) -> F:
    """``--smooth-time``, ``--max-frames`` (``onnxcam run`` on videos and cameras)."""
    for flag in reversed(video_flags):
        f = flag(f)
    return f


# --- onnxcam run --ray (onnxcam.scale) ---------------------------------------------------------
_RAY = "ray__"
ray_flags = [
    click.option(
        "--ray",
        _RAY + "address",
        default=None,
        is_flag=False,
        flag_value="local",
        metavar="[ADDRESS]",
        help="Explain on Ray Data and write a resumable Parquet dataset to -o (docs/scale.md): "
        "a new local cluster, or ADDRESS (auto, HOST:PORT, ray://HOST:PORT). IMAGES may be "
        "globs and s3://, gs://, file:// URIs.",
    ),
    click.option(
        "--actors",
        _RAY + "actors",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="--ray: actors, each with one onnxruntime session.",
    ),
    click.option(
        "--cpus-per-actor",
        _RAY + "cpus_per_actor",
        type=click.FloatRange(0, min_open=True),
        default=1.0,
        show_default=True,
        help="--ray: CPUs per actor (its onnxruntime threads); with --device cuda each "
        "actor also takes one GPU.",
    ),
    click.option(
        "--shard-size",
        _RAY + "shard_size",
        type=click.IntRange(1),
        default=256,
        show_default=True,
        help="--ray: images per Parquet shard (the unit committed, and redone after a crash).",
    ),
    click.option(
        "--overlays",
        _RAY + "overlays",
        default=None,
        metavar="DIR|URI",
        help="--ray: also write overlay PNGs here (<stem>-<sha256[:12]>_<method>.png).",
    ),
    click.option(
        "--map-dtype",
        _RAY + "map_dtype",
        type=click.Choice(["float32", "float16", "uint8"]),
        default="float32",
        show_default=True,
        help="--ray: how the Parquet 'map' column stores each map.",
    ),
    click.option(
        "--eval",
        _RAY + "evaluate",
        is_flag=True,
        help="--ray: also compute onnxcam eval's metrics per row (and 'random' rows); their "
        "summary over OUT is printed and written to OUT/_eval/summary.json.",
    ),
    click.option(
        "--annotations",
        _RAY + "annotations",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        metavar="JSON",
        help="--ray --eval: boxes/masks/classes per image (docs/evaluation.md).",
    ),
]


def ray_options(f: F) -> F:
    """``--ray [ADDRESS]`` and its options; the command receives ``scale=`` a dict of them
    (None without ``--ray``; the others then must keep their defaults)."""
    defaults = {
        "actors": 1,
        "cpus_per_actor": 1.0,
        "shard_size": 256,
        "overlays": None,
        "map_dtype": "float32",
        "evaluate": False,
        "annotations": None,
    }

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {k[len(_RAY) :]: kwargs.pop(k) for k in list(kwargs) if k.startswith(_RAY)}
        address = given.pop("address")
        if address is None:
            changed = [k for k, v in defaults.items() if given[k] != v]
            if changed:
                flag = "--" + changed[0].replace("_", "-")
                raise click.UsageError(f"{flag} applies to --ray runs only")
            return f(*args, scale=None, **kwargs)
        return f(*args, scale={"address": address, **given}, **kwargs)

    for flag in reversed(ray_flags):
        wrapper = flag(wrapper)
    return typing.cast(F, wrapper)


# --- onnxcam eval: the metrics that re-explain or take longer (onnxcam.evaluate.EvalOptions) ---
_EVAL = "evalx__"
eval_metric_flags = [
    click.option(
        "--adcc",
        _EVAL + "adcc",
        is_flag=True,
        help="Coherency and ADCC (Poppi et al., arXiv:2104.10252): explains each image masked "
        "by each map once more.",
    ),
    click.option(
        "--arcc",
        _EVAL + "arcc",
        is_flag=True,
        help="pytorch-grad-cam's ARCC: Coherency (as --adcc), 1 − Complexity and its "
        "ROADCombined (8 imputed inputs per map).",
    ),
    click.option(
        "--max-sensitivity",
        _EVAL + "sensitivity_samples",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        metavar="N",
        help="Max-Sensitivity (Yeh et al.; Quantus MaxSensitivity) over N noisy copies of each "
        "image, each re-explained (0: off; Quantus uses 200).",
    ),
    click.option(
        "--sensitivity-radius",
        _EVAL + "sensitivity_radius",
        type=click.FloatRange(0),
        default=0.2,
        show_default=True,
        help="--max-sensitivity: the noise U(−r, r) added to each normalised input value.",
    ),
    click.option(
        "--openvino-auc-steps",
        _EVAL + "ovx_steps",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        metavar="N",
        help="Also OpenVINO XAI's insertion/deletion AUC (original image, black pixels) in N "
        "steps (0: off; theirs: 30).",
    ),
]


def eval_metric_options(f: F) -> F:
    """``onnxcam eval``'s optional metrics (``EvalOptions.adcc``, ``arcc``,
    ``sensitivity_samples``, ``sensitivity_radius``, ``ovx_steps``); the command receives them
    as one ``extra_metrics=`` dict of those fields."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {k[len(_EVAL) :]: kwargs.pop(k) for k in list(kwargs) if k.startswith(_EVAL)}
        return f(*args, extra_metrics=given, **kwargs)

    for flag in reversed(eval_metric_flags):
        wrapper = flag(wrapper)
    return typing.cast(F, wrapper)
