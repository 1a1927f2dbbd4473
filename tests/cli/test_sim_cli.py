"""``tdpsim run|compare|workloads|policies``."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sim"))

import pytest
import typer
from typer.testing import CliRunner

from tdpsim.cli import sim
from tdpsim.sim import PRESETS, builtin_names

from sim_small_workloads import SMALL_TD

app = typer.Typer()
sim.register(app)
runner = CliRunner()


def _wl(tmp_path, text=SMALL_TD, name="small.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("columns", [80, 200])
def test_workloads_one_per_line_folding_descriptions(columns):
    r = runner.invoke(app, ["workloads"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0
    lines = [ln.rstrip() for ln in r.output.splitlines() if ln.strip()]
    assert max(map(len, lines)) <= columns
    assert [ln.split()[0] for ln in lines if not ln.startswith(" ")] == builtin_names()
    if columns == 200:  # room for every description on its name's line
        assert len(lines) == len(builtin_names())


def test_policies_lists_every_preset_and_switches():
    r = runner.invoke(app, ["policies"])
    assert r.exit_code == 0
    for name in PRESETS:
        assert name in r.output
    assert "mirror_promotion=disallowed" in r.output


def test_compare_is_byte_identical(tmp_path):
    wl = _wl(tmp_path)
    args = ["compare", wl, "--policy", "upstream", "--policy", "no-huge", "--seed", "7"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == 0, a.output
    assert a.output == b.output
    assert "upstream" in a.output and "no-huge" in a.output


def test_malformed_workload_one_clear_error(tmp_path):
    bad = _wl(tmp_path, SMALL_TD.replace("accesses = 40", "accesses = -1"), "bad.toml")
    r = runner.invoke(app, ["run", bad])
    assert r.exit_code == 2
    out = r.output.strip()
    assert out.count("\n") == 0
    assert out == (f"error: {bad}: phases[5].accesses: expected an integer between 1 and "
                   "10000000, got -1")
    assert "Traceback" not in r.output


def test_unknown_preset(tmp_path):
    r = runner.invoke(app, ["run", _wl(tmp_path), "--policy", "fastest"])
    assert r.exit_code == 2 and "unknown policy preset 'fastest'" in r.output


def test_run_with_report_and_trace(tmp_path):
    out = tmp_path / "rep"
    trace = tmp_path / "t.txt"
    r = runner.invoke(app, ["run", _wl(tmp_path), "--report", str(out), "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    assert (out / "index.html").exists()
    text = trace.read_text()
    assert text.startswith("cpus=2\n")
    assert "kvm_tdp_mmu_spte_changed" in text and "CPU 0/KVM" in text


def test_bad_params_file(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[values]\nnope = 1\n")
    r = runner.invoke(app, ["run", _wl(tmp_path), "--params", str(p)])
    assert r.exit_code == 2 and f"{p}: values.nope: expected a known key (accept_tdcall_us, " in r.output
