"""RCU grace periods per CPU, freed tables, the vCPU entry/kick protocol and the TLB."""

from __future__ import annotations

import pytest

from kvm_helpers import fault

from tdpsim.model.kvm import (
    EXITING_GUEST_MODE, IN_GUEST_MODE, KVM_REQ_TLB_FLUSH, OUTSIDE_GUEST_MODE,
    MemorySafetyBUG, kvm_vcpu_enter_guest_mode,
)
from tdpsim.model.locking import LockingError, Rcu
from tdpsim.model.mmu_internal import POISON_FREE_SPTE, SP_FREED, SP_LIVE, SP_RCU_PENDING
from tdpsim.model.sched import SchedPoints
from tdpsim.model.tdp_iter import kvm_tdp_mmu_read_spte, spte_to_child_sp
from tdpsim.model.tdp_mmu import tdp_mmu_alloc_sp, tdp_mmu_free_sp_rcu
from tdpsim.model.tlb import guest_memory_access, tlb_entry_is_stale
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.model.vmx import vcpu_enter_guest


def test_grace_period_waits_only_for_earlier_readers():
    sp = SchedPoints()
    rcu = Rcu(sp)
    ran = []
    sp.cpu = 1
    rcu.rcu_read_lock()
    sp.cpu = 0
    rcu.rcu_read_lock()
    rcu.call_rcu(lambda: ran.append("a"))  # waits for CPUs 0 and 1
    rcu.rcu_read_unlock()
    assert ran == [] and rcu.readers == 1
    sp.cpu = 2
    rcu.rcu_read_lock()  # a later reader does not hold the grace period
    sp.cpu = 1
    rcu.rcu_read_unlock()
    assert ran == ["a"] and rcu.readers == 1
    rcu.call_rcu(lambda: ran.append("b"))  # CPU 2 is a reader now
    assert ran == ["a"]
    sp.cpu = 2
    rcu.rcu_read_unlock()
    assert ran == ["a", "b"] and rcu.pending == []
    rcu.call_rcu(lambda: ran.append("c"))  # nobody reads: at once
    assert ran == ["a", "b", "c"]
    with pytest.raises(LockingError):
        rcu.rcu_read_unlock()


def test_freed_table_is_poisoned_and_its_frame_reused():
    kvm = create_vm(VmConfig(mem_bytes=4 << 20))
    kvm.pt_frame_reuse = True
    sp = tdp_mmu_alloc_sp(kvm)
    kvm.sp_by_pfn[sp.spt_pfn] = sp
    kvm.rcu.rcu_read_lock()
    tdp_mmu_free_sp_rcu(kvm, sp)
    assert sp.rcu_state == SP_RCU_PENDING and sp.spt_pfn in kvm.sp_by_pfn
    kvm.rcu.rcu_read_unlock()
    assert sp.rcu_state == SP_FREED and set(sp.spt) == {POISON_FREE_SPTE}
    assert sp.spt_pfn not in kvm.sp_by_pfn
    again = tdp_mmu_alloc_sp(kvm)
    assert again.spt_pfn == sp.spt_pfn and again.rcu_state == SP_LIVE


def test_stale_table_access_reports_only_under_a_hook():
    kvm = create_vm(VmConfig(mem_bytes=4 << 20))
    fault(kvm, 5)
    sp = spte_to_child_sp(kvm, kvm.vcpus[0].root.spt[0])  # the L3 table
    kvm.rcu.rcu_read_lock()
    tdp_mmu_free_sp_rcu(kvm, sp)
    kvm.sched.hook = lambda kind, key, write: None
    assert kvm_tdp_mmu_read_spte(kvm, sp, 3) == sp.spt[3]  # inside rcu_read_lock: fine
    kvm.sched.cpu = 1
    with pytest.raises(MemorySafetyBUG) as e:
        kvm_tdp_mmu_read_spte(kvm, sp, 3)
    assert e.value.kind == "RCU" and "suspicious RCU usage" in str(e.value)
    kvm.sched.cpu = 0
    kvm.rcu.rcu_read_unlock()
    with pytest.raises(MemorySafetyBUG) as e:
        kvm_tdp_mmu_read_spte(kvm, sp, 3)
    assert e.value.kind == "USE_AFTER_FREE" and "KASAN: use-after-free read" in str(e.value)
    assert "(L3 gfn 0x0)" in str(e.value)
    kvm.sched.hook = None
    assert kvm_tdp_mmu_read_spte(kvm, sp, 3) == POISON_FREE_SPTE


def test_entry_sets_in_guest_mode_before_checking_requests():
    kvm = create_vm(VmConfig(mem_bytes=4 << 20, nr_vcpus=2))
    v = kvm.vcpus[0]
    v.kvm_make_request(KVM_REQ_TLB_FLUSH)
    assert vcpu_enter_guest(v) == 0  # the flush request is serviced first
    assert v.mode == IN_GUEST_MODE and v.in_guest and v.tlb.flushes == 1
    w = kvm.vcpus[1]

    def kick_at_the_barrier(kind, key, write):  # the kicker's cmpxchg after IN_GUEST_MODE
        if kind == "barrier":
            assert w.mode == IN_GUEST_MODE
            w.mode = EXITING_GUEST_MODE

    kvm.sched.hook = kick_at_the_barrier
    assert kvm_vcpu_enter_guest_mode(w) is False  # entry cancelled
    assert w.mode == OUTSIDE_GUEST_MODE and not w.irqs_disabled


def test_tlb_caches_until_the_flush_reaches_the_guest():
    kvm = create_vm(VmConfig(mem_bytes=4 << 20, nr_vcpus=2))
    v = kvm.vcpus[0]
    fault(kvm, 5)
    assert vcpu_enter_guest(v) == 0
    pfn = guest_memory_access(v, 5, write=True)
    e = v.tlb.entries[5]
    assert pfn == e.pfn and e.writable and not tlb_entry_is_stale(kvm, e, 5)
    assert guest_memory_access(v, 9) is not None  # gfn 9 shares the 2M leaf of gfn 5
    from tdpsim.model.tdp_mmu import kvm_tdp_mmu_zap_leafs
    kvm.mmu_lock.write_lock()
    assert kvm_tdp_mmu_zap_leafs(kvm, 0, 0x200, False)
    assert tlb_entry_is_stale(kvm, e, 5)
    assert guest_memory_access(v, 5) == pfn  # the hardware still uses its entry
    before = kvm.stat.remote_tlb_flush
    kvm.kvm_flush_remote_tlbs()  # IPI: in guest mode, flushed at once
    kvm.mmu_lock.write_unlock()
    assert kvm.stat.remote_tlb_flush == before + 1 and v.tlb.entries == {}
    assert guest_memory_access(v, 5) is None  # now it faults
    assert kvm.vcpus[1].tlb.entries == {} and KVM_REQ_TLB_FLUSH in kvm.vcpus[1].requests
