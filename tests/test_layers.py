"""Imports point down: every module of the package imports only from lower layers, and no modules form a circle.

The layers, lowest first (docs/architecture.md draws them). Packages on one line are peers: none imports another.

    config, version
    utils, data, presets, objectives
    models
    inference
    training, evaluation, serving, curation, convert
    study
    cli

`training` sits beside evaluation, serving and curation, above `inference`: it saves the pipeline that inference loads,
and none of the others may call the trainer (the study, an experiment runner, is the one place that trains and
evaluates). The package root `openblip3o/__init__.py` re-exports the version and (lazily) `BLIP3oPipeline`: it is the
façade, not a layer.

Imports inside functions count (a lazy import is still a dependency); what the test reads is the source (`ast`), so
nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "openblip3o"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
LAYERS = (
    ("config", "version"),
    ("utils", "data", "presets", "objectives"),
    ("models",),
    ("inference",),
    ("training", "evaluation", "serving", "curation", "convert"),
    ("study",),
    ("cli",),
)
FACADE = (PACKAGE, f"{PACKAGE}.__main__")  # the package root and `python -m openblip3o` (which runs the cli)
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its source (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            subs = {f"{target}.{alias.name}" for alias in node.names} & known
            found |= subs or {target}
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = all_modules(root)
    return {name: imports_of(name, path, set(modules)) - {name} for name, path in modules.items()}


def layer_package(module: str) -> str | None:
    """The top-level package (or module) of the layer table `module` belongs to; None for the façade."""
    if module in FACADE:
        return None
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a package from the same layer or a higher one, as 'importer -> imported'."""
    wrong = []
    for importer, targets in graph.items():
        source = layer_package(importer)
        if source is None:
            continue
        for target in sorted(targets):
            destination = layer_package(target)
            if destination is None or destination == source:
                continue
            if source not in LAYER_OF or destination not in LAYER_OF:
                wrong.append(f"{importer} -> {target} (a package missing from the layer table)")
            elif LAYER_OF[destination] >= LAYER_OF[source]:
                wrong.append(f"{importer} -> {target} ({source} may not import {destination})")
    return wrong


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_every_package_has_a_layer():
    packages = {layer_package(name) for name in all_modules()} - {None}
    assert packages <= set(LAYER_OF), f"add {sorted(packages - set(LAYER_OF))} to LAYERS (and the architecture doc)"


def test_imports_point_down():
    assert upward_imports(import_graph()) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The two checks fail where they should: a data module importing evaluation, and two modules importing each
    other."""
    package = tmp_path / PACKAGE
    for folder in ("data", "evaluation", "models"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "data" / "rule_user.py").write_text("from ..evaluation.rules import evaluate\n")
    (package / "evaluation" / "rules.py").write_text("def evaluate():\n    pass\n")
    (package / "models" / "a.py").write_text("from . import b\n")
    (package / "models" / "b.py").write_text("def f():\n    from .a import g\n")
    graph = import_graph(package)
    assert upward_imports(graph) == [f"{PACKAGE}.data.rule_user -> {PACKAGE}.evaluation.rules "
                                     "(data may not import evaluation)"]
    assert circles(graph) == [[f"{PACKAGE}.models.a", f"{PACKAGE}.models.b"]]
