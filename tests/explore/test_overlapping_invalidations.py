"""Session 8: a fault on a page the host migrated while an unrelated mmu_notifier
invalidation is in flight.  ``kvm_mmu_invalidate_begin`` with none in progress resets the
in-flight range to the new invalidation's own, so the finished migration of the fault's gfn
is visible only through ``mmu_invalidate_seq``; no built-in had two invalidations racing a
fault before ``host_migrate_notifier``."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.model import mmu_fault
from tdpsim.model.sched import MMU_INVALIDATE, MMU_INVALIDATE_KEY


def _retry_gfn_seq_only_idle(kvm, mmu_seq, gfn):
    # mmu_invalidate_retry_gfn answering from the in-flight range alone whenever an
    # invalidation is in progress: the sequence is never compared then.
    kvm.mmu_lock.lockdep_assert_held()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    if kvm.mmu_invalidate_in_progress:
        return kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end
    return kvm.mmu_invalidate_seq != mmu_seq


def test_seq_hidden_by_another_invalidation_maps_the_old_page(monkeypatch):
    monkeypatch.setattr(mmu_fault, "mmu_invalidate_retry_gfn", _retry_gfn_seq_only_idle)
    rep = explore(load_scenario("host_migrate_notifier"), DporScheduler(max_executions=500))
    f = rep.failure.failure
    assert (rep.failure_index + 1, f.kind) == (86, "INVARIANT")
    assert f.message == ("direct L1 gfn 0x10: maps pfn 0x1000010, but the host migrated that "
                         "page to pfn 0x4001000010 (stale after the invalidation)")


def test_host_migrate_notifier_is_clean():
    # Exhaustive DPOR ends at 72,604 executions (~4 minutes): too slow here.
    sc = load_scenario("host_migrate_notifier")
    rep = explore(sc, DporScheduler(max_executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 14934)
    rep = explore(sc, PctScheduler(seed=0, executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 12923)
