"""Reports: tables, JSON/CSV and the HTML page with plots."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sim"))

import csv
import json

from rich.console import Console

from tdpsim.report import compare_view, comparison_table, metric_rows, write_report
from tdpsim.sim import loads_workload, simulate

from sim_small_workloads import SMALL_TD


def _runs():
    wl = loads_workload(SMALL_TD, "small-td")
    return [simulate(wl, "upstream"), simulate(wl, "no-lpage-check-first")]


def _texts(html: str) -> str:
    return " ".join(html.split())


def test_table_and_files(tmp_path):
    runs = _runs()
    c = Console(width=140, record=True)
    c.print(comparison_table(runs))
    text = c.export_text()
    for label in ("pages_2m (end)", "RET_PF_FIXED", "accept-level write locks",
                  "SEAMCALL MEM.PAGE.AUG", "est. time: total", "4K accepts where 2M possible"):
        assert label in text
    index = write_report(runs, tmp_path / "rep")
    for f in ("index.html", "pages_2m.png", "differences.png", "cost.png",
              "metrics.json", "metrics.csv"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    data = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert [d["preset"] for d in data] == ["upstream", "no-lpage-check-first"]
    assert data[0]["totals"]["mappings_2m"] == runs[0].totals["mappings_2m"]
    rows = list(csv.DictReader((tmp_path / "rep" / "metrics.csv").open()))
    assert any(r["metric"] == "cost_us.total" for r in rows)
    page = _texts(index.read_text())
    assert "pages_2m.png" in page
    # Words first: the verdict, then only the differing rows, then the plots.
    assert page.index("the variants differ in") < page.index("What differs") \
        < page.index("<img")
    assert not (tmp_path / "rep" / "promotion.png").exists()  # 0 opportunities: no plot
    assert "why none: no fault met a mirror page table" in page


def test_compare_view_verdict_and_only_differing_rows():
    runs = _runs()
    for width in (80, 200):
        c = Console(width=width, record=True)
        c.print(compare_view(runs, width))
        text = c.export_text()
        assert text.splitlines()[1].startswith("the variants differ in 7 of 58 metrics")
        assert "accept-level write locks" in text and "RET_PF_FIXED" not in text
        assert max(len(line) for line in text.splitlines()) <= width
    same = [simulate(loads_workload(SMALL_TD, "small-td"), p) for p in ("hp3-seed", "hp3-rfc-v1")]
    c = Console(width=80, record=True)
    c.print(compare_view(same, 80))
    lines = c.export_text().splitlines()
    assert lines[1] == ("identical on every metric (%d): 0 promotion opportunities in this "
                        "workload" % len(metric_rows(same)))[:len(lines[1])]


def test_rows_differ_and_delta():
    runs = _runs()
    rows = {r.id: r for r in metric_rows(runs)}
    locks = rows["tdx.accept_level_write_locks"]
    assert locks.differs and locks.delta(1) == f"+{locks.values[1] - locks.values[0]}"
    assert not rows["pages_2m"].differs and rows["pages_2m"].delta(1) == ""
