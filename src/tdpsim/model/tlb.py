"""The hardware TLB of one vCPU and the CPU's EPT walk that fills it.

Mirrors no kernel file: it is what the hardware may still use after KVM changed an SPTE,
until the flush KVM owes (``kvm_flush_remote_tlbs*``: KVM_REQ_TLB_FLUSH, serviced by
``kvm_vcpu_flush_tlb_all`` on the next entry, or at once for a vCPU in guest mode through
the IPI the request sends).  Observation only: filling or flushing it never changes what
KVM does, so no golden count moves.

Simplifications (one line each):
- Final 4K translations only: no paging-structure caches, no A/D bits set by the walker.
- Ranged flushes (``kvm_flush_remote_tlbs_range``/``_gfn``/``_memslot``) flush everything, as
  on bare-metal VMX without a ranged-flush hook.
- Entries are tagged with the root they came from (EPTP tagging): after a root switch the
  old root's entries are unreachable.
- Private TD memory is not here: the TDX module keeps that TLB, flushed by TD epochs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .mmu_internal import SP_FREED, KvmMmuPage
from .sched import SPTE_READ
from .spte import (
    PAGE_SHIFT,
    SPTE_BASE_ADDR_MASK,
    SPTE_LEVEL_BITS,
    is_executable_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu


class TlbEntry:
    """One cached translation: host pfn, permissions, the root it was walked from and the
    SPTE slots of the walk (``("spte", table_pfn, index)``, root first)."""

    __slots__ = ("pfn", "writable", "executable", "root", "path", "stale_by")

    def __init__(self, pfn: int, writable: bool, executable: bool, root: KvmMmuPage,
                 path: tuple) -> None:
        self.pfn = pfn
        self.writable = writable
        self.executable = executable
        self.root = root
        self.path = path
        self.stale_by = -1  # the context whose SPTE change made it stale (set by checkers)


class Tlb:
    """gfn (as the guest uses it, shared bit included) → ``TlbEntry``."""

    __slots__ = ("entries", "flushes")

    def __init__(self) -> None:
        self.entries: dict[int, TlbEntry] = {}
        self.flushes = 0

    def flush(self) -> None:
        """``kvm_vcpu_flush_tlb_all`` / INVEPT all-context."""
        if self.entries:
            self.entries.clear()
        self.flushes += 1


def ept_translate(kvm: "Kvm", root: Optional[KvmMmuPage], gfn: int,
                  point: bool = False) -> Optional[tuple[int, bool, bool, tuple]]:
    """The CPU's EPT walk of ``root`` for ``gfn`` (shared bit included): (pfn, writable,
    executable, path) of the 4K page, or None (EPT violation).  With ``point`` every level
    is one scheduling point (the walker's loads race with KVM's stores); the walker is not
    an RCU reader, so it never triggers the explorer's RCU checks (a freed table it meets
    ends the walk as a violation)."""
    if root is None or root.role.invalid:
        return None
    sp = root
    level = root.role.level
    path = []
    hook = kvm.sched.hook if point else None
    by_pfn = kvm.sp_by_pfn
    while True:
        index = (gfn >> ((level - 1) * SPTE_LEVEL_BITS)) & 511
        key = ("spte", sp.spt_pfn, index)
        if hook is not None:
            hook(SPTE_READ, key, False)
        if sp.rcu_state == SP_FREED:
            return None
        spte = sp.spt[index]
        path.append(key)
        if not is_shadow_present_pte(spte):
            return None
        if is_last_spte(spte, level):
            pfn = ((spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT) + \
                (gfn & ((1 << ((level - 1) * SPTE_LEVEL_BITS)) - 1))
            return pfn, is_writable_pte(spte), is_executable_pte(kvm.masks, spte), tuple(path)
        child = by_pfn.get((spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT)
        if child is None:
            return None
        sp = child
        level -= 1


def tlb_entry_is_stale(kvm: "Kvm", e: TlbEntry, gfn: int) -> bool:
    """The paging structure no longer grants what ``e`` caches (gone, other pfn, or fewer
    permissions): a guest using ``e`` reaches memory KVM took away."""
    now = ept_translate(kvm, e.root, gfn)
    if now is None:
        return True
    pfn, writable, executable, _ = now
    return pfn != e.pfn or (e.writable and not writable) or (e.executable and not executable)


def guest_memory_access(vcpu: "KvmVcpu", gfn: int, write: bool = False,
                        exec: bool = False) -> Optional[int]:
    """One guest load/store/fetch of ``gfn`` through the direct root: a TLB hit, or a walk
    that fills the TLB.  Returns the host pfn reached, or None for an EPT violation (the
    caller exits to KVM)."""
    kvm = vcpu.kvm
    e = vcpu.tlb.entries.get(gfn)
    if e is not None and e.root is vcpu.root and (e.writable or not write) \
            and (e.executable or not exec):
        return e.pfn
    now = ept_translate(kvm, vcpu.root, gfn, point=True)
    if now is None:
        return None
    pfn, writable, executable, path = now
    if (write and not writable) or (exec and not executable):
        return None
    vcpu.tlb.entries[gfn] = TlbEntry(pfn, writable, executable, vcpu.root, path)
    return pfn
