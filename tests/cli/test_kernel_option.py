"""``--kernel`` (and ``--vendor`` / ``--root-level``) on every command that runs the model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tdpsim.cli.main import _register_engine_commands, app

runner = CliRunner()
_register_engine_commands()

VALID = "valid: 6.1, 6.12, 6.18+hp-v3"


@pytest.mark.parametrize("argv", [
    ["fault", "0x400"],
    ["seed"],
    ["run", "plain-vm-boot", "--no-progress"],
    ["compare", "plain-vm-boot", "--no-progress"],
    ["explore", "seed-promotion-race", "-n", "1"],
    ["replay-trace", __file__],
    ["kvm-check", "--recorded", "."],
])
def test_unknown_kernel_is_one_line_and_exit_2(argv):
    result = runner.invoke(app, argv + ["--kernel", "5.4"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown kernel profile '5.4'" in lines[0] and VALID in lines[0]


def test_unknown_vendor():
    result = runner.invoke(app, ["fault", "0x400", "--vendor", "arm"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --vendor: unknown vendor 'arm'; valid: intel, amd"


def test_fault_on_a_6_1_npt_5_level_host():
    result = runner.invoke(app, ["fault", "0x10", "--kernel", "6.1", "--vendor", "amd",
                                 "--root-level", "5"], env={"COLUMNS": "140"})  # no folding
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "direct root l5" in out
    # NPT leaf bits (p/w/u, A, D, host/MMU-writable); 6.1 leaves no BIT(63) in tables.
    assert "pwu PS A D HW MW" in out and "SVE" not in out and "IPAT" not in out


def test_a_td_needs_a_kernel_with_tdx():
    result = runner.invoke(app, ["fault", "0x400", "--tdx", "--kernel", "6.12"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: kernel 6.12 has no KVM_X86_TDX_VM (TDX host "
                                     "support landed in v6.16)")
    result = runner.invoke(app, ["run", "td-boot", "--kernel", "6.1", "--no-progress"])
    assert result.exit_code == 2
    assert "is a TD, but kernel 6.1 has no KVM_X86_TDX_VM" in result.stderr


def test_seed_under_a_kernel_without_tdx_runs_the_direct_root_only():
    result = runner.invoke(app, ["seed", "--kernel", "6.12"])
    assert result.exit_code == 0, result.stderr
    assert "kernel 6.12: no TDX, direct root only" in result.stdout
    assert "mirror-patched" not in result.stdout and "direct" in result.stdout


def test_kvm_check_recorded_under_another_kernel(tmp_path):
    """--kernel runs the model of a recorded oracle row as another generation: the 6.1
    capture of a zap-collapsible row no longer matches under 6.18's in-place recovery."""
    import json
    import shutil
    from pathlib import Path
    src = Path(__file__).parents[1] / "kvmcheck" / "data" / "oracle" / "6.1.0-50-amd64"
    shutil.copy(src / "facts.json", tmp_path / "facts.json")
    rows = [r for r in (src / "rows.jsonl").read_text().splitlines()
            if json.loads(r)["name"] == "dirty-log-disable-again"]
    (tmp_path / "rows.jsonl").write_text(rows[0] + "\n")
    (tmp_path / "traces").mkdir()
    shutil.copy(src / "traces" / "dirty-log-disable-again.trace.xz", tmp_path / "traces")
    same = runner.invoke(app, ["kvm-check", "--recorded", str(tmp_path), "--json"])
    other = runner.invoke(app, ["kvm-check", "--recorded", str(tmp_path), "--json",
                                "--kernel", "6.18+hp-v3"])
    assert same.exit_code == 0, same.stdout + same.stderr
    assert other.exit_code == 1, other.stdout + other.stderr
