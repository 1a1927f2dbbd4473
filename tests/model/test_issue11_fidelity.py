"""Issue 11, "found to decide differently": each test asserts the kernel's exact outcome
for one function a side-by-side review found wrong (and fails on the old behaviour)."""

from kvm_helpers import fault, leaf_at

from tdpsim.model import spte as S
from tdpsim.model.kvm_main import (
    kvm_recover_nx_huge_pages,
    nx_huge_pages_to_zap,
    kvm_mmu_notifier_invalidate_range,
    kvm_mmu_slot_apply_flags,
    kvm_vm_set_mem_attributes,
)
from tdpsim.model.events import FastPageFault
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID
from tdpsim.model.mmu import (
    KVM_SHADOW_MMU,
    KVM_TDP_MMU,
    possible_nx_huge_pages,
    track_possible_nx_huge_page,
)
from tdpsim.model.mmu_fault import (
    ept_violation_error_code,
    kvm_mmu_do_page_fault,
    kvm_mmu_page_fault,
)
from tdpsim.model.policy import Policy
from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_12, KERNEL_6_18_HP_V3
from tdpsim.model.mmu_internal import (
    EAGAIN,
    EIO,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_INVALID,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    KvmMmuPage,
    KvmPageFault,
)
from tdpsim.model.tdp_iter import for_each_tdp_pte
from tdpsim.model.tdx import create_td
from tdpsim.model.tdx_module import EEQ_TYPE_PENDING_EPT_VIOLATION
from tdpsim.model.tdx_module.results import make_eeq
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.model.vmx import (
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_EXEC_FOR_RING3_LIN,
    EPT_VIOLATION_PROT_READ,
)
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
    tdp_mmu_max_gfn_exclusive,
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


# --- item 2: make_spte sets D with W (6.13+)

def test_promoted_2m_leaf_is_dirty(make_vm):
    """A table → huge leaf promotion on a direct root: W, MMU-writable and D together
    (…0bf7), in 6.18 and in 6.12 alike (the old value is a table, not a writable leaf)."""
    for profile in (KERNEL_6_18_HP_V3, KERNEL_6_12):
        kvm = make_vm(profile=profile)
        slot = kvm.memslots[0]
        slot.lpage_info[2][slot.lpage_index(0x200, 2)] += 1
        fault(kvm, 0x200)
        slot.lpage_info[2][slot.lpage_index(0x200, 2)] -= 1
        kvm_mmu_notifier_invalidate_range(kvm, 0x200, 0x201)
        assert fault(kvm, 0x201) == RET_PF_FIXED
        level, spte = leaf_at(kvm, kvm.vcpus[0].root, 0x200)
        assert level == 2
        assert spte == 0x8600000000000BF7 | (slot.gfn_to_hva(0x200) & ~0xFFF), profile.name


# --- item 3: fast_page_fault

def _traced(kvm):
    events = []
    kvm.tracer = events.append
    return events


def test_present_read_fault_skips_the_fast_path(make_vm):
    """page_fault_can_be_fast: a present fault goes fast only if it is a write."""
    kvm = make_vm()
    fault(kvm, 0x200)
    events = _traced(kvm)
    assert fault(kvm, 0x200, write=False, present=True) == RET_PF_SPURIOUS
    assert not any(isinstance(e, FastPageFault) for e in events)
    stat = kvm.vcpus[0].stat
    assert (stat.pf_fast, stat.pf_spurious) == (0, 1)


def test_spurious_write_fault_counts_pf_fast(make_vm):
    kvm = make_vm()
    fault(kvm, 0x200)
    events = _traced(kvm)
    assert fault(kvm, 0x200, present=True) == RET_PF_SPURIOUS
    fast = [e for e in events if isinstance(e, FastPageFault)]
    assert [e.ret for e in fast] == [RET_PF_SPURIOUS]
    stat = kvm.vcpus[0].stat
    assert (stat.pf_fast, stat.pf_spurious, stat.pf_taken) == (1, 1, 2)


def test_fast_path_fixes_a_write_protected_huge_leaf_without_setting_d(make_vm):
    """Outside dirty logging a write-protected 2M leaf is made writable in place: only
    W changes (the CPU sets D on the write)."""
    kvm = make_vm(policy=Policy(eager_page_split=False))
    slot = kvm.memslots[0]
    root = kvm.vcpus[0].root
    fault(kvm, 0x200)
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    kvm_mmu_slot_apply_flags(kvm, slot, 0)
    leaf = next(it for it in for_each_tdp_pte(kvm, root, 0x200, 0x201) if it.level == 2)
    # Clean as the D-bit clearing path leaves it, so a D set by the fix would show.
    leaf.sp.spt[leaf.index] &= ~kvm.masks.shadow_dirty_mask
    level, wrprot = leaf_at(kvm, root, 0x200)
    assert level == 2 and not S.is_writable_pte(wrprot)
    assert S.is_mmu_writable_spte(kvm.masks, wrprot)
    assert fault(kvm, 0x3FF, present=True) == RET_PF_FIXED
    level, fixed = leaf_at(kvm, root, 0x200)
    assert level == 2 and fixed == wrprot | S.PT_WRITABLE_MASK
    assert kvm.vcpus[0].stat.pf_fast == 1


def test_fast_path_leaves_dirty_logged_huge_leaf_to_the_slow_path(make_vm):
    kvm = make_vm(policy=Policy(eager_page_split=False))
    slot = kvm.memslots[0]
    fault(kvm, 0x200)
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    events = _traced(kvm)
    assert fault(kvm, 0x3FF, present=True) == RET_PF_FIXED
    assert [e.ret for e in events if isinstance(e, FastPageFault)] == [RET_PF_INVALID]
    assert kvm.vcpus[0].stat.pf_fast == 0
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x3FF)[0] == 1  # split, mapped 4K, logged
    assert slot.dirty_bitmap[0x3FF >> 3] == 0x80


# --- item 4: where the fault stats are counted

def test_stats_counted_in_kvm_mmu_page_fault_since_6_11(make_vm):
    err = ept_violation_error_code(write=True)
    for profile, prefetched in ((KERNEL_6_18_HP_V3, (0, 0)), (KERNEL_6_1, (0, 1))):
        kvm = make_vm(profile=profile)
        stat = kvm.vcpus[0].stat
        # kvm_tdp_map_page / async #PF call kvm_mmu_do_page_fault(prefetch=true) directly.
        assert kvm_mmu_do_page_fault(kvm.vcpus[0], 0x200 << 12, err, prefetch=True) \
            == RET_PF_FIXED
        assert (stat.pf_taken, stat.pf_fixed) == prefetched, profile.name
        assert kvm_mmu_page_fault(kvm.vcpus[0], 0x400 << 12, err) == RET_PF_FIXED
        assert (stat.pf_taken, stat.pf_fixed) == (1, prefetched[1] + 1), profile.name


# --- item 8: tdx_handle_ept_violation's unexpected-pending check, faultin paths,
#     NX lists per MMU type, kvm_mmu_max_gfn

def _finalized_td():
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=1))
    assert tdx.tdx_td_finalize(kvm) == 0
    return kvm, tdx


def test_pending_violation_with_permissions_is_not_fatal():
    """tdx_is_sept_violation_unexpected_pending: only a PENDING_EPT_VIOLATION whose exit
    qualification shows no PROT bits and no EXEC_FOR_RING3_LIN kills the VM."""
    pending = make_eeq(EEQ_TYPE_PENDING_EPT_VIOLATION, 0, 0, 0, True)
    for qual in (EPT_VIOLATION_ACC_WRITE | EPT_VIOLATION_PROT_READ,
                 EPT_VIOLATION_ACC_READ | EPT_VIOLATION_EXEC_FOR_RING3_LIN):
        kvm, tdx = _finalized_td()
        assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], 0x200000, pending, qual) \
            == RET_PF_FIXED
        assert not kvm.vm_dead
    kvm, tdx = _finalized_td()
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], 0x200000, pending,
                                        EPT_VIOLATION_ACC_WRITE) == -EIO
    assert kvm.vm_dead and not kvm.vm_bugged


def test_invalid_memslot_retries_and_prefault_gets_eagain(make_vm):
    kvm = make_vm()
    slot = kvm.memslots[0]
    slot.flags |= KVM_MEMSLOT_INVALID  # kvm_invalidate_memslot during delete/move
    err = ept_violation_error_code(write=True)
    assert kvm_mmu_page_fault(kvm.vcpus[0], 0x200 << 12, err) == RET_PF_RETRY
    assert kvm_mmu_do_page_fault(kvm.vcpus[0], 0x200 << 12, err, prefetch=True) == -EAGAIN
    assert kvm.stat.pages == [0, 0, 0]


def test_tdx_local_retry_stops_on_an_invalid_memslot():
    kvm, tdx = _finalized_td()
    kvm.memslots[0].flags |= KVM_MEMSLOT_INVALID
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], 0x200000) == RET_PF_RETRY
    assert tdx.stats.local_retries == 0


def test_write_to_read_only_slot_is_emulated_without_an_spte(make_vm):
    kvm = make_vm()
    kvm.memslots[0].flags |= KVM_MEM_READONLY
    assert fault(kvm, 0x200) == RET_PF_EMULATE  # KVM_PFN_ERR_RO_FAULT
    assert kvm.stat.pages == [0, 0, 0]
    assert kvm.vcpus[0].stat.pf_emulate == 1 and kvm.vcpus[0].stat.pf_mmio_spte_created == 0
    assert fault(kvm, 0x200, write=False) == RET_PF_FIXED  # reads map read-only
    assert not S.is_writable_pte(leaf_at(kvm, kvm.vcpus[0].root, 0x200)[1])


def test_nx_huge_page_lists_per_mmu_type():
    for profile, tdp_to_zap, shared in ((KERNEL_6_18_HP_V3, 1, False), (KERNEL_6_12, 2, True)):
        kvm = create_vm(VmConfig(profile=profile), Policy(nx_huge_pages=True))
        fault(kvm, 0x200, exec=True)  # the 4K table under the 2M frame is tracked
        shadow_sp = KvmMmuPage(kvm.alloc_pt_pfn(), kvm.profile.SHADOW_NONPRESENT_VALUE)
        track_possible_nx_huge_page(kvm, shadow_sp, KVM_SHADOW_MMU)
        assert kvm.stat.nx_lpage_splits == 2
        assert (possible_nx_huge_pages(kvm, KVM_TDP_MMU)
                is possible_nx_huge_pages(kvm, KVM_SHADOW_MMU)) is shared
        assert nx_huge_pages_to_zap(kvm, KVM_TDP_MMU, 1) == tdp_to_zap, profile.name
    # 6.18: recovery of the TDP MMU list leaves the shadow MMU's page tracked.
    kvm = create_vm(VmConfig(), Policy(nx_huge_pages=True))
    fault(kvm, 0x200, exec=True)
    shadow_sp = KvmMmuPage(kvm.alloc_pt_pfn(), kvm.profile.SHADOW_NONPRESENT_VALUE)
    track_possible_nx_huge_page(kvm, shadow_sp, KVM_SHADOW_MMU)
    assert kvm_recover_nx_huge_pages(kvm, ratio=1) == 1
    assert kvm.stat.nx_lpage_splits == 1 and len(possible_nx_huge_pages(kvm, KVM_SHADOW_MMU)) == 1


def test_max_gfn_comes_from_host_maxphyaddr(make_vm):
    kvm = make_vm(host_maxphyaddr=46)
    assert tdp_mmu_max_gfn_exclusive(kvm) == 1 << 34  # not the 4-level walk's 1 << 36
    # A no-slot gfn above host.MAXPHYADDR is emulated without an MMIO SPTE.
    assert fault(kvm, 1 << 34) == RET_PF_EMULATE
    assert kvm.vcpus[0].stat.pf_mmio_spte_created == 0
    assert fault(kvm, (1 << 34) - 1) == RET_PF_EMULATE
    assert kvm.vcpus[0].stat.pf_mmio_spte_created == 1
    assert tdp_mmu_max_gfn_exclusive(make_vm()) == 1 << 40
