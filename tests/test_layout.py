"""The code's layout, checked on its import graph (parsed, nothing imported): floors that only look
down, no import circle, few function-level project imports (each says why), and a plan that is pure
data (no torch, no Ray)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bidl_grid", "bidl_models", "compile", "bidl_runtime")
MAX_FUNCTION_LEVEL = 10

# floor of each module (by longest prefix): a module imports modules of its own floor or lower ones
FLOORS = {
    "bidl_grid": 0, "bidl_grid.cli": 99,              # versions and the command wrapper; console scripts on top
    "bidl_models": 10,
    "compile": 20,
    "bidl_runtime": 30, "bidl_runtime.errors": 30, "bidl_runtime.processes": 30,
    "bidl_runtime.channels": 31,
    "bidl_runtime.runtime_config": 32, "bidl_runtime.retry": 32,
    "bidl_runtime.plan": 33,
    "bidl_runtime.cluster": 34,
    "bidl_runtime.cell": 35,
    "bidl_runtime.driver": 36,
    "bidl_runtime.api": 37,
    "bidl_runtime.launch": 38,
    "bidl_runtime.run": 39, "bidl_runtime.plan.__main__": 39,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return FLOORS[best]


def imports() -> list[tuple[str, str, bool, int, str]]:
    """(importer, imported, inside a function, line, source line) for every project import outside
    ``if TYPE_CHECKING:``."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = module_name(path)
            base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            src = path.read_text()
            lines = src.splitlines()
            tree = ast.parse(src)
            parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        stem = base.split(".")[:len(base.split(".")) - node.level + 1]
                        target = ".".join(stem + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    # `from pkg import sub` imports the module pkg.sub when there is one
                    targets = [f"{target}.{a.name}" if (ROOT / Path(*f"{target}.{a.name}".split("."))).with_suffix(".py").exists()
                               or (ROOT / Path(*f"{target}.{a.name}".split(".")) / "__init__.py").exists() else target
                               for a in node.names]
                else:
                    continue
                chain, in_function, type_only = node, False, False
                while chain in parents:
                    chain = parents[chain]
                    in_function |= isinstance(chain, (ast.FunctionDef, ast.AsyncFunctionDef))
                    type_only |= isinstance(chain, ast.If) and "TYPE_CHECKING" in ast.unparse(chain.test)
                if type_only:
                    continue
                for t in targets:
                    if t.split(".")[0] in PACKAGES:
                        out.append((mod, t, in_function, node.lineno, lines[node.lineno - 1]))
    return out


def test_floors_only_look_down():
    up = [f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)}): line {n}"
          for a, b, _, n, _ in imports() if floor(b) > floor(a)]
    assert not up, "\n".join(up)


def test_no_import_circle():
    graph: dict[str, set[str]] = {}
    for a, b, _, _, _ in imports():
        if a != b:
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_function_level_project_imports_are_few_and_say_why():
    inner = sorted({(a, b, n, line) for a, b, fn, n, line in imports() if fn})
    statements = {(a, n) for a, _, n, _ in inner}
    assert len(statements) <= MAX_FUNCTION_LEVEL, "\n".join(f"{a}:{n} -> {b}" for a, b, n, _ in inner)
    silent = [f"{a}:{n} -> {b}" for a, b, n, line in inner if "#" not in line]
    assert not silent, "function-level imports without a comment saying why:\n" + "\n".join(silent)


def test_the_plan_and_the_runtime_settings_are_pure_data():
    """A plan (cells, edges, programs, slicing) and the runtime's settings load without torch or Ray,
    and so does ``bidl-run --help``."""
    code = ("import sys; import bidl_runtime.plan, bidl_runtime.plan.grid_plan, bidl_runtime.runtime_config, "
            "compile.program, bidl_models.specs, bidl_models.slicing, bidl_runtime.run, bidl_runtime.plan.__main__; "
            "print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", ["config", "layout", "Stream", "Temporal", "zero_state", "convert"])
def test_no_two_modules_or_top_level_names_of_one_name_in_different_roles(name):
    """Module file names and top-level classes / functions are not reused for different things."""
    modules = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob(f"{name}.py")]
    assert len(modules) <= 1, modules
    defined = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            defined += [module_name(path) for n in tree.body
                        if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
    assert len(defined) <= 1, defined
