"""Rendering helpers shared by the CLI commands: rich tables that stay readable at 80
columns and use the width when there is more.

Side-by-side tables (one column per variant) switch layout when they do not fit: one small
two-column table per variant, stacked, instead of a table whose cells wrap a word per line.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..model.dump import LEVEL_NAMES, DumpRow

# rich draws "│ " before and " │" after cells: 3 columns per cell plus the last border.
_CELL_OVERHEAD = 3
# A side-by-side column may fold a long value (a SEAMCALL sequence) over lines, but gets at
# least this many columns: narrower, values break in the middle of every name.
_MIN_FOLD = 24


def fits(cells_per_column: Sequence[Iterable[str]], width: int) -> bool:
    """Whether columns holding these cells fit ``width``, the first (labels) unwrapped and
    the others folding values longer than ``_MIN_FOLD``."""
    need = 1
    for i, col in enumerate(cells_per_column):
        longest = max((len(c) for c in col), default=0)
        need += _CELL_OVERHEAD + (longest if i == 0 else min(longest, _MIN_FOLD))
    return need <= width


def side_by_side(title: str, labels: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]],
                 width: int):
    """Rows ``labels`` × one column per ``(name, values)``; stacked, one small table per
    column under the title, when the side-by-side table would not fit ``width``."""
    cells = [[*labels, ""]] + [[name, *values] for name, values in columns]
    if fits(cells, width):
        table = Table(title=title, title_justify="left")
        table.add_column("", no_wrap=True)
        for name, _ in columns:
            table.add_column(name, overflow="fold")
        for i, label in enumerate(labels):
            table.add_row(label, *(values[i] for _, values in columns))
        return table
    blocks = [Text(title)] if title else []
    for name, values in columns:
        t = Table(title=name, title_justify="left", show_header=False)
        t.add_column("", no_wrap=True)
        t.add_column("", overflow="fold")
        for label, value in zip(labels, values):
            t.add_row(label, value)
        blocks.append(t)
    return Group(*blocks)


def _breakable_status(failed: str) -> str:
    """"PROMOTE → TDX_X|RCX" → "PROMOTE → TDX_X (RCX)": lets a narrow column wrap before
    the operand instead of folding the status name."""
    name, bar, operand = failed.partition("|")
    return f"{name} ({operand})" if bar else name


def seed_table(outcomes, width: int):
    """The seed scenario's outcomes, one column per variant."""
    from ..scenarios.seed import run_length

    labels = ["root", "mirror_promotion", "page mapped at", "pages_4k / 2m / 1g",
              "tdp_mmu_pages", "TLB flush requests", "last fault SEAMCALLs",
              "failed SEAMCALLs", "S-EPT at the page", "VM bugged", "KVM_BUG_ONs in order",
              "WARN sites"]
    columns = [(o.variant, [
        o.root, o.policy, o.final_level, " / ".join(map(str, o.pages)), str(o.tdp_mmu_pages),
        str(o.tlb_flush_requests), " ".join(run_length(o.final_seamcalls)) or "—",
        "; ".join(map(_breakable_status, o.failed_seamcalls)) or "none", o.sept_entry,
        "yes" if o.vm_bugged else "no",
        ", ".join(b.split(":")[0].removeprefix("KVM_BUG_ON in ") for b in o.bugs) or "—",
        ", ".join(w.split(":")[0].removeprefix("WARN in ") for w in o.warnings) or "—"])
        for o in outcomes]
    return side_by_side("Seed scenario: a fault that may map 2M over an existing page table",
                        labels, columns, width)


def dump_table(title: str, rows: Iterable[DumpRow], width: int = 140) -> Table:
    """A root's SPTEs: level, gfn range, raw value, decoded bits; indented by depth.  The
    decoded bits fold (at word boundaries) into the width left by the fixed columns."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("level", no_wrap=True)
    table.add_column("gfn range", no_wrap=True)
    table.add_column("spte", justify="right", no_wrap=True)
    table.add_column("decoded", overflow="fold", min_width=min(24, max(8, width - 60)))
    for row in rows:
        indent = "  " * row.depth
        table.add_row(f"{indent}{LEVEL_NAMES[row.level]}",
                      f"{row.gfn_start:#x}-{row.gfn_end - 1:#x}", f"{row.spte:#018x}", row.decoded)
    return table
