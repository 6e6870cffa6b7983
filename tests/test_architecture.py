"""The shape of the code (docs/architecture.md), checked on the source: which package may import which, and
no import circles, lazy imports inside functions included (a lazy import must not be what dodges a circle), nor
imports under `if TYPE_CHECKING:` (an annotation must not be what dodges one either: a type both sides need
lives in a module of its own, as request/limits.py and engine/loaded.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("server", "sparsectrl_blender", "sparsectrl_passes")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, annotations: bool = False) -> set[str]:
    """Every module `path` imports (absolute names), anywhere in the file; under TYPE_CHECKING only with
    `annotations`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if not annotations and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def graph(annotations: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {
        name: {m for m in imports_of(path, annotations) if m in modules and m != name} for name, path in modules.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is no circle
                continue
            if state.get(nxt) == "open" and not node.startswith(nxt + "."):
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_circles():
    assert circles(graph()) == []


def test_no_circle_closed_only_by_annotations():
    """config.py <-> request/schema.py (through Limits) and engine/models.py <-> engine/performance.py (through
    LoadedModel) were such circles (#31)."""
    assert circles(graph(annotations=True)) == []


def test_the_server_and_the_add_on_share_only_the_pass_contract():
    edges = graph()
    for name, imported in edges.items():
        if name.startswith("server"):
            assert not any(m.startswith("sparsectrl_blender") for m in imported), name
        if name.startswith("sparsectrl_blender"):
            assert not any(m.startswith("server") for m in imported), name
        if name.startswith("sparsectrl_passes"):
            assert not any(m.startswith(("server", "sparsectrl_blender")) for m in imported), name
    assert "sparsectrl_passes.process" in edges["server.train.data"]


def test_the_add_ons_pure_modules_import_without_bpy():
    """core/ and the pass contract import in a Python where bpy cannot be imported at all."""
    import subprocess
    import sys

    pure = [
        module_name(p) for pkg in ("sparsectrl_blender/core", "sparsectrl_passes") for p in (ROOT / pkg).glob("*.py")
    ]
    script = "import sys; sys.modules['bpy'] = None\n" + "".join(f"import {name}\n" for name in sorted(pure))
    out = subprocess.run([sys.executable, "-c", script + "print('ok')"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    assert len(pure) >= 8


def test_bpy_is_imported_only_by_the_blender_side():
    for path in (ROOT / "sparsectrl_blender").rglob("*.py"):
        if "bpy" in {m.split(".")[0] for m in imports_of(path)}:
            relative = path.relative_to(ROOT / "sparsectrl_blender").as_posix()
            commands = {"__init__.py", "batch.py", "dataset.py", "bench_passes.py"}
            assert relative.startswith("blender/") or relative in commands, relative
