"""The house's boundaries: data flows capture → preprocess → transport → server, over `contract`.

Each package's every module is imported in a fresh interpreter and the loaded modules are inspected, so
a new upward or sideways import anywhere (even a lazy one at module level) fails here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

OURS = ("contract", "capture", "preprocess", "transport", "server", "evaluation", "vitalcam")
# What each package may import of ours (besides itself).
ALLOWED = {
    "contract": set(),
    "capture": {"contract"},
    "preprocess": {"contract", "capture"},
    "transport": {"contract"},
    "server": {"contract"},
    "evaluation": {"contract", "capture", "preprocess", "server"},
    "vitalcam": {"contract", "capture", "preprocess", "transport", "server", "evaluation"},
}

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_packages(package: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, package], capture_output=True, text=True, check=True, timeout=300
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1])) & set(OURS)


@pytest.mark.parametrize("package", OURS)
def test_a_package_imports_only_what_lies_below_it(package: str) -> None:
    unexpected = loaded_packages(package) - ALLOWED[package] - {package}
    assert not unexpected, f"{package} imports {sorted(unexpected)}"


ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of ours in every module, lazy ones inside functions included: {module: {module}}.

    `from pkg import name` counts as an import of `pkg.name` when that is a module, else of `pkg`.
    """
    paths = {module_name(p): p for package in OURS for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in paths else node.module)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def test_no_module_imports_upward_even_lazily() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]] | {module.split(".")[0]}
    )
    assert not wrong, "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_contract_needs_no_vision_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import contract.tensor, contract.vitals, contract.limits, sys; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'cv2', 'mediapipe', 'numba', 'av', 'httpx'}))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.strip() == "[]"
