"""The built-in commands of the tdpsim CLI."""

from typer.testing import CliRunner

from tdpsim.cli.main import _register_engine_commands, app

runner = CliRunner()
_register_engine_commands()


def test_seed_command_prints_all_variants():
    result = runner.invoke(app, ["seed", "--dump"])
    assert result.exit_code == 0, result.output
    for text in ("mirror-patched", "mirror-unpatched", "mirror-seamcall", "set_external_spte_present",
                 "TDX_EPT_INVALID_PROMOTE_CONDITIONS", "512 / 0 / 0", "0 / 1 / 0"):
        assert text in result.output
    again = runner.invoke(app, ["seed", "--dump"])
    assert again.output == result.output  # deterministic


def test_fault_command_dumps_tables():
    result = runner.invoke(app, ["fault", "0x400", "0x600:x", "--nx-huge-pages"])
    assert result.exit_code == 0, result.output
    assert "fault gfn 0x400 (w) → RET_PF_FIXED" in result.output
    assert "pages_4k 1  pages_2m 1" in result.output
    assert "direct root l4" in result.output


def test_fault_command_on_a_td():
    result = runner.invoke(app, ["fault", "0x400", "0x401:s", "--tdx"])
    assert result.exit_code == 0, result.output
    assert "mirror root" in result.output and "fault gfn 0x401 (s) → -EFAULT" in result.output


def test_fault_command_rejects_bad_input():
    result = runner.invoke(app, ["fault", "zz"])
    assert result.exit_code == 2
    assert "the gfn must be a number" in result.output
    result = runner.invoke(app, ["fault", "0x1:q"])
    assert result.exit_code == 2 and "unknown flag" in result.output
