"""Issue 14, session 6: dirty logging with PML (``kvm_intel.enable_pml``) racing a table
free.  No built-in reached ``clear_dirty_gfn_range`` before ``pml_nx_recovery`` (every other
scenario runs with the default enable_pml = off, which write-protects instead), so a PML
walker without ``rcu_read_lock`` went unseen."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.model import tdp_mmu
from tdpsim.model.spte import PT_WRITABLE_MASK, is_last_spte, is_shadow_present_pte


def _clear_dirty_without_rcu(kvm, root, start, end):
    # clear_dirty_gfn_range with its rcu_read_lock()/rcu_read_unlock() left out.
    dbit = (PT_WRITABLE_MASK if tdp_mmu.tdp_mmu_need_write_protect(kvm, root)
            else kvm.masks.shadow_dirty_mask)
    spte_set = False
    for iter in tdp_mmu.for_each_tdp_pte(kvm, root, start, end):
        while (is_shadow_present_pte(iter.old_spte) and is_last_spte(iter.old_spte, iter.level)
               and not tdp_mmu.tdp_mmu_iter_cond_resched(kvm, iter, False, True)):
            if not iter.old_spte & dbit:
                break
            if not tdp_mmu.tdp_mmu_set_spte_atomic(kvm, iter, iter.old_spte & ~dbit):
                spte_set = True
                break
    return spte_set


def test_pml_clear_dirty_outside_rcu_is_prove_rcu(monkeypatch):
    monkeypatch.setattr(tdp_mmu, "clear_dirty_gfn_range", _clear_dirty_without_rcu)
    rep = explore(load_scenario("pml_nx_recovery"), DporScheduler(max_executions=10))
    f = rep.failure.failure
    assert (rep.executions, f.kind, f.thread) == (1, "RCU", "dirty_log")
    assert f.message.startswith("suspicious RCU usage: read of spte[0x100000][0] (L4 gfn 0x0) "
                                "outside rcu_read_lock (rcu_dereference_check)")


def test_pml_nx_recovery_is_clean():
    # Exhaustive DPOR does not end here (more than 2,000 executions, ~1,070 steps each: the
    # walker's 512 reads against the free's 512 freezes), so a bounded prefix plus PCT.
    sc = load_scenario("pml_nx_recovery")
    rep = explore(sc, DporScheduler(max_executions=60))
    assert rep.failure is None and (rep.executions, rep.steps) == (60, 38038)
    rep = explore(sc, PctScheduler(seed=0, executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 114930)
