"""The SVM nested-page-fault entry — mirrors ``npf_interception`` (``svm/svm.c``): the
NPF's ``exit_info_1`` is already a page-fault error code, ``exit_info_2`` the faulting
GPA; emit ``kvm_page_fault`` and call ``kvm_mmu_page_fault``.

:func:`npf_error_code` is what the CPU puts in ``exit_info_1`` (AMD APM vol. 2, "Nested
versus Guest Page Faults"): the nested walk treats every access as a user access, and
every access of the guest's own page tables as a write; bit 32 says the fault hit the
final translation, bit 33 that it hit a guest page-table access.

Simplifications: the guest RIP is not modelled (0 in the tracepoint); decode assists /
emulation after RET_PF_EMULATE are left to the caller (the access ends there); 6.12's
dropping of synthetic error-code bits and SEV-SNP's PFERR_GUEST_ENC_MASK are not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import KvmPageFault
from .mmu_fault import kvm_mmu_page_fault
from .spte import (PAGE_SHIFT, PT_PRESENT_MASK, SPTE_INDEX, is_executable_pte, is_last_spte,
                   is_mmio_spte, is_shadow_present_pte, is_writable_pte, spte_to_pfn)
from .mmu_internal import (
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_MASK,
    PFERR_PRESENT_MASK,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    RET_PF_EMULATE,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import KvmVcpu

__all__ = ["npf_error_code", "npf_interception", "npt_access", "npt_access_outcome",
           "leaf_spte"]


def npf_error_code(*, write: bool = False, exec: bool = False, present: bool = False,
                   guest_page: bool = False, rsvd: bool = False) -> int:
    """``exit_info_1`` of an NPF: U always; W for writes and for guest page-table
    accesses; P when the nested translation exists but forbids the access; RSVD when
    the walk hit reserved bits (an MMIO SPTE: the oracle, QEMU TCG, then leaves P clear,
    as its recorded 0x10000000c reads show)."""
    err = PFERR_USER_MASK | (PFERR_GUEST_PAGE_MASK if guest_page else PFERR_GUEST_FINAL_MASK)
    if write or guest_page:
        err |= PFERR_WRITE_MASK
    if exec and not guest_page:
        err |= PFERR_FETCH_MASK
    if present:
        err |= PFERR_PRESENT_MASK
    if rsvd:
        err |= PFERR_RSVD_MASK
    return err


def npf_interception(vcpu: "KvmVcpu", fault_address: int, error_code: int) -> int:
    """``npf_interception``: trace, then the common handler (a RET_PF_* or -errno)."""
    kvm = vcpu.kvm
    if kvm.tracer is not None:
        kvm.tracer(KvmPageFault(vcpu.vcpu_id, 0, fault_address, error_code))
    return kvm_mmu_page_fault(vcpu, fault_address, error_code)


def leaf_spte(vcpu: "KvmVcpu", gfn: int) -> int:
    """The SPTE the CPU's nested walk of *gfn* ends on in the vCPU's root (the leaf, or
    the first non-present entry)."""
    sp = vcpu.root
    while True:
        level = sp.role.level
        spte = sp.spt[SPTE_INDEX(gfn, level)]
        if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
            return spte
        sp = vcpu.kvm.sp_by_pfn[spte_to_pfn(spte)]


def npt_access(vcpu: "KvmVcpu", gpa: int, kind: str, guest_page: bool = False,
               max_faults: int = 8) -> int:
    """What the CPU does for one guest access of *kind* ("read", "write", "exec") to
    *gpa* under NPT: an NPF (:func:`npf_interception`) until the nested translation
    allows it or KVM emulates the access.  Returns the number of NPFs; raises
    RuntimeError without forward progress."""
    return npt_access_outcome(vcpu, gpa, kind, guest_page, max_faults)[0]


def npt_access_outcome(vcpu: "KvmVcpu", gpa: int, kind: str, guest_page: bool = False,
                       max_faults: int = 8) -> tuple[int, int]:
    """:func:`npt_access`, also saying how the access ended: 0 (the translation allows
    it), RET_PF_EMULATE (KVM emulates it: MMIO, which userspace completes) or -errno
    (KVM_RUN fails, e.g. -EFAULT with KVM_EXIT_MEMORY_FAULT)."""
    kvm = vcpu.kvm
    write, fetch = kind == "write" or guest_page, kind == "exec" and not guest_page
    for n in range(max_faults):
        spte = leaf_spte(vcpu, gpa >> PAGE_SHIFT)
        present = is_shadow_present_pte(spte)
        if present and (is_writable_pte(spte) if write
                        else is_executable_pte(kvm.masks, spte) if fetch
                        else bool(spte & PT_PRESENT_MASK)):
            return n, 0
        rsvd = is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, spte)
        r = npf_interception(vcpu, gpa, npf_error_code(write=write, exec=fetch, present=present,
                                                       guest_page=guest_page, rsvd=rsvd))
        if r == RET_PF_EMULATE or r < 0:
            return n + 1, r
    raise RuntimeError(f"no forward progress on {kind} at {gpa:#x}")
