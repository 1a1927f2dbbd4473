"""Rendering helpers shared by the CLI commands (rich tables of stats and page tables)."""

from __future__ import annotations

from typing import Iterable

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
