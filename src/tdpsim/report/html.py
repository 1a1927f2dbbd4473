"""HTML report: the comparison in words first (the verdict ``compare`` prints), then the
rows that differ, then plots of the differences; plus metrics.json and metrics.csv.

The page is a jinja2 template (``templates/report.html.j2``).  Plots are PNG files next to
``index.html``, drawn with matplotlib's Agg backend without timestamps, so a report is
reproducible.  Presets that agree on every metric are drawn once (labelled with all their
names) rather than as identical lines or bars over each other; legends sit outside the
axes; every bar carries its number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tdpsim.cost import COMPONENTS  # noqa: E402
from tdpsim.sim.runner import RunResult  # noqa: E402

from .export import write_csv, write_json  # noqa: E402
from .table import (Row, comparison_rows, identical_groups, metric_rows,  # noqa: E402
                    published_matches, verdict)

_SAVE = {"metadata": {"Software": None}}
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("tdpsim.report", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)
# Differing count rows drawn as small multiples, at most this many.
MAX_PANELS = 9
_PROMOTION = (("promotion opportunities", "promote.opportunities"),
              ("goal lowered (mirror)", "hugepage_adjust.lowered.mirror"),
              ("PROMOTE tried", "promote.tried"), ("PROMOTE done", "promote.done"),
              ("PROMOTE failed", "promote.failed."), ("VM bugged (KVM_BUG_ON)", "bugged"))


class _Columns:
    """The presets as drawn: one column per group of runs identical on every metric."""

    def __init__(self, results: Sequence[RunResult], rows: Sequence[Row]) -> None:
        self.groups = identical_groups(results, rows)
        self.index = [g[0] for g in self.groups]
        names = [r.preset for r in results]
        self.labels = [names[g[0]] + (" (= " + ", ".join(names[i] for i in g[1:]) + ")"
                                      if len(g) > 1 else "") for g in self.groups]
        self.short = [names[g[0]] for g in self.groups]


def _bar_labels(ax: Any, bars: Any, fmt: str = "{:g}") -> None:
    for b in bars:
        w = b.get_width()
        ax.annotate(fmt.format(w), (w, b.get_y() + b.get_height() / 2), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)


def _save(fig: Any, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, **_SAVE)
    plt.close(fig)


def _promotion_value(r: RunResult, key: str) -> int:
    # One KVM_BUG_ON fans out into hundreds (one per child of the table): count runs.
    if key == "bugged":
        return int(r.totals.get("bugs", 0) > 0)
    if key.endswith("."):
        return sum(v for k, v in r.totals.items() if k.startswith(key))
    return r.totals.get(key, 0)


def _plot_promotion(results: Sequence[RunResult], cols: _Columns, out: Path) -> bool:
    """What each variant did with the faults that met a mirror page table."""
    vals = [[_promotion_value(results[i], key) for _, key in _PROMOTION] for i in cols.index]
    if not any(any(v) for v in vals):
        return False
    n = len(cols.index)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * n * len(_PROMOTION) / 2))
    h = 0.8 / n
    for j, (label, v) in enumerate(zip(cols.labels, vals)):
        ys = [k + j * h for k in range(len(_PROMOTION))]
        _bar_labels(ax, ax.barh(ys, v, h, label=label))
    ax.set_yticks([k + 0.4 - h / 2 for k in range(len(_PROMOTION))],
                  [label for label, _ in _PROMOTION])
    ax.invert_yaxis()
    ax.set_xlabel("faults / SEAMCALLs (count); VM bugged: 1 = yes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("faults whose goal met a mirror page table, and what each variant did")
    ax.margins(x=0.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    _save(fig, out)
    return True


def _panel_rows(rows: Sequence[Row]) -> list[Row]:
    """Differing integer rows, the largest relative spread first."""
    def spread(r: Row) -> float:
        lo, hi = min(r.values), max(r.values)
        return (hi - lo) / max(abs(hi), 1)
    ints = [r for r in rows if r.differs
            and all(isinstance(v, int) and not isinstance(v, bool) for v in r.values)]
    return sorted(ints, key=lambda r: (-spread(r), r.label))[:MAX_PANELS]


def _plot_differences(rows: Sequence[Row], cols: _Columns, out: Path) -> bool:
    panels = _panel_rows(rows)
    if not panels:
        return False
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 0.6 + (0.35 * len(cols.index)
                                                                      + 0.9) * nrow),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, r in zip(axes.flat, panels):
        v = [r.values[i] for i in cols.index]
        bars = ax.barh(range(len(v)), v, color=[colors[k % len(colors)] for k in range(len(v))])
        _bar_labels(ax, bars)
        ax.set_yticks(range(len(v)), cols.short, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(r.label, fontsize=9)
        ax.set_xlabel("count", fontsize=8)
        ax.margins(x=0.25)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _save(fig, out)
    return True


def _plot_pages(results: Sequence[RunResult], cols: _Columns, out: Path) -> None:
    """2M mappings over virtual time: one line per distinct curve."""
    curves: dict[tuple, list[str]] = {}
    for r in results:
        key = tuple((s.time_us, s.pages_2m) for s in r.samples)
        curves.setdefault(key, []).append(r.preset)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for key, names in curves.items():
        label = "every preset" if len(curves) == 1 else " = ".join(names)
        ax.step([t / 1e3 for t, _ in key], [p for _, p in key], where="post", label=label)
    ax.set_xlabel("virtual time (ms)")
    ax.set_ylabel("2M leaves mapped (pages_2m)")
    ax.set_title("2M mappings over time")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    _save(fig, out)


def _plot_cost(results: Sequence[RunResult], cols: _Columns, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.5 * len(cols.index)))
    left = [0.0] * len(cols.index)
    ys = list(range(len(cols.index)))
    for comp in COMPONENTS:
        vals = [sum(c.get(comp, 0.0) for c in results[i].cost.values()) / 1e3
                for i in cols.index]
        ax.barh(ys, vals, left=left, label=comp)
        left = [a + b for a, b in zip(left, vals)]
    for y, total in zip(ys, left):
        ax.annotate(f"{total:.1f} ms", (total, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(ys, cols.short)
    ax.invert_yaxis()
    ax.set_xlabel("estimated time (ms, cost model)")
    ax.set_title("estimated cost by component")
    ax.margins(x=0.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    _save(fig, out)


def _cells(r: Row, cols: _Columns) -> list[dict[str, str]]:
    out = []
    for i in cols.index:
        d = r.delta(i) if i else ""
        cls = "" if not d else ("up" if d.startswith("+") else "down")
        out.append({"text": r.cells[i] + (f" ({d})" if d else ""), "cls": cls})
    return out


def write_report(results: Sequence[RunResult], outdir: Path,
                 published: Optional[Mapping[str, str]] = None) -> Path:
    """Write index.html, plots, metrics.json and metrics.csv into ``outdir``."""
    published = published or {}
    outdir.mkdir(parents=True, exist_ok=True)
    rows = metric_rows(results)
    cols = _Columns(results, rows)
    figures = []
    if results[0].vm["kind"] == "td" and _plot_promotion(results, cols,
                                                         outdir / "promotion.png"):
        figures.append({"file": "promotion.png", "alt": "promotion opportunities",
                        "caption": "Faults whose goal level met a present mirror page table "
                        "(a promotion the fault path could try), and what each variant did "
                        "with them: lowered the goal (the seed patch), tried PAGE.PROMOTE, or "
                        "hit KVM_BUG_ON."})
    if _plot_differences(rows, cols, outdir / "differences.png"):
        figures.append({"file": "differences.png", "alt": "metrics that differ",
                        "caption": f"The counts that differ most between the presets (up to "
                        f"{MAX_PANELS}), one panel each."})
    _plot_pages(results, cols, outdir / "pages_2m.png")
    figures.append({"file": "pages_2m.png", "alt": "2M mappings over time",
                    "caption": "2M leaves mapped over virtual time; presets with the same "
                    "curve share one line."})
    _plot_cost(results, cols, outdir / "cost.png")
    figures.append({"file": "cost.png", "alt": "estimated cost",
                    "caption": "Estimated time per component (cost model, mostly "
                    "assumptions); one bar per group of identical presets."})
    write_json(results, outdir / "metrics.json")
    write_csv(results, outdir / "metrics.csv")
    r0 = results[0]
    diff_rows = [{"label": r.label, "cells": _cells(r, cols),
                  "published": published.get(r.id, "")} for r in rows if r.differs]
    page = _ENV.get_template("report.html.j2").render(
        title=r0.workload, workload=r0.workload,
        vm=f"{r0.vm['kind'].upper()}, {r0.vm['vcpus']} vCPUs, {r0.vm['memory_gib']:g} GiB",
        seed=r0.seed, cost_params=r0.cost_params, presets=[r.preset for r in results],
        verdict=verdict(results, rows), same_published=published_matches(rows, published),
        diff_rows=diff_rows, nrows=len(rows), columns=cols.short,
        merged="; ".join(label for label in cols.labels if "(=" in label),
        has_published=any(d["published"] for d in diff_rows), figures=figures,
        all_rows=comparison_rows(results))
    (outdir / "index.html").write_text(page)
    return outdir / "index.html"
