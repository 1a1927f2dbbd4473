"""Imports run one way: model ← engines ← report ← cli.  The model never imports an
engine, the CLI or anything that does I/O or randomness."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "tdpsim"
ENGINES = {"scenarios", "sim", "explore", "trace", "kvmcheck", "cost", "equiv"}
FORBIDDEN_IN_MODEL = {"random", "time", "threading", "os", "socket", "rich", "typer",
                      "matplotlib", "greenlet"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                rel = path.relative_to(SRC).parts[:-node.level]
                base = ".".join(("tdpsim", *rel, base)).rstrip(".")
            names.add(base)
    return names


def test_model_imports_nothing_above_it():
    for path in (SRC / "model").rglob("*.py"):
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "tdpsim":
                assert parts[1] == "model", f"{path.relative_to(SRC)} imports {name}"
            else:
                assert parts[0] not in FORBIDDEN_IN_MODEL, f"{path.relative_to(SRC)} imports {name}"


def test_engines_do_not_import_cli_or_report():
    for pkg in ENGINES:
        for path in (SRC / pkg).rglob("*.py") if (SRC / pkg).exists() else ():
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "tdpsim" and len(parts) > 1:
                    assert parts[1] not in {"cli", "report"}, f"{path.relative_to(SRC)} imports {name}"
