"""Huge-page decisions of the MMU — the part of ``arch/x86/kvm/mmu/mmu.c`` that the TDP
MMU calls back into: ``kvm_mmu_hugepage_adjust``, ``kvm_mmu_max_mapping_level``,
``kvm_gmem_max_mapping_level``, ``disallowed_hugepage_adjust`` and NX huge-page tracking.

The fault entry points of mmu.c live in ``mmu_fault.py`` and the memory-attribute hooks in
``mmu_memattr.py`` (split only so that ``tdp_mmu.py`` can import this module without a
cycle).

Simplification: ``kvm_gmem_max_mapping_level`` without a fault (huge-page recovery) asks
guest_memfd for the folio order, as the kernel's TODO says it will, instead of WARNing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Optional

from .memslot import KvmMemorySlot, kvm_max_level_for_order
from .mmu_internal import KvmPageFault, is_error_noslot_pfn
from .spte import (
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_4K,
    PG_LEVEL_NUM,
    is_large_pte,
    is_shadow_present_pte,
)

from .tdp_iter import spte_to_child_sp

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu
    from .mmu_internal import KvmMmuPage


def kvm_gmem_max_mapping_level(kvm: "Kvm", fault: Optional[KvmPageFault],
                               slot: KvmMemorySlot, gfn: int, is_private: bool) -> int:
    """``kvm_gmem_max_mapping_level`` (6.18): the folio order guest_memfd gave the fault,
    capped by the vendor hook (TDX: 4K upstream, 2M with HP-v3 once RUNNABLE; 0 = none)."""
    if fault is not None:
        pfn, max_level = fault.pfn, fault.max_level
    else:
        pfn, order = slot.gmem.kvm_gmem_get_pfn(gfn - slot.base_gfn + slot.gmem_offset)
        max_level = kvm_max_level_for_order(order)
    if max_level == PG_LEVEL_4K:
        return max_level
    coco_level = kvm.x86_ops.gmem_max_mapping_level(kvm, pfn, is_private)
    if coco_level:
        max_level = min(max_level, coco_level)
    return max_level


def kvm_mmu_max_mapping_level(kvm: "Kvm", fault: Optional[KvmPageFault],
                              slot: KvmMemorySlot, gfn: int) -> int:
    """``kvm_mmu_max_mapping_level`` (6.18 form): the largest level lpage_info allows,
    limited by the host (THP/hugetlb for shared memory, guest_memfd for private)."""
    kvm.mmu_lock.lockdep_assert_held()
    if fault is not None:
        max_level, is_private = fault.max_level, fault.is_private
    else:
        max_level, is_private = PG_LEVEL_NUM, kvm.kvm_mem_is_private(gfn)
    max_level = min(max_level, kvm.policy.max_huge_page_level)
    while max_level > PG_LEVEL_4K:
        if not slot.disallow_lpage(gfn, max_level):
            break
        max_level -= 1
    if max_level == PG_LEVEL_4K:
        return PG_LEVEL_4K
    if is_private or kvm_memslot_is_gmem_only(slot):
        host_level = kvm_gmem_max_mapping_level(kvm, fault, slot, gfn, is_private)
    else:
        host_level = slot.backing.host_pfn_mapping_level(slot.gfn_to_hva(gfn))
    return min(host_level, max_level)


def kvm_memslot_is_gmem_only(slot: KvmMemorySlot) -> bool:
    """Slots whose shared memory also comes from guest_memfd (gmem mmap); not modelled,
    so always false."""
    return False


def kvm_mmu_hugepage_adjust(vcpu: "KvmVcpu", fault: KvmPageFault) -> None:
    """``kvm_mmu_hugepage_adjust``: pick the goal level and align the pfn to it."""
    slot = fault.slot
    fault.huge_page_disallowed = fault.exec and fault.nx_huge_page_workaround_enabled
    if fault.max_level == PG_LEVEL_4K:
        return
    if is_error_noslot_pfn(fault.pfn):
        return
    if slot.kvm_slot_dirty_track_enabled():
        return
    # Capture the requested level before the NX workaround, for precise accounting.
    fault.req_level = kvm_mmu_max_mapping_level(vcpu.kvm, fault, slot, fault.gfn)
    if fault.req_level == PG_LEVEL_4K or fault.huge_page_disallowed:
        return
    fault.goal_level = fault.req_level
    mask = KVM_PAGES_PER_HPAGE(fault.goal_level) - 1
    vcpu.kvm.WARN_ON_ONCE((fault.gfn & mask) != (fault.pfn & mask),
                          "kvm_mmu_hugepage_adjust", "gfn and pfn not congruent")
    fault.pfn &= ~mask


def disallowed_hugepage_adjust(kvm: "Kvm", fault: KvmPageFault, spte: int,
                               cur_level: int, is_mirror: bool = False) -> bool:
    """``disallowed_hugepage_adjust``: a table exists where the fault wants a huge leaf
    and it must stay — its child SP is NX-disallowed or (the seed patch, in the form
    ``policy.mirror_promotion`` names) a mirror page — so go down a level, patching the
    next 9 gfn bits back into the pfn.  Returns whether it lowered the goal (the kernel's
    is void; the model's callers count it).

    The mirror test as posted:

    RFC v1 (``rfc-v1``, <20250424030634.369-1-yan.y.zhao@intel.com>), with ``is_mirror``
    passed in by ``kvm_tdp_mmu_map`` and ``false`` by ``direct_map``/``FNAME(fetch)``::

        -void disallowed_hugepage_adjust(struct kvm_page_fault *fault, u64 spte, int cur_level)
        +void disallowed_hugepage_adjust(struct kvm_page_fault *fault, u64 spte, int cur_level, bool is_mirror)
        -	    spte_to_child_sp(spte)->nx_huge_page_disallowed) {
        +	    (spte_to_child_sp(spte)->nx_huge_page_disallowed || is_mirror)) {

    RFC v2 / v3 06/24 (``v3-posted``) and Sean's rewrite (``disallowed``, the seed), the
    same hunk in both::

        -	    spte_to_child_sp(spte)->nx_huge_page_disallowed) {
        +	    ((spte_to_child_sp(spte)->nx_huge_page_disallowed) ||
        +	     is_mirror_sp(spte_to_child_sp(spte)))) {
    """
    if (cur_level > PG_LEVEL_4K and cur_level == fault.goal_level
            and is_shadow_present_pte(spte) and not is_large_pte(spte)):
        child = spte_to_child_sp(kvm, spte)
        if child.nx_huge_page_disallowed or _mirror_disallows(kvm, child, is_mirror):
            page_mask = KVM_PAGES_PER_HPAGE(cur_level) - KVM_PAGES_PER_HPAGE(cur_level - 1)
            fault.pfn |= fault.gfn & page_mask
            fault.goal_level -= 1
            return True
    return False


def _mirror_disallows(kvm: "Kvm", child: "KvmMmuPage", is_mirror: bool) -> bool:
    """The seed patch's clause inside ``disallowed_hugepage_adjust``, per variant."""
    variant = kvm.policy.mirror_promotion
    if variant == "rfc-v1":
        return is_mirror
    if variant in ("disallowed", "v3-posted"):
        return child.role.is_mirror
    return False


# enum kvm_mmu_type (mmu_internal.h, 6.18).
KVM_SHADOW_MMU: Final = 0
KVM_TDP_MMU: Final = 1


def possible_nx_huge_pages(kvm: "Kvm", mmu_type: int) -> list:
    """``kvm->arch.possible_nx_huge_pages[mmu_type].pages`` (6.18); before it the two MMU
    types shared one list (``KernelProfile.possible_nx_huge_pages_per_mmu_type``)."""
    if not kvm.profile.possible_nx_huge_pages_per_mmu_type:
        mmu_type = KVM_SHADOW_MMU
    return kvm.possible_nx_huge_pages[mmu_type]


def track_possible_nx_huge_page(kvm: "Kvm", sp: "KvmMmuPage", mmu_type: int) -> None:
    """``track_possible_nx_huge_page``: the SP is the only thing stopping a huge page; NX
    recovery may zap it later."""
    if sp.possible_nx_huge_page:
        return
    kvm.stat.nx_lpage_splits += 1
    sp.possible_nx_huge_page = True
    possible_nx_huge_pages(kvm, mmu_type).append(sp)


def untrack_possible_nx_huge_page(kvm: "Kvm", sp: "KvmMmuPage", mmu_type: int) -> None:
    """``untrack_possible_nx_huge_page``."""
    if not sp.possible_nx_huge_page:
        return
    kvm.stat.nx_lpage_splits -= 1
    sp.possible_nx_huge_page = False
    possible_nx_huge_pages(kvm, mmu_type).remove(sp)
