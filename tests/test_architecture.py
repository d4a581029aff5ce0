"""The layer order of docs/architecture.md, as the import-linter contracts in pyproject.toml state it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [str(Path(sys.executable).parent / "lint-imports")]  # import-linter's command, installed beside pytest


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_project_keeps_its_layers_and_has_no_import_cycles():
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_contract_reads_the_real_import_graph(tmp_path):
    # The training loop builds models, so a contract putting models above mumu.train must break, naming an import.
    config = tmp_path / "inverted.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["mumu", "models"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "inverted"\ntype = "layers"\n'
                      'layers = ["models", "mumu.train"]\n')
    result = _lint("--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mumu.train is not allowed to import models" in result.stdout


PACKAGES = ("data_schemas", "mumu", "models", "tasks", "flows", "deployments")


def imports_inside_functions(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement inside a function of one source file."""
    tree = ast.parse(path.read_text())
    found = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found.add((node.lineno, node.names[0].name))
                elif isinstance(node, ast.ImportFrom):
                    found.add((node.lineno, node.module or "."))
    return sorted(found)


def has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import, or above the block of imports it belongs to."""
    i = lineno - 1
    if "#" in lines[i]:
        return True
    while i > 0:
        above = lines[i - 1].strip()
        if above.startswith("#"):
            return True
        if not above.startswith(("import ", "from ")) or "#" in above:
            return "#" in above and above.startswith(("import ", "from "))
        i -= 1
    return False


def test_every_import_inside_a_function_says_why():
    # Imports go at the top; one inside a function is for a heavy or optional dependency or a start-up path
    # that must stay light (the CLI answers --help without loading Prefect), and its comment says which.
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().split("\n")
            missing += [f"{path.relative_to(ROOT)}:{n} {module}" for n, module in imports_inside_functions(path)
                        if not has_reason(lines, n)]
    assert not missing, "imports inside functions without a reason:\n" + "\n".join(missing)


def test_the_reason_check_sees_a_bare_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    import json\n    return json\n\n\ndef g():\n    # optional\n    import csv\n"
                      "    from os import path\n    return csv, path\n")
    lines = source.read_text().split("\n")
    assert [(n, has_reason(lines, n)) for n, _ in imports_inside_functions(source)] == [(2, False), (8, True), (9, True)]
