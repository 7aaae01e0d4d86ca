"""Package layout rules that code review alone lets drift: no library module imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Absolute dotted names a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_demo_publisher_or_benchmark_imports_the_cli():
    files = [p for p in (REPO / "sgdfuse_ros").rglob("*.py") if p.name != "cli.py"]
    files += sorted((REPO / "benchmarks").glob("*.py"))
    offenders = [str(p.relative_to(REPO)) for p in files if "sgdfuse_ros.cli" in _imported_modules(p)]
    assert offenders == []
    # The check itself sees such an import: the console script is the one allowed user of the CLI.
    assert "sgdfuse_ros.cli" in _imported_modules(REPO / "scripts" / "sgdfuse")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_in_the_package():
    """Every import between the package's modules, lazy (in-function) ones included, forms a DAG.

    Imports under ``if TYPE_CHECKING:`` are annotations only and are left out.
    """
    modules = {_module_name(p): p for p in (REPO / "sgdfuse_ros").rglob("*.py")}

    def edges(name: str, path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        type_checking = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        imported = set()
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                imported.add(module)
                imported.update(f"{module}.{alias.name}" for alias in node.names)
        return {m for m in imported if m in modules and m != name}

    graph = {name: edges(name, path) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    # The check sees a cycle where there is one: priors.sam imports priors.base.
    assert "sgdfuse_ros.priors.base" in graph["sgdfuse_ros.priors.sam"]


def test_no_module_over_600_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "sgdfuse_ros").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 600} == {}
