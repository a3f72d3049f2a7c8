"""The ``onnxcam`` command line: a thin layer over the Python API.

Library errors (``OnnxcamError``) become one ``Error: ...`` line and exit code 1; anything
unexpected also becomes one line (set ``ONNXCAM_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
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
def export_cmd(model, output, layers, size, mean, std, scale, color, labels, model_output) -> None:
    """Write MODEL with activations and gradient outputs (graph contract v1) to -o OUT."""
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
    )
    ratio = output.stat().st_size / max(model.stat().st_size, 1)
    for k, t in enumerate(res.targets):
        cam = "  (+CAM weights)" if t.cam_weight else ""
        click.echo(f"target {k}: {t.name}  {t.producer} {t.layout} {t.shape}{cam}")
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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="onnxcam")


if __name__ == "__main__":
    main()
