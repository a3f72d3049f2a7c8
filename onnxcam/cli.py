"""The ``onnxcam`` command line: a thin layer over the Python API.

Library errors (``OnnxcamError``) become one ``Error: ...`` line and exit code 1; anything
unexpected also becomes one line (set ``ONNXCAM_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import OnnxcamError


class _Group(click.Group):
    """A click group that turns every error into one line and a non-zero exit."""

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


def _floats(text: str | None) -> list[float] | None:
    """'0.485,0.456,0.406' or '0.485 0.456 0.406' → floats."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}") from None


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
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the explainable model (never the input file).",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="NAME",
    help="Target layer: ONNX tensor or node name (repeatable). "
    "Default: the last 4-D feature map feeding the classifier head.",
)
@click.option(
    "--size", nargs=2, type=int, metavar="H W", default=None, help="Fix a dynamic input size."
)
@click.option(
    "--mean",
    metavar="M",
    default=None,
    help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406 (ImageNet default).",
)
@click.option("--std", metavar="S", default=None, help="Per-channel std, e.g. 0.229,0.224,0.225.")
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
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names: text file (one per line) or JSON list.",
)
@click.option(
    "--model-output",
    default=None,
    metavar="NAME",
    help="Which model output holds the class scores (default: the first).",
)
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
def export_cmd(
    model,
    output,
    layers,
    size,
    mean,
    std,
    scale,
    color,
    labels,
    model_output,
    heatmaps,
    heatmap_size,
) -> None:
    """Write MODEL with activations and gradient outputs (graph contract v2) to -o OUT."""
    ex = _exporter()
    res = ex.export_onnx(
        model,
        output,
        layers=list(layers) or None,
        size=size,
        mean=_floats(mean),
        std=_floats(std),
        scale=scale,
        color=color,
        labels=labels,
        model_output=model_output,
        heatmaps=heatmaps,
        heatmap_size=heatmap_size,
    )
    ratio = output.stat().st_size / max(model.stat().st_size, 1)
    for k, t in enumerate(res.targets):
        extra = ("  +CAM weights" if t.cam_weight else "") + ("  +head" if t.head_input else "")
        if t.heatmaps:
            extra += "  +heatmaps " + ",".join(t.heatmaps)
        click.echo(f"target {k}: {t.name}  {t.producer} {t.layout} {t.shape}{extra}")
    click.echo(
        f"wrote {output}  ({ratio:.3f}x the input size, {res.seconds:.1f}s, "
        f"outputs unchanged: max diff {res.max_output_diff:.1e})"
    )


@cli.command("layers")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model-output",
    default=None,
    metavar="NAME",
    help="Which model output holds the class scores (default: the first).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def layers_cmd(model, model_output, as_json) -> None:
    """List candidate target layers (tensor, producing op, shape); * marks the default."""
    ex = _exporter()
    found = ex.list_layers(model, model_output)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "tensor": c.tensor,
                        "op": c.op,
                        "node": c.node,
                        "shape": list(c.shape),
                        "layout": c.layout,
                        "default": c.default,
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
        click.echo(f"{mark} {c.tensor:<{width}}  {c.op:<20} {shape}  {c.layout}")


def _method_help() -> str:
    from .methods import METHODS

    return "Comma-separated methods or 'all': " + ", ".join(METHODS) + "."


# --- options shared by run / report / eval (one definition each) ------------------------------
_class_option = click.option(
    "--class",
    "target",
    default=None,
    metavar="K|NAME",
    help="Class to explain: an index or a label name (default: top-1).",
)
_topk_option = click.option(
    "--topk",
    type=click.IntRange(1, 50),
    default=1,
    show_default=True,
    help="Explain each of the top-K classes.",
)
_device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: CUDA when onnxruntime-gpu sees a usable GPU, else CPU.",
)
_batch_option = click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Images per run, and perturbed inputs per run for perturbation methods.",
)
_recursive_option = click.option("--recursive", is_flag=True, help="Search folders recursively.")


def _methods_option(default: str):
    return click.option(
        "-m", "--method", "methods", default=default, show_default=True, help=_method_help()
    )


@cli.command("run")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_methods_option("gradcam")
@_class_option
@_topk_option
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("onnxcam-out"),
    show_default=True,
    help="Where overlays are written.",
)
@_device_option
@_batch_option
@click.option(
    "--layer",
    default=None,
    metavar="K|NAME|all",
    help="Exported target layer to use (default: the first).",
)
@click.option("--fuse", is_flag=True, help="Average the maps of the selected layers.")
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
@_recursive_option
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (for machines).")
@click.option(
    "--scorecam-topk",
    type=click.IntRange(1),
    default=None,
    metavar="K",
    help="Score-CAM family: score only the K strongest channels (approximation).",
)
@click.option(
    "--score-convention",
    type=click.Choice(["pytorch-grad-cam", "torchcam"]),
    default="pytorch-grad-cam",
    show_default=True,
    help="Score-CAM mask convention.",
)
@click.option(
    "--ss-samples",
    type=click.IntRange(1),
    default=35,
    show_default=True,
    help="SS-CAM noise draws.",
)
@click.option(
    "--is-steps",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="IS-CAM integration steps.",
)
@click.option("--occlusion-patch", type=click.IntRange(1), default=32, show_default=True)
@click.option("--occlusion-stride", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--occlusion-baseline",
    type=float,
    default=None,
    metavar="PIXEL",
    help="Occluding value (0-255); default: the dataset mean.",
)
def run_cmd(model, images, **opts) -> None:
    """Explain IMAGES (files or folders) with MODEL; write overlay PNGs to --out."""
    from .perturbation import PerturbationOptions
    from .runner import run_images

    perturbation = PerturbationOptions(
        batch_size=opts["batch_size"],
        scorecam_convention=opts.pop("score_convention"),
        scorecam_topk=opts.pop("scorecam_topk"),
        ss_samples=opts.pop("ss_samples"),
        is_steps=opts.pop("is_steps"),
        occlusion_patch=opts.pop("occlusion_patch"),
        occlusion_stride=opts.pop("occlusion_stride"),
        occlusion_baseline=opts.pop("occlusion_baseline"),
    )
    if run_images(model, images, perturbation=perturbation, **opts):
        raise click.exceptions.Exit(1)  # some images failed (each was reported on its line)


@cli.command("report")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_html",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write.",
)
@_methods_option("all")
@_class_option
@_topk_option
@_device_option
@_batch_option
@click.option("--layer", default=None, metavar="K|NAME|all")
@click.option(
    "--per-page",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Images per page of the report.",
)
@_recursive_option
@click.option(
    "--screenshot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also render the report with headless Chromium to this PNG.",
)
def report_cmd(
    model,
    images,
    out_html,
    methods,
    target,
    topk,
    device,
    batch_size,
    layer,
    per_page,
    recursive,
    screenshot,
) -> None:
    """One self-contained HTML report for IMAGES: predictions and every method's overlay."""
    from .perturbation import PerturbationOptions
    from .runner import report_images

    path, results, seconds = report_images(
        model,
        images,
        out_html,
        methods=methods,
        target=target,
        topk=topk,
        device=device,
        batch_size=batch_size,
        layer=layer,
        per_page=per_page,
        recursive=recursive,
        perturbation=PerturbationOptions(batch_size=batch_size),
    )
    failed = sum(type(r).__name__ == "Failure" for r in results)
    click.echo(f"wrote {path} ({len(results)} image(s), {failed} failed, {seconds:.1f}s)")
    if screenshot is not None:
        from .report import screenshot as render_png

        click.echo(f"screenshot: {render_png(path, screenshot)}")
    if failed:
        raise click.exceptions.Exit(1)


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("onnxcam-demo"),
    show_default=True,
)
@click.option(
    "--photos",
    default=",".join(("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left")),
    show_default=True,
    help="scikit-image photos to explain.",
)
@click.option(
    "-m", "--method", "methods", default=None, help="Methods (default: every registered method)."
)
@click.option("--rebuild", is_flag=True, help="Re-export the cached demo model.")
def demo_cmd(out_dir, photos, methods, rebuild) -> None:
    """Explain scikit-image's photos with a pretrained EfficientNet-Lite0; write an HTML report."""
    from . import demo
    from .methods import METHODS
    from .perturbation import PerturbationOptions
    from .runner import report_images

    t0 = time.perf_counter()
    model, built = demo.demo_model(rebuild)
    click.echo(f"model: {model}" + (f" (built in {built:.1f}s)" if built else " (cached)"))
    files = demo.write_photos(
        out_dir / "photos", [p.strip() for p in photos.split(",") if p.strip()]
    )
    path, results, seconds = report_images(
        model,
        files,
        out_dir / "report.html",
        methods=methods or list(METHODS),
        perturbation=PerturbationOptions(**demo.DEMO_PERTURBATION),
        pngs_dir=out_dir / "overlays",
        notes=["demo settings: SS-CAM 2 samples, IS-CAM 3 steps (defaults 35 and 10)"],
    )
    for r in results:
        if type(r).__name__ == "Failure":
            click.echo(f"error: {r.error}", err=True)
        else:
            top = r.predictions[0]
            click.echo(f"  {Path(r.source).name:<22} {top.label} ({100 * top.probability:.1f}%)")
    click.echo(f"report:   {path.resolve()}")
    click.echo(f"overlays: {(out_dir / 'overlays').resolve()}")
    click.echo(f"done in {time.perf_counter() - t0:.1f}s ({seconds:.1f}s explaining)")


@cli.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON with classes, boxes or masks (docs/evaluation.md).",
)
@_methods_option("all")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("onnxcam-eval"),
    show_default=True,
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
    default=0.5,
    show_default=True,
    help="Boxes from maps: threshold as a fraction of the map's maximum.",
)
@click.option(
    "--pointing-tolerance",
    type=click.IntRange(0),
    default=15,
    show_default=True,
    help="Pointing game tolerance, in pixels of the original image.",
)
@_batch_option
@_device_option
@click.option("--seed", type=int, default=0, show_default=True)
@_recursive_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def eval_cmd(
    model,
    folder,
    annotations,
    methods,
    out_dir,
    steps,
    no_road,
    box_threshold,
    pointing_tolerance,
    batch_size,
    device,
    seed,
    recursive,
    as_json,
) -> None:
    """Faithfulness and localization metrics of every method over FOLDER."""
    from .engine import Explainer
    from .evaluate import EvalOptions, evaluate, load_annotations, table, write_outputs
    from .image import list_images
    from .methods import resolve_methods
    from .perturbation import PerturbationOptions

    files = list_images([folder], recursive)
    if not files:
        raise click.ClickException(f"no images found in {folder}")
    ann = load_annotations(annotations) if annotations else None
    ex = Explainer(model, device=device)
    names = resolve_methods(methods, ex.info.has_cam_weights)
    opts = EvalOptions(
        steps=steps,
        road=not no_road,
        box_threshold=box_threshold,
        seed=seed,
        batch_size=batch_size,
        pointing_tolerance=pointing_tolerance,
    )
    with click.progressbar(
        length=len(files),
        label="evaluating",
        file=sys.stderr,
        hidden=not (sys.stderr.isatty() and len(files) > 1),
    ) as bar:
        result = evaluate(
            ex,
            files,
            names,
            ann,
            opts,
            PerturbationOptions(batch_size=batch_size, seed=seed),
            root=folder if folder.is_dir() else None,
            progress=bar.update,
        )
    for f in result.failures:
        click.echo(f"error: {f.error}", err=True)
    paths = write_outputs(result, out_dir)
    if as_json:
        click.echo(json.dumps(result.summary, indent=1))
    else:
        click.echo(table(result.summary))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
    if result.failures:
        raise click.exceptions.Exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="onnxcam")


if __name__ == "__main__":
    main()
