"""Scenario tests of the fault path: exact SPTE states, stats, hooks and flushes."""

from kvm_helpers import fault, force_4k, leaf_at, table_4k_of, unforce_4k

from tdpsim.model import spte as S
from tdpsim.model.kvm import RecordingExternalOps
from tdpsim.model.kvm_main import kvm_recover_nx_huge_pages
from tdpsim.model.mmu_internal import (
    POISON_FREE_SPTE, RET_PF_FIXED, RET_PF_SPURIOUS, SP_FREED, SP_RCU_PENDING,
)
from tdpsim.model.policy import Policy
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.tdp_iter import spte_to_child_sp

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs


def test_private_2m_fault_maps_one_2m_leaf(make_vm):
    kvm = make_vm(tdx=True)
    ops = kvm.x86_ops
    assert fault(kvm, 0x400) == RET_PF_FIXED
    level, spte = leaf_at(kvm, kvm.vcpus[0].mirror_root, 0x400)
    assert level == 2 and S.is_large_pte(spte)
    assert kvm.stat.pages == [0, 1, 0]
    # Two tables linked (the 1G and 2M levels' tables), then the 2M leaf handed to TDX.
    assert [c[0] for c in ops.calls] == ["link_external_spt", "link_external_spt",
                                          "set_external_spte"]
    assert ops.calls[2][1:3] == (0x400, 2)
    assert kvm.tdp_mmu_pages == 2
    # The pfn is guest_memfd's 2M-aligned page for the frame.
    assert S.spte_to_pfn(spte) == kvm.memslots[0].gmem.pfn_base + 0x400
    # A second vCPU touching the same frame finds it mapped.
    assert fault(kvm, 0x5FF) == RET_PF_SPURIOUS


def test_upstream_private_is_4k_only(make_vm):
    kvm = make_vm(tdx=True, ops=RecordingExternalOps(private_max_level=1))
    fault(kvm, 0x400)
    assert kvm.stat.pages == [1, 0, 0]


def _populate_4k_then_fault_2m(kvm, root, gfns=(0x200, 0x201, 0x202, 0x203), target=0x207):
    force_4k(kvm, gfns[0])
    for g in gfns:
        assert fault(kvm, g) == RET_PF_FIXED
    assert kvm.stat.pages[0] >= len(gfns) and kvm.stat.pages[1:] == [0, 0]
    level, _ = leaf_at(kvm, root, gfns[0])
    assert level == 1
    unforce_4k(kvm, gfns[0])
    return fault(kvm, target)


def test_direct_root_promotes(make_vm):
    kvm = make_vm()
    root = kvm.vcpus[0].root
    force_4k(kvm, 0x200)
    fault(kvm, 0x200)
    pt = table_4k_of(kvm, root, 0x200)
    unforce_4k(kvm, 0x200)
    assert kvm.tdp_mmu_pages == 3
    kvm.rcu.rcu_read_lock()  # a concurrent RCU reader holds the grace period open
    r = _populate_4k_then_fault_2m(kvm, root, gfns=(0x201, 0x202, 0x203))
    assert r == RET_PF_FIXED
    assert pt.rcu_state == SP_RCU_PENDING and pt.spt_pfn in kvm.sp_by_pfn
    assert set(pt.spt) == {DEFAULT_PROFILE.FROZEN_SPTE}  # its entries were frozen on the way out
    kvm.rcu.rcu_read_unlock()
    level, spte = leaf_at(kvm, root, 0x200)
    assert level == 2 and S.is_large_pte(spte)
    assert S.spte_to_pfn(spte) == (0x200 + (64 << 30 >> 12))  # 2M-aligned host pfn
    assert kvm.stat.pages == [0, 1, 0]  # the 4 small leaves went with their table
    assert kvm.tdp_mmu_pages == 2  # the 4K table was unlinked...
    assert pt.spt_pfn not in kvm.sp_by_pfn  # ...and freed after the grace period
    assert pt.rcu_state == SP_FREED and set(pt.spt) == {POISON_FREE_SPTE}
    assert kvm.stat.remote_tlb_flush_requests == 1  # the stale 4K translations flushed
    assert kvm.vm_bugged is False


def test_mirror_root_with_seed_patch_stays_4k(make_vm):
    kvm = make_vm(tdx=True, policy=Policy(mirror_promotion="disallowed"))
    root = kvm.vcpus[0].mirror_root
    r = _populate_4k_then_fault_2m(kvm, root)
    assert r == RET_PF_FIXED
    assert leaf_at(kvm, root, 0x207)[0] == 1
    assert kvm.stat.pages == [5, 0, 0]
    assert kvm.stat.remote_tlb_flush_requests == 0
    assert not kvm.vm_bugged and not kvm.bugs
    assert all(c[0] != "remove_external_spte" for c in kvm.x86_ops.calls)


def test_mirror_root_unpatched_hits_kvm_bug_on(make_vm):
    """HP-v3 09/24 without the SEED patch: set_external_spte_present's KVM_BUG_ON fires
    but does not return; no hook runs for table → huge leaf, the 2M SPTE is written and
    handle_removed_pt tears the 4K table down under the *shared* lock."""
    kvm = make_vm(tdx=True, policy=Policy(mirror_promotion="unpatched"))
    root = kvm.vcpus[0].mirror_root
    force_4k(kvm, 0x200)
    for g in (0x200, 0x201, 0x202, 0x203):
        fault(kvm, g)
    pt = table_4k_of(kvm, root, 0x200)
    unforce_4k(kvm, 0x200)
    calls_before = len(kvm.x86_ops.calls)
    kvm.rcu.rcu_read_lock()  # a concurrent RCU reader keeps the removed table unfreed
    assert fault(kvm, 0x207) == RET_PF_FIXED
    calls = kvm.x86_ops.calls[calls_before:]
    # No set_external_spte (no AUG at 2M): the transition matched no hook.
    assert [c[0] for c in calls] == ["remove_external_spte"] * 512 + ["free_external_spt"]
    # remove_external_spte filters only non-leaves, so all 512 4K entries reach TDX,
    # present or not (the shared path froze every one).
    assert [c[1] for c in calls[:512]] == list(range(0x200, 0x400))
    assert sum(S.is_shadow_present_pte(c[3]) for c in calls[:512]) == 4
    level, spte = leaf_at(kvm, root, 0x207)
    assert level == 2 and S.is_large_pte(spte)
    assert kvm.stat.pages == [0, 1, 0]
    assert set(pt.spt) == {DEFAULT_PROFILE.FROZEN_SPTE}
    kvm.rcu.rcu_read_unlock()
    assert pt.rcu_state == SP_FREED
    assert [(b.function, b.message.split(" (")[0]) for b in kvm.bugs] == [
        ("set_external_spte_present", "invalid mirror SPTE transition"),
        ("handle_removed_pt", "mirror page table removed under the shared mmu_lock")]
    assert kvm.bug_counts[("handle_removed_pt",
                           "mirror page table removed under the shared mmu_lock")] == 512
    # remove_external_spte's lockdep_assert_held_write splats (the read lock is held).
    assert [w.function for w in kvm.warnings] == ["lockdep"]


def test_nx_exec_fault_maps_4k_and_blocks_promotion(make_vm):
    kvm = make_vm(policy=Policy(nx_huge_pages=True))
    root = kvm.vcpus[0].root
    assert fault(kvm, 0x600, exec=True, write=False) == RET_PF_FIXED
    assert leaf_at(kvm, root, 0x600)[0] == 1
    sp = spte_to_child_sp(kvm, root.spt[0])  # 1G table
    table_2m = spte_to_child_sp(kvm, sp.spt[0])
    pt = spte_to_child_sp(kvm, table_2m.spt[3])
    assert pt.nx_huge_page_disallowed and pt.possible_nx_huge_page
    assert kvm.stat.nx_lpage_splits == 1
    # A later data fault in the same 2M range must not promote over the NX table.
    assert fault(kvm, 0x601) == RET_PF_FIXED
    assert leaf_at(kvm, root, 0x601)[0] == 1
    assert kvm.stat.pages == [2, 0, 0]
    # Elsewhere data faults still map 2M, without X (the workaround strips it).
    fault(kvm, 0x800)
    level, spte = leaf_at(kvm, root, 0x800)
    assert level == 2 and not S.is_executable_pte(EPT, spte)
    # NX recovery zaps the tracked table; the next data fault maps 2M again.
    assert kvm_recover_nx_huge_pages(kvm, ratio=1) == 1
    assert kvm.stat.nx_lpage_splits == 0 and kvm.stat.pages == [0, 1, 0]
    fault(kvm, 0x601)
    assert leaf_at(kvm, root, 0x601)[0] == 2 and kvm.stat.pages == [0, 2, 0]


def test_nx_off_exec_fault_maps_huge(make_vm):
    kvm = make_vm(policy=Policy(nx_huge_pages=False))
    fault(kvm, 0x600, exec=True, write=False)
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, 0x600)
    assert level == 2 and S.is_executable_pte(EPT, spte)


def test_split_children_match_make_small_spte(make_vm):
    """tdp_mmu_split_huge_page fills the table arithmetically; it must equal 512 calls of
    make_small_spte (here with NX huge pages, so 4K children get X back)."""
    from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags
    from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
    kvm = make_vm(policy=Policy(nx_huge_pages=True))
    fault(kvm, 0x400)
    huge = leaf_at(kvm, kvm.vcpus[0].root, 0x400)[1]
    kvm.policy = kvm.policy.with_(eager_page_split=True)
    kvm_mmu_slot_apply_flags(kvm, kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)
    pt = table_4k_of(kvm, kvm.vcpus[0].root, 0x400)
    expect = [S.make_small_spte(EPT, huge, 1, i, S.ACC_ALL, True) & ~S.PT_WRITABLE_MASK
              for i in range(512)]
    assert list(pt.spt) == expect  # wrprot after the split clears W
