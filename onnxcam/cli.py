"""The ``onnxcam`` command line: a thin layer over the Python API.

Each command parses its options (declared once, in ``options.py``), calls one library function and
echoes the result. Library errors (``OnnxcamError``) become one ``Error: ...`` line and exit code
1; anything unexpected also becomes one line (set ``ONNXCAM_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

from . import __version__, contract
from . import options as o
from .errors import OnnxcamError

if TYPE_CHECKING:
    from .engine import Failure
    from .perturbation import PerturbationOptions


class _Group(click.Group):
    """A click group that turns every error into one line and a non-zero exit."""

    command_class = o.Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OnnxcamError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as e:
            if os.environ.get("ONNXCAM_DEBUG"):
                raise
            msg = f"internal error: {type(e).__name__}: {e} (set ONNXCAM_DEBUG=1 for details)"
            raise click.ClickException(msg) from None


class _Bar:
    """A stderr progress bar over images, opened at the library's first ``progress(done, total)``
    call (the library knows the total); shown on terminals for more than one image."""

    def __init__(self, label: str, show: bool = True) -> None:
        self.label, self.show = label, show and sys.stderr.isatty()
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(
                length=total,
                label=self.label,
                file=sys.stderr,
                hidden=not (self.show and total > 1),
            )
            self._bar.__enter__()
        self._bar.update(done)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, e, tb)


class _MethodProgress:
    """One self-overwriting stderr line for long perturbation methods (terminals only)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or total < 64:
            return
        end = "\r" + " " * 60 + "\r" if done >= total else ""
        click.echo(f"\r  {label}: {done}/{total} perturbed inputs scored{end}", nl=False, err=True)


def _note(text: str) -> None:
    click.echo(f"note: {text}", err=True)


def _failure(f: Failure) -> None:
    click.echo(f"error: {f.error}", err=True)


def _exporter():
    try:
        from onnxcam import export
    except ImportError as e:
        raise click.ClickException(
            f"the exporter needs the 'onnx' package ({e.name} is missing): "
            "pip install 'onnxcam[export]'"
        ) from None
    return export


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcam")
def cli() -> None:
    """Class Activation Maps for ONNX models, from plain onnxruntime."""


@cli.command("export")
@o.model_argument
@o.output_option(file=True, help="Where to write the explainable model (never the input file).")
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="NAME",
    help="Target layer: ONNX tensor or node name (repeatable). "
    "Default: the last feature map on the image grid before the head (the export refuses "
    "and lists candidates when tokens or attention follow it).",
)
@click.option(
    "--size", nargs=2, type=int, metavar="H W", default=None, help="Fix a dynamic input size."
)
@o.floats_option(
    "--mean", "M", "Per-channel mean after scaling, e.g. 0.485,0.456,0.406 (ImageNet default)."
)
@o.floats_option("--std", "S", "Per-channel std, e.g. 0.229,0.224,0.225.")
@click.option(
    "--scale", type=float, default=None, help="Pixel scale applied before mean/std (default 1/255)."
)
@click.option(
    "--color",
    type=click.Choice(["RGB", "BGR", "GRAY"], case_sensitive=False),
    default=None,
    help="Channel order the model expects (default RGB).",
)
@click.option(
    "--preset",
    type=click.Choice(list(contract.PRESETS)),
    default=None,
    help="Preprocessing convention: torch (ImageNet mean/std on [0,1] RGB), caffe (BGR minus "
    "the ImageNet means, 0-255), tf ([-1,1]), unit ([0,1]), raw (0-255 pixels as they are). "
    "--mean/--std/--scale/--color override it. Default: from the graph (a uint8 input or an "
    "in-graph /255 → raw), else torch.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names: text file (one per line) or JSON list.",
)
@o.model_output_option
@o.task_option
@o.detect_format_option
@o.detect_gradients_option
@click.option(
    "--heatmaps",
    default=None,
    metavar="METHODS",
    help="Add finished maps as graph outputs: gradcam,gradcam++,xgradcam,layercam,"
    "hirescam,gradcam-elementwise,eigencam,eigengradcam,cam or all (every exported map is "
    "computed on each run: export the ones you use).",
)
@click.option(
    "--heatmap-size",
    type=click.Choice(["input", "feature"]),
    default="input",
    show_default=True,
    help="Resolution of the in-graph heatmaps.",
)
@click.option(
    "--input-gradient",
    is_flag=True,
    help="Add the gradient with respect to the model input (the full backward): the "
    "pixel-space methods saliency, gradient-input, smoothgrad, integrated-gradients read it.",
)
@click.option(
    "--rules",
    default=None,
    metavar="RULES",
    help="Also the input gradient under other ReLU rules: guided (Guided Backpropagation, "
    "Guided Grad-CAM), deconvnet; comma-separated (implies --input-gradient).",
)
@click.option(
    "--fullgrad",
    is_flag=True,
    help="Also FullGrad's bias map: every Conv/BatchNorm bias times its gradient, summed in "
    "the graph, for -m fullgrad (implies --input-gradient).",
)
@click.option(
    "--reciprocam",
    is_flag=True,
    help="Also ReciproCAM's map per layer (arXiv 2209.14074, OpenVINO XAI's default): each "
    "position alone through the head, in the graph (mode 4), for -m reciprocam.",
)
@click.option(
    "--head-gradients",
    is_flag=True,
    help="Also each head-only path's backward (mode 2): the gradient of the head's score with "
    "respect to its input, for -m shapleycam (its Hessian-vector product).",
)
@click.option(
    "--forward-copy/--no-forward-copy",
    default=None,
    help="Forward-only and explaining runs as two graphs, each with its own copy of the "
    "weights (a larger file): forward-only runs cost the plain model's time, and the input "
    "gradient's backward keeps onnxruntime's fast layout. Default: on with an input gradient "
    "(--input-gradient, --rules, --fullgrad), off otherwise (docs/graph-contract.md).",
)
def export_cmd(model: Path, output: Path, layers: tuple[str, ...], **kw: Any) -> None:
    """Write MODEL with activations and gradient outputs (graph contract v3) to -o OUTPUT."""
    res = _exporter().export_onnx(model, output, layers=list(layers) or None, **kw)
    from onnxcam.export import storage  # (onnx is imported by the exporter anyway)

    ratio = storage.file_bytes(output) / max(storage.file_bytes(model), 1)
    for k, t in enumerate(res.targets):
        extra = ("  +CAM weights" if t.cam_weight else "") + ("  +head" if t.head_input else "")
        if t.heatmaps:
            extra += "  +heatmaps " + ",".join(t.heatmaps)
        click.echo(f"target {k}: {t.name}  {t.producer} {t.layout} {t.shape}{extra}")
    data = storage.data_path(output)
    weights = f", weights in {data.name}" if data.is_file() else ""
    click.echo(
        f"wrote {output}  ({ratio:.4f}x the input size with its data{weights}, "
        f"{res.seconds:.1f}s, outputs unchanged: max diff {res.max_output_diff:.1e})"
    )


@cli.command("layers")
@o.model_argument
@o.model_output_option
@o.task_option
@o.json_option("Machine-readable output.")
def layers_cmd(model, model_output, task, as_json) -> None:
    """List candidate target layers (tensor, producing op, shape, layout); * marks the
    default; "dead" marks layers whose positions no longer reach the score (only a class
    token is read after them), which cannot be explained."""
    ex = _exporter()
    found = ex.list_layers(model, model_output, task)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "tensor": c.tensor,
                        "op": c.op,
                        "node": c.node,
                        "shape": list(c.shape),
                        "layout": c.kind,
                        "map_shape": c.map_shape,
                        "default": c.default,
                        "live": c.live,
                    }
                    for c in found
                ],
                indent=1,
            )
        )
        return
    width = max(len(c.tensor) for c in found)
    for c in found:
        mark = "*" if c.default else " "
        shape = "x".join(str(d) for d in c.shape)
        dead = "" if c.live else "  dead"
        click.echo(f"{mark} {c.tensor:<{width}}  {c.op:<20} {shape}  {c.kind}{dead}")


@cli.command("run")
@o.model_argument
@o.images_argument
@o.methods_option("gradcam")
@o.target_options()
@o.topk_option
@o.output_option(
    file=None,
    default=Path("onnxcam-out"),
    help="Folder for the overlays (PNG per image and method, a video per video), or one "
    ".mp4/.avi file for a single video or camera.",
)
@o.device_option
@o.layer_option
@click.option(
    "--fuse", is_flag=True, help="Fuse the maps of the selected layers into one (by --fusion)."
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Heatmap weight in the overlay.",
)
@click.option("--colormap", default="jet", show_default=True, help="OpenCV colormap name.")
@click.option("--save-npy", is_flag=True, help="Also save each map (model-input size) as .npy.")
@click.option(
    "--save-tensors",
    is_flag=True,
    help="Also save the raw activations, gradients (and CAM weights) as .npy "
    "(inputs of cpp_bindings/examples).",
)
@click.option(
    "--boxes",
    "box_threshold",
    type=click.FloatRange(0, 1),
    default=None,
    is_flag=False,
    flag_value=0.5,
    metavar="[FRACTION]",
    help="Draw the box around each map's largest region ≥ FRACTION·max (default 0.5).",
)
@o.detect_options
@o.recursive_option
@o.json_option("Print results as JSON (for machines).")
@o.perturbation_options()
@o.sampling_options
@o.video_options
@o.ray_options
def run_cmd(
    model: Path,
    images: tuple[Path, ...],
    output: Path,
    as_json: bool,
    smooth_time: float,
    max_frames: int | None,
    **kw: Any,
) -> None:
    """Explain IMAGES (image files, folders, videos, cameras as cam:N) with MODEL; write
    overlay PNGs, and an overlay video per video, to -o OUTPUT."""
    if (scale := kw.pop("scale")) is not None:  # --ray: Parquet on Ray Data (onnxcam.scale)
        _run_on_ray(model, images, output, as_json, scale, kw)
        return
    from .image import list_images
    from .runner import run_images, table
    from .video import CODECS, split_inputs

    videos, others = split_inputs(images, kw["recursive"])
    with_images = bool(others) and (not videos or bool(list_images(others, kw["recursive"])))
    if output.suffix.lower() in CODECS and (with_images or not videos):
        raise OnnxcamError(f"-o {output} names a video file; images are written to a folder")
    res = vres = None
    if with_images:
        with _Bar("explaining", show=not as_json) as bar:
            res = run_images(
                model,
                others,
                out_dir=output,
                note=_note,
                on_failure=_failure,
                progress=bar,
                method_progress=_MethodProgress(not as_json),
                **kw,
            )
        if res.interrupted:
            click.echo(
                f"\nInterrupted: {len(res.rows)} explanation(s) written to {output}.", err=True
            )
            raise click.exceptions.Exit(130)
    if videos:
        vres = _run_videos(model, videos, output, as_json, smooth_time, max_frames, kw)
    failed = (res.failures if res else []) + (vres.failures if vres else [])
    if as_json:
        doc = res.to_json() if res else {"model": str(model), "provider": vres.provider}
        if vres:
            doc["videos"] = vres.to_json()
            doc["failures"] = [{"image": f.source, "error": f.error} for f in failed]
        click.echo(json.dumps(doc, indent=1))
    elif res:
        if res.rows:
            click.echo(table(res.rows))
        found = sum(len(r.get("detections", [])) for r in res.rows)
        what = f"{found} detection(s)" if found else f"{len(res.rows)} explanation(s)"
        click.echo(
            f"{what} of {res.images - len(res.failures)} image(s) in "
            f"{res.seconds:.1f}s on {res.provider}; overlays in {output}"
            + (f"; {len(res.failures)} failed" if res.failures else "")
        )
    if vres and not as_json:
        for v in vres.videos:
            w, h = v.size
            maps = ", ".join(f"{m} ({where})" for m, where in v.maps.items())
            click.echo(
                f"{Path(v.source).name}: {v.frames} frame(s) {w}x{h} at {v.fps_in:g} fps, "
                f"{maps} -> {v.output}: {v.fps:.1f} frames/s"
            )
        frames = sum(v.frames for v in vres.videos)
        seconds = sum(v.seconds for v in vres.videos)
        click.echo(
            f"{len(vres.videos)} video(s), {frames} frame(s) in {seconds:.1f}s "
            f"({frames / seconds if seconds else 0:.1f} frames/s) on {vres.provider}"
            + (f"; {len(vres.failures)} failed" if vres.failures else "")
        )
    if vres and vres.interrupted:
        v = vres.videos[-1]
        click.echo(f"Interrupted: {v.frames} frame(s) written to {v.output}.", err=True)
        raise click.exceptions.Exit(130)
    if failed:
        raise click.exceptions.Exit(1)  # some inputs failed (each was reported on its line)


def _run_on_ray(
    model: Path,
    images: tuple[Path, ...],
    output: Path,
    as_json: bool,
    scale: dict[str, Any],
    kw: dict[str, Any],
) -> None:
    """``onnxcam run --ray``: ``scale.explain_dataset`` with the run options that apply."""
    from .scale import as_uri, explain_dataset

    refused = {
        "--save-npy": kw["save_npy"],
        "--save-tensors": kw["save_tensors"],
        "a target flag other than --class": kw["target"].given(),
    }
    for flag, given in refused.items():
        if given:
            raise OnnxcamError(f"{flag} does not apply to --ray runs (docs/scale.md)")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's bars, not its log
    scale = dict(scale)
    evaluation = None
    if scale.pop("evaluate"):
        from .evaluate import EvalOptions

        evaluation = EvalOptions(seed=kw["perturbation"].seed)
    elif scale["annotations"] is not None:
        raise OnnxcamError("--annotations applies to --ray --eval runs only")
    res = explain_dataset(
        as_uri(model),
        [as_uri(p) for p in images],
        as_uri(output),
        kw["methods"],
        classes=kw["target"].cls,
        topk=kw["topk"],
        layers=kw["layer"],
        fuse=kw["fuse"],
        batch_size=kw["perturbation"].batch_size,
        perturbation=kw["perturbation"],
        sampling=kw["sampling"],
        device=kw["device"],
        recursive=kw["recursive"],
        boxes=kw["box_threshold"],
        alpha=kw["alpha"],
        colormap=kw["colormap"],
        note=_note,
        on_failure=_failure,
        evaluation=evaluation,
        **scale,
    )
    if res.interrupted:
        click.echo(
            f"\nInterrupted: {res.explained + res.failed} image(s) committed to {res.output}; "
            "run the same command again to resume.",
            err=True,
        )
        raise click.exceptions.Exit(130)
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=1))
    else:
        click.echo(
            f"{res.explained} image(s) explained, {res.failed} failed, {res.skipped} already "
            f"done, in {res.seconds:.1f}s ({res.images_per_second:.1f} images/s): "
            f"{res.rows} row(s) in {res.shards} new shard(s); {res.output} holds "
            f"{res.in_output} image(s), {res.errors_in_output} with an error"
        )
        if res.summary:
            from .evaluate import table

            click.echo(table(res.summary))
            click.echo(f"evaluation summary in {res.output.rstrip('/')}/_eval/summary.json")
    if res.failures or res.errors_in_output:  # a resumed job's earlier failures count too
        raise click.exceptions.Exit(1)


def _run_videos(
    model: Path,
    videos: list,
    output: Path,
    as_json: bool,
    smooth_time: float,
    max_frames: int | None,
    kw: dict[str, Any],
):
    """``onnxcam run`` on the videos and cameras: ``video.run_videos`` with one progress bar
    per video (its frame count, when the file gives it)."""
    from .runner import _layer_selection
    from .video import run_videos

    image_only = {
        "--topk": kw["topk"] != 1,
        "--boxes": kw["box_threshold"] is not None,
        "--save-tensors": kw["save_tensors"],
    }
    given = [flag for flag, on in image_only.items() if on]
    if given:
        raise OnnxcamError(f"{', '.join(given)}: for images only, not for videos")
    return run_videos(
        model,
        videos,
        output=output,
        methods=kw["methods"],
        target=kw["target"],
        device=kw["device"],
        batch_size=kw["perturbation"].batch_size,
        smooth_time=smooth_time,
        max_frames=max_frames,
        alpha=kw["alpha"],
        colormap=kw["colormap"],
        save_npy=kw["save_npy"],
        note=_note,
        on_failure=_failure,
        progress=lambda name: _Bar(Path(name).name, show=not as_json),
        layers=_layer_selection(kw["layer"]),
        fuse=kw["fuse"],
        perturbation=kw["perturbation"],
        **kw["sampling"],
    )


@cli.command("report")
@o.model_argument
@o.images_argument
@o.output_option(file=True, default=Path("report.html"), help="The HTML file to write.")
@o.methods_option("all")
@o.class_option
@o.topk_option
@o.device_option
@o.layer_option
@click.option(
    "--per-page",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Images per page of the report.",
)
@o.recursive_option
@click.option(
    "--screenshot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also render the report with headless Chromium to this PNG.",
)
@o.perturbation_options()
def report_cmd(
    model: Path, images: tuple[Path, ...], output: Path, screenshot: Path | None, **kw: Any
) -> None:
    """One self-contained HTML report for IMAGES: predictions and every method's overlay."""
    from .runner import report_images

    res = report_images(model, images, output, method_progress=_MethodProgress(), **kw)
    failed = len(res.failures)
    click.echo(
        f"wrote {res.path} ({len(res.results)} image(s), {failed} failed, {res.seconds:.1f}s)"
    )
    if screenshot is not None:
        from .report import screenshot as render_png

        click.echo(f"screenshot: {render_png(res.path, screenshot)}")
    if failed:
        raise click.exceptions.Exit(1)


@cli.command("demo")
@o.output_option(
    file=False,
    default=Path("onnxcam-demo"),
    help="Where the report, the photos and the overlays are written.",
)
@click.option(
    "--photos",
    default=",".join(("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left")),
    show_default=True,
    help="scikit-image photos to explain.",
)
@o.methods_option(None, help="Methods (default: every registered method).")
@click.option("--rebuild", is_flag=True, help="Re-export the cached demo model.")
def demo_cmd(output: Path, photos: str, methods: list[str] | None, rebuild: bool) -> None:
    """Explain scikit-image's photos with a pretrained EfficientNet-Lite0; write an HTML report."""
    from . import demo
    from .methods import METHODS
    from .perturbation import PerturbationOptions
    from .runner import report_images

    t0 = time.perf_counter()
    model, built = demo.demo_model(rebuild)
    click.echo(f"model: {model}" + (f" (built in {built:.1f}s)" if built else " (cached)"))
    files = demo.write_photos(
        output / "photos", [p.strip() for p in photos.split(",") if p.strip()]
    )
    res = report_images(
        model,
        files,
        output / "report.html",
        methods=methods or list(METHODS),
        perturbation=PerturbationOptions(**demo.DEMO_PERTURBATION),
        pngs_dir=output / "overlays",
        notes=["demo settings: SS-CAM 2 samples, IS-CAM 3 steps (defaults 35 and 10)"],
        method_progress=_MethodProgress(),
    )
    for r in res.results:
        if type(r).__name__ == "Failure":
            _failure(r)
        else:
            top = r.predictions[0]
            click.echo(f"  {Path(r.source).name:<22} {top.label} ({100 * top.probability:.1f}%)")
    click.echo(f"report:   {res.path.resolve()}")
    click.echo(f"overlays: {(output / 'overlays').resolve()}")
    click.echo(f"done in {time.perf_counter() - t0:.1f}s ({res.seconds:.1f}s explaining)")


@cli.command("eval")
@o.model_argument
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON with classes, boxes or masks (docs/evaluation.md).",
)
@o.methods_option("all")
@o.output_option(
    file=False,
    default=Path("onnxcam-eval"),
    help="Where metrics.csv, metrics.json and curves.png are written.",
)
@click.option(
    "--steps",
    type=click.IntRange(2),
    default=50,
    show_default=True,
    help="Deletion/insertion curve steps.",
)
@click.option("--no-road", is_flag=True, help="Skip ROAD (its imputation is the slowest part).")
@click.option(
    "--box-threshold",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="mean IoU and top-1 loc. acc.: boxes around the map ≥ this fraction of its maximum "
    "(the CAM paper's 20%); MaxBoxAcc, MaxBoxAccV2 and PxAP sweep every threshold.",
)
@click.option(
    "--pointing-tolerance",
    type=click.IntRange(0),
    default=15,
    show_default=True,
    help="Pointing game tolerance, in pixels of the original image.",
)
@o.device_option
@o.recursive_option
@o.json_option("Print the summary as JSON.")
@click.option(
    "--sanity",
    is_flag=True,
    help="Also run the sanity checks (Adebayo et al., arXiv:1810.03292): cascading weight "
    "randomisation and the random logit; writes sanity.json and sanity.png (needs onnx).",
)
@click.option(
    "--sanity-only",
    is_flag=True,
    help="Only the sanity checks: skip the faithfulness and localization metrics.",
)
@click.option(
    "--sanity-steps",
    type=int,
    default=8,
    show_default=True,
    metavar="N",
    help="Cascade steps, from the logits layer alone to every parameterised layer.",
)
@click.option(
    "--source",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The plain ONNX model MODEL was exported from, for --sanity (default: extracted "
    "from MODEL).",
)
@o.eval_metric_options
@o.perturbation_options(
    help={"seed": "Seeds the random baseline, ROAD, SS-CAM's noise and --sanity's weights."}
)
def eval_cmd(
    model: Path,
    folder: Path,
    output: Path,
    steps: int,
    no_road: bool,
    box_threshold: float,
    pointing_tolerance: int,
    perturbation: PerturbationOptions,
    as_json: bool,
    sanity: bool,
    sanity_only: bool,
    sanity_steps: int,
    source: Path | None,
    extra_metrics: dict[str, Any],
    **kw: Any,
) -> None:
    """Faithfulness and localization metrics of every method over FOLDER; with --sanity, the
    sanity checks of Adebayo et al. (docs/evaluation.md)."""
    from .evaluate import EvalOptions, table
    from .runner import evaluate_folder, sanity_folder

    sanity = sanity or sanity_only
    if sanity_steps < 1:
        raise click.ClickException(f"--sanity-steps must be at least 1, not {sanity_steps}")
    if source is not None and not sanity:
        raise click.ClickException("--source is read by the sanity checks: add --sanity")

    def check() -> Any:
        with _Bar("sanity checks") as bar:
            return sanity_folder(
                model, folder, output, methods=kw["methods"], steps=sanity_steps,
                seed=perturbation.seed, source=source, device=kw["device"],
                recursive=kw["recursive"], batch_size=perturbation.batch_size, progress=bar,
            )  # fmt: skip

    if sanity_only:
        checked = check()
        _echo_sanity(checked, as_json)
        if checked.failures:
            raise click.exceptions.Exit(1)
        return
    options = EvalOptions(
        steps=steps,
        road=not no_road,
        box_threshold=box_threshold,
        seed=perturbation.seed,
        batch_size=perturbation.batch_size,
        pointing_tolerance=pointing_tolerance,
        **extra_metrics,
    )
    with _Bar("evaluating") as bar:
        run = evaluate_folder(
            model, folder, output, options=options, perturbation=perturbation, progress=bar, **kw
        )
    for f in run.result.failures:
        _failure(f)
    checked = check() if sanity else None
    if as_json:
        summary = run.result.summary
        both = {"metrics": summary, "sanity": checked.result.to_json()} if checked else None
        click.echo(json.dumps(both or summary, indent=1))
    else:
        click.echo(table(run.result.summary))
        click.echo("wrote " + ", ".join(str(p) for p in run.paths.values()))
        if checked:
            _echo_sanity(checked, False, failures=False)
    if run.result.failures:
        raise click.exceptions.Exit(1)


def _echo_sanity(checked: Any, as_json: bool, failures: bool = True) -> None:
    """Print ``onnxcam eval --sanity``'s tables (or its JSON), the files it wrote and (with
    ``failures``) the images it could not read."""
    from .sanity import report

    for f in checked.failures if failures else []:
        _failure(f)
    if as_json:
        click.echo(json.dumps({"sanity": checked.result.to_json()}, indent=1))
        return
    click.echo(report(checked.result))
    click.echo("wrote " + ", ".join(str(p) for p in checked.paths.values()))


def _ascent_options(f):
    """``AscentOptions``' fields as options (``--steps``, ``--step-size``, ``--jitter``, …),
    built on first use; the command receives one ``ascent=`` object."""

    def factory() -> list[click.Parameter]:
        from .inspect import AscentOptions

        return list(o.dataclass_options(AscentOptions, "ascent__"))

    def build(fields: dict[str, Any]) -> Any:
        from .inspect import AscentOptions

        return AscentOptions(**fields)

    return o._option_group("ascent__", factory, "ascent", build)(f)


@cli.command("inspect")
@o.model_argument
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--layer",
    required=True,
    metavar="NAME",
    help="The layer to look inside: an ONNX tensor or node name (`onnxcam layers MODEL`).",
)
@o.output_option(
    file=False,
    default=Path("onnxcam-inspect"),
    help="Where activations.png, filters.png and inspect.html are written.",
)
@click.option(
    "--channels",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Show the top N channels by mean activation on IMAGE.",
)
@click.option(
    "--channel-ids",
    default=None,
    metavar="I,J,...",
    help="Show these channels instead of the top N.",
)
@click.option(
    "--filters",
    is_flag=True,
    help="Also visualise what each channel responds to: gradient ascent on the input "
    "(all channels batched; --steps runs of the layer's forward and backward).",
)
@click.option("--colormap", default="viridis", show_default=True, help="OpenCV colormap name.")
@click.option(
    "--preset",
    type=click.Choice(list(contract.PRESETS)),
    default=None,
    help="A plain ONNX model's preprocessing (as `export --preset`; an onnxcam export "
    "keeps its own).",
)
@click.option(
    "--size", nargs=2, type=int, metavar="H W", default=None, help="Fix a dynamic input size."
)
@o.device_option
@o.json_option("Print what was written and the channels as JSON.")
@_ascent_options
def inspect_cmd(
    model: Path, image: Path, output: Path, filters: bool, as_json: bool, **kw: Any
) -> None:
    """Inside the network: LAYER's activation maps on IMAGE (top channels by mean activation)
    and, with --filters, the input each channel responds to most; writes PNGs and an HTML
    page to -o OUTPUT."""
    from .inspect import inspect_image

    with _Bar("filters", show=not as_json) as bar:
        res = inspect_image(
            model,
            image,
            kw.pop("layer"),
            output,
            channels=kw.pop("channels"),
            channel_ids=kw.pop("channel_ids"),
            filters=filters,
            options=kw.pop("ascent"),
            progress=bar,
            **kw,
        )
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=1))
        return
    shape = "x".join(str(d) for d in res.shape)
    tensor = "" if res.tensor == res.layer else f"{res.tensor}, "
    click.echo(f"layer {res.layer} ({tensor}{shape}) on {res.provider}")
    for r in res.channels:
        ascent = "" if r.final is None else f"  filter mean {r.start:.3g} -> {r.final:.3g}"
        click.echo(f"  #{r.index:<5} rank {r.rank:<5} mean {r.mean:.4g}{ascent}")
    timing = "" if res.filter_seconds is None else f", filters {res.filter_seconds:.1f}s"
    click.echo(
        f"wrote {', '.join(str(p) for p in res.written.values())} ({res.seconds:.1f}s{timing})"
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="onnxcam")


if __name__ == "__main__":
    main()
