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
