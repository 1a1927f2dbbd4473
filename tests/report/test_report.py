"""Reports: tables, JSON/CSV and the HTML page with plots."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sim"))

import csv
import json

from rich.console import Console

from tdpsim.report import comparison_table, write_report
from tdpsim.sim import loads_workload, simulate

from sim_small_workloads import SMALL_TD


def _runs():
    wl = loads_workload(SMALL_TD, "small-td")
    return [simulate(wl, "upstream"), simulate(wl, "no-lpage-check-first")]


def test_table_and_files(tmp_path):
    runs = _runs()
    c = Console(width=140, record=True)
    c.print(comparison_table(runs))
    text = c.export_text()
    for label in ("pages_2m (end)", "RET_PF_FIXED", "accept-level write locks",
                  "SEAMCALL MEM.PAGE.AUG", "est. time: total", "4K accepts where 2M possible"):
        assert label in text
    index = write_report(runs, tmp_path / "rep")
    for f in ("index.html", "pages_2m.png", "seamcalls.png", "mmu_lock.png", "cost.png",
              "metrics.json", "metrics.csv"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    data = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert [d["preset"] for d in data] == ["upstream", "no-lpage-check-first"]
    assert data[0]["totals"]["mappings_2m"] == runs[0].totals["mappings_2m"]
    rows = list(csv.DictReader((tmp_path / "rep" / "metrics.csv").open()))
    assert any(r["metric"] == "cost_us.total" for r in rows)
    assert "pages_2m.png" in index.read_text()
