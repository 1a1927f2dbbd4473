"""Memslot updates, memory attributes, MMU invalidation and NX recovery — the generic
paths of ``virt/kvm/kvm_main.c`` (``__kvm_set_memory_region`` / ``kvm_set_memslot``,
``kvm_vm_set_mem_attributes``,
``kvm_handle_gfn_range``, ``kvm_mmu_invalidate_begin/end``, guest_memfd invalidation) with
the x86 hooks they call from ``arch/x86/kvm/x86.c`` and ``mmu.c``
(``kvm_mmu_slot_apply_flags``, ``kvm_arch_pre/post_set_memory_attributes``,
``kvm_mmu_init_memslot_memory_attributes``, ``kvm_recover_nx_huge_pages``).

Simplifications (one line each):
- One memslot per attribute-range call: ranges must not straddle slots.
- ``slots_lock`` is not modelled: these paths are always called from one thread.
- One memslot set, edited in place between swaps (the kernel's active/inactive pair);
  ``kvm->srcu`` readers exist only under the explorer (``Kvm.synchronize_srcu_expedited``).
- HP-v3's ``kvm_split_cross_boundary_leafs`` -ENOMEM cannot happen (allocation never fails).
- The memslot generation steps by 2 per swap for every VM type (the kernel steps by 1
  where there is no SMM address space: VMs with private memory); SMM slots (as_id 1)
  are refused with a ``KvmUserError``.
- ``kvm_gmem_bind`` only checks that a guest_memfd is given (not its owner VM, size or
  the other slots bound to it), and ``access_ok``/``untagged_addr`` always pass.
- A slot CREATEd with KVM_MEM_LOG_DIRTY_PAGES is not counted in
  ``nr_memslots_dirty_logging`` (no PML enable request); nothing is mapped in it yet.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Final, Optional

from .kvm import KVM_X86_DEFAULT_VM
from .memslot import (
    KVM_LPAGE_GUEST_INHIBIT_FLAG,
    KVM_LPAGE_MIXED_FLAG,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMSLOT_INVALID,
    GuestMemfd,
    HostBacking,
    KvmMemorySlot,
)
from .mmu_internal import EEXIST, EINVAL
from .spte import (
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
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
    kvm_tdp_mmu_unmap_gfn_range,
    kvm_tdp_mmu_zap_collapsible_sptes,
    kvm_tdp_mmu_zap_invalidated_roots,
    kvm_tdp_mmu_zap_possible_nx_huge_page,
    kvm_tdp_mmu_zap_sp,
    kvm_mmu_max_gfn,
    need_resched,
    KVM_DIRECT_ROOTS,
)
from .mmu import KVM_TDP_MMU, possible_nx_huge_pages, untrack_possible_nx_huge_page
from .sched import MMU_INVALIDATE, MMU_INVALIDATE_KEY
from .dirty_log import (
    kvm_alloc_dirty_bitmap,
    kvm_dirty_log_manual_protect_and_init_set,
    kvm_mmu_slot_leaf_clear_dirty,
    kvm_mmu_slot_remove_write_access,
    kvm_mmu_slot_try_split_huge_pages,
    kvm_mmu_update_cpu_dirty_logging,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm

INVALID_GPA: Final = -1
PAGE_SIZE: Final = 1 << 12


class KvmUserError(ValueError):
    """An ioctl argument the kernel would reject with -EINVAL / -EEXIST."""


# --- MMU invalidation ----------------------------------------------------------------------

def kvm_mmu_invalidate_begin(kvm: "Kvm") -> None:
    """``kvm_mmu_invalidate_begin`` (write lock): faults covering the range must retry."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, True)
    kvm.mmu_invalidate_in_progress += 1
    if kvm.mmu_invalidate_in_progress == 1:
        kvm.mmu_invalidate_range_start = INVALID_GPA
        kvm.mmu_invalidate_range_end = INVALID_GPA


def kvm_mmu_invalidate_range_add(kvm: "Kvm", start: int, end: int) -> None:
    """``kvm_mmu_invalidate_range_add``: widen the in-flight range."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.WARN_ON_ONCE(not kvm.mmu_invalidate_in_progress, "kvm_mmu_invalidate_range_add",
                     "no invalidation in progress")
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, True)
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end
    else:
        kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
        kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)


def kvm_mmu_invalidate_end(kvm: "Kvm") -> None:
    """``kvm_mmu_invalidate_end``: bump the sequence (before the count drops, smp_wmb) so
    faults that snapshotted it earlier retry."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, True)
    kvm.mmu_invalidate_seq += 1
    kvm.mmu_invalidate_in_progress -= 1
    kvm.KVM_BUG_ON(kvm.mmu_invalidate_in_progress < 0, "kvm_mmu_invalidate_end",
                   "unbalanced invalidation")
    # At least one range must have been added between begin() and end().
    kvm.WARN_ON_ONCE(kvm.mmu_invalidate_range_start == INVALID_GPA, "kvm_mmu_invalidate_end",
                     "no range added")


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
    # The kernel's loop over the sub-frames asks each one for !hugepage_test_mixed() and
    # kvm_get_memory_attributes(first gfn) == attrs.  Both are pure, so the loop's answer
    # is "no sub-frame MIXED and every first gfn has attrs", taken here in two whole-frame
    # steps (the loop ran 512 times per 1G frame on every attribute change).
    if attrs not in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE):
        return False  # no gfn has other attributes
    step = KVM_PAGES_PER_HPAGE(level - 1)
    i = slot.lpage_index(gfn, level - 1)
    sub = slot.lpage_info[level - 1][i:i + (end - gfn) // step]
    # max runs in C: the largest entry carries the flag when a sub-frame is MIXED, unless
    # values outside the kernel's (negative, or above bit 31) make the bitwise test needed.
    top = max(sub)
    if top & KVM_LPAGE_MIXED_FLAG:
        return False
    if (top > KVM_LPAGE_MIXED_FLAG or min(sub) < 0) \
            and any(x & KVM_LPAGE_MIXED_FLAG for x in sub):
        return False
    return kvm.mem_attr_private.holds_every(gfn, end, step,
                                            attrs == KVM_MEMORY_ATTRIBUTE_PRIVATE)


def kvm_mmu_init_memslot_memory_attributes(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_mmu_init_memslot_memory_attributes``: MIXED for every huge frame inside the
    slot whose gfns do not share one attribute (VMs with private memory only)."""
    if not kvm.kvm_arch_has_private_mem():
        return
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

KVM_MEM_SLOTS_NUM: Final = 0x7FFF          # SHRT_MAX (include/linux/kvm_host.h)
KVM_INTERNAL_MEM_SLOTS: Final = 3          # x86: TSS, identity map, APIC access page
#: what KVM_CAP_NR_MEMSLOTS reports (kvm_vm_ioctl_check_extension_generic)
KVM_USER_MEM_SLOTS: Final = KVM_MEM_SLOTS_NUM - KVM_INTERNAL_MEM_SLOTS
KVM_MEM_MAX_NR_PAGES: Final = (1 << 31) - 1
KVM_SET_USER_MEMORY_REGION_V1_FLAGS: Final = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY
KVM_X86_QUIRK_SLOT_ZAP_ALL: Final = 1 << 7
# enum kvm_mr_change
KVM_MR_CREATE: Final = 0
KVM_MR_DELETE: Final = 1
KVM_MR_MOVE: Final = 2
KVM_MR_FLAGS_ONLY: Final = 3
#: x86 with SMM has two memslot address spaces; each swap steps the generation by that
KVM_ADDRESS_SPACE_NUM: Final = 2


@dataclass(frozen=True)
class KvmUserspaceMemoryRegion2:
    """``struct kvm_userspace_memory_region2``; ``backing`` is the model's stand-in for
    the host mapping at ``userspace_addr`` (what the kernel finds in the VMA)."""

    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int = 0
    guest_memfd: Optional[GuestMemfd] = None
    guest_memfd_offset: int = 0
    backing: Optional[HostBacking] = None


def kvm_check_has_quirk(kvm: "Kvm", quirk: int) -> bool:
    return not kvm.disabled_quirks & quirk


def _slot_index(kvm: "Kvm", base_gfn: int) -> int:
    """Where a slot starting at ``base_gfn`` goes in the gfn-sorted ``kvm.memslots``
    (the kernel's gfn_tree)."""
    return bisect_right(kvm.memslots, base_gfn, key=lambda s: s.base_gfn)


def id_to_memslot(kvm: "Kvm", id: int) -> Optional[KvmMemorySlot]:
    """``id_to_memslot`` (the memslots' id_hash)."""
    slot = kvm.memslot_id_hash.get(id)
    if slot is not None:
        i = _slot_index(kvm, slot.base_gfn) - 1
        if i >= 0 and kvm.memslots[i] is slot:
            return slot
    return None


def kvm_check_memslot_overlap(kvm: "Kvm", id: int, start: int, end: int) -> bool:
    """``kvm_check_memslot_overlap``: another slot holds a gfn of [start, end)."""
    i = _slot_index(kvm, start)
    for other in kvm.memslots[max(i - 1, 0):i + 1]:
        if other.id != id and other.base_gfn < end and start < other.end_gfn:
            return True
    return i < len(kvm.memslots) - 1 and kvm.memslots[i + 1].base_gfn < end


def kvm_swap_active_memslots(kvm: "Kvm") -> None:
    """``kvm_swap_active_memslots``: the memslots just edited are published;
    ``synchronize_srcu_expedited`` then waits for every vCPU that may still use a slot it
    looked up before, and the generation moves on (bit 0, update in progress, is not
    modelled)."""
    kvm.synchronize_srcu_expedited()
    kvm.memslots_generation += KVM_ADDRESS_SPACE_NUM


def kvm_replace_memslot(kvm: "Kvm", old: Optional[KvmMemorySlot],
                        new: Optional[KvmMemorySlot]) -> None:
    """``kvm_replace_memslot``: ``new`` takes ``old``'s place in the gfn tree and id hash
    (None: only remove / only add).  The model keeps one memslot set, edited in one step
    and published by the ``kvm_swap_active_memslots`` that follows (the kernel edits the
    inactive set, swaps, then edits the other)."""
    if old is not None:
        kvm.memslots.remove(old)
        del kvm.memslot_id_hash[old.id]
    if new is not None:
        kvm.memslots.insert(_slot_index(kvm, new.base_gfn), new)
        kvm.memslot_id_hash[new.id] = new


def kvm_activate_memslot(kvm: "Kvm", old: Optional[KvmMemorySlot],
                         new: Optional[KvmMemorySlot]) -> None:
    """``kvm_activate_memslot``: ``new`` replaces ``old`` and the memslots are swapped."""
    kvm_replace_memslot(kvm, old, new)
    kvm_swap_active_memslots(kvm)


def kvm_create_memslot(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_create_memslot`` (KVM_MR_CREATE, with x86's memory-attribute set-up, which
    the kernel's ``kvm_arch_prepare_memory_region`` does)."""
    kvm_mmu_init_memslot_memory_attributes(kvm, slot)
    kvm_activate_memslot(kvm, None, slot)


def kvm_delete_memslot(kvm: "Kvm", invalid_slot: KvmMemorySlot) -> None:
    """``kvm_delete_memslot``: the INVALID copy leaves the memslots."""
    kvm_activate_memslot(kvm, invalid_slot, None)


def kvm_move_memslot(kvm: "Kvm", invalid_slot: KvmMemorySlot, new: KvmMemorySlot) -> None:
    """``kvm_move_memslot``: the slot at its new gfns replaces the INVALID copy."""
    kvm_mmu_init_memslot_memory_attributes(kvm, new)
    kvm_activate_memslot(kvm, invalid_slot, new)


def kvm_set_memory_region(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``KVM_SET_USER_MEMORY_REGION2`` creating a slot (KVM_MR_CREATE) from a ready
    ``KvmMemorySlot``; :func:`kvm_vm_ioctl_set_memory_region` is the full ioctl."""
    for other in kvm.memslots:
        if other.base_gfn < slot.end_gfn and slot.base_gfn < other.end_gfn:
            raise KvmUserError(f"memslot {slot.id} overlaps memslot {other.id}")
    kvm_create_memslot(kvm, slot)


def check_memory_region_flags(kvm: "Kvm", mem: KvmUserspaceMemoryRegion2) -> int:
    """``check_memory_region_flags``: GUEST_MEMFD only with private memory and never with
    dirty logging or READONLY (x86 has read-only memory for every non-TD VM)."""
    valid_flags = KVM_MEM_LOG_DIRTY_PAGES
    if kvm.kvm_arch_has_private_mem():
        valid_flags |= KVM_MEM_GUEST_MEMFD
    if mem.flags & KVM_MEM_GUEST_MEMFD:
        valid_flags &= ~KVM_MEM_LOG_DIRTY_PAGES
    if not kvm.kvm_has_mirrored_tdp() and not mem.flags & KVM_MEM_GUEST_MEMFD:
        valid_flags |= KVM_MEM_READONLY
    return -EINVAL if mem.flags & ~valid_flags else 0


def kvm_vm_ioctl_set_memory_region(kvm: "Kvm", mem: KvmUserspaceMemoryRegion2, *,
                                   v1: bool = False,
                                   while_invalid: Optional[Callable[[], None]] = None) -> int:
    """KVM_SET_USER_MEMORY_REGION (``v1``: only the v1 flags) / ..._REGION2: 0 or -errno.
    ``while_invalid`` runs while a slot being deleted or moved is KVM_MEMSLOT_INVALID and
    already zapped (what a vCPU running then sees: its faults retry)."""
    if v1 and mem.flags & ~KVM_SET_USER_MEMORY_REGION_V1_FLAGS:
        return -EINVAL
    if mem.slot & 0xFFFF >= KVM_USER_MEM_SLOTS:
        return -EINVAL
    return __kvm_set_memory_region(kvm, mem, while_invalid)


def __kvm_set_memory_region(kvm: "Kvm", mem: KvmUserspaceMemoryRegion2,
                            while_invalid: Optional[Callable[[], None]] = None) -> int:
    """``__kvm_set_memory_region``: the sanity checks, then CREATE / DELETE (size 0) /
    MOVE (new base) / FLAGS_ONLY; a CREATE or MOVE onto another slot's gfns is -EEXIST."""
    r = check_memory_region_flags(kvm, mem)
    if r:
        return r
    as_id, id = mem.slot >> 16, mem.slot & 0xFFFF
    if mem.memory_size & (PAGE_SIZE - 1) or mem.guest_phys_addr & (PAGE_SIZE - 1) \
            or mem.userspace_addr & (PAGE_SIZE - 1):
        return -EINVAL
    if mem.flags & KVM_MEM_GUEST_MEMFD and mem.guest_memfd_offset & (PAGE_SIZE - 1):
        return -EINVAL
    if as_id >= KVM_ADDRESS_SPACE_NUM or id >= KVM_MEM_SLOTS_NUM:
        return -EINVAL
    if (mem.memory_size >> PAGE_SHIFT) > KVM_MEM_MAX_NR_PAGES:
        return -EINVAL
    if as_id:
        raise KvmUserError(f"memslot {mem.slot:#x}: the SMM address space is not modelled")
    old = id_to_memslot(kvm, id)
    if not mem.memory_size:
        if old is None:
            return -EINVAL
        return kvm_set_memslot(kvm, old, None, KVM_MR_DELETE, while_invalid)
    base_gfn, npages = mem.guest_phys_addr >> PAGE_SHIFT, mem.memory_size >> PAGE_SHIFT
    if old is None:
        change = KVM_MR_CREATE
    else:
        if mem.flags & KVM_MEM_GUEST_MEMFD:
            return -EINVAL      # private memslots are immutable, they can only be deleted
        if (mem.userspace_addr != old.userspace_addr or npages != old.npages
                or (mem.flags ^ old.flags) & (KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD)):
            return -EINVAL
        if base_gfn != old.base_gfn:
            change = KVM_MR_MOVE
        elif mem.flags != old.flags:
            change = KVM_MR_FLAGS_ONLY
        else:
            return 0
    if change in (KVM_MR_CREATE, KVM_MR_MOVE) and \
            kvm_check_memslot_overlap(kvm, id, base_gfn, base_gfn + npages):
        return -EEXIST
    if change == KVM_MR_FLAGS_ONLY:
        kvm_mmu_slot_apply_flags(kvm, old, mem.flags)
        return 0
    if mem.flags & KVM_MEM_GUEST_MEMFD and mem.guest_memfd is None:
        return -EINVAL          # kvm_gmem_bind: the fd is no guest_memfd
    backing = mem.backing if old is None else old.backing
    if backing is None:
        raise KvmUserError(f"memslot {id}: no host mapping given for userspace_addr "
                           f"{mem.userspace_addr:#x}")
    new = KvmMemorySlot(id, base_gfn, npages, mem.userspace_addr, backing,
                        flags=mem.flags & ~KVM_MEM_GUEST_MEMFD, gmem=mem.guest_memfd,
                        gmem_offset=mem.guest_memfd_offset)
    return kvm_set_memslot(kvm, old, new, change, while_invalid)


def kvm_set_memslot(kvm: "Kvm", old: Optional[KvmMemorySlot], new: Optional[KvmMemorySlot],
                    change: int, while_invalid: Optional[Callable[[], None]] = None) -> int:
    """``kvm_set_memslot``: a slot being deleted or moved is first replaced by an INVALID
    copy and zapped (``kvm_invalidate_memslot``) so vCPUs keep running without reaching
    it; then ``kvm_arch_prepare_memory_region`` (a failure puts the old slot back) and
    the final swap.  ``slots_arch_lock`` is not modelled (one ioctl at a time)."""
    invalid_slot = None
    if change in (KVM_MR_DELETE, KVM_MR_MOVE):
        invalid_slot = kvm_invalidate_memslot(kvm, old)
        if while_invalid is not None:
            while_invalid()
    r = kvm_arch_prepare_memory_region(kvm, new, change)
    if r:
        if invalid_slot is not None:
            kvm_activate_memslot(kvm, invalid_slot, old)
        return r
    if change == KVM_MR_CREATE:
        kvm_create_memslot(kvm, new)
    elif change == KVM_MR_DELETE:
        kvm_delete_memslot(kvm, invalid_slot)
    else:
        kvm_move_memslot(kvm, invalid_slot, new)
    return 0


def kvm_invalidate_memslot(kvm: "Kvm", old: KvmMemorySlot) -> KvmMemorySlot:
    """``kvm_invalidate_memslot``: publish a KVM_MEMSLOT_INVALID copy of the slot (faults
    that look it up retry; the swap waits for those that still hold the old one), then
    ``kvm_arch_flush_shadow_memslot`` zaps the old slot's SPTEs.  Returns the copy."""
    invalid_slot = copy.copy(old)  # kzalloc + kvm_copy_memslot (arch data shared)
    invalid_slot.flags |= KVM_MEMSLOT_INVALID
    kvm_replace_memslot(kvm, old, invalid_slot)
    kvm_swap_active_memslots(kvm)
    kvm_arch_flush_shadow_memslot(kvm, old)
    return invalid_slot


def kvm_arch_prepare_memory_region(kvm: "Kvm", new: Optional[KvmMemorySlot],
                                   change: int) -> int:
    """``kvm_arch_prepare_memory_region`` (x86.c): a created or moved slot must end at or
    below ``kvm_mmu_max_gfn``; its lpage_info is the new ``KvmMemorySlot``'s."""
    if change in (KVM_MR_CREATE, KVM_MR_MOVE) and new.end_gfn - 1 > kvm_mmu_max_gfn(kvm):
        return -EINVAL
    return 0


def kvm_arch_flush_shadow_memslot(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_arch_flush_shadow_memslot`` (mmu.c, v6.12): with KVM_X86_QUIRK_SLOT_ZAP_ALL
    (default VMs, unless disabled) every root goes (``kvm_mmu_zap_all_fast``); else only
    the slot's leaf SPTEs are zapped (``kvm_unmap_gfn_range``; no shadow pages with the
    TDP MMU) and TLBs flushed if any was."""
    if kvm.vm_type == KVM_X86_DEFAULT_VM and kvm_check_has_quirk(kvm, KVM_X86_QUIRK_SLOT_ZAP_ALL):
        kvm_mmu_zap_all_fast(kvm)
        return
    kvm.mmu_lock.write_lock()
    if kvm_tdp_mmu_unmap_gfn_range(kvm, slot.base_gfn, slot.end_gfn, KVM_FILTER_SHARED
                                   | KVM_FILTER_PRIVATE, True, False):
        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.write_unlock()


def kvm_mmu_slot_apply_flags(kvm: "Kvm", slot: KvmMemorySlot, new_flags: int) -> None:
    """``KVM_MR_FLAGS_ONLY`` → ``kvm_prepare_memory_region`` (the dirty bitmap) and
    ``kvm_mmu_slot_apply_flags`` (x86.c).  Enabling dirty logging eagerly splits and
    write-protects (PML: clears D on leaves, write-protects 2M+), then flushes — unless
    manual protect with INITIALLY_SET is on: then every page starts dirty and nothing is
    touched until the first KVM_CLEAR_DIRTY_LOG.  Disabling recovers huge pages (v6.13+;
    before, zaps the collapsible SPTEs)."""
    old_flags = slot.flags
    if slot.gmem is not None and new_flags & KVM_MEM_LOG_DIRTY_PAGES:
        raise KvmUserError(f"memslot {slot.id}: guest_memfd slots cannot log dirty pages")
    log_dirty_pages = bool(new_flags & KVM_MEM_LOG_DIRTY_PAGES)
    if log_dirty_pages and not old_flags & KVM_MEM_LOG_DIRTY_PAGES:
        kvm_alloc_dirty_bitmap(kvm, slot)
    slot.flags = new_flags
    kvm.memslots_generation += 2
    if (old_flags ^ new_flags) & KVM_MEM_LOG_DIRTY_PAGES:
        kvm_mmu_update_cpu_dirty_logging(kvm, log_dirty_pages)
    if new_flags & KVM_MEM_READONLY:
        return  # read-only slots cannot be dirtied
    if kvm.WARN_ON_ONCE(not (old_flags ^ new_flags) & KVM_MEM_LOG_DIRTY_PAGES,
                        "kvm_mmu_slot_apply_flags", "dirty logging not toggled"):
        return
    if not log_dirty_pages:
        if kvm.profile.recover_huge_pages_in_place:
            kvm_mmu_recover_huge_pages(kvm, slot)
        else:
            kvm_mmu_zap_collapsible_sptes(kvm, slot)
        return
    if kvm_dirty_log_manual_protect_and_init_set(kvm):
        return  # initially-all-set needs no write protection: every page is dirty
    if kvm.policy.eager_page_split:
        kvm_mmu_slot_try_split_huge_pages(kvm, slot, PG_LEVEL_4K)
    if kvm.policy.enable_pml:
        kvm_mmu_slot_leaf_clear_dirty(kvm, slot)
        kvm_mmu_slot_remove_write_access(kvm, slot, PG_LEVEL_2M)
    else:
        kvm_mmu_slot_remove_write_access(kvm, slot, PG_LEVEL_4K)
    # Unconditional: the helpers may skip SPTEs whose W/D is already clear.
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
    first splits leaves crossing the range when converting to shared
    (``KernelProfile.split_cross_boundary_leafs``)."""
    if kvm.WARN_ON_ONCE(not kvm.kvm_arch_has_private_mem(), "kvm_arch_pre_set_memory_attributes",
                        "VM without private memory"):
        return False
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
        if kvm.profile.split_cross_boundary_leafs:
            kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(kvm, start, end, attr_filter, False)
    return kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, attr_filter, True, False)


def kvm_arch_post_set_memory_attributes(kvm: "Kvm", slot: KvmMemorySlot, start: int,
                                        end: int, attrs: int) -> None:
    """``kvm_arch_post_set_memory_attributes``: recompute MIXED level by level (upper
    levels use the lower levels' results) for the frames the range touches."""
    kvm.mmu_lock.lockdep_assert_held_write()
    if kvm.WARN_ON_ONCE(not kvm.kvm_arch_has_private_mem(),
                        "kvm_arch_post_set_memory_attributes", "VM without private memory"):
        return
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
    private mappings of [start, end) (gfns), then free the pages (a VM without mirror
    roots loses its shared mappings there too: the filter only picks root types).  HP-v3
    splits crossing leaves first (``KernelProfile.split_cross_boundary_leafs``)."""
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_begin(kvm)
    kvm_mmu_invalidate_range_add(kvm, start, end)
    if kvm.profile.split_cross_boundary_leafs:
        kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(kvm, start, end, KVM_FILTER_PRIVATE,
                                                         False)
    if kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_PRIVATE, True, False):
        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.write_unlock()
    base = slot.gmem_offset - slot.base_gfn
    slot.gmem.punch_hole(start + base, end + base)
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()


def _hva_range_slots(kvm: "Kvm", hva_start: int, hva_end: int):
    """``kvm_for_each_memslot_in_hva_range`` with ``hva_to_gfn_memslot``: each slot whose
    userspace range overlaps [hva_start, hva_end), with the gfns it covers."""
    for slot in kvm.memslots:
        lo = max(hva_start, slot.userspace_addr)
        hi = min(hva_end, slot.userspace_addr + (slot.npages << PAGE_SHIFT))
        if lo < hi:
            base = slot.base_gfn - (slot.userspace_addr >> PAGE_SHIFT)
            yield slot, base + (lo >> PAGE_SHIFT), base + ((hi + PAGE_SIZE - 1) >> PAGE_SHIFT)


def kvm_mmu_notifier_invalidate_range_start(kvm: "Kvm", hva_start: int, hva_end: int,
                                            blockable: bool = True) -> None:
    """``kvm_mmu_notifier_invalidate_range_start``: the primary MMU is about to change the
    host mapping of [hva_start, hva_end).  If a memslot maps it: write lock,
    ``kvm_mmu_invalidate_begin``, then per slot add the gfns to the in-flight range and
    zap the shared mappings (``kvm_mmu_unmap_gfn_range``), flush, unlock.  Faults on those
    gfns retry until ``..._end`` (``mmu_invalidate_retry_gfn``)."""
    kvm.mn_active_invalidate_count += 1  # pins the memslots until range_end
    found = False
    flush = False
    for slot, start, end in _hva_range_slots(kvm, hva_start, hva_end):
        if not found:
            found = True
            kvm.mmu_lock.write_lock()
            kvm_mmu_invalidate_begin(kvm)
        kvm_mmu_invalidate_range_add(kvm, start, end)
        flush = kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, blockable, flush)
    if flush:
        kvm.kvm_flush_remote_tlbs()
    if found:
        kvm.mmu_lock.write_unlock()


def kvm_mmu_notifier_invalidate_range_end(kvm: "Kvm", hva_start: int, hva_end: int) -> None:
    """``kvm_mmu_notifier_invalidate_range_end``: the host change is done; under the write
    lock ``kvm_mmu_invalidate_end`` bumps ``mmu_invalidate_seq`` and drops the count (only
    if a memslot matched in ``..._start``; memslots cannot change in between)."""
    if next(_hva_range_slots(kvm, hva_start, hva_end), None) is not None:
        kvm.mmu_lock.write_lock()
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.write_unlock()
    if not kvm.WARN_ON_ONCE(not kvm.mn_active_invalidate_count,
                            "kvm_mmu_notifier_invalidate_range_end", "unbalanced range_end"):
        kvm.mn_active_invalidate_count -= 1


def kvm_mmu_notifier_invalidate_range(kvm: "Kvm", start: int, end: int,
                                      host_change: Optional[Callable[[], None]] = None) -> None:
    """One primary-MMU invalidation of the shared memory behind gfns [start, end) of the
    slot holding ``start`` (e.g. the host splits a THP or reclaims a page):
    ``..._range_start``, the host's own page-table change (``host_change``) with mmu_lock
    dropped — faults may run here and must retry — then ``..._range_end``."""
    slot = kvm.gfn_to_memslot(start)
    if slot is None:
        return
    hva_start, hva_end = slot.gfn_to_hva(start), slot.gfn_to_hva(min(end, slot.end_gfn))
    kvm_mmu_notifier_invalidate_range_start(kvm, hva_start, hva_end)
    if host_change is not None:
        host_change()
    kvm_mmu_notifier_invalidate_range_end(kvm, hva_start, hva_end)


# --- NX huge page recovery ---------------------------------------------------------------------

def calc_nx_huge_pages_recovery_period(kvm: "Kvm") -> Optional[int]:
    """``calc_nx_huge_pages_recovery_period``: the recovery period in ms, or None when
    recovery is off (``nx_huge_pages`` off or ratio 0).  Period 0 means "derived from the
    ratio": 1 hour / ratio, but never below one second."""
    ratio = kvm.policy.nx_huge_pages_recovery_ratio
    if not kvm.policy.nx_huge_pages or not ratio:
        return None
    period = kvm.policy.nx_huge_pages_recovery_period_ms
    if not period:
        period = 60 * 60 * 1000 // min(ratio, 3600)
    return period


def kvm_mmu_start_lpage_recovery(kvm: "Kvm", now_ms: int) -> None:
    """``kvm_mmu_start_lpage_recovery`` (first KVM_RUN): the worker's clock starts now."""
    kvm.nx_huge_page_last = now_ms


def kvm_nx_huge_page_recovery_worker(kvm: "Kvm", now_ms: int) -> bool:
    """One wake-up of ``kvm_nx_huge_page_recovery_worker`` at time ``now_ms`` (jiffies
    as ms): False when recovery is disabled (the task parks), else True — after a
    recovery run if a full period has passed since the last one, else it just sleeps on."""
    period = calc_nx_huge_pages_recovery_period(kvm)
    if period is None:
        return False
    if kvm.nx_huge_page_last + period - now_ms > 0:
        return True  # schedule_timeout(remaining_time)
    kvm_recover_nx_huge_pages(kvm)
    kvm.nx_huge_page_last = now_ms
    return True


def kvm_recover_nx_huge_pages(kvm: "Kvm", ratio: Optional[int] = None) -> int:
    """``kvm_recover_nx_huge_pages`` for the TDP MMU: zap ``nx_huge_pages_to_zap`` tracked
    SPs, oldest first, so the next fault may map a huge page again (ratio 0: none).
    ``ratio`` overrides ``nx_huge_pages_recovery_ratio``.  SPs in dirty-logged slots are
    only untracked.  Returns how many were zapped.  The shadow MMU's list is tracked but
    not recovered here (its model has no ``kvm_mmu_prepare_zap_page``)."""
    if ratio is None:
        ratio = kvm.policy.nx_huge_pages_recovery_ratio
    to_zap = nx_huge_pages_to_zap(kvm, KVM_TDP_MMU, ratio)
    if kvm.profile.recover_nx_huge_pages_under_read_lock:
        return _recover_nx_huge_pages_shared(kvm, to_zap)
    return _recover_nx_huge_pages_exclusive(kvm, to_zap)


def _nx_huge_page_recoverable(kvm: "Kvm", sp) -> bool:
    """Zapping a dirty-logged slot's SP would only fault it back in at 4K."""
    slot = kvm.gfn_to_memslot(sp.gfn)
    return slot is None or not slot.kvm_slot_dirty_track_enabled()


def _recover_nx_huge_pages_shared(kvm: "Kvm", to_zap: int) -> int:
    """v6.18+: mmu_lock for read and RCU held across the loop (the parent SPTE is read and
    zapped through ``rcu_dereference``), each SP untracked under tdp_mmu_pages_lock, then
    zapped only if its parent SPTE still points to it."""
    nx_huge_pages = possible_nx_huge_pages(kvm, KVM_TDP_MMU)
    zapped = 0
    flush = False
    kvm.mmu_lock.read_lock()
    kvm.rcu.rcu_read_lock()
    for _ in range(to_zap):
        kvm.tdp_mmu_pages_lock.lock()
        if not nx_huge_pages:
            kvm.tdp_mmu_pages_lock.unlock()
            break
        sp = nx_huge_pages[0]
        kvm.WARN_ON_ONCE(not sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "tracked SP not NX-disallowed")
        sp.nx_huge_page_disallowed = False  # unaccount_nx_huge_page
        untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        kvm.tdp_mmu_pages_lock.unlock()
        if _nx_huge_page_recoverable(kvm, sp):
            if kvm_tdp_mmu_zap_possible_nx_huge_page(kvm, sp):
                flush = True
                zapped += 1
        if need_resched(kvm):
            # kvm_mmu_remote_flush_or_zap, then cond_resched_rwlock_read
            if flush:
                kvm.kvm_flush_remote_tlbs()
            flush = False
            kvm.rcu.rcu_read_unlock()
            kvm.mmu_lock.read_unlock()
            kvm.mmu_lock.read_lock()
            kvm.rcu.rcu_read_lock()
    if flush:
        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    kvm.mmu_lock.read_unlock()
    return zapped


def _recover_nx_huge_pages_exclusive(kvm: "Kvm", to_zap: int) -> int:
    """Up to v6.17: mmu_lock for write and RCU held across the loop; the zap
    (``kvm_tdp_mmu_zap_sp``) untracks the SP while tearing its table down."""
    nx_huge_pages = possible_nx_huge_pages(kvm, KVM_TDP_MMU)
    zapped = 0
    flush = False
    kvm.mmu_lock.write_lock()
    kvm.rcu.rcu_read_lock()  # zapped TDP MMU tables are freed via RCU callback
    for _ in range(to_zap):
        if not nx_huge_pages:
            break
        sp = nx_huge_pages[0]
        kvm.WARN_ON_ONCE(not sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "tracked SP not NX-disallowed")
        if not _nx_huge_page_recoverable(kvm, sp):
            sp.nx_huge_page_disallowed = False  # unaccount_nx_huge_page
            untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        elif kvm_tdp_mmu_zap_sp(kvm, sp):
            flush = True
            zapped += 1
        kvm.WARN_ON_ONCE(sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "SP still NX-disallowed after recovery")
        if need_resched(kvm):
            # kvm_mmu_remote_flush_or_zap, then cond_resched_rwlock_write
            if flush:
                kvm.kvm_flush_remote_tlbs()
            kvm.rcu.rcu_read_unlock()
            kvm.mmu_lock.write_unlock()
            kvm.mmu_lock.write_lock()
            flush = False
            kvm.rcu.rcu_read_lock()
    if flush:
        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    kvm.mmu_lock.write_unlock()
    return zapped


def nx_huge_pages_to_zap(kvm: "Kvm", mmu_type: int, ratio: int) -> int:
    """``nx_huge_pages_to_zap`` (6.18): ``DIV_ROUND_UP(nr_pages, ratio)`` of this MMU
    type's list; before the per-type lists, of all ``nx_lpage_splits``."""
    if kvm.profile.possible_nx_huge_pages_per_mmu_type:
        pages = len(possible_nx_huge_pages(kvm, mmu_type))
    else:
        pages = kvm.stat.nx_lpage_splits
    return -(-pages // ratio) if ratio else 0
