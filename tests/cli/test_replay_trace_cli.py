"""``tdpsim replay-trace`` through a local Typer app (cli/main.py is not needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tdpsim.cli.replay_trace import register
from tdpsim.cli.trace_output import EXPORT_COLUMNS, export_events

GOLDEN = Path(__file__).parents[1] / "trace" / "golden"


@pytest.fixture
def run():
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "replay-trace" as a sub-command
        pass

    runner = CliRunner()

    def _run(*args: str):
        return runner.invoke(app, ["replay-trace", *map(str, args)])
    return _run


def test_good_trace_summary(run):
    r = run(GOLDEN / "good_direct_promotion.txt")
    assert r.exit_code == 0, r.output
    assert "pages_4k / 2m / 1g" in r.output and "0 / 1 / 0" in r.output
    assert "promotions" in r.output and "vcpu0" in r.output


def test_bad_trace_lists_anomaly_with_line(run):
    r = run(GOLDEN / "bad_old_spte_mismatch.txt")
    assert r.exit_code == 1
    assert "old_spte_mismatch" in r.output
    assert "bad_old_spte_mismatch.txt:20:" in r.output
    assert "old_spte 8600002000999b77" in r.output


def test_policy_options(run):
    r = run(GOLDEN / "bad_mirror_level.txt")
    assert r.exit_code == 0, r.output
    r = run(GOLDEN / "bad_mirror_level.txt", "--no-tdx-huge-page")
    assert r.exit_code == 1 and "level_too_high" in r.output
    r = run(GOLDEN / "bad_mirror_promotion.txt", "--mirror-promotion", "seamcall")
    assert r.exit_code == 0, r.output
    r = run(GOLDEN / "bad_mirror_promotion.txt", "--mirror-promotion", "sometimes")
    assert r.exit_code == 2 and "must be one of" in r.output


def test_missing_file(run, tmp_path):
    r = run(tmp_path / "nope.txt")
    assert r.exit_code == 2 and "no such file" in r.output
    assert "Traceback" not in r.output


def _bad_file(tmp_path: Path) -> Path:
    text = (GOLDEN / "good_split.txt").read_text().splitlines()
    i = next(n for n, line in enumerate(text)
             if "kvm_mmu_split_huge_page:" in line and not line.startswith("#"))
    text[i] = text[i].replace("errno 0", "errno zero")
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(text) + "\n")
    return p, i + 1


def test_bad_line_is_a_clear_error_not_a_traceback(run, tmp_path):
    p, lineno = _bad_file(tmp_path)
    r = run(p)
    assert r.exit_code == 2
    assert f"{p}:{lineno}:" in r.output and "errno zero" in r.output
    assert "--skip-bad" in r.output and "Traceback" not in r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


def test_skip_bad_counts_and_reports(run, tmp_path):
    p, lineno = _bad_file(tmp_path)
    r = run(p, "--skip-bad")
    # the split event is gone, so the leaf → table change has no split event: still no
    # anomaly (split events are only required once the trace has shown one)
    assert "1 bad lines skipped" in r.output and f":{lineno}:" in r.output
    assert "parse_error" in r.output and r.exit_code == 1


def test_report_writes_html_png_json(run, tmp_path):
    out = tmp_path / "rep"
    r = run(GOLDEN / "bad_mirror_promotion.txt", "--report", out)
    assert r.exit_code == 1, r.output
    html = (out / "report.html").read_text()
    assert "mirror_promotion" in html and "pages.png" in html
    assert (out / "pages.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "summary.json").read_text())
    assert data["pages"] == {"4k": 0, "2m": 1, "1g": 0}
    assert data["anomalies"][0]["kind"] == "mirror_promotion"
    assert data["anomalies"][0]["lines"][0]["line"] == 23


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export(run, tmp_path, suffix):
    pl = pytest.importorskip("polars")
    out = tmp_path / f"events{suffix}"
    r = run(GOLDEN / "good_split.txt", "--export", out)
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out)
    assert df.columns == [n for n, _ in EXPORT_COLUMNS]
    changed = df.filter(pl.col("event") == "kvm_tdp_mmu_spte_changed")
    assert changed.height == 6
    if suffix == ".parquet":
        assert changed["old_spte"].max() > (1 << 63)  # unsigned 64-bit SPTEs survive


def test_export_bad_suffix(run, tmp_path):
    r = run(GOLDEN / "good_split.txt", "--export", tmp_path / "x.xlsx")
    assert r.exit_code == 2 and ".parquet or .csv" in r.output


def test_export_csv_without_polars(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "polars":
            raise ImportError("no polars")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", fake)
    out = tmp_path / "e.csv"
    note = export_events(str(GOLDEN / "good_split.txt"), str(out))
    assert "csv module" in note
    assert out.read_text().splitlines()[0].startswith("lineno,timestamp_ns,comm")
    with pytest.raises(ValueError, match="needs polars"):
        export_events(str(GOLDEN / "good_split.txt"), str(tmp_path / "e.parquet"))
