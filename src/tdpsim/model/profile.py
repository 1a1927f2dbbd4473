"""Kernel profiles: the decisions that differ between the kernel generations the model can
stand for.  Not a kernel file: the kernel keeps these differences in its git history, one
commit each; a profile is the value of every such commit for one release.

Each field is named after the kernel identifier or behaviour it controls, and its comment
cites the commit that introduced the current form (subject, upstream release).  Code reads
a field at the decision point the kernel has (``kvm.profile.FIELD``), never a version
number.  A profile hangs off each ``Kvm``; the vendor SPTE format is chosen separately
(``spte.SpteMasks``), as the kernel picks it at module load.

Adding a field: give it the newest kernel's behaviour as the default of the dataclass,
override it in the older profiles that lack the commit, and cite the commit here.
"""

from __future__ import annotations

from typing import Final

from dataclasses import dataclass, fields, replace

# Values of the special SPTEs (arch/x86/kvm/mmu/spte.h).
_BIT63: Final = 1 << 63
_FROZEN_LOW: Final = 0x5A0  # "any value that is guaranteed not to be MMU-present nor MMIO"


@dataclass(frozen=True)
class KernelProfile:
    """The version-dependent decisions of one kernel generation."""

    name: str
    description: str

    # 7f01cab84928 "KVM: x86/mmu: Allow non-zero value for non-present SPTE and removed
    # SPTE" (v6.10): every empty SPTE holds BIT(63) (EPT's suppress-#VE bit) so a TD takes
    # an EPT violation rather than a #VE; before it, non-present SPTEs were 0.
    SHADOW_NONPRESENT_VALUE: int = _BIT63

    # Same commit (v6.10): REMOVED_SPTE became SHADOW_NONPRESENT_VALUE | 0x5a0 (before:
    # 0x5a0); 964cea817196 "KVM: x86/tdp_mmu: Rename REMOVED_SPTE to FROZEN_SPTE" (v6.11)
    # renamed it without changing the value.  Traces print the raw value either way.
    FROZEN_SPTE: int = _BIT63 | _FROZEN_LOW

    # 7fa5e2929198 "KVM: x86/mmu: Add Suppress VE bit to EPT shadow_mmio_mask/
    # shadow_present_mask" (v6.10): kvm_mmu_set_ept_masks() puts VMX_EPT_SUPPRESS_VE_BIT
    # in every present EPT SPTE and in the MMIO mask; before it, EPT leaves and tables had
    # bit 63 clear (shadow_present_mask was 0 with exec-only support).  NPT is unaffected.
    ept_suppress_ve_in_present_mask: bool = True

    # c4b33d28ea51 "KVM: x86/mmu: Split huge pages mapped by the TDP MMU on fault" (v6.2):
    # kvm_tdp_mmu_map splits a huge leaf above the goal level in place
    # (tdp_mmu_split_huge_page); before it, it zapped the leaf (tdp_mmu_zap_spte_atomic:
    # freeze, flush, clear) and linked an empty table.  Measured: 6.1 traces the freeze.
    tdp_mmu_split_huge_page_on_fault: bool = True

    # 8ca983631f3c "KVM: x86/mmu: Zap invalidated TDP MMU roots at 4KiB granularity"
    # (v6.9): tdp_mmu_zap_root zaps at 4K, 2M, 1G, then the root level; before it at 1G,
    # then the root level (zapping a table recursing into its children).
    tdp_mmu_zap_root_4k_first: bool = True

    # "KVM: x86/mmu: Pass full 64-bit error code when handling page faults" (between v6.1
    # and v6.12): fast_page_fault traces fault->error_code as a u64 (6.12 prints
    # "P|W|U|0x100000000"); 6.1 traced its low 32 bits.
    fast_page_fault_error_code_bits: int = 64

    # aca48556c592 "KVM: x86/mmu: Process atomically-zapped SPTEs after replacing
    # REMOVED_SPTE" (v6.10): tdp_mmu_zap_spte_atomic() freezes untraced, flushes, writes
    # SHADOW_NONPRESENT_VALUE and only then runs handle_changed_spte(old -> non-present).
    # Before it, the freeze itself went through tdp_mmu_set_spte_atomic (traced as
    # old -> REMOVED_SPTE, children torn down then) and the final write of 0 was silent.
    zap_spte_atomic_handles_after_write: bool = True

    # 13e2e4f62a4b "KVM: x86/mmu: Recover TDP MMU huge page mappings in-place instead of
    # zapping" (v6.13): disabling dirty logging replaces each collapsible table by a huge
    # leaf (kvm_mmu_recover_huge_pages).  Up to v6.12, kvm_mmu_zap_collapsible_sptes()
    # zapped the table (tdp_mmu_zap_spte_atomic, one TLB flush per zap) and the next
    # faults mapped the huge page again.
    recover_huge_pages_in_place: bool = True

    # a57750909580 "KVM: x86/mmu: Recover TDP MMU NX huge pages using MMU read lock"
    # (v6.18): kvm_recover_nx_huge_pages takes mmu_lock for read and zaps each SP with
    # kvm_tdp_mmu_zap_possible_nx_huge_page (tdp_mmu_set_spte_atomic).  Before it,
    # mmu_lock for write, kvm_tdp_mmu_zap_sp (tdp_mmu_set_spte), cond_resched_rwlock_write.
    recover_nx_huge_pages_under_read_lock: bool = True

    # d02c357e5bfa "KVM: x86/mmu: Retry fault before acquiring mmu_lock if mapping is
    # changing" (v6.8): kvm_faultin_pfn checks mmu_invalidate_retry_gfn_unsafe() before
    # and again after getting the pfn, returning RET_PF_RETRY without taking mmu_lock.
    # Before it, only is_page_fault_stale() under mmu_lock caught the invalidation.
    faultin_pfn_retry_gfn_unsafe: bool = True

    # "KVM: x86: Add a VM type define for TDX" (v6.14) and the TDX host support that made
    # KVM_X86_TDX_VM creatable (v6.16).  Older kernels cannot run a TD.
    tdx_vm_type: bool = True

    # "KVM: x86: Add support for "protected VMs" that can utilize private memory" (v6.8):
    # the KVM_X86_SW_PROTECTED_VM type; KVM_CREATE_VM refuses it before (-EINVAL).
    KVM_X86_SW_PROTECTED_VM: bool = True

    # "KVM: Introduce per-page memory attributes" (v6.8): the KVM_SET_MEMORY_ATTRIBUTES
    # VM ioctl; before it the ioctl is unknown (kvm_arch_vm_ioctl: -ENOTTY).
    KVM_SET_MEMORY_ATTRIBUTES: bool = True

    # "KVM: x86/mmu: Implement kvm_arch_vcpu_pre_fault_memory()" (v6.11, with the generic
    # KVM_PRE_FAULT_MEMORY vCPU ioctl); before it the ioctl is unknown
    # (kvm_arch_vcpu_ioctl: -EINVAL).
    KVM_PRE_FAULT_MEMORY: bool = True

    # cc7ed3358e41 "KVM: x86/mmu: Always set SPTE's dirty bit if it's created as
    # writable" (v6.13): make_spte() sets W, MMU-writable and D together.  Before it,
    # D was skipped when overwriting a writable leaf (2867eb782cf7 "Skip the "try
    # unsync" path iff the old SPTE was a leaf SPTE", v6.13, in 6.1.y/6.12.y stable).
    make_spte_always_dirty: bool = True

    # f5e7f00cf195 "KVM: x86/mmu: Account pf_{fixed,emulate,spurious} in callers of "do
    # page fault"" and 5186ec223b68 "Bump pf_taken stat only in the "real" page fault
    # handler" (v6.11): the fault stats are counted in kvm_mmu_page_fault(), so
    # KVM_PRE_FAULT_MEMORY and the TD-build map path count nothing.  Before: in
    # kvm_mmu_do_page_fault().
    pf_stats_in_kvm_mmu_page_fault: bool = True

    # James Houghton's NX-recovery series (v5, <20250707224720.4016504-1-jthoughton@
    # google.com>, v6.18): possible_nx_huge_pages[KVM_NR_MMU_TYPES] (shadow, TDP MMU),
    # each recovered with its own to_zap = DIV_ROUND_UP(nr_pages, ratio).  Before: one
    # list, to_zap from the total nx_lpage_splits.
    possible_nx_huge_pages_per_mmu_type: bool = True

    # 386d69f9f29b "KVM: x86/mmu: Treat TDP MMU faults as spurious if access is already
    # allowed" (v6.13), on 6385d01eec16 "Don't overwrite shadow-present MMU SPTEs when
    # prefaulting" (v6.13): tdp_mmu_map_handle_target_level returns RET_PF_SPURIOUS
    # before make_spte when the present leaf already allows the access (or the fault is
    # a prefetch).  Up to v6.12 it always runs make_spte and installs the result unless
    # it equals the old SPTE (an exec fault on an NX-split child rewrites it, D dropped).
    tdp_mmu_map_spurious_if_access_allowed: bool = True

    # 1a175082b190 "KVM: x86/mmu: WARN and flush if resolving a TDP MMU fault clears
    # MMU-writable" (v6.13): tdp_mmu_map_handle_target_level flushes (and WARNs) when
    # the new leaf loses MMU-writable; up to v6.12 only replacing a table flushes.
    tdp_mmu_map_warn_leaf_change_flush: bool = True

    # HP-v3 (Yan Zhao's TDX huge page series v3, 11/24 "KVM: x86/mmu: Introduce
    # kvm_split_cross_boundary_leafs()"): converting memory to shared and punching a
    # guest_memfd hole first split the huge leaves that straddle the range, so only the
    # range loses its mappings.  Upstream (v6.12 and after) has no such split:
    # tdp_mmu_zap_leafs zaps every leaf overlapping the range, huge ones whole.
    split_cross_boundary_leafs: bool = True

    def __reduce__(self) -> tuple:
        """Pickled as its fields: compare's worker processes receive the profile pickled,
        and the compiled build's frozen classes refuse pickle's attribute-wise restore."""
        return (KernelProfile, tuple(getattr(self, f.name) for f in fields(self)))

    def with_(self, **changes: object) -> "KernelProfile":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The generation the model follows by default (reference §0.1: UPSTREAM + HP-v3).
KERNEL_6_18_HP_V3 = KernelProfile(
    name="6.18+hp-v3",
    description="v6.18/6.19 with the TDX huge page series v3 (the model's baseline)",
)

KERNEL_6_12 = KERNEL_6_18_HP_V3.with_(
    name="6.12",
    description="v6.12 LTS: no TDX; non-present BIT(63); zap-collapsible recovery",
    recover_huge_pages_in_place=False,
    tdx_vm_type=False,
    recover_nx_huge_pages_under_read_lock=False,
    make_spte_always_dirty=False,
    possible_nx_huge_pages_per_mmu_type=False,
    tdp_mmu_map_spurious_if_access_allowed=False,
    tdp_mmu_map_warn_leaf_change_flush=False,
    split_cross_boundary_leafs=False,
)

KERNEL_6_1 = KERNEL_6_12.with_(
    name="6.1",
    description="v6.1 LTS (Debian 12): no TDX; non-present SPTEs are 0; faults zap huge pages",
    SHADOW_NONPRESENT_VALUE=0,
    FROZEN_SPTE=_FROZEN_LOW,
    ept_suppress_ve_in_present_mask=False,
    tdp_mmu_split_huge_page_on_fault=False,
    tdp_mmu_zap_root_4k_first=False,
    fast_page_fault_error_code_bits=32,
    zap_spte_atomic_handles_after_write=False,
    KVM_X86_SW_PROTECTED_VM=False,
    KVM_SET_MEMORY_ATTRIBUTES=False,
    KVM_PRE_FAULT_MEMORY=False,
    faultin_pfn_retry_gfn_unsafe=False,
    pf_stats_in_kvm_mmu_page_fault=False,
)

DEFAULT_PROFILE: Final = KERNEL_6_18_HP_V3

PROFILES: dict[str, KernelProfile] = {
    p.name: p for p in (KERNEL_6_1, KERNEL_6_12, KERNEL_6_18_HP_V3)
}


class UnknownKernelProfile(ValueError):
    """A profile name that is not in ``PROFILES``; the message lists the valid ones."""


def get_profile(name: str) -> KernelProfile:
    """The profile called ``name``; ``UnknownKernelProfile`` names the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownKernelProfile(
            f"unknown kernel profile {name!r}; valid: {', '.join(PROFILES)}") from None
