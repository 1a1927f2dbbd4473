"""Issue 14: the explorer sees RCU, TLB, lock-edge and guest-in-the-race bugs, schedules of
scenario files replay by path + content hash, the shrinker is 1-minimal on normalised
failures, the report is truthful."""

from __future__ import annotations

import shutil

import pytest
import typer
from typer.testing import CliRunner

from tdpsim.cli.explore import register
from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore.engine import Failure
from tdpsim.explore.runner import run_one
from tdpsim.explore.scenario import builtin_dir
from tdpsim.explore.schedule import Schedule, ScheduleError, load_schedule, replay
from tdpsim.explore.shrink import shrink, signature
from tdpsim.explore.strategies import ReplayScheduler
from tdpsim.model import locking, sched as S
from tdpsim.model.kvm import Kvm


def _first_failure(name, scheduler, params=None):
    rep = explore(load_scenario(name, params or {}), scheduler)
    assert rep.failure is not None
    return rep.failure.failure, rep


@pytest.mark.parametrize("name", ["tlb_zap", "tlb_notifier", "tlb_dirty_log"])
def test_guest_tlb_scenarios_clean_under_exhaustive_dpor(name):
    sched = DporScheduler(max_executions=5000)
    rep = explore(load_scenario(name), sched)
    assert rep.failure is None and sched.exhausted


def test_missing_flush_is_a_tlb_failure(monkeypatch):
    monkeypatch.setattr(Kvm, "kvm_flush_remote_tlbs", lambda self, *a: None)
    f, rep = _first_failure("tlb_zap", DporScheduler(max_executions=50))
    assert f.kind == "TLB" and f.thread == "zap" and rep.failure_index == 0
    assert "zap_leafs(start=0x0, end=0x400) returned while vCPU 0 (in guest mode)" in f.message


def test_early_grace_period_is_a_use_after_free(monkeypatch):
    # call_rcu that ignores the readers: the callback frees the table under a walker.
    monkeypatch.setattr(locking.Rcu, "call_rcu", lambda self, cb: cb())
    f, _ = _first_failure("nx_recovery", DporScheduler(max_executions=500))
    assert f.kind in ("USE_AFTER_FREE", "RCU")
    assert "tdp_mmu_free_sp_rcu_callback" in f.message or "grace period" in f.message


def test_unlock_has_a_point_on_each_side():
    sc = load_scenario("tlb_zap")
    rep = ReplayScheduler([], sc.thread_names)
    rep.new_execution()
    res = run_one(sc, rep, record=True)
    kinds = [(s.kind, s.key) for s in res.trace]
    i = kinds.index((S.LOCK_RELEASE, ("lock", "mmu_lock")))
    assert kinds[i + 1] == (S.LOCK_RELEASED, ("lock", "mmu_lock", "after"))
    assert (S.BARRIER, ("vcpu", 1, "requests")) in kinds  # smp_mb after IN_GUEST_MODE


def test_td_guest_races_kick_without_double_exit():
    # accept vs punch_hole (the two-thread report): no double refcount drop, no
    # kick that misses an entering vCPU.
    rep = explore(load_scenario("td_accept_punch"), PctScheduler(seed=0, depth=3,
                                                                executions=60))
    assert rep.failure is None and rep.executions == 60


def test_signature_normalises_numbers():
    a = Failure("TLB", "zap returned while vCPU 0 caches gfn 0x5 -> pfn 0x1000005", 16, "zap")
    b = Failure("TLB", "zap returned while vCPU 1 caches gfn 0x6 -> pfn 0x1000006", 30, "x")
    c = Failure("KVM_BUG", "zap returned while vCPU 1 caches gfn 0x6 -> pfn 0x1000006", 3, "")
    assert signature(a) == signature(b) != signature(c)
    assert signature(a) == ("TLB", "zap returned while vCPU # caches gfn # -> pfn #")


def test_shrunk_schedule_is_one_minimal():
    sc = load_scenario("seed_promotion", {"policy.mirror_promotion": "unpatched"})
    rep = explore(sc, PctScheduler(seed=0, depth=3, executions=200))
    small = shrink(sc, rep.failure)
    assert len(small) <= len(rep.failure.decisions)
    want = signature(rep.failure.failure)

    def fails(ds):
        r = ReplayScheduler(ds, rep.failure.thread_names, strict=False)
        r.new_execution()
        return signature(run_one(sc, r).failure) == want

    assert fails(small)
    assert not any(fails(small[:i] + small[i + 1:]) for i in range(len(small)))


def test_schedule_of_a_scenario_file_replays_by_path_and_hash(tmp_path):
    path = tmp_path / "mine.toml"
    shutil.copy(builtin_dir() / "seed_promotion.toml", path)
    params = {"policy.mirror_promotion": "unpatched"}
    sc = load_scenario(str(path), params)
    rep = explore(sc, PctScheduler(seed=0, depth=3, executions=200))
    sch = Schedule.from_result(sc, rep.failure, seed=0, strategy="pct")
    assert sch.scenario == str(path.resolve()) and len(sch.scenario_sha256) == 64
    out = tmp_path / "s.json"
    sch.save(out)
    again = replay(load_schedule(out), record=False)
    assert signature(again.failure) == signature(rep.failure.failure)
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(ScheduleError, match="changed since the schedule was recorded"):
        replay(load_schedule(out), record=False)
    builtin = Schedule.from_result(load_scenario("seed_2vcpu"), rep.failure, seed=0,
                                   strategy="pct")
    assert builtin.scenario == "seed_2vcpu"


def test_report_is_truthful_about_exhaustion():
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["explore", "seed_2vcpu", "-s", "dpor", "-p",
                                 "policy.mirror_promotion=unpatched", "--no-progress",
                                 "--no-shrink", "--out", "/dev/null"])
    assert r.exit_code == 1 and "exhausted: no (stopped at the first failure)" in r.output
    r = CliRunner().invoke(app, ["explore", "seed_2vcpu", "-s", "dpor", "--no-progress"])
    assert r.exit_code == 0 and "exhausted: yes" in r.output
