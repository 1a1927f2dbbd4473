"""What ``tdpsim replay-trace`` writes besides its summary: ``--export`` (the parsed
events as Parquet or CSV) and ``--report`` (summary.json, pages.png, report.html).
Imported only when one of them is asked for (it pulls in polars / matplotlib)."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..trace.parser import TraceParser
from ..trace.records import RECORD_CLASSES, TraceRecord
from ..trace.replay import ReplayResult

__all__ = ["export_events", "write_report", "EXPORT_COLUMNS"]

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
