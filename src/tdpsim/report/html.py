"""HTML report with matplotlib plots: pages_2m over time per policy, SEAMCALL and
mmu_lock breakdowns, estimated cost per phase; plus metrics.json and metrics.csv.

Plots are PNG files next to ``index.html``; matplotlib runs with the Agg backend and
without timestamps in the output, so a report is reproducible.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tdpsim.cost import COMPONENTS  # noqa: E402
from tdpsim.sim.runner import RunResult  # noqa: E402

from .export import write_csv, write_json  # noqa: E402
from .table import comparison_rows  # noqa: E402

_SAVE = {"metadata": {"Software": None}}


def _plot_pages(results: Sequence[RunResult], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        ax.step([s.time_us / 1e3 for s in r.samples], [s.pages_2m for s in r.samples],
                where="post", label=r.preset)
    ax.set_xlabel("virtual time (ms)")
    ax.set_ylabel("pages_2m")
    ax.set_title("2M mappings over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, **_SAVE)
    plt.close(fig)


def _bars(results: Sequence[RunResult], keys: list[str], labels: list[str], title: str,
          out: Path, log: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.9), 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        vals = [r.totals.get(k, 0) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=r.preset)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], labels, rotation=30,
                  ha="right")
    if log:
        ax.set_yscale("symlog")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, **_SAVE)
    plt.close(fig)


def _plot_cost(results: Sequence[RunResult], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(results)
    x = list(range(len(results)))
    for comp in COMPONENTS:
        vals = [sum(c.get(comp, 0.0) for c in r.cost.values()) / 1e3 for r in results]
        ax.bar(x, vals, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(x, [r.preset for r in results])
    ax.set_ylabel("estimated ms")
    ax.set_title("estimated cost by component")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, **_SAVE)
    plt.close(fig)


def write_report(results: Sequence[RunResult], outdir: Path) -> Path:
    """Write index.html, plots, metrics.json and metrics.csv into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    _plot_pages(results, outdir / "pages_2m.png")
    leaves = sorted({k[len("seamcall."):] for r in results for k in r.totals
                     if k.startswith("seamcall.") and ".TDX_" not in k})
    plots = ["pages_2m.png"]
    if leaves:
        _bars(results, [f"seamcall.{leaf}" for leaf in leaves], leaves, "SEAMCALLs by leaf",
              outdir / "seamcalls.png", log=True)
        plots.append("seamcalls.png")
    _bars(results, ["mmu_lock.read", "mmu_lock.write", "tdx.accept_level_write_locks"],
          ["read", "write", "accept-level write"], "mmu_lock acquisitions",
          outdir / "mmu_lock.png", log=True)
    plots.append("mmu_lock.png")
    _plot_cost(results, outdir / "cost.png")
    plots.append("cost.png")
    write_json(results, outdir / "metrics.json")
    write_csv(results, outdir / "metrics.csv")
    r0 = results[0]
    rows = "\n".join(
        "<tr><th>" + html.escape(label) + "</th>" +
        "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for label, cells in comparison_rows(results))
    head = "".join(f"<th>{html.escape(r.preset)}</th>" for r in results)
    imgs = "\n".join(f'<p><img src="{p}" alt="{p}"></p>' for p in plots)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tdpsim: {html.escape(r0.workload)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:right}}
th:first-child{{text-align:left}} table{{border-collapse:collapse}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>{html.escape(r0.workload)}</h1>
<p>{html.escape(r0.vm['kind'].upper())}, {r0.vm['vcpus']} vCPUs, {r0.vm['memory_gib']:g} GiB,
seed {r0.seed}, cost parameters {html.escape(r0.cost_params)}.
Estimated times come from the cost model (docs/cost-model.md); counts are exact.</p>
<table><tr><th>metric</th>{head}</tr>
{rows}
</table>
{imgs}
<p>Raw data: <a href="metrics.json">metrics.json</a>, <a href="metrics.csv">metrics.csv</a></p>
</body></html>
"""
    (outdir / "index.html").write_text(page)
    return outdir / "index.html"
