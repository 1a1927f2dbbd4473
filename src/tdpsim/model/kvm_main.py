"""Memslot updates, memory attributes, MMU invalidation and NX recovery — the generic
paths of ``virt/kvm/kvm_main.c`` (``kvm_set_memory_region``, ``kvm_vm_set_mem_attributes``,
``kvm_handle_gfn_range``, ``kvm_mmu_invalidate_begin/end``, guest_memfd invalidation) with
the x86 hooks they call from ``arch/x86/kvm/x86.c`` and ``mmu.c``
(``kvm_mmu_slot_apply_flags``, ``kvm_arch_pre/post_set_memory_attributes``,
``kvm_mmu_init_memslot_memory_attributes``, ``kvm_recover_nx_huge_pages``).

Simplifications (one line each):
- One memslot per attribute-range call: ranges must not straddle slots.
- ``slots_lock`` is not modelled: these paths are always called from one thread.
- Dirty logging assumes no PML (``cpu_dirty_log_size`` 0): enabling write-protects at 4K.
- HP-v3's ``kvm_split_cross_boundary_leafs`` -ENOMEM cannot happen (allocation never fails).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .memslot import (
    KVM_LPAGE_GUEST_INHIBIT_FLAG,
    KVM_LPAGE_MIXED_FLAG,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KvmMemorySlot,
)
from .spte import (
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    gfn_round_for_level,
)
from .tdp_mmu import (
    KVM_FILTER_PRIVATE,
    KVM_FILTER_SHARED,
    kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs,
    kvm_tdp_mmu_invalidate_roots,
    kvm_tdp_mmu_recover_huge_pages,
    kvm_tdp_mmu_try_split_huge_pages,
    kvm_tdp_mmu_unmap_gfn_range,
    kvm_tdp_mmu_wrprot_slot,
    kvm_tdp_mmu_zap_collapsible_sptes,
    kvm_tdp_mmu_zap_invalidated_roots,
    kvm_tdp_mmu_zap_possible_nx_huge_page,
    KVM_DIRECT_ROOTS,
)
from .mmu import untrack_possible_nx_huge_page

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm

INVALID_GPA = -1


class KvmUserError(ValueError):
    """An ioctl argument the kernel would reject with -EINVAL / -EEXIST."""


# --- MMU invalidation ----------------------------------------------------------------------

def kvm_mmu_invalidate_begin(kvm: "Kvm") -> None:
    """``kvm_mmu_invalidate_begin`` (write lock): faults covering the range must retry."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.mmu_invalidate_in_progress += 1
    if kvm.mmu_invalidate_in_progress == 1:
        kvm.mmu_invalidate_range_start = INVALID_GPA
        kvm.mmu_invalidate_range_end = INVALID_GPA


def kvm_mmu_invalidate_range_add(kvm: "Kvm", start: int, end: int) -> None:
    """``kvm_mmu_invalidate_range_add``: widen the in-flight range."""
    kvm.WARN_ON_ONCE(not kvm.mmu_invalidate_in_progress, "kvm_mmu_invalidate_range_add",
                     "no invalidation in progress")
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end
    else:
        kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
        kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)


def kvm_mmu_invalidate_end(kvm: "Kvm") -> None:
    """``kvm_mmu_invalidate_end``: bump the sequence so faults that started before retry."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.mmu_invalidate_seq += 1
    kvm.mmu_invalidate_in_progress -= 1
    kvm.KVM_BUG_ON(kvm.mmu_invalidate_in_progress < 0, "kvm_mmu_invalidate_end",
                   "unbalanced invalidation")


# --- lpage_info helpers (mmu.c) ------------------------------------------------------------

def hugepage_test_mixed(slot: KvmMemorySlot, gfn: int, level: int) -> bool:
    return bool(slot.disallow_lpage(gfn, level) & KVM_LPAGE_MIXED_FLAG)


def hugepage_set_mixed(slot: KvmMemorySlot, gfn: int, level: int) -> None:
    slot.lpage_info[level][slot.lpage_index(gfn, level)] |= KVM_LPAGE_MIXED_FLAG


def hugepage_clear_mixed(slot: KvmMemorySlot, gfn: int, level: int) -> None:
    slot.lpage_info[level][slot.lpage_index(gfn, level)] &= ~KVM_LPAGE_MIXED_FLAG


def hugepage_test_guest_inhibit(slot: KvmMemorySlot, gfn: int, level: int) -> bool:
    """HP-v3 ``hugepage_test_guest_inhibit``."""
    return bool(slot.disallow_lpage(gfn, level) & KVM_LPAGE_GUEST_INHIBIT_FLAG)


def hugepage_set_guest_inhibit(slot: KvmMemorySlot, gfn: int, level: int) -> None:
    """HP-v3 ``hugepage_set_guest_inhibit``: one-way, there is no clear API."""
    slot.lpage_info[level][slot.lpage_index(gfn, level)] |= KVM_LPAGE_GUEST_INHIBIT_FLAG


def kvm_get_memory_attributes(kvm: "Kvm", gfn: int) -> int:
    return KVM_MEMORY_ATTRIBUTE_PRIVATE if kvm.kvm_mem_is_private(gfn) else 0


def kvm_range_has_memory_attributes(kvm: "Kvm", start: int, end: int, attrs: int) -> bool:
    """``kvm_range_has_memory_attributes(kvm, start, end, ~0, attrs)``."""
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:
        return kvm.mem_attr_private.covers(start, end)
    return not kvm.mem_attr_private.intersects(start, end)


def hugepage_has_attrs(kvm: "Kvm", slot: KvmMemorySlot, gfn: int, level: int, attrs: int) -> bool:
    """``hugepage_has_attrs``: 2M checks the attribute range; larger levels require every
    sub-frame to be non-mixed with the same attribute (so lower levels go first)."""
    end = gfn + KVM_PAGES_PER_HPAGE(level)
    if level == PG_LEVEL_2M:
        return kvm_range_has_memory_attributes(kvm, gfn, end, attrs)
    step = KVM_PAGES_PER_HPAGE(level - 1)
    return all(not hugepage_test_mixed(slot, g, level - 1)
               and attrs == kvm_get_memory_attributes(kvm, g) for g in range(gfn, end, step))


def kvm_mmu_init_memslot_memory_attributes(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_mmu_init_memslot_memory_attributes``: MIXED for every huge frame inside the
    slot whose gfns do not share one attribute."""
    for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
        nr = KVM_PAGES_PER_HPAGE(level)
        start = gfn_round_for_level(slot.base_gfn + nr - 1, level)
        for gfn in range(start, slot.end_gfn - nr + 1, nr):
            attrs = kvm_get_memory_attributes(kvm, gfn)
            if hugepage_has_attrs(kvm, slot, gfn, level, attrs):
                hugepage_clear_mixed(slot, gfn, level)
            else:
                hugepage_set_mixed(slot, gfn, level)


# --- memslots -------------------------------------------------------------------------------

def kvm_set_memory_region(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``KVM_SET_USER_MEMORY_REGION2`` creating a slot (KVM_MR_CREATE)."""
    for other in kvm.memslots:
        if other.base_gfn < slot.end_gfn and slot.base_gfn < other.end_gfn:
            raise KvmUserError(f"memslot {slot.id} overlaps memslot {other.id}")
    if kvm.kvm_has_mirrored_tdp():
        kvm_mmu_init_memslot_memory_attributes(kvm, slot)
    kvm.memslots.append(slot)
    kvm.memslots.sort(key=lambda s: s.base_gfn)
    kvm.memslots_generation += 2  # bit 0 marks an update in progress


def kvm_mmu_slot_apply_flags(kvm: "Kvm", slot: KvmMemorySlot, new_flags: int) -> None:
    """``KVM_MR_FLAGS_ONLY`` → ``kvm_mmu_slot_apply_flags`` (x86.c): enabling dirty logging
    eagerly splits and write-protects; disabling recovers huge pages."""
    old_flags = slot.flags
    if slot.gmem is not None and new_flags & KVM_MEM_LOG_DIRTY_PAGES:
        raise KvmUserError(f"memslot {slot.id}: guest_memfd slots cannot log dirty pages")
    slot.flags = new_flags
    kvm.memslots_generation += 2
    if not new_flags & KVM_MEM_LOG_DIRTY_PAGES:
        if old_flags & KVM_MEM_LOG_DIRTY_PAGES:
            if kvm.profile.recover_huge_pages_in_place:
                kvm_mmu_recover_huge_pages(kvm, slot)
            else:
                kvm_mmu_zap_collapsible_sptes(kvm, slot)
        return
    if kvm.WARN_ON_ONCE(bool(old_flags & KVM_MEM_LOG_DIRTY_PAGES), "kvm_mmu_slot_apply_flags",
                        "dirty logging already enabled"):
        return
    kvm.mmu_lock.read_lock()
    if kvm.policy.eager_page_split:
        # kvm_mmu_slot_try_split_huge_pages()
        kvm_tdp_mmu_try_split_huge_pages(kvm, slot, slot.base_gfn, slot.end_gfn,
                                         PG_LEVEL_4K, True)
    kvm_tdp_mmu_wrprot_slot(kvm, slot, PG_LEVEL_4K)  # kvm_mmu_slot_remove_write_access
    kvm.mmu_lock.read_unlock()
    kvm.kvm_flush_remote_tlbs_memslot(slot)


def kvm_mmu_recover_huge_pages(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_mmu_recover_huge_pages`` (mmu.c, v6.13+): in place, under the read lock."""
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_recover_huge_pages(kvm, slot)
    kvm.mmu_lock.read_unlock()


def kvm_mmu_zap_collapsible_sptes(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_mmu_zap_collapsible_sptes`` (mmu.c, up to v6.12): zap, under the read lock;
    the guest's next accesses fault the huge pages back in."""
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot)
    kvm.mmu_lock.read_unlock()


def kvm_mmu_zap_all_fast(kvm: "Kvm") -> None:
    """``kvm_mmu_zap_all_fast`` (memslot deletion/move): invalidate direct roots only;
    mirror roots live until the VM is destroyed."""
    kvm.mmu_lock.write_lock()
    kvm_tdp_mmu_invalidate_roots(kvm, KVM_DIRECT_ROOTS)
    kvm.mmu_lock.write_unlock()
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_zap_invalidated_roots(kvm, True)
    kvm.mmu_lock.read_unlock()


# --- memory attributes -----------------------------------------------------------------------

def kvm_arch_pre_set_memory_attributes(kvm: "Kvm", slot: KvmMemorySlot, start: int, end: int,
                                       attrs: int) -> bool:
    """``kvm_arch_pre_set_memory_attributes`` (write lock): keep faults off head/tail huge
    frames that straddle the range, then unmap the *old* attribute's mappings.  HP-v3
    first splits mirror leaves crossing the range when converting to shared."""
    for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
        nr = KVM_PAGES_PER_HPAGE(level)
        head = gfn_round_for_level(start, level)
        tail = gfn_round_for_level(end - 1, level)
        if ((head != start or head + nr > end) and head >= slot.base_gfn
                and head + nr <= slot.end_gfn and not hugepage_test_mixed(slot, head, level)):
            kvm_mmu_invalidate_range_add(kvm, head, head + nr)
        if tail == head:
            continue
        if (tail + nr > end and tail + nr <= slot.end_gfn
                and not hugepage_test_mixed(slot, tail, level)):
            kvm_mmu_invalidate_range_add(kvm, tail, tail + nr)
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:
        attr_filter = KVM_FILTER_SHARED
    else:
        attr_filter = KVM_FILTER_PRIVATE
        kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(kvm, start, end, attr_filter, False)
    return kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, attr_filter, True, False)


def kvm_arch_post_set_memory_attributes(kvm: "Kvm", slot: KvmMemorySlot, start: int,
                                        end: int, attrs: int) -> None:
    """``kvm_arch_post_set_memory_attributes``: recompute MIXED level by level (upper
    levels use the lower levels' results) for the frames the range touches."""
    kvm.mmu_lock.lockdep_assert_held_write()
    for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
        nr = KVM_PAGES_PER_HPAGE(level)
        gfn = gfn_round_for_level(start, level)
        if gfn != start or gfn + nr > end:
            if gfn >= slot.base_gfn and gfn + nr <= slot.end_gfn:
                _update_mixed(kvm, slot, gfn, level, attrs)
            gfn += nr
        while gfn + nr <= end:
            hugepage_clear_mixed(slot, gfn, level)
            gfn += nr
        if gfn < end and gfn + nr <= slot.end_gfn:
            _update_mixed(kvm, slot, gfn, level, attrs)


def _update_mixed(kvm: "Kvm", slot: KvmMemorySlot, gfn: int, level: int, attrs: int) -> None:
    if hugepage_has_attrs(kvm, slot, gfn, level, attrs):
        hugepage_clear_mixed(slot, gfn, level)
    else:
        hugepage_set_mixed(slot, gfn, level)


def kvm_vm_set_mem_attributes(kvm: "Kvm", start: int, end: int, attrs: int) -> None:
    """``KVM_SET_MEMORY_ATTRIBUTES`` → ``kvm_vm_set_mem_attributes``: pre hook (unmap the
    old side) inside an MMU invalidation, store the attributes, post hook (MIXED)."""
    if start >= end:
        raise KvmUserError(f"empty attribute range [{start:#x}, {end:#x})")
    if kvm_range_has_memory_attributes(kvm, start, end, attrs):
        return  # nothing to do
    slot = kvm.gfn_to_memslot(start)
    if slot is not None and end > slot.end_gfn:
        raise KvmUserError(f"attribute range [{start:#x}, {end:#x}) straddles memslot {slot.id}")
    if slot is not None:
        kvm.mmu_lock.write_lock()
        kvm_mmu_invalidate_begin(kvm)
        kvm_mmu_invalidate_range_add(kvm, start, end)
        if kvm_arch_pre_set_memory_attributes(kvm, slot, start, end, attrs):
            kvm.kvm_flush_remote_tlbs()
        kvm.mmu_lock.write_unlock()
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:
        kvm.mem_attr_private.add(start, end)
    else:
        kvm.mem_attr_private.remove(start, end)
    if slot is not None:
        kvm.mmu_lock.write_lock()
        kvm_arch_post_set_memory_attributes(kvm, slot, start, end, attrs)
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.write_unlock()


def kvm_gmem_punch_hole(kvm: "Kvm", slot: KvmMemorySlot, start: int, end: int) -> None:
    """guest_memfd ``FALLOC_FL_PUNCH_HOLE`` → ``kvm_gmem_invalidate_begin/end``: zap the
    private mappings of [start, end) (gfns), then free the pages.  HP-v3 splits crossing
    mirror leaves first."""
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_begin(kvm)
    kvm_mmu_invalidate_range_add(kvm, start, end)
    kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(kvm, start, end, KVM_FILTER_PRIVATE, False)
    if kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_PRIVATE, True, False):
        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.write_unlock()
    base = slot.gmem_offset - slot.base_gfn
    slot.gmem.punch_hole(start + base, end + base)
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()


def kvm_mmu_notifier_invalidate_range(kvm: "Kvm", start: int, end: int) -> None:
    """An mmu_notifier invalidation of shared memory (e.g. the host splits a THP or
    reclaims a page): zap the direct root's mappings of [start, end) gfns."""
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_begin(kvm)
    kvm_mmu_invalidate_range_add(kvm, start, end)
    if kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, True, False):
        kvm.kvm_flush_remote_tlbs()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()


# --- NX huge page recovery ---------------------------------------------------------------------

def kvm_recover_nx_huge_pages(kvm: "Kvm", ratio: int = 60) -> int:
    """``kvm_recover_nx_huge_pages`` (TDP MMU, 6.17+: read lock): zap
    ``DIV_ROUND_UP(nx_lpage_splits, ratio)`` tracked SPs, oldest first, so the next fault
    may map a huge page again.  SPs in dirty-logged slots are only untracked.  Returns how
    many were zapped."""
    to_zap = -(-kvm.stat.nx_lpage_splits // ratio) if ratio else 0
    zapped = 0
    flush = False
    kvm.mmu_lock.read_lock()
    for _ in range(to_zap):
        kvm.tdp_mmu_pages_lock.lock()
        if not kvm.possible_nx_huge_pages:
            kvm.tdp_mmu_pages_lock.unlock()
            break
        sp = kvm.possible_nx_huge_pages[0]
        kvm.WARN_ON_ONCE(not sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "tracked SP not NX-disallowed")
        sp.nx_huge_page_disallowed = False  # unaccount_nx_huge_page
        untrack_possible_nx_huge_page(kvm, sp)
        kvm.tdp_mmu_pages_lock.unlock()
        slot = kvm.gfn_to_memslot(sp.gfn)
        if slot is None or not slot.kvm_slot_dirty_track_enabled():
            if kvm_tdp_mmu_zap_possible_nx_huge_page(kvm, sp):
                flush = True
                zapped += 1
    kvm.mmu_lock.read_unlock()
    if flush:
        kvm.kvm_flush_remote_tlbs()
    return zapped
