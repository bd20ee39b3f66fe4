"""The package layout's dependency rules (issue 16, docs/architecture.md), read from the imports.

Each rule is checked on the import graph of ``engine/`` built with ``ast`` (module-level and
function-level imports alike), so a late ``import keras`` inside a function breaks it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"
STAGES = ("data", "integrity", "training", "evaluation", "explain", "report", "nightly")
TOP_LEVEL = {"__init__", "cli", "pipeline", "manifest", "results", "provenance", "atomic", "errors", "paths",
             "sklearn_warnings", "progress", "interrupts", "registry"}
HEAVY = ("tensorflow", "keras")


def module_name(path: Path, root: Path = ENGINE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ENGINE) -> set[str]:
    """Every module ``path`` imports, absolute names, wherever in the file the import stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from engine.x import module`
    return found


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
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
    return found


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
