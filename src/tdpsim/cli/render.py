"""Rendering helpers shared by the CLI commands (rich tables of stats and page tables)."""

from __future__ import annotations

import sys
from typing import Iterable

from rich.console import Console
from rich.table import Table

from ..model.dump import LEVEL_NAMES, DumpRow


def dump_table(title: str, rows: Iterable[DumpRow]) -> Table:
    """A root's SPTEs: level, gfn range, raw value, decoded bits; indented by depth."""
    table = Table(title=title, title_justify="left")
    table.add_column("level")
    table.add_column("gfn range")
    table.add_column("spte", justify="right")
    table.add_column("decoded")
    for row in rows:
        indent = "  " * row.depth
        table.add_row(f"{indent}{LEVEL_NAMES[row.level]}",
                      f"{row.gfn_start:#x}-{row.gfn_end - 1:#x}", f"{row.spte:#018x}", row.decoded)
    return table


def make_console() -> Console:
    """A console for command output: the terminal's width, or 140 columns when piped so
    side-by-side tables stay readable in logs and CI."""
    return Console() if sys.stdout.isatty() else Console(width=140)
