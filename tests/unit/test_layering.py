"""The house rules of the layout, read from the imports (``ast``) on every run.

* stages never import each other (only ``stages.base``);
* what runs under systemd (service, stages, mqtt, features, models, storage,
  scoring) never imports the offline tools (training, importer) or the dev tools;
  ``scoring`` (labels and event metrics, shared by the live scores and the
  backtest) imports only the alarm rule and the config;
* the kernels import nothing of ``appliance`` but themselves;
* messages, config, timefmt, clock and alarm are leaves;
* no import cycle between modules (imports only for type checking excluded);
* ``appliance run`` loads none of the offline libraries (sklearn, scipy, pandas,
  skl2onnx, onnx, matplotlib): each is tens of MB of the service's RSS.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "appliance"
SERVICE_SIDE = ("service", "stages", "mqtt", "features", "models", "storage", "scoring")
OFFLINE = ("training", "importer", "devtools")
LEAVES = ("messages", "config", "timefmt", "clock", "alarm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, *, runtime_only: bool = False) -> set[str]:
    """The ``appliance`` modules a file imports, at any depth (function-level included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("appliance"))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # relative imports would slip past every rule here: the package uses none
            raise AssertionError(f"{path}:{node.lineno}: relative import; name the module")
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.startswith("appliance"):
            # ``from appliance.x import y`` may name a module y or a name in x
            for a in node.names:
                candidate = f"{node.module}.{a.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _files(*subdirs: str) -> list[Path]:
    if not subdirs:
        return sorted(PACKAGE.rglob("*.py"))
    return sorted(p for d in subdirs for p in (PACKAGE / d).rglob("*.py"))


def test_the_package_has_the_layout_the_readme_describes():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms >= {*SERVICE_SIDE, *OFFLINE}
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == {"cli", "config", "messages", "clock", "timefmt", "alarm", "console",
                     "logsetup"}


@pytest.mark.parametrize("path", _files("stages"), ids=lambda p: p.name)
def test_stages_never_import_each_other(path):
    others = {m for m in imports_of(path) if m.startswith("appliance.stages.")}
    assert others <= {"appliance.stages.base"}, f"{path.name} imports {others}"


@pytest.mark.parametrize("path", _files(*SERVICE_SIDE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_service_side_never_imports_offline_or_dev_tools(path):
    bad = {m for m in imports_of(path)
           if any(m == f"appliance.{o}" or m.startswith(f"appliance.{o}.") for o in OFFLINE)}
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


#: Libraries training, import and the dev tools use, and the service must not load.
OFFLINE_LIBRARIES = ("sklearn", "scipy", "pandas", "skl2onnx", "onnx", "matplotlib")


def test_the_serving_process_loads_no_offline_library():
    # what ``appliance run`` has imported by the time the service starts: the CLI
    # and the runner (in a fresh interpreter: this one has loaded everything)
    probe = ("import sys, appliance.cli, appliance.service.runner; "
             "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], check=True,
                            capture_output=True, text=True).stdout.split()
    assert "appliance.service.runner" in loaded
    bad = sorted({m for m in loaded if m.split(".")[0] in OFFLINE_LIBRARIES
                  or any(m.startswith(f"appliance.{o}.") for o in OFFLINE)})
    assert not bad, f"importing the service loads {bad}"


@pytest.mark.parametrize("module", ["labels", "metrics"])
def test_scoring_imports_only_the_alarm_rule_and_the_config(module):
    assert imports_of(PACKAGE / "scoring" / f"{module}.py") <= {"appliance.alarm",
                                                               "appliance.config"}


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_appliance(leaf):
    assert imports_of(PACKAGE / f"{leaf}.py") == set()


def test_kernels_know_nothing_of_appliance():
    own = re.compile(r"^\s*(?:from|c?import)\s+(appliance(?:\.\w+)*)", re.M)
    for path in sorted((REPO / "kernels").glob("*.p*")):
        used = {m for m in own.findall(path.read_text())
                if not m.startswith("appliance.kernels")}
        assert not used, f"{path.name} imports {used}"


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (a list of nodes, the first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt in graph and nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_no_import_cycles():
    graph = {_module_name(p): {m for m in imports_of(p, runtime_only=True) if m != "appliance"}
             for p in _files()}
    assert "appliance.training.backtest" in graph["appliance.training.backtest_report"]
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from appliance.training import fit\n")
    assert "appliance.training.fit" in imports_of(probe)


def test_the_checker_refuses_a_relative_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from .training import fit\n")
    with pytest.raises(AssertionError, match="relative import"):
        imports_of(probe)
