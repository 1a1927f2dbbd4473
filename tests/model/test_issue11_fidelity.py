"""Issue 11, "found to decide differently": each test asserts the kernel's exact outcome
for one function a side-by-side review found wrong (and fails on the old behaviour)."""

from kvm_helpers import fault, leaf_at

from tdpsim.model import spte as S
from tdpsim.model.kvm_main import (
    kvm_mmu_notifier_invalidate_range,
    kvm_mmu_slot_apply_flags,
    kvm_vm_set_mem_attributes,
)
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
from tdpsim.model.mmu_internal import EIO, RET_PF_RETRY, KvmPageFault
from tdpsim.model.tdp_iter import for_each_tdp_pte
from tdpsim.model.tdp_mmu import (
    KVM_ALL_ROOTS,
    KVM_DIRECT_ROOTS,
    KVM_FILTER_SHARED,
    KVM_INVALID_ROOTS,
    KVM_MIRROR_ROOTS,
    KVM_VALID_ROOTS,
    kvm_tdp_mmu_invalidate_roots,
    kvm_tdp_mmu_unmap_gfn_range,
    tdp_mmu_map_handle_target_level,
    tdp_mmu_root_match,
)


# --- item 5: a failed split bugs the VM once; remove_external_spte filters non-leaves only

def test_failed_write_lock_split_is_not_bugged_by_tdp_mmu_set_spte(make_vm):
    """HP-v3 tdp_mmu_set_spte ignores split_external_spte's return: the TDX hook bugs the
    VM itself (TDX_BUG_ON_2), the TDP MMU adds no KVM_BUG_ON of its own."""
    kvm = make_vm(tdx=True)
    fault(kvm, 0x400)
    kvm.x86_ops.fail["split_external_spte"] = -EIO
    kvm_vm_set_mem_attributes(kvm, 0x401, 0x402, 0)
    assert [c[0] for c in kvm.x86_ops.calls][-2:] == ["split_external_spte",
                                                       "remove_external_spte"]
    assert kvm.bugs == [] and not kvm.vm_bugged
    # The mirror was written before the hook: it holds the 4K table (the S-EPT side is
    # the TDX module's problem once the hook failed).
    assert leaf_at(kvm, kvm.vcpus[0].mirror_root, 0x400)[0] == 1


# --- item 6: tdp_mmu_root_match for invalid roots

def test_invalid_root_matches_only_its_own_type(make_vm):
    kvm = make_vm(tdx=True)
    fault(kvm, 0x400)
    mirror, direct = kvm.vcpus[0].mirror_root, kvm.vcpus[0].root
    kvm.mmu_lock.write_lock()
    kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)
    kvm.mmu_lock.write_unlock()
    assert mirror.role.invalid and direct.role.invalid
    shared_zap = KVM_DIRECT_ROOTS | KVM_INVALID_ROOTS
    assert [tdp_mmu_root_match(kvm, r, shared_zap) for r in (mirror, direct)] == [False, True]
    assert [tdp_mmu_root_match(kvm, r, KVM_MIRROR_ROOTS | KVM_INVALID_ROOTS)
            for r in (mirror, direct)] == [True, False]
    assert [tdp_mmu_root_match(kvm, r, KVM_VALID_ROOTS) for r in (mirror, direct)] == [False,
                                                                                       False]
    assert all(tdp_mmu_root_match(kvm, r, KVM_ALL_ROOTS) for r in (mirror, direct))
    assert kvm.warnings == []
    # types without a valid type WARN and match nothing.
    assert not tdp_mmu_root_match(kvm, mirror, KVM_INVALID_ROOTS)
    assert [w.function for w in kvm.warnings] == ["tdp_mmu_root_match"]


def test_shared_unmap_leaves_an_invalid_mirror_root_alone(make_vm):
    """kvm_tdp_mmu_unmap_gfn_range(KVM_FILTER_SHARED) adds KVM_INVALID_ROOTS, but an
    invalid *mirror* root is not a shared root: its private leaf is not zapped."""
    kvm = make_vm(tdx=True)
    fault(kvm, 0x400)
    mirror = kvm.vcpus[0].mirror_root
    kvm.mmu_lock.write_lock()
    kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)
    n = len(kvm.x86_ops.calls)
    flush = kvm_tdp_mmu_unmap_gfn_range(kvm, 0x400, 0x600, KVM_FILTER_SHARED, True, False)
    kvm.mmu_lock.write_unlock()
    assert flush is False
    assert kvm.x86_ops.calls[n:] == []
    level, spte = leaf_at(kvm, mirror, 0x400)
    assert level == 2 and S.is_shadow_present_pte(spte)
    assert kvm.stat.pages == [0, 1, 0]


# --- item 7: huge-page recovery looks past an empty first sub-table

def test_recovery_builds_1g_leaf_past_an_empty_first_2m_table(make_vm):
    """recover_huge_pages_range → tdp_mmu_make_huge_spte walks every leaf of the 1G
    range (tdp_root_for_each_leaf_pte), so an empty first 2M table does not stop it."""
    kvm = make_vm(host_page_level=3, mem_bytes=2 << 30)
    slot = kvm.memslots[0]
    root = kvm.vcpus[0].root
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    fault(kvm, 0x40000)
    fault(kvm, 0x40205)
    assert kvm.stat.pages == [2, 0, 0]
    kvm_mmu_notifier_invalidate_range(kvm, 0x40000, 0x40001)
    assert kvm.stat.pages == [1, 0, 0]
    kvm_mmu_slot_apply_flags(kvm, slot, 0)
    level, spte = leaf_at(kvm, root, 0x40000)
    assert level == 3 and S.is_large_pte(spte)
    assert S.spte_to_pfn(spte) == slot.gfn_to_hva(0x40000) >> 12
    assert kvm.stat.pages == [0, 0, 1]


# --- item 9: make_spte() marks the dirty bitmap before the cmpxchg

def _write_fault_4k(kvm, gfn):
    slot = kvm.gfn_to_memslot(gfn)
    return KvmPageFault(addr=gfn << 12, error_code=0, prefetch=False, exec=False, write=True,
                        present=False, rsvd=False, user=True, is_tdp=True, is_private=False,
                        nx_huge_page_workaround_enabled=False, max_level=1, gfn=gfn,
                        slot=slot, pfn=slot.gfn_to_hva(gfn) >> 12, map_writable=True)


def test_dirty_bit_logged_even_when_the_cmpxchg_loses(make_vm):
    kvm = make_vm()
    slot = kvm.memslots[0]
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    fault(kvm, 0x801)  # builds the tables down to 4K
    iter = next(it for it in for_each_tdp_pte(kvm, kvm.vcpus[0].root, 0x800, 0x801)
                if it.level == 1)
    assert iter.old_spte == kvm.profile.SHADOW_NONPRESENT_VALUE
    # Another vCPU installs the SPTE after this one read it: the cmpxchg will fail.
    iter.sp.spt[iter.index] = kvm.profile.SHADOW_NONPRESENT_VALUE | 0x1000
    kvm.mmu_lock.read_lock()
    r = tdp_mmu_map_handle_target_level(kvm.vcpus[0], _write_fault_4k(kvm, 0x800), iter)
    kvm.mmu_lock.read_unlock()
    assert r == RET_PF_RETRY
    assert iter.old_spte == kvm.profile.SHADOW_NONPRESENT_VALUE | 0x1000  # refreshed by the cmpxchg
    assert slot.dirty_bitmap[0x800 >> 3] == 0b11  # 0x800 logged, as 0x801 before it
