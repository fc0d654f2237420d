"""The package's shape (docs/CHOICES.md, "Layout"): one folder per stage of the data flow, imports pointing
down the layers only, no cycle, no module named after the standard library's, no function over 80 lines,
a crowded root refused. Read from the source (ast), nothing imported."""

import ast
import sys
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "workflow" / "rethinking"
# bottom to top: a module may import from its own layer and the layers below it, never from one above
LAYERS = [
    {"errors", "lazy", "files"},  # the error types; lazy imports; atomic files, artifacts, checkpoints
    {"models"},  # the model registry: knows no params
    {"plan"},  # torch-free planning: params, grid, corruption kinds, paths, settings, packs
    {"data"},  # sources, corruptions applied, preprocessing, the streamed loader
    {"engine"},  # training: run bookkeeping, the loop, packs, the streamed loop, metrics
    {"analysis"},  # tables and figures (their registry), the paper's numbers, jobs
    {"section5"},  # kernels, implicit bias, Theorem 1
    {"pipeline"},  # the stage declarations, dvc.yaml
    {"cli", "__main__", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_ROOT_MODULES = 6
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG).with_suffix("").parts)
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports (relative or absolute), as dotted names within the package."""
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1]  # a package's __init__ is named pkg.__init__ here: its package is pkg
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("rethinking"):
                target = node.module[len("rethinking") :].lstrip(".")
            else:
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}".lstrip("."))
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("rethinking.") :] for a in node.names if a.name.startswith("rethinking.")}
    return {f for f in found if f}


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_belongs_to_a_layer():
    assert {top(m) for m in modules()} <= set(LAYER), sorted({top(m) for m in modules()} - set(LAYER))


def test_imports_point_down_the_layers_only():
    wrong = []
    for name, path in modules().items():
        for target in imports(name, path):
            if top(target) in LAYER and LAYER[top(target)] > LAYER[top(name)]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_a_model_file_imports_nothing_from_the_planner():
    wrong = [
        f"{n} imports {t}"
        for n, p in modules().items()
        if top(n) == "models"
        for t in imports(n, p)
        if top(t) not in ("models", "errors", "lazy", "files")
    ]
    assert not wrong, wrong


def test_no_import_cycle():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for t in imports(name, path):
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__: re-exports
                targets.add(t)
        graph[name] = targets
    seen, stack, cycles = {}, [], []

    def visit(v):
        seen[v] = "open"
        stack.append(v)
        for w in graph[v]:
            if seen.get(w) == "open":
                cycles.append(stack[stack.index(w) :] + [w])
            elif w not in seen:
                visit(w)
        stack.pop()
        seen[v] = "done"

    for v in graph:
        if v not in seen:
            visit(v)
    assert not cycles, cycles


def test_no_module_is_named_after_a_standard_library_module():
    clash = sorted(m for m in modules() if m.split(".")[-1] in sys.stdlib_module_names)
    assert not clash, clash


def test_the_root_holds_few_modules_and_no_function_is_long():
    root = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= MAX_ROOT_MODULES, root
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG)}:{node.name} {lines} lines")
    assert not long, long


@pytest.mark.parametrize("bad", ["from ..engine.loop import train", "from rethinking.pipeline import stages"])
def test_the_layer_check_catches_an_upward_import(tmp_path, bad):
    """The check can fail: a planning module that imported the engine (or the pipeline) would be reported."""
    f = tmp_path / "x.py"
    f.write_text(bad + "\n")
    found = imports("plan.x", f)
    assert any(LAYER[top(t)] > LAYER["plan"] for t in found if top(t) in LAYER), found
