"""The invariant checkers catch injected inconsistencies, and stay quiet on clean runs."""

from __future__ import annotations

import time

from tdpsim.model.invariants import check_invariants, check_mmu_invariants, check_tdx_invariants
from tdpsim.model.kvm import IN_GUEST_MODE
from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
from tdpsim.model.policy import Policy
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.spte import SPTE_MMU_PRESENT_MASK
from tdpsim.model.tdx import TdGuest, create_td
from tdpsim.model.vmm import VmConfig, create_vm

FROZEN_SPTE = DEFAULT_PROFILE.FROZEN_SPTE

M2 = 2 << 20


def plain_vm(host_page_level: int = 1):
    """A non-TDX VM with a few leaves: 4K ones on 4K host pages, 2M ones on THP."""
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=host_page_level))
    vcpu = kvm.vcpus[0]
    for gpa in (0, 0x1000, M2 + 0x5000, 3 * M2):
        assert kvm_mmu_page_fault(vcpu, gpa, ept_violation_error_code(write=True)) in (5, 6)
    return kvm


def finalized_td(**kw):
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=2), **kw)
    assert tdx.tdx_td_finalize(kvm) == 0
    g = TdGuest(kvm, tdx)
    assert g.accept_memory(M2, 2 * M2)              # one 2M leaf
    assert g.accept_memory(4 * M2, 4 * M2 + 8192)   # two 4K leaves
    return kvm, tdx, g


def _first_leaf_table(kvm, mirror):
    root = next(r for r in kvm.tdp_mmu_roots if r.role.is_mirror == mirror)
    stack = [root]
    while stack:
        sp = stack.pop()
        for i, s in enumerate(sp.spt):
            if s & SPTE_MMU_PRESENT_MASK:
                if sp.role.level == 1:
                    return sp, i
                child = kvm.sp_by_pfn.get((s >> 12) & ((1 << 40) - 1))
                if child is not None:
                    stack.append(child)
    raise AssertionError("no 4K leaf")


def test_clean_runs_are_clean():
    assert check_mmu_invariants(plain_vm(1)) == []
    assert check_mmu_invariants(plain_vm(2)) == []
    kvm, tdx, g = finalized_td()
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_stats_mismatch_and_frozen_and_dangling_table():
    kvm = plain_vm()
    kvm.stat.pages[0] += 1
    assert any("stat.pages" in s for s in check_mmu_invariants(kvm))
    kvm.stat.pages[0] -= 1
    sp, i = _first_leaf_table(kvm, mirror=False)
    old = sp.spt[i]
    sp.spt[i] = FROZEN_SPTE
    kvm.stat.pages[0] -= 1
    assert any("FROZEN_SPTE outside an operation" in s for s in check_mmu_invariants(kvm))
    kvm.mmu_lock.read_lock()  # inside an operation a frozen SPTE is legal
    assert check_mmu_invariants(kvm) == []
    kvm.mmu_lock.read_unlock()
    sp.spt[i] = old
    kvm.stat.pages[0] += 1
    parent = sp.parent
    saved = parent.spt[sp.parent_index]
    parent.spt[sp.parent_index] = saved ^ (0x777 << 12)  # points to no SP
    assert any("points to no live SP" in s for s in check_mmu_invariants(kvm))
    parent.spt[sp.parent_index] = saved
    assert check_mmu_invariants(kvm) == []


def test_leaf_above_max_level():
    kvm = plain_vm(2)
    assert kvm.stat.pages_2m == 3
    kvm.policy = Policy(max_huge_page_level=1)
    assert any("above the maximum mapping level" in s for s in check_mmu_invariants(kvm))


def test_mirror_leaf_whose_sept_entry_was_removed_behind_its_back():
    kvm, tdx, g = finalized_td()
    m = tdx.module
    gpa = 4 * M2
    for v in kvm.vcpus:
        tdx.tdx_vcpu_exit(v)
    assert m.tdh_mem_range_block(gpa, 0).ok and m.tdh_mem_track().ok
    assert m.tdh_mem_page_remove(gpa, 0).ok
    inv = check_tdx_invariants(kvm, tdx)
    assert any(f"mirror L1 leaf gfn {gpa >> 12:#x}" in s and "has no S-EPT leaf" in s
               for s in inv)
    assert any("without TDH.PHYMEM.PAGE.WBINVD" in s for s in inv)


def test_sept_mapping_without_mirror_and_left_blocked():
    kvm, tdx, g = finalized_td()
    m = tdx.module
    # AUG a page KVM never mapped (its S-EPT table exists: same 2M as the 4K leaves).
    gpa = 4 * M2 + 5 * 4096
    assert m.tdh_mem_page_aug(gpa, 0, (128 << 30 >> 12) + (gpa >> 12)).ok
    inv = check_tdx_invariants(kvm, tdx)
    assert any("without a mirror leaf" in s for s in inv)
    assert m.tdh_mem_range_block(4 * M2, 0).ok
    inv = check_tdx_invariants(kvm, tdx)
    assert any("left BLOCKED" in s for s in inv)
    assert any("mirror L1 leaf" in s and "BLOCKED" in s for s in inv)


def test_frozen_mirror_spte_mid_fault_is_allowed_under_read_lock():
    kvm, tdx, g = finalized_td()
    sp, i = _first_leaf_table(kvm, mirror=True)
    old = sp.spt[i]
    sp.spt[i] = FROZEN_SPTE
    kvm.stat.pages[0] -= 1
    kvm.mmu_lock.read_lock()
    assert check_invariants(kvm, tdx) == []
    kvm.mmu_lock.read_unlock()
    assert any("FROZEN_SPTE" in s for s in check_invariants(kvm, tdx))
    sp.spt[i] = old
    kvm.stat.pages[0] += 1


def test_vcpu_mode_mismatch_bug_and_punched_page():
    kvm, tdx, g = finalized_td()
    v = kvm.vcpus[1]
    assert v.mode != IN_GUEST_MODE
    v.mode = IN_GUEST_MODE  # mid-entry is fine, at rest it is not
    assert not any("vCPU 1: KVM mode" in s for s in check_tdx_invariants(kvm, tdx))
    assert any("vCPU 1: KVM mode" in s for s in check_tdx_invariants(kvm, tdx, True))
    v.mode = 0
    tdx.module.vcpus[1].in_guest = True  # in the TD behind KVM's back: always wrong
    assert any("vCPU 1: KVM mode" in s for s in check_tdx_invariants(kvm, tdx))
    tdx.module.vcpus[1].in_guest = False
    kvm.KVM_BUG_ON(True, "somewhere", "injected")
    assert "KVM_BUG_ON in somewhere: injected" in check_tdx_invariants(kvm, tdx)
    kvm.bugs.clear()
    slot = kvm.memslots[0]
    slot.gmem.punch_hole(512 + 3, 512 + 4)  # freed under a live 2M mapping
    assert any("guest_memfd page was freed" in s for s in check_tdx_invariants(kvm, tdx))


def test_module_violations_are_included():
    kvm, tdx, g = finalized_td()
    tdx.module.child_count += 1
    assert any(s.startswith("TDX module: child_count") for s in check_tdx_invariants(kvm, tdx))


def test_fast_enough_for_every_step():
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=64 << 20))
    assert tdx.tdx_td_finalize(kvm) == 0
    g = TdGuest(kvm, tdx)
    assert g.accept_memory(0, 8 << 20)
    for i in range(256):  # 1 MB more at 4K: several 4K tables
        assert g.try_accept_one((16 << 20) + i * 4096 * 3, 4096, 0) == 4096
    t = time.perf_counter()
    for _ in range(10):
        assert check_invariants(kvm, tdx) == []
    assert (time.perf_counter() - t) / 10 < 0.25
