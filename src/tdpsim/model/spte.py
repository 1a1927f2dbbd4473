"""SPTE encoding and helpers — mirrors ``arch/x86/kvm/mmu/spte.h`` and ``spte.c``.

Both vendor formats of the TDP MMU are modelled: EPT (Intel, what TDX uses) with the masks
``kvm_mmu_set_ept_masks()`` installs, and AMD NPT with the ones
``kvm_mmu_reset_all_pte_masks()`` leaves in place.  The kernel keeps them in
``shadow_*_mask`` globals set once at module load; here they are one frozen ``SpteMasks``
per VM (``Kvm.masks``), passed to every helper that reads a vendor-dependent bit.  Values
are plain Python ints holding the 64-bit SPTE exactly as the kernel stores it.

Simplifications (one line each):
- Physical address width is fixed at 52 bits; ``shadow_me_value`` (SME/TME-MK) is 0.
- ``shadow_nonpresent_or_rsvd_mask`` (L1TF) is 0, as on hosts without the mitigation.
- ``get_mt_mask`` is a per-VM constant (``Kvm.mt_mask``; 0 on NPT, which has no hook).
- Exec-only EPT is assumed supported (as on every TDX-capable CPU), so
  ``shadow_present_mask`` is at most the suppress-#VE bit; R comes from ``shadow_user_mask``.
- EPT A/D bits are assumed supported (``has_ad_bits``); ``Policy.ad_enabled`` only decides
  ``role.ad_disabled``, as ``kvm_ad_enabled`` does from 6.14.
"""

from __future__ import annotations

from typing import Final

from dataclasses import dataclass

from .profile import KernelProfile

# --- Levels (arch/x86/include/asm/pgtable_types.h, mmu.h) --------------------------------
PG_LEVEL_4K: Final = 1
PG_LEVEL_2M: Final = 2
PG_LEVEL_1G: Final = 3
PG_LEVEL_512G: Final = 4
PT64_ROOT_MAX_LEVEL: Final = 5
KVM_MAX_HUGEPAGE_LEVEL: Final = PG_LEVEL_1G
KVM_NR_PAGE_SIZES: Final = 3
PG_LEVEL_NUM: Final = 6  # enum pg_level's last value: "no limit" for kvm_mmu_max_mapping_level

SPTE_LEVEL_BITS: Final = 9
SPTE_ENT_PER_PAGE: Final = 512
PAGE_SHIFT: Final = 12


def KVM_HPAGE_GFN_SHIFT(level: int) -> int:
    return (level - 1) * SPTE_LEVEL_BITS


def KVM_PAGES_PER_HPAGE(level: int) -> int:
    return 1 << ((level - 1) * SPTE_LEVEL_BITS)


def gfn_round_for_level(gfn: int, level: int) -> int:
    return gfn & -KVM_PAGES_PER_HPAGE(level)


def SPTE_INDEX(gfn: int, level: int) -> int:
    """``SPTE_INDEX(address, level)`` expressed on a gfn instead of an address."""
    return (gfn >> ((level - 1) * SPTE_LEVEL_BITS)) & (SPTE_ENT_PER_PAGE - 1)


# --- EPT bits (arch/x86/include/asm/vmx.h, spte.h) -----------------------------------------
VMX_EPT_READABLE_MASK: Final = 1 << 0
VMX_EPT_WRITABLE_MASK: Final = 1 << 1
VMX_EPT_EXECUTABLE_MASK: Final = 1 << 2
VMX_EPT_RWX_MASK: Final = 0x7
VMX_EPT_MT_EPTE_SHIFT: Final = 3
VMX_EPT_MT_MASK: Final = 0x7 << VMX_EPT_MT_EPTE_SHIFT
VMX_EPT_IPAT_BIT: Final = 1 << 6
PT_PAGE_SIZE_MASK: Final = 1 << 7
VMX_EPT_ACCESS_BIT: Final = 1 << 8
VMX_EPT_DIRTY_BIT: Final = 1 << 9
SPTE_MMU_PRESENT_MASK: Final = 1 << 11
VMX_EPT_SUPPRESS_VE_BIT: Final = 1 << 63
PT_WRITABLE_MASK: Final = VMX_EPT_WRITABLE_MASK

SPTE_TDP_AD_SHIFT: Final = 52
SPTE_TDP_AD_MASK: Final = 3 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_ENABLED: Final = 0 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_DISABLED: Final = 1 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_WRPROT_ONLY: Final = 2 << SPTE_TDP_AD_SHIFT

SHADOW_ACC_TRACK_SAVED_BITS_MASK: Final = VMX_EPT_READABLE_MASK | VMX_EPT_EXECUTABLE_MASK
SHADOW_ACC_TRACK_SAVED_BITS_SHIFT: Final = 54

EPT_SPTE_HOST_WRITABLE: Final = 1 << 57
EPT_SPTE_MMU_WRITABLE: Final = 1 << 58

PHYSICAL_ADDRESS_BITS: Final = 52
SPTE_BASE_ADDR_MASK: Final = ((1 << PHYSICAL_ADDRESS_BITS) - 1) & ~0xFFF

VMX_EPT_MISCONFIG_WX_VALUE: Final = VMX_EPT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK

# --- x86 page-table bits as NPT uses them (arch/x86/kvm/mmu/mmu.h, spte.h) ----------------
PT_PRESENT_MASK: Final = 1 << 0
PT_USER_MASK: Final = 1 << 2
PT_ACCESSED_MASK: Final = 1 << 5
PT_DIRTY_MASK: Final = 1 << 6
PT64_NX_MASK: Final = 1 << 63
DEFAULT_SPTE_HOST_WRITABLE: Final = 1 << 9
DEFAULT_SPTE_MMU_WRITABLE: Final = 1 << 10


@dataclass(frozen=True, slots=True)
class SpteMasks:
    """The ``shadow_*_mask`` globals of ``spte.c`` for one vendor SPTE format.

    ``shadow_mmio_value`` is the module-wide value a VM starts from
    (``kvm->arch.shadow_mmio_value``; a TD overrides it).  ``vendor`` is "ept" or "npt".
    """

    vendor: str
    shadow_user_mask: int
    shadow_accessed_mask: int
    shadow_dirty_mask: int
    shadow_nx_mask: int
    shadow_x_mask: int
    shadow_present_mask: int
    shadow_acc_track_mask: int
    shadow_host_writable_mask: int
    shadow_mmu_writable_mask: int
    shadow_mmio_value: int
    shadow_mmio_mask: int
    shadow_mmio_access_mask: int


def kvm_mmu_set_ept_masks(profile: KernelProfile) -> SpteMasks:
    """``kvm_mmu_set_ept_masks(has_ad_bits=true, has_exec_only=true)`` (VMX with EPT).

    The suppress-#VE bit in the present and MMIO masks depends on the kernel generation
    (``KernelProfile.ept_suppress_ve_in_present_mask``)."""
    sve = VMX_EPT_SUPPRESS_VE_BIT if profile.ept_suppress_ve_in_present_mask else 0
    return SpteMasks(
        vendor="ept",
        shadow_user_mask=VMX_EPT_READABLE_MASK,
        shadow_accessed_mask=VMX_EPT_ACCESS_BIT,
        shadow_dirty_mask=VMX_EPT_DIRTY_BIT,
        shadow_nx_mask=0,
        shadow_x_mask=VMX_EPT_EXECUTABLE_MASK,
        shadow_present_mask=sve,  # has_exec_only: R is not needed for present
        shadow_acc_track_mask=VMX_EPT_RWX_MASK,
        shadow_host_writable_mask=EPT_SPTE_HOST_WRITABLE,
        shadow_mmu_writable_mask=EPT_SPTE_MMU_WRITABLE,
        # EPT misconfigurations are generated for bits 2:0 = 110b (write/execute).
        shadow_mmio_value=VMX_EPT_MISCONFIG_WX_VALUE,
        shadow_mmio_mask=VMX_EPT_RWX_MASK | sve,
        shadow_mmio_access_mask=0,
    )


def kvm_mmu_reset_all_pte_masks(maxphyaddr: int = 48) -> SpteMasks:
    """``kvm_mmu_reset_all_pte_masks()``: the x86 PTE format, which AMD NPT keeps (SVM
    never calls ``kvm_mmu_set_ept_masks``).

    MMIO SPTEs set reserved PA bit 51 plus P so that accesses fault with PFEC.RSVD=1; with
    a 52-bit MAXPHYADDR there is no reserved bit and MMIO caching is off (value 0).  Without
    SME, ``svm_adjust_mmio_mask`` leaves this alone (QEMU TCG: 40 bits, no SME)."""
    mmio = (1 << 51) | PT_PRESENT_MASK if maxphyaddr < 52 else 0
    return SpteMasks(
        vendor="npt",
        shadow_user_mask=PT_USER_MASK,
        shadow_accessed_mask=PT_ACCESSED_MASK,
        shadow_dirty_mask=PT_DIRTY_MASK,
        shadow_nx_mask=PT64_NX_MASK,
        shadow_x_mask=0,
        shadow_present_mask=PT_PRESENT_MASK,
        shadow_acc_track_mask=0,
        shadow_host_writable_mask=DEFAULT_SPTE_HOST_WRITABLE,
        shadow_mmu_writable_mask=DEFAULT_SPTE_MMU_WRITABLE,
        shadow_mmio_value=mmio,
        shadow_mmio_mask=mmio,
        shadow_mmio_access_mask=ACC_WRITE_MASK | ACC_USER_MASK,
    )


VENDORS = ("intel", "amd")


def vendor_spte_masks(vendor: str, profile: KernelProfile) -> SpteMasks:
    """The masks the vendor module of ``vendor`` installs at load: kvm_intel with EPT,
    kvm_amd with NPT."""
    if vendor == "intel":
        return kvm_mmu_set_ept_masks(profile)
    if vendor == "amd":
        return kvm_mmu_reset_all_pte_masks()
    raise ValueError(f"unknown vendor {vendor!r}; valid: {', '.join(VENDORS)}")


# SHADOW_NONPRESENT_VALUE and FROZEN_SPTE depend on the kernel generation: they live in
# the VM's KernelProfile (profile.py), which the helpers below take where they need them.

# MMIO generation bits (spte.h): gen[7:0] -> bits 3..10, gen[18:8] -> bits 52..62.
MMIO_SPTE_GEN_LOW_START: Final = 3
MMIO_SPTE_GEN_LOW_END: Final = 10
MMIO_SPTE_GEN_HIGH_START: Final = 52
MMIO_SPTE_GEN_HIGH_END: Final = 62
MMIO_SPTE_GEN_LOW_BITS: Final = MMIO_SPTE_GEN_LOW_END - MMIO_SPTE_GEN_LOW_START + 1
MMIO_SPTE_GEN_MASK: Final = (1 << 19) - 1

# Access bits (mmu.h ACC_*).
ACC_EXEC_MASK: Final = 1
ACC_WRITE_MASK: Final = PT_WRITABLE_MASK
ACC_USER_MASK: Final = 1 << 2
ACC_ALL: Final = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK

# Memory types for get_mt_mask (MTRR_TYPE_*).
MTRR_TYPE_UNCACHABLE: Final = 0
MTRR_TYPE_WRBACK: Final = 6

# --- Predicates ------------------------------------------------------------------------


def is_shadow_present_pte(spte: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK)


def is_large_pte(spte: int) -> bool:
    return bool(spte & PT_PAGE_SIZE_MASK)


def is_last_spte(spte: int, level: int) -> bool:
    return level == PG_LEVEL_4K or bool(spte & PT_PAGE_SIZE_MASK)


def is_frozen_spte(profile: KernelProfile, spte: int) -> bool:
    """``is_frozen_spte``: owned by one thread during a multi-step update; never
    MMU-present, never MMIO."""
    return spte == profile.FROZEN_SPTE


def is_mmio_spte(m: SpteMasks, shadow_mmio_value: int, spte: int,
                 enable_mmio_caching: bool = True) -> bool:
    """``is_mmio_spte(kvm, spte)``; takes ``kvm->arch.shadow_mmio_value`` directly."""
    return (spte & m.shadow_mmio_mask) == shadow_mmio_value and enable_mmio_caching


def is_writable_pte(spte: int) -> bool:
    return bool(spte & PT_WRITABLE_MASK)


def is_mmu_writable_spte(m: SpteMasks, spte: int) -> bool:
    return bool(spte & m.shadow_mmu_writable_mask)


def is_executable_pte(m: SpteMasks, spte: int) -> bool:
    return (spte & (m.shadow_x_mask | m.shadow_nx_mask)) == m.shadow_x_mask


def spte_ad_enabled(spte: int) -> bool:
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_DISABLED


def spte_ad_need_write_protect(spte: int) -> bool:
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_ENABLED


def is_access_track_spte(m: SpteMasks, spte: int) -> bool:
    return not spte_ad_enabled(spte) and not (spte & m.shadow_acc_track_mask)


def is_accessed_spte(m: SpteMasks, spte: int) -> bool:
    return bool(spte & m.shadow_accessed_mask)


def is_dirty_spte(m: SpteMasks, spte: int) -> bool:
    return bool(spte & m.shadow_dirty_mask)


def spte_to_pfn(spte: int) -> int:
    return (spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT


def leaf_spte_change_needs_tlb_flush(m: SpteMasks, old_spte: int, new_spte: int) -> bool:
    """Only losing MMU-writable needs a flush; clearing A, D or W for dirty logging does
    not (the caller handles the present/leaf checks)."""
    return is_mmu_writable_spte(m, old_spte) and not is_mmu_writable_spte(m, new_spte)


def check_spte_writable_invariants(m: SpteMasks, spte: int) -> bool:
    """``check_spte_writable_invariants``: True when the (host, mmu, W) triple is one of
    111, 110, 100, 000; the kernel WARNs otherwise."""
    if spte & m.shadow_mmu_writable_mask and not spte & m.shadow_host_writable_mask:
        return False
    if spte & PT_WRITABLE_MASK and not spte & m.shadow_mmu_writable_mask:
        return False
    return True


def spte_needs_atomic_update(m: SpteMasks, spte: int) -> bool:
    """``spte_needs_atomic_update`` (6.18; formerly ``spte_has_volatile_bits``): bits the
    CPU or the lockless fast path may set behind mmu_lock's back."""
    if not is_writable_pte(spte) and is_mmu_writable_spte(m, spte):
        return True  # fast page fault may make it writable
    if not spte_ad_enabled(spte):
        return True  # access tracking is done in software
    return is_writable_pte(spte) and not is_dirty_spte(m, spte)  # the CPU may set D


def kvm_tdp_mmu_spte_need_atomic_write(m: SpteMasks, old_spte: int, level: int) -> bool:
    """``tdp_iter.h``: only present leaves can have volatile bits."""
    return (
        is_shadow_present_pte(old_spte)
        and is_last_spte(old_spte, level)
        and spte_needs_atomic_update(m, old_spte)
    )


# --- Constructors ----------------------------------------------------------------------


def make_spte_executable(m: SpteMasks, spte: int) -> int:
    return (spte & ~m.shadow_nx_mask) | m.shadow_x_mask


def make_spte_nonexecutable(m: SpteMasks, spte: int) -> int:
    return (spte & ~m.shadow_x_mask) | m.shadow_nx_mask


def mark_spte_for_access_track(m: SpteMasks, spte: int) -> int:
    """``mark_spte_for_access_track``: A/D-enabled SPTEs just lose A; others save R/X in
    the high bits and drop RWX and A."""
    if spte_ad_enabled(spte):
        return spte & ~m.shadow_accessed_mask
    if is_access_track_spte(m, spte):
        return spte
    saved = spte & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte |= saved << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
    spte &= ~(m.shadow_acc_track_mask | m.shadow_accessed_mask)
    return spte


def restore_acc_track_spte(m: SpteMasks, spte: int) -> int:
    """``restore_acc_track_spte``: put back the R/X bits ``mark_spte_for_access_track``
    saved in the high bits."""
    saved = (spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte &= ~m.shadow_acc_track_mask
    spte &= ~(SHADOW_ACC_TRACK_SAVED_BITS_MASK << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT)
    return spte | saved


def make_spte(
    m: SpteMasks,
    *,
    level: int,
    ad_disabled: bool,
    pte_access: int,
    pfn: int,
    old_spte: int,
    prefetch: bool,
    host_writable: bool,
    nx_huge_page_enabled: bool,
    mt_mask: int,
    synchronizing: bool = False,
    always_dirty: bool = True,
) -> int:
    """``make_spte()`` for the TDP MMU: returns the new SPTE.

    ``wrprot`` is always false here: ``mmu_try_to_unsync_pages()`` only refuses for
    shadow-MMU write-tracked gfns, which TDP-only VMs never have.  The dirty-bitmap side
    effect (``mark_page_dirty_in_slot``) is left to the caller, which owns the memslot.
    ``always_dirty`` is ``KernelProfile.make_spte_always_dirty``: 6.13+ sets D with W
    every time; older kernels skip D when overwriting a writable *leaf*.
    """
    spte = SPTE_MMU_PRESENT_MASK
    if ad_disabled:
        spte |= SPTE_TDP_AD_DISABLED
    spte |= m.shadow_present_mask
    if not prefetch or synchronizing:
        spte |= m.shadow_accessed_mask
    # Huge pages must not be executable with the iTLB-multihit workaround on.
    if level > PG_LEVEL_4K and pte_access & ACC_EXEC_MASK and nx_huge_page_enabled:
        pte_access &= ~ACC_EXEC_MASK
    spte |= m.shadow_x_mask if pte_access & ACC_EXEC_MASK else m.shadow_nx_mask
    if pte_access & ACC_USER_MASK:
        spte |= m.shadow_user_mask
    if level > PG_LEVEL_4K:
        spte |= PT_PAGE_SIZE_MASK
    spte |= mt_mask
    if host_writable:
        spte |= m.shadow_host_writable_mask
    else:
        pte_access &= ~ACC_WRITE_MASK
    spte |= pfn << PAGE_SHIFT
    if pte_access & ACC_WRITE_MASK:
        spte |= PT_WRITABLE_MASK | m.shadow_mmu_writable_mask
        if always_dirty or not (is_last_spte(old_spte, level) and is_writable_pte(old_spte)):
            spte |= m.shadow_dirty_mask
    if prefetch and not synchronizing:
        spte = mark_spte_for_access_track(m, spte)
    return spte


def make_nonleaf_spte(m: SpteMasks, child_pt_pfn: int, ad_disabled: bool) -> int:
    """``make_nonleaf_spte()``: page-table entries are always RWX."""
    spte = (
        SPTE_MMU_PRESENT_MASK
        | (child_pt_pfn << PAGE_SHIFT)
        | m.shadow_present_mask
        | PT_WRITABLE_MASK
        | m.shadow_user_mask
        | m.shadow_x_mask
    )
    spte |= SPTE_TDP_AD_DISABLED if ad_disabled else m.shadow_accessed_mask
    return spte


def make_small_spte(m: SpteMasks, huge_spte: int, child_level: int, index: int,
                    sp_access: int, nx_huge_page_enabled: bool) -> int:
    """``make_small_spte()`` (formerly ``make_huge_page_split_spte``): the ``index``-th
    child of a huge SPTE being split into a table at ``child_level``."""
    child_spte = huge_spte | ((index * KVM_PAGES_PER_HPAGE(child_level)) << PAGE_SHIFT)
    if child_level == PG_LEVEL_4K:
        child_spte &= ~PT_PAGE_SIZE_MASK
        # The NX workaround stripped X from the huge page; 4K pages may execute again.
        if sp_access & ACC_EXEC_MASK and nx_huge_page_enabled:
            child_spte = make_spte_executable(m, child_spte)
    return child_spte


def make_huge_spte(m: SpteMasks, small_spte: int, level: int,
                   nx_huge_page_enabled: bool) -> int:
    """``make_huge_spte()``: used by huge-page recovery to build a leaf at ``level`` from
    the first present leaf below it."""
    huge_spte = small_spte | PT_PAGE_SIZE_MASK
    huge_mask = ~((KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT) - 1)
    huge_spte &= huge_mask | 0xFFF | ~SPTE_BASE_ADDR_MASK
    if nx_huge_page_enabled:
        huge_spte = make_spte_nonexecutable(m, huge_spte)
    return huge_spte


def generation_mmio_spte_mask(gen: int) -> int:
    mask = (gen << MMIO_SPTE_GEN_LOW_START) & (((1 << MMIO_SPTE_GEN_LOW_BITS) - 1)
                                                << MMIO_SPTE_GEN_LOW_START)
    mask |= (gen >> MMIO_SPTE_GEN_LOW_BITS) << MMIO_SPTE_GEN_HIGH_START
    return mask


def get_mmio_spte_generation(spte: int) -> int:
    gen = (spte >> MMIO_SPTE_GEN_LOW_START) & ((1 << MMIO_SPTE_GEN_LOW_BITS) - 1)
    gen |= ((spte >> MMIO_SPTE_GEN_HIGH_START) & 0x7FF) << MMIO_SPTE_GEN_LOW_BITS
    return gen


def make_mmio_spte(m: SpteMasks, gen: int, gfn: int, access: int, shadow_mmio_value: int) -> int:
    """``make_mmio_spte()``; ``shadow_mmio_access_mask`` is 0 on EPT so the access drops
    out, NPT keeps its W and U.  TDs use an MMIO value of 0 (``tdx_vm_init``) so the
    access reaches the guest as #VE."""
    spte = generation_mmio_spte_mask(gen & MMIO_SPTE_GEN_MASK)
    spte |= shadow_mmio_value | (access & m.shadow_mmio_access_mask)
    spte |= gfn << PAGE_SHIFT
    return spte


def decode_spte(profile: KernelProfile, m: SpteMasks, spte: int, level: int,
                shadow_mmio_value: int | None = None) -> str:
    """Human-readable decoding used by dumps: the special values by name, else the bits
    (EPT: r/w/x and the memtype; NPT: p/w/u and NX)."""
    if spte == profile.FROZEN_SPTE:
        return "FROZEN_SPTE"
    if spte == profile.SHADOW_NONPRESENT_VALUE:
        return "SHADOW_NONPRESENT_VALUE"
    mmio_value = m.shadow_mmio_value if shadow_mmio_value is None else shadow_mmio_value
    if is_mmio_spte(m, mmio_value, spte):
        # get_mmio_spte_gfn: the gfn bits sit below the PA bits the MMIO value reserves.
        gfn = spte_to_pfn(spte & ~m.shadow_mmio_mask) & ((1 << 40) - 1)
        return f"MMIO gfn={gfn:#x} gen={get_mmio_spte_generation(spte):#x}"
    if not is_shadow_present_pte(spte):
        return f"non-present {spte:#x}"
    kind = "leaf" if is_last_spte(spte, level) else "table"
    ept = m.vendor == "ept"
    bits = ((("r", VMX_EPT_READABLE_MASK), ("w", PT_WRITABLE_MASK), ("x", VMX_EPT_EXECUTABLE_MASK))
            if ept else (("p", PT_PRESENT_MASK), ("w", PT_WRITABLE_MASK), ("u", PT_USER_MASK)))
    flags = "".join(name if spte & bit else "-" for name, bit in bits)
    extras = [
        name for name, bit in (("PS", PT_PAGE_SIZE_MASK), ("A", m.shadow_accessed_mask),
                               ("D", m.shadow_dirty_mask), ("HW", m.shadow_host_writable_mask),
                               ("MW", m.shadow_mmu_writable_mask))
        + ((("IPAT", VMX_EPT_IPAT_BIT), ("SVE", VMX_EPT_SUPPRESS_VE_BIT)) if ept
           else (("NX", PT64_NX_MASK),))
        if spte & bit
    ]
    if not ept:
        return f"{kind} pfn={spte_to_pfn(spte):#x} {flags} {' '.join(extras)}"
    mt = (spte & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
    return f"{kind} pfn={spte_to_pfn(spte):#x} {flags} mt={mt} {' '.join(extras)}"
