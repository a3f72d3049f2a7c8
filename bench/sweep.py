"""The model sweep as a table: ~50 random-init timm / transformers models through onnxcam.

Runs the table of ``tests/sweep_models.py`` (the same work ``tests/test_model_sweep.py``
asserts on): per model the exporter's default layer (tensor, layout, token grid), the map
grid vs the model's own feature grid, the relative error of the exported gradients vs float64
torch autograd at the default and at one earlier layer, and the export time. Writes
``bench/results/sweep.json`` and ``bench/results/sweep.md``.

    python bench/sweep.py [--models resnet18,swin_tiny_patch4_window7_224] [--name sweep]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from harness import RESULTS, markdown_table, save

COLUMNS = [
    ("family", "family"),
    ("model", "model"),
    ("default_tensor", "default layer (tensor)"),
    ("layout", "layout/tokens"),
    ("map_grid", "map grid"),
    ("feature_grid", "model's feature grid"),
    ("default_err", "grad rel. err (default)"),
    ("earlier", "earlier layer"),
    ("earlier_err", "grad rel. err (earlier)"),
    ("export_s", "export s"),
    ("status", "status"),
]


def _grid(g) -> str:
    return "x".join(str(v) for v in g) if g else ""


def row(r: dict) -> dict:
    """One table row from ``sweep_models.evaluate``'s summary."""
    from sweep_models import TOL, is_table_default

    d = r.get("default") or {}
    tokens = d.get("tokens")
    problems = []
    if "default_error" in r:
        problems.append("default export failed")
    elif tuple(d["spatial"]) != tuple(r["feature_grid"]):
        problems.append("default grid != feature grid")
    if d and not is_table_default(r):
        problems.append(f"default is {r.get('default_scope') or d['tensor']}")
    if "table_error" in r:
        problems.append(f"layers=[{r['default_module']}] export failed")
    if "earlier_error" in r:
        problems.append(f"layers=[{r['earlier_module']}] export failed")
    for w in ("default", "table", "earlier"):
        chk = r.get(f"{w}_check")
        if chk and not chk["ok"]:
            problems.append(f"{w} gradient > {TOL:g}")
    problems += [r[k] for k in ("default_check_error", "layers_check_error") if k in r]
    layout = d.get("layout", "")
    if tokens:
        layout += f" tokens({tokens[0]}+{tokens[1]}x{tokens[2]})"

    def err(w: str) -> float | None:
        return (r.get(f"{w}_check") or {}).get("grad_err")

    return {
        "family": r["family"],
        "model": r["model"],
        "default_tensor": d.get("tensor", r.get("default_error", "")[:160]),
        "default_scope": r.get("default_scope"),
        "table_default": r["default_module"],
        "layout": layout,
        "map_grid": _grid(r.get("default_map")),
        "feature_grid": _grid(r["feature_grid"]),
        "default_err": err("default"),
        "table_default_err": err("table"),
        "earlier": r["earlier_module"],
        "earlier_err": err("earlier"),
        "earlier_grid": _grid(r.get("earlier_map")),
        "export_s": r["seconds"].get("export_default"),
        "seconds": r["seconds"],
        "status": "; ".join(problems) or "ok",
        "errors": {
            k: r[k]
            for k in ("default_error", "layers_error", "table_error", "earlier_error")
            if k in r
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="", help="comma-separated model ids (default: all)")
    ap.add_argument("--name", default="sweep", help="results file stem")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import onnxruntime as ort
    import torch
    from sweep_models import CASES, evaluate

    ort.set_default_logger_severity(3)
    torch.set_num_threads(2)
    wanted = set(filter(None, args.models.split(",")))
    rows = []
    start = time.perf_counter()
    for c in CASES:
        if wanted and c.key not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            rows.append(row(evaluate(c)))
        except Exception as e:  # the harness itself (building the model, ...)
            rows.append({"family": c.family, "model": c.key, "status": f"harness: {e!r}"[:300]})
            rows[-1]["seconds"] = {}
        rows[-1]["total_s"] = time.perf_counter() - t0
        phases = ", ".join(f"{k} {v:.1f}" for k, v in rows[-1]["seconds"].items())
        print(f"{c.key}: {rows[-1]['status']} ({rows[-1]['total_s']:.1f} s: {phases})", flush=True)
    total = time.perf_counter() - start
    table = markdown_table(rows, COLUMNS)
    print(table)
    print(f"{len(rows)} models, {sum(r['status'] == 'ok' for r in rows)} ok, {total:.0f} s")
    save(args.name, rows, {"total_seconds": total})
    (RESULTS / f"{args.name}.md").write_text(
        f"# Model sweep\n\n`python bench/sweep.py` — {len(rows)} random-init models, "
        f"{total:.0f} s in all.\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
