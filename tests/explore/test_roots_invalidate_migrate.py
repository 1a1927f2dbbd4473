"""Session 8 (round 2): roots_invalidate_migrate, a host migration in kvm_mmu_zap_all_fast's
window between invalidating the roots (write lock) and zapping them (read lock).  The
mmu_notifier's ``kvm_tdp_mmu_unmap_gfn_range`` must walk invalid roots too
(KVM_INVALID_ROOTS): the root a vCPU has not reloaded from yet still maps the gfn, and after
the migration that mapping is on the old, freed page.  No built-in migrated a page inside
that window before."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, explore, load_scenario
from tdpsim.model import kvm_main
from tdpsim.model.tdp_mmu import (
    for_each_tdp_mmu_root_yield_safe,
    kvm_gfn_range_filter_to_root_types,
    tdp_mmu_zap_leafs,
)


def test_clean_under_exhaustive_dpor():
    sched = DporScheduler(max_executions=1000)
    rep = explore(load_scenario("roots_invalidate_migrate"), sched)
    assert rep.failure is None and sched.exhausted
    assert (rep.executions, rep.steps) == (6, 58675)


def test_unmap_skipping_invalid_roots_leaves_a_stale_spte(monkeypatch):
    # tlb_unmap_skips_invalid_roots: the roots of the attribute filter only.
    def unmap(kvm, start, end, attr_filter, may_block, flush):
        for root in for_each_tdp_mmu_root_yield_safe(
                kvm, kvm_gfn_range_filter_to_root_types(kvm, attr_filter)):
            flush = tdp_mmu_zap_leafs(kvm, root, start, end, may_block, flush)
        return flush

    monkeypatch.setattr(kvm_main, "kvm_tdp_mmu_unmap_gfn_range", unmap)
    rep = explore(load_scenario("roots_invalidate_migrate"), DporScheduler(max_executions=100))
    f = rep.failure.failure
    assert (rep.failure_index + 1, f.kind, f.thread) == (2, "INVARIANT", "host")
    assert f.message == ("direct L1 gfn 0x10: maps pfn 0x1000010, but the host migrated that "
                         "page to pfn 0x4001000010 (stale after the invalidation)")
