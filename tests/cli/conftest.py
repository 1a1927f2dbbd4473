"""The whole ``tdpsim`` application, as the script builds it, for the CLI tests."""

from __future__ import annotations

import pathlib
import sys

import pytest
from typer.testing import CliRunner

from tdpsim.cli.main import _register_engine_commands, app

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sim"))
_register_engine_commands()

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"
GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "trace" / "golden"


@pytest.fixture
def tdpsim():
    """``tdpsim(*args, columns=140, **invoke_kw)`` -> click Result (stdout/stderr apart)."""
    runner = CliRunner()

    def invoke(*args, columns: int = 140, env=None, **kw):
        return runner.invoke(app, [str(a) for a in args], prog_name="tdpsim",
                             env={"COLUMNS": str(columns), **(env or {})}, **kw)
    return invoke


def no_traceback(r) -> None:
    """The command ended by exiting, not by an exception escaping it."""
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exc_info
    assert "Traceback" not in r.output


def one_error_line(r, *needles: str) -> str:
    """Bad input: exit 2, nothing on stdout, one ``error:`` line on stderr holding
    ``needles``."""
    no_traceback(r)
    assert r.exit_code == 2, r.output
    assert r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
