"""The page-fault entry of the MMU — ``kvm_mmu_do_page_fault`` (``mmu_internal.h``),
``kvm_tdp_page_fault`` / ``kvm_tdp_mmu_page_fault``, ``kvm_mmu_faultin_pfn``,
``is_page_fault_stale``, ``fast_page_fault``, ``kvm_mmu_load`` and
``kvm_tdp_mmu_map_private_pfn`` from ``arch/x86/kvm/mmu/mmu.c``.

Simplifications (one line each):
- ``kvm_mmu_page_fault``'s RET_PF_WRITE_PROTECTED path is not modelled: the TDP MMU
  never returns it.  ``handle_mmio_page_fault`` never sees a reserved non-MMIO SPTE.
- ``map_writable`` is cleared by read-only memslots and by a read of host memory nobody
  populated (the zero page, ``HostBacking.unpopulated_frames``).  No page is hwpoisoned
  and no signal is pending (KVM_PFN_ERR_HWPOISON / SIGPENDING never occur).
- ``mmu_topup_memory_caches`` cannot fail, so it is not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Optional

from .kvm import KVM_X86_SW_PROTECTED_VM
from .mmu_internal import (
    EAGAIN,
    EFAULT,
    EINTR,
    EINVAL,
    EIO,
    ENOENT,
    EOPNOTSUPP,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    RET_PF_CONTINUE,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_INVALID,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    RET_PF_WRITE_PROTECTED,
    KvmPageFault,
    is_error_pfn,
)
from .memslot import KVM_MEM_READONLY, KVM_MEMSLOT_INVALID, kvm_max_level_for_order
from .spte import (
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    MMIO_SPTE_GEN_MASK,
    PAGE_SHIFT,
    PG_LEVEL_4K,
    PT_WRITABLE_MASK,
    get_mmio_spte_generation,
    is_access_track_spte,
    is_last_spte,
    is_mmio_spte,
    is_mmu_writable_spte,
    is_shadow_present_pte,
    is_writable_pte,
    restore_acc_track_spte,
)
from .events import FastPageFault
from .sched import BARRIER, MMU_INVALIDATE, MMU_INVALIDATE_KEY
from .tdp_iter import for_each_tdp_pte, sptep_address
from .tdp_mmu import (
    is_access_allowed,
    kvm_tdp_mmu_alloc_root,
    kvm_tdp_mmu_map,
    kvm_tdp_mmu_promote_mirror_spte,
    kvm_mmu_max_gfn,
    kvm_tdp_mmu_put_root,
    try_cmpxchg64,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu

KVM_MEMORY_EXIT_FLAG_PRIVATE: Final = 1 << 3


def kvm_mmu_load(vcpu: "KvmVcpu") -> None:
    """``kvm_mmu_load`` → ``mmu_alloc_direct_roots``: a TD gets its mirror root first;
    obsolete (invalid) roots are dropped and replaced (``kvm_mmu_free_obsolete_roots``)."""
    kvm = vcpu.kvm
    vcpu.kvm_check_request("KVM_REQ_MMU_FREE_OBSOLETE_ROOTS")
    for attr in ("mirror_root", "root"):
        root = getattr(vcpu, attr)
        if root is not None and root.role.invalid:
            kvm.mmu_lock.write_lock()
            kvm_tdp_mmu_put_root(kvm, root)
            kvm.mmu_lock.write_unlock()
            setattr(vcpu, attr, None)
    if kvm.kvm_has_mirrored_tdp() and vcpu.mirror_root is None:
        kvm_tdp_mmu_alloc_root(vcpu, True)
    if vcpu.root is None:
        kvm_tdp_mmu_alloc_root(vcpu, False)


def kvm_mmu_reload(vcpu: "KvmVcpu") -> None:
    """``kvm_mmu_reload`` at guest entry: load a root if the vCPU has none, or only an
    obsolete one (a fast zap invalidated it: KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)."""
    if vcpu.root is None or vcpu.root.role.invalid:
        kvm_mmu_load(vcpu)


def mmu_invalidate_retry_gfn(kvm: "Kvm", mmu_seq: int, gfn: int) -> bool:
    """``mmu_invalidate_retry_gfn``: an invalidation covering gfn is in flight, or one
    finished since the fault snapshotted ``mmu_seq``."""
    kvm.mmu_lock.lockdep_assert_held()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    if kvm.mmu_invalidate_in_progress and (
            kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end):
        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def mmu_invalidate_retry_gfn_unsafe(kvm: "Kvm", mmu_seq: int, gfn: int) -> bool:
    """``mmu_invalidate_retry_gfn_unsafe``: the same check without mmu_lock (may give false
    negatives, rechecked under the lock)."""
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    if kvm.mmu_invalidate_in_progress and (
            kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end):
        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def is_page_fault_stale(vcpu: "KvmVcpu", fault: KvmPageFault) -> bool:
    """``is_page_fault_stale``: the (direct) root became obsolete, or an invalidation hit."""
    if vcpu.root is not None and vcpu.root.role.invalid:
        return True
    return fault.slot is not None and mmu_invalidate_retry_gfn(vcpu.kvm, fault.mmu_seq, fault.gfn)


def kvm_mmu_faultin_pfn(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``kvm_mmu_faultin_pfn``: snapshot ``mmu_invalidate_seq``, check the private/shared
    attribute, then get the pfn from guest_memfd (private) or the host mapping."""
    kvm = vcpu.kvm
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    fault.mmu_seq = kvm.mmu_invalidate_seq
    kvm.sched.point(BARRIER, MMU_INVALIDATE_KEY, False)  # smp_rmb(): seq before the pfn
    if fault.is_private != kvm.kvm_mem_is_private(fault.gfn):
        return kvm_mmu_prepare_memory_fault_exit(vcpu, fault)   # userspace must convert
    slot = fault.slot
    if slot is None:
        if fault.is_private:
            return kvm_mmu_prepare_memory_fault_exit(vcpu, fault)
        return kvm_handle_noslot_fault(vcpu, fault)
    # A slot being deleted or moved: retry until its old SPTEs are zapped (prefault
    # punts to userspace instead, having no forward-progress guarantee).
    if slot.flags & KVM_MEMSLOT_INVALID:
        return -EAGAIN if fault.prefetch else RET_PF_RETRY
    if kvm.profile.faultin_pfn_retry_gfn_unsafe and \
            mmu_invalidate_retry_gfn_unsafe(kvm, fault.mmu_seq, fault.gfn):
        return RET_PF_RETRY
    fault.map_writable = not slot.flags & KVM_MEM_READONLY
    if fault.is_private:
        if slot.gmem is None:      # kvm_mmu_faultin_pfn_private: !kvm_slot_can_be_private
            return kvm_mmu_prepare_memory_fault_exit(vcpu, fault)
        fault.pfn, order = slot.gmem.kvm_gmem_get_pfn(fault.gfn - slot.base_gfn + slot.gmem_offset)
        fault.max_level = kvm_max_level_for_order(order)
    elif fault.write and slot.flags & KVM_MEM_READONLY:
        fault.pfn = KVM_PFN_ERR_RO_FAULT  # __gfn_to_hva_many → KVM_HVA_ERR_RO_BAD
    else:
        hva = slot.gfn_to_hva(fault.gfn)
        fault.pfn = slot.backing.hva_to_pfn(hva)
        if slot.backing.unpopulated_frames and slot.backing.maps_zero_page(hva, fault.write):
            fault.map_writable = False
    if is_error_pfn(fault.pfn):
        return kvm_handle_error_pfn(fault)
    # Again, purely to avoid contending mmu_lock with an invalidation that began while
    # the pfn was looked up (v6.8+ kvm_faultin_pfn).
    if kvm.profile.faultin_pfn_retry_gfn_unsafe and \
            mmu_invalidate_retry_gfn_unsafe(kvm, fault.mmu_seq, fault.gfn):
        return RET_PF_RETRY
    return RET_PF_CONTINUE


def kvm_mmu_prepare_memory_fault_exit(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``kvm_mmu_prepare_memory_fault_exit``: KVM_RUN fails with -EFAULT and
    KVM_EXIT_MEMORY_FAULT for the faulting page (``vcpu.memory_fault``: gpa, size,
    flags; only KVM_MEMORY_EXIT_FLAG_PRIVATE is defined)."""
    vcpu.memory_fault = (fault.gfn << PAGE_SHIFT, 1 << PAGE_SHIFT,
                         KVM_MEMORY_EXIT_FLAG_PRIVATE if fault.is_private else 0)
    return -EFAULT


def vcpu_cache_mmio_info(vcpu: "KvmVcpu", gfn: int) -> None:
    """``vcpu_cache_mmio_info`` (x86.h) for a TDP fault (gva 0): remember the MMIO gfn
    under the current memslot generation.  The kernel skips it while a memslot update is
    in flight (KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, not modelled); an entry cached then
    here is just as stale once the swap's generation bump follows its SRCU wait."""
    vcpu.mmio_gfn = gfn
    vcpu.mmio_gen = vcpu.kvm.memslots_generation


def vcpu_match_mmio_gpa(vcpu: "KvmVcpu", gpa: int) -> bool:
    """``vcpu_match_mmio_gpa`` (x86.h): the cached MMIO gfn, still of this generation."""
    return (vcpu.mmio_gen == vcpu.kvm.memslots_generation and vcpu.mmio_gfn != 0
            and vcpu.mmio_gfn == gpa >> PAGE_SHIFT)


def check_mmio_spte(vcpu: "KvmVcpu", spte: int) -> bool:
    """``check_mmio_spte``: the MMIO SPTE was made under the current memslot generation
    (else the memslots changed and the gfn may be RAM now).  Its tracepoint is not
    emitted."""
    kvm_gen = vcpu.kvm.memslots_generation & MMIO_SPTE_GEN_MASK
    return kvm_gen == get_mmio_spte_generation(spte)


def handle_mmio_page_fault(vcpu: "KvmVcpu", addr: int) -> int:
    """``handle_mmio_page_fault`` (direct MMU): a reserved-bit fault is emulated MMIO
    when the vCPU's MMIO cache or the MMIO SPTE says so for this generation;
    RET_PF_INVALID sends a stale MMIO SPTE to the page-fault path, and anything else
    (the SPTE was zapped meanwhile) faults again.  The walk is ``get_mmio_spte``'s
    (the last SPTE of the direct root); on a direct MMU the SPTE's gfn is the fault's."""
    kvm = vcpu.kvm
    if vcpu_match_mmio_gpa(vcpu, addr):
        return RET_PF_EMULATE
    sp, index, _ = kvm_tdp_mmu_fast_pf_get_last_sptep(vcpu, addr >> PAGE_SHIFT)
    spte = sp.spt[index]
    if is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, spte):
        if not check_mmio_spte(vcpu, spte):
            return RET_PF_INVALID
        vcpu_cache_mmio_info(vcpu, addr >> PAGE_SHIFT)
        return RET_PF_EMULATE
    return RET_PF_RETRY


def kvm_handle_noslot_fault(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``kvm_handle_noslot_fault``: emulated MMIO (remembered in the vCPU's MMIO cache),
    cached as an MMIO SPTE — except for a gfn above host.MAXPHYADDR, which is emulated
    every time without an SPTE."""
    kvm = vcpu.kvm
    vcpu_cache_mmio_info(vcpu, fault.gfn)
    fault.pfn = KVM_PFN_NOSLOT
    fault.map_writable = False
    if fault.gfn > kvm_mmu_max_gfn(kvm):
        return RET_PF_EMULATE
    return RET_PF_CONTINUE


def kvm_handle_error_pfn(fault: KvmPageFault) -> int:
    """``kvm_handle_error_pfn``: a write to a read-only slot is emulated (userspace sees
    KVM_EXIT_MMIO) and no SPTE is cached for it; any other error pfn is -EFAULT."""
    if fault.pfn == KVM_PFN_ERR_RO_FAULT:
        return RET_PF_EMULATE
    return -EFAULT


def page_fault_can_be_fast(kvm: "Kvm", fault: KvmPageFault) -> bool:
    """``page_fault_can_be_fast``: not an MMIO (RSVD) fault, not a private/shared
    mismatch on a VM with private memory; a not-present fault only with A/D bits off
    (access tracking); a present one only if it is a write (write protection)."""
    if fault.rsvd:
        return False
    if kvm.kvm_arch_has_private_mem() and fault.is_private != kvm.kvm_mem_is_private(fault.gfn):
        return False
    if not fault.present:
        return not kvm.kvm_ad_enabled()
    return fault.write


def kvm_tdp_mmu_fast_pf_get_last_sptep(vcpu: "KvmVcpu", gfn: int) -> tuple:
    """``kvm_tdp_mmu_fast_pf_get_last_sptep``: the last SPTE the walk of the *direct*
    root visits (fast PF is not supported for mirror roots), as (sp, index, level)."""
    last = None
    for iter in for_each_tdp_pte(vcpu.kvm, vcpu.root, gfn, gfn + 1):
        last = (iter.sp, iter.index, iter.level)
    return last


def fast_pf_fix_direct_spte(vcpu: "KvmVcpu", fault: KvmPageFault, sp, index: int,
                            old_spte: int, new_spte: int) -> bool:
    """``fast_pf_fix_direct_spte``: one cmpxchg; a newly writable SPTE logs
    ``fault->gfn`` dirty.  D is not set: the CPU sets it on the write."""
    ok, _ = try_cmpxchg64(vcpu.kvm, sp, index, old_spte, new_spte)
    if not ok:
        return False
    if is_writable_pte(new_spte) and not is_writable_pte(old_spte):
        fault.slot.mark_page_dirty_in_slot(fault.gfn)
    return True


def fast_page_fault(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``fast_page_fault`` (direct root, no mmu_lock): a spurious fault, or an
    MMU-writable leaf (4K, or huge outside dirty logging) made writable / an
    access-tracked one restored with one cmpxchg, retried up to 4 times.  Counts
    ``pf_fast`` for FIXED and SPURIOUS; traces whenever the walk ran."""
    kvm = vcpu.kvm
    m = kvm.masks
    if not page_fault_can_be_fast(kvm, fault):
        return RET_PF_INVALID
    kvm.rcu.rcu_read_lock()
    ret = RET_PF_INVALID
    retry_count = 0
    while True:
        sp, index, level = kvm_tdp_mmu_fast_pf_get_last_sptep(vcpu, fault.gfn)
        spte = sp.spt[index]
        if not is_shadow_present_pte(spte) or not is_last_spte(spte, level):
            break
        if is_access_allowed(m, fault, spte):
            ret = RET_PF_SPURIOUS
            break
        new_spte = spte
        if not kvm.kvm_ad_enabled() and is_access_track_spte(m, spte):
            new_spte = restore_acc_track_spte(m, new_spte) | m.shadow_accessed_mask
        if fault.write and is_mmu_writable_spte(m, spte):
            new_spte |= PT_WRITABLE_MASK
            # Only the first page would be logged: let the slow path map 4K instead.
            if level > PG_LEVEL_4K and fault.slot is not None \
                    and fault.slot.kvm_slot_dirty_track_enabled():
                break
        if new_spte == spte or not is_access_allowed(m, fault, new_spte):
            break
        if fast_pf_fix_direct_spte(vcpu, fault, sp, index, spte, new_spte):
            ret = RET_PF_FIXED
            break
        retry_count += 1
        if retry_count > 4:
            break  # pr_warn_once("Fast #PF retrying more than 4 times.")
    if kvm.tracer is not None:
        width = (1 << kvm.profile.fast_page_fault_error_code_bits) - 1
        kvm.tracer(FastPageFault(vcpu.vcpu_id, fault.addr, fault.error_code & width,
                                 sptep_address(sp, index), spte, sp.spt[index], ret))
    kvm.rcu.rcu_read_unlock()
    if ret != RET_PF_INVALID:
        vcpu.stat.pf_fast += 1
    return ret


def kvm_tdp_mmu_page_fault(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``kvm_tdp_mmu_page_fault``: fast path, faultin, then map under the read lock."""
    kvm = vcpu.kvm
    r = fast_page_fault(vcpu, fault)
    if r != RET_PF_INVALID:
        return r
    r = kvm_mmu_faultin_pfn(vcpu, fault)
    if r != RET_PF_CONTINUE:
        return r
    r = RET_PF_RETRY
    kvm.mmu_lock.read_lock()
    if not is_page_fault_stale(vcpu, fault):
        r = kvm_tdp_mmu_map(vcpu, fault)
    kvm.mmu_lock.read_unlock()
    if fault.mirror_promotion_level:
        r = _promote_then_map(vcpu, fault)
    return r


def _promote_then_map(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """The hypothetical ``mirror_promotion="seamcall"`` KVM: promote under the write lock;
    if the TDX module refuses, fall back to the 4K mapping the SEED patch would make."""
    kvm = vcpu.kvm
    kvm.mmu_lock.write_lock()
    ret = kvm_tdp_mmu_promote_mirror_spte(vcpu, fault)
    kvm.mmu_lock.write_unlock()
    if ret == 0:
        return RET_PF_FIXED
    fault.mirror_promotion_level = 0
    fault.max_level = PG_LEVEL_4K
    fault.goal_level = PG_LEVEL_4K
    fault.pfn |= fault.gfn & ((1 << 9) - 1)
    kvm.mmu_lock.read_lock()
    r = kvm_tdp_mmu_map(vcpu, fault) if not is_page_fault_stale(vcpu, fault) else RET_PF_RETRY
    kvm.mmu_lock.read_unlock()
    return r


def kvm_sw_protected_private_access(kvm: "Kvm", cr2_or_gpa: int, err: int) -> int:
    """The ``kvm_mmu_page_fault`` step for ``KVM_X86_SW_PROTECTED_VM``: the gfn's memory
    attributes are the source of truth, so a non-RSVD fault on a private gfn gets
    PFERR_PRIVATE_ACCESS (TDs get it from the GPA's shared bit instead)."""
    if (kvm.vm_type == KVM_X86_SW_PROTECTED_VM and not err & PFERR_RSVD_MASK
            and kvm.kvm_mem_is_private(cr2_or_gpa >> PAGE_SHIFT)):
        err |= PFERR_PRIVATE_ACCESS
    return err


def kvm_mmu_page_fault(vcpu: "KvmVcpu", cr2_or_gpa: int, error_code: int) -> int:
    """``kvm_mmu_page_fault``: the handler every EPT violation reaches.  Since 6.11
    (``KernelProfile.pf_stats_in_kvm_mmu_page_fault``) it counts ``pf_taken`` and the
    result here, so TD-build and pre-fault maps count nothing.  Returns a RET_PF_* value
    (6.15+ returns it instead of 1) or -errno."""
    kvm = vcpu.kvm
    if error_code & PFERR_RSVD_MASK:
        if kvm.WARN_ON_ONCE(error_code & PFERR_PRIVATE_ACCESS, "kvm_mmu_page_fault",
                            "private reserved-bit fault"):
            return -EFAULT
        r = handle_mmio_page_fault(vcpu, cr2_or_gpa)
        if r == RET_PF_EMULATE:
            return r      # emulated straight away: not counted in any fault stat
        if r != RET_PF_INVALID:
            return r
    counted_here = kvm.profile.pf_stats_in_kvm_mmu_page_fault
    if counted_here:
        vcpu.stat.pf_taken += 1
    r = kvm_mmu_do_page_fault(vcpu, cr2_or_gpa, error_code)
    if kvm.KVM_BUG_ON(r == RET_PF_INVALID, "kvm_mmu_page_fault", "RET_PF_INVALID"):
        return -EIO
    if r < 0:
        return r
    if counted_here:
        kvm_mmu_count_pf_result(vcpu, r, False)
    return r


def kvm_mmu_do_page_fault(vcpu: "KvmVcpu", cr2_or_gpa: int, err: int,
                          prefetch: bool = False, level: Optional[list[int]] = None) -> int:
    """``kvm_mmu_do_page_fault``: build ``struct kvm_page_fault`` and run the TDP fault
    handler; before 6.11 it also counted the vCPU stats.  Returns a RET_PF_* value or
    -errno; ``level`` (the kernel's ``u8 *level``) receives the goal level."""
    kvm = vcpu.kvm
    err = kvm_sw_protected_private_access(kvm, cr2_or_gpa, err)
    fault = KvmPageFault(
        addr=cr2_or_gpa, error_code=err, prefetch=prefetch,
        exec=bool(err & PFERR_FETCH_MASK), write=bool(err & PFERR_WRITE_MASK),
        present=bool(err & PFERR_PRESENT_MASK), rsvd=bool(err & PFERR_RSVD_MASK),
        user=bool(err & PFERR_USER_MASK), is_tdp=True,
        is_private=bool(err & PFERR_PRIVATE_ACCESS),
        nx_huge_page_workaround_enabled=kvm.is_nx_huge_page_enabled(),
        max_level=KVM_MAX_HUGEPAGE_LEVEL, vcpu_id=vcpu.vcpu_id,
    )
    fault.gfn = (cr2_or_gpa >> PAGE_SHIFT) & ~kvm.kvm_gfn_direct_bits()
    fault.slot = kvm.gfn_to_memslot(fault.gfn)
    counted_here = not kvm.profile.pf_stats_in_kvm_mmu_page_fault
    if counted_here and not prefetch:
        vcpu.stat.pf_taken += 1
    if kvm.audit is not None:
        kvm.audit(("fault", vcpu.vcpu_id, fault.gfn, fault.is_private, err))
    r = kvm_tdp_mmu_page_fault(vcpu, fault)
    if level is not None:
        level[:] = [fault.goal_level]
    if r == RET_PF_EMULATE and fault.is_private:
        r = -EFAULT  # "unexpected emulation request on private memory"
    if counted_here:
        kvm_mmu_count_pf_result(vcpu, r, prefetch)
    if kvm.audit is not None:
        kvm.audit(("ret", r))
    return r


def kvm_mmu_count_pf_result(vcpu: "KvmVcpu", r: int, prefetch: bool) -> None:
    """The stat tail of ``kvm_mmu_page_fault`` (``kvm_mmu_do_page_fault`` before 6.11):
    prefetch faults are neither spurious nor emulated.  ``pf_retry`` is the model's own
    counter, not a kernel stat."""
    if r == RET_PF_FIXED:
        vcpu.stat.pf_fixed += 1
    elif prefetch:
        pass
    elif r == RET_PF_EMULATE:
        vcpu.stat.pf_emulate += 1
    elif r == RET_PF_SPURIOUS:
        vcpu.stat.pf_spurious += 1
    elif r == RET_PF_RETRY:
        vcpu.stat.pf_retry += 1


def ept_violation_error_code(*, write: bool = False, exec: bool = False,
                             private: bool = False, present: bool = False) -> int:
    """The error code ``__vmx_handle_ept_violation`` / ``tdx_handle_ept_violation`` pass
    to ``kvm_mmu_page_fault``: reads count as user (EPT R), final-address access."""
    err = PFERR_GUEST_FINAL_MASK | PFERR_USER_MASK
    if write:
        err |= PFERR_WRITE_MASK
    if exec:
        err |= PFERR_FETCH_MASK
    if present:
        err |= PFERR_PRESENT_MASK
    if private:
        err |= PFERR_PRIVATE_ACCESS
    return err


def kvm_tdp_mmu_map_private_pfn(vcpu: "KvmVcpu", gfn: int, pfn: int,
                                max_retries: int = 1000) -> int:
    """``kvm_tdp_mmu_map_private_pfn`` (TD build, KVM_TDX_INIT_MEM_REGION): a synthetic
    4K prefetch fault, retried while RET_PF_RETRY; anything but FIXED is -EIO.
    ``max_retries`` stands in for ``signal_pending`` (-EINTR)."""
    kvm = vcpu.kvm
    fault = KvmPageFault(
        addr=gfn << PAGE_SHIFT, error_code=PFERR_GUEST_FINAL_MASK | PFERR_PRIVATE_ACCESS,
        prefetch=True, exec=False, write=False, present=False, rsvd=False, user=False,
        is_tdp=True, is_private=True,
        nx_huge_page_workaround_enabled=kvm.is_nx_huge_page_enabled(),
        max_level=PG_LEVEL_4K, gfn=gfn, slot=kvm.gfn_to_memslot(gfn), pfn=pfn,
        map_writable=True, vcpu_id=vcpu.vcpu_id,
    )
    if kvm.vm_dead:
        return -EIO
    if kvm.audit is not None:
        kvm.audit(("fault", vcpu.vcpu_id, gfn, True, fault.error_code))
    r = _map_private_pfn_retry(vcpu, fault, max_retries)
    if kvm.audit is not None:
        kvm.audit(("ret", r))
    return r


def _map_private_pfn_retry(vcpu: "KvmVcpu", fault: KvmPageFault, max_retries: int) -> int:
    """The retry loop of ``kvm_tdp_mmu_map_private_pfn``."""
    kvm = vcpu.kvm
    for _ in range(max_retries):
        if kvm.vm_dead:
            return -EIO
        kvm.mmu_lock.read_lock()
        r = kvm_tdp_mmu_map(vcpu, fault)
        kvm.mmu_lock.read_unlock()
        if r != RET_PF_RETRY:
            return 0 if r == RET_PF_FIXED else -EIO
    return -EINTR


def kvm_tdp_page_prefault(vcpu: "KvmVcpu", gpa: int, error_code: int, level: list[int],
                          max_retries: int = 1000) -> int:
    """``kvm_tdp_page_prefault`` (``kvm_tdp_map_page`` before the 2025-10 TDX cleanups):
    a prefetch fault on ``gpa`` retried while RET_PF_RETRY.  FIXED, SPURIOUS and
    WRITE_PROTECTED are success (0), EMULATE is -ENOENT (nothing to map, e.g. MMIO),
    anything else -EIO.  ``max_retries`` stands in for ``signal_pending`` (-EINTR)."""
    for _ in range(max_retries):
        if vcpu.kvm_check_request("KVM_REQ_VM_DEAD"):
            return -EIO
        r = kvm_mmu_do_page_fault(vcpu, gpa, error_code, True, level)
        if r != RET_PF_RETRY:
            break
    else:
        return -EINTR
    if r < 0:
        return r
    if r in (RET_PF_FIXED, RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED):
        return 0
    if r == RET_PF_EMULATE:
        return -ENOENT
    vcpu.kvm.WARN_ON_ONCE(True, "kvm_tdp_page_prefault", "could not fix page fault during prefault")
    return -EIO


def kvm_arch_vcpu_pre_fault_memory(vcpu: "KvmVcpu", gpa: int, size: int) -> int:
    """``kvm_arch_vcpu_pre_fault_memory`` (mmu.c): map the page at ``gpa`` as a prefetch
    fault — private if the gfn is private on a VM with private memory, else through the
    shared alias — and return how many bytes of [gpa, gpa + size) the mapping covers
    (a huge mapping may reach past the range), or -errno."""
    kvm = vcpu.kvm
    if not kvm.pre_fault_allowed:
        return -EOPNOTSUPP
    gfn = gpa >> PAGE_SHIFT
    if kvm.kvm_gfn_direct_bits() and gfn & kvm.kvm_gfn_direct_bits():
        return -EINVAL  # kvm_is_gfn_alias(): userspace passes the memslot's gpa
    kvm_mmu_load(vcpu)  # kvm_mmu_reload()
    error_code = PFERR_GUEST_FINAL_MASK
    direct_bits = 0
    if kvm.kvm_arch_has_private_mem() and kvm.kvm_mem_is_private(gfn):
        error_code |= PFERR_PRIVATE_ACCESS
    else:
        direct_bits = kvm.kvm_gfn_direct_bits() << PAGE_SHIFT
    level = [PG_LEVEL_4K]
    r = kvm_tdp_page_prefault(vcpu, gpa | direct_bits, error_code, level)
    if r < 0:
        return r
    huge = KVM_PAGES_PER_HPAGE(level[0]) << PAGE_SHIFT
    end = (gpa & -huge) + huge
    return min(size, end - gpa)
