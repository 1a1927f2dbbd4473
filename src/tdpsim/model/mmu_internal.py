"""Shadow-page and fault structures — mirrors ``arch/x86/kvm/mmu/mmu_internal.h`` and the
``union kvm_mmu_page_role`` of ``arch/x86/include/asm/kvm_host.h``.

Simplifications (one line each):
- ``spt`` is an ``array('Q')`` of 512 SPTEs; its "physical address" is ``spt_pfn``, a
  deterministic pfn handed out by ``Kvm.alloc_pt_pfn`` (``page_private`` is
  ``Kvm.sp_by_pfn``).
- ``ptep`` is kept as (parent SP, index) instead of a raw pointer.
- ``external_spt`` is the pfn of the page handed to the TDX module, or None.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Optional

from .spte import ACC_ALL, PG_LEVEL_4K, SPTE_ENT_PER_PAGE

if TYPE_CHECKING:  # pragma: no cover
    from .memslot import KvmMemorySlot

# enum { RET_PF_CONTINUE = 0, ... } in mmu_internal.h, values in order.
RET_PF_CONTINUE: Final = 0
RET_PF_RETRY: Final = 1
RET_PF_EMULATE: Final = 2
RET_PF_WRITE_PROTECTED: Final = 3
RET_PF_INVALID: Final = 4
RET_PF_FIXED: Final = 5
RET_PF_SPURIOUS: Final = 6
RET_PF_NAMES = {
    RET_PF_CONTINUE: "RET_PF_CONTINUE", RET_PF_RETRY: "RET_PF_RETRY",
    RET_PF_EMULATE: "RET_PF_EMULATE", RET_PF_WRITE_PROTECTED: "RET_PF_WRITE_PROTECTED",
    RET_PF_INVALID: "RET_PF_INVALID", RET_PF_FIXED: "RET_PF_FIXED",
    RET_PF_SPURIOUS: "RET_PF_SPURIOUS",
}

# Negative errno values the model returns where the kernel does.
EPERM: Final = 1
ENOENT: Final = 2
EINTR: Final = 4
EIO: Final = 5
ENXIO: Final = 6
EAGAIN: Final = 11
ENOMEM: Final = 12
EFAULT: Final = 14
EBUSY: Final = 16
EEXIST: Final = 17
EINVAL: Final = 22
ENOTTY: Final = 25
EOPNOTSUPP: Final = 95
ERRNO_NAMES = {EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
               EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EFAULT: "EFAULT", EBUSY: "EBUSY",
               EEXIST: "EEXIST", EINVAL: "EINVAL", ENOTTY: "ENOTTY", EOPNOTSUPP: "EOPNOTSUPP"}

# Page-fault error code bits (arch/x86/include/asm/kvm_host.h).
PFERR_PRESENT_MASK: Final = 1 << 0
PFERR_WRITE_MASK: Final = 1 << 1
PFERR_USER_MASK: Final = 1 << 2
PFERR_RSVD_MASK: Final = 1 << 3
PFERR_FETCH_MASK: Final = 1 << 4
PFERR_GUEST_FINAL_MASK: Final = 1 << 32
PFERR_GUEST_PAGE_MASK: Final = 1 << 33
PFERR_IMPLICIT_ACCESS: Final = 1 << 48
PFERR_PRIVATE_ACCESS: Final = 1 << 49

# KVM pfn error values (include/linux/kvm_host.h).
KVM_PFN_ERR_MASK: Final = 0x7FF << 52
KVM_PFN_ERR_NOSLOT_MASK: Final = 0xFFF << 52
KVM_PFN_NOSLOT: Final = 0x1 << 63
KVM_PFN_ERR_FAULT: Final = KVM_PFN_ERR_MASK
KVM_PFN_ERR_HWPOISON: Final = KVM_PFN_ERR_MASK + 1
KVM_PFN_ERR_RO_FAULT: Final = KVM_PFN_ERR_MASK + 2


def is_error_pfn(pfn: int) -> bool:
    return bool(pfn & KVM_PFN_ERR_MASK)


def is_error_noslot_pfn(pfn: int) -> bool:
    return bool(pfn & KVM_PFN_ERR_NOSLOT_MASK)


class KvmMmuPageRole:
    """``union kvm_mmu_page_role`` (the fields a TDP MMU page uses).

    ``word`` packs them at the kernel's bit positions (v6.18): level [3:0], direct [7],
    access [10:8], invalid [11], efer_nx [12], cr0_wp [13], ad_disabled [16],
    is_mirror [19], smm (as_id) [31:24].  ``invalid`` is mutable, as in the kernel.
    """

    __slots__ = ("level", "direct", "access", "invalid", "efer_nx", "cr0_wp",
                 "ad_disabled", "is_mirror", "smm")

    def __init__(self, level: int, *, is_mirror: bool = False, ad_disabled: bool = False,
                 smm: int = 0, access: int = ACC_ALL, invalid: bool = False) -> None:
        self.level = level
        self.direct = True
        self.access = access
        self.invalid = invalid
        self.efer_nx = True
        self.cr0_wp = True
        self.ad_disabled = ad_disabled
        self.is_mirror = is_mirror
        self.smm = smm

    @property
    def word(self) -> int:
        return (
            self.level
            | (self.direct << 7)
            | (self.access << 8)
            | (self.invalid << 11)
            | (self.efer_nx << 12)
            | (self.cr0_wp << 13)
            | (self.ad_disabled << 16)
            | (self.is_mirror << 19)
            | (self.smm << 24)
        )

    def child(self) -> "KvmMmuPageRole":
        """``tdp_mmu_init_child_sp``: copy the parent's role, one level down."""
        return KvmMmuPageRole(self.level - 1, is_mirror=self.is_mirror,
                              ad_disabled=self.ad_disabled, smm=self.smm,
                              access=self.access, invalid=self.invalid)


# Lifetime of a page-table page (``KvmMmuPage.rcu_state``): linked or being torn down,
# queued by ``call_rcu(tdp_mmu_free_sp_rcu_callback)``, freed (table poisoned, frame free).
SP_LIVE: Final = 0
SP_RCU_PENDING: Final = 1
SP_FREED: Final = 2
# SLUB's POISON_FREE byte: what a freed table reads as.
POISON_FREE_SPTE: Final = 0x6B6B6B6B6B6B6B6B


class KvmMmuPage:
    """``struct kvm_mmu_page`` as the TDP MMU uses it."""

    __slots__ = ("role", "gfn", "spt", "spt_pfn", "parent", "parent_index", "external_spt",
                 "nx_huge_page_disallowed", "tdp_mmu_root_count",
                 "tdp_mmu_scheduled_root_to_zap", "possible_nx_huge_page", "rcu_state")

    def __init__(self, spt_pfn: int, init_value: int) -> None:
        """``tdp_mmu_alloc_sp``'s allocation; ``tdp_mmu_init_sp`` fills in the rest."""
        self.role: KvmMmuPageRole = None  # type: ignore[assignment]
        self.gfn = 0
        # Fresh tables come pre-filled with SHADOW_NONPRESENT_VALUE: the vCPU's
        # mmu_shadow_page_cache has it as init_value (6.10+; before, zeroed pages).
        self.spt = array("Q", [init_value]) * SPTE_ENT_PER_PAGE
        self.spt_pfn = spt_pfn
        self.parent: Optional["KvmMmuPage"] = None
        self.parent_index = 0
        self.external_spt: Optional[int] = None
        self.nx_huge_page_disallowed = False
        self.tdp_mmu_root_count = 0
        self.tdp_mmu_scheduled_root_to_zap = False
        self.possible_nx_huge_page = False
        self.rcu_state = SP_LIVE

    @property
    def level(self) -> int:
        return self.role.level

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"KvmMmuPage(l{self.role.level} gfn={self.gfn:#x} pfn={self.spt_pfn:#x}"
                f"{' mirror' if self.role.is_mirror else ''})")


def is_mirror_sp(sp: KvmMmuPage) -> bool:
    return sp.role.is_mirror


@dataclass(slots=True)
class HugepageAdjustStats:
    """Not in the kernel: what the seed patch's decision did in one VM, for the metrics.

    ``calls_*``: walk steps at which ``kvm_tdp_mmu_map`` consulted
    ``disallowed_hugepage_adjust``, by root; ``lowered_*``: faults whose goal it lowered;
    ``opportunities``: faults on a mirror root whose goal met a present mirror page table
    at the goal level (a promotion the fault path could try); ``frames``: (level, gfn) of
    those tables."""

    calls_direct: int = 0
    calls_mirror: int = 0
    lowered_direct: int = 0
    lowered_mirror: int = 0
    opportunities: int = 0
    frames: set = field(default_factory=set)


@dataclass(slots=True)
class KvmPageFault:
    """``struct kvm_page_fault`` (mmu_internal.h)."""

    addr: int
    error_code: int
    prefetch: bool
    exec: bool
    write: bool
    present: bool
    rsvd: bool
    user: bool
    is_tdp: bool
    is_private: bool
    nx_huge_page_workaround_enabled: bool
    max_level: int
    gfn: int = 0
    slot: Optional["KvmMemorySlot"] = None
    req_level: int = PG_LEVEL_4K
    goal_level: int = PG_LEVEL_4K
    huge_page_disallowed: bool = False
    mmu_seq: int = 0
    pfn: int = KVM_PFN_ERR_FAULT
    map_writable: bool = False
    write_fault_to_shadow_pgtable: bool = False
    vcpu_id: int = 0
    # Not in the kernel: set by the hypothetical ``mirror_promotion="seamcall"`` KVM when
    # the walk found a mirror table where it wants a huge leaf (see tdp_mmu._map_target_level).
    mirror_promotion_level: int = 0
