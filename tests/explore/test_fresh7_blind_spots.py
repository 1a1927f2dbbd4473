"""Session 8 (round 2): two planted bugs of the ``fresh7`` set that no built-in reached.
``kvm_mmu_invalidate_range_add`` replacing the in-flight range needs two invalidations in
progress at once and a fault on the first one's gfn (``host_migrate_overlap``);
``tdp_mmu_iter_cond_resched`` not marking the iterator yielded needs a walker that yields
inside a table another thread frees meanwhile (``zap_yield_nx_recovery``)."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.model import kvm_main, shadow_mmu, tdp_mmu


def _range_add_replaces(monkeypatch):
    # kvm_mmu_invalidate_range_add taking the new range even with one already in flight.
    real = kvm_main.kvm_mmu_invalidate_range_add

    def replace(kvm, start, end):
        real(kvm, start, end)
        kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end

    monkeypatch.setattr(kvm_main, "kvm_mmu_invalidate_range_add", replace)
    monkeypatch.setattr(shadow_mmu, "kvm_mmu_invalidate_range_add", replace)


def _resched_forgets_yield(monkeypatch):
    # tdp_mmu_iter_cond_resched dropping and retaking RCU and mmu_lock without marking the
    # iterator yielded: the walk goes on from the table it read before.
    real = tdp_mmu.tdp_mmu_iter_cond_resched

    def cond_resched(kvm, iter, flush, shared):
        yielded = real(kvm, iter, flush, shared)
        iter.yielded = False
        return yielded

    monkeypatch.setattr(tdp_mmu, "tdp_mmu_iter_cond_resched", cond_resched)


def test_replaced_range_hides_the_first_invalidation_from_a_fault(monkeypatch):
    _range_add_replaces(monkeypatch)
    rep = explore(load_scenario("host_migrate_overlap"),
                  PctScheduler(seed=0, depth=3, executions=200))
    f = rep.failure.failure
    assert (rep.failure_index + 1, f.kind) == (32, "INVARIANT")
    assert f.message == ("direct L1 gfn 0x10: maps pfn 0x1000010, but the host migrated that "
                         "page to pfn 0x4001000010 (stale after the invalidation)")


def test_host_migrate_overlap_is_clean():
    # Exhaustive DPOR does not end within 5 minutes; the benchmark's DPOR 500 + PCT 500 is
    # clean too.
    sc = load_scenario("host_migrate_overlap")
    rep = explore(sc, DporScheduler(max_executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 14096)
    rep = explore(sc, PctScheduler(seed=0, executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 12686)


def test_unmarked_yield_walks_the_table_nx_recovery_freed(monkeypatch):
    _resched_forgets_yield(monkeypatch)
    rep = explore(load_scenario("zap_yield_nx_recovery"), DporScheduler(max_executions=100))
    f = rep.failure.failure
    assert (rep.failure_index + 1, f.kind, f.thread) == (2, "USE_AFTER_FREE", "zap")
    assert f.message == ("KASAN: use-after-free read of spte[0x100003][4] (L1 gfn 0x0), "
                         "freed by tdp_mmu_free_sp_rcu_callback")


def test_zap_yield_nx_recovery_is_clean():
    sched = DporScheduler(max_executions=100)
    rep = explore(load_scenario("zap_yield_nx_recovery"), sched)
    assert rep.failure is None and sched.exhausted
    assert (rep.executions, rep.steps) == (9, 5164)
