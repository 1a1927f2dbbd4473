"""Thread operations: what a model thread does, as calls of the model API.

Each op is the userspace- or vCPU-side trigger of one kernel path; scenarios list them by
name.  Ops only call the model (``tdpsim.model``) — there is one model and no copy of it
here.  The only explorer-specific piece is the vCPU's local RET_PF_RETRY loop: between two
attempts it calls the ``RETRY_WAIT`` point, so the engine can park the vCPU until something
it read changed (the kernel loop spins; spinning cannot change the outcome) and flag a loop
that exceeds the bound or can never make progress.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tdpsim.model.dirty_log import (
    KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    kvm_alloc_dirty_bitmap,
    kvm_clear_dirty_log_protect,
    kvm_dirty_bitmap_bytes,
    kvm_enable_manual_dirty_log_protect,
    kvm_get_dirty_log_protect,
)
from tdpsim.model.kvm import Kvm, kvm_vcpu_guest_exited, kvm_vcpu_insn_end
from tdpsim.model.ioctl import KVM_CAP_DISABLE_QUIRKS2, kvm_vm_ioctl_enable_cap
from tdpsim.model.kvm_main import (
    KvmUserspaceMemoryRegion2,
    id_to_memslot,
    kvm_gmem_punch_hole,
    kvm_mmu_notifier_invalidate_range,
    kvm_mmu_slot_apply_flags,
    kvm_mmu_zap_all_fast,
    kvm_recover_nx_huge_pages,
    kvm_replace_memslot,
    kvm_vm_ioctl_set_memory_region,
    kvm_vm_set_mem_attributes,
)
from tdpsim.model.memslot import (
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMORY_ATTRIBUTE_PRIVATE, HostBacking,
)
from tdpsim.model.mmu_fault import (
    ept_violation_error_code,
    kvm_mmu_page_fault,
    kvm_mmu_load,
)
from tdpsim.model.mmu_internal import EEXIST, ENOENT, RET_PF_EMULATE, RET_PF_RETRY
from tdpsim.model.sched import BARRIER, RETRY_WAIT, WAIT_COND
from tdpsim.model.tdp_mmu import kvm_tdp_mmu_zap_leafs
from tdpsim.model.tdx import TdGuest
from tdpsim.model.spte import PAGE_SHIFT, PG_LEVEL_2M
from tdpsim.model.tlb import ept_translate, guest_memory_access
from tdpsim.model.vmm import RAM_HVA_BASE
from tdpsim.model.vmx import vcpu_enter_guest

from .tracking import KEY_HOST_PTE, TRACKER

HOST_MM = "host_mm"  # a primary-MMU page-table update (kind of scheduling point)
KEY_SRCU = ("lock", "srcu")  # a wait condition; like a lock, not data a fault reads
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"
# The dirty-log check's record (``OpContext.dirty_*``): the order of a guest write and of a
# KVM_GET_DIRTY_LOG's return decides whether that harvest had to report the write, so DPOR
# must see the two as dependent (two writes, or two harvests, commute).
KEY_DIRTY_LOG = ("vm", "dirty_log_record")


class RetryBoundExceeded(Exception):
    """A vCPU's local RET_PF_RETRY loop ran more than the scenario's bound."""


@dataclass
class OpContext:
    """What an op may use: the VM, the TDX module (or None) and the retry bound.

    ``srcu_*`` model ``kvm->srcu`` for memslot updates: a vCPU holds the SRCU read side
    while it handles a fault (it uses the memslot it looked up), and a memslot update
    installs the new slot, then ``synchronize_srcu`` waits for readers that may still hold
    the old one.  The model has no SRCU readers of its own, so the ops add them, and the
    VM's memslot swaps (``kvm_swap_active_memslots``) wait on this SRCU.
    """

    kvm: Kvm
    tdx: Any = None
    retry_bound: int = 16
    srcu_gen: int = 0
    srcu_readers: dict = field(default_factory=dict)  # vcpu -> generation at entry
    srcu_wait_gen: int = -1
    # Userspace's view of dirty logging on slot 0, for ``scenario.check_dirty_log``: armed
    # once the ioctl enabling it returned (a live migration copies all memory after that,
    # so only later writes must be logged); the guest writes since, and each
    # KVM_GET_DIRTY_LOG's reported gfns, in one order (``dirty_seq``).
    dirty_armed: bool = False
    dirty_seq: int = 0
    dirty_writes: list = field(default_factory=list)  # (seq, vcpu, gfn)
    dirty_harvests: list = field(default_factory=list)  # (seq, frozenset of gfns)

    def __post_init__(self) -> None:
        self.kvm.synchronize_srcu_expedited = self.synchronize_srcu

    # Footprints: a reader reads the generation and writes only its own slot, so two vCPUs'
    # read sections commute with each other (as SRCU's per-CPU counters do) and only
    # ``synchronize_srcu`` orders them.
    def srcu_read_lock(self, vcpu: int) -> None:
        TRACKER.note(KEY_SRCU, False)
        TRACKER.note(KEY_SRCU + (vcpu,), True)
        self.srcu_readers[vcpu] = self.srcu_gen
        # __srcu_read_lock's smp_mb(): the section's lookups (the memslot of the fault)
        # come after it, so a memslot update may publish its new slots in between.
        self.kvm.sched.point(BARRIER, KEY_SRCU + (vcpu,), False)

    def srcu_read_unlock(self, vcpu: int) -> None:
        TRACKER.note(KEY_SRCU + (vcpu,), True)
        del self.srcu_readers[vcpu]

    def dirty_record(self, write: bool) -> int:
        """The next position in the dirty-log record.  Harvests and (dis)arming write the
        record's key, guest writes read it: only a write against a harvest is ordered."""
        TRACKER.note(KEY_DIRTY_LOG, write)
        self.dirty_seq += 1
        return self.dirty_seq

    def srcu_quiescent(self) -> bool:
        """No reader that entered before the pending ``synchronize_srcu`` is left."""
        return all(g > self.srcu_wait_gen for g in self.srcu_readers.values())

    def synchronize_srcu(self) -> None:
        TRACKER.note(KEY_SRCU, True)
        self.srcu_wait_gen = self.srcu_gen
        self.srcu_gen += 1
        while True:
            for v in range(len(self.kvm.vcpus)):  # the wait reads every reader's slot
                TRACKER.note(KEY_SRCU + (v,), False)
            if self.srcu_quiescent():
                return
            self.kvm.sched.point(WAIT_COND, KEY_SRCU, False)


def op_fault(ctx: OpContext, vcpu: int, gfn: int, write: bool = True, exec: bool = False,
             private: Optional[bool] = None, present: bool = False) -> int:
    """A vCPU's EPT violation on ``gfn`` → ``kvm_mmu_page_fault``, retried locally while
    it returns RET_PF_RETRY (as ``tdx_handle_ept_violation`` / ``vcpu_enter_guest`` re-entry
    would).  ``private`` defaults to the gfn's current attribute; ``present``: the EPT entry
    the CPU found was present but lacked the permission (exit qualification RWX bits →
    PFERR_PRESENT_MASK, what lets ``fast_page_fault`` try).  Returns the RET_PF_* value or
    -errno of the last attempt."""
    kvm = ctx.kvm
    v = kvm.vcpus[vcpu]
    if private is None:
        private = kvm.kvm_has_mirrored_tdp() and kvm.kvm_mem_is_private(gfn)
    gpa = gfn << PAGE_SHIFT
    if not private:
        gpa |= kvm.gfn_direct_bits << PAGE_SHIFT
    err = ept_violation_error_code(write=write, exec=exec, private=private, present=present)
    for _ in range(ctx.retry_bound + 1):
        if kvm.vm_dead:
            return -5  # -EIO: KVM_REQ_VM_DEAD stops the vCPU
        if (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in v.requests or v.root is None
                or v.root.role.invalid):
            kvm_mmu_load(v)  # kvm_mmu_reload() on the next entry
        ctx.srcu_read_lock(vcpu)
        if ctx.tdx is not None and private:
            # Its local retry loop keeps SRCU; RET_PF_RETRY here means it gave up (an
            # invalid memslot, or the bound) and the vCPU re-enters the guest.
            r = ctx.tdx.tdx_handle_ept_violation(v, gpa)
        else:
            r = kvm_mmu_page_fault(v, gpa, err)
        ctx.srcu_read_unlock(vcpu)
        if r != RET_PF_RETRY:
            return r
        kvm.sched.point(RETRY_WAIT, ("vcpu", vcpu), False)
    raise RetryBoundExceeded(f"vCPU {vcpu}: gfn {gfn:#x} still RET_PF_RETRY after "
                             f"{ctx.retry_bound} retries")


def _enter(ctx: OpContext, v: Any) -> int:
    """Get vCPU ``v`` into guest mode: ``tdx_vcpu_run`` for a TD, ``vcpu_enter_guest``
    otherwise; retried while entry is cancelled or refused.  0 or -errno."""
    for _ in range(ctx.retry_bound + 1):
        if v.in_guest:
            return 0
        cancels = v.entry_cancels
        if ctx.tdx is not None:
            r = ctx.tdx.tdx_vcpu_run(v)
        else:
            r = vcpu_enter_guest(v)
        if r < 0:
            return r
        if not v.in_guest and v.entry_cancels == cancels:
            # Refused (wait_for_sept_zap, BUSY): only another thread can change that.  A
            # cancelled entry (request or kick seen after IN_GUEST_MODE) just loops: the
            # next attempt services what cancelled it.
            ctx.kvm.sched.point(RETRY_WAIT, ("vcpu", v.vcpu_id), False)
    raise RetryBoundExceeded(f"vCPU {v.vcpu_id}: entry still refused after "
                             f"{ctx.retry_bound} attempts")


class ParkingTdGuest(TdGuest):
    """The TD guest kernel (``TdGuest``) with the explorer's vCPU loop, ``_enter``: an entry
    that ``wait_for_sept_zap`` or a BUSY TDH.VP.ENTER refused parks until another thread
    wrote what it read.  The kernel's KVM_RUN loop spins there; spinning cannot change the
    outcome and would multiply the interleavings (one per spin)."""

    def __init__(self, ctx: OpContext, vcpu: int) -> None:
        TdGuest.__init__(self, ctx.kvm, ctx.tdx, vcpu)
        self.ctx = ctx

    def enter(self, vcpu_id: Optional[int] = None) -> bool:
        v = self._vcpu(vcpu_id)
        return _enter(self.ctx, v) == 0 and v.in_guest


def op_guest_access(ctx: OpContext, vcpu: int, gfn: int, write: bool = False,
                    exec: bool = False, private: Optional[bool] = None) -> int:
    """The guest on ``vcpu`` loads/stores/fetches ``gfn`` (entering guest mode first): a
    TLB hit or the CPU's EPT walk (``tlb.guest_memory_access``); on an EPT violation the
    vCPU exits, KVM handles the fault (``op_fault``) and the access runs again.  A TD's
    private gfn goes through the TDX module (``TdGuest.touch``, #VE accepted).  The vCPU
    stays in guest mode afterwards.  Returns the host pfn reached, or -errno (-ENOENT: KVM
    emulated the access, no memslot holds the gfn: a KVM_EXIT_MMIO for userspace)."""
    kvm = ctx.kvm
    v = kvm.vcpus[vcpu]
    if private is None:
        private = kvm.kvm_has_mirrored_tdp() and kvm.kvm_mem_is_private(gfn)
    if private:
        if ctx.tdx is None:
            raise ValueError("a private access needs a TD with the TDX glue")
        res = ParkingTdGuest(ctx, vcpu).touch(gfn << PAGE_SHIFT, write, accept_on_ve=True)
        return res.pfn if res.pfn is not None else -14  # -EFAULT
    gfn_bits = kvm.gfn_direct_bits
    for _ in range(ctx.retry_bound + 1):
        r = _enter(ctx, v)
        if r < 0:
            return r
        # The guest starts an instruction: a kick reads guest_busy with the vCPU's mode.
        TRACKER.note(v.mode_key, True)
        v.guest_busy = True
        pfn = guest_memory_access(v, gfn | gfn_bits, write, exec)
        if pfn is not None:
            kvm_vcpu_insn_end(v)
            if write and ctx.dirty_armed:
                ctx.dirty_writes.append((ctx.dirty_record(False), vcpu, gfn))
            return pfn
        # EPT violation: VM exit (a TD exit for a TD), then KVM's fault handling.
        present = ept_translate(kvm, v.root, gfn | gfn_bits) is not None
        if ctx.tdx is not None:
            ctx.tdx._td_exit(v)
        else:
            kvm_vcpu_guest_exited(v)
        v.guest_busy = False
        r = op_fault(ctx, vcpu, gfn, write=write, exec=exec, private=False, present=present)
        if r < 0:
            return r
        if r == RET_PF_EMULATE:
            return -ENOENT
    raise RetryBoundExceeded(f"vCPU {vcpu}: guest access to gfn {gfn:#x} still faulting "
                             f"after {ctx.retry_bound} tries")


def op_guest_exit(ctx: OpContext, vcpu: int) -> None:
    """The guest on ``vcpu`` leaves guest mode on its own (HLT, a TDVMCALL)."""
    v = ctx.kvm.vcpus[vcpu]
    if not v.in_guest:
        return
    if ctx.tdx is not None:
        ctx.tdx.tdx_vcpu_exit(v)
    else:
        kvm_vcpu_guest_exited(v)


def op_flush(ctx: OpContext) -> None:
    """``kvm_flush_remote_tlbs`` (e.g. from a memslot change or an MMU notifier's flush)."""
    ctx.kvm.kvm_flush_remote_tlbs()


def op_accept(ctx: OpContext, vcpu: int, gfn: int, npages: int = 1) -> bool:
    """The TD guest accepts [gfn, gfn + npages) with Linux's ``tdx_accept_memory`` (2M
    first, then 4K): TD entry, TDG.MEM.PAGE.ACCEPT, EPT-violation exits handled by
    ``tdx_handle_ept_violation`` and re-executed.  Needs the TDX glue."""
    if ctx.tdx is None:
        raise ValueError("accept needs a TD with the TDX glue (tdx.external_ops = 'tdx')")
    guest = ParkingTdGuest(ctx, vcpu)
    return guest.accept_memory(gfn << PAGE_SHIFT, (gfn + npages) << PAGE_SHIFT, vcpu)


def op_convert(ctx: OpContext, start: int, end: int, to: str) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES on [start, end): ``to`` is "shared" or "private" (write
    mmu_lock pre/post hooks inside an MMU invalidation)."""
    if to not in ("shared", "private"):
        raise ValueError(f"to must be 'shared' or 'private', not {to!r}")
    attrs = KVM_MEMORY_ATTRIBUTE_PRIVATE if to == "private" else 0
    kvm_vm_set_mem_attributes(ctx.kvm, start, end, attrs)


def op_punch_hole(ctx: OpContext, start: int, end: int) -> None:
    """guest_memfd FALLOC_FL_PUNCH_HOLE on gfns [start, end) of slot 0."""
    kvm = ctx.kvm
    kvm_gmem_punch_hole(kvm, kvm.gfn_to_memslot(start), start, end)


def op_zap_leafs(ctx: OpContext, start: int, end: int) -> None:
    """``kvm_tdp_mmu_zap_leafs`` on every valid root under the write lock, then flush."""
    kvm = ctx.kvm
    kvm.mmu_lock.write_lock()
    if kvm_tdp_mmu_zap_leafs(kvm, start, end, False):
        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.write_unlock()


def op_mmu_notifier(ctx: OpContext, start: int, end: int) -> None:
    """An mmu_notifier invalidation of shared memory [start, end)."""
    kvm_mmu_notifier_invalidate_range(ctx.kvm, start, end)


def op_thp_split(ctx: OpContext, gfn: int) -> None:
    """The host splits the THP behind gfn's 2M frame (``split_huge_pmd``): mmu_notifier
    ``invalidate_range_start`` over the frame, the split with mmu_lock dropped, then
    ``invalidate_range_end``.  Faults in the window must retry; the host page-table write
    is noted for DPOR, the fault's read of it is not (PCT/random/DFS explore that order)."""
    kvm = ctx.kvm
    slot = kvm.gfn_to_memslot(gfn)
    base = gfn & ~511
    frame = slot.gfn_to_hva(base) >> 21

    def split() -> None:
        # The host's PMD rewrite is a step of its own: faults may run just before it.
        kvm.sched.point(HOST_MM, ("host", "thp", frame), True)
        TRACKER.note(("host", "thp", frame), True)
        slot.backing.split_frames.add(frame)

    kvm_mmu_notifier_invalidate_range(kvm, base, base + 512, host_change=split)


def op_host_migrate(ctx: OpContext, gfn: int) -> None:
    """The host migrates the page behind shared ``gfn`` (compaction, NUMA balancing:
    ``try_to_migrate_one``): mmu_notifier ``invalidate_range_start``, the host PTE switched
    to a new page with mmu_lock dropped (a THP is split first), ``invalidate_range_end``;
    the old page is then freed.  A fault that looked up the old page before the start must
    retry (``mmu_invalidate_seq``); an SPTE left on it is checked as stale."""
    kvm = ctx.kvm
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        raise ValueError(f"gfn {gfn:#x} is in no memslot")
    hva = slot.gfn_to_hva(gfn)

    def move() -> None:
        kvm.sched.point(HOST_MM, KEY_HOST_PTE, True)
        TRACKER.note(KEY_HOST_PTE, True)
        backing = slot.backing
        backing.split_frames.add(hva >> 21)
        page = hva >> PAGE_SHIFT
        # A pfn no identity-mapped page has (SPTE pfns go up to bit 39).
        backing.moved[page] = backing.moved.get(page, page) + (1 << 38)

    kvm_mmu_notifier_invalidate_range(kvm, gfn, gfn + 1, host_change=move)


def op_mmu_reload(ctx: OpContext, vcpu: int) -> None:
    """``kvm_mmu_reload`` on the way into the guest: with KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
    pending or no valid root, ``kvm_mmu_load`` puts the obsolete root and allocates or
    shares a new one (``kvm_tdp_mmu_alloc_root``)."""
    v = ctx.kvm.vcpus[vcpu]
    if KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in v.requests or v.root is None or v.root.role.invalid:
        kvm_mmu_load(v)


def op_invalidate_roots(ctx: OpContext) -> None:
    """``kvm_mmu_zap_all_fast``: invalidate the direct roots, zap them under the read lock."""
    kvm_mmu_zap_all_fast(ctx.kvm)


def op_nx_recovery(ctx: OpContext, ratio: int = 1) -> int:
    """One period of the NX recovery worker (``kvm_recover_nx_huge_pages``)."""
    return kvm_recover_nx_huge_pages(ctx.kvm, ratio)


def op_dirty_log(ctx: OpContext, enable: bool = True) -> None:
    """KVM_SET_USER_MEMORY_REGION2 flipping KVM_MEM_LOG_DIRTY_PAGES on slot 0
    (``kvm_set_memslot`` KVM_MR_FLAGS_ONLY): install a copy of the slot with the new flags,
    ``synchronize_srcu`` so no fault still uses the old one, then
    ``kvm_mmu_slot_apply_flags`` (enable: eager split + write-protect under the read lock;
    disable: huge-page recovery).  Faults that start after the swap see the new flags for
    their whole duration, as with the kernel's immutable memslots."""
    kvm = ctx.kvm
    old = kvm.memslots[0]
    flags = old.flags | KVM_MEM_LOG_DIRTY_PAGES if enable else \
        old.flags & ~KVM_MEM_LOG_DIRTY_PAGES
    new = copy.copy(old)
    new.flags = flags
    if enable and not old.flags & KVM_MEM_LOG_DIRTY_PAGES:
        # kvm_prepare_memory_region: the new slot gets a bitmap of its own, zeroed (or all
        # set with INITIALLY_SET), before it is installed.
        kvm_alloc_dirty_bitmap(kvm, new)
    kvm_replace_memslot(kvm, old, new)
    ctx.synchronize_srcu()
    kvm_mmu_slot_apply_flags(kvm, old, flags)
    if enable != ctx.dirty_armed:
        ctx.dirty_record(True)
        # The explorer's guest accesses set no A/D bits (the simulator's ept_hw_access
        # does), so a write under PML would go unlogged here: armed for write protection.
        ctx.dirty_armed = enable and not kvm.policy.enable_pml
        # Disabling ends the migration: what was not harvested no longer has to be.
        ctx.dirty_writes.clear()
        ctx.dirty_harvests.clear()


def op_disable_quirks(ctx: OpContext, quirks: int) -> None:
    """KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2) with ``quirks`` as args[0], e.g. 0x80
    (KVM_X86_QUIRK_SLOT_ZAP_ALL: a memslot DELETE/MOVE then zaps only that slot)."""
    if kvm_vm_ioctl_enable_cap(ctx.kvm, KVM_CAP_DISABLE_QUIRKS2, quirks):
        raise ValueError(f"quirks: {quirks:#x} has bits KVM_CAP_DISABLE_QUIRKS2 does not "
                         "know (-EINVAL)")


def op_set_memory_region(ctx: OpContext, slot: int, gfn: int = 0, npages: int = 0,
                         host_page_level: int = PG_LEVEL_2M) -> None:
    """KVM_SET_USER_MEMORY_REGION2 (``kvm_vm_ioctl_set_memory_region``) on memslot
    ``slot``: ``npages`` 0 deletes it (KVM_MR_DELETE), a new base ``gfn`` moves it
    (KVM_MR_MOVE), a new id creates it (KVM_MR_CREATE) over fresh anonymous memory at
    the VMM's hva for ``gfn`` (``host_page_level``: 1 = 4K pages, 2 = THP).  A DELETE or
    MOVE publishes the slot's KVM_MEMSLOT_INVALID copy, waits for faults still using the
    old slot (SRCU), zaps the old slot and waits again after the final swap.  In a VM
    with private memory only a DELETE is modelled (a guest_memfd slot cannot move, and
    creating one needs a guest_memfd binding the op does not make)."""
    kvm = ctx.kvm
    if not 1 <= host_page_level <= 3:
        raise ValueError(f"host_page_level: expected 1 (4K), 2 (THP) or 3 (hugetlb 1G), got "
                         f"{host_page_level}")
    if kvm.kvm_arch_has_private_mem() and npages:
        raise ValueError("set_memory_region: a VM with private memory can only delete a "
                         "memslot here (npages = 0): creating or moving one needs a "
                         "guest_memfd binding, which is not modelled")
    old = id_to_memslot(kvm, slot)
    if old is None and not npages:
        raise ValueError(f"slot: no memslot {slot} to delete")
    if old is not None:
        mem = KvmUserspaceMemoryRegion2(slot, old.flags, gfn << PAGE_SHIFT,
                                        npages << PAGE_SHIFT, old.userspace_addr)
    else:
        hva = RAM_HVA_BASE + (gfn << PAGE_SHIFT)
        mem = KvmUserspaceMemoryRegion2(
            slot, 0, gfn << PAGE_SHIFT, npages << PAGE_SHIFT, hva,
            backing=HostBacking(hva, npages << PAGE_SHIFT, host_page_level))
    r = kvm_vm_ioctl_set_memory_region(kvm, mem)
    if r:
        why = ("-EEXIST: overlaps another memslot" if r == -EEXIST else
               "-EINVAL: KVM refused the region (misaligned, a new size for an existing "
               "slot, or beyond the guest's physical address width)")
        raise ValueError(f"KVM_SET_USER_MEMORY_REGION2 on slot {slot} (gfn {gfn:#x}, npages "
                         f"{npages:#x}) failed: {why}")


def op_get_dirty_log(ctx: OpContext, clear_pages: int = 0) -> int:
    """One harvest of slot 0 by userspace: KVM_GET_DIRTY_LOG (``kvm_vm_ioctl_get_dirty_log``
    → ``kvm_get_dirty_log_protect``), which also clears and write-protects the dirty pages;
    with manual protect (op ``manual_protect``) it only copies the bitmap, and
    KVM_CLEAR_DIRTY_LOG of what it reported (``kvm_clear_dirty_log_protect``) follows, as
    in QEMU's migration, over the first ``clear_pages`` pages (0: the whole slot; QEMU
    clears in chunks, a multiple of 64).  Returns how many pages it reported (and so will
    copy), or -errno (-ENOENT: the slot does not log).  The kernel serialises both with
    memslot updates (slots_lock): do not race this op with ``dirty_log`` in one scenario."""
    kvm = ctx.kvm
    slot = kvm.memslots[0]
    if not 0 <= clear_pages <= slot.npages or (clear_pages & 63 and clear_pages != slot.npages):
        # KVM_CLEAR_DIRTY_LOG would fail -EINVAL: a scenario mistake, not a finding.
        raise ValueError(f"clear_pages: {clear_pages} is not a multiple of 64 within the "
                         f"slot's {slot.npages} pages")
    bitmap = bytearray(kvm_dirty_bitmap_bytes(slot))
    r = kvm_get_dirty_log_protect(kvm, slot.id, bitmap)
    npages = slot.npages
    if r == 0 and kvm.manual_dirty_log_protect:
        npages = clear_pages or npages
        r = kvm_clear_dirty_log_protect(kvm, slot.id, 0, npages, bitmap)
    if r < 0:
        return r
    gfns = frozenset(slot.base_gfn + i for i in range(npages)
                     if bitmap[i >> 3] >> (i & 7) & 1)
    if ctx.dirty_armed:
        ctx.dirty_harvests.append((ctx.dirty_record(True), gfns))
    return len(gfns)


def op_manual_protect(ctx: OpContext, initially_set: bool = True) -> int:
    """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), as QEMU enables it: harvests no
    longer re-protect, KVM_CLEAR_DIRTY_LOG does; with INITIALLY_SET enabling logging marks
    every page dirty and protects (and splits) nothing until the first clear."""
    args0 = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | \
        (KVM_DIRTY_LOG_INITIALLY_SET if initially_set else 0)
    return kvm_enable_manual_dirty_log_protect(ctx.kvm, 0, args0)


OPS: dict[str, Callable[..., Any]] = {
    "fault": op_fault,
    "accept": op_accept,
    "convert": op_convert,
    "punch_hole": op_punch_hole,
    "zap_leafs": op_zap_leafs,
    "mmu_notifier": op_mmu_notifier,
    "thp_split": op_thp_split,
    "host_migrate": op_host_migrate,
    "invalidate_roots": op_invalidate_roots,
    "mmu_reload": op_mmu_reload,
    "nx_recovery": op_nx_recovery,
    "dirty_log": op_dirty_log,
    "get_dirty_log": op_get_dirty_log,
    "manual_protect": op_manual_protect,
    "disable_quirks": op_disable_quirks,
    "set_memory_region": op_set_memory_region,
    "guest_access": op_guest_access,
    "guest_exit": op_guest_exit,
    "flush": op_flush,
}


def op_params(name: str) -> dict[str, inspect.Parameter]:
    """The arguments an op takes (everything after the context)."""
    params = list(inspect.signature(OPS[name]).parameters.values())[1:]
    return {p.name: p for p in params}
