"""td_zap_reenter: the window of tdh_do_no_vcpus between a BUSY TDH.MEM.TRACK, the kick and
the retry, reached by one TD vCPU that re-enters while the host zaps an S-EPT leaf."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore.engine import Engine
from tdpsim.model.tdx import KvmTdx


def test_clean_and_reaches_the_busy_retry():
    sc = load_scenario("td_zap_reenter")
    sched = DporScheduler(max_executions=300)
    busy = failures = runs = 0
    while sched.new_execution():
        world = sc.build()
        res = Engine(world, sched, max_steps=sc.max_steps).run()
        sched.done(res)
        runs += 1
        failures += res.failure is not None
        busy += world.tdx.stats.busy_retries
    assert (runs, failures, busy) == (300, 0, 111)
    rep = explore(sc, PctScheduler(seed=0, depth=3, executions=200))
    assert rep.failure is None and rep.executions == 200


def test_vcpus_not_kept_out_during_the_retry_is_a_kvm_bug(monkeypatch):
    # guest_no_wait_for_sept_zap: wait_for_sept_zap never reads true, so the kicked vCPU
    # re-enters and its TDH.VP.ENTER makes the retried TDH.MEM.TRACK BUSY again.
    monkeypatch.setattr(KvmTdx, "wait_for_sept_zap",
                        property(lambda self: False, lambda self, v: None), raising=False)
    rep = explore(load_scenario("td_zap_reenter"), DporScheduler(max_executions=1000))
    f = rep.failure.failure
    assert (f.kind, f.thread, rep.failure_index) == ("KVM_BUG", "zap", 195)
    assert f.message == ("KVM_BUG_ON in tdx_track: TDH.MEM.TRACK failed: "
                         "TDX_OPERAND_BUSY|TD_EPOCH (rcx 0x0 rdx 0x0)")
