"""``tdpsim equiv``: the seed patch's variants compared fault by fault."""

import typer
from typer.testing import CliRunner

from tdpsim.cli import equiv as equiv_cli
from tdpsim.equiv import Targets, check, first_difference, workload_units
from tdpsim.sim import builtin_workload

app = typer.Typer()
equiv_cli.register(app)
app.command("noop")(lambda: None)  # a second command keeps `equiv` a subcommand
runner = CliRunner()


def _units(preset):
    return workload_units(builtin_workload("seed-selftest"), preset)


def test_patched_variants_decide_the_same():
    seed = _units("hp3-seed")
    assert sum(1 for u in seed if u[0] == "fault") == 36
    # v3 as posted consults disallowed_hugepage_adjust on direct roots too, but no fault
    # decides differently: the streams are identical.
    for other in ("hp3-rfc-v1", "hp3-v3-posted"):
        assert first_difference(seed, _units(other)) is None


def test_no_patch_differs_at_the_first_touch_before_accept():
    seed, bug = _units("hp3-seed"), _units("hp3-no-patch")
    i = first_difference(seed, bug)
    assert seed[i][0] == "fault" and seed[i][1][1] == 0x1005
    assert ("lowered", 2, 1) in seed[i][2]
    assert bug[i][0] == "fault"
    assert any(ev[0] == "KVM_BUG_ON" and ev[1] == "set_external_spte_present"
               for ev in bug[i][2])


def test_promoting_kvm_issues_block_track_promote_unblock():
    seed, prom = _units("hp3-seed"), _units("hp3-promoting")
    i = first_difference(seed, prom)
    leaves = [ev[1] for ev in prom[i][2] if ev[0] == "seamcall"]
    assert leaves[:4] == ["TDH.MEM.RANGE.BLOCK", "TDH.MEM.TRACK", "TDH.MEM.PAGE.PROMOTE",
                          "TDH.MEM.RANGE.UNBLOCK"]


def test_scenario_divergence_is_shrunk():
    [v] = check(["hp3-seed", "hp3-no-patch"], Targets([], ["seed_2vcpu"]), budget=12)
    assert not v.equivalent and v.interleavings >= 12
    d = v.divergences[0]
    assert d.target == "scenario seed_2vcpu"
    threads = [line for line in d.minimal if line.strip().startswith("thread")]
    assert len(threads) == 1 and threads[0].count("fault(") == 1
    assert d.minimal[-1].strip() == "schedule: default (no preemption)"


def test_cli_equivalent_pair():
    r = runner.invoke(app, ["equiv", "hp3-seed", "hp3-rfc-v1", "-w", "seed-selftest",
                            "-s", "seed_2vcpu", "--budget", "8", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("hp3-seed ≡ hp3-rfc-v1: equivalent on ")
    assert "faults, " in r.output and "interleavings" in r.output


def test_cli_differing_pair_shows_both_streams():
    r = runner.invoke(app, ["equiv", "upstream", "unpatched", "-w", "seed-selftest",
                            "-s", "seed_2vcpu", "--budget", "4", "-j", "1"])
    assert r.exit_code == 1
    assert "upstream ≢ unpatched" in r.output
    assert "disallowed_hugepage_adjust at 2M: goal_level → 4K" in r.output
    assert "KVM_BUG_ON in set_external_spte_present" in r.output


def test_cli_bad_preset():
    r = runner.invoke(app, ["equiv", "hp3-seed", "nope"])
    assert r.exit_code == 2 and "unknown policy preset 'nope'" in r.output
