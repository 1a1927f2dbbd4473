"""The VMX EPT-violation entry — mirrors ``handle_ept_violation`` (``vmx/vmx.c``) and
``__vmx_handle_ept_violation`` (``vmx/common.h``): turn the exit qualification into a
page-fault error code, emit the ``kvm_page_fault`` tracepoint and call
``kvm_mmu_page_fault``.  TDs enter through ``tdx.KvmTdx.tdx_handle_ept_violation``, which
calls ``__vmx_handle_ept_violation`` too (it adds PFERR_PRIVATE_ACCESS for private GPAs).

``ept_hw_access`` is the CPU's side of a guest access through the direct root: it sets
the leaf's A/D bits (and logs to PML) or reports the EPT violation the access takes.

Simplifications (one line each):
- The guest RIP is not modelled (0 in the tracepoint), and MMIO/emulation after
  RET_PF_EMULATE is left to the caller.
- The CPU sets A/D only on the leaf (non-leaf SPTEs are created with A set).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .dirty_log import vmx_pml_log
from .events import KvmPageFault, traces
from .mmu_fault import kvm_mmu_page_fault
from .sched import SPTE_CMPXCHG
from .spte import (
    PAGE_SHIFT,
    VMX_EPT_EXECUTABLE_MASK,
    VMX_EPT_READABLE_MASK,
    PT_WRITABLE_MASK,
    is_last_spte,
    is_shadow_present_pte,
    spte_ad_enabled,
)
from .tdp_iter import for_each_tdp_pte
from .mmu_internal import (
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import KvmVcpu

# Exit-qualification bits of an EPT violation (arch/x86/include/asm/vmx.h).
EPT_VIOLATION_ACC_READ: Final = 1 << 0
EPT_VIOLATION_ACC_WRITE: Final = 1 << 1
EPT_VIOLATION_ACC_INSTR: Final = 1 << 2
EPT_VIOLATION_PROT_READ: Final = 1 << 3
EPT_VIOLATION_PROT_WRITE: Final = 1 << 4
EPT_VIOLATION_PROT_EXEC: Final = 1 << 5
EPT_VIOLATION_PROT_MASK: Final = EPT_VIOLATION_PROT_READ | EPT_VIOLATION_PROT_WRITE | EPT_VIOLATION_PROT_EXEC
EPT_VIOLATION_EXEC_FOR_RING3_LIN: Final = 1 << 6  # MBEC: user-mode executable
EPT_VIOLATION_GVA_IS_VALID: Final = 1 << 7
EPT_VIOLATION_GVA_TRANSLATED: Final = 1 << 8


def ept_exit_qualification(*, write: bool = False, exec: bool = False,
                           prot: int = 0) -> int:
    """The exit qualification the CPU reports for an access: ``prot`` is the RWX the
    existing translation allows (0 when not present), in EPT_VIOLATION_PROT_* form."""
    qual = EPT_VIOLATION_GVA_IS_VALID | EPT_VIOLATION_GVA_TRANSLATED | prot
    if exec:
        qual |= EPT_VIOLATION_ACC_INSTR
    elif write:
        qual |= EPT_VIOLATION_ACC_WRITE
    else:
        qual |= EPT_VIOLATION_ACC_READ
    return qual


def __vmx_handle_ept_violation(vcpu: "KvmVcpu", gpa: int, exit_qualification: int) -> int:
    """``__vmx_handle_ept_violation``: the error code KVM derives from the qualification."""
    error_code = PFERR_USER_MASK if exit_qualification & EPT_VIOLATION_ACC_READ else 0
    if exit_qualification & EPT_VIOLATION_ACC_WRITE:
        error_code |= PFERR_WRITE_MASK
    if exit_qualification & EPT_VIOLATION_ACC_INSTR:
        error_code |= PFERR_FETCH_MASK
    # ept page table entry is present?
    if exit_qualification & EPT_VIOLATION_PROT_MASK:
        error_code |= PFERR_PRESENT_MASK
    if exit_qualification & EPT_VIOLATION_GVA_IS_VALID:
        error_code |= (PFERR_GUEST_FINAL_MASK
                       if exit_qualification & EPT_VIOLATION_GVA_TRANSLATED
                       else PFERR_GUEST_PAGE_MASK)
    # vt_is_tdx_private_gpa(): a TD's GPA without the shared bit.
    if vcpu.kvm.kvm_has_mirrored_tdp() and not vcpu.kvm.kvm_is_addr_direct(gpa):
        error_code |= PFERR_PRIVATE_ACCESS
    return kvm_mmu_page_fault(vcpu, gpa, error_code)


def handle_ept_violation(vcpu: "KvmVcpu", gpa: int, exit_qualification: int) -> int:
    """``handle_ept_violation``: trace, then the common handler."""
    kvm = vcpu.kvm
    if kvm.tracer is not None and traces(kvm.tracer, KvmPageFault):
        kvm.tracer(KvmPageFault(vcpu.vcpu_id, 0, gpa, exit_qualification))
    return __vmx_handle_ept_violation(vcpu, gpa, exit_qualification)


def ept_hw_access(vcpu: "KvmVcpu", gpa: int, write: bool = False, exec: bool = False) -> int:
    """A guest access to ``gpa`` (shared/direct root) as the CPU performs it: if the leaf
    allows it, atomically set A (and D for a write) — with PML enabled, a write that sets
    D is logged — and return 0; otherwise return the exit qualification of
    the EPT violation (``EPT_VIOLATION_PROT_*`` = the RWX the leaf allows)."""
    kvm = vcpu.kvm
    gfn = (gpa >> PAGE_SHIFT) & ~kvm.kvm_gfn_direct_bits()
    leaf = None
    kvm.rcu.rcu_read_lock()
    for it in for_each_tdp_pte(kvm, vcpu.root, gfn, gfn + 1):
        if is_shadow_present_pte(it.old_spte) and is_last_spte(it.old_spte, it.level):
            leaf = it
            break
    kvm.rcu.rcu_read_unlock()
    spte = leaf.old_spte if leaf is not None else 0
    prot = ((EPT_VIOLATION_PROT_READ if spte & VMX_EPT_READABLE_MASK else 0)
            | (EPT_VIOLATION_PROT_WRITE if spte & PT_WRITABLE_MASK else 0)
            | (EPT_VIOLATION_PROT_EXEC if spte & VMX_EPT_EXECUTABLE_MASK else 0))
    need = (EPT_VIOLATION_PROT_EXEC if exec else EPT_VIOLATION_PROT_WRITE if write
            else EPT_VIOLATION_PROT_READ)
    if leaf is None or not prot & need:
        return ept_exit_qualification(write=write, exec=exec, prot=prot)
    if spte_ad_enabled(spte) and kvm.kvm_ad_enabled():
        m = kvm.masks
        bits = m.shadow_accessed_mask | (m.shadow_dirty_mask if write else 0)
        if spte & bits != bits:
            if kvm.sched.hook is not None:
                kvm.sched.hook(SPTE_CMPXCHG, ("spte", leaf.sp.spt_pfn, leaf.index), True)
            if leaf.sp.spt[leaf.index] != spte:
                return ept_hw_access(vcpu, gpa, write, exec)  # changed: walk again
            leaf.sp.spt[leaf.index] = spte | bits  # locked OR by the page walker
            if (write and not spte & m.shadow_dirty_mask and kvm.policy.enable_pml
                    and kvm.nr_memslots_dirty_logging):
                vmx_pml_log(vcpu, gfn << PAGE_SHIFT)
    return 0


def vcpu_enter_guest(vcpu: "KvmVcpu") -> int:
    """``vcpu_enter_guest`` (``x86.c``) for a VMX guest up to ``vmx_vcpu_run``'s VM-entry:
    service the requests (KVM_REQ_VM_DEAD, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS →
    ``kvm_mmu_reload``, KVM_REQ_TLB_FLUSH → ``kvm_vcpu_flush_tlb_all``), set IN_GUEST_MODE
    and re-check for requests and kicks, enter.  Returns 0 in guest mode, 1 when entry was
    cancelled (the run loop tries again) or -EIO (VM dead)."""
    from .kvm import (kvm_request_pending, kvm_vcpu_enter_guest_mode, kvm_vcpu_guest_entered,
                      kvm_vcpu_wait_exit_done)
    from .mmu_fault import kvm_mmu_load

    kvm = vcpu.kvm
    if kvm.vm_dead or vcpu.kvm_check_request("KVM_REQ_VM_DEAD"):
        return -5  # -EIO
    if vcpu.in_guest:
        return 0
    kvm_vcpu_wait_exit_done(vcpu)
    kvm_request_pending(vcpu)  # the servicing below reads vcpu->requests
    if "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS" in vcpu.requests or vcpu.root is None \
            or vcpu.root.role.invalid:
        kvm_mmu_load(vcpu)
    if vcpu.kvm_check_request("KVM_REQ_TLB_FLUSH"):
        vcpu.tlb.flush()
    if not kvm_vcpu_enter_guest_mode(vcpu):
        return 1
    kvm_vcpu_guest_entered(vcpu)
    return 0
