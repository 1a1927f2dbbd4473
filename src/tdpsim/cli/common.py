"""Conventions every ``tdpsim`` command follows, in one place.

* Results go to stdout, errors and progress to stderr; progress only when stderr is a
  terminal.
* Bad input is one line on stderr, ``error: FILE:LINE: field: what`` where known, exit
  status 2, never a traceback; text quoted from the input is clipped (:func:`clip`).
* Output paths are checked before any work starts (:func:`check_writable`), so a long run
  never ends in an unwritable path.
* ``--json`` prints the command's result as one JSON document on stdout instead of tables.
* Tables use the terminal's width; when stdout is not a terminal, ``$COLUMNS`` or 140.

This module imports nothing heavy: it runs for ``tdpsim --help`` too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console

from ..userfile import CLIP, clip

#: Exit status of bad input (command-line usage, files), as click uses for usage errors.
EXIT_BAD_INPUT = 2
#: Exit status after Ctrl-C, as a shell reports a process killed by SIGINT.
EXIT_INTERRUPTED = 130
#: Width of piped output when ``$COLUMNS`` is not set: wide enough for side-by-side tables
#: in logs and CI, and still deterministic.
PIPE_WIDTH = 140

JSON_HELP = "Print the result as JSON on stdout instead of tables."


def _width() -> Optional[int]:
    if sys.stdout.isatty():
        return None  # rich asks the terminal
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def out_console(**kw: Any) -> Console:
    """The console of a command's results (stdout)."""
    kw.setdefault("highlight", False)
    return Console(width=_width(), **kw)


def err_console() -> Console:
    """The console of errors, notes and progress (stderr); never interprets markup in
    what it is given by default, so ``pip install 'tdpsim[ray]'`` prints as written."""
    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def note(msg: str) -> None:
    """A line for the user that is not the result: where a file went, what was resumed."""
    typer.echo(msg, err=True)


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One unwrapped ``error:`` line on stderr, then exit (2: bad input)."""
    first = msg.splitlines()[0] if msg else msg
    typer.echo(f"error: {clip(first, 4 * CLIP)}", err=True)
    raise typer.Exit(code)


def require_pure_model(command: str) -> None:
    """Commands built on the explorer refuse the compiled model (``tdpsim.accel``)."""
    from .. import accel
    try:
        accel.require_pure(command)
    except accel.AccelError as e:
        fail(str(e))


def print_json(doc: Any) -> None:
    """The ``--json`` result: deterministic (sorted keys), one document, newline-ended."""
    typer.echo(json.dumps(doc, indent=1, sort_keys=True, default=str))


def print_catalog(names: Any, describe: Any, errors: Any, key: str, json_out: bool) -> None:
    """List built-ins (workloads, scenarios) one per line, or as JSON; a broken built-in
    is listed as invalid rather than hiding the others."""
    items = []
    for name in names:
        try:
            items.append((name, describe(name)))
        except errors as e:
            items.append((name, f"(invalid: {e})"))
    if json_out:
        print_json([{"name": n, key: d} for n, d in items])
        return
    from ..report.table import workloads_table
    out_console().print(workloads_table(items))


def check_writable(path: Path, option: str, *, directory: bool = False) -> None:
    """Fail now (exit 2) if ``path`` could not be written once the work is done.  Probes
    for real (``os.access`` says yes to root even on a read-only file system): an existing
    file is opened for appending, otherwise a temporary file is made and removed in the
    nearest existing ancestor directory.  Leaves the file system as it was."""
    p = Path(path)
    if p.is_dir() != directory and p.exists():
        fail(f"{option} {p}: " + ("exists and is not a directory" if directory
                                  else "is a directory; give a file name"))
    try:
        if p.exists() and not directory:
            with open(p, "ab"):
                pass
            return
        parent = p if p.exists() else p.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            fail(f"{option} {p}: cannot create it: {parent} is not a directory")
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        fail(f"{option} {p}: cannot write there: {e.strerror or e}")
