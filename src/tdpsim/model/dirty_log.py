"""Dirty logging on the TDP MMU — the generic ioctls of ``virt/kvm/kvm_main.c``
(``kvm_get_dirty_log_protect``, ``kvm_clear_dirty_log_protect``, the dirty bitmap and
``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``), the x86 glue of ``arch/x86/kvm/mmu/mmu.c``
(``kvm_arch_mmu_enable_log_dirty_pt_masked``, ``kvm_mmu_slot_leaf_clear_dirty``,
``kvm_mmu_slot_remove_write_access``, ``kvm_mmu_[slot_]try_split_huge_pages``,
``kvm_mmu_update_cpu_dirty_logging``, ``kvm_arch_sync_dirty_log``) and VMX's page-
modification log (``vmx_flush_pml_buffer``).

Without PML dirty logging write-protects 4K leaves and the write faults (fast path) mark
the page dirty; with PML (``Policy.enable_pml``) it clears their D bits and the CPU logs
the next write into the vCPU's PML buffer, which KVM drains into the bitmap on VM exit.

Simplifications (one line each):
- The dirty bitmap is a bytearray of 64-bit little-endian words; the second bitmap of
  ``kvm_second_dirty_bitmap`` is a local copy.
- ``slots_lock`` is not modelled (the ioctls run on one thread).
- A vCPU's PML buffer is drained on the kick of ``kvm_arch_sync_dirty_log`` and when full,
  standing in for "on every VM exit"; PML is on whenever a slot logs dirty pages (the
  ``KVM_REQ_UPDATE_CPU_DIRTY_LOGGING`` round trip is immediate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .memslot import KvmMemorySlot
from .mmu_internal import EFAULT, EINVAL, ENOENT
from .spte import PAGE_SHIFT, PG_LEVEL_2M
from .tdp_mmu import (
    kvm_tdp_mmu_clear_dirty_pt_masked,
    kvm_tdp_mmu_clear_dirty_slot,
    kvm_tdp_mmu_try_split_huge_pages,
    kvm_tdp_mmu_write_protect_gfn,
    kvm_tdp_mmu_wrprot_slot,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu

KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1
# x86 defines KVM_DIRTY_LOG_MANUAL_CAPS in kvm_host.h: both options.
KVM_DIRTY_LOG_MANUAL_CAPS = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET
KVM_REQ_UPDATE_CPU_DIRTY_LOGGING = "KVM_REQ_UPDATE_CPU_DIRTY_LOGGING"
PML_LOG_NR_ENTRIES = 512
BITS_PER_LONG = 64


def kvm_dirty_log_manual_protect_and_init_set(kvm: "Kvm") -> bool:
    """``kvm_dirty_log_manual_protect_and_init_set``."""
    return bool(kvm.manual_dirty_log_protect & KVM_DIRTY_LOG_INITIALLY_SET)


def kvm_enable_manual_dirty_log_protect(kvm: "Kvm", flags: int, args0: int) -> int:
    """``KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)`` in
    ``kvm_vm_ioctl_enable_cap_generic``: INITIALLY_SET only together with ENABLE."""
    allowed = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
    if args0 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE:
        allowed = KVM_DIRTY_LOG_MANUAL_CAPS
    if flags or args0 & ~allowed:
        return -EINVAL
    kvm.manual_dirty_log_protect = args0
    return 0


def kvm_dirty_bitmap_bytes(slot: KvmMemorySlot) -> int:
    """``kvm_dirty_bitmap_bytes``: ``ALIGN(npages, BITS_PER_LONG) / 8``."""
    return -(-slot.npages // BITS_PER_LONG) * 8


def kvm_alloc_dirty_bitmap(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_alloc_dirty_bitmap`` as ``kvm_prepare_memory_region`` calls it when logging
    is turned on: zeroed, or every page of the slot set with INITIALLY_SET."""
    slot.dirty_bitmap = bytearray(kvm_dirty_bitmap_bytes(slot))
    if kvm_dirty_log_manual_protect_and_init_set(kvm):
        full, rest = divmod(slot.npages, 8)
        slot.dirty_bitmap[:full] = b"\xff" * full
        if rest:
            slot.dirty_bitmap[full] = (1 << rest) - 1


def _word(bitmap: bytearray, i: int) -> int:
    return int.from_bytes(bitmap[i * 8:(i + 1) * 8], "little")


def _set_word(bitmap: bytearray, i: int, value: int) -> None:
    bitmap[i * 8:(i + 1) * 8] = value.to_bytes(8, "little")


# --- the CPU side: PML ---------------------------------------------------------------------

def kvm_mmu_update_cpu_dirty_logging(kvm: "Kvm", enable: bool) -> None:
    """``kvm_mmu_update_cpu_dirty_logging``: with PML, the first slot that logs (or the
    last one that stops) makes every vCPU update its VMCS."""
    kvm.nr_memslots_dirty_logging += 1 if enable else -1
    if not kvm.policy.enable_pml:
        return
    nr_slots = kvm.nr_memslots_dirty_logging
    if (enable and nr_slots == 1) or not nr_slots:
        kvm.kvm_make_all_cpus_request(KVM_REQ_UPDATE_CPU_DIRTY_LOGGING)


def vmx_pml_log(vcpu: "KvmVcpu", gpa: int) -> None:
    """The CPU appends the GPA of a write that set an EPT D bit; a full buffer exits."""
    vcpu.pml_buffer.append(gpa & ~0xFFF)
    if len(vcpu.pml_buffer) == PML_LOG_NR_ENTRIES:
        vmx_flush_pml_buffer(vcpu)  # EXIT_REASON_PML_FULL


def vmx_flush_pml_buffer(vcpu: "KvmVcpu") -> None:
    """``vmx_flush_pml_buffer``: ``kvm_vcpu_mark_page_dirty`` for every logged GPA."""
    kvm = vcpu.kvm
    for gpa in vcpu.pml_buffer:
        gfn = (gpa >> PAGE_SHIFT) & ~kvm.kvm_gfn_direct_bits()
        mark_page_dirty_in_slot(kvm.gfn_to_memslot(gfn), gfn)
    vcpu.pml_buffer.clear()


def mark_page_dirty_in_slot(slot: Optional[KvmMemorySlot], gfn: int) -> None:
    """``mark_page_dirty_in_slot``: only slots that log dirty pages have a bitmap."""
    if slot is not None and slot.kvm_slot_dirty_track_enabled():
        slot.mark_page_dirty_in_slot(gfn)


def kvm_arch_sync_dirty_log(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_arch_sync_dirty_log``: with PML, kick every vCPU so its buffer is drained
    into the bitmap before userspace reads it."""
    if not kvm.policy.enable_pml:
        return
    for vcpu in kvm.vcpus:
        vmx_flush_pml_buffer(vcpu)


# --- mmu.c glue ----------------------------------------------------------------------------

def kvm_mmu_slot_try_split_huge_pages(kvm: "Kvm", slot: KvmMemorySlot, target_level: int) -> None:
    """``kvm_mmu_slot_try_split_huge_pages``: eager split of the whole slot, read lock."""
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_try_split_huge_pages(kvm, slot, slot.base_gfn, slot.end_gfn, target_level, True)
    kvm.mmu_lock.read_unlock()


def kvm_mmu_try_split_huge_pages(kvm: "Kvm", slot: KvmMemorySlot, start: int, end: int,
                                 target_level: int) -> None:
    """``kvm_mmu_try_split_huge_pages``: split [start, end) under the held write lock."""
    kvm_tdp_mmu_try_split_huge_pages(kvm, slot, start, end, target_level, False)


def kvm_mmu_slot_remove_write_access(kvm: "Kvm", slot: KvmMemorySlot, start_level: int) -> None:
    """``kvm_mmu_slot_remove_write_access``: read lock; the caller flushes."""
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_wrprot_slot(kvm, slot, start_level)
    kvm.mmu_lock.read_unlock()


def kvm_mmu_slot_leaf_clear_dirty(kvm: "Kvm", slot: KvmMemorySlot) -> None:
    """``kvm_mmu_slot_leaf_clear_dirty`` (PML): clear D on the slot's leaves, read lock;
    the caller flushes."""
    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_clear_dirty_slot(kvm, slot)
    kvm.mmu_lock.read_unlock()


def kvm_mmu_slot_gfn_write_protect(kvm: "Kvm", slot: KvmMemorySlot, gfn: int,
                                   min_level: int) -> bool:
    """``kvm_mmu_slot_gfn_write_protect`` (TDP MMU part)."""
    return kvm_tdp_mmu_write_protect_gfn(kvm, slot, gfn, min_level)


def kvm_arch_mmu_enable_log_dirty_pt_masked(kvm: "Kvm", slot: KvmMemorySlot, gfn_offset: int,
                                            mask: int) -> None:
    """``kvm_arch_mmu_enable_log_dirty_pt_masked``: re-arm logging for the 4K pages of
    ``mask``.  With INITIALLY_SET the huge pages were never touched at enable time, so
    the first clear of a range splits them (eager split) and write-protects what is still
    huge (the range may cross two 2M frames); then D (PML) or W is cleared on the 4K
    leaves."""
    if kvm_dirty_log_manual_protect_and_init_set(kvm):
        start = slot.base_gfn + gfn_offset + ((mask & -mask).bit_length() - 1)  # __ffs
        end = slot.base_gfn + gfn_offset + (mask.bit_length() - 1)  # __fls
        if kvm.policy.eager_page_split:
            kvm_mmu_try_split_huge_pages(kvm, slot, start, end + 1, 1)
        kvm_mmu_slot_gfn_write_protect(kvm, slot, start, PG_LEVEL_2M)
        if _pmd_align_up(start) != _pmd_align_up(end):
            kvm_mmu_slot_gfn_write_protect(kvm, slot, end, PG_LEVEL_2M)
    if kvm.policy.enable_pml:
        kvm_tdp_mmu_clear_dirty_pt_masked(kvm, slot, slot.base_gfn + gfn_offset, mask, False)
    else:
        kvm_tdp_mmu_clear_dirty_pt_masked(kvm, slot, slot.base_gfn + gfn_offset, mask, True)


def _pmd_align_up(gfn: int) -> int:
    """``ALIGN(gfn << PAGE_SHIFT, PMD_SIZE)``."""
    return -(-(gfn << PAGE_SHIFT) // (1 << 21)) * (1 << 21)


# --- the ioctls ------------------------------------------------------------------------------

def _id_to_memslot(kvm: "Kvm", slot_id: int) -> Optional[KvmMemorySlot]:
    for slot in kvm.memslots:
        if slot.id == slot_id:
            return slot
    return None


def kvm_get_dirty_log_protect(kvm: "Kvm", slot_id: int, user_bitmap: bytearray) -> int:
    """``KVM_GET_DIRTY_LOG`` → ``kvm_get_dirty_log_protect``: copy the slot's bitmap to
    ``user_bitmap``.  Without manual protect each dirty word is also cleared and its
    pages re-protected under the write lock, then one memslot flush; with manual protect
    nothing changes until KVM_CLEAR_DIRTY_LOG."""
    slot = _id_to_memslot(kvm, slot_id)
    if slot is None or not slot.kvm_slot_dirty_track_enabled():
        return -ENOENT
    dirty_bitmap = slot.dirty_bitmap
    kvm_arch_sync_dirty_log(kvm, slot)
    n = kvm_dirty_bitmap_bytes(slot)
    if len(user_bitmap) < n:
        return -EFAULT
    flush = False
    if kvm.manual_dirty_log_protect:
        buffer = bytearray(dirty_bitmap)
    else:
        buffer = bytearray(n)
        kvm.mmu_lock.write_lock()
        for i in range(n // 8):
            mask = _word(dirty_bitmap, i)
            if not mask:
                continue
            flush = True
            _set_word(dirty_bitmap, i, 0)  # xchg(&dirty_bitmap[i], 0)
            _set_word(buffer, i, mask)
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, i * BITS_PER_LONG, mask)
        kvm.mmu_lock.write_unlock()
    if flush:
        kvm.kvm_flush_remote_tlbs_memslot(slot)
    user_bitmap[:n] = buffer
    return 0


def kvm_clear_dirty_log_protect(kvm: "Kvm", slot_id: int, first_page: int, num_pages: int,
                                user_bitmap: bytes) -> int:
    """``KVM_CLEAR_DIRTY_LOG`` → ``kvm_clear_dirty_log_protect``: clear the bits of
    ``user_bitmap`` (page ``first_page`` onwards) that are set in the slot's bitmap and
    re-arm logging for exactly those pages, under the write lock; one memslot flush."""
    if first_page & 63:
        return -EINVAL
    slot = _id_to_memslot(kvm, slot_id)
    if slot is None or not slot.kvm_slot_dirty_track_enabled():
        return -ENOENT
    if (first_page > slot.npages or num_pages > slot.npages - first_page
            or (num_pages < slot.npages - first_page and num_pages & 63)):
        return -EINVAL
    kvm_arch_sync_dirty_log(kvm, slot)
    nwords = -(-num_pages // BITS_PER_LONG)
    if len(user_bitmap) < nwords * 8:
        return -EFAULT
    dirty_bitmap = slot.dirty_bitmap
    flush = False
    kvm.mmu_lock.write_lock()
    for k in range(nwords):
        offset = first_page + k * BITS_PER_LONG
        i = offset // BITS_PER_LONG
        mask = _word(user_bitmap, k)
        if not mask:
            continue
        old = _word(dirty_bitmap, i)
        _set_word(dirty_bitmap, i, old & ~mask)  # atomic_long_fetch_andnot
        mask &= old
        # Only bits really cleared count; none lies beyond the slot's end.
        if mask:
            flush = True
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, offset, mask)
    kvm.mmu_lock.write_unlock()
    if flush:
        kvm.kvm_flush_remote_tlbs_memslot(slot)
    return 0

