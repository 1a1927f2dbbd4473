"""The shadow MMU's huge-page rules — the ``kvm.tdp_mmu=N`` / shadow-paging half of
``arch/x86/kvm/mmu/mmu.c`` and ``arch/x86/kvm/mmu/paging_tmpl.h`` (64-bit guest paging),
beside the TDP MMU model.  Kernel functions mirrored (v6.18 names):

* the fault: ``kvm_mmu_do_page_fault`` stats → ``FNAME(page_fault)`` → ``FNAME(walk_addr)``
  → ``page_fault_handle_page_track`` → ``FNAME(fetch)`` with ``kvm_mmu_get_child_sp``,
  ``link_shadow_page`` / ``drop_large_spte``, ``kvm_mmu_hugepage_adjust`` (the model's,
  with ``fault->max_level = walker.level``: the guest's page size caps the SPTE),
  ``disallowed_hugepage_adjust``, ``mmu_set_spte`` / ``make_spte`` /
  ``mmu_try_to_unsync_pages``, ``rmap_add``;
* prefetch: ``FNAME(pte_prefetch)``, ``FNAME(prefetch_gpte)``, ``__direct_pte_prefetch``,
  ``kvm_mmu_prefetch_sptes``, ``gfn_to_memslot_dirty_bitmap``, ``kvm_prefetch_pages`` — a
  4K fault fills the aligned block of ``PTE_PREFETCH_NUM`` SPTEs, never under dirty logging;
* write tracking: ``kvm_mmu_alloc_shadow_page`` → ``account_shadowed`` →
  ``__kvm_write_track_add_gfn`` (upper-level guest tables) or ``kvm_mmu_gfn_disallow_lpage``
  + ``kvm_mmu_slot_gfn_write_protect`` (guest PTs): a frame holding a shadowed guest page
  table gets a ``disallow_lpage`` count and is mapped 4K from then on;
* memslot events: ``kvm_mmu_slot_apply_flags`` without the TDP MMU (no eager split:
  ``kvm_mmu_slot_try_split_huge_pages`` is TDP-MMU only; ``kvm_mmu_slot_remove_write_access``
  write-protects every level; disabling recovers through ``kvm_mmu_recover_huge_pages`` →
  ``kvm_rmap_zap_collapsible_sptes``), ``kvm_get_dirty_log_protect`` /
  ``kvm_clear_dirty_log_protect`` → ``kvm_mmu_write_protect_pt_masked``, and the mmu
  notifier ``kvm_unmap_gfn_range`` → ``kvm_zap_rmap`` (host THP split).

The model is pure: state lives in one :class:`ShadowMmu` bound to a model ``Kvm``, whose
``stat.pages`` and vCPU ``stat.pf_*`` counters it updates as the kernel does.

Simplifications (one line each):
- 64-bit 4-level guest paging only, CR0.WP=1, no SMEP/SMAP/PKU, guest runs at CPL0.
- SPTEs use the model's EPT encoding (``spte.make_spte``) instead of the legacy PTE format.
- ``FNAME(gpte_changed)`` never fires: guest page tables do not change during a fault.
- Unsync pages are marked but never synced (``mmu_sync_children`` is not modelled).
- ``kvm_prefetch_pages`` always gets every page (GUP-fast finds every host page present).
- No MMIO SPTEs, no memslot deletion, no ``make_mmu_pages_available`` reclaim, no rmap
  recycling at ``RMAP_RECYCLE_THRESHOLD``.
- The guest CPU is :meth:`ShadowMmu.guest_access`: a shadow walk, and a fault when the
  leaf is missing or forbids the access (no TLB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from . import mmu as _mmu
from .kvm_main import (kvm_mmu_invalidate_begin, kvm_mmu_invalidate_end,
                       kvm_mmu_invalidate_range_add)
from .memslot import (KVM_MAX_HUGEPAGE_LEVEL, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                      KvmMemorySlot)
from .mmu_fault import kvm_mmu_count_pf_result
from .mmu_internal import (
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_WRITE_MASK,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    RET_PF_WRITE_PROTECTED,
    KvmMmuPage,
    KvmMmuPageRole,
    KvmPageFault,
)
from .spte import (
    ACC_ALL,
    ACC_EXEC_MASK,
    ACC_WRITE_MASK,
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    PT_WRITABLE_MASK,
    SPTE_INDEX,
    gfn_round_for_level,
    is_executable_pte,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
    make_nonleaf_spte,
    make_spte,
    spte_to_pfn,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu

#: ``PTE_PREFETCH_NUM`` (mmu.c): the aligned block a 4K fault tries to fill.
PTE_PREFETCH_NUM = 8
PT64_ROOT_4LEVEL = 4

# Guest (x86-64) PTE bits, paging_tmpl.h with PTTYPE 64.
PT_PRESENT_MASK = 1 << 0
PT_GUEST_WRITABLE_MASK = 1 << 1
PT_USER_MASK = 1 << 2
PT_GUEST_ACCESSED_MASK = 1 << 5
PT_GUEST_DIRTY_MASK = 1 << 6
PT_GUEST_PAGE_SIZE_MASK = 1 << 7
PT64_NX_SHIFT = 63
PT64_BASE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF

#: guest memory as the MMU reads it: ``kvm_vcpu_read_guest_atomic`` of one u64 at a gpa
GuestReader = Callable[[int], int]

#: the result of a fault the guest must handle itself (not-present / protection gPTE)
RET_PF_GUEST_FAULT = -1000


class GuestPageFault(Exception):
    """``FNAME(walk_addr)`` failed: KVM would inject #PF into the guest."""


# --------------------------------------------------------------------------------------
# The guest walk (paging_tmpl.h)
# --------------------------------------------------------------------------------------

def FNAME_gpte_access(gpte: int) -> int:
    """``FNAME(gpte_access)``: W, U and P→X, with NX clearing X (ACC_EXEC_MASK == P)."""
    access = gpte & (PT_GUEST_WRITABLE_MASK | PT_USER_MASK | PT_PRESENT_MASK)
    return access ^ ((gpte >> PT64_NX_SHIFT) & ACC_EXEC_MASK)


def FNAME_protect_clean_gpte(access: int, gpte: int) -> int:
    """``FNAME(protect_clean_gpte)``: a clean gPTE maps read-only so that KVM sees the
    first write and can set the guest's D bit."""
    if not gpte & PT_GUEST_DIRTY_MASK:
        access &= ~ACC_WRITE_MASK
    return access


def FNAME_is_last_gpte(level: int, gpte: int) -> bool:
    """``FNAME(is_last_gpte)``: a 4K PTE, or PS set at the PD/PDPT level."""
    return level == PG_LEVEL_4K or (level <= 3 and bool(gpte & PT_GUEST_PAGE_SIZE_MASK))


@dataclass
class GuestWalker:
    """``struct guest_walker`` (arrays indexed by ``level - 1``)."""

    level: int = PT64_ROOT_4LEVEL
    max_level: int = PT64_ROOT_4LEVEL
    table_gfn: list[int] = field(default_factory=lambda: [0] * PT64_ROOT_4LEVEL)
    ptes: list[int] = field(default_factory=lambda: [0] * PT64_ROOT_4LEVEL)
    pte_gpa: list[int] = field(default_factory=lambda: [0] * PT64_ROOT_4LEVEL)
    pt_access: list[int] = field(default_factory=lambda: [0] * PT64_ROOT_4LEVEL)
    pte_access: int = ACC_ALL
    gfn: int = 0


def FNAME_walk_addr(read: GuestReader, cr3: int, addr: int, write: bool,
                    fetch: bool) -> Optional[GuestWalker]:
    """``FNAME(walk_addr_generic)`` for a 4-level guest: None where the guest itself
    faults (not present, or a write/fetch its gPTEs forbid).  A/D bits are assumed set
    by the guest (no ``update_accessed_dirty_bits``)."""
    w = GuestWalker()
    pte_access = ACC_ALL
    table_gpa = cr3 & PT64_BASE_ADDR_MASK
    level = PT64_ROOT_4LEVEL
    while True:
        pt_access = pte_access
        index = (addr >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1FF
        w.table_gfn[level - 1] = table_gpa >> PAGE_SHIFT
        w.pte_gpa[level - 1] = table_gpa + index * 8
        gpte = read(w.pte_gpa[level - 1])
        if not gpte & PT_PRESENT_MASK:
            return None
        pte_access = pt_access & FNAME_gpte_access(gpte)
        w.ptes[level - 1] = gpte
        w.pt_access[level - 1] = pt_access
        if FNAME_is_last_gpte(level, gpte):
            break
        table_gpa = gpte & PT64_BASE_ADDR_MASK
        level -= 1
    w.level = level
    w.pte_access = pte_access
    if not write:
        w.pte_access = FNAME_protect_clean_gpte(w.pte_access, gpte)
    size_mask = KVM_PAGES_PER_HPAGE(level) - 1
    # gpte_to_gfn_lvl() + the offset of addr inside the guest's (huge) page
    w.gfn = ((gpte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT) & ~size_mask
    w.gfn |= (addr >> PAGE_SHIFT) & size_mask
    if (write and not pte_access & ACC_WRITE_MASK) or (fetch and not pte_access & ACC_EXEC_MASK):
        return None  # permission_fault(): the guest's own #PF
    return w


# --------------------------------------------------------------------------------------
# Shadow pages
# --------------------------------------------------------------------------------------

class ShadowPage(KvmMmuPage):
    """``struct kvm_mmu_page`` as the shadow MMU uses it: ``shadowed_translation``
    (``gfns``, indirect pages only), ``parent_ptes``, ``unsync`` and ``root_count``."""

    __slots__ = ("gfns", "parent_ptes", "unsync", "root_count")

    def __init__(self, spt_pfn: int, init_value: int) -> None:
        super().__init__(spt_pfn, init_value)
        self.gfns: Optional[list[int]] = None
        self.parent_ptes: list[tuple["ShadowPage", int]] = []
        self.unsync = False
        self.root_count = 0


def kvm_mmu_page_get_gfn(sp: ShadowPage, index: int) -> int:
    """``kvm_mmu_page_get_gfn``: indirect pages remember the gfn each SPTE maps; a direct
    page maps a linear range from ``sp->gfn``."""
    if sp.gfns is not None:
        return sp.gfns[index]
    return sp.gfn + (index << ((sp.role.level - 1) * 9))


def sp_has_gptes(sp: ShadowPage) -> bool:
    """``sp_has_gptes``: indirect pages shadow a guest page table."""
    return not sp.role.direct


@dataclass(frozen=True)
class ShadowWalkStep:
    """One ``struct kvm_shadow_walk_iterator`` position: the SPTE at ``sp.spt[index]``."""

    sp: ShadowPage
    index: int
    level: int


def kvm_mmu_gfn_disallow_lpage(slot: KvmMemorySlot, gfn: int) -> None:
    """``kvm_mmu_gfn_disallow_lpage`` → ``update_gfn_disallow_lpage_count(+1)``: the huge
    frames (every level) holding gfn may not be mapped huge while the count is held."""
    for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
        slot.lpage_info[level][slot.lpage_index(gfn, level)] += 1


def kvm_mmu_gfn_allow_lpage(slot: KvmMemorySlot, gfn: int) -> None:
    """``kvm_mmu_gfn_allow_lpage`` → ``update_gfn_disallow_lpage_count(-1)``."""
    for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
        slot.lpage_info[level][slot.lpage_index(gfn, level)] -= 1


class ShadowMmu:
    """The shadow-paging MMU of one VM with one vCPU: ``kvm->arch.mmu_page_hash``, the
    memslot rmaps, ``gfn_write_track`` and ``vcpu->arch.mmu->root``.

    ``read_guest`` reads guest page-table entries; ``cr3`` is the guest's CR3.  Call
    :meth:`kvm_mmu_load` (done by the constructor) after the memslots exist.
    """

    def __init__(self, kvm: "Kvm", read_guest: GuestReader, cr3: int,
                 vcpu: Optional["KvmVcpu"] = None) -> None:
        self.kvm = kvm
        self.vcpu = vcpu or kvm.vcpus[0]
        self.read_guest = read_guest
        self.cr3 = cr3
        self.mmu_page_hash: dict[tuple[int, int], ShadowPage] = {}
        # slot->arch.rmap[level - 1][gfn]: leaf SPTEs mapping gfn (huge: the aligned gfn)
        self.rmap: dict[tuple[int, int], list[tuple[ShadowPage, int]]] = {}
        self.gfn_write_track: dict[int, int] = {}
        self.indirect_shadow_pages = 0
        self.root: Optional[ShadowPage] = None
        self.manual_dirty_log_protect = False
        self.kvm_mmu_load()

    # -- roots -------------------------------------------------------------------------
    def kvm_mmu_load(self) -> None:
        """``kvm_mmu_load`` → ``mmu_alloc_shadow_roots`` → ``mmu_alloc_root``: the root
        shadows the guest's PML4, so the PML4 is write-tracked from the start."""
        kvm = self.kvm
        kvm.mmu_lock.write_lock()
        role = KvmMmuPageRole(PT64_ROOT_4LEVEL, access=ACC_ALL)
        role.direct = False
        self.root = self.kvm_mmu_get_shadow_page(self.cr3 >> PAGE_SHIFT, role)
        self.root.root_count += 1
        kvm.mmu_lock.write_unlock()

    # -- write tracking --------------------------------------------------------------------
    def kvm_gfn_is_write_tracked(self, slot: Optional[KvmMemorySlot], gfn: int) -> bool:
        """``kvm_gfn_is_write_tracked``."""
        return slot is not None and self.gfn_write_track.get(gfn, 0) > 0

    def __kvm_write_track_add_gfn(self, slot: KvmMemorySlot, gfn: int) -> None:
        """``__kvm_write_track_add_gfn``: track, disallow huge pages, write-protect."""
        self.gfn_write_track[gfn] = self.gfn_write_track.get(gfn, 0) + 1
        kvm_mmu_gfn_disallow_lpage(slot, gfn)
        if self.kvm_mmu_slot_gfn_write_protect(slot, gfn, PG_LEVEL_4K):
            self.kvm.kvm_flush_remote_tlbs()

    def account_shadowed(self, sp: ShadowPage) -> None:
        """``account_shadowed``: KVM cannot map a gfn it shadows with a huge page (writes
        to the guest table must fault), so the frame holding it stays 4K."""
        kvm = self.kvm
        self.indirect_shadow_pages += 1
        slot = kvm.gfn_to_memslot(sp.gfn)
        if slot is None:
            return  # the kernel would oops; a guest table outside memory cannot be walked
        # The non-leaf shadow pages are kept read-only.
        if sp.role.level > PG_LEVEL_4K:
            self.__kvm_write_track_add_gfn(slot, sp.gfn)
            return
        kvm_mmu_gfn_disallow_lpage(slot, sp.gfn)
        if self.kvm_mmu_slot_gfn_write_protect(slot, sp.gfn, PG_LEVEL_4K):
            kvm.kvm_flush_remote_tlbs_gfn(sp.gfn, PG_LEVEL_4K)

    # -- shadow page allocation --------------------------------------------------------
    def kvm_mmu_get_shadow_page(self, gfn: int, role: KvmMmuPageRole) -> ShadowPage:
        """``kvm_mmu_get_shadow_page``: ``kvm_mmu_find_shadow_page`` in the hash, else
        ``kvm_mmu_alloc_shadow_page`` (which accounts pages that shadow a guest table)."""
        key = (gfn, role.word)
        sp = self.mmu_page_hash.get(key)
        if sp is not None:
            return sp
        kvm = self.kvm
        sp = ShadowPage(kvm.alloc_pt_pfn(), kvm.profile.SHADOW_NONPRESENT_VALUE)
        sp.role = role
        sp.gfn = gfn
        if not role.direct and role.level <= KVM_MAX_HUGEPAGE_LEVEL:
            sp.gfns = [0] * 512
        kvm.sp_by_pfn[sp.spt_pfn] = sp
        self.mmu_page_hash[key] = sp
        if sp_has_gptes(sp):
            self.account_shadowed(sp)
        return sp

    def kvm_mmu_get_child_sp(self, step: ShadowWalkStep, gfn: int, direct: bool,
                             access: int) -> Optional[ShadowPage]:
        """``kvm_mmu_get_child_sp``: None stands for ``ERR_PTR(-EEXIST)`` (a table is
        already linked here); a huge leaf in the way does not count."""
        spte = step.sp.spt[step.index]
        if is_shadow_present_pte(spte) and not is_large_pte(spte):
            return None
        role = KvmMmuPageRole(step.level - 1, access=access)   # kvm_mmu_child_role
        role.direct = direct
        return self.kvm_mmu_get_shadow_page(gfn, role)

    def link_shadow_page(self, step: ShadowWalkStep, sp: ShadowPage) -> None:
        """``link_shadow_page`` → ``__link_shadow_page``: a present SPTE here must be a
        huge leaf; drop it (``drop_large_spte``) before installing the table."""
        parent = step.sp
        if is_shadow_present_pte(parent.spt[step.index]):
            self.drop_large_spte(step)
        parent.spt[step.index] = make_nonleaf_spte(self.kvm.masks, sp.spt_pfn, False)
        sp.parent_ptes.append((parent, step.index))

    def drop_large_spte(self, step: ShadowWalkStep) -> None:
        """``drop_large_spte``."""
        spte = step.sp.spt[step.index]
        if is_shadow_present_pte(spte) and is_large_pte(spte):
            self.drop_spte(step.sp, step.index)
            self.kvm.kvm_flush_remote_tlbs_gfn(kvm_mmu_page_get_gfn(step.sp, step.index),
                                               step.level)

    def drop_parent_pte(self, child: ShadowPage, parent: ShadowPage, index: int) -> None:
        """``drop_parent_pte``: unlink a table (its own SPTEs are left as they are)."""
        child.parent_ptes.remove((parent, index))
        parent.spt[index] = self.kvm.profile.SHADOW_NONPRESENT_VALUE

    # -- leaf SPTEs and rmaps --------------------------------------------------------------
    def rmap_add(self, slot: KvmMemorySlot, sp: ShadowPage, index: int, gfn: int) -> None:
        """``rmap_add``: remember the translation, count the page, link the rmap."""
        if sp.gfns is not None:
            sp.gfns[index] = gfn   # kvm_mmu_page_set_translation
        self.kvm.kvm_update_page_stats(sp.role.level, 1)
        self.rmap.setdefault((sp.role.level, gfn), []).append((sp, index))

    def drop_spte(self, sp: ShadowPage, index: int) -> None:
        """``drop_spte`` → ``mmu_spte_clear_track_bits`` + ``rmap_remove``."""
        old = sp.spt[index]
        if not is_shadow_present_pte(old):
            return
        sp.spt[index] = self.kvm.profile.SHADOW_NONPRESENT_VALUE
        level = sp.role.level
        self.kvm.kvm_update_page_stats(level, -1)
        gfn = kvm_mmu_page_get_gfn(sp, index)
        head = self.rmap.get((level, gfn))
        if head is not None:
            head.remove((sp, index))
            if not head:
                del self.rmap[(level, gfn)]

    def mmu_try_to_unsync_pages(self, slot: KvmMemorySlot, gfn: int, synchronizing: bool,
                                prefetch: bool) -> int:
        """``mmu_try_to_unsync_pages``: 0 if gfn may be mapped writable (shadowed guest
        PTs reachable through it become unsync), -EPERM if write-tracked, -EEXIST on a
        prefetch of a shadowed gfn."""
        if self.kvm_gfn_is_write_tracked(slot, gfn):
            return -1
        for sp in self._indirect_sps_for_gfn(gfn):
            if synchronizing:
                return -17
            if sp.unsync:
                continue
            if prefetch:
                return -17
            sp.unsync = True   # kvm_unsync_page
        return 0

    def _indirect_sps_for_gfn(self, gfn: int) -> list[ShadowPage]:
        """``for_each_gfn_valid_sp_with_gptes`` (only 4K guest PTs can go unsync; upper
        levels are write-tracked and never get here)."""
        return [sp for (g, _), sp in self.mmu_page_hash.items()
                if g == gfn and sp_has_gptes(sp)]

    def make_spte(self, sp: ShadowPage, slot: KvmMemorySlot, pte_access: int, gfn: int,
                  pfn: int, old_spte: int, prefetch: bool, synchronizing: bool,
                  host_writable: bool) -> tuple[bool, int]:
        """``make_spte`` (spte.c), shadow-MMU parts: returns (wrprot, new SPTE).  A write-
        tracked or shadowed gfn gets a read-only SPTE; a writable SPTE in a dirty-logged
        slot marks the page dirty."""
        level = sp.role.level
        wrprot = False
        if pte_access & ACC_WRITE_MASK and host_writable and not (
                is_last_spte(old_spte, level) and is_writable_pte(old_spte)):
            if self.mmu_try_to_unsync_pages(slot, gfn, synchronizing, prefetch):
                wrprot = True
                pte_access &= ~ACC_WRITE_MASK
        spte = make_spte(self.kvm.masks, level=level, ad_disabled=False, pte_access=pte_access, pfn=pfn,
                         old_spte=old_spte, prefetch=prefetch, host_writable=host_writable,
                         nx_huge_page_enabled=self.kvm.is_nx_huge_page_enabled(),
                         mt_mask=self.kvm.mt_mask, synchronizing=synchronizing,
                         always_dirty=self.kvm.profile.make_spte_always_dirty)
        if spte & PT_WRITABLE_MASK and slot.kvm_slot_dirty_track_enabled():
            slot.mark_page_dirty_in_slot(gfn)
        return wrprot, spte

    def mmu_set_spte(self, slot: KvmMemorySlot, sp: ShadowPage, index: int, pte_access: int,
                     gfn: int, pfn: int, fault: Optional[KvmPageFault]) -> int:
        """``mmu_set_spte``: install a leaf, replacing a table (``drop_parent_pte``) or a
        leaf for another pfn; returns RET_PF_FIXED / SPURIOUS / EMULATE."""
        level = sp.role.level
        was_rmapped = False
        ret = RET_PF_FIXED
        host_writable = fault is None or fault.map_writable
        prefetch = fault is None or fault.prefetch
        write_fault = fault is not None and fault.write
        old = sp.spt[index]
        if is_shadow_present_pte(old):
            if level > PG_LEVEL_4K and not is_large_pte(old):
                # a huge leaf replaces a table: unlink the now unreachable child
                self.drop_parent_pte(self.kvm.sp_by_pfn[spte_to_pfn(old)], sp, index)
                self.kvm.kvm_flush_remote_tlbs_gfn(gfn, level)
            elif pfn != spte_to_pfn(old):
                self.drop_spte(sp, index)
                self.kvm.kvm_flush_remote_tlbs_gfn(gfn, level)
            else:
                was_rmapped = True
        wrprot, spte = self.make_spte(sp, slot, pte_access, gfn, pfn, sp.spt[index],
                                      prefetch, False, host_writable)
        if sp.spt[index] == spte:
            ret = RET_PF_SPURIOUS
        else:
            sp.spt[index] = spte
        if wrprot and write_fault:
            ret = RET_PF_EMULATE
        if not was_rmapped:
            self.rmap_add(slot, sp, index, gfn)
        return ret

    # -- prefetch ----------------------------------------------------------------------------
    def gfn_to_memslot_dirty_bitmap(self, gfn: int, no_dirty_log: bool) -> Optional[KvmMemorySlot]:
        """``gfn_to_memslot_dirty_bitmap``: no slot, or a writable prefetch into a dirty-
        logged slot (the write would go unlogged), stops prefetching."""
        slot = self.kvm.gfn_to_memslot(gfn)
        if slot is None:
            return None
        if no_dirty_log and slot.kvm_slot_dirty_track_enabled():
            return None
        return slot

    @staticmethod
    def kvm_prefetch_pages(slot: KvmMemorySlot, gfn: int, nr_pages: int) -> int:
        """``kvm_prefetch_pages``: 0 when the run would leave the slot (``entry <
        nr_pages``), else every page (GUP-fast is assumed to find them all)."""
        entry = slot.npages - (gfn - slot.base_gfn)
        if entry < nr_pages:
            return 0
        return nr_pages

    def kvm_mmu_prefetch_sptes(self, gfn: int, sp: ShadowPage, start: int, nr_pages: int,
                               access: int) -> bool:
        """``kvm_mmu_prefetch_sptes``: map ``nr_pages`` SPTEs from ``sp.spt[start]`` to
        consecutive gfns, as prefetches (no fault, A bit clear)."""
        slot = self.gfn_to_memslot_dirty_bitmap(gfn, bool(access & ACC_WRITE_MASK))
        if slot is None:
            return False
        nr_pages = self.kvm_prefetch_pages(slot, gfn, nr_pages)
        if nr_pages <= 0:
            return False
        for i in range(nr_pages):
            self.mmu_set_spte(slot, sp, start + i, access, gfn + i,
                              slot.gfn_to_hva(gfn + i) >> PAGE_SHIFT, None)
        return True

    def __direct_pte_prefetch(self, sp: ShadowPage, index: int) -> None:
        """``__direct_pte_prefetch``: fill the runs of empty SPTEs in the aligned block
        around the faulting one; stop at the first run that cannot be prefetched."""
        base = index & ~(PTE_PREFETCH_NUM - 1)
        start = None
        for i in range(base, base + PTE_PREFETCH_NUM):
            if is_shadow_present_pte(sp.spt[i]) or i == index:
                if start is None:
                    continue
                if not self.kvm_mmu_prefetch_sptes(kvm_mmu_page_get_gfn(sp, start), sp, start,
                                                   i - start, sp.role.access):
                    return
                start = None
            elif start is None:
                start = i
        if start is not None:
            self.kvm_mmu_prefetch_sptes(kvm_mmu_page_get_gfn(sp, start), sp, start,
                                        base + PTE_PREFETCH_NUM - start, sp.role.access)

    def FNAME_prefetch_invalid_gpte(self, sp: ShadowPage, index: int, gpte: int) -> bool:
        """``FNAME(prefetch_invalid_gpte)``: not present or not accessed → drop the SPTE."""
        if not gpte & PT_PRESENT_MASK or not gpte & PT_GUEST_ACCESSED_MASK:
            self.drop_spte(sp, index)
            return True
        return False

    def FNAME_prefetch_gpte(self, sp: ShadowPage, index: int, gpte: int) -> bool:
        """``FNAME(prefetch_gpte)``: one guest PTE, one SPTE."""
        if self.FNAME_prefetch_invalid_gpte(sp, index, gpte):
            return False
        gfn = (gpte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT
        pte_access = FNAME_protect_clean_gpte(sp.role.access & FNAME_gpte_access(gpte), gpte)
        return self.kvm_mmu_prefetch_sptes(gfn, sp, index, 1, pte_access)

    def FNAME_pte_prefetch(self, gw: GuestWalker, sp: ShadowPage, index: int) -> None:
        """``FNAME(pte_prefetch)``: only for 4K SPTEs; direct pages (a guest huge page
        mapped small) prefetch linearly, guest PTs gPTE by gPTE from the 8 read by
        ``FNAME(gpte_changed)``."""
        if sp.role.level > PG_LEVEL_4K:
            return
        if self.kvm.mmu_invalidate_in_progress:
            return
        if sp.role.direct:
            self.__direct_pte_prefetch(sp, index)
            return
        base = index & ~(PTE_PREFETCH_NUM - 1)
        base_gpa = gw.pte_gpa[0] & ~(PTE_PREFETCH_NUM * 8 - 1)
        for i in range(base, base + PTE_PREFETCH_NUM):
            if i == index or is_shadow_present_pte(sp.spt[i]):
                continue
            if not self.FNAME_prefetch_gpte(sp, i, self.read_guest(base_gpa + (i - base) * 8)):
                break

    # -- the fault ------------------------------------------------------------------------------
    def page_fault_handle_page_track(self, fault: KvmPageFault) -> bool:
        """``page_fault_handle_page_track``: a write to a write-tracked gfn is emulated."""
        if fault.rsvd or not fault.present or not fault.write:
            return False
        return self.kvm_gfn_is_write_tracked(fault.slot, fault.gfn)

    def _shadow_step(self, sp: ShadowPage, addr: int) -> ShadowWalkStep:
        level = sp.role.level
        return ShadowWalkStep(sp, SPTE_INDEX(addr >> PAGE_SHIFT, level), level)

    def _next_step(self, step: ShadowWalkStep, addr: int) -> Optional[ShadowWalkStep]:
        """``shadow_walk_next``: re-read the SPTE; stop below a leaf or a hole."""
        spte = step.sp.spt[step.index]
        if step.level == PG_LEVEL_4K or not is_shadow_present_pte(spte) or is_large_pte(spte):
            return None
        return self._shadow_step(self.kvm.sp_by_pfn[spte_to_pfn(spte)], addr)

    def FNAME_fetch(self, fault: KvmPageFault, gw: GuestWalker) -> int:
        """``FNAME(fetch)``: shadow the guest's tables down to the guest leaf level, then
        pick the SPTE size (``kvm_mmu_hugepage_adjust`` after the indirect pages exist,
        because shadowing a table may itself forbid the huge page) and add direct pages
        below a guest huge page mapped smaller."""
        vcpu = self.vcpu
        direct_access = gw.pte_access
        step: Optional[ShadowWalkStep] = self._shadow_step(self.root, fault.addr)
        while step is not None and step.level != gw.level:
            table_gfn = gw.table_gfn[step.level - 2]
            sp = self.kvm_mmu_get_child_sp(step, table_gfn, False, gw.pt_access[step.level - 2])
            if sp is not None:
                self.link_shadow_page(step, sp)
            step = self._next_step(step, fault.addr)
        if step is None:
            return RET_PF_RETRY
        _mmu.kvm_mmu_hugepage_adjust(vcpu, fault)
        base_gfn = fault.gfn
        while step is not None:
            if fault.nx_huge_page_workaround_enabled:
                _mmu.disallowed_hugepage_adjust(self.kvm, fault, step.sp.spt[step.index],
                                                step.level)
            base_gfn = gfn_round_for_level(fault.gfn, step.level)
            if step.level == fault.goal_level:
                break
            sp = self.kvm_mmu_get_child_sp(step, base_gfn, True, direct_access)
            if sp is not None:
                self.link_shadow_page(step, sp)
                if fault.huge_page_disallowed:
                    self.account_nx_huge_page(sp, fault.req_level >= step.level)
            step = self._next_step(step, fault.addr)
        if step is None or step.level != fault.goal_level:
            self.kvm.WARN_ON_ONCE(True, "FNAME(fetch)", "walk ended above goal_level")
            return -14
        ret = self.mmu_set_spte(fault.slot, step.sp, step.index, gw.pte_access, base_gfn,
                                fault.pfn, fault)
        if ret == RET_PF_SPURIOUS:
            return ret
        self.FNAME_pte_prefetch(gw, step.sp, step.index)
        return ret

    def account_nx_huge_page(self, sp: ShadowPage, nx_huge_page_possible: bool) -> None:
        """``account_nx_huge_page``."""
        sp.nx_huge_page_disallowed = True
        if nx_huge_page_possible:
            _mmu.track_possible_nx_huge_page(self.kvm, sp, _mmu.KVM_SHADOW_MMU)

    def FNAME_page_fault(self, fault: KvmPageFault) -> int:
        """``FNAME(page_fault)``: walk the guest tables, cap the SPTE size at the guest's
        page size (``fault->max_level = walker.level``), fault in the pfn, fetch."""
        kvm = self.kvm
        gw = FNAME_walk_addr(self.read_guest, self.cr3, fault.addr, fault.write, fault.exec)
        if gw is None:
            return RET_PF_GUEST_FAULT
        fault.gfn = gw.gfn
        fault.max_level = gw.level
        fault.slot = kvm.gfn_to_memslot(fault.gfn)
        if self.page_fault_handle_page_track(fault):
            return RET_PF_WRITE_PROTECTED
        if fault.slot is None:
            return RET_PF_EMULATE   # MMIO: kvm_handle_noslot_fault without caching
        # kvm_mmu_faultin_pfn: the host pfn behind the hva (identity in the model)
        fault.mmu_seq = kvm.mmu_invalidate_seq
        fault.map_writable = not fault.slot.flags & KVM_MEM_READONLY
        fault.pfn = fault.slot.gfn_to_hva(fault.gfn) >> PAGE_SHIFT
        kvm.mmu_lock.write_lock()
        try:
            if kvm.mmu_invalidate_in_progress or kvm.mmu_invalidate_seq != fault.mmu_seq:
                return RET_PF_RETRY   # is_page_fault_stale
            return self.FNAME_fetch(fault, gw)
        finally:
            kvm.mmu_lock.write_unlock()

    def kvm_mmu_do_page_fault(self, addr: int, err: int) -> int:
        """``kvm_mmu_do_page_fault`` for a shadow-paging #PF: build the fault, run
        ``FNAME(page_fault)``, count it as ``kvm_mmu_do_page_fault`` does."""
        kvm, vcpu = self.kvm, self.vcpu
        fault = KvmPageFault(
            addr=addr, error_code=err, prefetch=False, exec=bool(err & PFERR_FETCH_MASK),
            write=bool(err & PFERR_WRITE_MASK), present=bool(err & PFERR_PRESENT_MASK),
            rsvd=False, user=False, is_tdp=False, is_private=False,
            nx_huge_page_workaround_enabled=kvm.is_nx_huge_page_enabled(),
            max_level=KVM_MAX_HUGEPAGE_LEVEL, vcpu_id=vcpu.vcpu_id)
        vcpu.stat.pf_taken += 1
        r = self.FNAME_page_fault(fault)
        # RET_PF_WRITE_PROTECTED (6.12+) goes on to kvm_mmu_write_protect_fault and
        # emulation, but is not counted as pf_emulate: only RET_PF_EMULATE is.
        kvm_mmu_count_pf_result(vcpu, r, False)
        return r

    # -- the guest CPU -------------------------------------------------------------------------
    def lookup(self, addr: int) -> tuple[int, int]:
        """The hardware walk of the shadow tables: (leaf SPTE or a non-present value, level)."""
        sp = self.root
        while True:
            level = sp.role.level
            spte = sp.spt[SPTE_INDEX(addr >> PAGE_SHIFT, level)]
            if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
                return spte, level
            sp = self.kvm.sp_by_pfn[spte_to_pfn(spte)]

    def guest_access(self, addr: int, access: str) -> int:
        """One guest memory access (``"read"``, ``"write"`` or ``"exec"``) at a guest
        virtual address: fault until the SPTE allows it.  Returns the faults taken;
        raises :class:`GuestPageFault` when the guest's own tables forbid it."""
        write, fetch = access == "write", access == "exec"
        faults = 0
        for _ in range(8):
            spte, _level = self.lookup(addr)
            present = is_shadow_present_pte(spte)
            if present and (not write or is_writable_pte(spte)) and (
                    not fetch or is_executable_pte(self.kvm.masks, spte)):
                return faults
            err = (PFERR_PRESENT_MASK if present else 0) | (PFERR_WRITE_MASK if write else 0) \
                | (PFERR_FETCH_MASK if fetch else 0)
            r = self.kvm_mmu_do_page_fault(addr, err)
            faults += 1
            if r == RET_PF_GUEST_FAULT:
                raise GuestPageFault(f"guest #PF at {addr:#x} ({access})")
            if r in (RET_PF_EMULATE, RET_PF_WRITE_PROTECTED):
                return faults   # KVM emulated the access; no SPTE changes
        raise RuntimeError(f"no forward progress on {access} at {addr:#x}")

    # -- memslot-wide operations ----------------------------------------------------------------
    def _slot_rmaps(self, slot: KvmMemorySlot, min_level: int, max_level: int,
                    start: Optional[int] = None, end: Optional[int] = None):
        """``walk_slot_rmaps`` / ``for_each_slot_rmap_range``: (level, gfn, head) for the
        rmap heads of [start, end) (default: the slot), levels min..max."""
        start = slot.base_gfn if start is None else start
        end = slot.end_gfn if end is None else end
        out = []
        for (level, gfn), head in self.rmap.items():
            if min_level <= level <= max_level and \
                    gfn_round_for_level(start, level) <= gfn < end and slot.contains(gfn):
                out.append((level, gfn, head))
        return out

    def rmap_write_protect(self, head: list[tuple[ShadowPage, int]], pt_protect: bool) -> bool:
        """``rmap_write_protect`` → ``spte_write_protect``: clear W (and MMU-writable for
        shadowing, so that no fast path makes it writable again)."""
        flush = False
        mmu_writable = self.kvm.masks.shadow_mmu_writable_mask
        for sp, index in head:
            spte = sp.spt[index]
            if not is_writable_pte(spte) and not (pt_protect and spte & mmu_writable):
                continue
            spte &= ~PT_WRITABLE_MASK
            if pt_protect:
                spte &= ~mmu_writable
            sp.spt[index] = spte
            flush = True
        return flush

    def kvm_mmu_slot_gfn_write_protect(self, slot: KvmMemorySlot, gfn: int, min_level: int) -> bool:
        """``kvm_mmu_slot_gfn_write_protect``: every level's rmap for gfn."""
        flush = False
        for level in range(min_level, KVM_MAX_HUGEPAGE_LEVEL + 1):
            head = self.rmap.get((level, gfn_round_for_level(gfn, level)))
            if head:
                flush |= self.rmap_write_protect(head, True)
        return flush

    def kvm_mmu_slot_remove_write_access(self, slot: KvmMemorySlot, start_level: int) -> None:
        """``kvm_mmu_slot_remove_write_access``: write-protect the slot's leaves at
        ``start_level`` and above (huge leaves too, so the first write faults and the
        fault maps 4K)."""
        self.kvm.mmu_lock.write_lock()
        for _level, _gfn, head in self._slot_rmaps(slot, start_level, KVM_MAX_HUGEPAGE_LEVEL):
            self.rmap_write_protect(head, False)
        self.kvm.mmu_lock.write_unlock()

    def kvm_rmap_zap_collapsible_sptes(self, slot: KvmMemorySlot) -> None:
        """``kvm_rmap_zap_collapsible_sptes`` → ``kvm_mmu_zap_collapsible_spte``: zap the
        small SPTEs of *direct* pages whose gfn could now be mapped bigger (indirect pages
        are 4K because the guest maps 4K); the next fault maps huge."""
        kvm = self.kvm
        for _level, _gfn, head in self._slot_rmaps(slot, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL - 1):
            for sp, index in list(head):
                if sp.role.direct and sp.role.level < _mmu.kvm_mmu_max_mapping_level(
                        kvm, None, slot, sp.gfn):
                    self.drop_spte(sp, index)
        kvm.kvm_flush_remote_tlbs_memslot(slot)

    def kvm_mmu_recover_huge_pages(self, slot: KvmMemorySlot) -> None:
        """``kvm_mmu_recover_huge_pages`` (rmap half): the shadow MMU cannot collapse in
        place, it zaps."""
        self.kvm.mmu_lock.write_lock()
        self.kvm_rmap_zap_collapsible_sptes(slot)
        self.kvm.mmu_lock.write_unlock()

    def kvm_mmu_slot_apply_flags(self, slot: KvmMemorySlot, new_flags: int) -> None:
        """``kvm_mmu_slot_apply_flags`` (x86.c) for KVM_MR_FLAGS_ONLY without the TDP MMU:
        enabling dirty logging write-protects every level (eager split is TDP-MMU only,
        no PML); disabling zaps collapsible SPTEs."""
        old_flags = slot.flags
        slot.flags = new_flags
        self.kvm.memslots_generation += 2
        if not new_flags & KVM_MEM_LOG_DIRTY_PAGES:
            if old_flags & KVM_MEM_LOG_DIRTY_PAGES:
                self.kvm_mmu_recover_huge_pages(slot)
            return
        if old_flags & KVM_MEM_LOG_DIRTY_PAGES:
            return
        # kvm_mmu_slot_try_split_huge_pages() returns at once: !tdp_mmu_enabled
        self.kvm_mmu_slot_remove_write_access(slot, PG_LEVEL_4K)
        self.kvm.kvm_flush_remote_tlbs_memslot(slot)

    def kvm_mmu_write_protect_pt_masked(self, slot: KvmMemorySlot, gfns: list[int]) -> None:
        """``kvm_mmu_write_protect_pt_masked``: re-arm dirty logging on the 4K SPTEs of the
        pages just reported dirty."""
        for gfn in gfns:
            head = self.rmap.get((PG_LEVEL_4K, gfn))
            if head:
                self.rmap_write_protect(head, False)

    def kvm_get_dirty_log(self, slot: KvmMemorySlot) -> int:
        """KVM_GET_DIRTY_LOG → ``kvm_get_dirty_log_protect``: returns the number of dirty
        pages; without manual protect the bitmap is cleared and those pages write-protected."""
        gfns = [slot.base_gfn + i for i in range(slot.npages)
                if slot.dirty_bitmap[i >> 3] >> (i & 7) & 1]
        if not self.manual_dirty_log_protect:
            self._clear_and_protect(slot, gfns)
        return len(gfns)

    def kvm_clear_dirty_log(self, slot: KvmMemorySlot) -> None:
        """KVM_CLEAR_DIRTY_LOG of the whole slot → ``kvm_clear_dirty_log_protect``."""
        gfns = [slot.base_gfn + i for i in range(slot.npages)
                if slot.dirty_bitmap[i >> 3] >> (i & 7) & 1]
        self._clear_and_protect(slot, gfns)

    def _clear_and_protect(self, slot: KvmMemorySlot, gfns: list[int]) -> None:
        self.kvm.mmu_lock.write_lock()
        for gfn in gfns:
            i = gfn - slot.base_gfn
            slot.dirty_bitmap[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        # kvm_arch_mmu_enable_log_dirty_pt_masked
        self.kvm_mmu_write_protect_pt_masked(slot, gfns)
        self.kvm.mmu_lock.write_unlock()
        if gfns:
            self.kvm.kvm_flush_remote_tlbs_memslot(slot)

    def kvm_unmap_gfn_range(self, start: int, end: int) -> bool:
        """The mmu notifier (``kvm_mmu_notifier_invalidate_range_start`` →
        ``kvm_unmap_gfn_range`` → ``kvm_handle_gfn_range(kvm_zap_rmap)``): zap every leaf
        mapping a gfn of [start, end) at every level, e.g. when the host splits a THP."""
        kvm = self.kvm
        kvm.mmu_lock.write_lock()
        kvm_mmu_invalidate_begin(kvm)
        kvm_mmu_invalidate_range_add(kvm, start, end)
        flush = False
        for level in range(PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL + 1):
            first = gfn_round_for_level(start, level)
            for (lvl, gfn), head in list(self.rmap.items()):
                if lvl == level and first <= gfn < end:
                    for sp, index in list(head):
                        self.drop_spte(sp, index)
                        flush = True
        if flush:
            kvm.kvm_flush_remote_tlbs()
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.write_unlock()
        return flush
