"""``tdpsim replay-trace FILE``: replay a KVM ftrace capture (``trace-cmd report`` or raw
ftrace text) against the TDP MMU's rules and report page stats and anomalies.

Exit status: 0 = replayed without anomalies, 1 = anomalies found, 2 = bad input (missing
file, unparsable line without ``--skip-bad``, bad option, unwritable output).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..model.policy import MIRROR_PROMOTION_CHOICES, Policy
from ..trace.parser import TraceParseError, TraceParser
from ..trace.records import RECORD_CLASSES, TraceRecord
from ..trace.replay import ReplayOptions, ReplayResult, replay_trace
from .kernel_opts import KERNEL_HELP, kernel_option, resolve_kernel, resolve_vendor, vendor_option

__all__ = ["register", "export_events", "write_report", "EXPORT_COLUMNS"]

_HEADER = ("lineno", "timestamp_ns", "comm", "pid", "cpu", "event")


def _event_columns() -> list[tuple[str, str]]:
    """(name, kind) of every event field, in first-seen order over the record classes."""
    seen: dict[str, str] = {}
    base = {f.name for f in dataclasses.fields(TraceRecord)}
    for cls in RECORD_CLASSES:
        for f in dataclasses.fields(cls):
            if f.name in base or f.name in seen:
                continue
            t = str(f.type)
            seen[f.name] = "str" if "str" in t else ("bool" if "bool" in t else "int")
    return list(seen.items())


#: Columns of ``--export``: the header, then the union of all events' fields (null when an
#: event has no such field).  SPTE-sized values are unsigned 64-bit.
EXPORT_COLUMNS: list[tuple[str, str]] = [
    ("lineno", "int"), ("timestamp_ns", "int"), ("comm", "str"), ("pid", "int"),
    ("cpu", "int"), ("event", "str"), *_event_columns(),
]
_SIGNED = {"lineno", "timestamp_ns", "pid", "cpu", "errno", "u", "level", "vcpu_id",
           "as_id", "root_count", "access", "gen", "kvm_gen", "spte_gen", "mmu_valid_gen",
           "mmu_used_pages", "role", "intr_info"}


def _rows(path: str, skip_bad: bool) -> Iterator[list[Any]]:
    names = [n for n, _ in EXPORT_COLUMNS[len(_HEADER):]]
    for rec in TraceParser(path, skip_bad=skip_bad):
        row: list[Any] = [rec.lineno, rec.timestamp_ns, rec.comm, rec.pid, rec.cpu, rec.EVENT]
        for n in names:
            row.append(getattr(rec, n, None))
        yield row


def export_events(path: str, out: str, *, skip_bad: bool = False) -> str:
    """Write the parsed events of ``path`` as a table (``.parquet`` or ``.csv``).
    Uses polars; CSV falls back to the ``csv`` module (streaming) without it.  Returns a
    note for the user (empty when nothing to say)."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"--export: {out}: use a .parquet or .csv file name")
    try:
        import polars as pl
    except ImportError:
        pl = None  # type: ignore[assignment]
    if pl is None:
        if suffix == ".parquet":
            raise ValueError("--export to .parquet needs polars (pip install polars); "
                             "use a .csv file name instead")
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([n for n, _ in EXPORT_COLUMNS])
            for row in _rows(path, skip_bad):
                w.writerow(["" if v is None else v for v in row])
        return "polars is not installed: wrote the CSV with the csv module"
    # polars holds the table in memory (one column per field); fine for exports, which
    # are meant for notebooks, but unlike the replay it grows with the trace.
    cols: list[list[Any]] = [[] for _ in EXPORT_COLUMNS]
    for row in _rows(path, skip_bad):
        for c, v in zip(cols, row):
            c.append(v)
    kinds = {"str": pl.Utf8, "bool": pl.Boolean}
    schema = {n: kinds.get(k, pl.Int64 if n in _SIGNED else pl.UInt64) for n, k in EXPORT_COLUMNS}
    df = pl.DataFrame({n: c for (n, _), c in zip(EXPORT_COLUMNS, cols)}, schema=schema)
    if suffix == ".parquet":
        df.write_parquet(out)
    else:
        df.write_csv(out)
    return ""


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def write_report(result: ReplayResult, out_dir: str) -> list[str]:
    """``summary.json``, ``pages.png`` (pages over time) and ``report.html`` in
    ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    data = result.to_dict()
    json_path = os.path.join(out_dir, "summary.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    png_path = os.path.join(out_dir, "pages.png")
    _plot_pages(result, png_path)
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(_html(result, os.path.basename(png_path)))
    return [html_path, json_path, png_path]


def _plot_pages(result: ReplayResult, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.lineno for s in result.samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    for attr, label in (("pages_4k", "pages_4k"), ("pages_2m", "pages_2m"),
                        ("pages_1g", "pages_1g")):
        ax.step(xs, [getattr(s, attr) for s in result.samples], where="post", label=label)
    ax.set_xlabel("trace line")
    ax.set_ylabel("mapped leaves (kvm_update_page_stats)")
    ax.set_title(f"Pages over time — {os.path.basename(result.filename)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _html(result: ReplayResult, png: str) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in result.counters.items())
    actors = "".join(
        "<tr><td>{}</td>{}</tr>".format(e(name), "".join(
            f"<td>{getattr(st, f)}</td>" for f in st.__slots__))
        for name, st in sorted(result.actors.items()))
    actor_head = "".join(f"<th>{f}</th>" for f in
                         ("task", "faults", "installs", "links", "splits", "split_failures",
                          "promotions", "leaf_zaps", "table_zaps", "tables_removed",
                          "fast_fixed"))
    anomalies = "".join(
        f"<li><b>{e(a.kind)}</b>: {e(a.message)}<pre>"
        + e("\n".join(str(r) for r in a.lines)) + "</pre></li>"
        for a in result.anomalies)
    counts = ", ".join(f"{e(k)}: {v}" for k, v in sorted(result.anomaly_counts.items())) or "none"
    p = result.pages
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tdpsim replay-trace: {e(result.filename)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 8px;border:1px solid #ccc}}
table{{border-collapse:collapse}} pre{{background:#f6f6f6;padding:4px;overflow-x:auto}}</style>
</head><body>
<h1>Replay of {e(result.filename)}</h1>
<p>{result.records} records; pages_4k/2m/1g at the end: {p[0]} / {p[1]} / {p[2]}
{'(learning mode: the trace starts after the VM was built, stats are deltas)' if result.learning else ''}</p>
<img src="{e(png)}" alt="pages over time">
<h2>Counters</h2><table>{rows}</table>
<h2>Per task</h2><table><tr>{actor_head}</tr>{actors}</table>
<h2>Anomalies ({result.anomaly_total})</h2><p>{counts}</p><ol>{anomalies}</ol>
</body></html>
"""


# ---------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------


def _print_summary(console: Console, result: ReplayResult, max_shown: int) -> None:
    t = Table(title=f"Replay of {result.filename}", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    p = result.pages
    t.add_row("records", str(result.records))
    if result.parse_stats is not None:
        t.add_row("lines", str(result.parse_stats.lines))
        if result.parse_stats.bad_lines:
            t.add_row("bad lines (skipped)", str(result.parse_stats.bad_lines))
        if result.parse_stats.lost_events:
            t.add_row("lost events", str(result.parse_stats.lost_events))
    t.add_row("pages_4k / 2m / 1g", f"{p[0]} / {p[1]} / {p[2]}")
    if result.learning:
        t.add_row("mode", "learning (stats are deltas)")
    for k in ("faults", "installs", "links", "splits", "split_failures", "promotions",
              "mirror_promotions", "leaf_zaps", "table_zaps", "tables_removed",
              "frozen_children", "hw_ad_updates", "reattributed"):
        t.add_row(k, str(result.counters[k]))
    t.add_row("roots", ", ".join(f"{r.kind}{'' if r.valid else ' (old)'}" for r in result.roots)
              or "—")
    t.add_row("anomalies", str(result.anomaly_total))
    console.print(t)
    if result.actors:
        a = Table(title="Per task", title_justify="left")
        cols = ("faults", "installs", "splits", "promotions", "leaf_zaps", "table_zaps")
        a.add_column("task")
        for c in cols:
            a.add_column(c, justify="right")
        for name, st in sorted(result.actors.items()):
            a.add_row(name, *(str(getattr(st, c)) for c in cols))
        console.print(a)
    if result.anomaly_total:
        console.print(f"[bold red]{result.anomaly_total} anomalies[/] "
                      + ", ".join(f"{k}: {v}" for k, v in sorted(result.anomaly_counts.items())))
        for an in result.anomalies[:max_shown]:
            console.print(f"[red]\\[{an.kind}][/] {an.message}", markup=True, highlight=False)
            for ref in an.lines:
                console.print(f"    {ref}", markup=False, highlight=False)
        if result.anomaly_total > max_shown:
            console.print(f"... {result.anomaly_total - max_shown} more (see --report)")


def _kernel_line(result: ReplayResult, kernel: Optional[str], vendor: Optional[str]) -> str:
    """Which kernel and vendor the replay assumed, and why."""
    given = [f"--{k}" for k, v in (("kernel", kernel), ("vendor", vendor)) if v is not None]
    line = f"replayed as kernel {result.kernel}, vendor {result.vendor}"
    if given:
        line += f" ({' and '.join(given)} given)"
    inf = result.inference
    if inf is not None:
        line += f"; {inf.describe()}"
        if inf.profile is None and kernel is None:
            line += f"; falling back to {result.kernel}"
    return line


def register(app: typer.Typer) -> None:
    """Add ``replay-trace`` to ``app``."""

    @app.command("replay-trace")
    def replay_trace_cmd(
        file: Path = typer.Argument(..., help="trace-cmd report / ftrace text file."),
        skip_bad: bool = typer.Option(False, "--skip-bad",
                                      help="Count and skip unparsable lines instead of stopping."),
        report: Optional[Path] = typer.Option(None, "--report", metavar="DIR",
                                              help="Write report.html, summary.json and "
                                                   "pages.png into DIR."),
        export: Optional[Path] = typer.Option(None, "--export", metavar="FILE",
                                              help="Write the parsed events as a table "
                                                   "(.parquet or .csv)."),
        mirror_promotion: str = typer.Option("disallowed", help="Policy of the traced kernel: "
                                             + ", ".join(MIRROR_PROMOTION_CHOICES) + "."),
        tdx_huge_page: bool = typer.Option(True, "--tdx-huge-page/--no-tdx-huge-page",
                                           help="HP-v3 (2M private pages) or UPSTREAM (4K)."),
        nx_huge_pages: bool = typer.Option(False, "--nx-huge-pages",
                                           help="kvm.nx_huge_pages was on."),
        max_level_direct: Optional[int] = typer.Option(None, min=1, max=3,
                                                       help="Largest direct leaf level "
                                                            "(default 3 = 1G)."),
        max_level_mirror: Optional[int] = typer.Option(None, min=1, max=3,
                                                       help="Largest mirror leaf level "
                                                            "(default from the policy)."),
        tdx: Optional[bool] = typer.Option(None, "--tdx/--no-tdx",
                                           help="The trace is (not) of a TD; default: infer."),
        sample_every: int = typer.Option(10_000, min=1, help="Records per pages sample."),
        show: int = typer.Option(20, min=0, help="Anomalies printed in full."),
        kernel: Optional[str] = kernel_option(KERNEL_HELP + " Default: inferred from the "
                                              "trace's SPTE values."),
        vendor: Optional[str] = vendor_option("Host vendor: intel (EPT SPTEs) or amd (NPT "
                                              "SPTEs). Default: inferred from the trace."),
    ) -> None:
        """Replay a KVM ftrace capture: rebuild each root's page tables from
        kvm_tdp_mmu_spte_changed, check every change, derive pages_4k/2m/1g over time and
        list anomalies with the lines that show them."""
        # soft_wrap: trace lines are long and must stay copy-pasteable (grep-able)
        console = Console(highlight=False, soft_wrap=True)
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        path = str(file)
        if not file.is_file():
            err.print(f"error: {path}: no such file", markup=False)
            raise typer.Exit(2)
        if mirror_promotion not in MIRROR_PROMOTION_CHOICES:
            err.print(f"error: --mirror-promotion must be one of "
                      f"{', '.join(MIRROR_PROMOTION_CHOICES)}", markup=False)
            raise typer.Exit(2)
        opts = ReplayOptions(
            policy=Policy(mirror_promotion=mirror_promotion,  # type: ignore[arg-type]
                          tdx_huge_page=tdx_huge_page, nx_huge_pages=nx_huge_pages),
            profile=None if kernel is None else resolve_kernel(kernel),
            vendor=resolve_vendor(vendor),
            max_level_direct=max_level_direct, max_level_mirror=max_level_mirror, tdx=tdx,
            sample_every=sample_every)
        try:
            result = replay_trace(path, opts, skip_bad=skip_bad)
        except TraceParseError as exc:
            err.print(f"error: {exc.filename}:{exc.lineno}: cannot parse {exc.event or ''} "
                      f"line (field '{exc.field}': {exc.reason})", markup=False)
            err.print(f"    {exc.line}", markup=False)
            err.print("(use --skip-bad to count and skip such lines)", markup=False)
            raise typer.Exit(2)
        except (OSError, UnicodeError) as exc:
            err.print(f"error: {path}: {exc}", markup=False)
            raise typer.Exit(2)
        console.print(_kernel_line(result, kernel, vendor), markup=False)
        _print_summary(console, result, show)
        if result.parse_stats is not None and result.parse_stats.bad_lines:
            console.print(f"{result.parse_stats.bad_lines} bad lines skipped, e.g.:")
            for b in result.parse_stats.bad_examples[:5]:
                console.print(f"    {b.filename}:{b.lineno}: field '{b.field}': {b.reason}: "
                              f"{b.line}", markup=False)
        try:
            if report is not None:
                for p in write_report(result, str(report)):
                    console.print(f"wrote {p}", markup=False)
            if export is not None:
                note = export_events(path, str(export), skip_bad=skip_bad)
                if note:
                    console.print(note, markup=False)
                console.print(f"wrote {export}", markup=False)
        except (OSError, ValueError) as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(2)
        except TraceParseError as exc:  # pragma: no cover - replay would have failed first
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(2)
        raise typer.Exit(1 if result.anomaly_total else 0)

