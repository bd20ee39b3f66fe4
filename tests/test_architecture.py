"""The package layout's dependency rules (issue 16, docs/architecture.md), read from the imports.

Each rule is checked on the import graph of ``engine/`` built with ``ast`` (module-level and
function-level imports alike), so a late ``import keras`` inside a function breaks it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"
STAGES = ("data", "integrity", "training", "evaluation", "explain", "report", "nightly", "tracking")
TOP_LEVEL = {"__init__", "cli", "pipeline", "manifest", "results", "provenance", "atomic", "errors", "paths", "failures",
             "sklearn_warnings", "progress", "interrupts", "registry", "workflows"}
HEAVY = ("tensorflow", "keras")


def module_name(path: Path, root: Path = ENGINE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(nodes, name: str, is_package: bool, members: bool) -> set[str]:
    """Absolute names of the modules the import statements among ``nodes`` name; with ``members``,
    ``from engine.x import y`` also counts ``engine.x.y`` (y may be a module)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            if members:
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def imports_of(path: Path, root: Path = ENGINE) -> set[str]:
    """Every module ``path`` imports, absolute names, wherever in the file the import stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return _imported(ast.walk(tree), module_name(path, root), path.name == "__init__.py", members=True)


def graph(root: Path = ENGINE) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imports_of(path, root) for name, path in modules.items()}


def reachable(start: str, edges: dict[str, set[str]]) -> dict[str, list[str]]:
    """Every module reachable from ``start`` with one import chain that reaches it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in edges.get(current, ()):
            for known in (target, target.rpartition(".")[0]):
                if known in edges and known not in chains:
                    chains[known] = chains[current] + [known]
                    todo.append(known)
            top = target.split(".")[0]
            if top in HEAVY and top not in chains:
                chains[top] = chains[current] + [target]
    return chains


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None



def resolved_imports(path: Path, root: Path = ENGINE) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import of an engine module in ``path``,
    function-level ones included: ``from engine.x import y`` is module ``engine.x.y`` when ``y`` is a
    submodule (name None), else ``engine.x`` with name ``y``; relative imports are made absolute."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.append((f"{base}.{alias.name}", None, node.lineno))
                elif base in modules:
                    found.append((base, alias.name, node.lineno))
    return found


def module_graph(root: Path = ENGINE) -> dict[str, set[str]]:
    """Engine module -> the engine modules it imports (a package's ``__init__`` is its own node)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: {target for target, _, _ in resolved_imports(path, root)} - {name}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) in ``edges``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def private_cross_imports(root: Path = ENGINE) -> list[str]:
    """``from engine.a import _b`` (and ``a._b`` through an imported engine module) where ``a`` is
    another module: what one module shares with another has a public name."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    bad = []
    for name, path in sorted(modules.items()):
        where = path.relative_to(root.parent)
        for target, imported, line in resolved_imports(path, root):
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                bad.append(f"{where}:{line}: from {target} import {imported}")
        bound = {}  # local name -> engine module it is bound to
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
                bound.update({a.name: a.name for a in node.names if not a.asname and a.name in modules})
            elif isinstance(node, ast.ImportFrom) and node.module:
                bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                              if f"{node.module}.{a.name}" in modules})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                target = bound.get(owner, owner if owner in modules else None)
                if target and target != name:
                    bad.append(f"{where}:{node.lineno}: {owner}.{node.attr}")
    return bad

EDGES = graph()


def test_the_tree_shows_the_stages():
    for stage in STAGES:
        init = ENGINE / stage / "__init__.py"
        assert init.is_file(), f"engine/{stage}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"engine/{stage}/__init__.py has no docstring"
    top = {p.stem for p in ENGINE.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules at the top of engine/ that belong in a stage: {sorted(top - TOP_LEVEL)}"


@pytest.mark.parametrize("module", sorted(m for m in EDGES if stage_of(m) == "report"))
def test_report_never_reaches_tensorflow_or_keras(module):
    chains = reachable(module, EDGES)
    for heavy in HEAVY:
        assert heavy not in chains, f"{module} imports {heavy} through " + " -> ".join(chains[heavy])


@pytest.mark.parametrize("module", sorted(m for m in EDGES if stage_of(m) in ("data", "integrity")))
def test_data_and_integrity_import_no_later_stage(module):
    later = {"training", "evaluation", "explain", "report", "nightly"}
    bad = sorted(i for i in EDGES[module] if stage_of(i) in later)
    assert not bad, f"{module} imports later stages: {bad}"


def test_only_cli_imports_click():
    users = sorted(m for m, imported in EDGES.items() if any(i.split(".")[0] == "click" for i in imported))
    assert users == ["engine.cli"]


def test_no_stage_imports_the_pipeline():
    users = sorted(m for m, imported in EDGES.items() if "engine.pipeline" in imported and m != "engine.cli")
    assert users == []


def module_level_imports(path: Path, root: Path = ENGINE) -> set[str]:
    """What ``path`` imports when it is imported: statements at the top of the module only, not
    those inside functions (nor under ``if TYPE_CHECKING``, which never runs)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return _imported(body, module_name(path, root), path.name == "__init__.py", members=False)


def test_the_manifest_imports_no_stage_at_module_level():
    """Parsing a manifest needs no stage: the names it checks come from the registries, imported
    inside the checks (issue 27)."""
    bad = sorted(i for i in module_level_imports(ENGINE / "manifest.py") if stage_of(i))
    assert not bad, f"engine/manifest.py imports stage modules at module level: {bad}"


def test_the_manifest_rule_catches_a_module_level_stage_import(tmp_path):
    copy = tmp_path / "engine"
    copy.mkdir()
    (copy / "manifest.py").write_text("import os\nfrom engine.nightly.gates import GATES\n\n"
                                      "def late():\n    from engine.explain.methods import METHODS\n")
    found = module_level_imports(copy / "manifest.py", copy)
    assert "engine.nightly.gates" in found and "engine.explain.methods" not in found


def test_importing_the_manifest_loads_no_stage_and_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, engine.manifest\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')\n"
            "                or (m.startswith('engine.') and m.split('.')[1] in %r))\n"
            "assert not loaded, loaded\n" % (STAGES,))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ENGINE.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_rules_catch_a_report_module_that_imports_keras(tmp_path):
    """The check itself can fail: a copy of engine/ with one report module importing keras."""
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "report" / "figures.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n\ndef _late():\n    import keras  # noqa\n")
    edges = graph(copy)
    assert "keras" in reachable("engine.report.figures", edges)
    # and indirectly: the report package's entry reaches it through figures
    assert "keras" in reachable("engine.report", edges)


@pytest.mark.parametrize("module", sorted(EDGES))
def test_every_module_imports(module):
    """The graph above is read from text; this checks every import in it resolves."""
    import importlib

    importlib.import_module(module)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "report"])
def test_stage_exports_resolve_and_importing_a_stage_loads_no_tensorflow(stage):
    import subprocess
    import sys

    code = (f"import sys, engine.{stage} as s\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'import pulled in TF'\n"
            "missing = [n for n in s.__all__ if getattr(s, n, None) is None]\n"
            "assert not missing, missing\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ENGINE.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_import_cycles():
    """No engine module reaches itself through imports, function-level ones included: shared code
    (file types and decoding guards in ``data.formats``, the record, the splits) sits below both users."""
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_name():
    bad = private_cross_imports()
    assert bad == [], f"{len(bad)} imports of another module's underscore name:\n" + "\n".join(bad)


def test_the_cycle_and_private_name_checks_can_fail(tmp_path):
    """Both checks on a small package: a late import that closes a cycle, a private name imported."""
    pkg = tmp_path / "engine"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from engine.data import b\n\ndef _hidden():\n    return b\n")
    (pkg / "data" / "b.py").write_text("def late():\n    from engine.data.a import _hidden\n    return _hidden\n")
    assert find_cycle(module_graph(pkg)) == ["engine.data.a", "engine.data.b", "engine.data.a"]
    assert private_cross_imports(pkg) == ["engine/data/b.py:2: from engine.data.a import _hidden"]


# ------------------------------------------------------------------------------ workflows (issue 27)

#: Libraries of stage logic (metrics, arrays, image files, rendering, models): a workflow calls
#: the stages that use them and imports none itself.
STAGE_LIBRARIES = ("numpy", "sklearn", "scipy", "pandas", "PIL", "jinja2", "weasyprint", "matplotlib", "seaborn",
                   "pydicom", "nibabel", "onnxruntime") + HEAVY


def workflow_problems(root: Path = ENGINE) -> list[str]:
    """Why the workflows are not "stages called in order": a stage's inner module imported instead
    of its package's public names, or a library of stage logic imported."""
    problems = []
    for path in sorted((root / "workflows").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target in sorted(_imported(ast.walk(tree), module_name(path, root), path.name == "__init__.py",
                                       members=False)):
            parts = target.split(".")
            if parts[0] == "engine" and len(parts) > 2 and parts[1] in STAGES:
                problems.append(f"{path.name} imports {target}: call the stage through engine.{parts[1]}")
            if parts[0] in STAGE_LIBRARIES:
                problems.append(f"{path.name} imports {target}: stage logic belongs in a stage")
    return problems


def test_the_run_workflow_is_short_and_only_calls_stages():
    lines = len((ENGINE / "workflows" / "run.py").read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"engine/workflows/run.py has {lines} lines; the workflow only orders stages"
    assert workflow_problems() == []


def test_the_workflow_rule_catches_an_inner_module_and_a_stage_library(tmp_path):
    (tmp_path / "engine" / "workflows").mkdir(parents=True)
    (tmp_path / "engine" / "workflows" / "run.py").write_text(
        "import numpy as np\n\ndef f():\n    from engine.training.train import predict\n    from engine import data\n")
    assert workflow_problems(tmp_path / "engine") == [
        "run.py imports engine.training.train: call the stage through engine.training",
        "run.py imports numpy: stage logic belongs in a stage"]
