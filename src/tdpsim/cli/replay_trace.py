"""``tdpsim replay-trace FILE``: replay a KVM ftrace capture (``trace-cmd report`` or raw
ftrace text) against the TDP MMU's rules and report page stats and anomalies.

Exit status: 0 = replayed without anomalies, 1 = anomalies found, 2 = bad input (missing,
empty or binary file, a binary ``trace.dat``, no KVM events at all, an unparsable line
without ``--skip-bad``, bad option, unwritable output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..userfile import CLIP, clip
from .common import JSON_HELP, check_writable, err_console, fail, note, out_console, print_json
from .kernel_opts import KERNEL_HELP, kernel_option, resolve_kernel, resolve_vendor, vendor_option

__all__ = ["register", "sniff"]

#: How much of the file is looked at to tell text from binary.
_SNIFF = 1 << 16
#: First bytes of trace-cmd's binary ``trace.dat`` (tracecmd/trace-output.c: "\x17\x08D"
#: then "tracing").
TRACE_DAT_MAGIC = b"\x17\x08Dtracing"


def sniff(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a text trace, or None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    if not head:
        return "the file is empty"
    if head.startswith(TRACE_DAT_MAGIC):
        return ("a binary trace-cmd trace.dat; convert it to text first: "
                f"trace-cmd report -i {path} > {path}.txt")
    nul = head.find(b"\0")
    if nul >= 0:
        return f"not a text trace: NUL byte at offset {nul}"
    text = head.decode("utf-8", errors="replace")
    odd = sum(ch == "\ufffd" or (ch < " " and ch not in "\t\n\r") for ch in text)
    if odd * 20 > len(text):  # > 5%: binary, not a trace with a few odd comm bytes
        return f"not a text trace: {odd} of the first {len(text)} characters are binary"
    return None


def _print_summary(console, result, max_shown: int) -> None:
    from rich.table import Table

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
        console.print(f"{result.anomaly_total} anomalies: "
                      + ", ".join(f"{k}: {v}" for k, v in sorted(result.anomaly_counts.items())))
        for an in result.anomalies[:max_shown]:
            console.print(f"[{an.kind}] {an.message}", markup=False)
            for ref in an.lines:
                console.print(f"    {clip(str(ref), 4 * CLIP)}", markup=False, soft_wrap=True)
        if result.anomaly_total > max_shown:
            console.print(f"... {result.anomaly_total - max_shown} more (see --report)")


def _kernel_line(result, kernel: Optional[str], vendor: Optional[str]) -> str:
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


def _progress(file: Path):
    """(context, callback(bytes_read)) of a stderr progress bar by bytes; both no-ops
    when stderr is not a terminal."""
    import sys
    from contextlib import nullcontext

    if not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    bar = Progress(TextColumn("replaying"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("replay", total=file.stat().st_size)
    return bar, lambda done: bar.update(task, completed=done)


def _parse_error(exc) -> None:
    err = err_console()
    err.print(f"error: {exc.filename}:{exc.lineno}: cannot parse {exc.event or ''} "
              f"line (field '{exc.field}': {clip(str(exc.reason))})")
    err.print(f"    {clip(exc.line.rstrip())}")
    err.print("(use --skip-bad to count and skip such lines)")
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``replay-trace`` to ``app``."""

    @app.command("replay-trace")
    def replay_trace_cmd(
        file: Path = typer.Argument(..., metavar="FILE",
                                    help="trace-cmd report / ftrace text file."),
        skip_bad: bool = typer.Option(False, "--skip-bad",
                                      help="Count and skip unparsable lines instead of stopping."),
        report: Optional[Path] = typer.Option(None, "--report", metavar="DIR",
                                              help="Write report.html, summary.json and "
                                                   "pages.png into DIR."),
        export: Optional[Path] = typer.Option(None, "--export", metavar="FILE",
                                              help="Write the parsed events as a table "
                                                   "(.parquet or .csv)."),
        mirror_promotion: str = typer.Option("disallowed", help="Policy of the traced "
                                             "kernel: disallowed, unpatched or seamcall."),
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
        json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Replay a KVM ftrace capture and flag anomalies.

        Rebuilds each root's page tables from kvm_tdp_mmu_spte_changed, checks every
        change, derives pages_4k/2m/1g over time and lists anomalies with the lines that
        show them."""
        from ..model.policy import MIRROR_PROMOTION_CHOICES, Policy
        from ..trace.parser import TraceParseError
        from ..trace.replay import ReplayOptions, replay_trace

        path = str(file)
        if not file.is_file():
            fail(f"{path}: no such file" if not file.exists() else f"{path}: not a file")
        if mirror_promotion not in MIRROR_PROMOTION_CHOICES:
            fail(f"--mirror-promotion must be one of {', '.join(MIRROR_PROMOTION_CHOICES)}")
        if report is not None:
            check_writable(report, "--report", directory=True)
        if export is not None:
            if export.suffix.lower() not in (".parquet", ".csv"):
                fail(f"--export {export}: use a .parquet or .csv file name")
            check_writable(export, "--export")
        try:
            why = sniff(file)
        except OSError as exc:
            fail(f"{path}: {exc.strerror or exc}")
        if why:
            fail(f"{path}: {why}")
        opts = ReplayOptions(
            policy=Policy(mirror_promotion=mirror_promotion,  # type: ignore[arg-type]
                          tdx_huge_page=tdx_huge_page, nx_huge_pages=nx_huge_pages),
            profile=None if kernel is None else resolve_kernel(kernel),
            vendor=resolve_vendor(vendor),
            max_level_direct=max_level_direct, max_level_mirror=max_level_mirror, tdx=tdx,
            sample_every=sample_every)
        bar, on_bytes = _progress(file)
        try:
            with bar:
                result = replay_trace(path, opts, skip_bad=skip_bad, progress=on_bytes)
        except TraceParseError as exc:
            _parse_error(exc)
        except OSError as exc:
            fail(f"{path}: {exc.strerror or exc}")
        stats = result.parse_stats
        if result.records == 0 and not (stats and stats.bad_lines):
            fail(f"{path}: no KVM events in {stats.lines if stats else 0} lines; expected "
                 "`trace-cmd report` text (or ftrace's trace file) of a capture with the "
                 "kvm and kvmmmu events enabled")
        if json_out:
            print_json(result.to_dict())
        else:
            console = out_console()
            console.print(_kernel_line(result, kernel, vendor), markup=False)
            _print_summary(console, result, show)
            if stats is not None and stats.bad_lines:
                console.print(f"{stats.bad_lines} bad lines skipped, e.g.:", markup=False)
                for b in stats.bad_examples[:5]:
                    console.print(f"    {b.filename}:{b.lineno}: field '{b.field}': "
                                  f"{clip(b.reason)}: {clip(b.line)}", markup=False,
                                  soft_wrap=True)  # trace lines stay whole: copy, grep
        _write_outputs(result, path, report, export, skip_bad)
        raise typer.Exit(1 if result.anomaly_total else 0)

    def _write_outputs(result, path: str, report: Optional[Path], export: Optional[Path],
                       skip_bad: bool) -> None:
        from ..trace.parser import TraceParseError
        from .trace_output import export_events, write_report

        try:
            if report is not None:
                for p in write_report(result, str(report)):
                    note(f"wrote {p}")
            if export is not None:
                msg = export_events(path, str(export), skip_bad=skip_bad)
                if msg:
                    note(msg)
                note(f"wrote {export}")
        except (OSError, ValueError, TraceParseError) as exc:
            fail(str(exc))
