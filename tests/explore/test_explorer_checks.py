"""Issue 14, session 3: the checks that make bug classes visible (PROVE_RCU on every SPTE
access, lockdep per CPU, stale TLB hits and paging-structure caches, host page migration,
memory-attribute sides, one root per role) and the small scenarios that race them.  Each
check fires on a bug planted with monkeypatch and stays silent on the unmodified model."""

from __future__ import annotations

import pytest

from tdpsim.explore import DporScheduler, explore, load_scenario
from tdpsim.model import kvm_main, mmu_fault, tdp_mmu
from tdpsim.model.invariants import check_mmu_invariants
from tdpsim.model.kvm import Kvm, KvmVcpu
from tdpsim.model.mmu_fault import kvm_mmu_page_fault, ept_violation_error_code
from tdpsim.model.vmm import VmConfig, create_vm

# Executions of exhaustive optimal DPOR on the unmodified model.
# Each must stay well under a minute (lane explorer-dpor exhausts every built-in).  They grew
# (7, 23, 82, 353, 208, 314 before) with the footprints of tracking.py that DPOR was missing
# (page-table frame allocator, RCU nesting and callback queue, vCPU mode fields): without
# them DPOR skipped traces bounded DFS reaches.  Session 4 (286, 10, 14, 61, 146, 693, 3174,
# 767 before): a wakeup-tree branch whose thread cannot run where it would be inserted is no
# longer added, so no execution replays to it only to drop it (a sleep-blocked execution);
# the executions that run to the end are the same ones (executions - sleep-blocked unchanged).
SMALL = {
    "roots_invalidate": 284,
    "roots_alloc_race": 10,
    "td_convert_shared": 13,
    "tlb_reenter": 45,
    "tlb_flush_race": 107,
    "host_migrate": 624,
    "tlb_nx_recovery": 2512,
    "fast_pf_migrate": 728,
}
# Executions that ran to the end (not sleep-blocked): what the session-4 change kept.
COMPLETE = {
    "roots_invalidate": 284,
    "roots_alloc_race": 10,
    "td_convert_shared": 13,
    "tlb_reenter": 42,
    "tlb_flush_race": 107,
    "host_migrate": 624,
    "tlb_nx_recovery": 2256,
    "fast_pf_migrate": 728,
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_scenarios_clean_under_exhaustive_dpor(name):
    sched = DporScheduler(max_executions=5000)
    rep = explore(load_scenario(name), sched)
    assert rep.failure is None and sched.exhausted
    assert rep.executions == SMALL[name]
    assert rep.executions - rep.pruned == COMPLETE[name]


def _first_failure(name, executions=2000):
    rep = explore(load_scenario(name), DporScheduler(max_executions=executions))
    assert rep.failure is not None
    return rep.failure.failure


def test_spte_access_outside_rcu_is_prove_rcu(monkeypatch):
    # tdp_mmu_zap_root without its rcu_read_lock: every rcu_dereference(sptep) splats,
    # whether or not the table awaits a grace period.
    def zap_root(kvm, root, shared):
        for level in (1, 2, 3, root.role.level):
            tdp_mmu.__tdp_mmu_zap_root(kvm, root, shared, level)

    monkeypatch.setattr(tdp_mmu, "tdp_mmu_zap_root", zap_root)
    f = _first_failure("roots_invalidate")
    assert f.kind == "RCU" and "outside rcu_read_lock (rcu_dereference_check)" in f.message
    assert "grace period" not in f.message


def test_lockdep_asks_whether_this_cpu_holds_the_lock():
    kvm = create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20))
    lock, sp = kvm.mmu_lock, kvm.mmu_lock._sp
    sp.hook = lambda kind, key, write: None  # an explorer is attached
    sp.cpu = 1
    lock.read_lock()
    lock.lockdep_assert_held_read()  # CPU 1 holds it
    sp.cpu = 0
    lock.lockdep_assert_held_read()  # CPU 0 does not: a lockdep splat (a WARN)
    assert [w.message for w in kvm.warnings] == ["mmu_lock not held for read"]
    sp.cpu = 1
    lock.read_unlock()
    lock.write_lock()
    sp.cpu = 0
    lock.lockdep_assert_held()  # CPU 1 is the writer
    lock.lockdep_assert_held()
    assert [w.message for w in kvm.warnings] == ["mmu_lock not held for read",
                                                 "mmu_lock not held"]
    assert kvm.bug_counts[("WARN lockdep", "mmu_lock not held")] == 2  # splat printed once


def test_sequential_lockdep_is_global():
    kvm = create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20))
    kvm.mmu_lock.read_lock()
    kvm.mmu_lock.lockdep_assert_held_read()
    kvm.mmu_lock.read_unlock()
    assert kvm.warnings == []


def test_lost_flush_request_is_a_stale_hit(monkeypatch):
    # vcpu_enter_guest consumes KVM_REQ_TLB_FLUSH without flushing: the zap returned while
    # the vCPU was outside guest mode (no IPI owed), so only the hit can see it.
    real = KvmVcpu.kvm_check_request

    def check_request(self, req):
        return real(self, req) and req != "KVM_REQ_TLB_FLUSH"

    monkeypatch.setattr(KvmVcpu, "kvm_check_request", check_request)
    f = _first_failure("tlb_reenter")
    assert f.kind == "TLB" and f.thread == "vcpu0"
    assert f.message == ("vCPU 0: guest write of gfn 0x5 hit a stale TLB entry -> pfn "
                         "0x1000005 after the operation that took it away had returned (no "
                         "flush reached this vCPU)")


def test_replaced_table_is_stale_in_the_paging_structure_cache(monkeypatch):
    # Huge-page recovery without its flush: the 4K translation is unchanged, but the
    # cached PDE still points at the table the 2M leaf replaced.
    monkeypatch.setattr(Kvm, "kvm_flush_remote_tlbs_memslot", lambda self, slot: None)
    f = _first_failure("tlb_recover")
    assert f.kind == "TLB" and f.thread == "recover"
    assert "through a page table its SPTE change replaced (paging-structure cache)" in f.message


def test_fault_on_a_migrated_page_must_retry(monkeypatch):
    # is_page_fault_stale ignoring a finished invalidation: the old page gets mapped.
    monkeypatch.setattr(mmu_fault, "mmu_invalidate_retry_gfn",
                        lambda kvm, seq, gfn: bool(kvm.mmu_invalidate_in_progress))
    f = _first_failure("host_migrate")
    assert f.kind == "INVARIANT"
    assert f.message == ("direct L1 gfn 0x10: maps pfn 0x1000010, but the host migrated that "
                         "page to pfn 0x4001000010 (stale after the invalidation)")


def test_conversion_that_keeps_the_old_side_mapped(monkeypatch):
    monkeypatch.setattr(kvm_main, "kvm_arch_pre_set_memory_attributes",
                        lambda kvm, slot, start, end, attrs: False)
    f = _first_failure("td_convert_shared")
    assert f.kind == "INVARIANT"
    assert f.message.startswith("direct L1 gfn 0x30: shared leaf over private memory")


def test_one_valid_root_per_role():
    kvm = create_vm(VmConfig(nr_vcpus=2, mem_bytes=4 << 20))
    assert check_mmu_invariants(kvm) == []
    kvm.vcpus[1].root = None
    real = tdp_mmu._find_root
    tdp_mmu._find_root = lambda kvm, word: None  # no lookup: a second root is made
    try:
        mmu_fault.kvm_mmu_load(kvm.vcpus[1])
    finally:
        tdp_mmu._find_root = real
    assert check_mmu_invariants(kvm) == ["1 duplicate valid root(s) with one role"]


def test_migrated_page_is_faulted_in_at_its_new_pfn():
    kvm = create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20, host_page_level=1))
    slot = kvm.memslots[0]
    hva = slot.gfn_to_hva(0x10)
    slot.backing.moved[hva >> 12] = (hva >> 12) + (1 << 38)
    err = ept_violation_error_code(write=False, exec=False, private=False)
    kvm_mmu_page_fault(kvm.vcpus[0], 0x10 << 12, err)
    assert check_mmu_invariants(kvm) == []
    slot.backing.moved[hva >> 12] += 1 << 38  # moved again, the SPTE left behind
    assert check_mmu_invariants(kvm) == [
        "direct L1 gfn 0x10: maps pfn 0x4001000010, but the host migrated that page to pfn "
        "0x8001000010 (stale after the invalidation)"]


def test_nx_recovery_owes_a_flush_to_a_guest(monkeypatch):
    # The recovery worker's zap of the parent SPTE without its final flush.
    real = Kvm.kvm_flush_remote_tlbs
    monkeypatch.setattr(Kvm, "kvm_flush_remote_tlbs",
                        lambda self, *a: None if self.mmu_lock.readers else real(self, *a))
    f = _first_failure("tlb_nx_recovery")
    assert f.kind == "TLB" and f.thread == "nx_recovery"
    assert f.message.startswith("nx_recovery(ratio=1) returned while vCPU 0 (in guest mode) "
                                "still caches gfn 0x0")


def test_present_ept_entry_lets_fast_page_fault_try(monkeypatch):
    # An EPT violation on a present (write-protected) entry sets PFERR_PRESENT_MASK; the
    # fast path then races the host's zap, and a plain store instead of its cmpxchg
    # resurrects the zapped SPTE.  It still logs the page dirty: without that the
    # dirty-log check fires first (the write escapes the migration).
    def plain(vcpu, fault, sp, index, old_spte, new_spte):
        tdp_mmu.__kvm_tdp_mmu_write_spte(vcpu.kvm, sp, index, new_spte)
        fault.slot.mark_page_dirty_in_slot(fault.gfn)
        return True

    monkeypatch.setattr(mmu_fault, "fast_pf_fix_direct_spte", plain)
    f = _first_failure("fast_pf_migrate")
    assert (f.kind, f.thread) == ("LOST_UPDATE", "vcpu0")
    assert f.message.startswith("plain write to spte[0x100003][16] overwrites "
                                "0x8000000000000000")
