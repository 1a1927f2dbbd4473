"""The TDP page-table iterator — mirrors ``arch/x86/kvm/mmu/tdp_iter.[ch]``.

Pre-order walk: an SPTE is visited before its children; each visit exposes exactly one
``old_spte`` snapshot, read through ``kvm_tdp_mmu_read_spte`` (one scheduling point, the
kernel's single ``READ_ONCE``).  ``try_step_down`` re-reads the SPTE before descending so
the walk never enters a table that was unlinked since the last read.

Simplification: ``sptep`` is the pair (``sp``, ``index``) of the table page and slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from .mmu_internal import SP_FREED, KvmMmuPage
from .sched import SPTE_READ
from .spte import (
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
    PG_LEVEL_4K,
    PT64_ROOT_MAX_LEVEL,
    PT_PAGE_SIZE_MASK,
    SPTE_BASE_ADDR_MASK,
    SPTE_ENT_PER_PAGE,
    SPTE_LEVEL_BITS,
    SPTE_MMU_PRESENT_MASK,
    gfn_round_for_level,
    is_last_spte,
    is_shadow_present_pte,
    spte_to_pfn,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm


def kvm_tdp_mmu_read_spte(kvm: "Kvm", sp: KvmMmuPage, index: int) -> int:
    """``kvm_tdp_mmu_read_spte``: one ``READ_ONCE``."""
    hook = kvm.sched.hook
    if hook is not None:
        hook(SPTE_READ, ("spte", sp.spt_pfn, index), False)
        if sp.rcu_state or not kvm.rcu.rcu_read_lock_held():
            rcu_check_sptep(kvm, sp, index, "read")
    return sp.spt[index]


def rcu_check_sptep(kvm: "Kvm", sp: KvmMmuPage, index: int, access: str) -> None:
    """An SPTE access the kernel's debug options would report (explorer runs only): KASAN's
    use-after-free once ``tdp_mmu_free_sp_rcu_callback`` ran; PROVE_RCU's "suspicious RCU
    usage" from outside ``rcu_read_lock`` — every TDP MMU SPTE access goes through
    ``rcu_dereference(sptep)`` (``kvm_tdp_mmu_read_spte``, ``__kvm_tdp_mmu_write_spte``,
    the cmpxchg/xchg helpers of ``tdp_iter.h``), which lockdep checks whether or not the
    table awaits a grace period (and if it does, nothing stops the free under the access).
    The caller checks ``sp.rcu_state`` or the read section first."""
    from .kvm import MemorySafetyBUG

    where = f"spte[{sp.spt_pfn:#x}][{index}] (L{sp.role.level} gfn {sp.gfn:#x})"
    if sp.rcu_state == SP_FREED:
        raise MemorySafetyBUG("USE_AFTER_FREE", f"KASAN: use-after-free {access} of {where}, "
                                                "freed by tdp_mmu_free_sp_rcu_callback")
    if not kvm.rcu.rcu_read_lock_held():
        why = "; the table awaits its RCU grace period" if sp.rcu_state else ""
        raise MemorySafetyBUG("RCU", f"suspicious RCU usage: {access} of {where} outside "
                                     f"rcu_read_lock (rcu_dereference_check){why}")


def spte_to_child_sp(kvm: "Kvm", spte: int) -> KvmMmuPage:
    """``spte_to_child_sp``: the SP whose table the SPTE points to (``page_private``)."""
    return kvm.sp_by_pfn[spte_to_pfn(spte)]


def spte_to_child_pt(kvm: "Kvm", spte: int, level: int) -> KvmMmuPage | None:
    """``spte_to_child_pt``: None unless the SPTE is a present non-leaf."""
    if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
        return None
    return kvm.sp_by_pfn[spte_to_pfn(spte)]


def sptep_address(sp: KvmMmuPage, index: int) -> int:
    """Physical address of an SPTE, as ``kvm_mmu_set_spte`` prints it ("at %llx")."""
    return (sp.spt_pfn << PAGE_SHIFT) + index * 8


class TdpIter:
    """``struct tdp_iter``."""

    __slots__ = ("kvm", "next_last_level_gfn", "yielded_gfn", "pt_path", "sp", "index",
                 "gfn", "gfn_bits", "root_level", "min_level", "level", "as_id",
                 "old_spte", "valid", "yielded", "end")

    def __init__(self, kvm: "Kvm", root: KvmMmuPage | None, min_level: int,
                 next_last_level_gfn: int, end: int, gfn_bits: int = 0) -> None:
        self.kvm = kvm
        self.end = end
        self.pt_path: list[KvmMmuPage | None] = [None] * PT64_ROOT_MAX_LEVEL
        self.tdp_iter_start(root, min_level, next_last_level_gfn, gfn_bits)

    @classmethod
    def at(cls, kvm: "Kvm", sp: KvmMmuPage, index: int, level: int, gfn: int) -> "TdpIter":
        """A one-entry iterator on a known SPTE, as the kernel builds with a designated
        initializer (e.g. ``kvm_tdp_mmu_zap_possible_nx_huge_page``)."""
        it = cls(kvm, None, level, gfn, gfn + 1)  # root None: an invalid iterator
        it.sp, it.index, it.level, it.gfn = sp, index, level, gfn
        it.as_id = sp.role.smm
        it.old_spte = kvm_tdp_mmu_read_spte(kvm, sp, index)
        it.yielded = False
        it.valid = True
        return it

    def tdp_iter_start(self, root: KvmMmuPage | None, min_level: int, next_last_level_gfn: int,
                       gfn_bits: int) -> None:
        if (root is None or not 1 <= root.role.level <= PT64_ROOT_MAX_LEVEL
                or (gfn_bits and next_last_level_gfn >= gfn_bits)):
            self.valid = False
            return
        self.next_last_level_gfn = next_last_level_gfn
        self.gfn_bits = gfn_bits
        self.root_level = root.role.level
        self.min_level = min_level
        self.pt_path[self.root_level - 1] = root
        self.as_id = root.role.smm
        self.tdp_iter_restart()

    def tdp_iter_restart(self) -> None:
        self.yielded = False
        self.yielded_gfn = self.next_last_level_gfn
        self.level = self.root_level
        self.gfn = gfn_round_for_level(self.next_last_level_gfn, self.level)
        self.tdp_iter_refresh_sptep()
        self.valid = True

    def tdp_iter_refresh_sptep(self) -> None:
        level = self.level
        self.sp = sp = self.pt_path[level - 1]
        # SPTE_INDEX((gfn | gfn_bits) << PAGE_SHIFT, level), inlined: the hottest line.
        self.index = ((self.gfn | self.gfn_bits) >> ((level - 1) * SPTE_LEVEL_BITS)) & 511
        self.old_spte = kvm_tdp_mmu_read_spte(self.kvm, sp, self.index)

    def try_step_down(self) -> bool:
        if self.level == self.min_level:
            return False
        # Re-read: the table this entry pointed to may have been unlinked meanwhile.
        self.old_spte = spte = kvm_tdp_mmu_read_spte(self.kvm, self.sp, self.index)
        level = self.level
        # spte_to_child_pt(), inlined: present and not last.
        if not spte & SPTE_MMU_PRESENT_MASK or level == PG_LEVEL_4K or spte & PT_PAGE_SIZE_MASK:
            return False
        level -= 1
        self.level = level
        self.pt_path[level - 1] = self.kvm.sp_by_pfn[(spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT]
        # gfn_round_for_level(next_last_level_gfn, level), inlined.
        self.gfn = self.next_last_level_gfn & -(1 << ((level - 1) * SPTE_LEVEL_BITS))
        self.tdp_iter_refresh_sptep()
        return True

    def try_step_side(self) -> bool:
        level = self.level
        if ((self.gfn | self.gfn_bits) >> ((level - 1) * SPTE_LEVEL_BITS)) & 511 == SPTE_ENT_PER_PAGE - 1:
            return False
        self.gfn += KVM_PAGES_PER_HPAGE(level)
        self.next_last_level_gfn = self.gfn
        self.index += 1
        self.old_spte = kvm_tdp_mmu_read_spte(self.kvm, self.sp, self.index)
        return True

    def try_step_up(self) -> bool:
        if self.level == self.root_level:
            return False
        self.level += 1
        self.gfn = gfn_round_for_level(self.gfn, self.level)
        self.tdp_iter_refresh_sptep()
        return True

    def tdp_iter_next(self) -> None:
        if self.yielded:
            self.tdp_iter_restart()
            return
        if self.try_step_down():
            return
        while True:
            if self.try_step_side():
                return
            if not self.try_step_up():
                break
        self.valid = False

    def __iter__(self) -> Iterator["TdpIter"]:
        """``for_each_tdp_pte_min_level``: loop while valid and ``gfn < end``."""
        while self.valid and self.gfn < self.end:
            yield self
            self.tdp_iter_next()


def for_each_tdp_pte_min_level(kvm: "Kvm", root: KvmMmuPage, min_level: int, start: int,
                               end: int) -> TdpIter:
    """``for_each_tdp_pte_min_level(iter, kvm, root, min_level, start, end)``."""
    return TdpIter(kvm, root, min_level, start, end, kvm.kvm_gfn_root_bits(root))


def for_each_tdp_pte(kvm: "Kvm", root: KvmMmuPage, start: int, end: int) -> TdpIter:
    """``for_each_tdp_pte``: min level 4K."""
    return TdpIter(kvm, root, PG_LEVEL_4K, start, end, kvm.kvm_gfn_root_bits(root))
