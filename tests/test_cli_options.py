"""CLI options declared once (onnxcam/options.py): one output flag, old spellings as hidden aliases,
perturbation options generated from ``PerturbationOptions``, a runner that works without click."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam import options as o
from onnxcam.cli import cli
from onnxcam.perturbation import PerturbationOptions

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_COMMANDS = ("export", "run", "report", "demo", "eval", "inspect")
PERTURBATION_COMMANDS = ("run", "report", "eval")
OLD_OUT = re.compile(r"--out\b(?!put)")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return path


def _help(command: str) -> str:
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


def _params(command: str, args: list[str]) -> dict:
    """The parsed (callback-processed) parameters of ``onnxcam COMMAND ARGS`` (no body run)."""
    cmd = cli.commands[command]
    with cmd.make_context(command, list(args)) as ctx:
        return dict(ctx.params)


def _args(command: str, tmp_path: Path, *extra: str) -> list[str]:
    """Minimal positional arguments of each command (paths need not exist but FOLDER's)."""
    positional = {
        "export": ["m.onnx"],
        "run": ["m.onnx", "a.png"],
        "report": ["m.onnx", "a.png"],
        "demo": [],
        "eval": ["m.onnx", str(tmp_path)],
        "inspect": ["m.onnx", "a.png", "--layer", "x"],
    }[command]
    return [*positional, *extra]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_help_shows_one_output_flag(command) -> None:
    text = _help(command)
    assert text.count("-o, --output") == 1, text
    assert not OLD_OUT.search(text), text  # the old spelling is accepted but not shown


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
@pytest.mark.parametrize("flag", ["-o", "--output", "--out"])
def test_every_output_spelling_reaches_the_same_parameter(command, flag, tmp_path) -> None:
    target = tmp_path / "dest"
    params = _params(command, _args(command, tmp_path, flag, str(target)))
    assert params["output"] == target
    assert not {"out", "out_dir", "out_html"} & set(params)


def test_output_is_required_only_where_there_is_no_default(tmp_path) -> None:
    r = CliRunner().invoke(cli, ["export", "m.onnx"])
    assert r.exit_code == 2 and "'-o' / '--output'" in r.output  # error hint: no alias shown
    assert _params("run", _args("run", tmp_path))["output"] == Path("onnxcam-out")
    assert _params("report", _args("report", tmp_path))["output"] == Path("report.html")


@pytest.mark.parametrize("command", PERTURBATION_COMMANDS)
def test_perturbation_defaults_come_from_the_dataclass(command) -> None:
    by_name = {p.name: p for p in cli.commands[command].params}
    fields = [f for f in dataclasses.fields(PerturbationOptions) if f.init]
    assert fields
    for f in fields:
        p = by_name["perturbation__" + f.name]
        assert p.default == f.default, f.name
        assert isinstance(p, click.Option) and p.opts[0] == "--" + f.name.replace("_", "-")
        assert p.help, f"--{f.name} has no help"
    text = " ".join(_help(command).split())
    for f in fields:
        assert "--" + f.name.replace("_", "-") in text


def test_the_command_receives_one_options_object_validated_by_the_dataclass() -> None:
    seen = []

    @click.command(cls=o.Command)
    @o.perturbation_options()
    def probe(perturbation: PerturbationOptions) -> None:
        seen.append(perturbation)

    runner = CliRunner()
    assert runner.invoke(probe, []).exit_code == 0
    r = runner.invoke(probe, ["--ss-samples", "3", "--scorecam-topk", "4", "--ss-noise", "0.5"])
    assert r.exit_code == 0, r.output
    assert seen == [
        PerturbationOptions(),
        dataclasses.replace(PerturbationOptions(), ss_samples=3, scorecam_topk=4, ss_noise=0.5),
    ]
    # the dataclass's own checks are the option's checks (one place)
    r = runner.invoke(probe, ["--ss-samples", "0"])
    assert r.exit_code == 2 and "ss_samples must be at least 1" in r.output
    r = runner.invoke(probe, ["--scorecam-convention", "nope"])
    assert r.exit_code == 2 and "unknown Score-CAM convention 'nope'" in r.output


def test_old_option_spellings_are_hidden_aliases(tmp_path) -> None:
    params = _params("run", _args("run", tmp_path, "--score-convention", "torchcam"))
    assert params["perturbation__scorecam_convention"] == "torchcam"
    text = _help("run")
    assert "--scorecam-convention" in text and "--score-convention" not in text


def test_generated_options_are_built_on_first_use() -> None:
    @click.command(cls=o.Command)
    @click.option("--x", default=1)
    @o.perturbation_options()
    def probe(x: int, perturbation: PerturbationOptions) -> None:
        """A probe."""

    assert [p.name for p in probe._params] == ["x"]  # nothing generated at import time
    names = [p.name for p in probe.params]
    assert names[0] == "x" and "perturbation__batch_size" in names


def test_methods_are_checked_against_the_registry_when_parsed(tmp_path) -> None:
    params = _params("run", _args("run", tmp_path, "-m", "gradcam, LayerCAM,all"))
    assert params["methods"] == ["gradcam", "LayerCAM", "all"]
    r = CliRunner().invoke(cli, ["run", *_args("run", tmp_path, "-m", "gradcam,bogus")])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error: unknown method 'bogus'")
    assert len(r.output.strip().splitlines()) == 1


def test_export_mean_and_std_are_parsed_in_callbacks(tmp_path) -> None:
    args = _args("export", tmp_path, "-o", "x.onnx", "--mean", "0.5,0.4 0.3", "--std", "0.2")
    params = _params("export", args)
    assert params["mean"] == [0.5, 0.4, 0.3] and params["std"] == [0.2]


def test_old_spellings_run_end_to_end(tiny_cam, image, tmp_path) -> None:
    """``--out`` and ``--score-convention`` still work in a real run, with the same maps."""
    runner = CliRunner()
    outs = {}
    for out_flag, conv_flag, name in [
        ("--out", "--score-convention", "old"),
        ("-o", "--scorecam-convention", "new"),
    ]:
        out = tmp_path / name
        args = ["run", str(tiny_cam), str(image), "-m", "scorecam", "--save-npy"]
        r = runner.invoke(cli, [*args, conv_flag, "torchcam", out_flag, str(out), "--json"])
        assert r.exit_code == 0, r.output
        assert (out / "noise_scorecam.png").is_file()
        outs[name] = np.load(out / "noise_scorecam.npy")
    np.testing.assert_array_equal(outs["old"], outs["new"])


def test_runner_and_options_do_not_print_or_import_click_needlessly() -> None:
    runner = ast.parse((ROOT / "onnxcam" / "runner.py").read_text())
    imported = {
        a.name.split(".")[0] for n in ast.walk(runner) if isinstance(n, ast.Import) for a in n.names
    } | {
        n.module.split(".")[0]
        for n in ast.walk(runner)
        if isinstance(n, ast.ImportFrom) and n.module
    }
    assert "click" not in imported
    calls = {
        n.func.id
        for n in ast.walk(runner)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert "print" not in calls
    # options.py: only the standard library, click, onnxcam.errors and onnxcam.devices
    opts = ast.parse((ROOT / "onnxcam" / "options.py").read_text())
    top = [n for n in opts.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    relative = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == {"errors", "devices"}


def test_cli_import_does_not_load_the_engine_when_the_package_face_is_light() -> None:
    code = (
        "import sys, onnxcam; light = 'onnxcam.engine' not in sys.modules; "
        "import onnxcam.cli; print(light, 'onnxcam.perturbation' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    light, loaded = r.stdout.split()
    if light != "True":
        pytest.skip("`import onnxcam` still loads the engine (issue 13, item 1)")
    assert loaded == "False"


def test_runner_works_without_click(tiny_cam, image, tmp_path) -> None:
    """run_images / report_images / evaluate_folder with click unimportable, all silent."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["click"] = None  # any "import click" now fails
        from pathlib import Path
        from onnxcam.evaluate import EvalOptions
        from onnxcam.perturbation import PerturbationOptions
        from onnxcam.runner import evaluate_folder, report_images, run_images

        tmp = Path({str(tmp_path)!r})
        events = []
        res = run_images(
            {str(tiny_cam)!r},
            [{str(image)!r}, {str(tmp_path / "broken.png")!r}],
            methods="gradcam,scorecam",
            out_dir=tmp / "run",
            perturbation=PerturbationOptions(batch_size=2),
            note=lambda t: events.append(("note", t)),
            on_failure=lambda f: events.append(("failure", f.source)),
            progress=lambda done, total: events.append(("progress", done, total)),
        )
        rep = report_images({str(tiny_cam)!r}, [{str(image)!r}], tmp / "r.html", methods="gradcam")
        ev = evaluate_folder(
            {str(tiny_cam)!r}, tmp, tmp / "eval", methods="gradcam",
            options=EvalOptions(steps=4, road=False),
        )
        print(json.dumps({{
            "rows": len(res.rows), "failures": [f.source for f in res.failures],
            "interrupted": res.interrupted, "json": sorted(res.to_json()), "events": events,
            "overlays": sorted(res.rows[0]["overlays"]), "report": rep.path.is_file(),
            "report_failures": len(rep.failures), "eval_failures": len(ev.result.failures),
            "eval_files": sorted(p.name for p in ev.paths.values()),
            "click": "click" in sys.modules and sys.modules["click"] is not None,
        }}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""  # the library itself prints nothing
    (line,) = r.stdout.splitlines()  # only the probe's own line
    doc = json.loads(line)
    assert doc["rows"] == 1 and doc["failures"] == [str(broken)] and not doc["interrupted"]
    assert doc["json"] == ["failures", "model", "provider", "results", "seconds"]
    assert doc["overlays"] == ["gradcam", "scorecam"]
    events = [tuple(e) for e in doc["events"]]
    assert events[0] == ("progress", 0, 2)
    assert ("failure", str(broken)) in events
    assert sum(e[1] for e in events if e[0] == "progress") == 2
    assert doc["report"] and doc["report_failures"] == 0
    assert doc["eval_failures"] == 1  # broken.png lies in the evaluated folder too
    assert doc["eval_files"] == ["curves.png", "metrics.csv", "metrics.json"]
    assert doc["click"] is False
