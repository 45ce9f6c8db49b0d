"""The house: no import cycles in src/mmmo or benchmarks/, modules and functions of a readable size in both, no
private names in tests and benchmarks, benchmark modules that change nothing when imported, and `mmmo.search` the
function whatever was imported before it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
BENCHMARKS = REPO / "benchmarks"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((SRC / "mmmo").rglob("*.py"))}
# The benchmarks package: its modules import each other as `benchmarks.x` (run from the repository root).
BENCHMARK_MODULES: dict[str, Path] = {module_name(p, REPO): p for p in sorted(BENCHMARKS.glob("*.py"))}
PACKAGES = {"mmmo": MODULES, "benchmarks": BENCHMARK_MODULES}


def _is_package(name: str, modules: dict[str, Path] = MODULES) -> bool:
    return modules[name].name == "__init__.py"


def _known(name: str, modules: dict[str, Path] = MODULES) -> str | None:
    """`name` if it is one of `modules`, else the longest prefix of it that is one (a name imported from it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return None


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path] = MODULES) -> str:
    if not node.level:
        return node.module or ""
    package = importer if _is_package(importer, modules) else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _calls_import_module(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
                isinstance(f, ast.Name) and f.id == "import_module"
            ):
                return True
    return False


def imported_modules(name: str, modules: dict[str, Path] = MODULES) -> set[str]:
    """The modules of `modules` (one package's: mmmo's by default) that `name` imports anywhere in its file: at
    module level, in functions, under TYPE_CHECKING.

    `from mmmo.x import y` imports mmmo.x, and mmmo.x.y too when that is a module; `from mmmo import y` imports the
    package mmmo itself. A module that calls importlib.import_module imports every module it names in a string.
    """
    root = name.split(".")[0]
    tree = ast.parse(modules[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root and (target := _known(alias.name, modules)):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, modules)
            if source.split(".")[0] != root:
                continue
            if target := _known(source, modules):
                found.add(target)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
    if _calls_import_module(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                found.add(node.value)
    found.discard(name)
    return found


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    return {name: imported_modules(name, modules) for name in modules}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module: the shortest path back to it, found breadth first."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_the_import_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "mmmo.spec.schema" in graph["mmmo.optimizer.space"]  # module level
    assert "mmmo.merge.recipes.recipe" in graph["mmmo.results.export"]  # inside a function and under TYPE_CHECKING
    assert {"mmmo", "mmmo.api"} <= graph["mmmo.cli"]  # `from mmmo import api`: the package and the module
    assert {"mmmo.api", "mmmo.results.summary", "mmmo.spec.schema"} <= graph["mmmo"]  # importlib.import_module by name
    benchmarks = import_graph(BENCHMARK_MODULES)
    assert {"benchmarks.problems", "benchmarks.strategies", "benchmarks.report"} <= benchmarks["benchmarks.search_quality"]
    assert {"benchmarks.stage_runs", "benchmarks.environment"} <= benchmarks["benchmarks.stages"]


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    (component,) = strongly_connected(graph)
    assert component == ["a", "b", "c"]
    assert a_cycle(graph, component) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package: str) -> None:
    graph = import_graph(PACKAGES[package])
    cycles = [" -> ".join(a_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_and_functions_stay_readable(package: str) -> None:
    too_long: list[str] = []
    for name, path in PACKAGES[package].items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for fn in _functions(ast.parse(text)):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                too_long.append(f"{name}.{fn.name} (line {fn.lineno}): {length} lines (at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


# ------------------------------------------------------------------------------------ private names


def _is_private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


class _PrivateUses(ast.NodeVisitor):
    """Private mmmo names a file reaches: imported by name, read off an mmmo module, or named in a string."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}  # local name -> mmmo module it is bound to
        self.found: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "mmmo":
                if alias.asname:
                    self.modules[alias.asname] = alias.name
                else:
                    self.modules["mmmo"] = "mmmo"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = node.module or ""
        if source.split(".")[0] != "mmmo":
            return
        for alias in node.names:
            if _is_private(alias.name):
                self.found.append(f"line {node.lineno}: from {source} import {alias.name}")
            if f"{source}.{alias.name}" in MODULES:
                self.modules[alias.asname or alias.name] = f"{source}.{alias.name}"

    def _module_of(self, node: ast.expr) -> str | None:
        """The mmmo module an expression names (`mod`, `mmmo.x.y`), if any."""
        if isinstance(node, ast.Name):
            return self.modules.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._module_of(node.value)
            if base is not None and f"{base}.{node.attr}" in MODULES:
                return f"{base}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        module = self._module_of(node.value)
        if module is not None and _is_private(node.attr):
            self.found.append(f"line {node.lineno}: {module}.{node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # setattr / getattr / monkeypatch.setattr(module, "_name", ...)
        if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            module = self._module_of(node.args[0])
            if module is not None and _is_private(node.args[1].value):
                self.found.append(f"line {node.lineno}: {module}.{node.args[1].value}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # "mmmo.x._name", as monkeypatch.setattr takes it
        if isinstance(node.value, str) and node.value.startswith("mmmo.") and " " not in node.value:
            parts = node.value.split(".")
            if any(_is_private(p) for p in parts) and _known(node.value) is not None:
                self.found.append(f"line {node.lineno}: {node.value!r}")


def private_uses(path: Path) -> list[str]:
    visitor = _PrivateUses()
    visitor.visit(ast.parse(path.read_text()))
    return visitor.found


def test_tests_and_benchmarks_use_no_private_mmmo_names() -> None:
    files = sorted([*(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")])
    found = [f"{p.relative_to(REPO)} {use}" for p in files for use in private_uses(p)]
    assert not found, "private names of mmmo used outside it (make them public, or test through public ones):\n" + (
        "\n".join(found)
    )


def test_the_private_name_check_sees_each_way_in(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import mmmo\n"
        "import mmmo.evaluation.evaluator as ev\n"
        "from mmmo import demo as D\n"
        "from mmmo.evaluation.evaluator import _hidden\n"
        "from mmmo.optimizer import strategies\n"
        "D._save\n"
        "strategies.acquire\n"
        "mmmo.evaluation.evaluator._thing\n"
        "ev.__name__\n"
        "monkeypatch.setattr(ev, '_x', 1)\n"
        "monkeypatch.setattr('mmmo.evaluation.ray_pool._import_ray', 1)\n"
    )
    assert [use.split(":")[0] for use in private_uses(sample)] == [
        "line 4", "line 6", "line 8", "line 10", "line 11",
    ]


# ------------------------------------------------------------------------------------ mmmo.search, the function


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_mmmo_search_is_the_function_whatever_was_imported_first() -> None:
    """A fresh interpreter, the optimiser's modules imported first: `mmmo.search` is `mmmo.api.search`, and no
    module or package of mmmo is named `search` (a subpackage of that name would shadow the function)."""
    code = (
        "import mmmo.optimizer.loop\n"
        "import mmmo\n"
        "import mmmo.api\n"
        "assert mmmo.search is mmmo.api.search, mmmo.search\n"
        "from mmmo import search\n"
        "assert search is mmmo.api.search\n"
        "import mmmo.optimizer.loop as loop\n"
        "assert loop.run_loop and mmmo.optimizer.strategies.propose_batch\n"
        "assert mmmo.search is mmmo.api.search\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert not [name for name in MODULES if name.split(".")[-1] == "search"]


def test_importing_the_benchmarks_changes_neither_the_environment_nor_the_import_path() -> None:
    """Every benchmark module imported in a fresh interpreter without the variables a benchmark script sets in its
    main() (benchmarks.environment.benchmark_environment): they stay unset, and sys.path stays as it was."""
    watched = ["HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
               "MPLBACKEND"]
    env = {k: v for k, v in os.environ.items() if k not in watched}
    code = (
        "import importlib, os, sys\n"
        "path = list(sys.path)\n"
        f"for name in {sorted(BENCHMARK_MODULES)!r}: importlib.import_module(name)\n"
        f"print(sorted(k for k in {watched!r} if k in os.environ), sys.path == path)\n"
        "from benchmarks.environment import benchmark_environment\n"
        "benchmark_environment()\n"
        f"print(sorted(k for k in {watched!r} if k in os.environ))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["[] True", str(sorted(watched))]


def test_importing_mmmo_imports_nothing_heavy() -> None:
    result = _run_python("import sys, mmmo\nprint(sorted(m for m in ('torch', 'botorch') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
