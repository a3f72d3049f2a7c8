"""The module structure: no import circle in ``onnxcam/`` or ``export/``, a lazy package face,
and a method registry that is whole whichever module asks for it first."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "onnxcam": ROOT / "onnxcam",
    "onnxcam.export": ROOT / "export",
    "onnxcam.export.rules": ROOT / "export" / "rules",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for f in folder.glob("*.py"):
            found[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return found


def _imported(module: str, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The project modules an import statement loads (the nearest module of each name)."""

    def nearest(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    if isinstance(node, ast.Import):
        return [m for a in node.names if (m := nearest(a.name))]
    base = module if modules[module].stem == "__init__" else module.rsplit(".", 1)[0]
    if node.level:
        parts = base.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        full = f"{base}.{node.module}" if node.module else base
    else:
        full = node.module or ""
    out = []
    for a in node.names:
        m = f"{full}.{a.name}" if f"{full}.{a.name}" in modules else nearest(full)
        if m:
            out.append(m)
    return out


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports: at import time and inside functions alike
    (``if TYPE_CHECKING:`` blocks, which never run, excepted)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()

        def walk(body: list[ast.stmt], module: str = module, edges: set[str] = edges) -> None:
            for node in body:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    edges.update(m for m in _imported(module, node, modules) if m != module)
                for name in ("body", "orelse", "finalbody", "handlers"):
                    sub = getattr(node, name, None)
                    if isinstance(sub, list):
                        walk(sub)

        walk(ast.parse(path.read_text(encoding="utf-8")).body)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_onnxcam_or_export() -> None:
    graph = import_graph()
    assert {"onnxcam.engine", "onnxcam.registry", "onnxcam.export.api"} <= set(graph)
    assert "onnxcam.perturbation" in graph["onnxcam.plan"]  # the graph sees relative imports
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_method_families_import_the_registry_not_each_other() -> None:
    graph = import_graph()
    assert "onnxcam.registry" in graph["onnxcam.methods"]
    assert "onnxcam.registry" in graph["onnxcam.perturbation"]
    assert "onnxcam.methods" not in graph["onnxcam.perturbation"]
    assert not graph["onnxcam.registry"] - {"onnxcam.errors"}
    assert not {"onnxcam.methods", "onnxcam.perturbation"} & graph["onnxcam.metrics"]
    assert not {"onnxcam.engine", "onnxcam.methods"} & graph["onnxcam.scoring"]


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout


def test_version_loads_neither_the_engine_nor_its_libraries() -> None:
    heavy = ("onnxcam.engine", "cv2", "onnxruntime", "torch", "onnx")
    code = f"import sys, onnxcam; assert onnxcam.__version__; print([m for m in {heavy} "
    code += "if m in sys.modules])"
    assert _run(code).strip() == "[]"


def test_the_package_face_loads_its_names_on_first_use() -> None:
    code = (
        "import sys, onnxcam\n"
        "assert 'onnxcam.engine' not in sys.modules\n"
        "from onnxcam import Explainer, METHODS, OnnxcamError\n"
        "assert Explainer.__module__ == 'onnxcam.engine' and 'scorecam' in METHODS\n"
        "assert set(onnxcam.__all__) <= set(dir(onnxcam))\n"
        "print(all(getattr(onnxcam, n) is not None for n in onnxcam.__all__))\n"
    )
    assert _run(code).strip() == "True"


def test_methods_registry_is_whole_and_ordered_whichever_family_comes_first() -> None:
    listing = "from onnxcam.methods import METHODS; print(','.join(METHODS))"
    first = _run(listing).strip()
    after = _run("import onnxcam.perturbation\n" + listing).strip()
    assert first == after
    names = first.split(",")
    assert names[:2] == ["cam", "gradcam"] and names[-1] == "occlusion" and "scorecam" in names


def test_plan_and_metrics_need_no_onnxruntime() -> None:
    code = (
        "import sys, onnxcam.plan, onnxcam.metrics, onnxcam.scoring\n"
        "print([m for m in ('onnxruntime', 'torch', 'onnx') if m in sys.modules])\n"
    )
    assert _run(code).strip() == "[]"
